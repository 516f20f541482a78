"""The corruption families the robustness figures are made of: f(images uint8 (n, 96, 96, 3), severity,
rng) -> uint8 of the same shape, at three severities, each with its source.

SEEN families are those training's augmentation also uses; UNSEEN ones (microscope, scanner and
file damage) stand in for the challenge's undisclosed modification of its test set, and their mean
is the headline. evaluate.py scores with them; training must never import this file: a family it
trained with would no longer measure what training never saw.
"""
import os
import zlib

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would otherwise ask PyPI for news on import

import albumentations as A
import cv2
import numpy as np

from model import IMAGE_SIZE

SEVERITIES = (1, 2, 3)  # 1 mild, 3 strong but the cell still recognisable by a person

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


SIZE = IMAGE_SIZE
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
