"""Score a trained network on its held-out images, and preview how it copes with corrupted ones.

    python evaluate.py --data data/training_set.npz --weights weights --out reports [--seed 0] [--limit N]

The challenge's final test set was "modified" in ways never disclosed, and models that scored
0.97-0.99 locally fell to 0.2-0.7 there. So besides the clean score this runs the held-out images
through corruptions, each at three severities, in two groups. The families training never sees
(microscope, scanner and file damage: defocus, vignetting, stain shifts, debris, bubbles, ...)
stand in for the undisclosed modification: their mean is the headline robustness figure. The
families training's augmentation also uses measure the training distribution. Two "mixed" sets
give every image two or three corruptions at once: one from the original suite, one from the
unseen families only. Everything is deterministic given --seed, so two runs, or two networks,
compare.

Writes into --out (all atomically): evaluation.json, confusion_matrix.png, misclassified.png,
robustness_samples.png and robustness.png; prints a table. The held-out images come from the
split.json that train.py wrote beside the weights; evaluate refuses data that split wasn't made for.
"""
import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the table
import data
data.quiet_tensorflow()  # before model brings TensorFlow in

import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

import model
from corruptions import (CORRUPTIONS, MIXED_FROM, SEEN_NAMES, SEVERITIES, UNSEEN_BEFORE, UNSEEN_NAMES, corrupt,
                         mixed, mixed_recipes)

QUICK_LIMIT = 300  # images per corruption in --quick mode


def load_holdout(data_path, folders):
    """Return (images, labels, held-out indices, split dict) or raise data.DataError saying why.

    folders: a list of runs, one or several scored as one ensemble, which must all have held out
    the same images (the data file is read once).
    """
    images, labels = data.load_training_set(data_path)
    split = data.load_split(folders[0], images, labels, data_path)
    held = np.asarray(split["holdout"], dtype=np.int64)
    for folder in folders[1:]:
        if data.load_split(folder, images, labels, data_path)["holdout"] != split["holdout"]:
            raise data.SplitError(f"{folders[0]} and {folder} held out different images, so each member has trained "
                                  "on images the other is scored on. Train the members with the same --split-seed")
    return images[held], labels[held], held, split


# -----------------------------------------------------------------------------
# Scoring


def score(true, predicted):
    """Accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix (rows true, columns predicted)."""
    classes = list(range(model.NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(true, predicted, labels=classes, zero_division=0)
    cm = confusion_matrix(true, predicted, labels=classes)
    return {
        "accuracy": float(np.mean(true == predicted)),
        "macro_f1": float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                             "support": int(support[c])} for c, name in enumerate(model.CLASS_NAMES)},
        "confusion_matrix": cm.tolist(),
    }


def robustness(net, images, labels, clean_predicted, seed, severities=SEVERITIES, names=None):
    """Accuracy under each corruption at each severity; the means of the families training never
    sees (the headline) and of those it does; the mixed sets' accuracies."""
    names = list(names or CORRUPTIONS)
    result = {"images": len(images), "severities": list(severities), "seed": seed,
              "clean_accuracy": float(np.mean(clean_predicted == labels)), "corruptions": {}}
    for name in names:
        started, accs = time.time(), {}
        for s in severities:
            accs[str(s)] = float(np.mean(net.predict(corrupt(images, name, s, seed)) == labels))
        accs["mean"] = float(np.mean([accs[str(s)] for s in severities]))
        result["corruptions"][name] = accs
        print(f"  {name:<20} " + "  ".join(f"{accs[str(s)]:.3f}" for s in severities)
              + f"   ({time.time() - started:.0f} s)", flush=True)  # progress: the full suite takes a while
    for group, members in (("unseen", UNSEEN_NAMES), ("seen", SEEN_NAMES)):
        scored = [result["corruptions"][n]["mean"] for n in members if n in result["corruptions"]]
        result[f"{group}_families"] = [n for n in members if n in result["corruptions"]]
        result[f"{group}_mean"] = float(np.mean(scored)) if scored else None
    if all(n in result["corruptions"] for n in UNSEEN_BEFORE):
        result["unseen_before_mean"] = float(np.mean([result["corruptions"][n]["mean"] for n in UNSEEN_BEFORE]))
    result["mixed_accuracy"] = float(np.mean(net.predict(mixed(images, seed)) == labels))
    result["unseen_mixed_accuracy"] = float(np.mean(net.predict(mixed(images, seed, UNSEEN_NAMES)) == labels))
    return result


# -----------------------------------------------------------------------------
# Output: written atomically, so a reader sees the old file or the new one, never half of one


def plot_confusion(cm, accuracy, path):
    cm = np.asarray(cm)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # shade by share of the true class, so rare classes show
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=10,
                    color="white" if rates[i, j] > 0.55 else "black")
    ticks = range(len(model.CLASS_NAMES))
    ax.set_xticks(ticks, model.CLASS_NAMES, rotation=35, ha="right")
    ax.set_yticks(ticks, model.CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"held-out confusion matrix: {cm.sum()} images, accuracy {accuracy:.3f}\n"
                 "(counts; shading = share of the true class's images)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of row")
    data.save_figure(fig, path, dpi=100)


def plot_misclassified(images, true, predicted, confidence, held_out, path, max_images=42, columns=7):
    """The held-out mistakes, the most confident first: label noise and systematic confusions show up here."""
    order = np.argsort(-confidence)[:max_images]
    rows = max(1, -(-len(order) // columns))
    # panels wide enough for "true immature granulocyte", the longest line, with room between neighbours
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.8, rows * 2.2 + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        ax.imshow(images[i])
        ax.set_title(f"true {model.CLASS_NAMES[true[i]]}\npred {model.CLASS_NAMES[predicted[i]]}\n"
                     f"probability {confidence[i]:.2f}", fontsize=7.5)
    if len(order) == 0:
        axes[0, 0].text(0, 0.5, "no misclassified held-out images", fontsize=12)
    fig.suptitle(f"{len(true)} of {held_out} held-out images misclassified; the {len(order)} most confident mistakes "
                 "(pred: the predicted class)", fontsize=10)
    data.save_figure(fig, path, dpi=100)


def plot_samples(image, seed, severities, names, path):
    """One held-out image under every corruption at every severity, and three of each mixed set;
    the families training never sees are marked."""
    rows = [("clean", [("", image)])]
    for name in names:
        label = name + (" *" if name in UNSEEN_NAMES else "")
        rows.append((label, [(f"severity {s}", corrupt(image[None], name, s, seed)[0]) for s in severities]))
    for label, pool in (("mixed", MIXED_FROM), ("unseen mixed *", UNSEEN_NAMES)):
        many = mixed(np.repeat(image[None], len(severities), axis=0), seed, pool)
        recipes = mixed_recipes(len(severities), seed, pool)
        rows.append((label, [("\n".join(f"{n} {s}" for n, s, _ in r), m) for r, m in zip(recipes, many)]))
    # blocks of rows side by side, as many as make the picture wider than tall: it fits a screen
    columns, width, height = len(severities), 1.6, 1.7  # inches per tile
    blocks = next(b for b in range(1, len(rows) + 1) if b * columns * width >= -(-len(rows) // b) * height)
    per_block = -(-len(rows) // blocks)
    fig, axes = plt.subplots(per_block, blocks * columns, figsize=(blocks * columns * width, per_block * height + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, tiles) in enumerate(rows):
        block, row = divmod(r, per_block)
        for c, (title, tile) in enumerate(tiles):
            ax = axes[row, block * columns + c]
            ax.imshow(tile)
            ax.set_title(title, fontsize=6 if "\n" in title else 8)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, block * columns].set_ylabel(name, fontsize=8.5)
    fig.suptitle(f"robustness suite on one held-out image (seed {seed}); * a family training never sees", fontsize=11)
    data.save_figure(fig, path, dpi=100)


def plot_robustness(result, path):
    """Grouped bars, one group per corruption (the unseen families first, worst mean first), the
    headline means and mixed sets on top, and a line at the clean accuracy."""
    severities = result["severities"]
    def by_mean(group):
        return sorted(result[f"{group}_families"], key=lambda n: result["corruptions"][n]["mean"])
    names = by_mean("unseen") + by_mean("seen")
    summary = [(f"unseen mean ({len(result['unseen_families'])} families)", result["unseen_mean"], "crimson"),
               ("unseen mixed (2-3 each)", result["unseen_mixed_accuracy"], "salmon"),
               (f"seen mean ({len(result['seen_families'])} families)", result["seen_mean"], "grey"),
               ("mixed (2-3 of the suite)", result["mixed_accuracy"], "darkorange")]
    summary = [s for s in summary if s[1] is not None]
    height = 0.8 / len(severities)
    colours = plt.cm.Blues(np.linspace(0.35, 0.9, len(severities)))
    rows = len(names) + len(summary)
    fig, ax = plt.subplots(figsize=(9, 0.36 * rows + 1.6), layout="constrained")
    ys = np.arange(len(summary), rows)
    for k, s in enumerate(severities):
        ax.barh(ys + (k - (len(severities) - 1) / 2) * height, [result["corruptions"][n][str(s)] for n in names],
                height, color=colours[k], label=f"severity {s}")
    for y, n in zip(ys, names):
        ax.text(1.01, y, f"mean {result['corruptions'][n]['mean']:.3f}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=8, color="dimgrey")  # right of the axes, clear of the bars
    for y, (label, value, colour) in enumerate(summary):
        ax.barh([y], [value], 0.6, color=colour)
        ax.text(value + 0.01, y, f"{value:.3f}", va="center", fontsize=8)
    ax.axvline(result["clean_accuracy"], color="crimson", linestyle="--", label=f"clean {result['clean_accuracy']:.3f}")
    ax.axvline(1 / model.NUM_CLASSES, color="black", linestyle=":", linewidth=1, label="1/8 (uniform guess)")
    ax.set_yticks(range(rows), [s[0] for s in summary] + [n + (" *" if n in UNSEEN_NAMES else "") for n in names])
    ax.set_ylim(rows - 0.5, -0.5)  # top to bottom
    ax.axhline(len(summary) - 0.5, color="black", linewidth=0.5)
    if result["unseen_families"] and result["seen_families"]:
        ax.axhline(len(summary) + len(result["unseen_families"]) - 0.5, color="black", linewidth=0.5, linestyle=":")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("accuracy on corrupted held-out images")
    ax.set_title(f"robustness: {result['images']} held-out images per corruption, seed {result['seed']}; "
                 "* a family training never sees")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    data.save_figure(fig, path, dpi=100)


def format_table(report):
    """The scores as plain text for the terminal (and the README)."""
    lines = [f"held-out images: {report['held_out']}   accuracy {report['accuracy']:.4f}   macro F1 {report['macro_f1']:.4f}",
             "",
             f"{'class':<22}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}"]
    for name, m in report["per_class"].items():
        lines.append(f"{name:<22}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['support']:>9d}")
    r = report.get("robustness")
    if r:
        sevs = r["severities"]
        pad = 22 + 8 * len(sevs)
        lines += ["", f"robustness: accuracy on {r['images']} held-out images (clean {r['clean_accuracy']:.3f})"]
        for group, title in (("unseen", "families training never sees"), ("seen", "families training also uses")):
            if not r[f"{group}_families"]:
                continue
            lines += [f"{title:<22}" + "".join(f"{'sev ' + str(s):>8}" for s in sevs) + f"{'mean':>8}"]
            for name in r[f"{group}_families"]:
                a = r["corruptions"][name]
                lines.append(f"  {name:<20}" + "".join(f"{a[str(s)]:>8.3f}" for s in sevs) + f"{a['mean']:>8.3f}")
            lines.append(f"{'  mean':<{pad}}{r[f'{group}_mean']:>8.3f}")
        lines += [f"{'unseen mixed (2-3 unseen families)':<{pad}}{r['unseen_mixed_accuracy']:>8.3f}",
                  f"{'mixed (2-3 of the suite)':<{pad}}{r['mixed_accuracy']:>8.3f}"]
        if r.get("unseen_before_mean") is not None:
            lines.append(f"{'the 13 families of before (partly seen)':<{pad}}{r['unseen_before_mean']:>8.3f}")
        if r["unseen_mean"] is not None:
            lines.append(f"{'HEADLINE: unseen families mean':<{pad}}{r['unseen_mean']:>8.3f}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------


def main(argv=None):
    parser = data.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/training_set.npz",
                        help="the training file the split was made from (default: %(default)s)")
    parser.add_argument("--weights", nargs="+", default=["weights"],
                        help="folder with weights*.npz and split.json; several folders are scored as one ensemble "
                             "(default: weights)")
    parser.add_argument("--out", default="reports",
                        help="folder for evaluation.json and the pictures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="picks the robustness images and the corruptions "
                                                            "(default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="held-out images per corruption (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"lighter robustness run: {QUICK_LIMIT} images per "
                                                             "corruption (default: off)")
    parser.add_argument("--severities", type=int, nargs="+", default=list(SEVERITIES), choices=SEVERITIES,
                        help="the strengths each corruption runs at: 1 mild, 2 medium, 3 strong but the cell still "
                             f"recognisable by a person (default: {' '.join(map(str, SEVERITIES))})")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=list(CORRUPTIONS), metavar="NAME",
                        help="a subset of: " + ", ".join(CORRUPTIONS) + " (default: all)")
    parser.add_argument("--no-robustness", action="store_true", help="clean score only (default: off, the corruptions "
                                                                     "run too)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=model.TEST_TIME_AUGMENTATION,
                        help="average the eight flips and right-angle rotations (default: as model.py ships, "
                             f"{'on' if model.TEST_TIME_AUGMENTATION else 'off'})")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.seed < 0:
        parser.error("--seed must be 0 or more")
    started = time.time()

    try:
        images, labels, held, split = load_holdout(args.data, args.weights)
    except data.DataError as e:
        raise SystemExit(f"evaluate.py: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"scoring {len(held)} held-out images of {args.data} with {' + '.join(args.weights)}", flush=True)

    # Scored the way Codabench calls the submission: Model() then predict() on the uint8 batch.
    net = model.Model(args.weights, tta=args.tta)
    predicted = net.predict(images)
    report = {"data": str(args.data), "weights": " + ".join(args.weights), "fingerprint": split["fingerprint"],
              "held_out": int(len(held)), "seed": args.seed, "class_names": list(model.CLASS_NAMES),
              **score(labels, predicted)}
    seconds = {"clean": round(time.time() - started, 1)}

    wrong = np.flatnonzero(predicted != labels)
    confidence = net.predict_proba(images[wrong]).max(axis=1) if len(wrong) else np.zeros(0)
    plot_confusion(report["confusion_matrix"], report["accuracy"], out / "confusion_matrix.png")
    plot_misclassified(images[wrong], labels[wrong], predicted[wrong], confidence, len(held), out / "misclassified.png")

    report["robustness"] = None
    if args.no_robustness:
        for stale in ("robustness.png", "robustness_samples.png"):  # don't leave an older run's pictures beside this report
            (out / stale).unlink(missing_ok=True)
    else:
        limit = args.limit or (QUICK_LIMIT if args.quick else len(held))
        pick = np.sort(np.random.default_rng(args.seed).permutation(len(held))[:limit])
        severities = sorted(set(args.severities))
        print(f"robustness: {len(args.corruptions)} corruptions x {len(severities)} severities + mixed, "
              f"{len(pick)} images each", flush=True)
        t = time.time()
        report["robustness"] = robustness(net, images[pick], labels[pick], predicted[pick], args.seed,
                                          severities, args.corruptions)
        seconds["robustness"] = round(time.time() - t, 1)
        sample = pick[np.random.default_rng(args.seed).integers(len(pick))]
        plot_samples(images[sample], args.seed, severities, args.corruptions, out / "robustness_samples.png")
        plot_robustness(report["robustness"], out / "robustness.png")

    seconds["total"] = round(time.time() - started, 1)
    report["seconds"] = seconds
    data.write_json(out / "evaluation.json", report, indent=2)
    print()
    print(format_table(report))
    print(f"\nwrote {out}/evaluation.json and pictures in {seconds['total']:.0f} s")
    return report


if __name__ == "__main__":
    main()
