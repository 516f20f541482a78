"""Data hygiene: find the training images that should not be trained on.

The challenge's training file hides pictures that are not blood cells: one pasted picture copied
hundreds of times under every label, another copied many times within one class (each copy a
few grey levels of noise apart), and single pictures that are not micrographs at all. Some
genuine cells also appear twice with the same label. train.py calls find_outliers() before its
held-out split and drops outliers + duplicates, so no copy can sit on both sides of the split.

    python outliers.py --data data/training_set.npz --out reports

writes reports/outliers.json and reports/outliers.png (flagged images grouped by reason).

Two passes, both cheap (about 15-25 seconds for 15,500 images on 2 busy cores):
1. copies: md5 for exact copies, then a perceptual hash (imagehash.phash) to find candidate
   near copies, confirmed on small grey thumbnails. Copies form groups; a group of many copies
   is pasted, not photographed, so all of it goes; a small group with one label is a duplicate
   (keep the first); a small group with several labels cannot be trusted, so all of it goes.
2. not a cell: one picture per group is measured for the three ways a picture can fail to be a
   stained smear under a microscope: no colour at all (a fixed floor: stain is never grey),
   colours a stain does not make, near-black pixels (these two scaled robustly, by median and
   interquartile range, against the whole set; flagged when far out). Colours are measured after
   white balancing on the picture's own background, so a genuine cell with an unusual background
   colour is not flagged. Why not IsolationForest or LocalOutlierFactor on these measures: on the
   real set they rank large genuine cells that fill the frame (mildly unusual in every measure)
   above non-cells that are wildly off in one; a per-measure cut-off separates them with a wide gap.
"""
import argparse
import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np

from data import DataError, load_or_exit, quiet_tensorflow, write_atomically, write_json

MASS_COPIES = 5        # a group this large was pasted: a real cell is photographed once (at most twice here)
PHASH_CANDIDATE = 10   # phash bits apart: noise and JPEG re-encoding move a picture 0-4 bits, so 10 misses none
NEAR_COPY_RMS = 4.0    # grey levels on 24x24 thumbnails: noise/JPEG copies measure < 3, distinct cells > 8
GREY_CHROMA = 0.08     # strongest colour of a grey picture (JPEG/noise reach ~0.03); genuine cells show 0.15+
FAR_OUT = 7.0          # interquartile ranges beyond the median: genuine cells reach ~5, non-cells 10 and more
THUMB = 24             # thumbnail side for comparing near copies (averaging removes noise and JPEG blocks)
WORK = 48              # side at which colours are measured (halves the work, keeps the stain's colours)
BINS = 8               # bins per channel of the white-balanced colour histogram
MOST_OF_A_CLASS = 0.5  # cleaning may drop at most this share of a class; the real set's worst class loses 26%

# reason strings: these are also the keys of "counts"
MASS_SEVERAL = "mass copy under several labels"
MASS_ONE = "mass copy within one class"
CONFLICT = "copies with conflicting labels"
NOT_CELL = ("not a cell: no colour (grey picture)",
            "not a cell: colours no stain makes",
            "not a cell: near-black pixels")
DUPLICATE = "duplicate of a kept cell"
# what usually makes a file lose most of a class for each reason
PASTED = "many images are one picture: blank or constant images (floats in [0, 1] rounded to integers turn black)?"
LIKELY_CAUSE = {
    MASS_SEVERAL: PASTED,
    MASS_ONE: PASTED,
    CONFLICT: "the same pictures appear under other labels: labels out of step with the images?",
    NOT_CELL[0]: "the images have no colour: grayscale pictures copied to three channels?",
    NOT_CELL[1]: "the colours are not a stain's: channels in another order (BGR), another colour space, or not blood-cell smears?",
    NOT_CELL[2]: "the images are dark: pixel values on another scale than 0-255, or inverted?",
    DUPLICATE: "the class is a few pictures repeated: the file holds its images more than once?",
}


def block_mean(images, side, chunk=1024):
    """Downscale uint8 (n, H, W, C) to float32 (n, side, side, C) by averaging blocks; side must divide H and W."""
    n, h, w, c = images.shape
    if h % side or w % side:
        raise ValueError(f"images of {h}x{w} cannot be averaged down to {side}x{side}")
    fy, fx = h // side, w // side
    out = np.empty((n, side, side, c), np.float32)
    for s in range(0, n, chunk):  # in chunks: a float copy of 15,500 images would take 1.7 GB
        total = np.zeros((len(images[s:s + chunk]), side, side, c), np.uint32)
        for dy in range(fy):  # summing strided slices is several times faster than reshape().mean()
            for dx in range(fx):
                total += images[s:s + chunk, dy::fy, dx::fx]
        out[s:s + chunk] = total / np.float32(fy * fx)
    return out


# ----------------------------------------------------------------------------------------------
# pass 1: copies

def exact_copy_of(images):
    """For each image, the index of the first image with exactly the same bytes."""
    first = {}
    return np.array([first.setdefault(hashlib.md5(x.tobytes()).digest(), i) for i, x in enumerate(images)])


def phash_signs(images):
    """imagehash's 64-bit perceptual hash of each image, as +1/-1 floats so a matmul counts matching bits."""
    import imagehash
    from PIL import Image
    bits = np.array([imagehash.phash(Image.fromarray(x)).hash.ravel() for x in images])
    return np.where(bits, 1.0, -1.0).astype(np.float32)


def near_copy_pairs(images, chunk=1024):
    """Pairs (i, j), i < j, of images that are the same picture up to noise or JPEG re-encoding."""
    signs = phash_signs(images)
    grey = block_mean(images, THUMB) @ np.array([0.299, 0.587, 0.114], np.float32)  # (n, 24, 24) luma
    pairs = []
    for start in range(0, len(images), chunk):
        hamming = (64 - signs[start:start + chunk] @ signs.T) / 2  # bits that differ
        i, j = np.nonzero(hamming <= PHASH_CANDIDATE)
        i += start
        i, j = i[i < j], j[i < j]
        # the hash only proposes: confirm on the pixels, where similar-looking cells are far apart
        rms = np.sqrt(((grey[i] - grey[j]) ** 2).mean((1, 2)))
        pairs.append(np.stack([i[rms <= NEAR_COPY_RMS], j[rms <= NEAR_COPY_RMS]], 1))
    return np.concatenate(pairs)


def copy_groups(images):
    """Group id of each image (the first index in its group): exact and near copies share one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    exact = exact_copy_of(images)
    reps = np.unique(exact)  # near copies are searched among distinct pictures only
    pairs = near_copy_pairs(images[reps])
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(reps), len(reps)))
    _, component = connected_components(graph, directed=False)
    first_in_component = np.full(component.max() + 1, len(images))
    np.minimum.at(first_in_component, component, reps)
    rep_group = dict(zip(reps, first_in_component[component]))
    return np.array([rep_group[e] for e in exact])


# ----------------------------------------------------------------------------------------------
# pass 2: is it a stained smear at all?

def white_balanced(images):
    """Images at WORK x WORK in [0, 1.2], each divided by its own background (95th percentile per channel).

    Light through an empty slide is the image's white: dividing by it removes the tint of the lamp
    and camera, so an unusual background colour no longer looks unusual.
    """
    x = block_mean(images, WORK) / 255.0
    flat = x.reshape(len(x), -1, 3)
    k = int(0.95 * flat.shape[1])
    white = np.partition(flat, k, axis=1)[:, k]
    return np.clip(x / np.maximum(white, 0.05)[:, None, None, :], 0.0, 1.2)


def colour_codes(wb):
    """Bin index (0..BINS^3-1) of each white-balanced pixel."""
    q = np.minimum((wb * (BINS / 1.2)).astype(np.int64), BINS - 1)
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def smear_measures(images, chunk=1024):
    """Per image: colour histogram (n, BINS^3), strongest colour (n,) and darkness (n,), from white-balanced pixels."""
    hists, colour, dark = [], [], []
    for start in range(0, len(images), chunk):
        wb = white_balanced(images[start:start + chunk])
        n = len(wb)
        codes = colour_codes(wb).reshape(n, -1) + np.arange(n)[:, None] * BINS ** 3
        hists.append(np.bincount(codes.ravel(), minlength=n * BINS ** 3).reshape(n, -1) / codes.shape[1])
        # stain is strongly coloured: the 99th percentile of chroma (max - min channel)
        chroma = (wb.max(-1) - wb.min(-1)).reshape(n, -1)
        k = int(0.99 * chroma.shape[1])
        colour.append(np.partition(chroma, k, axis=1)[:, k])
        # transmitted light is never black, photographs usually are somewhere: the optical density
        # (-log of brightness) of the darkest pixels (0.5th percentile), black floored at 0.02
        value = wb.max(-1).reshape(n, -1)
        k = int(0.005 * value.shape[1])
        dark.append(-np.log(np.partition(value, k, axis=1)[:, k] + 0.02))
    return np.concatenate(hists), np.concatenate(colour), np.concatenate(dark)


def not_a_cell(images, typical):
    """(reason index into NOT_CELL or -1, how far out, strongest colour) per image; `typical` marks the normal ones.

    No colour is a plain fact (a stained smear is never grey), so it has a fixed floor. The other
    two are measured against the set itself: the colours' negative log-likelihood under the set's
    own colour histogram, and the darkness, each scaled by median and interquartile range
    (RobustScaler) so the few non-cells cannot move the yardstick.
    """
    from sklearn.preprocessing import RobustScaler
    if not typical.any():  # nothing but mass copies: let every picture define normal
        typical = np.ones(len(images), bool)
    hist, colour, dark = smear_measures(images)
    p = hist[typical].mean(0) + 1e-6  # how often a stained smear shows each colour
    nll = -(hist * np.log(p)).sum(1)
    measures = np.column_stack([nll, dark])
    scaled = RobustScaler().fit(measures[typical]).transform(measures)
    far = scaled.max(1)
    reason = np.where(far > FAR_OUT, 1 + scaled.argmax(1), -1)
    reason[colour < GREY_CHROMA] = 0
    return reason, far, colour


def _check(images, labels):
    """The arrays as numpy (labels flattened), or ValueError saying what is wrong."""
    images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (n, H, W, 3); got {images.dtype} {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return images, labels


def analyse(images, labels):
    """find_outliers() plus what the report shows: the group of each image (its first copy's index),
    and for each group's first image (how far out, strongest colour)."""
    images, labels = _check(images, labels)
    if len(images) == 0:
        return {"outliers": [], "duplicates": [], "reasons": {}, "counts": {}}, np.zeros(0, np.int64), {}
    group = copy_groups(images)
    reps, size = np.unique(group, return_counts=True)
    size_of = dict(zip(reps, size))
    mass = np.array([size_of[g] >= MASS_COPIES for g in reps])
    not_cell, far, colour = not_a_cell(images[reps], typical=~mass)

    reasons = {}
    for k, g in enumerate(reps):
        members = np.nonzero(group == g)[0]
        if mass[k]:
            why = MASS_SEVERAL if len(set(labels[members])) > 1 else MASS_ONE
        elif not_cell[k] >= 0:
            why = NOT_CELL[not_cell[k]]  # and its near copies go with it
        elif len(set(labels[members])) > 1:
            why = CONFLICT
        elif len(members) > 1:
            for i in members[1:]:
                reasons[int(i)] = DUPLICATE  # the first copy stays
            continue
        else:
            continue
        for i in members:
            reasons[int(i)] = why
    refuse_most_of_a_class(reasons, labels)
    outliers = sorted(i for i, r in reasons.items() if r != DUPLICATE)
    duplicates = sorted(i for i, r in reasons.items() if r == DUPLICATE)
    counts = {}
    for r in reasons.values():
        counts[r] = counts.get(r, 0) + 1
    result = {"outliers": outliers, "duplicates": duplicates,
              "reasons": dict(sorted(reasons.items())), "counts": dict(sorted(counts.items()))}
    measured = {int(g): (round(float(f), 2), round(float(c), 3)) for g, f, c in zip(reps, far, colour)}
    return result, group, measured


def refuse_most_of_a_class(reasons, labels):
    """Raise data.DataError when the reasons would drop more than MOST_OF_A_CLASS of any class.

    Outliers are a minority of a real set: when most of a class looks wrong, the file is wrong
    (its scale, channels or labels), and cleaning it would hide that behind an empty class.
    """
    classes, sizes = np.unique(labels, return_counts=True)
    flagged = labels[np.array(list(reasons), dtype=np.int64)]
    dropped = np.array([(flagged == c).sum() for c in classes])
    over = dropped > MOST_OF_A_CLASS * sizes
    if not over.any():
        return
    worst = np.argmax(dropped / sizes)
    why = [r for i, r in reasons.items() if labels[i] == classes[worst]]
    found = {r: why.count(r) for r in sorted(set(why), key=why.count, reverse=True)}
    raise DataError(
        f"the data looks wrong: cleaning would drop more than half of {over.sum()} of the {len(classes)} classes, "
        f"{dropped[worst]} of the {sizes[worst]} images of class {classes[worst]} "
        f"({'; '.join(f'{n} {r}' for r, n in found.items())}). Likely cause: {LIKELY_CAUSE[next(iter(found))]} "
        "Look at the images (make eda) and fix the file; training with --keep-outliers (make train "
        "ARGS=--keep-outliers) uses it as it is")


def find_outliers(images, labels):
    """Indices to drop before training, and why.

    images: uint8 (n, H, W, 3) RGB, H and W multiples of 48; labels: (n,) or (n, 1) integers.
    Returns {"outliers": [...], "duplicates": [...], "reasons": {index: reason}, "counts": {reason: n}}:
    outliers are not cells, mass copies, copies with conflicting labels (and all their near copies);
    duplicates are the extra copies of a genuine cell (its first copy is kept). Raises
    data.DataError, saying what it found, when that would drop more than half of any class.
    """
    return analyse(images, labels)[0]


# ----------------------------------------------------------------------------------------------
# the report

def sheet_sections(result, group, per_reason=20, cols=10):
    """The contact sheet's rows, one section per reason: its title, and the images it shows."""
    by_reason = {}
    for i, r in result["reasons"].items():
        by_reason.setdefault(r, []).append(i)
    sections = []
    order = [MASS_SEVERAL, MASS_ONE, *NOT_CELL, CONFLICT, DUPLICATE]
    for r, members in sorted(by_reason.items(), key=lambda item: order.index(item[0])):
        if r in (MASS_SEVERAL, MASS_ONE):  # one row is enough: they are all the same picture
            flagged = members[:cols]
        else:
            flagged = members[:per_reason]
        title = f"{r}: {len(members)} image{'s' * (len(members) > 1)}" + (
            f", {len(flagged)} shown" if len(flagged) < len(members) else "")
        if r == DUPLICATE:  # each dropped copy shown beside the copy that is kept
            sections.append((title + ", each after the copy kept", [k for i in flagged for k in (int(group[i]), i)]))
        else:
            sections.append((title, flagged))
    return sections


def contact_sheet(images, labels, result, group, class_names, nearest_misses=(), per_reason=20, cols=10):
    """PNG bytes: flagged images in rows grouped by reason, each captioned with its index and label.

    nearest_misses: kept images that came closest to being flagged, shown last to judge the margin.
    """
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default(size=13)
    head = ImageFont.load_default(size=18)
    tile, cap = 2 * images.shape[1], 34  # images shown at 2x so their content can be judged
    sections = sheet_sections(result, group, per_reason, cols)
    if len(nearest_misses):
        sections.append(("kept, for review: the pictures that came closest to 'not a cell'", list(nearest_misses)))
    width = cols * (tile + 6) + 6
    height = sum(30 + -(-len(s) // cols) * (tile + cap) for _, s in sections) + 10
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 6
    for title, shown in sections:
        draw.text((6, y), title, fill="black", font=head)
        y += 30
        for k, i in enumerate(shown):
            r, c = divmod(k, cols)
            x0, y0 = 6 + c * (tile + 6), y + r * (tile + cap)
            sheet.paste(Image.fromarray(images[i]).resize((tile, tile), Image.NEAREST), (x0, y0))
            note = "kept" if result["reasons"].get(i) is None else "dropped"
            draw.text((x0, y0 + tile + 1), f"#{i} {note}", fill="black", font=font)
            draw.text((x0, y0 + tile + 16), class_names[labels[i]][:24], fill="black", font=font)
        y += -(-len(shown) // cols) * (tile + cap)
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/training_set.npz", help="challenge-style .npz file")
    parser.add_argument("--out", default="reports", help="folder for outliers.json and outliers.png")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # model.py, for the class names, imports TensorFlow
    quiet_tensorflow()
    from model import CLASS_NAMES
    images, labels = load_or_exit(args.data)

    start = time.time()
    try:
        result, group, measured = analyse(images, labels)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    seconds = time.time() - start
    dropped = set(result["outliers"]) | set(result["duplicates"])
    kept = np.array([i for i in range(len(labels)) if i not in dropped], dtype=np.int64)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(result)
    report["reasons"] = {str(i): r for i, r in result["reasons"].items()}
    report["copy_of"] = {str(i): int(group[i]) for i in result["reasons"] if group[i] != i}
    # how close the kept pictures came to 'not a cell', to judge the margins of FAR_OUT and GREY_CHROMA
    kept_reps = [g for g in measured if g not in result["reasons"]]
    misses = sorted(kept_reps, key=lambda g: -measured[g][0])[:10]
    greyest = sorted(kept_reps, key=lambda g: measured[g][1])[:5]
    report["nearest_misses"] = {"far_out": {str(g): measured[g][0] for g in misses},
                                "least_colour": {str(g): measured[g][1] for g in greyest}}
    report["not_a_cell_measures"] = {str(i): dict(zip(("far_out", "colour"), measured[int(group[i])]))
                                     for i, r in result["reasons"].items() if r in NOT_CELL}
    report["summary"] = {
        "data": str(args.data), "images": len(labels), "kept": len(kept), "seconds": round(seconds, 1),
        "per_class_before": np.bincount(labels, minlength=len(CLASS_NAMES)).tolist(),
        "per_class_after": np.bincount(labels[kept], minlength=len(CLASS_NAMES)).tolist(),
        "settings": {"MASS_COPIES": MASS_COPIES, "PHASH_CANDIDATE": PHASH_CANDIDATE,
                     "NEAR_COPY_RMS": NEAR_COPY_RMS, "GREY_CHROMA": GREY_CHROMA, "FAR_OUT": FAR_OUT},
    }
    write_json(out / "outliers.json", report, indent=1)
    sheet = contact_sheet(images, labels, result, group, CLASS_NAMES, misses + greyest)
    write_atomically(out / "outliers.png", lambda f: f.write(sheet))
    print(f"{len(labels)} images, {len(result['outliers'])} outliers, {len(result['duplicates'])} duplicates, "
          f"{len(kept)} kept ({seconds:.0f} s)")
    for r, n in result["counts"].items():
        print(f"  {n:5d}  {r}")
    print(f"wrote {out / 'outliers.json'} and {out / 'outliers.png'}")


if __name__ == "__main__":
    main()
