"""Shared test fixtures: data sets generated on the fly, so the tests need nothing from outside."""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import data  # noqa: E402

data.quiet_tensorflow()  # as our programs do: without the lines TensorFlow prints that are errors in name only
import keras  # noqa: E402
import model  # noqa: E402
import outliers  # noqa: E402
from outliers import find_outliers  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data" / "build_training_set.py"


PALETTE = np.array([[220, 30, 30], [30, 160, 40], [40, 60, 220], [230, 200, 30],
                    [30, 200, 210], [200, 40, 200], [120, 70, 20], [250, 160, 200]], np.float32)


def learnable_images(n, seed=0):
    """n images whose class shows plainly: class k is a shape (disk, square, ring or cross for
    k % 4), striped when k >= 4, in colour PALETTE[k], at a random place on a noisy grey ground."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 8
    rng.shuffle(labels)
    yy, xx = np.mgrid[:96, :96]
    images = rng.normal(128, 12, size=(n, 96, 96, 3)).astype(np.float32)
    for i, k in enumerate(labels):
        cy, cx = rng.integers(36, 61, size=2)
        r = rng.uniform(18, 26)
        dy, dx = yy - cy, xx - cx
        shape = [dy**2 + dx**2 <= r**2,
                 np.maximum(abs(dy), abs(dx)) <= r * 0.85,
                 (dy**2 + dx**2 <= r**2) & (dy**2 + dx**2 >= (0.6 * r) ** 2),
                 (np.minimum(abs(dy), abs(dx)) <= r * 0.3) & (np.maximum(abs(dy), abs(dx)) <= r)][k % 4]
        if k >= 4:
            shape &= (yy // 4) % 2 == 0
        images[i][shape] = PALETTE[k] + rng.normal(0, 10, 3)
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def learnable_npz(tmp_path_factory):
    """A challenge-style training file of 480 learnable images."""
    images, labels = learnable_images(480)
    path = tmp_path_factory.mktemp("data") / "training_set.npz"
    np.savez(path, images=images, labels=labels[:, None])
    return path


@pytest.fixture(scope="session")
def real_npz(tmp_path_factory):
    """The shared PBC images as a challenge-style file, built in a temporary folder; skips without them."""
    if not SHARED_DATA.is_file():
        pytest.skip(f"needs {SHARED_DATA} (the real blood-cell images)")
    path = tmp_path_factory.mktemp("real") / "training_set.npz"
    subprocess.run([sys.executable, str(SHARED_DATA), str(path)], check=True, capture_output=True)
    return path


def cell_images(n, seed=0):
    """Blood-smear-like pictures: a light pink field, a textured purple disc somewhere near the middle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:model.IMAGE_SIZE, :model.IMAGE_SIZE]
    images = np.empty((n, model.IMAGE_SIZE, model.IMAGE_SIZE, 3), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(35, 61, size=2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(10, 25) ** 2)[..., None]
        field = np.array([235, 215, 200]) + rng.normal(0, 6, (model.IMAGE_SIZE, model.IMAGE_SIZE, 3))
        cell = np.array([110, 60, 150]) + rng.normal(0, 25, (model.IMAGE_SIZE, model.IMAGE_SIZE, 3))
        images[i] = np.clip(np.where(disc, cell, field), 0, 255).astype(np.uint8)
    return images


# the synthetic smears of test_outliers.py, test_eda.py and test_data.py: every kind of outlier planted

SMEAR_BACKGROUND = (236, 208, 190)


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


@pytest.fixture(scope="session")  # one outlier search for every file that asks
def planted():
    images, labels, where = planted_set()
    return images, labels, where, find_outliers(images, labels)


def run_cli(monkeypatch, *args):
    """outliers.py's command line, run in this process (TensorFlow loads once)."""
    monkeypatch.setattr(sys, "argv", ["outliers.py", *map(str, args)])
    outliers.main()


def latest_checkpoint(out):
    pointer = out / "checkpoint" / "latest.json"
    if not pointer.is_file():
        return None
    return json.loads((out / "checkpoint" / json.loads(pointer.read_text())["folder"] / "state.json").read_text())


class RawWeights(keras.callbacks.Callback):
    """The weights in training after every step (SwapEMAWeights swaps only at an epoch's end)."""
    def on_train_begin(self, logs=None):
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([w.numpy() for w in self.model.trainable_weights])


class Killed(BaseException):
    """Stands for SIGKILL arriving in the middle of a write."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a network or runs a command end to end (minutes); "
                                       "make test-fast leaves these out")
