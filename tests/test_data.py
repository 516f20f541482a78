"""data.py: a bad file is refused naming the problem, the split repeats for a seed, and only TensorFlow's harmless lines go."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import data
import presets
from conftest import ROOT, learnable_images, run_cli


def test_data_errors_name_the_problem(tmp_path):
    with pytest.raises(data.DataError, match="build_training_set.py"):
        data.load_training_set(tmp_path / "absent.npz")
    np.savez(tmp_path / "bad.npz", pictures=np.zeros((2, 96, 96, 3), np.uint8))
    with pytest.raises(data.DataError, match="lacks.*`make data`"):
        data.load_training_set(tmp_path / "bad.npz")
    # the shared folder's archive given as DATA: its arrays as ../shared/data/README.md describes them
    np.savez(tmp_path / "train_jpeg.npz", jpeg=np.zeros(10, np.uint8), offsets=np.array([0, 10]),
             labels=np.zeros(1, np.uint8))
    with pytest.raises(data.DataError, match="JPEG-encoded images .*`make data` decodes them into data/training_set.npz"):
        data.load_training_set(tmp_path / "train_jpeg.npz")
    cases = [
        (np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2), "shape"),
        (np.zeros((2, 96, 96, 3), np.uint8), np.zeros(3), "2 images but 3 labels"),
        (np.zeros((2, 96, 96, 3), np.uint8), np.array([0, 8]), "outside 0..7"),
        (np.zeros((2, 96, 96, 3), np.uint8), np.eye(8)[:2], "shape"),
        (np.full((2, 96, 96, 3), np.nan, np.float32), np.zeros(2), "NaN"),
        (np.zeros((2, 96, 96, 3), np.uint8), np.array([0.5, 1]), "non-integer"),
    ]
    for images, labels, message in cases:
        with pytest.raises(data.DataError, match=message):
            data.validate(images, labels)


def split_of_eight_classes(seed):
    labels = np.repeat(np.arange(8), [85, 218, 108, 202, 84, 99, 233, 164])
    images = np.zeros((len(labels), 96, 96, 3), np.uint8)
    return labels, data.split_data(images, labels, presets.PRESETS["seed"], seed=seed, keep_outliers=True)[:3]


def test_held_out_split_is_reproducible_for_a_seed():
    (_, a), (_, b), (_, c) = split_of_eight_classes(1), split_of_eight_classes(1), split_of_eight_classes(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])


def test_held_out_images_are_neither_trained_on_nor_validated_on():
    labels, (train_idx, val_idx, holdout) = split_of_eight_classes(1)
    assert len(np.intersect1d(train_idx, holdout)) == len(np.intersect1d(val_idx, holdout)) == 0
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert len(train_idx) + len(val_idx) + len(holdout) == len(labels)


def test_held_out_split_keeps_each_class_share():
    labels, (_, _, holdout) = split_of_eight_classes(1)
    expected = np.bincount(labels) * presets.PRESETS["seed"]["holdout"]
    assert np.all(np.abs(np.bincount(labels[holdout], minlength=8) - expected) <= 1)


def test_the_same_seed_gives_the_same_cleaning_and_split():
    images, labels = learnable_images(480)
    images[::40] = images[7]  # a picture pasted twelve times under several labels: cleaning has work to do
    config = {**presets.PRESETS["tiny"], "max_images": None}
    a = data.split_data(images, labels, config, seed=3)
    b = data.split_data(images, labels, config, seed=3)
    assert len(a[3]["outliers"]) >= 12 and a[3] == b[3]
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)


def test_a_file_of_floats_in_0_1_is_scaled_like_model_predict_scales_them(planted, tmp_path, monkeypatch, capsys):
    from data import load_training_set
    images, labels, _, expected = planted
    np.savez(tmp_path / "floats.npz", images=images.astype(np.float32) / 255, labels=labels)
    loaded, _ = load_training_set(tmp_path / "floats.npz")  # what every command reads
    np.testing.assert_array_equal(loaded, images)
    assert "float32 in [0, 1]" in capsys.readouterr().out  # said once, in a note
    run_cli(monkeypatch, "--data", tmp_path / "floats.npz", "--out", tmp_path / "reports")
    assert json.loads((tmp_path / "reports" / "outliers.json").read_text())["counts"] == expected["counts"]


def test_importing_tensorflow_drops_the_cuda_plugin_lines():
    run = subprocess.run([sys.executable, "-c", "import data"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "Unable to register" not in run.stderr


HARMLESS_LINES = (b"E0000 cuda_dnn.cc:8454] Unable to register cuDNN factory: Attempting to register factory for plugin "
                  b"cuDNN when one has already been registered\n"
                  b"E tensorflow/core/util/util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512. "
                  b"Falling back to the default Eigen-based implementation if present.\n"
                  b"W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: Could not find TensorRT\n")


def test_the_harmless_lines_filter_lets_every_other_line_through(capfd):
    written = b"a real error\n" + HARMLESS_LINES + b"another\n"
    assert data.without_harmless_lines(lambda: os.write(2, written) and 7) == 7
    assert capfd.readouterr().err == "a real error\nanother\n"
    assert data.drop_harmless(written.decode()) == "a real error\nanother\n"


def run_our_program(folder, code):
    """code run as a program of ours: a file beside data.py and model.py, as train.py is."""
    folder.mkdir(exist_ok=True)
    for name in ("data.py", "model.py"):
        (folder / name).write_text((ROOT / name).read_text())
    (folder / "program.py").write_text(code)
    return subprocess.run([sys.executable, str(folder / "program.py")], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_our_programs_drop_tensorflows_harmless_lines_while_they_run_and_nothing_else(tmp_path):
    # the oneDNN line comes mid-run, from TensorFlow's C++ code (here a graph's int32 transpose), so the
    # filter must stay on fd 2 after the import; the error line after it and the traceback must come out
    run = run_our_program(tmp_path, "import os, sys\nimport data\ndata.quiet_tensorflow()\nimport tensorflow as tf\n"
                                    "tf.function(tf.transpose)(tf.constant([[1, 2], [3, 4]]))\n"
                                    f"os.write(2, {HARMLESS_LINES!r})\n"
                                    "os.write(2, b'E a real error from C++\\n')\n"
                                    "print('on stdout')\n"
                                    "raise RuntimeError('a real failure')\n")
    assert run.returncode == 1 and run.stdout == "on stdout\n"
    for name in data.HARMLESS:  # no line of the plugins or the oneDNN check, at import or later
        assert name not in run.stderr, run.stderr
    assert run.stderr.startswith("E a real error from C++\nTraceback")  # in order, every line of it
    assert run.stderr.endswith("RuntimeError: a real failure\n")
    # a crash leaves no time to flush anything: the line before it still comes out
    crash = run_our_program(tmp_path, "import os\nimport data\ndata.quiet_tensorflow()\nos.write(2, b'F a fatal check failed\\n')\nos.abort()\n")
    assert crash.returncode != 0 and crash.stderr == "F a fatal check failed\n"
