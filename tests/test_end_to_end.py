"""A user's path: make train PRESET=tiny, make submission, and the scorer's fresh process on the zip."""
import csv
import json
import os
import re
import subprocess
import sys
import zipfile
from itertools import pairwise
from pathlib import Path

import keras
import numpy as np
import pytest

import data
import model
import submission
from conftest import ROOT, learnable_images


def make(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")}
    run = subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_a_fresh_clone_is_told_how_to_get_the_data_and_make_data_builds_it(tmp_path):
    with pytest.raises(data.DataError, match="`make data`"):
        data.load_training_set(tmp_path / "absent.npz")
    target = tmp_path / "new" / "set.npz"
    # -n: print the commands, run none; -W: as if requirements.txt had changed, so the plan shows .venv made first
    plan = make("-n", "-W", "requirements.txt", "data", f"DATA={target}")
    assert f"mkdir -p {target.parent}/" in plan  # the folder is made first
    build = f".venv/bin/python ../shared/data/build_training_set.py {target}.tmp.npz"  # the project's python
    assert build in plan and plan.index(build) > plan.index("pip install")  # after .venv is ready
    assert f"mv {target}.tmp.npz {target}" in plan  # a finished file or none


def test_make_alone_lists_every_command_one_line_each():
    listed = [line.split()[1] for line in make("help").splitlines() if line.startswith("make ")]
    phony = [t for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:") for t in line.split()[1:]]
    assert sorted(listed) == sorted(phony)
    assert 'echo "make help' in make("-n")  # the default target; -n, so nothing is installed


def test_every_command_but_help_and_clean_installs_the_venv_first_as_the_readme_says(tmp_path):
    makefile = (ROOT / "Makefile").read_text().splitlines()
    phony = [t for line in makefile if line.startswith(".PHONY:") for t in line.split()[1:]]
    # -n: print the commands, run none; -W: as if requirements.txt had changed
    plans = {t: make("-n", "-W", "requirements.txt", t, f"DATA={tmp_path / 'x.npz'}") for t in phony}
    installs = {t for t, plan in plans.items() if "pip install" in plan}
    said = re.search(r"Every command but (.*?) installs `\.venv`", " ".join((ROOT / "README.md").read_text().split()))
    assert said and set(re.findall(r"`make (\S+)`", said[1])) == set(phony) - installs == {"help", "clean"}


def test_the_first_screen_says_where_to_learn_how_long_the_cpu_preset_takes_on_this_machine():
    first_screen = (ROOT / "README.md").read_text().split("\n## ")[1]  # the quick start
    command = re.search(r"`\.venv/bin/python (benchmark\.py train-speed --preset cpu)`", first_screen)
    assert command and "AVX-512" in first_screen  # which figure holds for which CPU
    run = subprocess.run([sys.executable, *command[1].split(), "--help"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "train-speed" in run.stdout  # a command that exists


def score_unpacked(zip_path, images, folder):
    """Unpack the zip into an empty folder and predict there in a fresh interpreter, as Codabench does."""
    folder.mkdir()
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(folder)
    np.save(folder.parent / "X.npy", images)
    code = ("import sys, json, numpy as np; sys.path.insert(0, '.'); import model; "
            "y = model.Model().predict(np.load(sys.argv[1])); "
            "print(json.dumps({'type': type(y).__name__, 'dtype': str(y.dtype), 'labels': y.tolist()}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run = subprocess.run([sys.executable, "-I", "-c", code, str(folder.parent / "X.npy")],
                         cwd=folder, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def last_line(out):
    """The command's own last line, under make -C's "Leaving directory"."""
    return [line for line in out.strip().splitlines() if not line.startswith("make: ")][-1]


def train_and_bundle(data_path, tmp_path):
    weights, zip_path = tmp_path / "weights", tmp_path / "submission" / "submission.zip"
    out = make("train", f"DATA={data_path}", "PRESET=tiny", f"WEIGHTS={weights}")
    assert "held-out images" in out and "wrote" in out
    smoke = "warning: not worth uploading: a run of the tiny preset is a smoke test of the code"
    assert smoke in last_line(out)  # its last words: packed, tested, never called ready
    out = make("submission", f"DATA={data_path}", f"WEIGHTS={weights}", f"SUBMISSION={zip_path}")
    assert "held-out accuracy" in out and "weights in float" in out  # which precision ships, and why
    assert last_line(out).startswith(smoke)
    with zipfile.ZipFile(zip_path) as z:
        assert sorted(z.namelist()) == ["model.py", "weights.npz"]
    split = json.loads((weights / "split.json").read_text())
    return zip_path, np.array(split["holdout"]), weights


@pytest.mark.slow
def test_tiny_training_learns_and_its_zip_scores_in_a_fresh_process(learnable_npz, tmp_path):
    zip_path, holdout, weights = train_and_bundle(learnable_npz, tmp_path)
    with open(weights / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert [r["phase"] for r in history].count("finetune") >= 1
    # from random weights both phases run down one curve: warm-up over the first epoch, then
    # only downwards, with no restart where phase 2 begins
    rates = [float(r["learning_rate"]) for r in history]
    assert rates[0] == pytest.approx(json.loads((weights / "split.json").read_text())["config"]["learning_rate"])
    assert all(a > b for a, b in pairwise(rates)), rates
    images, labels = learnable_images(240, seed=1)  # fresh images of the same classes, never trained on
    answer = score_unpacked(zip_path, images, tmp_path / "unpacked")
    assert answer["type"] == "ndarray" and answer["dtype"].startswith("int")
    accuracy = np.mean(np.array(answer["labels"]) == labels)
    assert accuracy >= 0.5, f"accuracy {accuracy:.2f} on fresh images; chance is 0.125"


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


@pytest.mark.slow
def test_tiny_training_on_real_images(real_npz, tmp_path):
    zip_path, holdout, weights = train_and_bundle(real_npz, tmp_path)
    split = json.loads((weights / "split.json").read_text())
    removed = split["removed"]["outliers"] + split["removed"]["duplicates"]
    assert len(split["removed"]["outliers"]) > 0  # the file plants outliers: a few hundred images hold some
    assert not set(removed) & set(split["holdout"] + split["validation"] + split["train"])
    kept = len(split["train"] + split["validation"] + split["holdout"])
    said = re.search(r"(\d+) images \((\d+) after cleaning", (ROOT / "README.md").read_text())  # the presets' table
    assert said and (int(said[1]), int(said[2])) == (split["config"]["max_images"], kept)
    with np.load(real_npz) as npz:
        images = npz["images"][holdout]
    answer = score_unpacked(zip_path, images, tmp_path / "unpacked")
    labels = np.array(answer["labels"])
    assert labels.shape == (len(holdout),) and ((labels >= 0) & (labels < 8)).all()
    # No accuracy bound: a few hundred real cells and a few minutes from random weights learn little.


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
