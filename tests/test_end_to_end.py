"""A user's path: make train PRESET=tiny, make submission, and the scorer's fresh process on the zip."""
import csv
import json
import os
import re
import subprocess
import sys
import zipfile
from itertools import pairwise

import numpy as np
import pytest

import data
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
