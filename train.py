"""Train the blood-cell classifier and write the weights that model.py loads.

    python train.py --data data/training_set.npz --preset seed     # or: make train

The `seed` preset is the recipe of our 11th-place entry (0.95 on the modified test set):
an EfficientNetV2L from ImageNet, focal loss weighted against class imbalance, AdamW, and
keras-cv RandAugment (three ops per image) in the input pipeline. Phase 1 trains the head on
the frozen backbone; phase 2 unfreezes the backbone's top layers, BatchNorm kept frozen.
From random weights (`--backbone-weights none`, the `tiny` and `cpu` presets) nothing is frozen:
both phases train the whole network on one learning-rate curve; phase 2 adds the corruptions
of `corrupt_p`, where the preset has any. `phase1_input_size` (progressive resizing) lets phase 1
see smaller images for cheaper epochs; the bundle is always phase 2's network.
Outputs in --out (default weights/): weights.npz, split.json (the held-out images, for
evaluation), history.csv and history.png.
"""
import argparse
import csv
import io
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the log
import data  # first: it imports TensorFlow without the CUDA plugins' noise
import tensorflow as tf
import keras

from augment import MIXES, clean_share_at, follow_clean_share, make_augment, make_dataset
from checkpoint import Checkpoint, Stopped, log, phase_name, run_phase, start_or_resume, stopping_cleanly
from outliers import find_outliers
from model import BACKBONES, NUM_CLASSES, build_network, load_network, save_network
from submission import MAKE_DEFAULTS, not_worth_uploading, run_record, warning

# Configuration as plain data: the seed recipe, and presets that say what they change from it.
BASE = dict(
    backbone="EfficientNetV2L", width=1.0, backbone_weights="imagenet", input_size=96, phase1_input_size=None, dropout=0.3,
    colour_constancy=False, ibn=False, antialias=False,
    max_images=None, holdout=0.1, validation=0.1,
    batch_size=32, augment_ops=3, augment_magnitude=0.5, corrupt_p=(0.0, 0.0), clean_share=0.0, mix="none",
    colour_p=0.0, randconv_p=0.0, apr_p=0.0,
    focal_gamma=2.0, balance_classes=True, label_smoothing=0.0, weight_decay=1e-4, ema_momentum=0.0,
    phase1_epochs=20, learning_rate=1e-4, phase2_epochs=30, patience=5,
)
# a pretrained backbone's fine-tuning, which random weights skip: phase 1's rate cut on plateaus, then
# phase 2 on the top `unfreeze` layers at its own rate, restarted every restart_epochs (None: one decay)
FINE_TUNING = dict(plateau_patience=2, phase2_learning_rate=1e-5, restart_epochs=5, unfreeze=150)
PRESETS = {
    "seed": {**BASE, **FINE_TUNING},
    "tiny": {**BASE, "backbone": "MobileNetV3Small", "backbone_weights": "none", "input_size": 64, "dropout": 0.2,
             "max_images": 400, "batch_size": 16, "phase1_epochs": 8, "learning_rate": 2e-3, "phase2_epochs": 8},
    # A CPU's hour is bound by memory speed: a small dense ResNet-10 (model.py) given many epochs gained more
    # than larger networks. It underfits, so what lets it fit more gained: cross-entropy, a high peak rate.
    # Phase 1 learns the cells at 64 px on RandAugment alone (a random network does not start learning
    # under the corruptions); phase 2 adds them at 96 px. No early stopping: the one learning-rate curve must
    # reach its end, and while the rate is high validation is too noisy to judge (a phase cut at its 24th
    # epoch of 72 lost 2 to 6 points). The runs behind it: experiments/2026-11-26-cpu-preset.md
    "cpu": {**BASE, "backbone": "ResNet10", "backbone_weights": "none", "phase1_input_size": 64, "dropout": 0.2,
            "batch_size": 64, "augment_ops": 2, "augment_magnitude": 0.3, "corrupt_p": (0.0, 0.2),
            "focal_gamma": 0.0, "label_smoothing": 0.1, "weight_decay": 0.05,
            "phase1_epochs": 36, "learning_rate": 3e-3, "phase2_epochs": 72, "patience": 0},
}
ABOUT = {  # what each preset is for, one line each in --help
    "seed": "the full recipe: EfficientNetV2L fine-tuned from ImageNet; needs a GPU and a 470 MB download",
    "tiny": "a smoke run of about two minutes on 2 CPU cores, for tests: MobileNetV3Small on 400 images",
    "cpu": "a CPU without internet: our ResNet10 from random weights, about 45 minutes on 2 cores",
}
RENAMED = {"epochs_head": "phase1_epochs", "epochs_finetune": "phase2_epochs", "lr_head": "learning_rate",
           "lr_finetune": "phase2_learning_rate", "head_input_size": "phase1_input_size"}  # old name: new, in old checkpoints
ARCHITECTURE_KEYS = ("backbone", "width", "input_size", "dropout", "colour_constancy", "ibn", "antialias")  # what model.py rebuilds from
LARGE = 20_000_000  # parameters: a network this large wants a GPU


# ---------------------------------------------------------------------------------------------
# data: clean, then split off the held-out images that training never sees

def split_data(images, labels, config, seed, keep_outliers=False):
    """Return train, validation and held-out indices into the file, and what cleaning removed."""
    indices = np.arange(len(labels))
    if config["max_images"] and config["max_images"] < len(labels):
        _, indices = data.stratified_split(indices, labels, config["max_images"], seed)
    removed = {"outliers": [], "duplicates": [], "counts": {}}
    if not keep_outliers:
        found = find_outliers(images[indices], labels[indices])
        removed = {key: [int(indices[i]) for i in found[key]] for key in ("outliers", "duplicates")}
        removed["counts"] = found["counts"]
        indices = np.setdiff1d(indices, removed["outliers"] + removed["duplicates"])
        log(f"removed {len(removed['outliers'])} outliers and {len(removed['duplicates'])} duplicates "
            f"{removed['counts'] or ''}")
    rest, holdout = data.stratified_split(indices, labels, config["holdout"], seed)
    train, validation = data.stratified_split(rest, labels, config["validation"], seed)
    return train, validation, holdout, removed


def class_weights(labels, balanced=True):
    """The loss' weight of each class (the focal loss' alpha): inverse class frequency, 1.0 on
    average for balanced data; all 1.0 (every image counts the same) when not balanced."""
    if not balanced:
        return [1.0] * NUM_CLASSES
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    return (len(labels) / (NUM_CLASSES * np.maximum(counts, 1))).tolist()


# ---------------------------------------------------------------------------------------------
# network and training phases

def choose_strategy():
    """Several GPUs: MirroredStrategy; one device: the default strategy. Mixed precision on GPUs."""
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def gpu_advice(network):
    """One line for a large network about to train without a GPU, else None."""
    if tf.config.list_physical_devices("GPU") or network.count_params() <= LARGE:
        return None
    return (f"no GPU visible: {network.count_params() / 1e6:.0f} million parameters will train on the CPU, slowly. "
            'With an NVIDIA GPU, install its CUDA libraries: .venv/bin/pip install "tensorflow[and-cuda]==2.17.0"; '
            f"without one: make train PRESET=cpu ({ABOUT['cpu']})")


class EpochClock(keras.callbacks.Callback):
    """Says once, after the first steps, how long an epoch will take (for a large network on a CPU)."""

    def __init__(self, steps_per_epoch, steps=5):
        super().__init__()
        self.steps_per_epoch, self.steps, self.started, self.said = steps_per_epoch, steps, None, False

    def on_train_batch_end(self, batch, logs=None):
        if self.said:
            return
        if self.started is None:  # the first step traces the graph: the clock starts after it
            self.started, self.first = time.perf_counter(), batch
        elif batch - self.first == self.steps:
            minutes = (time.perf_counter() - self.started) / self.steps * self.steps_per_epoch / 60
            log(f"at this pace an epoch takes about {minutes:.0f} minutes ({self.steps_per_epoch} steps). "
                f"Without a GPU, make train PRESET=cpu is {ABOUT['cpu']}")
            self.said = True


def input_sizes(config):
    """Pixels the network sees in phase 1 and in phase 2: phase 1 may see fewer (progressive resizing),
    with the same weights."""
    return config.get("phase1_input_size") or config["input_size"], config["input_size"]


def backbone_of(network):
    return next(layer for layer in network.layers if isinstance(layer, keras.Model))


def create_network(config, command=None):
    """The network of model.py with the backbone's starting weights: imagenet, none, or a local file.
    A source that fails ends the program with the fix, as command (the user's) would run it."""
    weights, command = config["backbone_weights"], command or Command()
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        sys.exit(f"--backbone-weights {weights}: no such file. Use imagenet, none, or the path of a "
                 f"local .h5 file of {config['backbone']} without its top (include_top=False)")
    if weights != "none" and BACKBONES[config["backbone"]] is None:
        sys.exit(f"--backbone {config['backbone']} has no pretrained weights: train it from scratch with "
                 f"--backbone-weights none ({command.train(flags={'--backbone-weights': 'none'})})")
    if weights == "imagenet" and config["width"] not in (0.75, 1.0):
        sys.exit(f"--width {config['width']}: Keras has ImageNet weights for widths 0.75 and 1.0 only. "
                 f"Train this width from scratch with --backbone-weights none ({command.train(flags={'--backbone-weights': 'none'})})")
    try:
        network = build_network(**{k: config[k] for k in ARCHITECTURE_KEYS},
                                backbone_weights=None if weights == "none" else weights)
    except ValueError:
        raise  # a network that cannot be built (say, a width its backbone lacks), not a failed download
    except Exception as e:
        if weights != "imagenet":
            raise
        sys.exit(f"could not download the ImageNet weights of {config['backbone']} ({e}). Without internet:\n"
                 f"  {command.train(keep_flags=False, PRESET='cpu')}    # {ABOUT['cpu']}\n"
                 f"  {command.train(flags={'--backbone-weights': 'none'})}    # {config['backbone']} from random "
                 "weights: slow without a GPU\n"
                 f"  {command.train(flags={'--backbone-weights': 'path/to/weights_notop.h5'})}    # a local copy of the weights")
    if weights == "none":
        # Keras' MobileNetV3 keeps BatchNorm's moving statistics with momentum 0.999, made for long
        # ImageNet epochs: at our ~170 steps an epoch they take six epochs to forget their random
        # start, and validation (which early stopping watches) sees a network that predicts one class.
        # 0.9, EfficientNetV2's own, for every backbone; inference and the saved weights are unchanged.
        for layer in backbone_of(network).layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    return network


def unfreeze_top(network, n):
    """Make the pretrained backbone's top n layers trainable, BatchNormalization layers excepted.

    Frozen BatchNorm layers run in inference mode in Keras 3, so pretrained statistics stay those
    learnt on the big data set instead of being dragged around by small batches.
    """
    backbone = backbone_of(network)
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= len(backbone.layers) - n and not isinstance(layer, keras.layers.BatchNormalization)


def compile_network(network, learning_rate, config, weights):
    # ema_momentum above 0: AdamW also keeps an exponential moving average of the weights, which
    # validation sees and each phase ends with (run_phase)
    averaging = config["ema_momentum"] > 0
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config["weight_decay"],
                                       use_ema=averaging, ema_momentum=config["ema_momentum"] if averaging else 0.99)
    # decay only the kernels, as the AdamW recipes do: BatchNorm's scales and offsets and the biases
    # are few, and not what overfits
    optimizer.exclude_from_weight_decay(var_list=[v for v in network.weights if len(v.shape) <= 1])
    network.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalFocalCrossentropy(alpha=weights, gamma=config["focal_gamma"],
                                                       label_smoothing=config["label_smoothing"]),
        metrics=["accuracy"])


def warm_cosine(peak, epochs, steps_per_epoch):
    """An epoch of linear warm-up from peak / 100 (a fresh AdamW's first steps are its largest),
    then one cosine decay to zero by the end of the last epoch."""
    return keras.optimizers.schedules.CosineDecay(
        peak / 100, decay_steps=max(epochs - 1, 1) * steps_per_epoch, warmup_target=peak, warmup_steps=steps_per_epoch)


def finetune_schedule(config, steps_per_epoch):
    """Phase 2's learning rate on a pretrained backbone: cosine decay with restarts every
    restart_epochs, or, when that is None, one warm_cosine over the phase."""
    if config["restart_epochs"]:
        return keras.optimizers.schedules.CosineDecayRestarts(
            config["phase2_learning_rate"], first_decay_steps=config["restart_epochs"] * steps_per_epoch)
    return warm_cosine(config["phase2_learning_rate"], config["phase2_epochs"], steps_per_epoch)


def from_scratch_schedule(config, steps_per_epoch):
    """A random start's learning rate: one warm_cosine from learning_rate over both phases, which share
    one AdamW, so that phase 2 goes on down the same curve instead of starting again at the top."""
    return warm_cosine(config["learning_rate"], config["phase1_epochs"] + config["phase2_epochs"], steps_per_epoch)


# ---------------------------------------------------------------------------------------------
# the recipe

def train(config, data_path, out, seed=0, keep_outliers=False, strategy=None, resume=False, overwrite=False,
          split_seed=0, command=None):
    """The whole recipe, from the data file to out/weights.npz. Returns the history rows.

    seed fixes the initial weights and the augmentation, split_seed which images are held out: runs
    of several seeds on one split_seed make an ensemble that evaluate.py can score honestly.

    Every epoch is checkpointed in out/checkpoint; resume=True continues a killed run from its
    last complete epoch, in its phase, with its split and config. Whatever can fail (the folder,
    the backbone's weights) fails before the data's cleaning; command (the user's make train) words the fixes.
    """
    out, command = Path(out), command or Command(out=out)
    checkpoint = Checkpoint(out / "checkpoint")
    state = start_or_resume(checkpoint, out, resume, overwrite, command)
    if state:
        config, seed = resumed_config(state, config), state["seed"]
        state.setdefault("resumed_at", []).append(len(state["history"]))  # epochs done before: history.png marks it
    pretrained = config["backbone_weights"] != "none"
    config = {**FINE_TUNING, **config} if pretrained else config  # a preset from random weights made pretrained
    phase = state["phase"] if state else "head"
    keras.utils.set_random_seed(seed + len(state["history"]) if state else seed)  # a resumed run draws new augmentations
    strategy = strategy or choose_strategy()
    phase1_size, phase2_size = input_sizes(config)
    def network_for(phase):
        with strategy.scope():
            return create_network({**config, "input_size": phase1_size if phase == "head" else phase2_size}, command)
    network = network_for(phase)  # downloads the backbone's weights, or stops, before the data's cleaning
    advice = gpu_advice(network)
    if advice:
        log(advice)

    images, labels = data.load_training_set(data_path)
    if state and state["split"]["fingerprint"] != data.fingerprint(images, labels):
        made_from = state["split"].get("data")
        sys.exit(f"the checkpoint in {checkpoint.folder} was made from {made_from or 'other data'}, not {data_path}"
                 + (f": resume with {command.train(RESUME=1, DATA=made_from)}" if made_from else ""))
    if state is None:
        checkpoint.remove()  # an interrupted run that --overwrite discards
        state = new_run(images, labels, config, seed, split_seed, keep_outliers, data_path, command.variables["PRESET"])
    checkpoint.state = state
    train_idx, val_idx = (np.array(state["split"][k], dtype=np.int64) for k in ("train", "validation"))
    log(f"{len(train_idx)} training, {len(val_idx)} validation and {len(state['split']['holdout'])} held-out images")

    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    steps_per_epoch = int(np.ceil(len(train_idx) / batch_size))
    train_sets, val_ds, clean_share = pipelines(config, images, labels, train_idx, val_idx, batch_size, seed)
    weights = class_weights(labels[train_idx], config["balance_classes"])
    clock = [EpochClock(steps_per_epoch)] if advice else []
    # a pretrained backbone: phase 1 trains the head on it, frozen, at learning_rate cut on plateaus, and
    # phase 2 its top layers with a new AdamW. A random one has nothing to protect and trains whole
    # from the first step, on one AdamW and one learning-rate curve: phase 2 only adds the corruptions
    schedule = finetune_schedule(config, steps_per_epoch) if pretrained else from_scratch_schedule(config, steps_per_epoch)

    if phase == "head":
        with strategy.scope():
            if pretrained:
                backbone_of(network).trainable = False
            compile_network(network, config["learning_rate"] if pretrained else schedule, config, weights)
            if state["epoch"] > 0:
                checkpoint.restore(network)  # in the scope: AdamW's variables are built here
        plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3,
                                                    patience=config["plateau_patience"]) if pretrained else None
        run_phase(network, config["phase1_epochs"], train_sets[0], val_ds, checkpoint, config, plateau, follow=clock)
        state.update(phase="finetune", epoch=0, callbacks={}, stopped=False)
        checkpoint.watched = {}
        checkpoint.save(network, with_optimizer=not pretrained)  # phase 2 starts from here
        if phase1_size != phase2_size:
            network = network_for("finetune")  # its weights come from the checkpoint just saved
    with strategy.scope():
        if pretrained:
            unfreeze_top(network, config["unfreeze"])
        compile_network(network, schedule, config, weights)
        checkpoint.restore(network)  # from scratch, AdamW's state too: its step count carries the curve on
    run_phase(network, config["phase2_epochs"], train_sets[1], val_ds, checkpoint, config,
              follow=[follow_clean_share(config, clean_share), *clock])

    # the finished run: weights, split and history renamed into place, then the checkpoint goes
    precision = save_weights(network, config, out / "weights.npz", images[val_idx], labels[val_idx])
    data.write_json(out / "split.json", {**state["split"], "config": config, "preset": state.get("preset"),
                                         "trained_epochs": len(state["history"]), "precision": precision})
    save_history(state["history"], out, state.get("resumed_at", ()))
    checkpoint.remove(then_stop=False)  # the run is complete: a Ctrl-C now changes nothing
    return state["history"]


def pipelines(config, images, labels, train_idx, val_idx, batch_size, seed):
    """Both phases' training pipelines (corrupt_p holds each phase's share of corrupted images), the
    validation pipeline, and the tf.Variable of phase 2's clean share (phase 1 keeps its first)."""
    clean_share = tf.Variable(clean_share_at(config, 0), trainable=False)
    def train_ds(phase):
        augment = make_augment(config, seed, config["corrupt_p"][phase], clean_share, appearance=phase == 1)
        return make_dataset(images[train_idx], labels[train_idx], batch_size, augment, seed, MIXES[config.get("mix", "none")])
    # Both are traced now: TensorFlow reads a function's source from its file when it first traces
    # it, and phase 2's corruptions, traced later, would read lines an edit had moved.
    return [train_ds(0), train_ds(1)], make_dataset(images[val_idx], labels[val_idx], batch_size), clean_share


def with_todays_names(config):
    """A checkpoint's config with the keys older train.py named otherwise renamed (RENAMED)."""
    return {RENAMED.get(key, key): value for key, value in config.items()}


def resumed_config(state, config):
    """The checkpoint's config, with today's key names; settings added since come from config (the preset given now)."""
    saved = with_todays_names(state["config"])
    predates = {key: value for key, value in config.items() if key not in saved}
    if predates:
        log(f"the checkpoint predates {', '.join(predates)}: from the preset and flags given now")
    state["config"] = {**predates, **saved}
    log(f"resuming from {phase_name(state['phase'])} epoch {state['epoch']}")
    return state["config"]


def new_run(images, labels, config, seed, split_seed, keep_outliers, data_path, preset=None):
    """A fresh run's state: the config (of preset, by name), and the split made now."""
    train_idx, val_idx, holdout_idx, removed = split_data(images, labels, config, split_seed, keep_outliers)
    split = {"fingerprint": data.fingerprint(images, labels), "data": str(data_path), "split_seed": split_seed,
             "holdout": holdout_idx.tolist(), "validation": val_idx.tolist(), "train": train_idx.tolist(),
             "removed": removed}
    return {"config": config, "preset": preset, "seed": seed, "split": split, "phase": "head", "epoch": 0, "history": [],
            "callbacks": {}}


def save_weights(network, config, path, check_images, check_labels):
    """Store float16 weights when they get as many check images right as float32, within one image,
    else float32. Returns the precision stored and why, in words."""
    path.parent.mkdir(parents=True, exist_ok=True)
    architecture = {k: config[k] for k in ARCHITECTURE_KEYS}
    candidate = path.with_name("float16-candidate.npz")
    save_network(network, architecture, candidate, float16=True)
    x = check_images.astype(np.float32)
    keep, why = float16_verdict(check_labels, network.predict(x, verbose=0).argmax(1),
                                load_network(candidate)[0].predict(x, verbose=0).argmax(1))
    if keep:
        os.replace(candidate, path)
    else:
        candidate.unlink()
        save_network(network, architecture, path)
    log(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB, {why})")
    return {"dtype": "float16" if keep else "float32", "why": why}


def float16_verdict(labels, float32_predicted, float16_predicted):
    """Whether float16 weights may ship, and why. Their labels need not all be float32's: an image
    on the edge between two classes may flip either way, and one such flip of a thousand would double
    the zip. Their count of right images must be within one of float32's."""
    right32, right16 = int(np.sum(float32_predicted == labels)), int(np.sum(float16_predicted == labels))
    counts = f"{right16} of {len(labels)} validation images right, float32 {right32}"
    if abs(right16 - right32) <= 1:
        return True, f"float16: {counts}, within one image, at half the size"
    return False, f"float32: float16 gets {counts}, more than one image apart"


def kept_epoch(rows):
    """The index in rows of the epoch whose weights the run ends with, or None for no epochs: the best
    validation loss of the last phase that trained (early stopping's: the first of equals, never NaN)."""
    last = [i for i, row in enumerate(rows) if row["phase"] == rows[-1]["phase"]] if rows else []
    scored = [i for i in last if math.isfinite(float(rows[i].get("val_loss", "nan")))]
    return min(scored, key=lambda i: float(rows[i]["val_loss"])) if scored else (last[-1] if last else None)


def save_history(rows, out, resumed_at=()):
    """history.csv (one row per epoch, both phases) and history.png (the curves, the epoch the run kept,
    and where it was resumed: after resumed_at's numbers of epochs)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, list(dict.fromkeys(["phase", "epoch", *(k for row in rows for k in row)])))
    writer.writeheader()
    writer.writerows(rows)
    data.write_atomically(out / "history.csv", lambda f: f.write(text.getvalue().encode()))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    step = np.arange(1, len(rows) + 1)
    phase1_epochs = sum(r["phase"] == "head" for r in rows)
    kept = kept_epoch(rows)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set_title(metric)
        if not rows:  # empty axes would look like a drawing that failed
            ax.text(0.5, 0.5, "no epochs trained", ha="center", va="center", transform=ax.transAxes, fontsize=12)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for prefix, style in (("", "-"), ("val_", "--")):
            ax.plot(step, [r.get(prefix + metric, np.nan) for r in rows], style, label=prefix + metric)
        ax.plot(kept + 1, rows[kept].get("val_" + metric, np.nan), "*", color="crimson", markersize=12,
                label=f"kept: {phase_name(rows[kept]['phase'])}, epoch {rows[kept]['epoch']}")
        if 0 < phase1_epochs < len(rows):
            ax.axvline(phase1_epochs + 0.5, color="grey", lw=0.8, label="phase 2 begins")
        for k, done in enumerate(resumed_at):
            ax.axvline(done + 0.5, color="darkorange", lw=1, ls=":", label="resumed" if k == 0 else None)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch (both phases)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)  # below, off the curves
    fig.tight_layout()
    data.save_figure(fig, out / "history.png")


# ---------------------------------------------------------------------------------------------
# the command line: a flag for each preset key it may change, named after it

class Command:
    """The user's own make train (preset, data, weights folder and flags), so that the commands a
    message suggests change only what they must."""
    DEFAULTS = MAKE_DEFAULTS

    def __init__(self, preset=None, data_path=None, out=None, flags=()):
        self.variables = {"PRESET": preset, "DATA": data_path, "WEIGHTS": out}
        self.flags = list(flags)

    def make(self, target, flags=(), **variables):
        words = ["make", target] + [f"{k}={v}" for k, v in variables.items() if v is not None and str(v) != self.DEFAULTS.get(k)]
        return " ".join(words + ([f'ARGS="{" ".join(flags)}"'] if flags else []))

    def train(self, keep_flags=True, flags=None, **variables):
        """make train as the user ran it, with flags ({"--flag": "value"}) and variables set."""
        kept = without(self.flags, flags or {}) if keep_flags else []
        return self.make("train", kept + [f"{k} {v}" for k, v in (flags or {}).items()], **{**self.variables, **variables})

    def then(self, target):
        return self.make(target, WEIGHTS=self.variables["WEIGHTS"], DATA=self.variables["DATA"])


def without(argv, names):
    """argv without the flags in names and their values."""
    kept, skipping = [], False
    for word in argv:
        if word.startswith("--"):
            skipping = word.split("=")[0] in names
        if not skipping:
            kept.append(word)
    return kept


def checked(kind, ok, rule):
    """An argparse type: kind(text), refused (naming the flag) unless ok(value)."""
    def parse(text):
        value = kind(text)  # a ValueError: argparse says "invalid int value" or "invalid float value"
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"{text}: {rule}")
        return value
    parse.__name__ = kind.__name__
    return parse


COUNT = checked(int, lambda n: n >= 0, "0 or more")
SHARE = checked(float, lambda x: 0 <= x <= 1, "a share of the images, from 0 to 1")
PIXELS = checked(int, lambda n: n >= 32, "the backbones take at least 32 pixels (the images are 96)")
FLAGS = {  # preset key: its flag's argparse settings; --phase1-epochs sets phase1_epochs, and so on
    "backbone": dict(choices=BACKBONES, metavar="NAME", help="a keras.applications network, or our ResNet10: "
                                                            + ", ".join(BACKBONES)),
    "width": dict(type=checked(float, lambda x: x > 0, "a multiplier of the channels, above 0 (1.0: as published)"),
                  help="the MobileNets' channel multiplier, Keras' alpha"),
    "input_size": dict(type=PIXELS, help="pixels the network sees, resized from 96"),
    "phase1_input_size": dict(type=PIXELS, help="pixels the network sees in phase 1 only, for cheaper epochs "
                                                "(progressive resizing; None: --input-size)"),
    "backbone_weights": dict(metavar="imagenet|none|FILE", help="imagenet (download), none (random start), or a "
                                                                "local .h5 file of the backbone without its top"),
    "phase1_epochs": dict(type=COUNT, help="phase 1's epochs (0 skips it): a pretrained backbone frozen under its "
                                           "new head; random weights: the whole network, at --phase1-input-size"),
    "phase2_epochs": dict(type=COUNT, help="phase 2's epochs (0 skips it): a pretrained backbone's top --unfreeze "
                                           "layers trained too; random weights: the whole network, with the corruptions"),
    "unfreeze": dict(type=COUNT, help="a pretrained backbone's layers trained in phase 2, counted from the top"),
    "batch_size": dict(type=checked(int, lambda n: n >= 1, "1 or more"), help="images per step on each device"),
    "learning_rate": dict(type=checked(float, lambda x: x > 0, "a learning rate, above 0"),
                          help="phase 1's learning rate; from random weights, the peak of the one curve over both phases"),
    "focal_gamma": dict(type=checked(float, lambda x: x >= 0, "0 or more (0: cross-entropy)"),
                        help="the focal loss' gamma; 0 gives cross-entropy, weighted by class as the focal loss is"),
    "balance_classes": dict(action=argparse.BooleanOptionalAction,
                            help="weigh each class' images by its inverse frequency in the loss"),
    "label_smoothing": dict(type=checked(float, lambda x: 0 <= x < 1, "from 0 (hard labels) to below 1"),
                            help="share of each label's weight spread over the other classes"),
    "weight_decay": dict(type=checked(float, lambda x: x >= 0, "0 (none) or more"),
                         help="AdamW's decoupled weight decay of the kernels"),
    "ema_momentum": dict(type=checked(float, lambda x: 0 <= x < 1, "from 0 (no average) to below 1"),
                         help="validate and keep a moving average of the weights with this momentum (0.998: over "
                              "about 500 steps); 0: none"),
    "patience": dict(type=COUNT, help="epochs without a better validation loss before a phase stops early; 0: "
                                      "never. The best epoch is kept either way"),
    "mix": dict(choices=MIXES, help="mix each training batch's images and labels in pairs: MixUp or CutMix"),
    "corrupt_p": dict(type=SHARE, help="phase 2: each corruption's share of the images"),
    "colour_p": dict(type=SHARE, help="phase 2: each broad colour change's share of the images (hue turned anywhere, "
                                      "channels shuffled or shifted by up to half the range, solarized, coloured cut-outs)"),
    "randconv_p": dict(type=SHARE, help="phase 2: share of the images through a random convolution (RandConv)"),
    "apr_p": dict(type=SHARE, help="phase 2: share of the images given another's Fourier amplitude (APR-P)"),
    "colour_constancy": dict(action=argparse.BooleanOptionalAction,
                             help="the network's first layer maps each image's colours to a reference frame"),
    "ibn": dict(action=argparse.BooleanOptionalAction,
                help="ResNet10: instance normalisation on half the channels of the stem and stages 1-2 (IBN-a)"),
    "antialias": dict(action=argparse.BooleanOptionalAction,
                      help="ResNet10: a fixed blur before the stride-4 stem (BlurPool's anti-aliasing)"),
    "clean_share": dict(type=SHARE, nargs="+", metavar="SHARE",
                        help="share of the images spared the corruptions; two values: phase 2's first and last "
                             "epoch's, a straight line between"),
}


def preset_values(key):
    """Each preset's value of a setting, for --help: "seed 20, tiny 8, cpu 36"."""
    values = {name: preset[key] for name, preset in PRESETS.items() if key in preset}
    if key == "corrupt_p":
        values = {name: value[1] for name, value in values.items()}
    if len(set(map(str, values.values()))) == 1:
        return f"every preset: {next(iter(values.values()))}" if len(values) == len(PRESETS) else \
            f"{', '.join(values)}: {next(iter(values.values()))}; pretrained backbones only"
    return ", ".join(f"{name} {value}" for name, value in values.items())


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    epilog = "presets:\n" + "\n".join(f"  {name:5} {about}" for name, about in ABOUT.items())
    p = data.ArgumentParser(description=__doc__, epilog=epilog, allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/training_set.npz", help="the challenge's training_set.npz (default: %(default)s)")
    p.add_argument("--preset", default="seed", choices=PRESETS, help="the recipe; flags change single values of it "
                                                                     "(default: %(default)s; listed below)")
    for key, settings in FLAGS.items():
        if "type" in settings:
            settings = {"metavar": {"int": "N", "float": "X"}[settings["type"].__name__], **settings}
        p.add_argument("--" + key.replace("_", "-"), dest=key, **{**settings, "help": f"{settings['help']} ({preset_values(key)})"})
    for old, key in RENAMED.items():  # the names of older train.py, still taken
        if key in FLAGS:
            p.add_argument("--" + old.replace("_", "-"), dest=key, **{**FLAGS[key], "help": argparse.SUPPRESS})
    p.add_argument("--seed", type=int, default=0, help="fixes the initial weights and the augmentation (default: %(default)s)")
    p.add_argument("--split-seed", type=int, default=0, help="fixes the cleaning sample and the held-out images "
                                                             "(default: %(default)s)")
    p.add_argument("--out", default="weights", help="folder for weights.npz, split.json and the history (default: %(default)s)")
    p.add_argument("--keep-outliers", action="store_true", help="train on every image, outliers included")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run checkpointed in --out (RESUME=1)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out, finished or interrupted (OVERWRITE=1)")
    args = p.parse_args(argv)
    if args.clean_share is not None and len(args.clean_share) > 2:
        p.error(f"--clean-share {' '.join(map(str, args.clean_share))}: one share, or two (phase 2's first and last epoch's)")
    config = dict(PRESETS[args.preset])
    config.update({key: getattr(args, key) for key in FLAGS if getattr(args, key) is not None})
    if args.clean_share is not None:
        config["clean_share"] = args.clean_share[0] if len(args.clean_share) == 1 else tuple(args.clean_share)
    if args.corrupt_p is not None:
        config["corrupt_p"] = (PRESETS[args.preset]["corrupt_p"][0], args.corrupt_p)
    args.command = Command(args.preset, args.data, args.out, without(argv, {"--data", "--preset", "--out", "--resume", "--overwrite"}))
    return args, config


def last_words(rows, out, command):
    """What a finished run ends with: the commands that follow, and for a bundle not worth uploading,
    a warning that says why and what to train instead."""
    kept = kept_epoch(rows)
    accuracy = rows[kept].get("val_accuracy") if kept is not None else None
    reason = not_worth_uploading({out: run_record(out)}, accuracy, images="validation")
    if reason is None:
        return [f"next: {command.then('submission')} (the bundle to upload), then {command.then('evaluate')} "
                "(accuracy on the held-out images, clean and corrupted)"]
    return [f"next: {command.then('submission')} packs it and {command.then('evaluate')} scores it, but:",
            warning(reason, command.train(keep_flags=False, PRESET="cpu", OVERWRITE=1),
                    command.train(keep_flags=False, PRESET="seed", OVERWRITE=1))]


def stopped(signum, out, command):
    """The line a run stopped by a signal ends with: what its checkpoint keeps, and the command that goes on."""
    how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    checkpoint = Checkpoint(Path(out) / "checkpoint")
    state = checkpoint.load()
    if state is None:
        again = command.train(**({"OVERWRITE": 1} if (Path(out) / "weights.npz").is_file() else {}))
        return f"stopped by {how} before the first epoch's checkpoint, so nothing is kept: start again with {again}"
    config = with_todays_names(state["config"])
    if state["phase"] == "finetune" and state["epoch"] == 0:
        kept = "phase 1 complete, phase 2 not begun"
    else:
        epochs = config["phase1_epochs" if state["phase"] == "head" else "phase2_epochs"]
        kept = f"{phase_name(state['phase'])}, epoch {state['epoch']} of {epochs}"
    return f"stopped by {how}: {checkpoint.folder} keeps {kept}; continue with {command.train(RESUME=1)}"


if __name__ == "__main__":
    args, config = parse_args()
    changed = {key: value for key, value in config.items() if value != PRESETS[args.preset].get(key)}
    log(f"preset {args.preset}" + ("".join(f"\n  {key}: {value}" for key, value in changed.items()) if changed else ""))
    try:
        with stopping_cleanly():
            rows = train(config, args.data, args.out, args.seed, args.keep_outliers, resume=args.resume,
                         overwrite=args.overwrite, split_seed=args.split_seed, command=args.command)
    except data.DataError as e:
        sys.exit(f"error: {e}")
    except Stopped as stop:
        log(stopped(stop.signum, args.out, args.command))
        sys.exit(128 + stop.signum)  # as a shell reports a process its signal ended
    for line in last_words(rows, args.out, args.command):
        log(line)
