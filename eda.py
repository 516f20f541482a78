"""Show the data: class counts before and after cleaning, brightness and colour per class, samples.

    python eda.py --data data/training_set.npz --out reports

writes four PNGs into reports/ (never commit them: they are made from the training images):
  eda_class_counts.png  images per class, before and after outliers.find_outliers() cleans the set
  eda_brightness.png    per class: brightness of pixels, and of whole images (mean of each image)
  eda_colour.png        per class: hue and saturation of the cell pixels (background excluded), cell area
  eda_samples.png       random images of each class (after cleaning)
Brightness, colour and samples describe the cleaned set: the outliers would drown the cells.
"""
import argparse
import os

import numpy as np
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import hsv_to_rgb  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # model.py, for the class names, imports TensorFlow
from data import DataError, load_or_exit, quiet_tensorflow, save_figure  # noqa: E402
quiet_tensorflow()
from model import CLASS_NAMES  # noqa: E402
from outliers import find_outliers  # noqa: E402

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 brightness from RGB
DARKER = 0.8  # a cell pixel is darker than this share of its image's background (the slide's bright, pale light)
HUE_EDGES = np.arange(200, 561, 4)  # degrees, once round from blue, so the stain's hues (blue to orange) sit together
HUE_SHOWN = (200, 420)  # blue round to yellow (360 is red): the stain makes no greens or cyans
SATURATION_EDGES = np.linspace(0, 1, 51)
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
    """Per class: a 256-bin histogram of pixel brightness (n_classes, 256), and each image's mean brightness."""
    hist = np.zeros((num_classes, 256), np.int64)
    means = np.empty(len(images), np.float32)
    for start in range(0, len(images), chunk):
        x, y = images[start:start + chunk], labels[start:start + chunk]
        luma = np.rint(x @ LUMA).astype(np.int64)  # (n, 96, 96), in chunks to keep memory small
        means[start:start + chunk] = luma.mean((1, 2))
        for c in np.unique(y):
            hist[c] += np.bincount(luma[y == c].ravel(), minlength=256)
    return hist, means


def cell_colours(images, labels, num_classes, chunk=1024):
    """Per class: histograms of the hue (degrees, HUE_EDGES) and saturation (SATURATION_EDGES) of
    the cell pixels, and each image's share of cell pixels.

    The background is the light through the empty slide, the brightest part of every image: a
    pixel belongs to a cell (the white cell, red cells or platelets) when its value (HSV: its
    largest channel) is below DARKER times its image's background value (the 90th percentile).
    """
    hue_bins, saturation_bins = len(HUE_EDGES) - 1, len(SATURATION_EDGES) - 1
    hue = np.zeros((num_classes, hue_bins), np.int64)
    saturation = np.zeros((num_classes, saturation_bins), np.int64)
    share = np.empty(len(images), np.float32)
    for start in range(0, len(images), chunk):
        # every fourth pixel: the same shares at a quarter of the work
        x = images[start:start + chunk, ::2, ::2]
        x = x.reshape(len(x), -1, 3).astype(np.float32)
        value = x.max(-1)
        k = int(0.9 * value.shape[1])
        cell = value < DARKER * np.partition(value, k, axis=1)[:, k:k + 1]
        share[start:start + chunk] = cell.mean(1)
        # HSV of the cell pixels only (matplotlib's rgb_to_hsv gives the same, three times slower)
        pixels, top = x[cell], value[cell]
        r, g, b = pixels.T
        spread = np.maximum(top - pixels.min(-1), 1e-6)
        degrees = 60 * np.select([top == r, top == g], [(g - b) / spread, (b - r) / spread + 2], (r - g) / spread + 4)
        degrees = (degrees - HUE_EDGES[0]) % 360 + HUE_EDGES[0]
        # one bincount over (class, bin) pairs per chunk, not a histogram per class
        y = np.broadcast_to(labels[start:start + chunk, None], cell.shape)[cell]
        where = np.minimum(np.digitize(degrees, HUE_EDGES) - 1, hue_bins - 1)
        hue += np.bincount(y * hue_bins + where, minlength=num_classes * hue_bins).reshape(num_classes, -1)
        where = np.minimum(np.digitize(spread / np.maximum(top, 1), SATURATION_EDGES) - 1, saturation_bins - 1)
        saturation += np.bincount(y * saturation_bins + where, minlength=num_classes * saturation_bins).reshape(num_classes, -1)
    return hue, saturation, share


def brightness(hist, means, labels, class_names):
    """Two panels: the share of pixels at each brightness, and the spread of image brightness, per class."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    levels = np.arange(256)
    for c, name in enumerate(class_names):
        left.plot(levels, hist[c] / max(hist[c].sum(), 1), color=COLOURS[c], lw=1.2, label=name)
        right.hist(means[labels == c], bins=np.linspace(0, 255, 86), density=True, histtype="step",
                   color=COLOURS[c], lw=1.2, label=name)
    left.set(title="Pixel brightness per class (after cleaning)", xlabel="brightness (0-255)",
             ylabel="share of pixels (log scale)", xlim=(0, 255), yscale="log", ylim=(1e-4, 0.2))  # log: the cells are a minority of pixels
    right.set(title="Image brightness per class (mean of each image)", xlabel="mean brightness (0-255)", ylabel="density", xlim=(0, 255))
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    return fig


def colour(hue, saturation, share, labels, class_names):
    """Three panels, a line per class: the hue and the saturation of the cell pixels, and how much
    of each image the cells cover. A strip under the hue axis shows each hue's colour."""
    fig = plt.figure(figsize=(17, 5))
    grid = fig.add_gridspec(2, 3, height_ratios=(14, 1), hspace=0.05)
    left, middle, right = (fig.add_subplot(grid[0, k]) for k in range(3))
    strip = fig.add_subplot(grid[1, 0], sharex=left)
    centres = (HUE_EDGES[:-1] + HUE_EDGES[1:]) / 2
    for c, name in enumerate(class_names):
        left.plot(centres, hue[c] / max(hue[c].sum(), 1), color=COLOURS[c], lw=1.2, label=name)
        middle.plot((SATURATION_EDGES[:-1] + SATURATION_EDGES[1:]) / 2, saturation[c] / max(saturation[c].sum(), 1),
                    color=COLOURS[c], lw=1.2, label=name)
        right.hist(100 * share[labels == c], bins=np.linspace(0, 100, 51), density=True, histtype="step",
                   color=COLOURS[c], lw=1.2, label=name)
    left.set(title="Hue of the cell pixels", ylabel=f"share of cell pixels (per {HUE_EDGES[1] - HUE_EDGES[0]} degrees)")
    left.tick_params(labelbottom=False)
    shown = (centres % 360) / 360
    strip.imshow(hsv_to_rgb(np.stack([shown, np.full_like(shown, 0.6), np.full_like(shown, 0.9)], -1))[None],
                 extent=(HUE_EDGES[0], HUE_EDGES[-1], 0, 1), aspect="auto")
    strip.set(xlim=HUE_SHOWN, yticks=[])  # after imshow, which would widen the shared axis to its extent
    ticks = range(210, 421, 30)
    strip.set_xticks(ticks, [f"{t % 360}" for t in ticks])
    strip.set_xlabel("hue (degrees: 240 blue, 280 purple, 330 pink, 0 red, 30 orange)")
    middle.set(title="Saturation of the cell pixels", xlabel="saturation (0 grey, 1 pure colour)",
               ylabel=f"share of cell pixels (per {SATURATION_EDGES[1]:.2f})", xlim=(0, 1))
    right.set(title="Share of each image covered by cells", xlabel="cell pixels (% of the image)", ylabel="density",
              xlim=(0, 100))
    for ax in (left, middle, right):
        ax.set_ylim(0, ax.get_ylim()[1] * 1.4)  # head room: the legend stays clear of the peaks
        ax.legend(fontsize=8, ncol=2)
    fig.suptitle(f"Colour of the cells per class (after cleaning; background excluded: pixels brighter than "
                 f"{DARKER:.0%} of their image's background)")
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
    hue, saturation, share = cell_colours(clean_images, clean_labels, len(CLASS_NAMES))
    save(colour(hue, saturation, share, clean_labels, CLASS_NAMES), os.path.join(args.out, "eda_colour.png"))
    save(samples(clean_images, clean_labels, CLASS_NAMES), os.path.join(args.out, "eda_samples.png"))


if __name__ == "__main__":
    main()
