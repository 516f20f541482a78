"""Show the data: class counts before and after cleaning, brightness and colour per class, samples.

    python eda.py --data data/training_set.npz --out reports

writes four PNGs into reports/ (never commit them: they are made from the training images):
  eda_class_counts.png  images per class, before and after outliers.find_outliers() cleans the set
  eda_brightness.png    per class: brightness of pixels, and of whole images (mean of each image)
  eda_colour.png        per class: red, green and blue pixel histograms
  eda_samples.png       random images of each class (after cleaning)
Brightness, colour and samples describe the cleaned set: the outliers would drown the cells.
"""
import argparse
import os

import numpy as np
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # data.py imports model.py, which imports TensorFlow
from data import DataError, load_or_exit, save_figure  # noqa: E402
from model import CLASS_NAMES  # noqa: E402
from outliers import find_outliers  # noqa: E402

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 brightness from RGB
COLOURS = plt.get_cmap("tab10").colors  # one colour per class, the same in every figure


def save(fig, path):
    """Render a figure to PNG bytes and write them atomically."""
    save_figure(fig, path)
    print(f"wrote {path}")


def class_counts(labels, kept, class_names, counts):
    """Bar chart: images per class before and after cleaning, with what was dropped and why."""
    before = np.bincount(labels, minlength=len(class_names))
    after = np.bincount(labels[kept], minlength=len(class_names))
    x = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(11, 5))
    ax.bar(x - 0.2, before, 0.4, label=f"before cleaning ({before.sum():,})", color="#bbbbbb")
    ax.bar(x + 0.2, after, 0.4, label=f"after cleaning ({after.sum():,})", color="#3b75af")
    for i in x:
        ax.text(i - 0.2, before[i], f"{before[i]:,}", ha="center", va="bottom", fontsize=8)
        ax.text(i + 0.2, after[i], f"{after[i]:,}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{i} {n}" for i, n in enumerate(class_names)], rotation=20, ha="right")
    ax.set_ylabel("images")
    ax.set_title("Images per class")
    dropped = "\n".join(f"{n:,}  {r}" for r, n in sorted(counts.items(), key=lambda item: -item[1]))
    ax.text(0.99, 0.97, "dropped:\n" + dropped, transform=ax.transAxes, ha="right", va="top", fontsize=8,
            bbox=dict(facecolor="white", edgecolor="#cccccc"))
    ax.set_ylim(0, before.max() * 1.5)  # head room for the legend and the list of what was dropped
    ax.legend(loc="upper left")
    return fig


def pixel_histograms(images, labels, num_classes, chunk=1024):
    """Per class: 256-bin histograms of brightness and of R, G, B (n_classes, 4, 256), and each image's mean brightness."""
    hist = np.zeros((num_classes, 4, 256), np.int64)
    means = np.empty(len(images), np.float32)
    for start in range(0, len(images), chunk):
        x, y = images[start:start + chunk], labels[start:start + chunk]
        luma = np.rint(x @ LUMA).astype(np.int64)  # (n, 96, 96), in chunks to keep memory small
        means[start:start + chunk] = luma.mean((1, 2))
        for c in np.unique(y):
            hist[c, 0] += np.bincount(luma[y == c].ravel(), minlength=256)
            for ch in range(3):
                hist[c, 1 + ch] += np.bincount(x[y == c][..., ch].ravel(), minlength=256)
    return hist, means


def brightness(hist, means, labels, class_names):
    """Two panels: the share of pixels at each brightness, and the spread of image brightness, per class."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    levels = np.arange(256)
    for c, name in enumerate(class_names):
        left.plot(levels, hist[c, 0] / max(hist[c, 0].sum(), 1), color=COLOURS[c], lw=1.2, label=name)
        right.hist(means[labels == c], bins=np.linspace(0, 255, 86), density=True, histtype="step",
                   color=COLOURS[c], lw=1.2, label=name)
    left.set(title="Pixel brightness per class (after cleaning)", xlabel="brightness (0-255)",
             ylabel="share of pixels (log scale)", xlim=(0, 255), yscale="log", ylim=(1e-4, 0.2))  # log: the cells are a minority of pixels
    right.set(title="Image brightness per class (mean of each image)", xlabel="mean brightness (0-255)", ylabel="density", xlim=(0, 255))
    left.legend(fontsize=8)
    return fig


def colour(hist, class_names):
    """A grid of small panels, one per class: the red, green and blue pixel histograms."""
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), sharex=True, sharey=True)
    levels = np.arange(256)
    for c, (ax, name) in enumerate(zip(axes.ravel(), class_names)):
        for ch, col in enumerate(("#d62728", "#2ca02c", "#1f77b4")):
            ax.plot(levels, hist[c, 1 + ch] / max(hist[c, 1 + ch].sum(), 1), color=col, lw=1.1)
        ax.set_title(f"{c} {name}", fontsize=10)
        ax.set_xlim(0, 255)
    for ax in axes[1]:
        ax.set_xlabel("value (0-255)")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of pixels")
    fig.legend(["red", "green", "blue"], loc="upper right", ncol=3)
    fig.suptitle("Colour histograms per class (after cleaning; red often saturates at 255)")
    return fig


def samples(images, labels, class_names, per_class=10, seed=0):
    """Rows of random images, one row per class."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(class_names), per_class, figsize=(per_class * 1.0, len(class_names) * 1.05))
    for c, name in enumerate(class_names):
        members = np.nonzero(labels == c)[0]
        chosen = rng.choice(members, min(per_class, len(members)), replace=False) if len(members) else []
        for k, ax in enumerate(axes[c]):
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if k < len(chosen):
                ax.imshow(images[chosen[k]])
        axes[c, 0].set_ylabel(f"{c} {name}\n({len(members):,})", rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"Random images per class (after cleaning, seed {seed})")
    fig.subplots_adjust(top=0.95, wspace=0.05, hspace=0.05)
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/training_set.npz", help="challenge-style .npz file")
    parser.add_argument("--out", default="reports", help="folder for the PNGs")
    args = parser.parse_args()
    images, labels = load_or_exit(args.data)
    os.makedirs(args.out, exist_ok=True)

    try:
        result = find_outliers(images, labels)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    dropped = set(result["outliers"]) | set(result["duplicates"])
    kept = np.array([i for i in range(len(labels)) if i not in dropped], dtype=np.int64)
    print(f"{len(labels):,} images, {len(dropped):,} dropped by find_outliers, {len(kept):,} kept")
    save(class_counts(labels, kept, CLASS_NAMES, result["counts"]), os.path.join(args.out, "eda_class_counts.png"))

    clean_images, clean_labels = images[kept], labels[kept]
    hist, means = pixel_histograms(clean_images, clean_labels, len(CLASS_NAMES))
    save(brightness(hist, means, clean_labels, CLASS_NAMES), os.path.join(args.out, "eda_brightness.png"))
    save(colour(hist, CLASS_NAMES), os.path.join(args.out, "eda_colour.png"))
    save(samples(clean_images, clean_labels, CLASS_NAMES), os.path.join(args.out, "eda_samples.png"))


if __name__ == "__main__":
    main()
