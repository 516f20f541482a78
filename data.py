"""The challenge's training file: load it with clear errors, and split it reproducibly.

Every tool imports it first: it brings in TensorFlow (model.py holds the image size and the
classes) without the lines TensorFlow prints on any machine that are errors in name only.
"""
import argparse
import atexit
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

# Lines TensorFlow's C++ code writes to stderr on every machine, errors or warnings in name only.
# Only TF_CPP_MIN_LOG_LEVEL=3 would silence them, and with them every real error: these go by name.
HARMLESS = (
    "Attempting to register factory for plugin",  # cuFFT, cuDNN, cuBLAS at import (tensorflow/tensorflow#62075)
    "oneDNN supports DT_INT32 only on platforms with AVX-512",  # in training, also where AVX-512 is; Eigen runs instead
    "TF-TRT Warning: Could not find TensorRT",  # an optional library for NVIDIA GPUs
)
# What drops them from a running program: reads the program's stderr from a pipe, writes the rest.
SIEVE = r"""
import sys
harmless = [name.encode() for name in sys.argv[1:]]
for line in sys.stdin.buffer:
    if not any(name in line for name in harmless):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def drop_harmless(text):
    """text without the HARMLESS lines: for another process's captured output."""
    return "".join(line for line in text.splitlines(keepends=True) if not any(name in line for name in HARMLESS))


def without_harmless_lines(action):
    """Run action() with the HARMLESS lines taken out of what it writes to file descriptor 2, where
    TensorFlow's C++ code writes; every other line goes through."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            return action()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(drop_harmless(captured.read().decode(errors="replace")))
            sys.stderr.flush()


def sieve_stderr():
    """From now to the program's end, pass file descriptor 2 through SIEVE, which drops the HARMLESS
    lines. A process of its own, not a thread: it outlives a crash of this one, so the last lines
    before an abort still come out; in a session of its own, so Ctrl-C leaves it to finish them."""
    sys.stderr.flush()
    read, write = os.pipe()
    stderr = os.dup(2)
    try:
        sieve = subprocess.Popen([sys.executable, "-I", "-S", "-c", SIEVE, *HARMLESS], stdin=read, stdout=stderr,
                                 stderr=stderr, start_new_session=True)
    except OSError:  # no interpreter to start: the lines stay, nothing is lost
        os.close(write)
        return
    finally:
        os.close(read)
    os.dup2(write, 2)
    os.close(write)

    def finish():  # the pipe closes, and the program ends only once the sieve has written every line
        sys.stderr.flush()
        os.dup2(stderr, 2)
        try:
            sieve.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a child process still holds the pipe: the sieve goes on without us
            pass
    atexit.register(finish)


def started_as_one_of_our_programs():
    """True for python train.py and the other tools; False when imported by tests or python -c."""
    program = getattr(sys.modules.get("__main__"), "__file__", None)
    return program is not None and Path(program).resolve().parent == Path(__file__).resolve().parent


if started_as_one_of_our_programs():  # TensorFlow also writes such lines while it trains
    sieve_stderr()
    import tensorflow  # noqa: E402 F401
else:
    without_harmless_lines(lambda: __import__("tensorflow"))
from model import IMAGE_SIZE, NUM_CLASSES, write_atomically  # noqa: E402 F401 (the tools take it from here)

HOW_TO_GET_IT = (
    "Put the challenge's training_set.npz (from its Codabench page) at data/training_set.npz or pass "
    "DATA=path (--data path), or build it from the shared PBC images with `make data` "
    "(DATA=path to build it there; it runs ../shared/data/build_training_set.py with the project's .venv)"
)
EXPECTED = f"'images' uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) RGB in [0, 255] and 'labels' (N, 1) or (N,) in 0..{NUM_CLASSES - 1}"


class DataError(ValueError):
    """The training file is missing or not laid out like the challenge's training_set.npz."""


def load_training_set(path):
    """Return (images uint8 (N, 96, 96, 3), labels int64 (N,)) from a challenge-style .npz file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no training file at {path}. {HOW_TO_GET_IT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"images", "labels"} - set(npz.files)
            if {"jpeg", "offsets"} <= set(npz.files):  # ../shared/data/train_jpeg.npz, given as DATA
                raise DataError(f"{path} holds the shared folder's JPEG-encoded images (arrays {sorted(npz.files)}), "
                                "not a training file: `make data` decodes them into data/training_set.npz, the "
                                "default DATA; then leave DATA= out")
            if missing:
                raise DataError(f"{path} has arrays {sorted(npz.files)} but lacks {sorted(missing)}; expected "
                                f"{EXPECTED}. {HOW_TO_GET_IT}")
            images, labels = npz["images"], npz["labels"]
    except DataError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects...
        raise DataError(f"{path} is not a readable .npz file ({e}); expected {EXPECTED}") from e
    return validate(images, labels, where=str(path))


def load_or_exit(path):
    """load_training_set for command-line tools: a bad file ends the program with its message."""
    try:
        return load_training_set(path)
    except DataError as e:
        raise SystemExit(f"error: {e}")


def validate(images, labels, where="the data"):
    """Check shapes, dtypes and ranges; return (uint8 images, int64 labels) or raise DataError.

    Images of other number types are converted the way model.predict converts them (floats in
    [0, 1] scaled to [0, 255]), with a note; NaN and infinities are refused.
    """
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DataError(f"{where}: 'images' has shape {images.shape}; expected {EXPECTED}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: 'labels' has shape {labels.shape}; expected {EXPECTED}")
    if len(labels) != len(images):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels; both must have one entry per image")
    if len(images) == 0:
        raise DataError(f"{where} holds no images")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise DataError(f"{where}: 'labels' has dtype {labels.dtype}; expected integers 0..{NUM_CLASSES - 1}")
    if np.issubdtype(labels.dtype, np.floating) and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
        raise DataError(f"{where}: 'labels' holds non-integer values; expected integers 0..{NUM_CLASSES - 1} (not one-hot)")
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise DataError(f"{where}: {bad.sum()} labels outside 0..{NUM_CLASSES - 1} (first at index {np.argmax(bad)}: {labels[bad][0]})")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.number) or np.issubdtype(images.dtype, np.complexfloating):
            raise DataError(f"{where}: 'images' has dtype {images.dtype}; expected uint8")
        if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
            raise DataError(f"{where}: 'images' holds NaN or infinite values; expected uint8 pixels in [0, 255]")
        from model import as_images  # model.predict's rule: training, evaluation and the scorer see the same pixels
        low, high = images.min(), images.max()
        x = as_images(images)
        print(f"note: {where}: 'images' are {images.dtype} in [{low:g}, {high:g}], not uint8; converted as model.predict "
              "converts them: floats all at most 1 times 255, then clipped to [0, 255] and rounded")
        images = np.rint(x, out=x).astype(np.uint8)
    return images, labels.astype(np.int64)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, whose errors are one line: the usage it prints before them fills a screen (train.py's
    is 13 lines) and buries the error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (.venv/bin/python {self.prog} --help lists every option)\n")


def fingerprint(images, labels):
    """A short hash that tells whether a saved split belongs to this data."""
    h = hashlib.sha256(np.ascontiguousarray(labels).tobytes())
    h.update(np.ascontiguousarray(images[:: max(1, len(images) // 64)]).tobytes())
    return f"{len(labels)}-{h.hexdigest()[:16]}"


def write_json(path, obj, indent=None):
    """obj as JSON, written atomically."""
    write_atomically(path, lambda f: f.write((json.dumps(obj, indent=indent) + "\n").encode()))


def save_figure(fig, path, dpi=110):
    """Render a matplotlib figure to PNG and write it atomically."""
    import matplotlib.pyplot as plt
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)


def stratified_split(indices, labels, fraction, seed):
    """Split `indices` in two, keeping each class's share; the same seed gives the same split."""
    indices = np.asarray(indices)
    rest, held = train_test_split(indices, test_size=fraction, stratify=labels[indices], random_state=seed)
    return np.sort(rest), np.sort(held)
