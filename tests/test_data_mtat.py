"""fcn.data.mtat on the real clean split lists and on a synthetic MTAT copy in the real layout."""

import csv
import os
import shutil
from collections import Counter

import numpy as np
import pytest

from fcn.data import MTAT_TOP50, DataError, DataFileMissing, Item, lists, mtat
from fcn.data.synth import make_mtat
from tests.paths import MTAT_LISTS as WON_MTAT

# ------------------------------------------------------------------------------------------- the real split files


def test_real_clean_lists_have_the_published_sizes():
    lists = mtat.read_clean_lists(WON_MTAT)
    assert {s: len(v) for s, v in lists.items()} == {"train": 15_244, "valid": 1_529, "test": 4_332}
    assert all(k.endswith(".mp3") for v in lists.values() for k in v)  # .npy entries name the mp3 files
    # the lists follow the folder convention: 0-b train, c valid, d-f test
    assert {k[0] for k in lists["valid"]} == {"c"}
    assert {k[0] for k in lists["test"]} == set("def")
    assert {k[0] for k in lists["train"]} == set("0123456789ab")
    assert not set(lists["train"]) & set(lists["test"])


def test_top50_order_is_wons():
    won = lists.read_text(WON_MTAT / "tags_npy_order.txt").split("\n")
    assert tuple(t for t in won if t) == MTAT_TOP50
    # Lee's camelCase list has the same tags, with positions 47 and 48 swapped (README)
    lee = [t for t in lists.read_text(WON_MTAT / "top50_tags.txt").split("\n") if t]
    camel = ["".join(w if i == 0 else w.capitalize() for i, w in enumerate(t.split())) for t in MTAT_TOP50]
    camel[47], camel[48] = camel[48], camel[47]
    assert lee == camel


# ------------------------------------------------------------------------------------------- a synthetic copy


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_mtat(tmp_path_factory.mktemp("mtat"), n_clips=96, seconds=0.5, seed=3)


def _csv_labels(root):
    with open(root / "annotations_final.csv", newline="") as f:
        return {
            r["clip_id"]: np.array([int(r[t]) for t in MTAT_TOP50], np.uint8) for r in csv.DictReader(f, delimiter="\t")
        }


def test_folder_split(root):
    tags, items, problems = mtat.read(root)
    assert tags == list(MTAT_TOP50)
    assert len(items) == 96  # every clip but the broken 35644
    assert [p for p in problems if p.key == "35644"] and len(problems) == 1
    assert Counter(it.split for it in items).keys() == {"train", "valid", "test"}
    truth = _csv_labels(root)
    for it in items:
        assert isinstance(it, Item) and os.path.isabs(it.path) and os.path.isfile(it.path)
        assert it.labels.dtype == np.uint8 and it.labels.shape == (50,)
        np.testing.assert_array_equal(it.labels, truth[it.clip_id])  # columns selected by name, not position
        folder = os.path.basename(os.path.dirname(it.path))
        assert it.split == {"c": "valid", "d": "test", "e": "test", "f": "test"}.get(folder, "train")
    assert len({it.clip_id for it in items}) == len(items)
    assert hash(items[0]) == hash(Item(items[0].clip_id, items[0].path, items[0].labels.copy(), items[0].split))


def test_clean_split_matches_its_lists_and_drops_untagged(root):
    tags, items, problems = mtat.read(root, split="clean")
    assert problems == []
    lists = mtat.read_clean_lists(root / "splits")
    assert Counter(it.split for it in items) == {s: len(v) for s, v in lists.items()}
    assert all(it.labels.any() for it in items)
    folder_items = {it.clip_id: it for it in mtat.read(root)[1]}
    assert all(folder_items[it.clip_id].split == it.split for it in items)
    assert sum(1 for it in folder_items.values() if not it.labels.any()) == len(folder_items) - len(items)
    # an explicit splits_dir gives the same
    assert mtat.read(root, split="clean", splits_dir=root / "splits")[1] == items


def test_clean_split_without_own_lists_uses_the_shipped_ones(root, tmp_path):
    shutil.copy(root / "annotations_final.csv", tmp_path)
    assert mtat.find_splits_dir(tmp_path) == WON_MTAT
    _, items, problems = mtat.read(tmp_path, split="clean")  # the synthetic clips are not in the real lists
    assert items == [] and problems[0].startswith("21105 of 21105: clean-list entries have no usable row")
    with pytest.raises(DataFileMissing, match="none/train_list_pub.txt: clean split list not found"):
        mtat.read(tmp_path, split="clean", splits_dir=tmp_path / "none")
    with pytest.raises(DataError, match="'folder' or 'clean'"):
        mtat.read(root, split="lee")


def test_shipped_lists_are_verified_on_load(tmp_path):
    """A damaged copy of a checksummed list is refused by name; plain and xz copies read the same."""
    (tmp_path / "mtat").mkdir()
    for f in WON_MTAT.iterdir():
        (tmp_path / "mtat" / f.name).write_bytes(f.read_bytes())
    sums = (WON_MTAT.parent / "SHA256SUMS").read_text()
    (tmp_path / "SHA256SUMS").write_text(sums)
    assert mtat.read_clean_lists(tmp_path / "mtat") == mtat.read_clean_lists(WON_MTAT)
    (tmp_path / "mtat" / "valid_list_pub.txt.xz").unlink()  # a plain copy of the same bytes is read as well
    (tmp_path / "mtat" / "valid_list_pub.txt").write_bytes(lists.read_bytes(WON_MTAT / "valid_list_pub.txt"))
    assert mtat.read_clean_lists(tmp_path / "mtat")["valid"] == mtat.read_clean_lists(WON_MTAT)["valid"]
    with open(tmp_path / "mtat" / "valid_list_pub.txt", "a") as f:
        f.write("c/extra-clip.npy\n")
    with pytest.raises(DataError, match="valid_list_pub.txt: sha256 differs"):
        mtat.read_clean_lists(tmp_path / "mtat")


def _rewrite_csv(src_root, dst_root, edit):
    """Copy the CSV with `edit(header, rows)` applied; audio folders are symlinked, not copied."""
    with open(src_root / "annotations_final.csv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header, body = edit(rows[0], rows[1:])
    with open(dst_root / "annotations_final.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(header)
        w.writerows(body)
    for d in src_root.iterdir():
        if d.is_dir() and len(d.name) == 1:
            (dst_root / d.name).symlink_to(d)


@pytest.mark.parametrize("column", ["mp3_path", "clip_id", "female vocal"])
def test_missing_column_is_a_value_error_naming_it(root, tmp_path, column):
    def drop(header, rows):
        j = header.index(column)
        return header[:j] + header[j + 1 :], [r[:j] + r[j + 1 :] for r in rows]

    _rewrite_csv(root, tmp_path, drop)
    with pytest.raises(ValueError) as e:
        mtat.read(tmp_path)
    assert column in str(e.value) and "annotations_final.csv" in str(e.value)


def test_missing_file_and_duplicate_id_are_problems_not_errors(root, tmp_path):
    def damage(header, rows):
        i_path = header.index("mp3_path")
        rows = [list(r) for r in rows]
        rows[0][i_path] = "0/not-there-01-nothing-0-29.mp3"
        dup = list(rows[1])
        dup[i_path] = rows[2][i_path]
        rows.insert(3, dup)  # same clip_id as row 1, another path: the first row wins
        rows[5][i_path] = ""
        rows.append(rows[6][:-3])  # a short row
        return header, rows

    _rewrite_csv(root, tmp_path, damage)
    _, items, problems = mtat.read(tmp_path)
    reasons = {p.key: p.reason for p in problems}
    with open(tmp_path / "annotations_final.csv", newline="") as f:
        ids = [r[0] for r in list(csv.reader(f, delimiter="\t"))[1:]]
    assert reasons[ids[0]] == "audio file missing"
    assert reasons[ids[1]].startswith("duplicate clip_id")
    assert "empty mp3_path" in reasons[ids[5]]
    assert any("fields, the header has" in p for p in problems)
    assert "35644" in reasons
    assert len(items) == 96 - 2  # the missing file and the empty path; the duplicate's first row is kept
    assert [it.path for it in items if it.clip_id == ids[1]] == [str(tmp_path / rows_path(tmp_path, 1))]


def rows_path(root, i):
    with open(root / "annotations_final.csv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))[i]["mp3_path"]


def test_clip_info(root):
    info = mtat.read_clip_info(root)
    assert len(info) == 97 and info["35644"]["artist"] == "norine braun"
    assert set(next(iter(info.values()))) >= {"track_number", "title", "artist", "album", "mp3_path"}
