"""eda.py: its colours are measured on the cells, not the background, and it draws its four pictures."""
import sys

import numpy as np


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
