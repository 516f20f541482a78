"""Tests for outliers.py on synthetic smears with every kind of outlier planted, and on the real set.

    cd /work/main && .venv/bin/python -m pytest tests/test_outliers.py
"""
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import outliers  # noqa: E402
from outliers import (CONFLICT, DUPLICATE, MASS_ONE, MASS_SEVERAL, NOT_CELL,  # noqa: E402
                      find_outliers)

SMEAR_BACKGROUND = (236, 208, 190)


# ----------------------------------------------------------------------------------------------
# synthetic pictures

def cell(rng, background=SMEAR_BACKGROUND):
    """A stained smear as a microscope sees it: the lamp's light times the stain's transmittance.

    Pale red cells anywhere, one purple nucleus of random size, shape and place, granular texture
    and camera noise, so that no two are near copies of each other.
    """
    yy, xx = np.mgrid[:96, :96].astype(np.float32)
    od = np.zeros((96, 96, 3), np.float32)  # optical density per channel
    for _ in range(rng.integers(1, 6)):  # red cells: a disc with a paler centre
        cy, cx, r = rng.uniform(-10, 106), rng.uniform(-10, 106), rng.uniform(11, 18)
        d = np.hypot(yy - cy, xx - cx)
        od += ((d < r) * (1 - 0.5 * np.exp(-(d / (0.5 * r)) ** 2)))[..., None] * np.float32([0.05, 0.22, 0.16])
    cy, cx = rng.uniform(28, 68, 2)
    a, b = rng.uniform(8, 26, 2)
    t = rng.uniform(0, np.pi)
    u, v = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t), (xx - cx) * np.cos(t) - (yy - cy) * np.sin(t)
    cytoplasm = ((u / (a * 1.3)) ** 2 + (v / (b * 1.3)) ** 2 < 1).astype(np.float32)
    nucleus = ((u / a) ** 2 + (v / b) ** 2 < 1).astype(np.float32)
    grain = gaussian_filter(rng.normal(0, 1, (96, 96)), 1.2).astype(np.float32)
    od += gaussian_filter(cytoplasm, 1)[..., None] * np.float32([0.25, 0.3, 0.1])
    od += (gaussian_filter(nucleus, 1) * (1 + 0.25 * grain))[..., None] * np.float32([0.8, 1.2, 0.25])
    image = np.float32(background) * np.exp(-od) + rng.normal(0, 2, (96, 96, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def photo(rng):
    """A photograph-like picture: smooth saturated colour regions with deep shadows."""
    small = rng.uniform(0, 255, (5, 5, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(small).resize((96, 96), Image.BICUBIC), np.float32)
    shade = np.asarray(Image.fromarray(rng.uniform(0, 255, (4, 4)).astype(np.uint8)).resize((96, 96), Image.BICUBIC))
    image *= (shade[..., None] / 255.0) ** 1.5  # shadows go to black
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def pasted(rng):
    """A picture pasted over a smear, half see-through, like the challenge's meme overlays."""
    return (0.65 * photo(rng) + 0.35 * cell(rng)).astype(np.uint8)


def text_page(rng):
    """Black text on a light grey page: a scanned document, not a micrograph."""
    page = Image.new("RGB", (96, 96), (225, 225, 222))
    draw = ImageDraw.Draw(page)
    for line in range(7):
        draw.text((4, 4 + 13 * line), "".join(rng.choice(list("abcdefghij klmnop")) for _ in range(15)), fill=(20, 20, 20))
    return np.asarray(page)


def gradient():
    """A rainbow gradient."""
    hue = np.linspace(0, 1, 96)[None, :].repeat(96, 0)
    hsv = np.stack([hue * 255, np.full_like(hue, 220), np.linspace(255, 150, 96)[:, None].repeat(96, 1)], -1)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


def meme(rng):
    """A smear with a caption band: white letters on black, the way memes are captioned."""
    image = Image.fromarray(cell(rng))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 72, 95, 95), fill=(0, 0, 0))
    draw.text((6, 78), "MUCH CELL WOW", fill=(255, 255, 255))
    return np.asarray(image)


def noisy(image, rng, sigma=3.0):
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def jpeg(image, quality=70):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def planted_set(seed=0, n_clean=300):
    """Images, labels and where each planted outlier went (a dict of index lists)."""
    rng = np.random.default_rng(seed)
    images = [cell(rng) for _ in range(n_clean)]
    labels = list(rng.integers(0, 8, n_clean))
    where = {"clean": list(range(n_clean))}

    def add(name, image, label):
        where.setdefault(name, []).append(len(images))
        images.append(image)
        labels.append(label)

    overlay = pasted(rng)  # copied 40 times under every label, some copies re-encoded
    for k in range(40):
        add("mass_several", overlay if k % 4 else jpeg(overlay), k % 8)
    overlay = pasted(rng)  # copied 20 times within one class, each copy with its own noise
    for _ in range(20):
        add("mass_one", noisy(overlay, rng), 5)
    add("grey", text_page(rng), 3)
    add("gradient", gradient(), 0)
    add("photo", photo(rng), 6)
    add("meme", meme(rng), 2)
    unique = photo(rng)  # a unique non-cell and its two near copies
    for image in (unique, noisy(unique, rng), jpeg(unique)):
        add("non_cell_copies", image, 4)
    for k in range(3):  # genuine cells twice with the same label: exact, noisy, re-encoded
        original = where["clean"][k]
        add("duplicate", [images[original], noisy(images[original], rng, 2), jpeg(images[original], 85)][k], labels[original])
    original = where["clean"][3]  # the same cell under another label: neither label can be trusted
    add("conflict", images[original].copy(), (labels[original] + 1) % 8)
    where["conflict"].append(original)
    where["clean"].remove(original)
    add("unusual_background", cell(rng, background=(205, 215, 245)), 1)  # a bluish lamp
    add("unusual_background", cell(rng, background=(200, 232, 200)), 7)  # a greenish one
    return np.stack(images), np.array(labels, np.int64), where


@pytest.fixture(scope="module")
def planted():
    images, labels, where = planted_set()
    return images, labels, where, find_outliers(images, labels)


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


def run_cli(monkeypatch, *args):
    """outliers.py's command line, run in this process (TensorFlow, which data.py imports, loads once)."""
    monkeypatch.setattr(sys, "argv", ["outliers.py", *map(str, args)])
    outliers.main()


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


def test_a_file_of_floats_in_0_1_is_scaled_like_model_predict_scales_them(planted, tmp_path, monkeypatch, capsys):
    from data import load_training_set
    images, labels, _, expected = planted
    np.savez(tmp_path / "floats.npz", images=images.astype(np.float32) / 255, labels=labels)
    loaded, _ = load_training_set(tmp_path / "floats.npz")  # what every command reads
    np.testing.assert_array_equal(loaded, images)
    assert "float32 in [0, 1]" in capsys.readouterr().out  # said once, in a note
    run_cli(monkeypatch, "--data", tmp_path / "floats.npz", "--out", tmp_path / "reports")
    assert json.loads((tmp_path / "reports" / "outliers.json").read_text())["counts"] == expected["counts"]


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
# eda.py: pictures of the cleaned set

def test_eda_colour_measures_the_cells_not_the_background():
    import colorsys
    import eda
    background, stain = (236, 208, 190), (120, 60, 160)  # a smear's pale light, a purple nucleus
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 40) ** 2 < 30 ** 2
    images = np.where(disc[None, ..., None], np.uint8(stain), np.uint8(background)).repeat(2, 0)
    hue, saturation, share = eda.cell_colours(images, np.array([3, 5]), 8)
    np.testing.assert_allclose(share, disc[::2, ::2].mean())  # the share of pixels it reads that are cell
    h, s, _ = colorsys.rgb_to_hsv(*np.array(stain) / 255)
    for c in (3, 5):  # every cell pixel in the stain's bins, none in the background's
        assert hue[c, np.digitize(360 * h, eda.HUE_EDGES) - 1] == hue[c].sum() == disc[::2, ::2].sum()
        assert saturation[c, np.digitize(s, eda.SATURATION_EDGES) - 1] == saturation[c].sum() == disc[::2, ::2].sum()
    assert hue[[0, 1, 2, 4, 6, 7]].sum() == 0


def test_eda_draws_its_four_pictures(planted, tmp_path, monkeypatch):
    import eda
    images, labels, _, _ = planted
    np.savez(tmp_path / "set.npz", images=images, labels=labels)
    monkeypatch.setattr(sys, "argv", ["eda.py", "--data", str(tmp_path / "set.npz"), "--out", str(tmp_path / "eda")])
    eda.main()
    assert sorted(p.name for p in (tmp_path / "eda").iterdir()) == [
        "eda_brightness.png", "eda_class_counts.png", "eda_colour.png", "eda_samples.png"]


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
