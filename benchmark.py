"""Benchmarks run by hand (minutes on a CPU); their figures go into BENCHMARKS.md.

    .venv/bin/python benchmark.py zip-size [--backbone EfficientNetV2L]

zip-size: the submission zip of an untrained network of the `seed` preset (float32 and float16
storage), against the plain template's `model.save('weights.keras')` of a compiled model, before
and after one training step (the step creates AdamW's two moments per trainable weight).
"""
import argparse
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import keras

import train
from model import build_network, save_network

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


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["zip-size"])
    p.add_argument("--backbone", default=train.PRESETS["seed"]["backbone"])
    args = p.parse_args()
    zip_size(args.backbone)
