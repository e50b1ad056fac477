"""fcn.data.msd on Choi's real split lists and on a synthetic MSD copy in the real layout."""

import sqlite3
import time

import numpy as np
import pytest

from fcn.audio import info, load
from fcn.data import MSD_TOP50, DataFileMissing, msd
from fcn.data import SPLITS as SPLIT_NAMES
from fcn.data.synth import make_msd
from tests.paths import MSD_LISTS as CHOI

# ------------------------------------------------------------------------------------------- the real split files


def test_real_choi_lists_load_fast_with_the_published_sizes():
    t = time.perf_counter()
    lists = msd.read_split_lists(CHOI)
    assert time.perf_counter() - t < 5.0  # ~0.1-0.3 s here (xz); a generous bound on a shared machine
    assert {s: len(v) for s, v in lists.items()} == {"train": 201_680, "valid": 12_634, "test": 28_540}
    ids = [t for v in lists.values() for t in v.msd_ids]
    assert len(set(ids)) == len(ids) and all(len(t) == 18 and t.startswith("TR") for t in ids)
    for v in lists.values():  # d1/d2 are the 7digital id's first two digits
        assert all(f == f"{d[0]}/{d[1]}/{d}.npy" for d, f in zip(v.sevend_ids, v.filenames))


def test_real_y_and_tags():
    assert msd.read_top50(CHOI) == list(MSD_TOP50)
    for split, n in (("valid", 12_634), ("test", 28_540)):
        y = msd.read_y(CHOI, split)
        assert y.dtype == bool and y.shape == (n, 50) and y.sum(1).min() >= 1
        assert len(y) == len(msd.read_id_list(CHOI / f"{split}_x_msd_id.txt"))
    assert msd.read_y(CHOI, "train") is None  # not in the snapshot (README)


def test_won_filtered_test_is_an_order_preserving_subset_of_choi():
    won = msd.read_id_list(CHOI / "won_filtered_list_test.txt")
    choi = msd.read_id_list(CHOI / "test_x_msd_id.txt")
    assert len(won) == 28_435
    pos = {t: i for i, t in enumerate(choi)}
    idx = [pos[t] for t in won]  # KeyError if not a subset
    assert idx == sorted(idx)


def test_real_lists_without_labels_are_a_clear_error(tmp_path):
    with pytest.raises(DataFileMissing, match="lastfm_tags.db"):
        msd.read(tmp_path, splits_dir=CHOI)
    assert msd.default_splits_dir(tmp_path) == CHOI  # no <root>/splits: the shipped lists
    with pytest.raises(DataFileMissing, match="lastfm_tags.db"):
        msd.read(tmp_path)


# ------------------------------------------------------------------------------------------- a synthetic copy


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_msd(tmp_path_factory.mktemp("msd"), n_tracks=60, seconds=0.5, seed=5, n_missing=3)


def _db_truth(root, tags):
    """Labels straight from the db with one JOIN (independent of the reader's query)."""
    con = sqlite3.connect(root / "lastfm_tags.db")
    rows = con.execute(
        "SELECT tids.tid, tags.tag, tid_tag.val FROM tid_tag JOIN tids ON tid_tag.tid = tids.ROWID "
        "JOIN tags ON tid_tag.tag = tags.ROWID"
    ).fetchall()
    con.close()
    truth = {}
    for tid, tag, val in rows:
        if tag in tags and val > 50:
            truth.setdefault(tid, np.zeros(50, np.uint8))[tags.index(tag)] = 1
    return truth, rows


def test_synthetic_read_back(root):
    tags, items, problems = msd.read(root)
    assert tags == list(MSD_TOP50)
    lists = msd.read_split_lists(root / "splits")
    assert sum(len(v) for v in lists.values()) == 60 and len(items) == 57
    assert [it.clip_id for it in items] == [
        t for s in SPLIT_NAMES for t in lists[s].msd_ids if t in {i.clip_id for i in items}
    ]  # Choi's order
    truth, rows = _db_truth(root, tags)
    for it in items:
        assert it.labels.dtype == np.uint8 and it.labels.shape == (50,) and it.labels.any()
        np.testing.assert_array_equal(it.labels, truth[it.clip_id])
        assert it.path.endswith(".clip.mp3")
    assert any(val == 50 for _, _, val in rows)  # the boundary value is there, and counted as negative
    # missing previews: one summary line with the count and the first ids
    (line,) = problems
    assert line.startswith("3 of 60: tracks without a preview") and "first: TR" in line


def test_labels_match_choi_style_y_files(root, tmp_path):
    tags, items, _ = msd.read(root)
    check = msd.check_labels_against(items, tags, root / "splits")
    n_valid = sum(it.split == "valid" for it in items)
    assert check["valid"].compared == n_valid and check["valid"].mismatched == 0
    assert check["test"].mismatched == 0
    # a changed y file is caught
    for f in (root / "splits").iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    y = np.load(tmp_path / "test_y.npy")
    y[0] = ~y[0]
    np.save(tmp_path / "test_y.npy", y)
    first_test = msd.read_id_list(tmp_path / "test_x_msd_id.txt")[0]
    bad = msd.check_labels_against(items, tags, tmp_path)["test"]
    if first_test in {it.clip_id for it in items}:
        assert bad.mismatched == 1 and bad.first_mismatches == (first_test,)


def test_previews_decode_as_stereo_to_mono(root):
    _, items, _ = msd.read(root)
    infos = [info(it.path) for it in items]  # every 8th preview is 44.1 kHz, the others 22.05 kHz: all stereo
    assert {i.channels for i in infos} == {2} and {i.samplerate for i in infos} == {22_050, 44_100}
    for it in items[:9]:
        x = load(it.path)
        assert x.ndim == 1 and 0.5 * 12_000 <= len(x) <= 0.5 * 1.25 * 12_000 + 1


def test_id_map_csv_and_audio_root(root, tmp_path):
    _, items, _ = msd.read(root)
    target = tmp_path / "elsewhere.mp3"
    target.write_bytes(open(items[0].path, "rb").read())
    (tmp_path / "map.csv").write_text(f"msd_id,path\n{items[0].clip_id},elsewhere.mp3\n")
    _, items2, _ = msd.read(root, id_map_csv=tmp_path / "map.csv")
    assert items2[0].path == str(target) and [i.clip_id for i in items2] == [i.clip_id for i in items]
    _, none, problems = msd.read(root, audio_root=tmp_path / "nothing-here")
    assert none == [] and problems[0].startswith("60 of 60")


def test_labels_fall_back_to_y_files_only_when_all_exist(root, tmp_path):
    for f in (root / "splits").iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DataFileMissing, match="train_y.npy"):
        msd.read(root, splits_dir=tmp_path, tags_db=tmp_path / "no.db")
    tags, items, _ = msd.read(root)
    n_train = len(msd.read_id_list(tmp_path / "train_x_msd_id.txt"))
    truth, _ = _db_truth(root, tags)
    ids = msd.read_id_list(tmp_path / "train_x_msd_id.txt")
    np.save(tmp_path / "train_y.npy", np.stack([truth[t] for t in ids]).astype(bool))
    _, items2, problems = msd.read(root, splits_dir=tmp_path, tags_db=tmp_path / "no.db")
    assert n_train and any("labels taken from the *_y.npy" in p for p in problems)
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(items, items2))


def test_preprocessing_checks_db_labels_against_choi_y_files(root, tmp_path, capsys):
    """fcn.run_store.read_items (what preprocessing and training read): the db, audio root and id map come from the
    run config, and labels built from the db are compared with the y files, mismatches by count and example."""
    from fcn.config import RunConfig
    from fcn.run_store import read_items

    db = tmp_path / "elsewhere.db"
    db.write_bytes((root / "lastfm_tags.db").read_bytes())
    config = RunConfig(
        dataset="msd",
        data_root=str(tmp_path / "empty"),
        splits_dir=str(root / "splits"),
        tags_db=str(db),
        audio_root=str(root / "audio"),
    )
    (tmp_path / "empty").mkdir()
    tags, items, problems = read_items(config)
    assert len(items) == 57 and not [p for p in problems if p.key.startswith("labels")]
    assert "checked against Choi's y files" in capsys.readouterr().err
    splits = tmp_path / "splits"
    splits.mkdir()
    for f in (root / "splits").iterdir():
        (splits / f.name).write_bytes(f.read_bytes())
    ids = msd.read_id_list(splits / "valid_x_msd_id.txt")
    rows = [i for i, t in enumerate(ids) if t in {it.clip_id for it in items}][:2]  # tracks with a preview
    y = np.load(splits / "valid_y.npy")
    y[rows] = ~y[rows]
    np.save(splits / "valid_y.npy", y)
    _, _, problems = read_items(config.replace(splits_dir=str(splits)))
    (bad,) = [p for p in problems if p.key == "labels (valid)"]
    assert len(rows) == 2 and bad.reason.startswith("2 of ") and ids[rows[0]] in bad.reason
    assert "valid 2 of" in capsys.readouterr().err
