"""Shared test fixtures: data sets generated on the fly, so the tests need nothing from outside."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import data  # noqa: E402

data.quiet_tensorflow()  # as our programs do: without the lines TensorFlow prints that are errors in name only
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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a network or runs a command end to end (minutes); "
                                       "make test-fast leaves these out")
