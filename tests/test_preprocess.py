"""fcn.preprocess: bad input never costs good data; a kill mid-run and a rerun give the identical store; the report.

The audio is MTAT's real layout (fcn.data.synth.make_mtat) with bad files and index rows added. A decoder that
crashes or hangs cannot be provoked with a file on demand (libsndfile 1.2.2 survives every corrupt file we tried), so
those two are injected: a sitecustomize.py on PYTHONPATH wraps soundfile.read in every process of the build, workers
included, to crash (SIGSEGV) or hang on file names holding a marker, to slow every decode down (so a kill can land
mid-run on a 2-core machine), and to log each file decoded (so we see which clips a rerun decoded again).
"""

import csv
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from fcn.data import mtat
from fcn.data.synth import make_mtat
from tests.conftest import REPO, run_py

SR = 16_000  # MTAT's rate
SECONDS = 2.0  # the clips' length and the front end's clip length in these tests
ROOT_FIELDS = ("mel", "stft", "mfcc", "labels", "clip_id", "split", "path")

SITECUSTOMIZE = """
import os, signal, time
_crash, _hang = os.environ.get("FCN_TEST_CRASH_ON"), os.environ.get("FCN_TEST_HANG_ON")
_delay, _log = float(os.environ.get("FCN_TEST_DECODE_DELAY", "0")), os.environ.get("FCN_TEST_DECODE_LOG")
if _crash or _hang or _delay or _log:
    import soundfile as _sf
    _read = _sf.read

    def read(file, *args, **kwargs):
        name = os.fspath(file)
        if _log:
            with open(_log, "a") as f:
                f.write(name + "\\n")
        if _crash and _crash in name:
            os.kill(os.getpid(), signal.SIGSEGV)
        if _hang and _hang in name:
            time.sleep(3600)
        if _delay:
            time.sleep(_delay)
        return _read(file, *args, **kwargs)

    _sf.read = read
"""


@pytest.fixture(scope="module")
def base_root(tmp_path_factory):
    """60 good clips of 2 s in MTAT's layout (read-only: tests that modify it work on a copy)."""
    return make_mtat(tmp_path_factory.mktemp("mtat") / "mtat", 60, seconds=SECONDS, seed=0, broken=False, workers=2)


@pytest.fixture(scope="module")
def inject_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("inject")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(d), os.environ.get("PYTHONPATH", "")]))}


def _cli(root, out, *extra, env=None, timeout=300, module="fcn.preprocess"):
    return run_py(
        "-m",
        module,
        "--dataset",
        "mtat",
        "--data-root",
        str(root),
        "--clip-seconds",
        str(SECONDS),
        "--data-dir",
        str(Path(out).parent),
        "--out",
        str(out),
        *extra,
        env=env,
        timeout=timeout,
    )


def _read_store(path) -> dict:
    with h5py.File(path, "r") as h:
        d = {k: (h[k].asstr()[:] if h[k].dtype.kind == "O" else h[k][:]) for k in ROOT_FIELDS}
        d["attrs"] = dict(h.attrs)
    return d


def _assert_same_store(a, b):
    sa, sb = _read_store(a), _read_store(b)
    assert sa["attrs"] == sb["attrs"]
    for k in ROOT_FIELDS:
        assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]), k


def _rows(root):
    with open(root / "annotations_final.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quotechar='"'))
    return rows[0], rows[1:]


def _write_rows(root, header, rows):
    with open(root / "annotations_final.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", quotechar='"', quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _png() -> bytes:
    """A real 8x8 grey PNG."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + bytes(range(0, 256, 32)) for _ in range(8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _mp3(path, seconds, sr=SR, channels=1, silent=False, vbr=False):
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    x = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (440, 660)[:channels]], axis=1).astype(np.float32)
    mode = dict(bitrate_mode="VARIABLE") if vbr else dict(bitrate_mode="CONSTANT", compression_level=0.85)
    sf.write(path, np.zeros_like(x) if silent else x, sr, format="MP3", subtype="MPEG_LAYER_III", **mode)


# what each bad or odd file is, and what must become of it: (kind, expected outcome, expected words in the reason)
KINDS = {
    "empty": ("skip", "empty file (0 bytes)"),
    # the first half of an MP3's bytes: its frames decode, so it is kept, with a warning. A VBR MP3's Xing header
    # declares the full length, so the cut shows as such; a CBR MP3 like MTAT's declares none: it shows as short.
    "truncated": ("warn", "s of the 2.00 s its header declares"),
    "truncated_cbr": ("warn", "short: 1.04 s zero-padded to 2.01 s"),
    "text": ("skip", "not audio"),
    "png": ("skip", "not audio"),
    "zero_frames": ("skip", "zero frames"),  # a valid WAV container with 0 frames, named .mp3 as in MTAT
    "silent": ("warn", "silent"),
    "stereo": ("ok", ""),
    "rate_44k": ("ok", ""),
    "short": ("warn", "short: 0.2"),  # 0.2 s, plus the ~0.09 s of encoder padding a CBR MP3 decodes with
    "long": ("ok", ""),  # 40 s: centre-cropped, like every MSD preview
    "crash": ("skip", "the decoder crashed on this file (worker died: SIGSEGV)"),
    "hang": ("skip", "decoding took over 3 s: the decoder hangs on this file"),
}


@pytest.fixture(scope="module")
def bad_root(base_root, tmp_path_factory):
    """base_root plus one clip of every kind of bad or odd file, and bad index rows. Returns (root, {kind: id})."""
    root = tmp_path_factory.mktemp("bad") / "mtat"
    shutil.copytree(base_root, root)
    header, rows = _rows(root)
    i_id, i_path = header.index("clip_id"), header.index("mp3_path")
    by_kind = {}
    # the first 11 kinds overwrite the audio of existing clips (their rows and labels stay as they are)
    for kind, row in zip(list(KINDS)[:11], rows[3::5]):
        by_kind[kind] = row[i_id]
        p = root / row[i_path]
        if kind == "empty":
            p.write_bytes(b"")
        elif kind == "truncated":
            _mp3(p, SECONDS, vbr=True)
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        elif kind == "truncated_cbr":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        elif kind == "text":
            p.write_text("<html><body>404 Not Found</body></html>\n" * 20)
        elif kind == "png":
            p.write_bytes(_png())
        elif kind == "zero_frames":
            sf.write(p, np.zeros(0, np.float32), SR, format="WAV", subtype="PCM_16")
        elif kind == "silent":
            _mp3(p, SECONDS, silent=True)
        elif kind == "stereo":
            _mp3(p, SECONDS, channels=2)
        elif kind == "rate_44k":
            _mp3(p, SECONDS, sr=44_100, channels=2)
        elif kind == "short":
            _mp3(p, 0.2)
        elif kind == "long":
            _mp3(p, 40.0)
    # new rows: a decoder crash and hang (injected on these names), an unknown path, a duplicate id, MTAT's empty clip
    template = rows[0]
    new = {
        "crash": ("90001", "3/inject-decoder_crash-01-boom-0-29.mp3"),
        "hang": ("90002", "3/inject-decoder_hang-01-stuck-0-29.mp3"),
        "unknown_path": ("90003", "5/nobody-nowhere-01-ghost-0-29.mp3"),
        "duplicate_id": (rows[1][i_id], "c/dup-licate-01-again-0-29.mp3"),
        "known_broken": ("35644", "6/norine_braun-now_and_zen-08-gently-117-146.mp3"),
    }
    for kind, (cid, rel) in new.items():
        row = list(template)
        row[i_id], row[i_path] = cid, rel
        rows.append(row)
        by_kind[kind] = cid
        if kind in ("crash", "hang", "duplicate_id"):
            (root / rel).parent.mkdir(exist_ok=True)
            shutil.copy(root / template[i_path], root / rel)  # good audio: the injection makes them bad
        elif kind == "known_broken":
            (root / rel).parent.mkdir(exist_ok=True)
            (root / rel).write_bytes(b"")
    _write_rows(root, header, rows)
    return root, by_kind


def _parse_report(text: str) -> tuple[dict, dict, list]:
    skipped = dict(re.findall(r"^skipped (\S+) \(.*?\): (.*)$", text, re.M))
    warned = dict(re.findall(r"^warning (\S+) \(.*?\): (.*)$", text, re.M))
    index = re.findall(r"^index: (.*)$", text, re.M)
    return skipped, warned, index


def test_bad_input_never_costs_good_data(bad_root, inject_env, tmp_path):
    root, ids = bad_root
    out = tmp_path / "store.h5"
    env = dict(inject_env, FCN_TEST_CRASH_ON="decoder_crash", FCN_TEST_HANG_ON="decoder_hang")
    r = _cli(root, out, "--workers", "2", "--decode-timeout", "3", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.exists() and not Path(f"{out}.parts").exists() and not Path(f"{out}.tmp").exists()

    tags, items, problems = mtat.read(root, "folder")
    bad = {ids[k] for k, (fate, _) in KINDS.items() if fate == "skip"}
    expected = [it for it in items if it.clip_id not in bad]
    assert len(items) == 62 and len(expected) == 56  # 60 clips + crash + hang rows; 6 of them unusable
    store = _read_store(out)
    # exactly the good clips, in the reader's order, each with its own split, labels and path
    assert list(store["clip_id"]) == [it.clip_id for it in expected]
    assert list(store["split"]) == [it.split for it in expected]
    assert list(store["path"]) == [it.path for it in expected]
    np.testing.assert_array_equal(store["labels"], np.stack([it.labels for it in expected]))
    for k in ("mel", "stft", "mfcc"):
        assert np.isfinite(store[k].astype(np.float32)).all(), k
    row = {cid: i for i, cid in enumerate(store["clip_id"])}
    assert np.ptp(store["mel"][row[ids["silent"]]]) == 0  # all at the dB floor
    for kind in ("stereo", "rate_44k", "long", "short", "truncated", "truncated_cbr"):
        assert np.ptp(store["mel"][row[ids[kind]]]) > 10, kind  # real audio made it through

    # the report (saved, and printed by the CLI) names every bad clip with its reason, and warns about odd ones
    report = Path(f"{out}.report.txt").read_text()
    assert report.strip() in r.stdout  # fewer than 20 lines per kind: printed whole
    assert f"clips written: {len(expected)}" in r.stdout
    assert "clips skipped: 6" in r.stdout
    skipped, warned, index = _parse_report(report)
    for kind, (fate, words) in KINDS.items():
        cid = ids[kind]
        if fate == "skip":
            assert words in skipped[cid] and cid not in warned, (kind, skipped.get(cid))
        elif fate == "warn":
            assert words in warned[cid] and cid not in skipped, (kind, warned.get(cid))
        else:
            assert cid not in skipped and cid not in warned, kind
    assert warned[ids["truncated"]].startswith("truncated: decodes to 0.") and "short" in warned[ids["truncated"]]
    assert set(skipped) == bad and set(warned) == {ids[k] for k, (f, _) in KINDS.items() if f == "warn"}
    assert index == [str(p) for p in problems] and len(index) == 3
    assert any(p.startswith(f"{ids['unknown_path']}: audio file missing") for p in index)
    assert any(p.startswith(f"{ids['duplicate_id']}: duplicate clip_id") for p in index)
    assert any(p.startswith("35644: known broken clip") for p in index)
    # the two dead workers were replaced, and the user was told which file did it
    assert "the decoder crashed (SIGSEGV) on" in r.stderr and "decoder_crash" in r.stderr
    assert "the decoder hangs on" in r.stderr and "decoder_hang" in r.stderr


def test_missing_column_is_one_line_error_and_no_store(base_root, tmp_path):
    root = tmp_path / "mtat"
    root.mkdir()
    header, rows = _rows(base_root)
    drop = header.index("mp3_path")
    _write_rows(
        root, [h for i, h in enumerate(header) if i != drop], [[v for i, v in enumerate(r) if i != drop] for r in rows]
    )
    out = tmp_path / "store.h5"
    r = _cli(root, out, "--workers", "1")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert "annotations_final.csv" in lines[0] and "'mp3_path' is missing" in lines[0]
    assert not out.exists() and not Path(f"{out}.parts").exists() and not Path(f"{out}.tmp").exists()


def test_kill_mid_run_and_rerun_give_the_identical_store(base_root, inject_env, tmp_path):
    shard = 2  # 30 shards of 60 clips
    n_shards = 30
    ref = tmp_path / "ref" / "store.h5"
    r = _cli(base_root, ref, "--workers", "2", "--shard-size", str(shard))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shards: 30 (0 reused from an interrupted run)" in r.stdout

    out = tmp_path / "run" / "store.h5"
    parts = Path(f"{out}.parts")
    log1, log2 = tmp_path / "decoded1.txt", tmp_path / "decoded2.txt"
    # 40 ms per decode: ~1.2 s of decoding on 2 workers, so the kill lands mid-run, not after the build
    args = [
        sys.executable,
        "-m",
        "fcn.preprocess",
        "--dataset",
        "mtat",
        "--data-root",
        str(base_root),
        "--clip-seconds",
        str(SECONDS),
        "--out",
        str(out),
        "--workers",
        "2",
        "--shard-size",
        str(shard),
    ]
    env = dict(os.environ, **inject_env, FCN_TEST_DECODE_DELAY="0.04", FCN_TEST_DECODE_LOG=str(log1))
    p = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )  # its own process group: the kill takes the workers too
    t0 = time.time()
    while len(list(parts.glob("shard-*.npz"))) < 6:
        assert p.poll() is None, p.stderr.read().decode()[-3000:]
        assert time.time() - t0 < 120, "no shard written in 120 s"
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    assert not out.exists(), "the build finished before the kill: slow it down further"
    done = sorted(parts.glob("shard-*.npz"))
    assert 6 <= len(done) < n_shards

    env2 = dict(inject_env, FCN_TEST_DECODE_LOG=str(log2))
    r2 = _cli(base_root, out, "--workers", "2", "--shard-size", str(shard), env=env2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert f"resuming: {len(done)} of {n_shards} shards already done, {n_shards - len(done)} to do" in r2.stderr
    assert f"shards: {n_shards} ({len(done)} reused from an interrupted run)" in r2.stdout
    _assert_same_store(out, ref)
    assert not parts.exists()

    # the rerun decoded exactly the clips of the shards that were missing, each once
    _, items, _ = mtat.read(base_root, "folder")
    done_idx = {int(d.stem.split("-")[1]) for d in done}
    missing = [it.path for i, it in enumerate(items) if i // shard not in done_idx]
    decoded = log2.read_text().splitlines()
    assert sorted(decoded) == sorted(missing)


def test_stale_parts_are_discarded_a_finished_store_is_left_alone_and_an_old_format_rebuilt(
    base_root, tmp_path, monkeypatch, capsys
):
    import fcn.errors
    import fcn.preprocess as pp
    import fcn.run_store as rs
    import fcn.store
    from fcn.config import RunConfig
    from fcn.frontends import FrontEndParams

    config = RunConfig(dataset="mtat", data_root=str(base_root), data_dir=str(tmp_path / "data"), clip_seconds=SECONDS)
    path = rs.store_path(config)
    tags, items, problems = rs.read_items(config)

    # a build with another clip length that died before assembling its store leaves its parts behind
    def crash(*a, **k):
        raise RuntimeError("simulated crash before the store was written")

    monkeypatch.setattr(fcn.store.StoreWriter, "finish", crash)  # the step that puts the store in place
    with pytest.raises(RuntimeError, match="simulated crash"):
        pp.build(
            items, tags, dataset="mtat", out=path, params=FrontEndParams.for_seconds(1.0), workers=1, progress=False
        )
    monkeypatch.undo()
    parts = Path(f"{path}.parts")
    assert len(list(parts.glob("shard-*.npz"))) == 2 and not path.exists()

    capsys.readouterr()
    assert pp.ensure_feature_store(config, workers=1, progress=False) == path
    err = capsys.readouterr().err
    assert "discarded the parts" in err and "resuming" not in err
    assert "note: discarded the parts" in Path(f"{path}.report.txt").read_text()
    assert not parts.exists()

    ref = tmp_path / "ref.h5"
    rep = pp.build(
        items,
        tags,
        dataset="mtat",
        out=ref,
        params=config.frontend,
        workers=1,
        progress=False,
        reader_problems=problems,
    )
    assert rep.written == 60 and rep.resumed_shards == 0
    _assert_same_store(path, ref)
    with h5py.File(path, "r") as h:
        assert h["mel"].shape == (60, 96, config.frontend.n_frames)

    # a finished store: ensure_feature_store neither reads the data set nor builds, and the file is untouched
    stamp = path.stat().st_mtime_ns

    def must_not_run(*a, **k):
        raise AssertionError("ensure_feature_store rebuilt a finished store")

    monkeypatch.setattr(pp, "build", must_not_run)
    monkeypatch.setattr(pp, "read_items", must_not_run)
    assert pp.ensure_feature_store(config, workers=1, progress=False) == path
    assert path.stat().st_mtime_ns == stamp

    # a store of an older format (format 1's MFCC had a batch-wide floor): refused when named, rebuilt when derived
    monkeypatch.undo()
    with h5py.File(path, "r+") as h:
        h.attrs["format_version"] = 1
    with pytest.raises(
        fcn.errors.UserError, match=rf"has format 1, and this fcn reads format {fcn.store.FORMAT_VERSION} .*rebuild it"
    ):
        fcn.store.check_store(path, input="mel", params=config.frontend, dataset="mtat")
    capsys.readouterr()
    assert pp.ensure_feature_store(config, workers=1, progress=False) == path
    assert "is of an older format (1): rebuilding it" in capsys.readouterr().err
    assert fcn.store.read_meta(path)["format_version"] == fcn.store.FORMAT_VERSION == 3
    _assert_same_store(path, ref)


def test_a_file_too_long_to_be_a_clip_is_refused_before_decoding(tmp_path):
    from fcn.audio import AudioError
    from fcn.frontends import FrontEndParams
    from fcn.preprocess import MAX_SECONDS, _decode

    path = tmp_path / "album.wav"
    sf.write(path, np.zeros(int((MAX_SECONDS + 1) * 1000), np.int16), 1000)  # 601 s at 1 kHz: 1.2 MB
    with pytest.raises(AudioError, match="601 s long, over the 600 s limit"):
        _decode(str(path), FrontEndParams.for_seconds(SECONDS))
