"""Build the Codabench zip and prove it runs the way the scorer runs it.

    python submission.py --weights weights                     # make submission
    python submission.py --check submission/submission.zip     # make check-submission

The zip holds model.py and the weights (weights*.npz) at its root and nothing else. Before
it is moved into place, it is unpacked into an empty folder and a fresh Python process,
started there with nothing but the installed runtime on its path, imports model.py, builds
Model() and predicts held-out images as uint8 and as float32. A bundle that fails is never
written: the previous zip, if any, stays.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the report
import data
data.quiet_tensorflow()  # before model brings TensorFlow in
from model import IMAGE_SIZE, NUM_CLASSES, WEIGHTS_GLOB
from presets import make_command

ROOT = Path(__file__).resolve().parent
# What a bundle must show before it is called ready to upload, here for both train.py and this file
CHANCE = 1 / NUM_CLASSES  # a uniform guess's accuracy
WORTH_UPLOADING = 3 * CHANCE  # below it a network has learnt next to nothing; the cpu preset scores 0.98
SMOKE_PRESETS = ("tiny",)  # presets that test the code in minutes, not make a classifier

# What the scorer does, run in the unpacked folder by a fresh interpreter (python -I: no
# PYTHONPATH, no user site-packages, not even this project on the path).
SCORER = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, ".")
X = np.load(sys.argv[1])
t0 = time.time()
from model import Model
model = Model()
t1 = time.time()
as_uint8 = model.predict(X)
t2 = time.time()
as_float = model.predict(X.astype(np.float32))
print(json.dumps({"load_seconds": t1 - t0, "predict_seconds": t2 - t1, "type": type(as_uint8).__name__,
                  "shape": list(np.shape(as_uint8)), "dtype": str(np.asarray(as_uint8).dtype),
                  "labels": np.asarray(as_uint8).tolist(), "float_labels": np.asarray(as_float).tolist()}))
"""


class BundleError(Exception):
    """The zip does not load or does not answer the way Codabench expects."""


def check_images(data_path, weights_dir, n):
    """Up to n held-out images and labels when the data and split are at hand, else noise images
    (and a note saying why: a check on noise proves the bundle loads, not that it is accurate)."""
    if not Path(data_path).is_file():
        why = f"no training file at {data_path} (DATA=path names it)"
    else:
        images, labels = data.load_training_set(data_path)
        try:
            held = np.array(data.load_split(weights_dir, images, labels, data_path)["holdout"][:n], dtype=np.int64)
            return images[held], labels[held]
        except data.SplitError as e:
            why = str(e)
    print(f"note: {why}; checking on noise images only, so no held-out accuracy")
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(min(n, 16), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8), None


def check_bundle(zip_path, images, labels=None):
    """Unpack zip_path into an empty folder and score it there in a fresh process; return its report."""
    with tempfile.TemporaryDirectory() as tmp:
        folder, inputs = Path(tmp) / "submission", Path(tmp) / "X.npy"
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(folder)
        np.save(inputs, images)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        run = subprocess.run([sys.executable, "-I", "-c", SCORER, str(inputs)], cwd=folder, env=env,
                             capture_output=True, text=True)
    if run.returncode != 0:
        # without the lines TensorFlow prints on import everywhere, which would push the error out of sight
        raise BundleError(f"the scorer's process failed (exit {run.returncode}):\n"
                          f"{data.drop_harmless(run.stderr).strip()[-4000:]}")
    report = json.loads(run.stdout.strip().splitlines()[-1])
    labels_out = np.array(report.pop("labels"))
    float_labels = np.array(report.pop("float_labels"))
    problems = []
    if report["type"] != "ndarray":
        problems.append(f"predict returned a {report['type']}, not a numpy array")
    if report["shape"] != [len(images)]:
        problems.append(f"predict returned shape {tuple(report['shape'])}, expected ({len(images)},): labels, not one-hot")
    elif not np.issubdtype(labels_out.dtype, np.integer) or labels_out.min() < 0 or labels_out.max() >= NUM_CLASSES:
        problems.append(f"predict returned {report['dtype']} values outside the integer labels 0..{NUM_CLASSES - 1}")
    elif not np.array_equal(labels_out, float_labels):
        problems.append("uint8 and float32 copies of the same images got different labels")
    if problems:
        raise BundleError("; ".join(problems))
    if labels is not None:
        report["accuracy"] = float(np.mean(labels_out == labels))
    report["images"] = len(images)
    return report


def build_bundle(weights_dirs, out, images, labels=None):
    """Zip model.py and the weights of one or more runs, check the zip, and only then move it to out.

    Several folders make an ensemble: model.py averages every weights*.npz it finds, so the second
    folder's weights.npz goes in as weights-2.npz, and so on.
    """
    weights = {}
    for i, folder in enumerate(weights_dirs):
        found = sorted(Path(folder).glob(WEIGHTS_GLOB))
        if not found:
            raise BundleError(f"no {WEIGHTS_GLOB} in {folder}/: train first (make train), "
                              "or point WEIGHTS= at the folder train.py wrote")
        weights.update({(w.name if i == 0 else f"{w.stem}-{i + 1}.npz"): w for w in found})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(ROOT / "model.py", "model.py")
            for name, w in weights.items():
                z.write(w, name)
        report = check_bundle(tmp, images, labels)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return report


def run_record(folder):
    """The split.json train.py wrote in folder (the run's config, precision, ...), or {} without one."""
    try:
        return data.load_split(folder)
    except data.SplitError:
        return {}


def precision(weights_dirs):
    """Which precision each run's weights ship in, and why, as train.py decided it."""
    said = [run_record(folder).get("precision", {}).get("why") or "precision not recorded (an older train.py)"
            for folder in weights_dirs]
    return said[0] if len(said) == 1 else "; ".join(f"{folder}: {why}" for folder, why in zip(weights_dirs, said))


def not_worth_uploading(records, accuracy=None, images="held-out"):
    """Why a bundle is not worth uploading, in words, or None. records: {folder: its split.json}, one
    per run in the bundle; accuracy: on its held-out images (validation ones at training's end)."""
    for folder, record in records.items():
        whose = f"{folder}: " if len(records) > 1 else ""
        if record.get("trained_epochs") == 0:
            return f"{whose}it trained no epochs, its weights are random"
        if record.get("preset") in SMOKE_PRESETS:
            return f"{whose}a run of the {record['preset']} preset is a smoke test of the code, it learns little"
    if accuracy is not None and accuracy < WORTH_UPLOADING:
        return (f"its {images} accuracy {accuracy:.3f} is near chance: a uniform guess scores {CHANCE:.3f}, and "
                f"under {WORTH_UPLOADING:.3f} a network has learnt next to nothing")
    return None


def warning(reason, on_a_cpu, with_a_gpu):
    """The last words on a bundle not worth uploading: why, and the make train commands to run instead."""
    return (f"warning: not worth uploading: {reason}. Train a network that learns instead: {on_a_cpu} (on a CPU) "
            f"or {with_a_gpu} (with a GPU), then make submission")


def last_words(report, weights, data_path, zip_path, records=None):
    """The line a check ends with when it has something to add: a warning for a bundle not worth
    uploading, or, for one checked on noise images, that its accuracy is unchecked and how to check it."""
    reason = not_worth_uploading(records or {}, report.get("accuracy"))
    folder = " ".join(map(str, weights))
    if reason:
        where = {"DATA": data_path, "WEIGHTS": folder}
        return warning(reason, make_command("train", PRESET="cpu", **where, OVERWRITE=1),
                       make_command("train", **where, OVERWRITE=1))
    if "accuracy" not in report:
        record = run_record(weights[0])
        check = make_command("check-submission", SUBMISSION=zip_path, DATA=record.get("data", "<its training file>"),
                             WEIGHTS=folder if record else "<the folder train.py wrote>")
        return (f"its accuracy is unchecked: the check ran on noise images only. Check it on its held-out images "
                f"before uploading: {check}")
    return None


def describe(report):
    held_out = "accuracy" in report
    text = (f"loaded in {report['load_seconds']:.1f} s, predicted {report['images']} "
            f"{'held-out' if held_out else 'noise'} images in {report['predict_seconds']:.1f} s")
    return text + (f", held-out accuracy {report['accuracy']:.4f}" if held_out else " (no accuracy: noise only)")


def main():
    p = data.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", default=["weights"],
                   help="folder(s) train.py wrote; several make an ensemble (the first one's split.json is used)")
    p.add_argument("--data", default="data/training_set.npz", help="training file, for held-out images")
    p.add_argument("--out", default="submission/submission.zip")
    p.add_argument("--check", metavar="ZIP", help="only check an existing zip")
    p.add_argument("--images", type=int, default=64, help="held-out images to predict in the check")
    args = p.parse_args()
    if args.check and not Path(args.check).is_file():
        sys.exit(f"submission check failed: no zip at {args.check}: run make submission first "
                 "(or SUBMISSION=path for another zip)")
    images, labels = check_images(args.data, args.weights[0], args.images)
    try:
        if args.check:
            report = check_bundle(args.check, images, labels)
            print(f"{args.check}: OK, {describe(report)}")
            ending = last_words(report, args.weights, args.data, args.check)
        else:
            report = build_bundle(args.weights, args.out, images, labels)
            size = Path(args.out).stat().st_size / 2**20
            print(f"wrote {args.out} ({size:.1f} MB): {describe(report)}")
            print(f"weights in {precision(args.weights)}")
            ending = last_words(report, args.weights, args.data, args.out, {w: run_record(w) for w in args.weights})
            ending = ending or ("Upload it on the challenge's Codabench page: My Submissions, then the phase, then "
                                "submit the zip")
    except (BundleError, zipfile.BadZipFile, FileNotFoundError) as e:
        sys.exit(f"submission check failed: {e}")
    if ending:
        print(ending)

if __name__ == "__main__":
    main()
