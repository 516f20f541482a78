"""submission.py: a broken bundle is never written, and make submission says whether a bundle is worth uploading."""
import json
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import model
import submission
from conftest import learnable_images


def test_make_submission_says_which_precision_each_run_ships_in(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for run, why in zip(runs, ("float16: as float32 within one image", "float32: more than one image apart")):
        run.mkdir()
        (run / "split.json").write_text(json.dumps({"precision": {"dtype": why[:7], "why": why}}))
    assert submission.precision(runs[:1]) == "float16: as float32 within one image"
    assert submission.precision(runs) == (f"{runs[0]}: float16: as float32 within one image; {runs[1]}: float32: more "
                                          f"than one image apart; {runs[2]}: precision not recorded (an older train.py)")


def test_a_broken_bundle_is_never_written(tmp_path, learnable_npz):
    weights, zip_path = tmp_path / "weights", tmp_path / "submission.zip"
    weights.mkdir()
    (weights / "weights.npz").write_bytes(b"not a weights file")
    zip_path.write_bytes(b"the previous zip")
    images = learnable_images(4)[0]
    with pytest.raises(submission.BundleError, match="failed"):
        submission.build_bundle([weights], zip_path, images)
    assert zip_path.read_bytes() == b"the previous zip"
    assert list(tmp_path.glob("*.tmp")) == []
    with pytest.raises(submission.BundleError, match="train first"):
        submission.build_bundle([tmp_path / "empty"], zip_path, images)


def test_check_reports_the_scorers_traceback_without_tensorflows_harmless_lines(tmp_path):
    broken = tmp_path / "broken.zip"
    harmless = ("E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:485] Unable to register cuFFT factory: "
                "Attempting to register factory for plugin cuFFT when one has already been registered\n"
                "W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: Could not find TensorRT\n")
    with zipfile.ZipFile(broken, "w") as z:  # as importing TensorFlow in a fresh process prints them, model.py stays plain
        z.writestr("model.py", f"import os\nos.write(2, {harmless.encode()!r})\n"
                               "class Model:\n    def __init__(self):\n        raise RuntimeError('boom in init')\n")
    with pytest.raises(submission.BundleError, match="boom in init") as error:
        submission.check_bundle(broken, learnable_images(2)[0])
    assert "register factory" not in str(error.value) and "TensorRT" not in str(error.value)


def test_two_runs_bundle_as_an_ensemble_that_model_py_averages(tmp_path):
    architecture = {"backbone": "MobileNetV3Small", "input_size": 96, "dropout": 0.2}
    runs = [tmp_path / "run1", tmp_path / "run2"]
    for seed, run in enumerate(runs):
        run.mkdir()
        keras.utils.set_random_seed(seed)
        model.save_network(model.build_network(**architecture), architecture, run / "weights.npz")
    images = learnable_images(8)[0]
    submission.build_bundle(runs, tmp_path / "submission.zip", images)
    with zipfile.ZipFile(tmp_path / "submission.zip") as z:
        assert sorted(z.namelist()) == ["model.py", "weights-2.npz", "weights.npz"]
        z.extractall(tmp_path / "unpacked")
    expected = np.mean([model.Model(run).predict_proba(images) for run in runs], axis=0)
    np.testing.assert_allclose(model.Model(tmp_path / "unpacked").predict_proba(images), expected, atol=1e-5)
    np.testing.assert_allclose(model.Model(runs).predict_proba(images), expected, atol=1e-5)  # how evaluate.py scores them


def run_submission(monkeypatch, *args):
    """submission.py's command line, run in this process."""
    monkeypatch.setattr(sys, "argv", ["submission.py", *map(str, args)])
    submission.main()


def test_a_check_without_the_training_file_says_it_ran_on_noise_only(tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "submission.zip"
    with zipfile.ZipFile(bundle, "w") as z:  # a model.py without TensorFlow, to keep the scorer's process quick
        z.writestr("model.py", "import numpy as np\nclass Model:\n    def predict(self, X):\n"
                               "        return np.zeros(len(X), np.int64)\n")
    run_submission(monkeypatch, "--check", bundle, "--weights", tmp_path, "--data", tmp_path / "typo.npz")
    out = capsys.readouterr().out
    assert f"no training file at {tmp_path / 'typo.npz'}" in out
    assert "noise images only" in out and "OK" in out and "no accuracy: noise only" in out


def test_a_check_on_other_data_names_the_file_the_run_was_made_from(tmp_path, capsys):
    images, labels = learnable_images(16)
    np.savez(tmp_path / "other.npz", images=images, labels=labels)
    run = a_run(tmp_path / "run", fingerprint="16-another", holdout=[0, 1])
    assert submission.check_images(tmp_path / "other.npz", run, 8)[1] is None  # noise images, no labels
    said = capsys.readouterr().out
    assert f"{run / 'split.json'} was made from data/training_set.npz, not {tmp_path / 'other.npz'}" in said


def test_checking_a_zip_that_is_not_there_says_make_submission_first(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="no zip at .*run make submission first"):
        run_submission(monkeypatch, "--check", tmp_path / "submission.zip")


def a_run(folder, **record):
    """A weights folder as train.py leaves it, as far as make submission reads it: split.json."""
    folder.mkdir()
    (folder / "split.json").write_text(json.dumps({"data": "data/training_set.npz", **record}))
    return folder


def submission_says(monkeypatch, capsys, weights, accuracy):
    """make submission's output for weights whose check gets accuracy (None: checked on noise only)."""
    def build_bundle(weights_dirs, out, images, labels=None):
        Path(out).write_bytes(b"a zip")
        return {"load_seconds": 1.0, "predict_seconds": 1.0, "images": len(images),
                **({} if accuracy is None else {"accuracy": accuracy})}
    monkeypatch.setattr(submission, "build_bundle", build_bundle)
    monkeypatch.setattr(submission, "check_images", lambda *args: (learnable_images(4)[0], None))
    run_submission(monkeypatch, "--weights", weights, "--out", weights.parent / "submission.zip")
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize("record, accuracy, why", [
    ({"preset": "tiny", "trained_epochs": 0}, 0.0541, "it trained no epochs, its weights are random"),
    ({"preset": "tiny", "trained_epochs": 16}, 0.31, "a run of the tiny preset is a smoke test of the code"),
    ({"preset": "cpu", "trained_epochs": 108}, 0.0541, "its held-out accuracy 0.054 is near chance"),
])
def test_a_bundle_not_worth_uploading_ends_with_a_warning_saying_why_and_what_to_train(record, accuracy, why, tmp_path,
                                                                                       monkeypatch, capsys):
    lines = submission_says(monkeypatch, capsys, a_run(tmp_path / "run", **record), accuracy)
    assert lines[0].startswith(f"wrote {tmp_path / 'submission.zip'}")  # still packed: an upload can be tried with it
    assert not any("Upload it" in line for line in lines)
    assert lines[-1].startswith(f"warning: not worth uploading: {why}")
    assert f"make train PRESET=cpu WEIGHTS={tmp_path / 'run'} OVERWRITE=1 (on a CPU)" in lines[-1]


def test_a_bundle_that_learnt_is_called_ready_and_one_checked_on_noise_says_its_accuracy_is_unchecked(
        tmp_path, monkeypatch, capsys):
    run = a_run(tmp_path / "run", preset="cpu", trained_epochs=108)
    assert submission_says(monkeypatch, capsys, run, 0.98)[-1].startswith("Upload it on the challenge's Codabench page")
    last = submission_says(monkeypatch, capsys, run, None)[-1]
    assert last.startswith("its accuracy is unchecked: the check ran on noise images only")
    assert last.endswith(f"make check-submission SUBMISSION={tmp_path / 'submission.zip'} WEIGHTS={run}")


def test_the_chance_level_is_a_uniform_guess_and_a_bundle_must_beat_it_well():
    assert submission.CHANCE == 1 / model.NUM_CLASSES and submission.WORTH_UPLOADING > 2 * submission.CHANCE
    assert submission.not_worth_uploading({}, submission.WORTH_UPLOADING) is None
    assert "near chance" in submission.not_worth_uploading({}, submission.WORTH_UPLOADING - 0.01)
    assert submission.not_worth_uploading({"a": {}, "b": {"trained_epochs": 0}}).startswith("b: it trained no epochs")
