"""Train the blood-cell classifier and write the weights that model.py loads.

    python train.py --data data/training_set.npz --preset seed     # or: make train

The `seed` preset is the recipe of our 11th-place entry (0.95 on the modified test set):
an EfficientNetV2L from ImageNet, focal loss weighted against class imbalance, AdamW, and
keras-cv RandAugment (three ops per image) in the input pipeline. Phase 1 trains the head on
the frozen backbone; phase 2 unfreezes the backbone's top layers, BatchNorm kept frozen.
Outputs in --out (default weights/): weights.npz, split.json (the held-out images, for
evaluation), history.csv and history.png.
"""
import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the log
import tensorflow as tf
import keras
import keras_cv

import data
from outliers import find_outliers
from model import BACKBONES, NUM_CLASSES, build_network, load_network, save_network

# Configuration as plain data. Command-line flags override single entries.
PRESETS = {
    # the full recipe; needs a GPU and the ImageNet weights (about 470 MB download)
    "seed": dict(
        backbone="EfficientNetV2L", backbone_weights="imagenet", input_size=96, dropout=0.3,
        max_images=None, holdout=0.1, validation=0.1,
        batch_size=32, augment_ops=3, augment_magnitude=0.5, focal_gamma=2.0, weight_decay=1e-4,
        epochs_head=20, lr_head=1e-4, plateau_patience=2,                   # phase 1: backbone frozen
        epochs_finetune=30, lr_finetune=1e-5, restart_epochs=5, unfreeze=150,  # phase 2: top layers
        patience=5,
    ),
    # a smoke run of a few minutes on 2 CPU cores: a small backbone from random weights (no
    # download), trained whole in both phases, at 64 px, on a few hundred images
    "tiny": dict(
        backbone="EfficientNetV2B0", backbone_weights="none", input_size=64, dropout=0.2,
        max_images=400, holdout=0.1, validation=0.1,
        batch_size=16, augment_ops=3, augment_magnitude=0.5, focal_gamma=2.0, weight_decay=1e-4,
        epochs_head=4, lr_head=2e-3, plateau_patience=2,
        epochs_finetune=4, lr_finetune=1e-3, restart_epochs=2, unfreeze=1000,
        patience=5,
    ),
}
ARCHITECTURE_KEYS = ("backbone", "input_size", "dropout")  # what model.py needs to rebuild the network


def log(message):
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_atomically(path, write):
    """Call write(tmp_path), then rename the finished file into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


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


def focal_alpha(labels):
    """Per-class focal-loss alpha: inverse class frequency, 1.0 on average for balanced data."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    return (len(labels) / (NUM_CLASSES * np.maximum(counts, 1))).tolist()


def make_dataset(images, labels, batch_size, augment=None, seed=0):
    """A tf.data pipeline of (float images in [0, 255], one-hot labels); augmented when training.

    RandAugment runs here, on batches, never inside the saved network: keras-cv layers break in
    graph mode there and would alter inference.
    """
    ds = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, NUM_CLASSES)))
    if augment is not None:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# network and training phases

def choose_strategy():
    """Several GPUs: MirroredStrategy; one device: the default strategy. Mixed precision on GPUs."""
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def backbone_of(network):
    return next(layer for layer in network.layers if isinstance(layer, keras.Model))


def create_network(config):
    """The network of model.py with the backbone's starting weights: imagenet, none, or a local file."""
    weights = config["backbone_weights"]
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        sys.exit(f"--backbone-weights {weights}: no such file. Use imagenet, none, or the path of a "
                 f"local .h5 file of {config['backbone']} without its top (include_top=False)")
    try:
        return build_network(**{k: config[k] for k in ARCHITECTURE_KEYS},
                             backbone_weights=None if weights == "none" else weights)
    except Exception as e:
        if weights != "imagenet":
            raise
        sys.exit(f"could not download the ImageNet weights of {config['backbone']} ({e}).\n"
                 "Offline, train from scratch with --backbone-weights none (make train ARGS=\"--backbone-weights none\") "
                 "or pass a local file: --backbone-weights path/to/weights_notop.h5")


def unfreeze_top(network, n, batchnorm=False):
    """Make the backbone's top n layers trainable, BatchNormalization layers excepted by default.

    Frozen BatchNorm layers run in inference mode in Keras 3, so pretrained statistics stay those
    learnt on the big data set instead of being dragged around by small batches. A backbone
    that starts from random weights has no statistics worth keeping: there batchnorm=True.
    """
    backbone = backbone_of(network)
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= len(backbone.layers) - n and (batchnorm or not is_batchnorm)


def compile_network(network, learning_rate, config, alpha):
    network.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config["weight_decay"]),
        loss=keras.losses.CategoricalFocalCrossentropy(alpha=alpha, gamma=config["focal_gamma"]),
        metrics=["accuracy"])


def run_phase(network, name, epochs, train_ds, val_ds, callbacks, config):
    if epochs <= 0:
        return []
    trainable = sum(int(np.prod(w.shape)) for w in network.trainable_weights)
    log(f"{name}: {epochs} epochs, {trainable:,} trainable parameters")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config["patience"], restore_best_weights=True)
    history = network.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=[stop, *callbacks],
                          verbose=1 if sys.stdout.isatty() else 2)  # bars on a terminal, a line per epoch in logs
    rows = []
    for epoch in range(len(history.epoch)):
        row = {"phase": name, "epoch": epoch + 1}
        row.update({k: float(v[epoch]) for k, v in history.history.items()})
        rows.append(row)
    return rows


def train(config, data_path, out, seed=0, keep_outliers=False, strategy=None):
    """The whole recipe, from the data file to out/weights.npz. Returns the history rows."""
    keras.utils.set_random_seed(seed)
    images, labels = data.load_training_set(data_path)
    train_idx, val_idx, holdout_idx, removed = split_data(images, labels, config, seed, keep_outliers)
    log(f"{len(train_idx)} training, {len(val_idx)} validation and {len(holdout_idx)} held-out images")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split = {"fingerprint": data.fingerprint(images, labels), "data": str(data_path), "seed": seed,
             "holdout": holdout_idx.tolist(), "validation": val_idx.tolist(), "train": train_idx.tolist(),
             "removed": removed, "config": config}
    write_atomically(out / "split.json", lambda p: p.write_text(json.dumps(split)))

    strategy = strategy or choose_strategy()
    batch_size = config["batch_size"] * strategy.num_replicas_in_sync
    augment = keras_cv.layers.RandAugment(value_range=(0, 255), augmentations_per_image=config["augment_ops"],
                                          magnitude=config["augment_magnitude"], seed=seed)
    train_ds = make_dataset(images[train_idx], labels[train_idx], batch_size, augment, seed)
    val_ds = make_dataset(images[val_idx], labels[val_idx], batch_size)
    alpha = focal_alpha(labels[train_idx])
    steps_per_epoch = int(np.ceil(len(train_idx) / batch_size))

    pretrained = config["backbone_weights"] != "none"
    with strategy.scope():
        network = create_network(config)
        if pretrained:
            backbone_of(network).trainable = False  # a random backbone has nothing to protect: it trains from the start
        compile_network(network, config["lr_head"], config, alpha)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=config["plateau_patience"])
    rows = run_phase(network, "head", config["epochs_head"], train_ds, val_ds, [plateau], config)

    with strategy.scope():
        unfreeze_top(network, config["unfreeze"], batchnorm=not pretrained)
        schedule = keras.optimizers.schedules.CosineDecayRestarts(
            config["lr_finetune"], first_decay_steps=config["restart_epochs"] * steps_per_epoch)
        compile_network(network, schedule, config, alpha)
    rows += run_phase(network, "finetune", config["epochs_finetune"], train_ds, val_ds, [], config)

    save_weights(network, config, out / "weights.npz", images[val_idx])
    save_history(rows, out)
    return rows


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
    columns = list(dict.fromkeys(k for row in rows for k in row))
    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    write_atomically(out / "history.csv", write_csv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    step = np.arange(1, len(rows) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            ax.plot(step, [r.get(prefix + metric, np.nan) for r in rows], style, label=prefix + metric)
        head_epochs = sum(r["phase"] == "head" for r in rows)
        if 0 < head_epochs < len(rows):
            ax.axvline(head_epochs + 0.5, color="grey", lw=0.8)
            ax.text(head_epochs + 0.6, ax.get_ylim()[1], " fine-tuning", va="top", color="grey")
        ax.set_xlabel("epoch (both phases)")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    write_atomically(out / "history.png", lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/training_set.npz", help="the challenge's training_set.npz")
    p.add_argument("--preset", default="seed", choices=PRESETS)
    p.add_argument("--backbone", choices=BACKBONES, help="a keras.applications network (default: the preset's)")
    p.add_argument("--backbone-weights", help="imagenet (download), none (random start), or a local .h5 file")
    p.add_argument("--unfreeze", type=int, help="backbone layers trained in phase 2, counted from the top")
    p.add_argument("--epochs-head", type=int, help="phase 1 epochs (backbone frozen)")
    p.add_argument("--epochs-finetune", type=int, help="phase 2 epochs (top layers unfrozen)")
    p.add_argument("--batch-size", type=int, help="images per step on each device")
    p.add_argument("--seed", type=int, default=0, help="fixes the split, the augmentation and the initialisation")
    p.add_argument("--out", default="weights", help="folder for weights.npz, split.json and the history")
    p.add_argument("--keep-outliers", action="store_true", help="train on every image, outliers included")
    args = p.parse_args(argv)
    config = dict(PRESETS[args.preset])
    for key in ("backbone", "backbone_weights", "unfreeze", "epochs_head", "epochs_finetune", "batch_size"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    return args, config


if __name__ == "__main__":
    args, config = parse_args()
    log(f"preset {args.preset}: {config}")
    try:
        train(config, args.data, args.out, args.seed, args.keep_outliers)
    except data.DataError as e:
        sys.exit(f"error: {e}")
