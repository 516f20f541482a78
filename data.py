"""The challenge's training file: load it with clear errors, split it reproducibly, and keep the split.

Plain numpy: importing it starts nothing heavy. Every tool calls quiet_tensorflow() before anything
imports TensorFlow, which then prints none of the lines it writes on any machine that are errors in
name only. model.py, which ships alone, holds the image size and the classes.
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


def quiet_tensorflow():
    """Import TensorFlow without the HARMLESS lines; in our programs, keep them out of what it writes
    later too (in training). Entry points call it before anything imports TensorFlow."""
    if "tensorflow" in sys.modules:
        return
    if started_as_one_of_our_programs():
        sieve_stderr()
        import tensorflow  # noqa: F401
    else:  # tests and python -c: only the import's lines, fd 2 stays as the caller set it
        without_harmless_lines(lambda: __import__("tensorflow"))


def write_atomically(path, write):
    """model.write_atomically: model.py ships alone, so the one copy lives there."""
    from model import write_atomically
    write_atomically(path, write)


HOW_TO_GET_IT = (
    "Put the challenge's training_set.npz (from its Codabench page) at data/training_set.npz or pass "
    "DATA=path (--data path), or build it from the shared PBC images with `make data` "
    "(DATA=path to build it there; it runs ../shared/data/build_training_set.py with the project's .venv)"
)


def expected():
    """The layout of a training file, in words."""
    from model import IMAGE_SIZE, NUM_CLASSES
    return f"'images' uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) RGB in [0, 255] and 'labels' (N, 1) or (N,) in 0..{NUM_CLASSES - 1}"


class DataError(ValueError):
    """The training file is missing or not laid out like the challenge's training_set.npz."""


class SplitError(DataError):
    """A run's split.json is missing, unreadable, or made from other data."""


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
                                f"{expected()}. {HOW_TO_GET_IT}")
            images, labels = npz["images"], npz["labels"]
    except DataError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects...
        raise DataError(f"{path} is not a readable .npz file ({e}); expected {expected()}") from e
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
    from model import IMAGE_SIZE, NUM_CLASSES, as_images  # model.predict's rules: training and scorer see the same
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DataError(f"{where}: 'images' has shape {images.shape}; expected {expected()}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: 'labels' has shape {labels.shape}; expected {expected()}")
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


# ---------------------------------------------------------------------------------------------
# The split: which images train, which validate, and which are held out for evaluate.py and the
# submission's check. train.py makes it, writes it into split.json beside the weights; every reader
# goes through load_split.

def split_data(images, labels, config, seed, keep_outliers=False):
    """Return train, validation and held-out indices into the file, and what cleaning removed."""
    from outliers import find_outliers
    indices = np.arange(len(labels))
    if config["max_images"] and config["max_images"] < len(labels):
        _, indices = stratified_split(indices, labels, config["max_images"], seed)
    removed = {"outliers": [], "duplicates": [], "counts": {}}
    if not keep_outliers:
        found = find_outliers(images[indices], labels[indices])
        removed = {key: [int(indices[i]) for i in found[key]] for key in ("outliers", "duplicates")}
        removed["counts"] = found["counts"]
        indices = np.setdiff1d(indices, removed["outliers"] + removed["duplicates"])
    rest, holdout = stratified_split(indices, labels, config["holdout"], seed)
    train, validation = stratified_split(rest, labels, config["validation"], seed)
    return train, validation, holdout, removed


def make_split(images, labels, data_path, config, seed, keep_outliers=False):
    """A new run's split, as split.json keeps it: the indices, what cleaning removed, and the data it
    was made from (path and fingerprint)."""
    train, validation, holdout, removed = split_data(images, labels, config, seed, keep_outliers)
    return {"fingerprint": fingerprint(images, labels), "data": str(data_path), "split_seed": seed,
            "holdout": holdout.tolist(), "validation": validation.tolist(), "train": train.tolist(), "removed": removed}


def save_split(folder, split, **about_the_run):
    """folder/split.json: the split and what the run wants kept beside it (config, preset, precision...)."""
    write_json(Path(folder) / "split.json", {**split, **about_the_run})


def load_split(folder, images=None, labels=None, data_path=None):
    """The split.json train.py wrote in folder, checked: readable, and, given the images and labels of
    data_path, complete, made from them, its held-out indices distinct, in range and not trained on.
    Raises SplitError saying why and what to do."""
    path = Path(folder) / "split.json"
    if not path.is_file():
        raise SplitError(f"no split.json in {folder}: train.py writes it beside the weights (WEIGHTS= names the "
                         "folder). Without it the held-out images are unknown, and scoring on training images "
                         "would overstate accuracy")
    try:
        split = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SplitError(f"{path} is not readable JSON ({e})") from e
    if not isinstance(split, dict):
        raise SplitError(f"{path} holds no split; rerun train.py to write one")
    if images is None:  # only what the run recorded is asked for (its config, precision...)
        return split
    if "fingerprint" not in split or "holdout" not in split:
        raise SplitError(f"{path} lacks 'fingerprint' or 'holdout'; rerun train.py to write a complete split")
    found = fingerprint(images, labels)
    if split["fingerprint"] != found and "data" in split:
        raise SplitError(f"{path} was made from {split['data']}, not {data_path}, which holds other images "
                         f"(fingerprint {found}, not {split['fingerprint']}): use the file the network was trained "
                         f"with, DATA={split['data']} (--data), or retrain on this one")
    if split["fingerprint"] != found:  # a split.json of an older train.py, which did not record the file
        raise SplitError(f"{path} was made for data with fingerprint {split['fingerprint']}, but {data_path} "
                         f"has {found}: use the file the network was trained with (or retrain on this one)")
    try:
        held = np.asarray(split["holdout"], dtype=np.int64)
        train = np.asarray(split.get("train", []), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise SplitError(f"{path}: 'holdout' and 'train' must be lists of image indices ({e})") from e
    if held.ndim != 1 or len(held) == 0:
        raise SplitError(f"{path} has an empty held-out list; nothing to score")
    if held.min() < 0 or held.max() >= len(labels) or len(np.unique(held)) != len(held):
        raise SplitError(f"{path}: held-out indices must be distinct and within 0..{len(labels) - 1}")
    leaked = np.intersect1d(held, train)
    if len(leaked):
        raise SplitError(f"{path}: {len(leaked)} held-out images are also in 'train'; the score would be meaningless")
    return split
