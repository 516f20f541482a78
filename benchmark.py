"""Benchmarks run by hand (minutes on a CPU); their figures go into BENCHMARKS.md.

    .venv/bin/python benchmark.py zip-size [--backbone EfficientNetV2L]
    .venv/bin/python benchmark.py speed [--backbone EfficientNetV2L] [--weights DIR] [--images 512] [--repeats 3]

zip-size: the submission zip of an untrained network of the `seed` preset (float32 and float16
storage), against the plain template's `model.save('weights.keras')` of a compiled model, before
and after one training step (the step creates AdamW's two moments per trainable weight).
speed: images per second of Model.predict against the template's keras.models.load_model then
model.predict(X).argmax(1), on the same network and images, with a check that the labels agree.
"""
import argparse
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import keras

import train
from model import WEIGHTS_GLOB, Model, build_network, load_network, save_network

ROOT = Path(__file__).resolve().parent


def zipped_size(folder, files):
    path = Path(folder) / "submission.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, Path(f).name)
    return path.stat().st_size / 2**20


def zip_size(backbone):
    config = {**train.PRESETS["seed"], "backbone": backbone}
    architecture = {k: config[k] for k in train.ARCHITECTURE_KEYS}
    network = build_network(**architecture)
    print(f"{backbone}: {network.count_params():,} parameters")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for float16 in (False, True):
            save_network(network, architecture, tmp / "weights.npz", float16=float16)
            print(f"ours, {'float16' if float16 else 'float32'} weights.npz: "
                  f"zip {zipped_size(tmp, [ROOT / 'model.py', tmp / 'weights.npz']):.1f} MB")
        network.trainable = True
        train.compile_network(network, 1e-4, config, train.focal_alpha(np.arange(8)))
        network.save(tmp / "weights.keras")
        print(f"template, compiled, model.save('weights.keras'): zip {zipped_size(tmp, [tmp / 'weights.keras']):.1f} MB")
        x = np.zeros((2, 96, 96, 3), np.float32)
        network.train_on_batch(x, keras.utils.to_categorical([0, 1], 8))
        network.save(tmp / "weights.keras")
        print(f"template, after one training step: zip {zipped_size(tmp, [tmp / 'weights.keras']):.1f} MB")


def speed(backbone, weights, n, repeats):
    """Median images per second of ours and of the template, on n noise images."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if weights:
            first = sorted(Path(weights).glob(WEIGHTS_GLOB))[0]
            network, _ = load_network(first)
            shutil.copy(first, tmp / "weights.npz")
        else:
            config = {**train.PRESETS["seed"], "backbone": backbone}
            architecture = {k: config[k] for k in train.ARCHITECTURE_KEYS}
            network = build_network(**architecture)
            save_network(network, architecture, tmp / "weights.npz")
        network.save(tmp / "weights.keras")
        X = np.random.default_rng(0).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        ours, template = Model(tmp), keras.models.load_model(tmp / "weights.keras")
        runs = {"ours": lambda: ours.predict(X), "template": lambda: template.predict(X, verbose=0).argmax(1)}
        labels = {name: run() for name, run in runs.items()}  # first call: tracing, not timed
        rates = {}
        for name, run in runs.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            rates[name] = n / float(np.median(times))
        same = np.array_equal(labels["ours"], labels["template"])
        print(f"{network.name}: ours {rates['ours']:.1f} images/s, template {rates['template']:.1f} images/s, "
              f"ratio {rates['ours'] / rates['template']:.2f}; labels identical: {same}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["zip-size", "speed"])
    p.add_argument("--backbone", default=train.PRESETS["seed"]["backbone"])
    p.add_argument("--weights", help="speed: a folder train.py wrote, instead of an untrained --backbone")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.what == "zip-size":
        zip_size(args.backbone)
    else:
        speed(args.backbone, args.weights, args.images, args.repeats)
