"""The training images' augmentation, in the tf.data pipeline (never in the saved network).

RandAugment (the seed recipe), the test-set-like corruptions a preset adds in phase 2 with the
share of images spared them (clean_share), phase 2's appearance levers (broad colour changes,
random convolutions, Fourier amplitude swaps), and MixUp and CutMix (--mix).
"""
import numpy as np
import keras
import keras_cv
import tensorflow as tf

from model import NUM_CLASSES


def make_dataset(images, labels, batch_size, augment=None, seed=0, mix=None):
    """A tf.data pipeline of (float images in [0, 255], one-hot labels); augmented when training,
    then, given mix (one of MIXES), each batch's images and labels mixed.

    RandAugment runs here, on batches, never inside the saved network: keras-cv layers break in
    graph mode there and would alter inference.
    """
    ds = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, NUM_CLASSES)))
    if augment is not None:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    if mix is not None:
        ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_augment(config, seed, corrupt_p, clean_share=None, appearance=False):
    """RandAugment (the recipe), then, when corrupt_p > 0, the test-set-like corruptions below,
    sparing a share clean_share of the images: a number, or a tf.Variable read at every batch
    (default: the preset's share at phase 2's first epoch). appearance (phase 2) adds the config's
    colour_p, randconv_p and apr_p levers, each on its own share of the images."""
    clean_share = clean_share_at(config, 0) if clean_share is None else clean_share
    rand_augment = keras_cv.layers.RandAugment(value_range=(0, 255), augmentations_per_image=config["augment_ops"],
                                               magnitude=config["augment_magnitude"], seed=seed)
    levers = [(lever, config.get(key, 0.0)) for key, lever in APPEARANCE.items()] if appearance else []
    def augment(x):
        x = rand_augment(x, training=True)
        x = corrupt_like_a_test_set(x, corrupt_p, clean_share) if corrupt_p else x
        for lever, p in levers:
            x = lever(x, p) if p else x
        return x
    return augment


def clean_share_at(config, epoch):
    """The preset's clean_share at an epoch of phase 2: one number throughout, or [first, last], a
    straight line from the first epoch's share to the last's (runs from before that key spared none)."""
    share = config.get("clean_share", 0.0)
    first, last = share if isinstance(share, (list, tuple)) else (share, share)
    return first + (last - first) * min(epoch / max(config["phase2_epochs"] - 1, 1), 1.0)


def follow_clean_share(config, share):
    """A callback that sets the tf.Variable share to clean_share_at each epoch, before its first batch."""
    return keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs=None: share.assign(clean_share_at(config, epoch)))


def change_some(x, p, change, hit=None):
    """x with change(images) in place of a random share p of its images (p one number, or one per
    image; or of those where hit is True), computed on those images only: a corruption on 20% of a
    batch costs a fifth of one on all."""
    if hit is None:
        hit = tf.random.uniform([tf.shape(x)[0]]) < p
    where = tf.where(hit)
    return tf.tensor_scatter_nd_update(x, where, change(tf.gather_nd(x, where)))


def uniform(x, low, high, shape=(1, 1, 1)):
    """One uniform draw per image of the batch x, of the given shape (broadcasts against x by default)."""
    return tf.random.uniform([tf.shape(x)[0], *shape], low, high)


def in_hsv(change):
    """A change of images in [0, 255] made to their hue, saturation and value in [0, 1]."""
    return lambda x: tf.image.hsv_to_rgb(change(tf.image.rgb_to_hsv(x / 255.0))) * 255.0


def turn_hue(x, low, high):
    """Each image's hue turned by its own uniform draw from [low, high) of the colour wheel."""
    return in_hsv(lambda h: tf.concat([(h[..., :1] + uniform(h, low, high)) % 1.0, h[..., 1:]], -1))(x)


def paint_squares(x, fill):
    """x with one to three squares of 8 to 32 pixels (at 96 px) per image, each painted fill(x)."""
    size = x.shape[1]
    grid = tf.cast(tf.range(size), tf.float32)
    squares = tf.random.uniform([tf.shape(x)[0]], 1, 4, tf.int32)
    for k in range(3):
        top_left, side = uniform(x, 0, size, (2,)), uniform(x, size / 12, size / 3, ())
        inside_y = (grid[None, :] >= top_left[:, :1]) & (grid[None, :] < top_left[:, :1] + side[:, None])
        inside_x = (grid[None, :] >= top_left[:, 1:]) & (grid[None, :] < top_left[:, 1:] + side[:, None])
        patch = (inside_y[:, :, None] & inside_x[:, None, :])[..., None] & (squares > k)[:, None, None, None]
        x = tf.where(patch, fill(x), x)
    return x


def corrupt_like_a_test_set(x, p, clean_share=0.0):
    """Changes RandAugment lacks and a modified test set may carry, each on a share p of the batch.

    x: float (n, 96, 96, 3) in [0, 255]. Cells have no orientation, so the eight flips and
    right-angle rotations are applied to every image; each of the rest (hue, saturation,
    grayscale, colour cast, brightness, contrast, blur, noise, pixelation, rotation, zoom, shift,
    occlusion) to its own random share p. Ranges reach past the strongest level of evaluate.py's
    seen families, which these are; its unseen families must never be added here. A random share clean_share of
    the images is spared them all, so every step also sees clean cells.
    """
    size = x.shape[1]
    p = tf.where(uniform(x, 0, 1, ()) < clean_share, 0.0, p)  # each image's chance of each corruption

    x = tf.where(uniform(x, 0, 1) < 0.5, tf.transpose(x, [0, 2, 1, 3]), x)
    x = tf.image.random_flip_up_down(tf.image.random_flip_left_right(x))

    # colour: the stain and the camera
    x = change_some(x, p, lambda x: turn_hue(x, -0.15, 0.15))
    x = change_some(x, p, in_hsv(lambda h: tf.concat(
        [h[..., :1], tf.clip_by_value(h[..., 1:2] * uniform(h, 0.1, 3.0), 0, 1), h[..., 2:]], -1)))
    x = change_some(x, p, lambda x: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)))
    x = change_some(x, p, lambda x: x + uniform(x, -60, 60, (1, 1, 3)))  # colour cast
    x = change_some(x, p, lambda x: x + uniform(x, -80, 80))  # brightness
    def contrast(x):
        mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
        return mean + (x - mean) * tf.exp(uniform(x, np.log(0.3), np.log(2.0)))
    x = tf.clip_by_value(change_some(x, p, contrast), 0.0, 255.0)

    # optics and sensor
    def blur(x):  # gaussian, one width per batch; two 1-D passes, a third of the cost of one 7x7
        sigma = tf.random.uniform([], 0.5, 2.0)
        taps = tf.exp(-0.5 * (tf.range(-3.0, 4.0) / sigma) ** 2)
        taps = tf.tile((taps / tf.reduce_sum(taps))[:, None, None], [1, 3, 1])  # (7, channels, 1)
        x = tf.nn.depthwise_conv2d(x, taps[:, None], [1, 1, 1, 1], "SAME")
        return tf.nn.depthwise_conv2d(x, taps[None], [1, 1, 1, 1], "SAME")
    x = change_some(x, p, blur)
    x = change_some(x, p, lambda x: x + tf.random.normal(tf.shape(x)) * uniform(x, 3, 35))  # sensor noise
    x = change_some(x, p, lambda x: tf.image.resize(tf.image.resize(x, [size // 3, size // 3], "area"),
                                                    [size, size], "nearest"))  # pixelation

    # geometry: rotation by any angle, zoom in or out, shift; one affine map, black outside the picture
    def some(shape):
        return tf.random.uniform([tf.shape(x)[0], *shape]) < tf.reshape(p, [-1] + [1] * len(shape))
    angle = tf.where(some(()), uniform(x, -np.pi / 4, np.pi / 4, ()), 0.0)
    zoom = tf.where(some(()), tf.exp(uniform(x, -np.log(1.6), np.log(1.6), ())), 1.0)
    shift = tf.where(some((2,)), uniform(x, -0.25 * size, 0.25 * size, (2,)), 0.0)
    centre = (size - 1) / 2
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom  # output pixel -> input pixel, about the centre
    transforms = tf.stack([cos, -sin, centre - cos * centre + sin * centre + shift[:, 0],
                           sin, cos, centre - sin * centre - cos * centre + shift[:, 1],
                           tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
    moved = (angle != 0) | (zoom != 1) | tf.reduce_any(shift != 0, axis=1)
    x = change_some(x, p, lambda x: tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=tf.boolean_mask(transforms, moved), output_shape=[size, size], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT"), hit=moved)

    # occlusion: squares, black or a random grey
    x = change_some(x, p, lambda x: paint_squares(x, lambda x: tf.where(uniform(x, 0, 1) < 0.5, 0.0, uniform(x, 0, 255))))
    return tf.clip_by_value(x, 0.0, 255.0)


# ---------------------------------------------------------------------------------------------
# Appearance levers of phase 2: what the network should learn to ignore, beyond the corruptions.

def broad_colours(x, p):
    """The colour breadth the challenge's top entries trained with (keras-cv RandomHue up to the whole
    wheel, ChannelShuffle, RandomChannelShift of up to half the range, Solarization, cut-outs of
    random colours), each on its own random share p of the batch. x: float (n, 96, 96, 3) in [0, 255]."""
    x = change_some(x, p, lambda x: turn_hue(x, 0.0, 1.0))  # any angle of the colour wheel
    orders = tf.constant([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    x = change_some(x, p, lambda x: tf.gather(x, tf.gather(orders, tf.random.uniform([tf.shape(x)[0]], 0, 6, tf.int32)),
                                              axis=3, batch_dims=1))
    x = change_some(x, p, lambda x: x + uniform(x, -127.5, 127.5, (1, 1, 3)))  # each channel its own shift
    x = change_some(x, p, lambda x: tf.where(x >= uniform(x, 128, 255), 255.0 - x, x))  # solarize above a threshold
    x = change_some(x, p, lambda x: paint_squares(x, lambda x: uniform(x, 0, 255, (1, 1, 3))))  # cut-outs, coloured
    return tf.clip_by_value(x, 0.0, 255.0)


def random_convolution(x, p):
    """RandConv (Xu et al., ICLR 2021): a share p of the images through one random convolution a batch,
    of 1x1 (a random colour mixing), 3x3 or 5x5 (a random texture filter), He-initialised, its output
    stretched back to [0, 255] per image and blended with the image by a random weight (their RC-mix)."""
    def convolve(x):
        size = tf.random.shuffle(tf.constant([1, 3, 5]))[0]
        kernel = tf.random.normal([size, size, 3, 3]) * tf.sqrt(2.0 / tf.cast(size * size * 3, tf.float32))
        y = tf.nn.conv2d(x / 127.5 - 1.0, kernel, 1, "SAME")
        low = tf.reduce_min(y, axis=(1, 2, 3), keepdims=True)
        high = tf.reduce_max(y, axis=(1, 2, 3), keepdims=True)
        y = 255.0 * (y - low) / tf.maximum(high - low, 1e-3)
        keep = tf.random.uniform([tf.shape(x)[0], 1, 1, 1])
        return keep * x + (1 - keep) * y
    return tf.clip_by_value(change_some(x, p, convolve), 0.0, 255.0)


def amplitude_swap(x, p):
    """APR-P (Chen et al., ICCV 2021): a share p of the images keep their Fourier phase (where the
    shapes are) under another image's amplitude spectrum (its colours and textures); labels unmixed."""
    def swap(x):
        channels_first = tf.complex(tf.transpose(x, [0, 3, 1, 2]), 0.0)
        spectrum = tf.signal.fft2d(channels_first)
        partner = tf.gather(tf.abs(spectrum), tf.random.shuffle(tf.range(tf.shape(x)[0])))
        mixed = tf.complex(partner, 0.0) * tf.exp(tf.complex(0.0, tf.math.angle(spectrum)))
        return tf.transpose(tf.math.real(tf.signal.ifft2d(mixed)), [0, 2, 3, 1])
    return tf.clip_by_value(change_some(x, p, swap), 0.0, 255.0)


APPEARANCE = {"colour_p": broad_colours, "randconv_p": random_convolution, "apr_p": amplitude_swap}  # config key: lever


def mix_with_partners(x, y, keep_pixels, keep_label):
    """Each image of the batch with another's pixels where keep_pixels < 1, its label weighed by keep_label."""
    partner = tf.random.shuffle(tf.range(tf.shape(x)[0]))
    keep_label = keep_label[:, None]
    return (keep_pixels * x + (1 - keep_pixels) * tf.gather(x, partner),
            keep_label * y + (1 - keep_label) * tf.gather(y, partner))


def mixup(x, y, alpha=0.2):
    """MixUp (Zhang et al. 2018): each image blended with another, by a share from Beta(alpha, alpha)."""
    a, b = tf.random.gamma([tf.shape(x)[0]], alpha), tf.random.gamma([tf.shape(x)[0]], alpha)
    keep = a / tf.maximum(a + b, 1e-30)  # a Beta draw; both gammas can underflow to 0
    return mix_with_partners(x, y, keep[:, None, None, None], keep)


def cutmix(x, y):
    """CutMix (Yun et al. 2019): a square of each image, of a uniform share of the area and centred
    anywhere, replaced by the same square of another image; the label mixed by the pixels each image
    gives. Our own because keras-cv's CutMix labels the square's area before clipping it at the
    edges: wrong by up to 0.6 near them."""
    size = x.shape[1]
    grid = tf.cast(tf.range(size), tf.float32)
    side = tf.sqrt(tf.random.uniform([tf.shape(x)[0], 1])) * size
    centre = tf.random.uniform([tf.shape(x)[0], 2], 0, size)
    inside_y = tf.abs(grid[None, :] + 0.5 - centre[:, :1]) < side / 2
    inside_x = tf.abs(grid[None, :] + 0.5 - centre[:, 1:]) < side / 2
    pasted = tf.cast(inside_y[:, :, None] & inside_x[:, None, :], tf.float32)[..., None]
    return mix_with_partners(x, y, 1 - pasted, 1 - tf.reduce_mean(pasted, axis=(1, 2, 3)))


MIXES = {"none": None, "mixup": mixup, "cutmix": cutmix}  # the presets' and --mix's choices
