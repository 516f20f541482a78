"""Score a trained network on its held-out images, and preview how it copes with corrupted ones.

    python evaluate.py --data data/training_set.npz --weights weights --out reports [--seed 0] [--limit N]

The challenge's final test set was "modified" in ways never disclosed, and models that scored
0.97-0.99 locally fell to 0.2-0.7 there. So besides the clean score this runs the held-out images
through corruptions, each at three severities, in two groups. The families training never sees
(microscope, scanner and file damage: defocus, vignetting, stain shifts, debris, bubbles, ...)
stand in for the undisclosed modification: their mean is the headline robustness figure. The
families training's augmentation also uses measure the training distribution. Two "mixed" sets
give every image two or three corruptions at once: one from the original suite, one from the
unseen families only. Everything is deterministic given --seed, so two runs, or two networks,
compare.

Writes into --out (all atomically): evaluation.json, confusion_matrix.png, misclassified.png,
robustness_samples.png and robustness.png; prints a table. The held-out images come from the
split.json that train.py wrote beside the weights; evaluate refuses data that split wasn't made for.
"""
import argparse
import json
import os
import time
import zlib
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would otherwise ask PyPI for news on import
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the table

import albumentations as A
import cv2
import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

import data
import model

SEVERITIES = (1, 2, 3)  # 1 mild, 3 strong but the cell still recognisable by a person
QUICK_LIMIT = 300  # images per corruption in --quick mode

# -----------------------------------------------------------------------------
# Corruptions. Each is f(images uint8 (n, 96, 96, 3), severity, rng) -> uint8 of the same shape.
# The pixel work is albumentations' (a well-tested library, and not the keras-cv layers training
# augments with, so the suite is not simply the training distribution again); numpy only picks the
# per-image directions (darker or brighter, which way to shift) and seeds the library.
# Geometric ones fill with black, the default of OpenCV, PIL and torchvision.


def _apply(images, transforms, rng):
    """Run each image through one of `transforms` (picked at random per image), seeded from rng."""
    pipelines = [A.Compose([t], seed=int(rng.integers(2**31))) for t in transforms]
    choice = rng.integers(len(pipelines), size=len(images))
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = pipelines[choice[i]](image=image)["image"]
    return out


def _level(severity, levels):
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
    return levels[severity - 1]


def gaussian_noise(images, severity, rng):
    std = _level(severity, (0.04, 0.08, 0.12))  # fraction of 255: about 10, 20, 31 grey levels
    return _apply(images, [A.GaussNoise(std_range=(std, std), p=1)], rng)


def gaussian_blur(images, severity, rng):
    sigma = _level(severity, (0.7, 1.1, 1.6))  # pixels, at 96x96
    return _apply(images, [A.GaussianBlur(blur_limit=0, sigma_limit=(sigma, sigma), p=1)], rng)


def motion_blur(images, severity, rng):
    k = _level(severity, (5, 7, 9))  # kernel length in pixels, random angle
    return _apply(images, [A.MotionBlur(blur_limit=(k, k), allow_shifted=False, p=1)], rng)


def jpeg(images, severity, rng):
    q = _level(severity, (35, 20, 10))
    return _apply(images, [A.ImageCompression(quality_range=(q, q), p=1)], rng)


def brightness(images, severity, rng):
    b = _level(severity, (0.1, 0.2, 0.3))  # fraction of 255 added, darker or brighter
    return _apply(images, [A.RandomBrightnessContrast(brightness_limit=(s, s), contrast_limit=(0, 0), p=1)
                           for s in (b, -b)], rng)


def contrast(images, severity, rng):
    low, high = _level(severity, ((0.7, 1.25), (0.5, 1.5), (0.35, 1.8)))  # flatter or harsher, about the mean grey
    return _apply(images, [A.ColorJitter(brightness=(1, 1), contrast=(c, c), saturation=(1, 1), hue=(0, 0), p=1)
                           for c in (low, high)], rng)


def saturation(images, severity, rng):
    low, high = _level(severity, ((0.6, 1.6), (0.35, 2.2), (0.15, 3.0)))  # duller or more vivid
    return _apply(images, [A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(s, s), hue=(0, 0), p=1)
                           for s in (low, high)], rng)


def hue(images, severity, rng):
    h = _level(severity, (0.03, 0.07, 0.12))  # fraction of the colour wheel: about 11, 25, 43 degrees
    return _apply(images, [A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(s, s), p=1)
                           for s in (h, -h)], rng)


def colour_cast(images, severity, rng):
    m = _level(severity, (20, 35, 55))  # grey levels pushed toward red, green, blue, cyan, magenta or yellow
    casts = [(1, -0.5, -0.5), (-0.5, 1, -0.5), (-0.5, -0.5, 1), (-1, 0.5, 0.5), (0.5, -1, 0.5), (0.5, 0.5, -1)]
    return _apply(images, [A.RGBShift(r_shift_limit=(m * r, m * r), g_shift_limit=(m * g, m * g),
                                      b_shift_limit=(m * b, m * b), p=1) for r, g, b in casts], rng)


def grayscale(images, severity, rng):
    amount = _level(severity, (0.5, 0.8, 1.0))  # how far toward gray: a faded stain, then none
    gray = _apply(images, [A.ToGray(p=1)], rng).astype(np.float32)
    return np.round(amount * gray + (1 - amount) * images).astype(np.uint8)


def rotation(images, severity, rng):
    d = _level(severity, (15, 30, 45))  # degrees, either way
    return _apply(images, [A.Rotate(limit=(a, a), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1)
                           for a in (d, -d)], rng)


def flip(images, severity, rng):
    # lossless, so the "severity" is just which flip: mirror, upside down, across the diagonal
    t = _level(severity, (A.HorizontalFlip, A.VerticalFlip, A.Transpose))
    return _apply(images, [t(p=1)], rng)


def shift(images, severity, rng):
    f = _level(severity, (0.08, 0.15, 0.22))  # fraction of the side, in one of 8 directions
    moves = [(x, y) for x in (-f, 0, f) for y in (-f, 0, f) if (x, y) != (0, 0)]
    return _apply(images, [A.Affine(translate_percent={"x": (x, x), "y": (y, y)}, border_mode=cv2.BORDER_CONSTANT,
                                    fill=0, p=1) for x, y in moves], rng)


def zoom(images, severity, rng):
    z = _level(severity, (1.15, 1.3, 1.5))  # in (edges cropped) or out (black frame)
    return _apply(images, [A.Affine(scale=(s, s), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1)
                           for s in (z, 1 / z)], rng)


def occlusion(images, severity, rng):
    n, side = _level(severity, ((1, 16), (2, 22), (3, 28)))  # black squares, side in pixels
    return _apply(images, [A.CoarseDropout(num_holes_range=(n, n), hole_height_range=(side, side),
                                           hole_width_range=(side, side), fill=0, p=1)], rng)


def pixelate(images, severity, rng):
    scale = _level(severity, (0.5, 0.375, 0.3))  # down to 48, 36, 29 pixels, then blown up blocky
    return _apply(images, [A.Downscale(scale_range=(scale, scale), p=1, interpolation_pair={
        "downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST})], rng)


# -----------------------------------------------------------------------------
# Families training never uses (train.py's augmentation has none of them): they stand in for the
# undisclosed modification of the test set, and their mean is the headline robustness figure.
# What microscopes, slide scanners and files do to a smear; never add them to training. Hue
# rotations and channel swaps were among them until --colour-p trained with both: now seen.


def _per_image(images, rng, shape=(1, 1, 1)):
    """One uniform draw in [0, 1) per image, broadcastable against (n, 96, 96, 3)."""
    return rng.random((len(images), *shape))


def _directions(images, rng):
    """A random unit vector per image, (n, 2): which way a gradient or a shift points."""
    angle = _per_image(images, rng, ()) * 2 * np.pi
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


SIZE = model.IMAGE_SIZE
_GRID = np.stack(np.mgrid[:SIZE, :SIZE], axis=-1).astype(np.float32)  # (SIZE, SIZE, 2): each pixel's (y, x)
_CENTRE = (SIZE - 1) / 2


def vignetting(images, severity, rng):
    # light falls off towards the corners of the field (Piccinini et al. 2012, "Multi-image based
    # method to correct vignetting effect in light microscopy images", J. Microscopy)
    k = _level(severity, (0.25, 0.45, 0.65))  # share of the light lost in the corners
    r2 = ((_GRID - _CENTRE) ** 2).sum(-1) / (2 * _CENTRE ** 2)  # 0 at the centre, 1 in a corner
    return np.clip(images * (1 - k * r2)[None, :, :, None], 0, 255).astype(np.uint8)


def uneven_illumination(images, severity, rng):
    # a lamp or condenser out of line lights one side more than the other (Smith et al. 2015,
    # "CIDRE: an illumination-correction method for optical microscopy", Nature Methods)
    k = _level(severity, (0.15, 0.3, 0.45))  # brightness from 1 - k on one side to 1 + k on the other
    along = np.einsum("yxc,nc->nyx", (_GRID - _CENTRE) / _CENTRE, _directions(images, rng)[:, ::-1])
    return np.clip(images * (1 + k * np.clip(along, -1, 1))[..., None], 0, 255).astype(np.uint8)


def defocus_blur(images, severity, rng):
    # out of focus: a disk-shaped blur, not a gaussian (Hendrycks and Dietterich 2019, ImageNet-C;
    # MedMNIST-C, Di Salvo et al. 2024, for blood-cell images)
    r = _level(severity, (2, 3, 4))  # disk radius in pixels, at 96x96
    return _apply(images, [A.Defocus(radius=(r, r), alias_blur=(0.1, 0.1), p=1)], rng)


def overexposure(images, severity, rng):
    # too long an exposure or too bright a lamp: every value multiplied, highlights clipped to white
    gain = _level(severity, (1.25, 1.5, 1.8))
    return np.clip(images.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _hed(images):
    """RGB -> haematoxylin, eosin and DAB stain amounts by colour deconvolution (Ruifrok and
    Johnston 2001, skimage's rgb2hed): optical densities times the inverse stain matrix."""
    density = -np.log(np.maximum(images.astype(np.float32) / 255.0, 1e-6))
    return density @ _HED_FROM_RGB


_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def stain(images, severity, rng):
    # another lab's staining: each stain's amount scaled and shifted in stain space (HED jitter,
    # Tellez et al. 2018, "Whole-slide mitosis detection in H&E breast histology using PHH3 as a
    # reference to train distilled stain-invariant convolutional networks"), not an RGB shift
    sigma = _level(severity, (0.25, 0.45, 0.7))
    signs = np.where(rng.random((len(images), 1, 1, 3)) < 0.5, -1.0, 1.0)
    scale = 1 + sigma * signs * rng.uniform(0.6, 1.0, (len(images), 1, 1, 3))
    offset = sigma * 0.1 * rng.uniform(-1, 1, (len(images), 1, 1, 3))
    density = (_hed(images) * scale + offset) @ _RGB_FROM_HED
    return np.clip(255 * np.exp(-density), 0, 255).astype(np.uint8)


def _discs(n, rng, count, radius):
    """(n, SIZE, SIZE) float masks of count[i] discs each, at random places, of radii drawn from radius (low, high)."""
    masks = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        for _ in range(count):
            centre, r = rng.uniform(0, SIZE, 2), rng.uniform(*radius)
            d = np.sqrt(((_GRID - centre) ** 2).sum(-1))
            masks[i] = np.maximum(masks[i], np.clip(r + 0.5 - d, 0, 1))  # one pixel of soft edge
    return masks


def debris(images, severity, rng):
    # dust on the optics and stain precipitate on the slide: dark specks and blobs (MedMNIST-C's
    # "stain deposit", Di Salvo et al. 2024; Janowczyk et al. 2019, HistoQC, on slide artefacts)
    specks, blobs = _level(severity, ((15, 2), (35, 4), (60, 7)))
    dark = np.maximum(_discs(len(images), rng, specks, (0.5, 1.2)), _discs(len(images), rng, blobs, (1.5, 4.0)))
    colour = np.array([45, 25, 60], np.float32)  # the near-black purple of precipitated stain
    out = images * (1 - 0.85 * dark[..., None]) + colour * 0.85 * dark[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def bubbles(images, severity, rng):
    # air bubbles under the cover slip: bright translucent circles with a dark rim (MedMNIST-C's
    # "bubble", Di Salvo et al. 2024)
    count = _level(severity, (1, 2, 3))
    out = images.astype(np.float32)
    for i in range(len(images)):
        for _ in range(count):
            centre, r = rng.uniform(10, SIZE - 10, 2), rng.uniform(10, 22)
            d = np.sqrt(((_GRID - centre) ** 2).sum(-1))
            inside = np.clip(r - d, 0, 1)[..., None]
            rim = np.exp(-0.5 * ((d - r) / 1.2) ** 2)[..., None]
            out[i] = out[i] + inside * 0.45 * (255 - out[i])  # lighter, but the cell shows through
            out[i] = out[i] * (1 - 0.55 * rim)
    return np.clip(out, 0, 255).astype(np.uint8)


def chromatic_aberration(images, severity, rng):
    # a lens that focuses red and blue at different places: the two channels shifted apart
    # (Kozubek and Matula 2000, "An efficient algorithm for measurement and correction of chromatic
    # aberrations in fluorescence microscopy", J. Microscopy)
    d = _level(severity, (1.0, 2.0, 3.0))  # pixels between red and blue
    out = np.array(images, copy=True)
    for i, (dy, dx) in enumerate(_directions(images, rng) * d / 2):
        for channel, sign in ((0, 1), (2, -1)):
            move = np.float32([[1, 0, sign * dx], [0, 1, sign * dy]])
            out[i, ..., channel] = cv2.warpAffine(images[i, ..., channel], move, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                                  borderMode=cv2.BORDER_REPLICATE)
    return out


def hue_rotation(images, severity, rng):
    # a stain or a camera far off: the colour wheel turned further than training's hue shifts go
    degrees = _level(severity, (90, 135, 180))
    hsv = cv2.cvtColor(images.reshape(-1, SIZE, 3), cv2.COLOR_RGB2HSV).reshape(images.shape)  # OpenCV hue: 0..179
    turn = np.where(_per_image(images, rng, ()) < 0.5, -1, 1) * degrees // 2
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + turn[:, None, None]) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv.reshape(-1, SIZE, 3), cv2.COLOR_HSV2RGB).reshape(images.shape)


def channel_swap(images, severity, rng):
    # images saved as BGR or with channels mixed up; like flip, the severity is which swap, not how strong
    order = _level(severity, ((2, 1, 0), (0, 2, 1), (1, 0, 2)))  # red-blue (BGR), green-blue, red-green
    return np.ascontiguousarray(images[..., list(order)])


def impulse_noise(images, severity, rng):
    # dead and hot pixels, transmission errors: salt and pepper (ImageNet-C's impulse noise)
    amount = _level(severity, (0.01, 0.03, 0.06))  # share of the pixels
    return _apply(images, [A.SaltAndPepper(amount=(amount, amount), p=1)], rng)


def zoom_blur(images, severity, rng):
    # the focus or the stage moved during the exposure: copies zoomed about the centre, averaged
    # (Hendrycks and Dietterich 2019, ImageNet-C's zoom blur)
    top = _level(severity, (1.06, 1.11, 1.16))  # the largest copy's zoom
    return _apply(images, [A.ZoomBlur(max_factor=(top, top), step_factor=(0.01, 0.01), p=1)], rng)


def speckle_noise(images, severity, rng):
    # noise that grows with the signal, as a camera's photon and gain noise do (ImageNet-C's speckle
    # noise, in its extra set): each value times 1 plus gaussian noise
    sigma = _level(severity, (0.08, 0.15, 0.25))
    noisy = images * (1 + sigma * rng.standard_normal(images.shape, dtype=np.float32))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def elastic_transform(images, severity, rng):
    # a smear's cells pressed and stretched, or a scanner's lines out of step: a smooth random
    # displacement field (Simard et al. 2003; ImageNet-C's elastic transform)
    alpha = _level(severity, (60, 120, 200))  # the field's strength, in pixels before smoothing
    return _apply(images, [A.ElasticTransform(alpha=alpha, sigma=5, border_mode=cv2.BORDER_REFLECT_101, p=1)], rng)


# What train.py's augmentation also does or may do (corrupt_like_a_test_set, RandAugment, and
# --colour-p, which turns the hue anywhere and swaps channels): these measure the training
# distribution. The mixed set draws from them and motion blur and JPEG, as it always has.
SEEN = (gaussian_noise, gaussian_blur, brightness, contrast, saturation, hue, colour_cast, grayscale,
        rotation, flip, shift, zoom, occlusion, pixelate, hue_rotation, channel_swap)
UNSEEN = (motion_blur, jpeg, defocus_blur, zoom_blur, vignetting, uneven_illumination, overexposure, stain, debris,
          bubbles, chromatic_aberration, impulse_noise, speckle_noise, elastic_transform)
CORRUPTIONS = {f.__name__: f for f in SEEN + UNSEEN}
SEEN_NAMES, UNSEEN_NAMES = [f.__name__ for f in SEEN], [f.__name__ for f in UNSEEN]
# the headline's 13 families until training could use colour beyond its range: for comparison with
# earlier runs only, now partly seen
UNSEEN_BEFORE = ("motion_blur", "jpeg", "defocus_blur", "vignetting", "uneven_illumination", "overexposure", "stain",
                 "debris", "bubbles", "chromatic_aberration", "hue_rotation", "channel_swap", "impulse_noise")
MIXED_FROM = ("gaussian_noise", "gaussian_blur", "motion_blur", "jpeg", "brightness", "contrast", "saturation", "hue",
              "colour_cast", "grayscale", "rotation", "flip", "shift", "zoom", "occlusion", "pixelate")


def corrupt(images, name, severity, seed=0):
    """images uint8 (n, 96, 96, 3) under corruption `name` at `severity`; the same seed gives the same result."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (SIZE, SIZE, 3):  # the families' grids are SIZE
        raise ValueError(f"expected uint8 images of shape (n, {SIZE}, {SIZE}, 3), got {images.dtype} {images.shape}")
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    # one stream per (seed, name), whatever the severity: each severity makes the same random choices
    # (which way, where), only stronger
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return CORRUPTIONS[name](images, severity, rng)


def mixed_recipes(n, seed=0, names=MIXED_FROM):
    """For each of n images, 2 or 3 different corruptions of names at random severities:
    [(name, severity, seed), ...]. The unseen families draw from a stream of their own."""
    tag = b"mixed" if tuple(names) == MIXED_FROM else b"mixed " + ",".join(names).encode()
    rng = np.random.default_rng([seed, zlib.crc32(tag)])
    names = list(names)
    recipes = []
    for _ in range(n):
        picked = rng.choice(len(names), size=int(rng.integers(2, 4)), replace=False)
        recipes.append([(names[j], int(rng.integers(1, len(SEVERITIES) + 1)), int(rng.integers(2**31))) for j in picked])
    return recipes


def mixed(images, seed=0, names=MIXED_FROM):
    """Each image under its own 2 or 3 corruptions (see mixed_recipes), applied in turn."""
    out = np.array(images, copy=True)
    for i, recipe in enumerate(mixed_recipes(len(out), seed, names)):
        for name, severity, step_seed in recipe:
            out[i:i + 1] = corrupt(out[i:i + 1], name, severity, step_seed)
    return out


# -----------------------------------------------------------------------------
# The held-out images: exactly the ones train.py set aside, or nothing.


class SplitError(Exception):
    """The weights folder has no usable split for this data."""


def load_holdout(data_path, folders):
    """Return (images, labels, held-out indices, split dict) or raise SplitError / data.DataError saying why.

    folders: a list of runs, one or several scored as one ensemble, which must all have held out
    the same images (the data file is read once).
    """
    images, labels = data.load_training_set(data_path)
    held, split = read_split(data_path, folders[0], images, labels)
    for folder in folders[1:]:
        if not np.array_equal(read_split(data_path, folder, images, labels)[0], held):
            raise SplitError(f"{folders[0]} and {folder} held out different images, so each member has trained on "
                             "images the other is scored on. Train the members with the same --split-seed")
    return images[held], labels[held], held, split


def read_split(data_path, weights_dir, images, labels):
    """The held-out indices and split dict of one run, checked against the data it claims."""
    split_path = Path(weights_dir) / "split.json"
    if not split_path.is_file():
        raise SplitError(f"no split.json in {weights_dir}: train.py writes it beside the weights. Without it the "
                         "held-out images are unknown, and scoring on training images would overstate accuracy")
    try:
        split = json.loads(split_path.read_text())
    except (OSError, ValueError) as e:
        raise SplitError(f"{split_path} is not readable JSON ({e})") from e
    if not isinstance(split, dict) or "fingerprint" not in split or "holdout" not in split:
        raise SplitError(f"{split_path} lacks 'fingerprint' or 'holdout'; rerun train.py to write a complete split")
    found = data.fingerprint(images, labels)
    if split["fingerprint"] != found and "data" in split:
        raise SplitError(f"{split_path} was made from {split['data']}, and {data_path} holds other images (fingerprint "
                         f"{found}, not {split['fingerprint']}): evaluate on the file the network was trained with, "
                         f"DATA={split['data']} (--data), or retrain on this one")
    if split["fingerprint"] != found:  # a split.json of an older train.py, which did not record the file
        raise SplitError(f"{split_path} was made for data with fingerprint {split['fingerprint']}, but {data_path} "
                         f"has {found}: evaluate on the file the network was trained with (or retrain on this one)")
    try:
        held = np.asarray(split["holdout"], dtype=np.int64)
        train = np.asarray(split.get("train", []), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise SplitError(f"{split_path}: 'holdout' and 'train' must be lists of image indices ({e})") from e
    if held.ndim != 1 or len(held) == 0:
        raise SplitError(f"{split_path} has an empty held-out list; nothing to score")
    if held.min() < 0 or held.max() >= len(labels) or len(np.unique(held)) != len(held):
        raise SplitError(f"{split_path}: held-out indices must be distinct and within 0..{len(labels) - 1}")
    leaked = np.intersect1d(held, train)
    if len(leaked):
        raise SplitError(f"{split_path}: {len(leaked)} held-out images are also in 'train'; the score would be meaningless")
    return held, split


# -----------------------------------------------------------------------------
# Scoring


def score(true, predicted):
    """Accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix (rows true, columns predicted)."""
    classes = list(range(model.NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(true, predicted, labels=classes, zero_division=0)
    cm = confusion_matrix(true, predicted, labels=classes)
    return {
        "accuracy": float(np.mean(true == predicted)),
        "macro_f1": float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                             "support": int(support[c])} for c, name in enumerate(model.CLASS_NAMES)},
        "confusion_matrix": cm.tolist(),
    }


def robustness(net, images, labels, clean_predicted, seed, severities=SEVERITIES, names=None):
    """Accuracy under each corruption at each severity; the means of the families training never
    sees (the headline) and of those it does; the mixed sets' accuracies."""
    names = list(names or CORRUPTIONS)
    result = {"images": len(images), "severities": list(severities), "seed": seed,
              "clean_accuracy": float(np.mean(clean_predicted == labels)), "corruptions": {}}
    for name in names:
        started, accs = time.time(), {}
        for s in severities:
            accs[str(s)] = float(np.mean(net.predict(corrupt(images, name, s, seed)) == labels))
        accs["mean"] = float(np.mean([accs[str(s)] for s in severities]))
        result["corruptions"][name] = accs
        print(f"  {name:<20} " + "  ".join(f"{accs[str(s)]:.3f}" for s in severities)
              + f"   ({time.time() - started:.0f} s)", flush=True)  # progress: the full suite takes a while
    for group, members in (("unseen", UNSEEN_NAMES), ("seen", SEEN_NAMES)):
        scored = [result["corruptions"][n]["mean"] for n in members if n in result["corruptions"]]
        result[f"{group}_families"] = [n for n in members if n in result["corruptions"]]
        result[f"{group}_mean"] = float(np.mean(scored)) if scored else None
    if all(n in result["corruptions"] for n in UNSEEN_BEFORE):
        result["unseen_before_mean"] = float(np.mean([result["corruptions"][n]["mean"] for n in UNSEEN_BEFORE]))
    result["mixed_accuracy"] = float(np.mean(net.predict(mixed(images, seed)) == labels))
    result["unseen_mixed_accuracy"] = float(np.mean(net.predict(mixed(images, seed, UNSEEN_NAMES)) == labels))
    return result


# -----------------------------------------------------------------------------
# Output: written atomically, so a reader sees the old file or the new one, never half of one


def plot_confusion(cm, accuracy, path):
    cm = np.asarray(cm)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # shade by share of the true class, so rare classes show
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=10,
                    color="white" if rates[i, j] > 0.55 else "black")
    ticks = range(len(model.CLASS_NAMES))
    ax.set_xticks(ticks, model.CLASS_NAMES, rotation=35, ha="right")
    ax.set_yticks(ticks, model.CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"held-out confusion matrix: {cm.sum()} images, accuracy {accuracy:.3f}\n"
                 "(counts; shading = share of the true class's images)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of row")
    data.save_figure(fig, path, dpi=100)


def plot_misclassified(images, true, predicted, confidence, held_out, path, max_images=42, columns=7):
    """The held-out mistakes, the most confident first: label noise and systematic confusions show up here."""
    order = np.argsort(-confidence)[:max_images]
    rows = max(1, -(-len(order) // columns))
    # panels wide enough for "true immature granulocyte", the longest line, with room between neighbours
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.8, rows * 2.2 + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        ax.imshow(images[i])
        ax.set_title(f"true {model.CLASS_NAMES[true[i]]}\npred {model.CLASS_NAMES[predicted[i]]}\n"
                     f"probability {confidence[i]:.2f}", fontsize=7.5)
    if len(order) == 0:
        axes[0, 0].text(0, 0.5, "no misclassified held-out images", fontsize=12)
    fig.suptitle(f"{len(true)} of {held_out} held-out images misclassified; the {len(order)} most confident mistakes "
                 "(pred: the predicted class)", fontsize=10)
    data.save_figure(fig, path, dpi=100)


def plot_samples(image, seed, severities, names, path):
    """One held-out image under every corruption at every severity, and three of each mixed set;
    the families training never sees are marked."""
    rows = [("clean", [("", image)])]
    for name in names:
        label = name + (" *" if name in UNSEEN_NAMES else "")
        rows.append((label, [(f"severity {s}", corrupt(image[None], name, s, seed)[0]) for s in severities]))
    for label, pool in (("mixed", MIXED_FROM), ("unseen mixed *", UNSEEN_NAMES)):
        many = mixed(np.repeat(image[None], len(severities), axis=0), seed, pool)
        recipes = mixed_recipes(len(severities), seed, pool)
        rows.append((label, [("\n".join(f"{n} {s}" for n, s, _ in r), m) for r, m in zip(recipes, many)]))
    # blocks of rows side by side, as many as make the picture wider than tall: it fits a screen
    columns, width, height = len(severities), 1.6, 1.7  # inches per tile
    blocks = next(b for b in range(1, len(rows) + 1) if b * columns * width >= -(-len(rows) // b) * height)
    per_block = -(-len(rows) // blocks)
    fig, axes = plt.subplots(per_block, blocks * columns, figsize=(blocks * columns * width, per_block * height + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, tiles) in enumerate(rows):
        block, row = divmod(r, per_block)
        for c, (title, tile) in enumerate(tiles):
            ax = axes[row, block * columns + c]
            ax.imshow(tile)
            ax.set_title(title, fontsize=6 if "\n" in title else 8)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, block * columns].set_ylabel(name, fontsize=8.5)
    fig.suptitle(f"robustness suite on one held-out image (seed {seed}); * a family training never sees", fontsize=11)
    data.save_figure(fig, path, dpi=100)


def plot_robustness(result, path):
    """Grouped bars, one group per corruption (the unseen families first, worst mean first), the
    headline means and mixed sets on top, and a line at the clean accuracy."""
    severities = result["severities"]
    def by_mean(group):
        return sorted(result[f"{group}_families"], key=lambda n: result["corruptions"][n]["mean"])
    names = by_mean("unseen") + by_mean("seen")
    summary = [(f"unseen mean ({len(result['unseen_families'])} families)", result["unseen_mean"], "crimson"),
               ("unseen mixed (2-3 each)", result["unseen_mixed_accuracy"], "salmon"),
               (f"seen mean ({len(result['seen_families'])} families)", result["seen_mean"], "grey"),
               ("mixed (2-3 of the suite)", result["mixed_accuracy"], "darkorange")]
    summary = [s for s in summary if s[1] is not None]
    height = 0.8 / len(severities)
    colours = plt.cm.Blues(np.linspace(0.35, 0.9, len(severities)))
    rows = len(names) + len(summary)
    fig, ax = plt.subplots(figsize=(9, 0.36 * rows + 1.6), layout="constrained")
    ys = np.arange(len(summary), rows)
    for k, s in enumerate(severities):
        ax.barh(ys + (k - (len(severities) - 1) / 2) * height, [result["corruptions"][n][str(s)] for n in names],
                height, color=colours[k], label=f"severity {s}")
    for y, n in zip(ys, names):
        ax.text(1.01, y, f"mean {result['corruptions'][n]['mean']:.3f}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=8, color="dimgrey")  # right of the axes, clear of the bars
    for y, (label, value, colour) in enumerate(summary):
        ax.barh([y], [value], 0.6, color=colour)
        ax.text(value + 0.01, y, f"{value:.3f}", va="center", fontsize=8)
    ax.axvline(result["clean_accuracy"], color="crimson", linestyle="--", label=f"clean {result['clean_accuracy']:.3f}")
    ax.axvline(1 / model.NUM_CLASSES, color="black", linestyle=":", linewidth=1, label="1/8 (uniform guess)")
    ax.set_yticks(range(rows), [s[0] for s in summary] + [n + (" *" if n in UNSEEN_NAMES else "") for n in names])
    ax.set_ylim(rows - 0.5, -0.5)  # top to bottom
    ax.axhline(len(summary) - 0.5, color="black", linewidth=0.5)
    if result["unseen_families"] and result["seen_families"]:
        ax.axhline(len(summary) + len(result["unseen_families"]) - 0.5, color="black", linewidth=0.5, linestyle=":")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("accuracy on corrupted held-out images")
    ax.set_title(f"robustness: {result['images']} held-out images per corruption, seed {result['seed']}; "
                 "* a family training never sees")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    data.save_figure(fig, path, dpi=100)


def format_table(report):
    """The scores as plain text for the terminal (and the README)."""
    lines = [f"held-out images: {report['held_out']}   accuracy {report['accuracy']:.4f}   macro F1 {report['macro_f1']:.4f}",
             "",
             f"{'class':<22}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}"]
    for name, m in report["per_class"].items():
        lines.append(f"{name:<22}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['support']:>9d}")
    r = report.get("robustness")
    if r:
        sevs = r["severities"]
        pad = 22 + 8 * len(sevs)
        lines += ["", f"robustness: accuracy on {r['images']} held-out images (clean {r['clean_accuracy']:.3f})"]
        for group, title in (("unseen", "families training never sees"), ("seen", "families training also uses")):
            if not r[f"{group}_families"]:
                continue
            lines += [f"{title:<22}" + "".join(f"{'sev ' + str(s):>8}" for s in sevs) + f"{'mean':>8}"]
            for name in r[f"{group}_families"]:
                a = r["corruptions"][name]
                lines.append(f"  {name:<20}" + "".join(f"{a[str(s)]:>8.3f}" for s in sevs) + f"{a['mean']:>8.3f}")
            lines.append(f"{'  mean':<{pad}}{r[f'{group}_mean']:>8.3f}")
        lines += [f"{'unseen mixed (2-3 unseen families)':<{pad}}{r['unseen_mixed_accuracy']:>8.3f}",
                  f"{'mixed (2-3 of the suite)':<{pad}}{r['mixed_accuracy']:>8.3f}"]
        if r.get("unseen_before_mean") is not None:
            lines.append(f"{'the 13 families of before (partly seen)':<{pad}}{r['unseen_before_mean']:>8.3f}")
        if r["unseen_mean"] is not None:
            lines.append(f"{'HEADLINE: unseen families mean':<{pad}}{r['unseen_mean']:>8.3f}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------


def main(argv=None):
    parser = data.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/training_set.npz",
                        help="the training file the split was made from (default: %(default)s)")
    parser.add_argument("--weights", nargs="+", default=["weights"],
                        help="folder with weights*.npz and split.json; several folders are scored as one ensemble "
                             "(default: weights)")
    parser.add_argument("--out", default="reports",
                        help="folder for evaluation.json and the pictures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="picks the robustness images and the corruptions "
                                                            "(default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="held-out images per corruption (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"lighter robustness run: {QUICK_LIMIT} images per "
                                                             "corruption (default: off)")
    parser.add_argument("--severities", type=int, nargs="+", default=list(SEVERITIES), choices=SEVERITIES,
                        help="the strengths each corruption runs at: 1 mild, 2 medium, 3 strong but the cell still "
                             f"recognisable by a person (default: {' '.join(map(str, SEVERITIES))})")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=list(CORRUPTIONS), metavar="NAME",
                        help="a subset of: " + ", ".join(CORRUPTIONS) + " (default: all)")
    parser.add_argument("--no-robustness", action="store_true", help="clean score only (default: off, the corruptions "
                                                                     "run too)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=model.TEST_TIME_AUGMENTATION,
                        help="average the eight flips and right-angle rotations (default: as model.py ships, "
                             f"{'on' if model.TEST_TIME_AUGMENTATION else 'off'})")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.seed < 0:
        parser.error("--seed must be 0 or more")
    started = time.time()

    try:
        images, labels, held, split = load_holdout(args.data, args.weights)
    except (SplitError, data.DataError) as e:
        raise SystemExit(f"evaluate.py: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"scoring {len(held)} held-out images of {args.data} with {' + '.join(args.weights)}", flush=True)

    # Scored the way Codabench calls the submission: Model() then predict() on the uint8 batch.
    net = model.Model(args.weights, tta=args.tta)
    predicted = net.predict(images)
    report = {"data": str(args.data), "weights": " + ".join(args.weights), "fingerprint": split["fingerprint"],
              "held_out": int(len(held)), "seed": args.seed, "class_names": list(model.CLASS_NAMES),
              **score(labels, predicted)}
    seconds = {"clean": round(time.time() - started, 1)}

    wrong = np.flatnonzero(predicted != labels)
    confidence = net.predict_proba(images[wrong]).max(axis=1) if len(wrong) else np.zeros(0)
    plot_confusion(report["confusion_matrix"], report["accuracy"], out / "confusion_matrix.png")
    plot_misclassified(images[wrong], labels[wrong], predicted[wrong], confidence, len(held), out / "misclassified.png")

    report["robustness"] = None
    if args.no_robustness:
        for stale in ("robustness.png", "robustness_samples.png"):  # don't leave an older run's pictures beside this report
            (out / stale).unlink(missing_ok=True)
    else:
        limit = args.limit or (QUICK_LIMIT if args.quick else len(held))
        pick = np.sort(np.random.default_rng(args.seed).permutation(len(held))[:limit])
        severities = sorted(set(args.severities))
        print(f"robustness: {len(args.corruptions)} corruptions x {len(severities)} severities + mixed, "
              f"{len(pick)} images each", flush=True)
        t = time.time()
        report["robustness"] = robustness(net, images[pick], labels[pick], predicted[pick], args.seed,
                                          severities, args.corruptions)
        seconds["robustness"] = round(time.time() - t, 1)
        sample = pick[np.random.default_rng(args.seed).integers(len(pick))]
        plot_samples(images[sample], args.seed, severities, args.corruptions, out / "robustness_samples.png")
        plot_robustness(report["robustness"], out / "robustness.png")

    seconds["total"] = round(time.time() - started, 1)
    report["seconds"] = seconds
    data.write_json(out / "evaluation.json", report, indent=2)
    print()
    print(format_table(report))
    print(f"\nwrote {out}/evaluation.json and pictures in {seconds['total']:.0f} s")
    return report


if __name__ == "__main__":
    main()
