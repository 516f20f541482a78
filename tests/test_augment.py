"""augment.py's appearance levers of phase 2: each changes the share of images it is given and
nothing else, keeps pixels in [0, 255], and does what its paper says."""
import numpy as np
import pytest
import tensorflow as tf

import augment
import presets
from conftest import learnable_images

LEVERS = [augment.broad_colours, augment.random_convolution, augment.amplitude_swap]


@pytest.mark.parametrize("lever", LEVERS)
def test_a_lever_changes_every_image_at_p_1_none_at_p_0_and_stays_in_range(lever):
    images = learnable_images(32, seed=1)[0].astype(np.float32)
    x = tf.constant(images)
    tf.random.set_seed(1)
    np.testing.assert_array_equal(lever(x, 0.0).numpy(), images)
    changed = lever(x, 1.0).numpy()
    assert changed.shape == images.shape and 0 <= changed.min() and changed.max() <= 255
    assert (np.abs(changed - images).max(axis=(1, 2, 3)) > 0).all()  # RandConv blends: some images a little


def test_broad_colours_turn_hues_past_the_corruptions_range():
    # the corruptions turn the hue by at most 0.15 of the wheel; broad colours anywhere on it
    images = learnable_images(256, seed=2)[0].astype(np.float32)
    def hues(x):
        return tf.image.rgb_to_hsv(tf.constant(x) / 255.0)[..., 0].numpy()
    tf.random.set_seed(0)
    turned = augment.broad_colours(tf.constant(images), 1.0).numpy()
    shift = np.abs(np.median(hues(turned) - hues(images), axis=(1, 2)))
    assert (np.minimum(shift, 1 - shift) > 0.2).mean() > 0.3


def test_amplitude_swap_keeps_each_images_phase():
    # a circular shift leaves the amplitude spectrum as it was: two such images swap amplitudes and stay themselves
    image = learnable_images(1, seed=3)[0][0].astype(np.float32) * 0.5 + 64  # inside [0, 255] after the swap
    pair = np.stack([image, np.roll(image, (17, 5), axis=(0, 1))])
    np.testing.assert_allclose(augment.amplitude_swap(tf.constant(pair), 1.0).numpy(), pair, atol=0.05)
    # and a picture under another's amplitude keeps its own edges: closer to itself than to its partner
    other = learnable_images(2, seed=4)[0].astype(np.float32) * 0.5 + 64
    swapped = augment.amplitude_swap(tf.constant(other), 1.0).numpy()
    for i in range(2):
        assert np.corrcoef(swapped[i].ravel(), other[i].ravel())[0, 1] > np.corrcoef(swapped[i].ravel(), other[1 - i].ravel())[0, 1]


def test_random_convolution_is_one_filter_a_batch_blended_with_the_image():
    images = learnable_images(16, seed=5)[0].astype(np.float32)
    out = augment.random_convolution(tf.constant(images), 1.0).numpy()
    # blended: every output lies between the image and a stretched filtered copy, so it still follows the image
    assert all(np.corrcoef(o.ravel(), i.ravel())[0, 1] > -1 for o, i in zip(out, images))
    assert np.isfinite(out).all() and out.std() > 5


def test_the_levers_join_phase_2_only_and_each_runs_on_its_own_share():
    config = {**presets.PRESETS["cpu"], "augment_ops": 0, "colour_p": 1.0}  # no RandAugment: only the lever moves pixels
    images = learnable_images(16, seed=6)[0].astype(np.float32)
    phase1 = augment.make_augment(config, seed=0, corrupt_p=0.0)
    phase2 = augment.make_augment(config, seed=0, corrupt_p=0.0, appearance=True)
    np.testing.assert_array_equal(phase1(tf.constant(images)).numpy(), images)
    assert (np.abs(phase2(tf.constant(images)).numpy() - images).mean(axis=(1, 2, 3)) > 1).all()
    assert set(augment.APPEARANCE) <= set(presets.BASE)  # each lever's share is a preset key, 0 in the recipe
    assert all(presets.BASE[key] == 0.0 for key in augment.APPEARANCE)
