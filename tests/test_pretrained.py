"""The authors' released tagger (fcn.choi2016, fcn.pretrained, fcn.convert_keras, `fcn.predict --pretrained`):
their printed output reproduced, files tagged from a copy of the package alone, crafted files refused.

Reference data: fcn/pretrained/ (the converted weights, the four example log-mels, the two printouts; README.md there
says where each came from). The example MP3s cannot ship: an MP3 is synthesised where one is needed."""

import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import convolve2d

from fcn import checkpoint, pretrained
from fcn.convert_keras import convert, expected_layers
from fcn.errors import UserError
from fcn.predict import main
from tests.conftest import REPO, run_py

MODEL = "choi2016-msd-cnn"


def _agreement(p, printed, tags):
    """(worst |Δ probability| over every printed tag, per clip: our top-5 == the printed top-5 as sets)."""
    worst, same = 0.0, []
    for i, clip in enumerate(pretrained.EXAMPLE_CLIPS):
        worst = max(worst, max(abs(float(p[i, tags.index(t)]) - v) for t, v in printed[clip]))
        same.append({tags[j] for j in np.argsort(-p[i])[:5]} == {t for t, _ in printed[clip][:5]})
    return worst, same


@pytest.fixture(scope="module")
def tagger():
    return pretrained.PretrainedTagger(MODEL)


def test_printed_output_reproduced_from_the_mp3s_log_mels(tagger):
    """The README printout of 2016-09-17 (Theano, log-mels from the MP3s, decoder delay kept): every printed
    probability to its printed precision, every clip's top-5. Measured: 0.0005."""
    p = tagger.probabilities(pretrained.examples("from-mp3"))
    worst, same = _agreement(p, pretrained.printed("2016-09-17"), tagger.tags)
    assert worst < 0.002 and all(same), (worst, same)


def test_released_log_mels_match_the_other_printout(tagger):
    """Their released .npy log-mels are the input of the 2016-09-04 printout (TensorFlow), not of 2016-09-17's: the
    decoder delay is the difference (results/fidelity.md). Measured: 0.0185 and 0.074."""
    p = tagger.probabilities(pretrained.examples("released"))
    worst, same = _agreement(p, pretrained.printed("2016-09-04"), tagger.tags)
    assert worst < 0.02 and all(same), (worst, same)
    assert _agreement(p, pretrained.printed("2016-09-17"), tagger.tags)[0] > 0.05


def test_batch_statistics_and_the_filler(tagger):
    """bn1..bn5 use the batch's statistics (Keras mode 2): a clip's tags depend on its batch, and a batch of fewer
    than 4 is filled up with the example clips (not predicted on its own statistics)."""
    x = pretrained.examples("released")
    song = x[3:]
    assert tagger.model.needs_batch
    with torch.no_grad():
        raw = lambda b: torch.sigmoid(tagger.model(torch.from_numpy(b))).numpy()  # noqa: E731
        filled = raw(np.concatenate([song, x[:3]]))[0]
        on_its_own = raw(song)[0]
    assert np.allclose(tagger.probabilities(song)[0], filled, atol=1e-6)
    assert not np.allclose(on_its_own, filled, atol=1e-2)


def _song(path, seconds=8.0, sr=44_100):
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.standard_normal(len(t))
    sf.write(path, np.stack([x, 0.8 * x], 1).astype(np.float32), sr, format="MP3")
    return path


def test_a_copy_of_the_package_tags_an_mp3_and_a_log_mel(tmp_path):
    """`python -m fcn.predict --pretrained` run from a copy of fcn/'s git-tracked files alone (a fresh clone's
    package: nothing untracked, nothing beside it, no download), on a synthesised MP3 and an authors'-layout .npy."""
    listed = subprocess.run(["git", "ls-files", "fcn"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    for rel in listed.stdout.splitlines():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, clone / rel)
    song = _song(tmp_path / "song.mp3")
    npy = tmp_path / "cute.npy"
    np.save(npy, pretrained.examples("released")[0][None].astype(np.float64))  # their layout: (1, 1, 96, 1366)
    out = run_py("-m", "fcn.predict", "--pretrained", MODEL, str(song), str(npy), "--json", "--top", "5", cwd=clone)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(song), str(npy)] and all(len(r["tags"]) == 5 for r in rows)
    # the same numbers as in this process, from the same batch
    tagger = pretrained.PretrainedTagger(MODEL)
    p = tagger.probabilities(np.stack([tagger.features(song), tagger.features(npy)]))
    for r, scores in zip(rows, p, strict=True):
        assert all(abs(scores[tagger.tags.index(t)] - v) < 1e-4 for t, v in r["tags"].items())


def test_help_and_bad_inputs(tmp_path, capsys):
    """--help says the files are predicted as one batch; a bad file is one line and exit 1, the others still tagged;
    --run with --pretrained is a usage error."""
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "predicted as one batch" in " ".join(capsys.readouterr().out.split())
    bad, good = tmp_path / "wrong.npy", tmp_path / "good.npy"
    np.save(bad, np.zeros((96, 100), np.float32))
    np.save(good, pretrained.examples("released")[1])
    with pytest.raises(SystemExit) as e:
        main(["--pretrained", MODEL, str(bad), str(good), "--top", "1"])
    out = capsys.readouterr()
    assert e.value.code == 1 and out.err.count("\n") == 1 and "wrong.npy" in out.err and "1366" in out.err
    assert out.out.startswith(f"{good} ({MODEL}): rock ")  # bensound-actionable: their top tag
    with pytest.raises(UserError, match="either --run"):
        main(["--pretrained", MODEL, "--run", "x", str(good)])


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    for f in pretrained.HERE.iterdir():
        if f.is_file():
            shutil.copy2(f, tmp_path / f.name)
    pt = tmp_path / pretrained.MODELS[MODEL]
    data = bytearray(pt.read_bytes())
    data[-100] ^= 1
    pt.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "HERE", tmp_path)
    pretrained.load_model.cache_clear()
    try:
        with pytest.raises(UserError, match="does not match its SHA-256"):
            pretrained.load_model(MODEL)
    finally:
        pretrained.load_model.cache_clear()


def _fake_h5(path, extra=False):
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as h:
        for name, shape in expected_layers().items():
            layer, _, param = name.partition("/")
            value = rng.uniform(0.5, 1.5, shape) if param.endswith("running_std") else rng.normal(0, 0.1, shape)
            h.create_dataset(name, data=value.astype(np.float32))
        if extra:
            h.create_dataset("lambda/code", data=np.zeros(3, np.float32))


def test_converter_flips_theano_kernels_and_refuses_other_files(tmp_path):
    """fcn.convert_keras: torch's cross-correlation with the converted kernel = Theano's true convolution with the
    file's (scipy's convolve2d); a file with anything beyond the authors' layers is refused."""
    src, dst = tmp_path / "w.h5", tmp_path / "w.pt"
    _fake_h5(src)
    convert(src, dst, tags=[f"t{i}" for i in range(50)], source={})
    state = checkpoint.read(dst, required=("model",))
    with h5py.File(src) as h:
        w = h["conv1/conv1_W"][()]  # (32, 1, 3, 3), Theano's
    x = np.random.default_rng(2).normal(size=(12, 20)).astype(np.float32)
    conv = torch.nn.functional.conv2d(
        torch.from_numpy(x)[None, None], state["model"]["blocks.0.conv.weight"], padding=1
    )
    assert np.allclose(conv[0, 5].numpy(), convolve2d(x, w[5, 0], mode="same"), atol=1e-5)
    _fake_h5(tmp_path / "bad.h5", extra=True)
    with pytest.raises(UserError, match="unexpected dataset lambda/code"):
        convert(tmp_path / "bad.h5", tmp_path / "bad.pt", tags=[], source={})
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5"):
        convert(tmp_path / "junk.h5", tmp_path / "junk.pt", tags=[], source={})
