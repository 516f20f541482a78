"""corruptions.py: each family changes every image, keeps its shape and dtype, grows with severity, repeats for a seed."""
import numpy as np
import pytest

import corruptions
from conftest import cell_images


def test_corrupt_refuses_images_of_another_size_naming_the_shape():
    with pytest.raises(ValueError, match=r"\(n, 96, 96, 3\), got uint8 \(2, 64, 64, 3\)"):
        corruptions.corrupt(np.zeros((2, 64, 64, 3), np.uint8), "vignetting", 1)


@pytest.mark.parametrize("severity", corruptions.SEVERITIES)
@pytest.mark.parametrize("name", list(corruptions.CORRUPTIONS))
def test_each_corruption_changes_images_and_keeps_shape_and_dtype(name, severity):
    images = cell_images(4, seed=1)
    before = images.copy()
    out = corruptions.corrupt(images, name, severity, seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(images, before)  # the input is left alone
    changed = [not np.array_equal(a, b) for a, b in zip(out, images)]
    assert all(changed), f"{name} at severity {severity} left {changed.count(False)} images unchanged"


# flips and channel swaps are lossless: their severities are different ones, not stronger ones
@pytest.mark.parametrize("name", [n for n in corruptions.CORRUPTIONS if n not in ("flip", "channel_swap")])
def test_stronger_severity_moves_images_further(name):
    images = cell_images(6, seed=2).astype(np.float32)
    distance = [np.abs(corruptions.corrupt(images.astype(np.uint8), name, s, seed=0) - images).mean()
                for s in corruptions.SEVERITIES]
    assert distance[0] < distance[-1], f"{name}: mean change {distance}"


def test_suite_is_deterministic_for_a_seed():
    images = cell_images(6, seed=3)
    for name in corruptions.CORRUPTIONS:
        for s in corruptions.SEVERITIES:
            assert np.array_equal(corruptions.corrupt(images, name, s, seed=7), corruptions.corrupt(images, name, s, seed=7)), name
    assert np.array_equal(corruptions.mixed(images, seed=7), corruptions.mixed(images, seed=7))
    # and the seed matters where there is randomness to seed
    assert not np.array_equal(corruptions.corrupt(images, "gaussian_noise", 2, seed=7),
                              corruptions.corrupt(images, "gaussian_noise", 2, seed=8))
    assert not np.array_equal(corruptions.mixed(images, seed=7), corruptions.mixed(images, seed=8))


def test_seen_and_unseen_families_split_the_suite():
    assert set(corruptions.SEEN_NAMES) | set(corruptions.UNSEEN_NAMES) == set(corruptions.CORRUPTIONS)
    assert not set(corruptions.SEEN_NAMES) & set(corruptions.UNSEEN_NAMES)
    assert set(corruptions.MIXED_FROM) <= set(corruptions.CORRUPTIONS)


def test_severities_make_the_same_random_choices():
    # one seed, three severities: the same direction each time, only further (darker stays darker)
    images = cell_images(8, seed=6)
    darker = [corruptions.corrupt(images, "brightness", s, seed=3).astype(int).sum(axis=(1, 2, 3)) < images.astype(int).sum(axis=(1, 2, 3))
              for s in corruptions.SEVERITIES]
    assert 0 < darker[0].sum() < len(images)  # both directions occur...
    assert all(np.array_equal(darker[0], d) for d in darker[1:])  # ...and each image keeps its own


def test_stain_space_round_trip_is_the_identity():
    # colour deconvolution and back, with the stains unchanged, gives the image again
    images = cell_images(3, seed=7)
    back = 255 * np.exp(-(corruptions._hed(images) @ corruptions._RGB_FROM_HED))
    assert np.abs(back - images).max() < 0.5


def test_unseen_mixed_draws_only_unseen_families():
    recipes = corruptions.mixed_recipes(20, seed=1, names=corruptions.UNSEEN_NAMES)
    assert {name for r in recipes for name, _, _ in r} <= set(corruptions.UNSEEN_NAMES)
    assert recipes != corruptions.mixed_recipes(20, seed=1)  # a stream of its own


def test_mixed_applies_several_corruptions():
    images = cell_images(12, seed=4)
    recipes = corruptions.mixed_recipes(len(images), seed=5)
    assert {len(r) for r in recipes} == {2, 3}
    for recipe in recipes:
        assert len({name for name, _, _ in recipe}) == len(recipe)  # different corruptions
        assert all(name in corruptions.MIXED_FROM and s in corruptions.SEVERITIES for name, s, _ in recipe)
    out = corruptions.mixed(images, seed=5)
    assert out.shape == images.shape and out.dtype == np.uint8
    for image, result, recipe in zip(images, out, recipes):
        step = image[None]
        after_first = corruptions.corrupt(step, *recipe[0])
        for name, severity, seed in recipe:
            step = corruptions.corrupt(step, name, severity, seed)
        assert np.array_equal(step[0], result)  # the whole recipe, in order...
        assert not np.array_equal(after_first[0], result)  # ...not just its first step
