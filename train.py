"""Train the blood-cell classifier and write the weights that model.py loads.

    python train.py --data data/training_set.npz --preset seed     # or: make train

The `seed` preset is the recipe of our 11th-place entry (0.95 on the modified test set):
an EfficientNetV2L from ImageNet, focal loss weighted against class imbalance, AdamW, and
keras-cv RandAugment (three ops per image) in the input pipeline. Phase 1 trains the head on
the frozen backbone; phase 2 unfreezes the backbone's top layers, BatchNorm kept frozen.
From random weights (`--backbone-weights none`, the `tiny` and `cpu` presets) nothing is frozen:
both phases train the whole network on one learning-rate curve; phase 2 adds the corruptions
of `corrupt_p`, where the preset has any. `head_input_size` (progressive resizing) lets phase 1
see smaller images for cheaper epochs; the bundle is always phase 2's network.
Outputs in --out (default weights/): weights.npz, split.json (the held-out images, for
evaluation), history.csv and history.png.
"""
import argparse
import csv
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the log
import data  # first: it imports TensorFlow without the CUDA plugins' noise
import tensorflow as tf
import keras

from augment import MIXES, clean_share_at, follow_clean_share, make_augment, make_dataset
from checkpoint import Checkpoint, log, run_phase
from outliers import find_outliers
from model import BACKBONES, NUM_CLASSES, build_network, load_network, save_network

# Configuration as plain data. Command-line flags override single entries.
PRESETS = {
    # the full recipe; needs a GPU and the ImageNet weights (about 470 MB download)
    "seed": dict(
        backbone="EfficientNetV2L", width=1.0, backbone_weights="imagenet", input_size=96, head_input_size=None, dropout=0.3,
        max_images=None, holdout=0.1, validation=0.1,
        batch_size=32, augment_ops=3, augment_magnitude=0.5, corrupt_p=(0.0, 0.0), clean_share=0.0,
        focal_gamma=2.0, balance_classes=True, label_smoothing=0.0, weight_decay=1e-4, ema_momentum=0.0, mix="none",
        epochs_head=20, lr_head=1e-4, plateau_patience=2,                   # phase 1: backbone frozen
        epochs_finetune=30, lr_finetune=1e-5, restart_epochs=5, unfreeze=150,  # phase 2: top layers
        patience=5,
    ),
    # a smoke run of about two minutes on 2 CPU cores: MobileNetV3Small (the cpu preset's network
    # before cpu35) from random weights (no download), trained whole in both phases, at 64 px, on a few
    # hundred images
    "tiny": dict(
        backbone="MobileNetV3Small", width=1.0, backbone_weights="none", input_size=64, head_input_size=None, dropout=0.2,
        max_images=400, holdout=0.1, validation=0.1,
        batch_size=16, augment_ops=3, augment_magnitude=0.5, corrupt_p=(0.0, 0.0), clean_share=0.0,
        focal_gamma=2.0, balance_classes=True, label_smoothing=0.0, weight_decay=1e-4, ema_momentum=0.0, mix="none",
        epochs_head=8, lr_head=2e-3, plateau_patience=2,
        epochs_finetune=8, lr_finetune=1e-3, restart_epochs=2, unfreeze=1000,
        patience=5,
    ),
    # from scratch on 2 CPU cores in under an hour (issue 6; every run and figure behind these
    # choices is in BENCHMARKS.md). No ImageNet weights, so nothing is frozen: the whole network
    # trains from the first step on one warm-up and cosine decay over both phases
    # (from_scratch_schedule). Phase 1 learns the cells on RandAugment alone, at 64 px for cheap
    # epochs (head_input_size): a random network does not start learning under the corruptions.
    # Phase 2, at the images' own 96 px, adds the test-set-like corruptions on every image
    # (clean_share 0.5 bought 2 points clean for 2 on the mixed set, and robustness decides the
    # modified test set). A small network, because these CPUs are bound by memory speed:
    # MobileNetV3Small trained four times as fast as EfficientNetV2B0, and three times the epochs
    # gained more than B0's capacity (wider, at 128 px or given more epochs it scored no higher).
    # ResNet10, our dense ResNet-10 (model.py), scored level with MobileNetV3Small at its 18 + 36
    # epochs, but trains 1.8 times as fast on an Intel CPU with AVX-512, and there more epochs
    # kept gaining: 27 + 54 (36 minutes) gained 2 points on the mixed set, 36 + 72 (44 minutes,
    # the median of three runs) about 0.5 clean and 1 mixed more. On AMD CPUs without AVX-512
    # it trains at MobileNetV3Small's pace, so these epochs would take about 105 minutes
    # (estimated): there `benchmark.py train-speed` says how many the hour holds (README, "For
    # your own runs").
    # The network underfits, so what let it fit more gained: cross-entropy instead of the focal
    # loss (focal_gamma 0: +0.9 to 1.4 points mixed, two seeds) and a peak rate of 3e-3 (+0.9 to 1.4
    # clean and +2.5 mixed over 1e-3); 4e-3 scored level. Label smoothing stays at 0.1 (none lost
    # 1 to 2 points, 0.2 scored level); AdamW's weight decay of 0.05 on the kernels scored level
    # with 1e-4 or a little higher.
    # lr_finetune, restart_epochs, unfreeze and plateau_patience apply only to pretrained weights.
    "cpu": dict(
        backbone="ResNet10", width=1.0, backbone_weights="none", input_size=96, head_input_size=64, dropout=0.2,
        max_images=None, holdout=0.1, validation=0.1,
        batch_size=64, augment_ops=2, augment_magnitude=0.3, corrupt_p=(0.0, 0.2), clean_share=0.0,
        focal_gamma=0.0, balance_classes=True, label_smoothing=0.1, weight_decay=0.05, ema_momentum=0.0, mix="none",
        epochs_head=36, lr_head=3e-3, plateau_patience=4,
        epochs_finetune=72, lr_finetune=1e-3, restart_epochs=None, unfreeze=1000,
        patience=8,
    ),
}
ARCHITECTURE_KEYS = ("backbone", "width", "input_size", "dropout")  # what model.py needs to rebuild the network


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


def focal_alpha(labels, balanced=True):
    """Per-class focal-loss alpha: inverse class frequency, 1.0 on average for balanced data; all
    1.0 (every image counts the same) when not balanced."""
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


def input_sizes(config):
    """Pixels the network sees in phase 1 and in phase 2: phase 1 may see fewer (progressive resizing),
    with the same weights (runs checkpointed before head_input_size existed have none)."""
    return config.get("head_input_size") or config["input_size"], config["input_size"]


def backbone_of(network):
    return next(layer for layer in network.layers if isinstance(layer, keras.Model))


def create_network(config):
    """The network of model.py with the backbone's starting weights: imagenet, none, or a local file."""
    weights = config["backbone_weights"]
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        sys.exit(f"--backbone-weights {weights}: no such file. Use imagenet, none, or the path of a "
                 f"local .h5 file of {config['backbone']} without its top (include_top=False)")
    if weights != "none" and BACKBONES[config["backbone"]] is None:
        sys.exit(f"--backbone {config['backbone']} has no pretrained weights: train it from scratch with "
                 "--backbone-weights none")
    if weights == "imagenet" and config["width"] not in (0.75, 1.0):
        sys.exit(f"--width {config['width']}: Keras has ImageNet weights for widths 0.75 and 1.0 only. "
                 "Train this width from scratch with --backbone-weights none")
    try:
        network = build_network(**{k: config[k] for k in ARCHITECTURE_KEYS},
                                backbone_weights=None if weights == "none" else weights)
    except ValueError:
        raise  # a network that cannot be built (say, a width its backbone lacks), not a failed download
    except Exception as e:
        if weights != "imagenet":
            raise
        sys.exit(f"could not download the ImageNet weights of {config['backbone']} ({e}).\n"
                 "Offline, train from scratch with --backbone-weights none (make train ARGS=\"--backbone-weights none\") "
                 "or pass a local file: --backbone-weights path/to/weights_notop.h5")
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


def compile_network(network, learning_rate, config, alpha):
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
        loss=keras.losses.CategoricalFocalCrossentropy(alpha=alpha, gamma=config["focal_gamma"],
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
            config["lr_finetune"], first_decay_steps=config["restart_epochs"] * steps_per_epoch)
    return warm_cosine(config["lr_finetune"], config["epochs_finetune"], steps_per_epoch)


def from_scratch_schedule(config, steps_per_epoch):
    """A random start's learning rate: one warm_cosine from lr_head over both phases, which share
    one AdamW, so that phase 2 goes on down the same curve instead of starting again at the top."""
    return warm_cosine(config["lr_head"], config["epochs_head"] + config["epochs_finetune"], steps_per_epoch)


def train(config, data_path, out, seed=0, keep_outliers=False, strategy=None, resume=False, overwrite=False,
          split_seed=0):
    """The whole recipe, from the data file to out/weights.npz. Returns the history rows.

    seed fixes the initial weights and the augmentation, split_seed which images are held out: runs
    of several seeds on one split_seed make an ensemble that evaluate.py can score honestly.

    Every epoch is checkpointed in out/checkpoint; resume=True continues a killed run from its
    last complete epoch, in its phase, with its split and config.
    """
    out = Path(out)
    checkpoint = Checkpoint(out / "checkpoint")
    state = checkpoint.load()
    if resume and state is None:
        sys.exit(f"nothing to resume: {checkpoint.folder} holds no checkpoint. Start the run without RESUME=1 / --resume")
    if state is not None and not resume and not overwrite:
        sys.exit(f"{checkpoint.folder} holds an interrupted run (phase {state['phase']}, epoch {state['epoch']}). "
                 "Continue it with make train RESUME=1 (--resume), or start afresh with --overwrite")
    images, labels = data.load_training_set(data_path)
    if resume:
        if state["split"]["fingerprint"] != data.fingerprint(images, labels):
            sys.exit(f"the checkpoint in {checkpoint.folder} was made from other data than {data_path}")
        predates = {key: value for key, value in config.items() if key not in state["config"]}
        if predates:  # a checkpoint of an older train.py: settings added since come from the preset given now
            log(f"the checkpoint predates {', '.join(predates)}: from the preset and flags given now")
        config = state["config"] = {**predates, **state["config"]}
        seed = state["seed"]
        log(f"resuming from phase {state['phase']} epoch {state['epoch']}")
    else:
        shutil.rmtree(checkpoint.folder, ignore_errors=True)
        train_idx, val_idx, holdout_idx, removed = split_data(images, labels, config, split_seed, keep_outliers)
        split = {"fingerprint": data.fingerprint(images, labels), "data": str(data_path), "split_seed": split_seed,
                 "holdout": holdout_idx.tolist(), "validation": val_idx.tolist(), "train": train_idx.tolist(),
                 "removed": removed}
        state = {"config": config, "seed": seed, "split": split, "phase": "head", "epoch": 0,
                 "history": [], "callbacks": {}}
    checkpoint.state = state
    train_idx, val_idx = (np.array(state["split"][k], dtype=np.int64) for k in ("train", "validation"))
    log(f"{len(train_idx)} training, {len(val_idx)} validation and {len(state['split']['holdout'])} held-out images")
    keras.utils.set_random_seed(seed + len(state["history"]))  # a resumed run draws new augmentations

    strategy = strategy or choose_strategy()
    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    clean_share = tf.Variable(clean_share_at(config, 0), trainable=False)  # phase 1 keeps the first
    def train_ds(phase):  # corrupt_p holds each phase's share of corrupted images
        augment = make_augment(config, seed, config["corrupt_p"][phase], clean_share)
        return make_dataset(images[train_idx], labels[train_idx], batch_size, augment, seed, MIXES[config.get("mix", "none")])
    # Both phases' pipelines are traced now: TensorFlow reads a function's source from its file when
    # it first traces it, and phase 2's corruptions, traced later, would read lines an edit had moved.
    train_sets = [train_ds(0) if state["phase"] == "head" else None, train_ds(1)]
    val_ds = make_dataset(images[val_idx], labels[val_idx], batch_size)
    alpha = focal_alpha(labels[train_idx], config["balance_classes"])
    steps_per_epoch = int(np.ceil(len(train_idx) / batch_size))
    pretrained = config["backbone_weights"] != "none"
    # a pretrained backbone: phase 1 trains the head on it, frozen, at lr_head cut on plateaus, and
    # phase 2 its top layers with a new AdamW. A random one has nothing to protect and trains whole
    # from the first step, on one AdamW and one learning-rate curve: phase 2 only adds the corruptions
    schedule = finetune_schedule(config, steps_per_epoch) if pretrained else from_scratch_schedule(config, steps_per_epoch)
    head_size, finetune_size = input_sizes(config)
    def network_for(phase):
        with strategy.scope():
            return create_network({**config, "input_size": head_size if phase == "head" else finetune_size})
    network = network_for(state["phase"])

    if state["phase"] == "head":
        with strategy.scope():
            if pretrained:
                backbone_of(network).trainable = False
            compile_network(network, config["lr_head"] if pretrained else schedule, config, alpha)
            if state["epoch"] > 0:
                checkpoint.restore(network)  # in the scope: AdamW's variables are built here
        plateau = None
        if pretrained:
            plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=config["plateau_patience"])
        run_phase(network, config["epochs_head"], train_sets[0], val_ds, checkpoint, config, plateau)
        state.update(phase="finetune", epoch=0, callbacks={}, stopped=False)
        checkpoint.watched = {}
        checkpoint.save(network, with_optimizer=not pretrained)  # phase 2 starts from here
        if head_size != finetune_size:
            network = network_for("finetune")  # its weights come from the checkpoint just saved

    with strategy.scope():
        if pretrained:
            unfreeze_top(network, config["unfreeze"])
        compile_network(network, schedule, config, alpha)
        checkpoint.restore(network)  # from scratch, AdamW's state too: its step count carries the curve on
    run_phase(network, config["epochs_finetune"], train_sets[1], val_ds, checkpoint, config,
              follow=[follow_clean_share(config, clean_share)])

    # the finished run: weights, split and history renamed into place, then the checkpoint goes
    out.mkdir(parents=True, exist_ok=True)
    save_weights(network, config, out / "weights.npz", images[val_idx])
    data.write_json(out / "split.json", {**state["split"], "config": config})
    save_history(state["history"], out)
    shutil.rmtree(checkpoint.folder)
    return state["history"]


def save_weights(network, config, path, check_images):
    """Store float16 weights when they give the same labels as float32 on check_images, else float32."""
    architecture = {k: config[k] for k in ARCHITECTURE_KEYS}
    candidate = path.with_name("float16-candidate.npz")
    save_network(network, architecture, candidate, float16=True)
    x = check_images.astype(np.float32)
    same = np.array_equal(network.predict(x, verbose=0).argmax(1),
                          load_network(candidate)[0].predict(x, verbose=0).argmax(1))
    if same:
        os.replace(candidate, path)
    else:
        candidate.unlink()
        save_network(network, architecture, path)
    log(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB, "
        f"{'float16: same labels as float32' if same else 'float32: float16 changed some labels'} "
        f"on {len(x)} validation images)")


def save_history(rows, out):
    """history.csv (one row per epoch, both phases) and history.png (the curves)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    data.write_atomically(out / "history.csv", lambda f: f.write(text.getvalue().encode()))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    step = np.arange(1, len(rows) + 1)
    head_epochs = sum(r["phase"] == "head" for r in rows)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            ax.plot(step, [r.get(prefix + metric, np.nan) for r in rows], style, label=prefix + metric)
        if 0 < head_epochs < len(rows):
            ax.axvline(head_epochs + 0.5, color="grey", lw=0.8)
            ax.text(head_epochs + 0.6, ax.get_ylim()[1], " fine-tuning", va="top", color="grey")
        ax.set_xlabel("epoch (both phases)")
        ax.set_title(metric)
        ax.legend(loc="center left")
    fig.tight_layout()
    data.save_figure(fig, out / "history.png")


def preset_values(key):
    """Each preset's value of a setting, for error messages: "presets: seed 0.0, tiny 0.0, cpu 0.1"."""
    return "presets: " + ", ".join(f"{name} {preset[key]}" for name, preset in PRESETS.items())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/training_set.npz", help="the challenge's training_set.npz")
    p.add_argument("--preset", default="seed", choices=PRESETS)
    p.add_argument("--backbone", choices=BACKBONES, help="a keras.applications network, or our ResNet10 (default: the preset's)")
    p.add_argument("--width", type=float, help="the MobileNets' channel multiplier, Keras' alpha (default: the preset's)")
    p.add_argument("--input-size", type=int, help="pixels the network sees, resized from 96 (default: the preset's)")
    p.add_argument("--head-input-size", type=int,
                   help="pixels the network sees in phase 1 only, for cheaper epochs (progressive resizing; default: the "
                        "preset's: 64 for cpu, --input-size for the others)")
    p.add_argument("--backbone-weights", help="imagenet (download), none (random start), or a local .h5 file")
    p.add_argument("--unfreeze", type=int, help="backbone layers trained in phase 2, counted from the top")
    p.add_argument("--epochs-head", type=int, help="phase 1 epochs (backbone frozen)")
    p.add_argument("--epochs-finetune", type=int, help="phase 2 epochs (top layers unfrozen)")
    p.add_argument("--batch-size", type=int, help="images per step on each device")
    p.add_argument("--lr-head", type=float, help="phase 1's learning rate; from random weights, the peak of the one "
                                                 "curve over both phases (default: the preset's)")
    p.add_argument("--focal-gamma", type=float, help="the focal loss' gamma; 0 gives cross-entropy, weighted by class "
                                                      "as the focal loss is (default: the preset's)")
    p.add_argument("--balance-classes", action=argparse.BooleanOptionalAction,
                   help="weigh each class' images by its inverse frequency in the loss (default: the preset's: on)")
    p.add_argument("--label-smoothing", type=float, help="share of each label's weight spread over the other "
                                                         "classes, from 0 to below 1 (default: the preset's)")
    p.add_argument("--weight-decay", type=float, help="AdamW's decoupled weight decay of the kernels (default: the preset's)")
    p.add_argument("--ema-momentum", type=float, help="keep a moving average of the weights with this momentum, and "
                                                      "validate and keep it; 0: none (default: the preset's)")
    p.add_argument("--mix", choices=MIXES, help="mix each training batch's images and labels in pairs: "
                                                "MixUp or CutMix (default: the preset's: none)")
    p.add_argument("--corrupt-p", type=float, help="phase 2: each corruption's share of the images (default: the preset's)")
    p.add_argument("--clean-share", type=float, nargs="+", metavar="SHARE",
                   help="share of the images spared the corruptions; two values: phase 2's first and last epoch's, "
                        "a straight line between (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="fixes the initial weights and the augmentation")
    p.add_argument("--split-seed", type=int, default=0, help="fixes the cleaning sample and the held-out images")
    p.add_argument("--out", default="weights", help="folder for weights.npz, split.json and the history")
    p.add_argument("--keep-outliers", action="store_true", help="train on every image, outliers included")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run checkpointed in --out")
    p.add_argument("--overwrite", action="store_true", help="discard an interrupted run's checkpoint in --out")
    args = p.parse_args(argv)
    for flag, size in (("--input-size", args.input_size), ("--head-input-size", args.head_input_size)):
        if size is not None and size < 32:
            p.error(f"{flag} {size}: the backbones take at least 32 pixels (the images are 96)")
    if args.width is not None and args.width <= 0:
        p.error(f"--width {args.width}: a multiplier of the channels, above 0 (1.0: the network as published)")
    if args.clean_share is not None and len(args.clean_share) > 2:
        p.error(f"--clean-share {' '.join(map(str, args.clean_share))}: one share, or two (phase 2's first and last epoch's)")
    if args.lr_head is not None and args.lr_head <= 0:
        p.error(f"--lr-head {args.lr_head}: a learning rate, above 0 ({preset_values('lr_head')})")
    if args.focal_gamma is not None and args.focal_gamma < 0:
        p.error(f"--focal-gamma {args.focal_gamma}: 0 or more (0: cross-entropy; {preset_values('focal_gamma')})")
    if args.label_smoothing is not None and not 0 <= args.label_smoothing < 1:
        p.error(f"--label-smoothing {args.label_smoothing}: from 0 (hard labels) to below 1 "
                f"({preset_values('label_smoothing')})")
    if args.weight_decay is not None and args.weight_decay < 0:
        p.error(f"--weight-decay {args.weight_decay}: 0 (none) or more ({preset_values('weight_decay')})")
    if args.ema_momentum is not None and not 0 <= args.ema_momentum < 1:
        p.error(f"--ema-momentum {args.ema_momentum}: from 0 (no average) to below 1; 0.998 averages over about "
                f"500 steps ({preset_values('ema_momentum')})")
    for flag, shares in (("--corrupt-p", [args.corrupt_p]), ("--clean-share", args.clean_share or [])):
        for share in shares:
            if share is not None and not 0 <= share <= 1:
                p.error(f"{flag} {share}: a share of the images, from 0 to 1")
    config = dict(PRESETS[args.preset])
    for key in ("backbone", "width", "input_size", "head_input_size", "backbone_weights", "unfreeze", "epochs_head",
                "epochs_finetune", "batch_size", "lr_head", "focal_gamma", "balance_classes", "label_smoothing",
                "weight_decay", "ema_momentum", "mix"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.clean_share is not None:
        config["clean_share"] = args.clean_share[0] if len(args.clean_share) == 1 else tuple(args.clean_share)
    if args.corrupt_p is not None:
        config["corrupt_p"] = (config["corrupt_p"][0], args.corrupt_p)
    return args, config


if __name__ == "__main__":
    args, config = parse_args()
    log(f"preset {args.preset}: {config}")
    try:
        train(config, args.data, args.out, args.seed, args.keep_outliers, resume=args.resume, overwrite=args.overwrite,
              split_seed=args.split_seed)
    except data.DataError as e:
        sys.exit(f"error: {e}")
