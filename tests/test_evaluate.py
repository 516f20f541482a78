"""evaluate.py on small generated data and a tiny random network: the report adds up, a split for other data is refused."""
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import corruptions
import data
import evaluate
import model
from conftest import cell_images


N_IMAGES, N_HELD = 48, 16


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A data file, a weights folder (tiny random EfficientNetV2B0 + split.json) and one evaluate run."""
    root = tmp_path_factory.mktemp("evaluate")
    images = cell_images(N_IMAGES)
    labels = np.arange(N_IMAGES) % model.NUM_CLASSES
    data_path = root / "data.npz"
    np.savez(data_path, images=images, labels=labels.astype(np.uint8)[:, None])
    weights = root / "weights"
    weights.mkdir()
    config = {"backbone": "EfficientNetV2B0", "input_size": 96, "dropout": 0.2}
    model.save_network(model.build_network(**config), config, weights / "weights.npz")
    held = np.arange(0, N_IMAGES, N_IMAGES // N_HELD)
    split = {"fingerprint": data.fingerprint(images, labels), "holdout": held.tolist(),
             "train": sorted(set(range(N_IMAGES)) - set(held.tolist())), "validation": [], "seed": 0}
    (weights / "split.json").write_text(json.dumps(split))
    out = root / "reports"
    report = evaluate.main(["--data", str(data_path), "--weights", str(weights), "--out", str(out), "--limit", "8",
                            "--corruptions", "gaussian_noise", "flip", "bubbles", "--severities", "1", "3"])
    return {"root": root, "data": data_path, "weights": weights, "split": split, "out": out, "report": report,
            "labels": labels, "held": held}


def test_report_accuracy_is_the_confusion_matrix_trace(evaluated):
    saved = json.loads((evaluated["out"] / "evaluation.json").read_text())
    cm = np.array(saved["confusion_matrix"])
    assert cm.shape == (model.NUM_CLASSES, model.NUM_CLASSES)
    assert cm.sum() == saved["held_out"] == N_HELD
    assert saved["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    # rows are the true classes: each row holds that class's held-out images
    true_counts = np.bincount(evaluated["labels"][evaluated["held"]], minlength=model.NUM_CLASSES)
    assert cm.sum(axis=1).tolist() == true_counts.tolist()
    assert [saved["per_class"][n]["support"] for n in model.CLASS_NAMES] == true_counts.tolist()
    assert saved["macro_f1"] == pytest.approx(np.mean([saved["per_class"][n]["f1"] for n in model.CLASS_NAMES]))


def test_report_holds_the_robustness_run_and_pictures(evaluated):
    r = json.loads((evaluated["out"] / "evaluation.json").read_text())["robustness"]
    assert r["images"] == 8 and r["severities"] == [1, 3]
    assert set(r["corruptions"]) == {"gaussian_noise", "flip", "bubbles"}
    assert r["seen_families"] == ["gaussian_noise", "flip"] and r["unseen_families"] == ["bubbles"]
    seen = [r["corruptions"][n][str(s)] for n in ("gaussian_noise", "flip") for s in (1, 3)]
    assert r["seen_mean"] == pytest.approx(np.mean(seen))
    assert r["unseen_mean"] == pytest.approx(np.mean([r["corruptions"]["bubbles"][str(s)] for s in (1, 3)]))
    counts = seen + [r["unseen_mean"] * 2, r["mixed_accuracy"], r["unseen_mixed_accuracy"], r["clean_accuracy"]]
    assert all(a * 8 == round(a * 8) for a in counts)  # counts out of 8
    for name in ("confusion_matrix", "misclassified", "robustness_samples", "robustness"):
        assert (evaluated["out"] / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(evaluated["out"].glob("*.tmp"))  # every temp file was moved into place


def test_scores_match_a_direct_prediction(evaluated):
    # the clean score is the one Codabench would give: Model(weights).predict on the uint8 held-out batch
    images, labels = data.load_training_set(evaluated["data"])
    predicted = model.Model(evaluated["weights"]).predict(images[evaluated["held"]])
    expected = evaluate.score(labels[evaluated["held"]], predicted)
    assert evaluated["report"]["confusion_matrix"] == expected["confusion_matrix"]


def test_the_headline_keeps_ten_or_more_families_and_the_old_thirteen_are_reported_beside_it():
    assert len(corruptions.UNSEEN_NAMES) >= 10
    assert set(corruptions.UNSEEN_BEFORE) <= set(corruptions.CORRUPTIONS)
    assert {"hue_rotation", "channel_swap"} <= set(corruptions.SEEN_NAMES)  # --colour-p trains with them

    class Darkness:  # a stand-in network: dark images are class 0, the rest class 1
        def predict(self, x):
            return (np.asarray(x).mean(axis=(1, 2, 3)) > 150).astype(int)
    images, labels = cell_images(8, seed=9), np.ones(8, int)
    names = list(corruptions.UNSEEN_BEFORE) + ["zoom_blur"]
    r = evaluate.robustness(Darkness(), images, labels, labels, seed=0, severities=(1, 3), names=names)
    assert r["unseen_before_mean"] == pytest.approx(np.mean([r["corruptions"][n]["mean"] for n in corruptions.UNSEEN_BEFORE]))
    assert r["unseen_mean"] == pytest.approx(np.mean([r["corruptions"][n]["mean"] for n in names
                                                      if n in corruptions.UNSEEN_NAMES]))
    assert "unseen_before_mean" not in evaluate.robustness(Darkness(), images, labels, labels, 0, (1,), names[1:])


def test_refuses_a_split_made_for_other_data(evaluated, tmp_path):
    images, labels = data.load_training_set(evaluated["data"])
    labels[0] = (labels[0] + 1) % model.NUM_CLASSES  # one relabelled image is other data
    other = tmp_path / "other.npz"
    np.savez(other, images=images, labels=labels)
    with pytest.raises(SystemExit, match="fingerprint"):
        evaluate.main(["--data", str(other), "--weights", str(evaluated["weights"]), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()  # nothing written for a refused run


def test_other_data_is_refused_naming_the_file_the_split_was_made_from(evaluated, tmp_path, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(evaluated["weights"], weights)
    (weights / "split.json").write_text(json.dumps({**evaluated["split"], "data": "runs/the-file-it-trained-on.npz"}))
    other = tmp_path / "other.npz"
    np.savez(other, images=data.load_training_set(evaluated["data"])[0][::-1], labels=evaluated["labels"])
    recorded = "runs/the-file-it-trained-on.npz"
    with pytest.raises(SystemExit, match=f"was made from {recorded}.*DATA={recorded}"):
        evaluate.main(["--data", str(other), "--weights", str(weights), "--out", str(tmp_path / "r")])


def test_an_error_in_the_options_is_one_line_and_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--limit", "0"])
    error = capsys.readouterr().err.splitlines()  # its program's name is pytest's here
    assert len(error) == 1 and re.fullmatch(r"\S+: error: --limit must be at least 1 \(.* --help lists every option\)",
                                            error[0])
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    options = re.split(r"\n  (?=-)", capsys.readouterr().out.split("options:", 1)[1])[1:]  # one entry per option
    for option in options:
        if not option.startswith("-h"):
            assert "(default: " in " ".join(option.split()), option
    assert len(options) == 11 and any(o.startswith("--severities") and "1 mild" in o for o in options)


def drawn(monkeypatch):
    """The figures the plots hand to data.save_figure, kept open and drawn instead of written."""
    figures = []
    def keep(fig, path, dpi=110):
        fig.set_dpi(dpi)
        fig.canvas.draw()
        figures.append(fig)
    monkeypatch.setattr(data, "save_figure", keep)
    return figures


def test_the_mistakes_titles_stay_clear_of_each_other_also_for_the_longest_class_names(monkeypatch):
    figures = drawn(monkeypatch)
    longest = model.CLASS_NAMES.index(max(model.CLASS_NAMES, key=len))
    n = 50  # more than the picture shows: every panel is used
    evaluate.plot_misclassified(cell_images(n), np.full(n, longest), np.full(n, longest), np.linspace(1, 0.5, n), 1367,
                                "misclassified.png")
    renderer = figures[0].canvas.get_renderer()
    titled = [ax for ax in figures[0].axes if ax.get_title()]
    for a in titled:
        title = a.title.get_window_extent(renderer)
        assert figures[0].bbox.contains(title.x0, title.y0) and figures[0].bbox.contains(title.x1, title.y1)
        for b in figures[0].axes:
            if b is not a:
                assert not title.overlaps(b.title.get_window_extent(renderer)), a.get_title()
                assert not title.overlaps(b.get_window_extent(renderer)), a.get_title()


def test_the_robustness_samples_are_laid_out_wider_than_tall_to_fit_a_screen(tmp_path):
    evaluate.plot_samples(cell_images(1)[0], 0, list(corruptions.SEVERITIES), list(corruptions.CORRUPTIONS),
                          tmp_path / "robustness_samples.png")
    width, height = Image.open(tmp_path / "robustness_samples.png").size
    assert width >= height, (width, height)


def test_refuses_a_missing_or_leaky_split(evaluated, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(evaluated["weights"] / "weights.npz", weights)
    with pytest.raises(SystemExit, match="no split.json"):
        evaluate.main(["--data", str(evaluated["data"]), "--weights", str(weights), "--out", str(tmp_path / "r")])
    leaky = dict(evaluated["split"], train=evaluated["split"]["train"] + evaluated["split"]["holdout"][:1])
    (weights / "split.json").write_text(json.dumps(leaky))
    with pytest.raises(data.SplitError, match="also in 'train'"):
        evaluate.load_holdout(evaluated["data"], [weights])


def test_several_runs_are_scored_as_one_ensemble_only_on_a_shared_split(evaluated, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = {"backbone": "MobileNetV3Small", "input_size": 96, "dropout": 0.2}
    model.save_network(model.build_network(**config), config, other / "weights.npz")
    shutil.copy(evaluated["weights"] / "split.json", other / "split.json")
    runs = [str(evaluated["weights"]), str(other)]
    report = evaluate.main(["--data", str(evaluated["data"]), "--weights", *runs, "--out", str(tmp_path / "r"),
                            "--no-robustness"])
    images, labels = data.load_training_set(evaluated["data"])
    averaged = np.mean([model.Model(run).predict_proba(images[evaluated["held"]]) for run in runs], axis=0)
    assert report["confusion_matrix"] == evaluate.score(labels[evaluated["held"]], averaged.argmax(1))["confusion_matrix"]

    # a member that held out other images has trained on some of the ensemble's held-out ones
    split = dict(evaluated["split"], holdout=evaluated["split"]["train"][:N_HELD],
                 train=evaluated["held"].tolist() + evaluated["split"]["train"][N_HELD:])
    (other / "split.json").write_text(json.dumps(split))
    with pytest.raises(SystemExit, match="held out different images.*--split-seed"):
        evaluate.main(["--data", str(evaluated["data"]), "--weights", *runs, "--out", str(tmp_path / "r"),
                       "--no-robustness"])
