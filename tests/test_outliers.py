"""Tests for outliers.py on synthetic smears with every kind of outlier planted, and on the real set."""
import json

import numpy as np
import pytest
from PIL import Image

import outliers
from conftest import run_cli
from outliers import CONFLICT, DUPLICATE, MASS_ONE, MASS_SEVERAL, NOT_CELL, find_outliers


# ----------------------------------------------------------------------------------------------
# synthetic tests

def test_result_is_a_plain_consistent_dict(planted):
    _, _, _, result = planted
    assert set(result) == {"outliers", "duplicates", "reasons", "counts"}
    assert result["outliers"] == sorted(result["outliers"]) and result["duplicates"] == sorted(result["duplicates"])
    assert not set(result["outliers"]) & set(result["duplicates"])
    assert set(result["reasons"]) == set(result["outliers"]) | set(result["duplicates"])
    assert all(type(i) is int for i in result["outliers"] + result["duplicates"] + list(result["reasons"]))
    assert sum(result["counts"].values()) == len(result["reasons"])
    json.dumps(result)  # plain Python types only


def test_mass_copies_under_several_labels_all_go(planted):
    _, _, where, result = planted
    assert {result["reasons"].get(i) for i in where["mass_several"]} == {MASS_SEVERAL}
    assert result["counts"][MASS_SEVERAL] == 40


def test_mass_copies_within_one_class_all_go(planted):
    _, _, where, result = planted
    assert {result["reasons"].get(i) for i in where["mass_one"]} == {MASS_ONE}
    assert result["counts"][MASS_ONE] == 20


def test_unique_non_cells_are_found_with_the_right_reason(planted):
    _, _, where, result = planted
    reasons = result["reasons"]
    assert reasons.get(where["grey"][0]) == NOT_CELL[0]
    assert reasons.get(where["gradient"][0]) == NOT_CELL[1]
    assert reasons.get(where["photo"][0]) in NOT_CELL[1:]  # its colours or its black shadows, whichever is further out
    assert reasons.get(where["meme"][0]) == NOT_CELL[2]  # the black caption band


def test_near_copies_of_a_non_cell_go_with_it(planted):
    _, _, where, result = planted
    found = {result["reasons"].get(i) for i in where["non_cell_copies"]}
    assert len(found) == 1 and found.pop() in NOT_CELL
    assert set(where["non_cell_copies"]) <= set(result["outliers"])


def test_genuine_duplicates_keep_their_first_copy(planted):
    _, _, where, result = planted
    assert where["duplicate"] == result["duplicates"]  # exact, noisy and re-encoded copies alike
    assert {result["reasons"][i] for i in where["duplicate"]} == {DUPLICATE}
    assert not set(where["clean"][:3]) & set(result["reasons"])  # the originals stay


def test_conflicting_labels_drop_every_copy(planted):
    _, _, where, result = planted
    assert [result["reasons"].get(i) for i in where["conflict"]] == [CONFLICT, CONFLICT]


def test_nothing_genuine_is_flagged(planted):
    _, _, where, result = planted
    kept = where["clean"] + where["unusual_background"]
    assert not set(kept) & set(result["reasons"]), {i: result["reasons"][i] for i in set(kept) & set(result["reasons"])}


def test_same_pictures_flagged_whatever_the_order(planted):
    images, labels, _, result = planted
    order = np.random.default_rng(1).permutation(len(images))
    shuffled = find_outliers(images[order], labels[order])
    assert sorted(order[shuffled["outliers"]].tolist()) == result["outliers"]
    assert shuffled["counts"] == result["counts"]  # which copy counts as the duplicate may change, not how many


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="labels"):
        find_outliers(np.zeros((3, 96, 96, 3), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="uint8"):
        find_outliers(np.zeros((3, 96, 96), np.float32), np.zeros(3, np.int64))


def test_cli_writes_the_json_and_the_sheet(planted, tmp_path, monkeypatch):
    images, labels, _, expected = planted
    np.savez(tmp_path / "set.npz", images=images, labels=labels.astype(np.uint8).reshape(-1, 1))
    run_cli(monkeypatch, "--data", tmp_path / "set.npz", "--out", tmp_path / "reports")
    report = json.loads((tmp_path / "reports" / "outliers.json").read_text())
    assert report["outliers"] == expected["outliers"] and report["counts"] == expected["counts"]
    assert report["reasons"] == {str(i): r for i, r in expected["reasons"].items()}
    assert Image.open(tmp_path / "reports" / "outliers.png").size[0] > 500
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["outliers.json", "outliers.png"]  # no temp files


def test_each_section_of_the_sheet_says_how_many_of_its_images_it_shows(planted):
    images, labels, _, _ = planted
    result, group, _ = outliers.analyse(images, labels)
    sections = outliers.sheet_sections(result, group, per_reason=2, cols=10)
    assert len(sections) == len(result["counts"])
    for reason, count in result["counts"].items():
        title, shown = next((title, shown) for title, shown in sections if title.startswith(f"{reason}: "))
        flagged = [i for i in shown if result["reasons"].get(i) == reason]  # duplicates also show the copy kept
        assert title.startswith(f"{reason}: {count} image")
        assert (f", {len(flagged)} shown" in title) == (len(flagged) < count), title


def test_losing_most_of_a_class_means_the_file_is_wrong(planted, tmp_path, monkeypatch):
    from data import DataError
    images, labels, where, _ = planted
    with pytest.raises(DataError, match="looks wrong.*blank or constant"):  # what rounding [0, 1] floats made
        find_outliers(np.zeros_like(images), labels)
    grey = images[where["clean"]].mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8)
    with pytest.raises(DataError, match=r"looks wrong.*of the 8 classes.*no colour \(grey picture\).*grayscale"):
        find_outliers(grey, labels[where["clean"]])
    np.savez(tmp_path / "black.npz", images=np.zeros_like(images[:80]), labels=labels[:80])
    with pytest.raises(SystemExit, match="looks wrong"):
        run_cli(monkeypatch, "--data", tmp_path / "black.npz", "--out", tmp_path / "reports")
    assert not (tmp_path / "reports" / "outliers.json").exists()


def test_cli_explains_a_missing_file(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="no training file"):
        run_cli(monkeypatch, "--data", tmp_path / "nope.npz", "--out", tmp_path)


# ----------------------------------------------------------------------------------------------
# the real set (a subset, to stay quick)

def test_real_subset(real_npz):
    from data import load_training_set
    images, labels = load_training_set(real_npz)
    images, labels = images[:4000], labels[:4000]
    result = find_outliers(images, labels)
    # judged independently of outliers.py: exact copies found by their bytes
    _, group, copies = np.unique([x.tobytes() for x in images], return_inverse=True, return_counts=True)
    many = copies[group] >= outliers.MASS_COPIES
    assert many.sum() > 100  # the pasted picture is in every part of the file
    assert all(result["reasons"].get(i) in (MASS_SEVERAL, MASS_ONE) for i in np.nonzero(many)[0])
    for g in np.nonzero(copies == 2)[0]:
        a, b = np.nonzero(group == g)[0]
        if labels[a] == labels[b]:
            assert a not in result["reasons"] and result["reasons"].get(int(b)) == DUPLICATE
    # few genuine cells lost: not-a-cell flags stay a small share of the distinct pictures
    assert sum(result["counts"].get(r, 0) for r in NOT_CELL) < 0.01 * len(copies)
    # the pasted copies cost every class far less than the half that would mean a broken file
    share = np.bincount(labels[list(result["reasons"])], minlength=8) / np.bincount(labels, minlength=8)
    assert share.max() < 0.6 * outliers.MOST_OF_A_CLASS, share
