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
evaluation), history.csv and history.png. The presets and flags: presets.py.
"""
import csv
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the log
import data
data.quiet_tensorflow()  # before anything imports TensorFlow
import tensorflow as tf
import keras

from augment import MIXES, clean_share_at, follow_clean_share, make_augment, make_dataset
from checkpoint import (Checkpoint, Stopped, check_same_data, log, new_state, phase_name, resumed, run_phase,
                        start_or_resume, stopped, stopping_cleanly)
from model import BACKBONES, NUM_CLASSES, build_network, load_network, save_network
from presets import ABOUT, ARCHITECTURE_KEYS, PRESETS, Command, make_config, parse_args
from submission import not_worth_uploading, run_record, warning

LARGE = 20_000_000  # parameters: a network this large wants a GPU


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
    # 1. start afresh, or resume a killed run with its own config, seed and split
    checkpoint = Checkpoint(out / "checkpoint")
    state = start_or_resume(checkpoint, out, resume, overwrite, command)
    config, seed = resumed(state, config) if state else (make_config(config), seed)
    keras.utils.set_random_seed(seed + len(state["history"]) if state else seed)  # a resumed run draws new augmentations
    strategy = strategy or choose_strategy()
    sizes = input_sizes(config)
    def network_at(size):
        with strategy.scope():
            return create_network({**config, "input_size": size}, command)
    phase = state["phase"] if state else "head"
    network = network_at(sizes[phase == "finetune"])  # downloads the backbone's weights, or stops, before the cleaning
    advice = gpu_advice(network)
    if advice:
        log(advice)

    # 2. the data and its split: the checkpoint's, or made now (cleaned, then the held-out images set aside)
    images, labels = data.load_training_set(data_path)
    if state:
        check_same_data(state, checkpoint, images, labels, data_path, command)
    else:
        checkpoint.remove()  # an interrupted run that --overwrite discards
        split = data.make_split(images, labels, data_path, config, split_seed, keep_outliers)
        removed = split["removed"]
        if not keep_outliers:
            log(f"removed {len(removed['outliers'])} outliers and {len(removed['duplicates'])} duplicates "
                f"{removed['counts'] or ''}")
        state = new_state(config, command.variables["PRESET"], seed, split)
    checkpoint.state = state
    train_idx, val_idx = (np.array(state["split"][k], dtype=np.int64) for k in ("train", "validation"))
    log(f"{len(train_idx)} training, {len(val_idx)} validation and {len(state['split']['holdout'])} held-out images")
    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    steps_per_epoch = int(np.ceil(len(train_idx) / batch_size))
    sets, clean_share = pipelines(config, images, labels, train_idx, val_idx, batch_size, seed)
    weights = class_weights(labels[train_idx], config["balance_classes"])
    how = plan(config, steps_per_epoch)
    clock = [EpochClock(steps_per_epoch)] if advice else []

    # 3. phase 1, then 4. phase 2 (on a network rebuilt at its own size, from the checkpoint)
    if phase == "head":
        phase1(network, config, how, checkpoint, sets, weights, strategy, clock)
        if sizes[0] != sizes[1]:
            network = network_at(sizes[1])
    phase2(network, config, how, checkpoint, sets, weights, strategy, [follow_clean_share(config, clean_share), *clock])
    if config["swa_epochs"]:
        refresh_batchnorm(network, sets["phase 2"])
        log(f"the weights' average, BatchNorm refreshed: validation accuracy {network.evaluate(sets['validation'], verbose=0)[1]:.4f}")

    # 5. the finished run: weights, split and history renamed into place, then the checkpoint goes
    precision = save_weights(network, config, out / "weights.npz", images[val_idx], labels[val_idx])
    data.save_split(out, state["split"], config=config, preset=state.get("preset"),
                    trained_epochs=len(state["history"]), precision=precision)
    save_history(state["history"], out, state.get("resumed_at", ()), keep_last=config["swa_epochs"] > 0)
    checkpoint.remove(then_stop=False)  # the run is complete: a Ctrl-C now changes nothing
    return state["history"]


def phase1(network, config, how, checkpoint, sets, weights, strategy, follow):
    """Phase 1 from the checkpoint's epoch on; it ends with phase 2's starting point checkpointed."""
    with strategy.scope():
        if how["pretrained"]:
            backbone_of(network).trainable = False
        compile_network(network, how["phase1_rate"], config, weights, how["phase1_average_from"])
        if checkpoint.state["epoch"] > 0:
            checkpoint.restore(network)  # in the scope: AdamW's variables are built here
    run_phase(network, config["phase1_epochs"], sets["phase 1"], sets["validation"], checkpoint, config, how["plateau"],
              follow=follow)
    checkpoint.state.update(phase="finetune", epoch=0, callbacks={}, stopped=False)
    checkpoint.watched = {}
    checkpoint.save(network, with_optimizer=not how["pretrained"])  # a new AdamW for a pretrained backbone's phase 2


def phase2(network, config, how, checkpoint, sets, weights, strategy, follow):
    """Phase 2 from the checkpoint's epoch on, on the checkpoint's weights."""
    with strategy.scope():
        if how["pretrained"]:
            unfreeze_top(network, config["unfreeze"])
        compile_network(network, how["phase2_rate"], config, weights, how["phase2_average_from"])
        checkpoint.restore(network)  # from scratch, AdamW's state too: its step count carries the curve on
    run_phase(network, config["phase2_epochs"], sets["phase 2"], sets["validation"], checkpoint, config, follow=follow,
              keep_last=config["swa_epochs"] > 0)


def pipelines(config, images, labels, train_idx, val_idx, batch_size, seed):
    """Each phase's training pipeline (corrupt_p holds each phase's share of corrupted images), the
    validation pipeline, and the tf.Variable of phase 2's clean share (phase 1 keeps its first)."""
    clean_share = tf.Variable(clean_share_at(config, 0), trainable=False)
    sets = {f"phase {phase + 1}": training_set(config, images[train_idx], labels[train_idx], batch_size, seed, phase,
                                               clean_share) for phase in (0, 1)}
    # Both are traced now: TensorFlow reads a function's source from its file when it first traces
    # it, and phase 2's corruptions, traced later, would read lines an edit had moved.
    return {**sets, "validation": make_dataset(images[val_idx], labels[val_idx], batch_size)}, clean_share


def training_set(config, images, labels, batch_size, seed, phase, clean_share=None):
    """Phase 1's (phase 0) or phase 2's training pipeline: the augmentation, then the batches' mixing."""
    augment = make_augment(config, seed, config["corrupt_p"][phase], clean_share, appearance=phase == 1)
    return make_dataset(images, labels, batch_size, augment, seed, MIXES[config.get("mix", "none")])


def class_weights(labels, balanced=True):
    """The loss' weight of each class (the focal loss' alpha): inverse class frequency, 1.0 on
    average for balanced data; all 1.0 (every image counts the same) when not balanced."""
    if not balanced:
        return [1.0] * NUM_CLASSES
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    return (len(labels) / (NUM_CLASSES * np.maximum(counts, 1))).tolist()


# ---------------------------------------------------------------------------------------------
# the network and its optimizer

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


def refresh_batchnorm(network, batches):
    """BatchNorm's moving statistics recomputed for the averaged weights, as the plain mean over one pass
    of batches (SWA's bn_update): those kept in training belong to the weights of each step. Frozen
    BatchNorm layers (a pretrained backbone's) keep theirs."""
    layers = [layer for layer in (*network.layers, *backbone_of(network).layers)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    momenta = [layer.momentum for layer in layers]
    for k, (x, _) in enumerate(batches):
        for layer in layers:
            layer.momentum = k / (k + 1)  # the first batch's statistics replace the old ones; then a running mean
        network(x, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def unfreeze_top(network, n):
    """Make the pretrained backbone's top n layers trainable, BatchNormalization layers excepted.

    Frozen BatchNorm layers run in inference mode in Keras 3, so pretrained statistics stay those
    learnt on the big data set instead of being dragged around by small batches.
    """
    backbone = backbone_of(network)
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= len(backbone.layers) - n and not isinstance(layer, keras.layers.BatchNormalization)


def compile_network(network, learning_rate, config, weights, average_from=None):
    # ema_momentum above 0: AdamW also keeps an exponential moving average of the weights, which
    # validation sees and each phase ends with (run_phase); swa_epochs: the plain mean from step average_from
    if average_from is not None:
        optimizer = AveragingAdamW(average_from, learning_rate=learning_rate, weight_decay=config["weight_decay"])
    else:
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


class AveragingAdamW(keras.optimizers.AdamW):
    """AdamW whose average (use_ema's, swapped in by run_phase) is the plain mean of the weights after
    every step from step average_from on, and the weights themselves before it: stochastic weight
    averaging (Izmailov et al. 2018), over every step rather than once an epoch, as SWAD (Cha et al.
    2021) found better for unseen domains."""

    def __init__(self, average_from, **kwargs):
        super().__init__(use_ema=True, **kwargs)
        self.average_from = average_from

    def _update_model_variables_moving_average(self, trainable_variables):
        averaged = keras.ops.cast(self.iterations - self.average_from, "float32")  # steps in the mean before this one
        momentum = keras.ops.maximum(averaged, 0.0) / keras.ops.maximum(averaged + 1.0, 1.0)
        for weight, average in zip(trainable_variables, self._model_variables_moving_average):
            average.assign(momentum * average + (1.0 - momentum) * weight)


def warm_cosine(peak, epochs, steps_per_epoch, hold=0, floor=0.0):
    """An epoch of linear warm-up from peak / 100 (a fresh AdamW's first steps are its largest),
    then one cosine decay to zero by the end of the last epoch; or, with hold epochs, to floor * peak
    by the end of epoch epochs - hold, held there to the end."""
    return keras.optimizers.schedules.CosineDecay(
        peak / 100, decay_steps=max(epochs - hold - 1, 1) * steps_per_epoch, alpha=floor if hold else 0.0,
        warmup_target=peak, warmup_steps=steps_per_epoch)


def finetune_schedule(config, steps_per_epoch):
    """Phase 2's learning rate on a pretrained backbone: cosine decay with restarts every
    restart_epochs, or, when that is None or the weights are averaged, one warm_cosine over the phase."""
    if config["restart_epochs"] and not config["swa_epochs"]:
        return keras.optimizers.schedules.CosineDecayRestarts(
            config["phase2_learning_rate"], first_decay_steps=config["restart_epochs"] * steps_per_epoch)
    return warm_cosine(config["phase2_learning_rate"], config["phase2_epochs"], steps_per_epoch, config["swa_epochs"],
                       config["swa_rate"])


def from_scratch_schedule(config, steps_per_epoch):
    """A random start's learning rate: one warm_cosine from learning_rate over both phases, which share
    one AdamW, so that phase 2 goes on down the same curve instead of starting again at the top."""
    return warm_cosine(config["learning_rate"], config["phase1_epochs"] + config["phase2_epochs"], steps_per_epoch,
                       config["swa_epochs"], config["swa_rate"])


def plan(config, steps_per_epoch):
    """What a pretrained backbone and a random start do differently, decided here once. Pretrained:
    phase 1 trains the head on the frozen backbone at learning_rate, cut on plateaus; phase 2 its top
    `unfreeze` layers with a new AdamW. Random: nothing to protect, so the whole network trains from
    the first step on one AdamW and one learning-rate curve; phase 2 only adds the corruptions.
    With swa_epochs, each phase's AdamW counts the step from which its average begins (None: no average)."""
    swa = config["swa_epochs"]
    if config["backbone_weights"] == "none":
        curve = from_scratch_schedule(config, steps_per_epoch)
        average_from = (config["phase1_epochs"] + config["phase2_epochs"] - swa) * steps_per_epoch if swa else None
        return dict(pretrained=False, phase1_rate=curve, phase2_rate=curve, plateau=None,
                    phase1_average_from=average_from, phase2_average_from=average_from)
    return dict(pretrained=True, phase1_rate=config["learning_rate"], phase2_rate=finetune_schedule(config, steps_per_epoch),
                phase1_average_from=None, phase2_average_from=(config["phase2_epochs"] - swa) * steps_per_epoch if swa else None,
                plateau=keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=config["plateau_patience"]))


# ---------------------------------------------------------------------------------------------
# the outputs

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


def kept_epoch(rows, keep_last=False):
    """The index in rows of the epoch whose weights the run ends with, or None for no epochs: the best
    validation loss of the last phase that trained (early stopping's: the first of equals, never NaN),
    or with keep_last (a weight average's run) its last epoch."""
    last = [i for i, row in enumerate(rows) if row["phase"] == rows[-1]["phase"]] if rows else []
    if keep_last and last:
        return last[-1]
    scored = [i for i in last if math.isfinite(float(rows[i].get("val_loss", "nan")))]
    return min(scored, key=lambda i: float(rows[i]["val_loss"])) if scored else (last[-1] if last else None)


def save_history(rows, out, resumed_at=(), keep_last=False):
    """history.csv (one row per epoch, both phases) and history.png (the curves, the epoch the run kept
    (kept_epoch's), and where it was resumed: after resumed_at's numbers of epochs)."""
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
    kept = kept_epoch(rows, keep_last)
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


def last_words(rows, out, command):
    """What a finished run ends with: the commands that follow, and for a bundle not worth uploading,
    a warning that says why and what to train instead."""
    record = run_record(out)
    kept = kept_epoch(rows, keep_last=record.get("config", {}).get("swa_epochs", 0) > 0)
    accuracy = rows[kept].get("val_accuracy") if kept is not None else None
    reason = not_worth_uploading({out: record}, accuracy, images="validation")
    if reason is None:
        return [f"next: {command.then('submission')} (the bundle to upload), then {command.then('evaluate')} "
                "(accuracy on the held-out images, clean and corrupted)"]
    return [f"next: {command.then('submission')} packs it and {command.then('evaluate')} scores it, but:",
            warning(reason, command.train(keep_flags=False, PRESET="cpu", OVERWRITE=1),
                    command.train(keep_flags=False, PRESET="seed", OVERWRITE=1))]


def main():
    args, config = parse_args(description=__doc__)
    changed = {key: value for key, value in config.items() if value != PRESETS[args.preset].get(key)}
    log(f"preset {args.preset}" + "".join(f"\n  {key}: {value}" for key, value in changed.items()))
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


if __name__ == "__main__":
    main()
