"""augment.py: its corruptions, clean share, mixes and phase 2's levers change the images they are given and nothing else."""
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


def spared(batch, originals):
    """Per image: True when it was only flipped or turned (the same pixels, rearranged)."""
    def pixels(x):
        return np.sort(np.asarray(x, np.float32).reshape(len(x), -1), axis=1)
    return np.abs(pixels(batch) - pixels(originals)).max(axis=1) < 1e-3


def test_test_set_like_corruptions_keep_shape_and_range_in_the_pipeline():
    images, labels = learnable_images(64)
    augment_fn = augment.make_augment(presets.PRESETS["tiny"], seed=0, corrupt_p=0.5)
    batch = next(iter(augment.make_dataset(images, labels, 64, augment_fn)))[0].numpy()
    assert batch.shape == images.shape and batch.dtype == np.float32
    assert batch.min() >= 0 and batch.max() <= 255


def test_corruptions_alter_every_image_at_p_1_and_only_rearrange_pixels_at_p_0():
    images = learnable_images(32)[0]
    plain = tf.constant(images, tf.float32)
    changed = np.abs(augment.corrupt_like_a_test_set(plain, 1.0).numpy() - images).mean(axis=(1, 2, 3))
    assert (changed > 5).all()
    # p = 0 leaves only the flips and right-angle rotations: the same pixels, rearranged
    assert spared(augment.corrupt_like_a_test_set(plain, 0.0).numpy(), images).all()


def test_a_clean_share_of_the_images_is_spared_every_corruption():
    images = np.repeat(learnable_images(64)[0], 8, axis=0).astype(np.float32)  # 512 images
    half = spared(augment.corrupt_like_a_test_set(tf.constant(images), 1.0, clean_share=0.5).numpy(), images)
    assert 0.4 < half.mean() < 0.6  # the rest carry all thirteen corruptions (p = 1)
    assert spared(augment.corrupt_like_a_test_set(tf.constant(images), 1.0, clean_share=1.0).numpy(), images).all()
    assert not spared(augment.corrupt_like_a_test_set(tf.constant(images), 1.0, clean_share=0.0).numpy(), images).any()


def test_a_falling_clean_share_reaches_the_pipeline_at_each_epochs_start():
    config = {**presets.PRESETS["cpu"], "phase2_epochs": 5, "clean_share": [0.8, 0.0]}  # a list, as JSON gives it back
    assert [round(augment.clean_share_at(config, e), 6) for e in range(6)] == [0.8, 0.6, 0.4, 0.2, 0.0, 0.0]
    assert augment.clean_share_at({**config, "clean_share": 0.3}, 4) == 0.3  # one number: the same throughout
    images, labels = learnable_images(1)
    images, labels = np.repeat(images, 256, axis=0), np.repeat(labels, 256)  # one picture: no need to undo the shuffle
    share = tf.Variable(0.0, trainable=False)
    follow = augment.follow_clean_share({**config, "clean_share": [1.0, 0.0]}, share)
    corrupt = augment.make_augment({**config, "augment_ops": 0}, seed=0, corrupt_p=1.0, clean_share=share)  # no RandAugment
    dataset = augment.make_dataset(images, labels, 256, corrupt)  # built once, as fit() gets it
    for epoch, expected in ((0, 1.0), (2, 0.5), (4, 0.0)):
        follow.on_epoch_begin(epoch)
        assert abs(spared(next(iter(dataset))[0].numpy(), images).mean() - expected) < 0.1


def test_mixup_and_cutmix_weigh_each_label_by_the_pixels_its_image_gives():
    x = np.zeros((512, 96, 96, 3), np.float32)
    x[:256] = 255.0  # class 0 white, class 1 black: an image's white share is what it holds of class 0
    y = tf.one_hot(np.repeat([0, 1], 256), augment.NUM_CLASSES)
    for mix in (augment.mixup, augment.cutmix):
        images, labels = (t.numpy() for t in mix(tf.constant(x), y))
        white = images.mean(axis=(1, 2, 3)) / 255
        np.testing.assert_allclose(labels[:, 0], white, atol=1e-5)
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
        assert 0.2 < np.mean((white > 0.01) & (white < 0.99)) < 0.8  # about half meet a partner of the other class
    # CutMix pastes one box (a square, clipped at the edges): the partner's pixels fill their bounding box
    images = augment.cutmix(tf.constant(x), y)[0].numpy()[..., 0]
    for i in np.nonzero((images.mean(axis=(1, 2)) > 1) & (images.mean(axis=(1, 2)) < 254))[0][:50]:
        pasted = images[i] == (0 if i < 256 else 255)
        rows, cols = np.nonzero(pasted)
        assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_change_some_changes_a_share_p_of_the_images_and_leaves_the_rest_untouched():
    x = tf.random.uniform([2000, 4, 4, 3], 0, 255)
    seen = []  # how many images the change was computed on: only those it hits
    changed = augment.change_some(x, 0.3, lambda some: seen.append(int(tf.shape(some)[0])) or some + 1000.0).numpy()
    hit = (changed > 255).all(axis=(1, 2, 3))
    assert 0.25 < hit.mean() < 0.35 and seen == [hit.sum()]
    np.testing.assert_array_equal(changed[hit], x.numpy()[hit] + 1000.0)
    np.testing.assert_array_equal(changed[~hit], x.numpy()[~hit])
    one_each = np.where(np.arange(2000) < 1000, 0.0, 1.0).astype(np.float32)  # or one p for each image
    np.testing.assert_array_equal(augment.change_some(x, one_each, lambda some: some + 1000.0).numpy().max(axis=(1, 2, 3)) > 255,
                                  one_each == 1)
    chosen = np.arange(2000) % 7 == 0  # or exactly the images a mask names
    np.testing.assert_array_equal(augment.change_some(x, 0.3, lambda some: some * 0, hit=chosen).numpy().max(axis=(1, 2, 3)) == 0,
                                  chosen)
