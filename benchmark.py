"""Benchmarks run by hand (minutes on a CPU); their figures go into BENCHMARKS.md.

    .venv/bin/python benchmark.py zip-size [--backbone EfficientNetV2L]
    .venv/bin/python benchmark.py speed [--backbone EfficientNetV2L] [--weights DIR] [--images 512] [--repeats 3]
    .venv/bin/python benchmark.py train-speed [--preset cpu] [--backbone B] [--width W] [--input-size N] [--phase1-input-size N] [--images 512] [--repeats 3]
    .venv/bin/python benchmark.py augment-speed [--preset cpu] [--repeats 3]

zip-size: the submission zip of an untrained network of the `seed` preset (float32 and float16
storage), against the plain template's `model.save('weights.keras')` of a compiled model, before
and after one training step (the step creates AdamW's two moments per trainable weight).
speed: images per second of Model.predict without test-time augmentation against the template's
keras.models.load_model then model.predict(X).argmax(1), on the same network and images, with a
check that the labels agree; then of Model.predict with it (the default).
train-speed: images per second of a preset's training steps, input pipeline included (phase 1's
augmentation, then phase 2's with the corruptions), and the wall time that makes for the preset's
epochs on the shared data: how long `make train PRESET=cpu` will take on this machine. --backbone,
--width, --input-size and --phase1-input-size time another network in the preset's place.
augment-speed: what the input pipeline's parts cost per image, on a batch of the preset's size.
"""
import argparse
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

import data
data.quiet_tensorflow()  # before anything imports TensorFlow
import keras
import tensorflow as tf

import train
from augment import APPEARANCE, corrupt_like_a_test_set, make_augment
from model import WEIGHTS_GLOB, Model, build_network, load_network, save_network
from presets import ARCHITECTURE_KEYS, PRESETS

ROOT = Path(__file__).resolve().parent


def zipped_size(folder, files):
    path = Path(folder) / "submission.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, Path(f).name)
    return path.stat().st_size / 2**20


def zip_size(backbone):
    config = {**PRESETS["seed"], "backbone": backbone}
    architecture = {k: config[k] for k in ARCHITECTURE_KEYS}
    network = build_network(**architecture)
    print(f"{backbone}: {network.count_params():,} parameters")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for float16 in (False, True):
            save_network(network, architecture, tmp / "weights.npz", float16=float16)
            print(f"ours, {'float16' if float16 else 'float32'} weights.npz: "
                  f"zip {zipped_size(tmp, [ROOT / 'model.py', tmp / 'weights.npz']):.1f} MB")
        network.trainable = True
        train.compile_network(network, 1e-4, config, train.class_weights(np.arange(8)))
        network.save(tmp / "weights.keras")
        print(f"template, compiled, model.save('weights.keras'): zip {zipped_size(tmp, [tmp / 'weights.keras']):.1f} MB")
        x = np.zeros((2, 96, 96, 3), np.float32)
        network.train_on_batch(x, keras.utils.to_categorical([0, 1], 8))
        network.save(tmp / "weights.keras")
        print(f"template, after one training step: zip {zipped_size(tmp, [tmp / 'weights.keras']):.1f} MB")


def median_seconds(run, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed(backbone, weights, n, repeats):
    """Median images per second of ours and of the template, on n noise images."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if weights:
            first = sorted(Path(weights).glob(WEIGHTS_GLOB))[0]
            network, _ = load_network(first)
            shutil.copy(first, tmp / "weights.npz")
        else:
            config = {**PRESETS["seed"], "backbone": backbone}
            architecture = {k: config[k] for k in ARCHITECTURE_KEYS}
            network = build_network(**architecture)
            save_network(network, architecture, tmp / "weights.npz")
        network.save(tmp / "weights.keras")
        X = np.random.default_rng(0).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        ours, ours_tta = Model(tmp, tta=False), Model(tmp, tta=True)
        template = keras.models.load_model(tmp / "weights.keras")
        runs = {"ours": lambda: ours.predict(X), "template": lambda: template.predict(X, verbose=0).argmax(1),
                "ours with TTA": lambda: ours_tta.predict(X)}
        labels = {name: run() for name, run in runs.items()}  # first call: tracing, not timed
        rates = {name: n / median_seconds(run, repeats) for name, run in runs.items()}
        same = np.array_equal(labels["ours"], labels["template"])
        print(f"{network.name}: ours {rates['ours']:.1f} images/s, template {rates['template']:.1f} images/s, "
              f"ratio {rates['ours'] / rates['template']:.2f}; labels identical: {same}; "
              f"ours with test-time augmentation (eight views) {rates['ours with TTA']:.1f} images/s")


def train_speed(preset, n, repeats, changes, training_images=11071):  # the shared data's training part after cleaning
    """Median training images per second of each phase of a preset (with changes to its
    architecture), on n noise images, and the projected time."""
    config = {**PRESETS[preset], **changes, "backbone_weights": "none"}  # timed from random weights: nothing to download
    sizes = train.input_sizes(config)
    pixels = sizes[1] if sizes[0] == sizes[1] else f"{sizes[0]} then {sizes[1]}"
    name = f"{preset} ({config['backbone']} of width {config['width']} at {pixels} px)"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    labels = rng.integers(0, 8, n)
    minutes, steps = 0.0, n // config["batch_size"]
    for phase, epochs in enumerate((config["phase1_epochs"], config["phase2_epochs"])):
        # train.py's own network, optimizer, learning rate and pipeline, on noise
        network = train.create_network({**config, "input_size": sizes[phase]})
        learning_rate = train.plan(config, steps)[f"phase{phase + 1}_rate"]
        train.compile_network(network, learning_rate, config, train.class_weights(labels))
        dataset = train.training_set(config, images, labels, config["batch_size"], 0, phase).repeat()
        # one iterator for all epochs, as in a real epoch of hundreds of steps: the augmentation
        # runs ahead of the training step, on the cycles the step leaves idle; the first epoch traces
        ends = []
        timer = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs, ends=ends: ends.append(time.perf_counter()))
        network.fit(dataset, steps_per_epoch=steps, epochs=repeats + 1, callbacks=[timer], verbose=0)
        rate = steps * config["batch_size"] / float(np.median(np.diff(ends)))
        minutes += epochs * training_images / rate / 60
        print(f"{name}, phase {phase + 1} (corrupt_p {config['corrupt_p'][phase]}): {rate:.1f} training images/s")
    total_epochs = config["phase1_epochs"] + config["phase2_epochs"]
    print(f"{name}: about {minutes:.0f} minutes for {config['phase1_epochs']} + {config['phase2_epochs']} epochs "
          f"of {training_images:,} images, validation and start-up not included; "
          f"an hour holds about {60 * total_epochs / minutes:.0f} epochs at these rates")


def augment_speed(preset, repeats):
    """Median milliseconds per image of RandAugment alone, of phase 2's corruptions alone and of each
    appearance lever on every image, on a batch of noise."""
    config = PRESETS[preset]
    n = config["batch_size"]
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (n, 96, 96, 3)), tf.float32)
    steps = {"RandAugment": make_augment(config, 0, 0.0),
             f"corruptions (corrupt_p {config['corrupt_p'][1]})": lambda x: corrupt_like_a_test_set(x, config["corrupt_p"][1]),
             **{f"{lever.__name__} (on every image)": lambda x, lever=lever: lever(x, 1.0) for lever in APPEARANCE.values()}}
    for name, step in steps.items():
        step = tf.function(step)
        step(x)  # tracing, not timed
        print(f"{preset}, {name}: {1000 * median_seconds(lambda step=step: step(x).numpy(), repeats) / n:.2f} ms per image")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["zip-size", "speed", "train-speed", "augment-speed"])
    p.add_argument("--backbone", help="zip-size, speed: the network (default: the seed preset's); "
                                      "train-speed: in place of the preset's")
    p.add_argument("--width", type=float, help="train-speed: in place of the preset's (MobileNets only)")
    p.add_argument("--input-size", type=int, help="train-speed: in place of the preset's")
    p.add_argument("--phase1-input-size", "--head-input-size", type=int, help="train-speed: phase 1's, in place of the preset's")
    p.add_argument("--preset", default="cpu", help="train-speed, augment-speed: the preset whose training is timed")
    p.add_argument("--weights", help="speed: a folder train.py wrote, instead of an untrained --backbone")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    network = args.backbone or PRESETS["seed"]["backbone"]
    if args.what == "zip-size":
        zip_size(network)
    elif args.what == "speed":
        speed(network, args.weights, args.images, args.repeats)
    elif args.what == "train-speed":
        changes = {key: value for key, value in (("backbone", args.backbone), ("width", args.width),
                                                 ("input_size", args.input_size),
                                                 ("phase1_input_size", args.phase1_input_size)) if value}
        train_speed(args.preset, args.images, args.repeats, changes)
    else:
        augment_speed(args.preset, args.repeats)
