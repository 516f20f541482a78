"""The recipe's parts: focal loss, weight decay, freezing, schedules, backbone weights, the strategy, the last words."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from itertools import pairwise

import numpy as np
import pytest
import keras
import tensorflow as tf

import augment
import data
import model
import presets
import train
from conftest import ROOT, RawWeights, latest_checkpoint, learnable_images


def test_focal_loss_matches_a_hand_computation():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1 + list(range(3, 8)) * 2)
    alpha = train.class_weights(labels)
    counts = np.bincount(labels, minlength=8)
    np.testing.assert_allclose(alpha, len(labels) / (8 * counts))  # rarer class, larger weight
    assert train.class_weights(labels, balanced=False) == [1.0] * 8  # --no-balance-classes: every image alike

    network = keras.Sequential([keras.Input((8,)), keras.layers.Softmax()])
    train.compile_network(network, 1e-4, presets.PRESETS["seed"], alpha)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(8), size=5).astype(np.float32)
    y = np.eye(8, dtype=np.float32)[[0, 2, 5, 7, 1]]
    gamma = presets.PRESETS["seed"]["focal_gamma"]
    # FL = -sum_c alpha_c y_c (1 - p_c)^gamma log p_c, averaged over the batch
    by_hand = np.mean(-np.sum(np.array(alpha) * y * (1 - p) ** gamma * np.log(p), axis=1))
    assert float(network.loss(y, p)) == pytest.approx(by_hand, rel=1e-5)


def test_weight_decay_shrinks_the_kernels_only():
    network = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(5, 3), keras.layers.BatchNormalization(),
                                keras.layers.Flatten(), keras.layers.Dense(8)])
    lr, decay = 0.1, 0.5
    train.compile_network(network, lr, {**presets.PRESETS["cpu"], "weight_decay": decay}, [1.0] * 8)
    variables = network.trainable_variables
    for v in variables:  # nonzero everywhere, so a decay of any of them would show
        v.assign(np.full(v.shape, 2.0, np.float32))
    # a zero gradient moves nothing through Adam's moments, so only the decay changes a weight
    network.optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    for v in variables:
        expected = 2.0 * (1 - lr * decay) if len(v.shape) > 1 else 2.0
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, err_msg=v.path)
    assert sum(len(v.shape) > 1 for v in variables) == 2 and sum(len(v.shape) <= 1 for v in variables) == 4


def test_unfreezing_trains_exactly_the_top_layers_and_never_batchnorm():
    network = model.build_network("EfficientNetV2B0")
    backbone = train.backbone_of(network)
    backbone.trainable = False
    assert all(not w.trainable for w in backbone.weights)
    n = 40
    train.unfreeze_top(network, n)
    layers = backbone.layers
    is_bn = [isinstance(layer, keras.layers.BatchNormalization) for layer in layers]
    assert sum(is_bn[-n:]) > 0  # the top 40 do hold BatchNorm layers, which must stay frozen
    for i, layer in enumerate(layers):
        assert layer.trainable == (i >= len(layers) - n and not is_bn[i]), layer.name
    assert network.get_layer("probabilities").trainable


def no_network(*args, **kwargs):
    raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")


def test_offline_imagenet_download_points_to_the_cpu_preset(monkeypatch):
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", no_network)
    config = {**presets.PRESETS["tiny"], "backbone_weights": "imagenet"}
    with pytest.raises(SystemExit, match="make train PRESET=cpu") as error:
        train.create_network(config)
    assert "--backbone-weights none" in str(error.value) and "local" in str(error.value)


def test_offline_advice_keeps_the_users_preset_and_flags(monkeypatch):
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", no_network)
    args, config = presets.parse_args(["--preset", "tiny", "--out", "runs/a", "--backbone-weights", "imagenet",
                                     "--phase1-epochs", "3", "--no-balance-classes"])
    with pytest.raises(SystemExit) as error:
        train.create_network(config, args.command)
    commands = [line.split("#")[0].strip() for line in str(error.value).splitlines()]
    assert 'make train PRESET=tiny WEIGHTS=runs/a ARGS="--phase1-epochs 3 --no-balance-classes --backbone-weights none"' in commands
    assert "make train PRESET=cpu WEIGHTS=runs/a" in commands


def test_the_backbone_weights_fail_before_the_data_is_read(monkeypatch, tmp_path):
    absent_data = tmp_path / "absent.npz"  # were the data read first, its error would come first
    with pytest.raises(SystemExit, match="absent.h5: no such file"):
        train.train({**presets.PRESETS["tiny"], "backbone_weights": str(tmp_path / "absent.h5")}, absent_data, tmp_path / "out")
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", no_network)
    with pytest.raises(SystemExit, match="could not download"):
        train.train({**presets.PRESETS["tiny"], "backbone_weights": "imagenet"}, absent_data, tmp_path / "out")


def test_every_folder_the_tools_write_or_suggest_is_ignored_by_git(tmp_path, monkeypatch):
    # what they hold is made from the training images: `git add .` must never pick it up
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    monkeypatch.chdir(tmp_path)  # the refusal suggests a folder beside the one given, as make train would
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "weights.npz").write_bytes(b"a finished run")
    args, config = presets.parse_args(["--preset", "tiny"])
    with pytest.raises(SystemExit) as refusal:
        train.train(config, "absent.npz", "weights", command=args.command)
    suggested = re.search(r"WEIGHTS=(\S+)", str(refusal.value)).group(1)
    defaults = dict(re.findall(r"^(\w+) \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE))
    written = [f"{suggested}/weights.npz", f"{defaults['WEIGHTS']}/checkpoint/latest.json", defaults["DATA"],
               defaults["SUBMISSION"], f"{defaults['REPORTS']}/evaluation.json", "reports-quick/robustness.png",
               "runs/seed1/weights.npz", ".venv"]  # runs/: the README's ensembles
    run = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", *written], capture_output=True, text=True)
    assert run.stdout.split() == written, f"not ignored: {sorted(set(written) - set(run.stdout.split()))}"


def test_a_large_network_without_a_gpu_gets_one_line_of_advice(monkeypatch):
    network = model.build_network("MobileNetV3Small")
    monkeypatch.setattr(train.tf.config, "list_physical_devices", lambda kind=None: [])
    assert train.gpu_advice(network) is None  # small enough for a CPU
    monkeypatch.setattr(train, "LARGE", network.count_params() - 1)
    advice = train.gpu_advice(network)
    assert "no GPU" in advice and "tensorflow[and-cuda]==2.17.0" in advice and "make train PRESET=cpu" in advice
    monkeypatch.setattr(train.tf.config, "list_physical_devices", lambda kind=None: ["a GPU"])
    assert train.gpu_advice(network) is None


def test_the_epoch_clock_says_once_how_long_an_epoch_takes(monkeypatch, capsys):
    now = iter([100.0, 160.0])  # five steps after the first take a minute
    monkeypatch.setattr(train.time, "perf_counter", lambda: next(now))
    clock = train.EpochClock(steps_per_epoch=50, steps=5)
    for batch in range(12):
        clock.on_train_batch_end(batch)
    out = capsys.readouterr().out
    assert out.count("an epoch takes about 10 minutes (50 steps)") == 1 and "PRESET=cpu" in out


def test_a_width_or_a_backbone_without_imagenet_weights_says_to_train_from_scratch(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("nothing to download: Keras has no ImageNet weights of this width")
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", no_download)
    config = {**presets.PRESETS["tiny"], "backbone_weights": "imagenet", "width": 1.25}
    with pytest.raises(SystemExit, match="widths 0.75 and 1.0 only.*--backbone-weights none"):
        train.create_network(config)
    with pytest.raises(ValueError, match="only the MobileNets"):  # not taken for a failed download
        train.create_network({**config, "backbone": "EfficientNetV2B0", "width": 0.75})
    with pytest.raises(SystemExit, match="ResNet10 has no pretrained weights.*--backbone-weights none"):
        train.create_network({**config, "backbone": "ResNet10", "width": 1.0})


def test_backbone_weights_from_a_local_file(tmp_path):
    config = presets.PRESETS["tiny"]
    source = getattr(keras.applications, config["backbone"])(include_top=False, weights=None,
                                                             input_shape=(config["input_size"], config["input_size"], 3))
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    network = train.create_network({**config, "backbone_weights": str(path)})
    for a, b in zip(source.get_weights(), train.backbone_of(network).get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit, match="no such file"):
        train.create_network({**presets.PRESETS["tiny"], "backbone_weights": str(tmp_path / "absent.h5")})


def test_a_random_start_gives_batchnorm_statistics_that_keep_up(tmp_path):
    # Keras' MobileNetV3 builds BatchNorm with momentum 0.999: from random weights its statistics
    # would lag the training for epochs, and validation would see a network that predicts one class
    config = {**presets.PRESETS["tiny"], "backbone": "MobileNetV3Small"}
    def momenta(network):
        return {layer.momentum for layer in train.backbone_of(network).layers
                if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta(train.create_network(config)) == {0.9}
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    assert momenta(train.create_network({**config, "backbone_weights": str(path)})) == {0.999}  # pretrained: as built


@pytest.mark.slow
def test_training_runs_under_mirrored_strategy_on_the_cpu(learnable_npz, tmp_path, monkeypatch):
    config = {**presets.PRESETS["tiny"], "max_images": 96, "phase1_epochs": 1, "phase2_epochs": 1, "mix": "cutmix"}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    mixes, make_dataset = [], augment.make_dataset  # each pipeline's mix: both phases' train with CutMix
    monkeypatch.setattr(train, "make_dataset", lambda *args: mixes.append(args[5:]) or make_dataset(*args))
    rows = train.train(config, learnable_npz, tmp_path, seed=5, keep_outliers=True, strategy=strategy)
    assert [r["phase"] for r in rows] == ["head", "finetune"]
    assert mixes == [(augment.cutmix,), (augment.cutmix,), ()]  # validation unmixed
    assert (tmp_path / "weights.npz").is_file() and (tmp_path / "history.png").is_file()
    # the held-out images follow split_seed (default 0), not seed: several seeds make one ensemble
    images, labels = data.load_training_set(learnable_npz)
    expected = data.split_data(images, labels, config, seed=0, keep_outliers=True)[2]
    assert json.loads((tmp_path / "split.json").read_text())["holdout"] == expected.tolist()


@pytest.mark.slow
def test_progressive_resizing_trains_phase_1_smaller_and_phase_2_goes_on_from_its_weights(learnable_npz, tmp_path, monkeypatch):
    config = {**presets.PRESETS["tiny"], "max_images": 96, "phase1_epochs": 1, "phase2_epochs": 1, "phase1_input_size": 48}
    seen = []  # per phase: the size the backbone sees, the weights it starts from and ends with
    real_run_phase = train.run_phase
    def run_phase(network, *args, **kwargs):
        phase = args[3].state["phase"]  # the checkpoint
        seen.append((phase, train.backbone_of(network).inputs[0].shape[1], network.get_weights()))
        if phase == "finetune" and len(seen) == 2:
            raise KeyboardInterrupt  # killed as phase 2 begins: the resumed run must rebuild at phase 2's size
        real_run_phase(network, *args, **kwargs)
        seen[-1] += (network.get_weights(),)
    monkeypatch.setattr(train, "run_phase", run_phase)
    drawn = []  # where history.png marks the resume
    monkeypatch.setattr(train, "save_history", lambda rows, out, resumed_at, keep_last: drawn.append(list(resumed_at)))
    with pytest.raises(KeyboardInterrupt):
        train.train(config, learnable_npz, tmp_path, keep_outliers=True)
    train.train(config, learnable_npz, tmp_path, keep_outliers=True, resume=True)
    assert drawn == [[1]]  # after phase 1's one epoch
    (_, head_size, head_start, head_end), (_, first_size, first_start), (_, size, start, _) = seen
    assert (head_size, first_size, size) == (48, 64, 64)
    for followed, resumed, trained in zip(first_start, start, head_end):  # phase 2 starts from phase 1's weights,
        np.testing.assert_array_equal(followed, trained)  # both straight after it
        np.testing.assert_array_equal(resumed, trained)  # and in the resumed run
    assert any(not np.array_equal(a, b) for a, b in zip(head_start, head_end))  # phase 1 did train
    assert model.load_network(tmp_path / "weights.npz")[1]["input_size"] == 64  # the bundle holds phase 2's network
    assert model.Model(tmp_path, tta=False).predict(learnable_images(4)[0]).shape == (4,)


@pytest.mark.slow
def test_a_phase_of_zero_epochs_is_skipped(learnable_npz, tmp_path):
    config = {**presets.PRESETS["tiny"], "max_images": 96, "phase1_epochs": 0, "phase2_epochs": 1}
    rows = train.train(config, learnable_npz, tmp_path, keep_outliers=True)  # phase 2 on a fresh AdamW
    assert [r["phase"] for r in rows] == ["finetune"]
    assert model.Model(tmp_path, tta=False).predict(learnable_images(2)[0]).shape == (2,)


@pytest.mark.slow
def test_zero_epochs_of_both_phases_write_the_untrained_network(learnable_npz, tmp_path):
    config = {**presets.PRESETS["tiny"], "max_images": 96, "phase1_epochs": 0, "phase2_epochs": 0}
    keras.utils.set_random_seed(4)
    untrained = train.create_network(config)
    assert train.train(config, learnable_npz, tmp_path, seed=4, keep_outliers=True) == []
    saved, _ = model.load_network(tmp_path / "weights.npz")
    for a, b in zip(untrained.get_weights(), saved.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)  # float16 storage, at most
    assert (tmp_path / "history.csv").read_text().splitlines() == ["phase,epoch"]
    assert json.loads((tmp_path / "split.json").read_text())["trained_epochs"] == 0  # what make submission warns of


@pytest.mark.slow
def test_editing_the_code_while_it_trains_does_not_break_the_run(learnable_npz, tmp_path):
    # TensorFlow reads a function's source from its file when it first traces it: phase 2's corruptions,
    # traced when phase 2 began, then read lines an edit had moved, and the run crashed
    code = tmp_path / "code"
    code.mkdir()
    for path in ROOT.glob("*.py"):  # every module train.py may import, wherever it moves
        shutil.copy(path, code / path.name)
    out = tmp_path / "weights"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen([sys.executable, str(code / "train.py"), "--data", str(learnable_npz), "--preset", "tiny",
                            "--phase1-epochs", "3", "--phase2-epochs", "2", "--corrupt-p", "0.5", "--out", str(out), "--keep-outliers"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    while run.poll() is None and not latest_checkpoint(out):  # phase 1 trains
        time.sleep(0.2)
    source = (code / "augment.py").read_text()  # a user edits a helper near the top: every line below moves down
    (code / "augment.py").write_text(source.replace("\ndef make_dataset(", "\n# edited\n# while\n# training\ndef make_dataset(", 1))
    log = run.communicate()[0]
    assert run.returncode == 0, log[-3000:]
    assert (out / "weights.npz").is_file()


class Answers:
    """Stands for a network in save_weights: it predicts the labels given, and stores one weight."""
    def __init__(self, predicted):
        self.predicted = predicted

    def get_weights(self):
        return [np.linspace(0, 1, 16, dtype=np.float32)]

    def predict(self, x, verbose=0):
        return np.eye(8)[self.predicted]


@pytest.mark.parametrize("turned_wrong, turned_right, shipped", [
    (1, 0, "float16"),  # one image of a thousand on the edge between two classes: the zip stays half the size
    (1, 1, "float16"),  # two labels changed, as many images right
    (2, 0, "float32"),  # two images fewer right: float16 costs accuracy
    (0, 2, "float32"),  # or gains it by chance: float32 is what was validated
])
def test_float16_ships_when_it_gets_as_many_check_images_right_within_one(turned_wrong, turned_right, shipped,
                                                                           tmp_path, monkeypatch, capsys):
    labels = np.arange(1000) % 8
    float32 = np.where(np.arange(1000) < 900, labels, (labels + 1) % 8)  # 900 right, 100 wrong
    float16 = float32.copy()
    float16[:turned_wrong] = (labels[:turned_wrong] + 1) % 8
    float16[900:900 + turned_right] = labels[900:900 + turned_right]
    monkeypatch.setattr(train, "load_network", lambda path: (Answers(float16), {}))
    path = tmp_path / "weights.npz"
    precision = train.save_weights(Answers(float32), presets.PRESETS["tiny"], path, np.zeros((1000, 1, 1, 3)), labels)
    assert precision["dtype"] == shipped and np.load(path)["w0000"].dtype == shipped
    assert [p.name for p in tmp_path.iterdir()] == ["weights.npz"]
    assert precision["why"].startswith(f"{shipped}: ")
    assert f"{np.sum(float16 == labels)} of 1000 validation images right, float32 900" in precision["why"]
    assert f"{precision['why']})" in capsys.readouterr().out  # the log line says it


def epoch(phase, val_loss, val_accuracy):
    return {"phase": phase, "epoch": 1, "val_loss": val_loss, "val_accuracy": val_accuracy}


def test_the_kept_epoch_is_the_best_validation_loss_of_the_last_phase_that_trained():
    rows = [epoch("head", 0.1, 0.99), epoch("finetune", 0.9, 0.5), epoch("finetune", 0.5, 0.7), epoch("finetune", 0.5, 0.8),
            epoch("finetune", float("nan"), 0.1)]
    assert train.kept_epoch(rows) == 2  # phase 1's better loss is not what phase 2 ends with; the first of equals
    assert train.kept_epoch(rows[:1]) == 0 and train.kept_epoch([]) is None


@pytest.mark.parametrize("record, rows, why", [
    ({"preset": "tiny", "trained_epochs": 0}, [], "it trained no epochs, its weights are random"),
    ({"preset": "tiny", "trained_epochs": 2}, [epoch("head", 1.0, 0.9), epoch("finetune", 0.5, 0.9)],
     "a run of the tiny preset is a smoke test of the code"),
    ({"preset": "cpu", "trained_epochs": 2}, [epoch("finetune", 2.0, 0.9), epoch("finetune", 1.9, 0.2)],
     "its validation accuracy 0.200 is near chance"),  # the kept epoch's, not the best accuracy's
])
def test_a_run_not_worth_uploading_ends_with_a_warning_saying_why_and_what_to_train_instead(record, rows, why, tmp_path):
    out = tmp_path / "weights"
    out.mkdir()
    (out / "split.json").write_text(json.dumps(record))
    args, _ = presets.parse_args(["--preset", record["preset"], "--out", str(out), "--phase1-epochs", "0"])
    *first, last = train.last_words(rows, out, args.command)
    assert "(the bundle to upload)" not in " ".join(first)
    assert last.startswith(f"warning: not worth uploading: {why}")
    assert f"make train PRESET=cpu WEIGHTS={out} OVERWRITE=1 (on a CPU) or make train WEIGHTS={out} OVERWRITE=1" in last


def test_a_run_that_learnt_ends_with_the_command_that_bundles_it(tmp_path):
    (tmp_path / "split.json").write_text(json.dumps({"preset": "cpu", "trained_epochs": 1}))
    args, _ = presets.parse_args(["--preset", "cpu", "--out", str(tmp_path)])
    assert train.last_words([epoch("finetune", 0.1, 0.98)], tmp_path, args.command) == [
        f"next: make submission WEIGHTS={tmp_path} (the bundle to upload), then make evaluate WEIGHTS={tmp_path} "
        "(accuracy on the held-out images, clean and corrupted)"]


def drawn_history(rows, resumed_at, tmp_path, monkeypatch):
    """history.png's two axes, drawn from rows, kept open instead of written."""
    figures = []
    monkeypatch.setattr(data, "save_figure", lambda fig, path: figures.append(fig))
    train.save_history(rows, tmp_path, resumed_at)
    return figures[0].axes


def test_a_history_of_no_epochs_says_so_instead_of_empty_axes(tmp_path, monkeypatch):
    for ax in drawn_history([], (), tmp_path, monkeypatch):
        assert [t.get_text() for t in ax.texts] == ["no epochs trained"]


def test_the_history_marks_the_epoch_kept_and_where_the_run_was_resumed(tmp_path, monkeypatch):
    rows = [{**epoch("head", 1.5, 0.4), "epoch": 1}, {**epoch("head", 1.2, 0.5), "epoch": 2},
            {**epoch("finetune", 0.8, 0.7), "epoch": 1}, {**epoch("finetune", 0.6, 0.8), "epoch": 2},
            {**epoch("finetune", 0.7, 0.9), "epoch": 3}]
    for ax in drawn_history(rows, [3], tmp_path, monkeypatch):
        handles, labels = ax.get_legend_handles_labels()
        kept = handles[labels.index("kept: phase 2, epoch 2")]
        metric = "val_" + ax.get_title()
        assert list(kept.get_xdata()) == [4] and list(kept.get_ydata()) == [rows[3][metric]]  # phase 2's best loss
        assert list(handles[labels.index("resumed")].get_xdata()) == [3.5, 3.5]  # after the third epoch
        assert list(handles[labels.index("phase 2 begins")].get_xdata()) == [2.5, 2.5]


def test_weight_averaging_holds_the_rate_then_its_average_is_the_mean_of_every_step_since():
    steps, config = 10, {**presets.PRESETS["cpu"], "phase1_epochs": 2, "phase2_epochs": 4, "swa_epochs": 2}
    how = train.plan(config, steps)
    rates = [float(how["phase2_rate"](step)) for step in range(6 * steps)]
    peak, floor = config["learning_rate"], config["learning_rate"] * config["swa_rate"]
    assert rates[steps] == pytest.approx(peak) and all(a > b for a, b in pairwise(rates[steps:4 * steps + 1]))
    assert rates[4 * steps:] == pytest.approx([floor] * 2 * steps)  # the last 2 epochs held at swa_rate of the peak
    assert how["phase1_average_from"] == how["phase2_average_from"] == 4 * steps  # one AdamW over both phases
    seed = train.plan({**presets.PRESETS["seed"], "swa_epochs": 2}, steps)  # phase 2's own AdamW; phase 1 not averaged
    assert seed["phase1_average_from"] is None and seed["phase2_average_from"] == (presets.PRESETS["seed"]["phase2_epochs"] - 2) * steps
    assert float(seed["phase2_rate"](steps)) > float(seed["phase2_rate"](5 * steps))  # no restarts while averaging

    network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="softmax")])
    train.compile_network(network, 1e-2, presets.PRESETS["tiny"], [1.0] * 8, average_from=3)
    rng = np.random.default_rng(0)
    seen = RawWeights()
    network.fit(rng.normal(size=(48, 4)), np.eye(8)[rng.integers(0, 8, 48)], batch_size=8, callbacks=[seen], verbose=0)
    assert len(seen.steps) == 6
    for k, average in enumerate(network.optimizer._model_variables_moving_average):
        expected = np.mean([weights[k] for weights in seen.steps[3:]], axis=0)  # steps 3, 4 and 5, alike
        np.testing.assert_allclose(average.numpy(), expected, rtol=1e-5, atol=1e-7)
        assert not np.allclose(expected, seen.steps[-1][k], rtol=1e-3)


def test_batchnorm_refresh_gives_the_mean_statistics_of_one_pass_and_spares_frozen_layers():
    backbone = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.BatchNormalization()])
    frozen = keras.layers.BatchNormalization(trainable=False)
    network = keras.Sequential([keras.Input((6, 6, 3)), backbone, frozen, keras.layers.GlobalAveragePooling2D()])
    frozen.moving_mean.assign([5.0, 6.0, 7.0])  # a pretrained backbone's statistics
    rng = np.random.default_rng(0)
    batches = [(rng.normal(k, 1 + k, size=(8, 6, 6, 3)).astype(np.float32), None) for k in range(3)]
    train.refresh_batchnorm(network, batches)
    refreshed = backbone.layers[0]
    np.testing.assert_allclose(refreshed.moving_mean.numpy(), np.mean([x.mean((0, 1, 2)) for x, _ in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(refreshed.moving_variance.numpy(), np.mean([x.var((0, 1, 2)) for x, _ in batches], 0), rtol=1e-4)
    assert refreshed.momentum == 0.99  # put back as it was (Keras' default)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), [5.0, 6.0, 7.0])


def test_schedules_warm_up_for_one_epoch_then_decay_or_restart():
    steps = 10
    config = {**presets.PRESETS["cpu"], "phase1_epochs": 2, "phase2_epochs": 3}
    from_scratch = train.from_scratch_schedule(config, steps)  # one curve over both phases' 5 epochs
    rates = [float(from_scratch(step)) for step in range(5 * steps + 1)]
    peak = config["learning_rate"]
    assert rates[0] == pytest.approx(peak / 100)  # not a full-size first step on fresh AdamW moments
    assert all(a < b for a, b in pairwise(rates[:steps + 1])) and rates[steps] == pytest.approx(peak)
    assert all(a > b for a, b in pairwise(rates[steps:])) and rates[-1] < peak / 1000
    one_decay = train.finetune_schedule({**config, **presets.FINE_TUNING, "restart_epochs": None}, steps)  # over phase 2 alone
    top = presets.FINE_TUNING["phase2_learning_rate"]
    assert [float(one_decay(step)) for step in (0, steps)] == pytest.approx([top / 100, top])
    assert float(one_decay(3 * steps)) < top / 1000
    restarts = train.finetune_schedule(presets.PRESETS["seed"], steps)  # restart_epochs 5: back to the top at epoch 5
    top = presets.PRESETS["seed"]["phase2_learning_rate"]
    assert float(restarts(0)) == pytest.approx(top) and float(restarts(5 * steps - 1)) < top / 10
    assert float(restarts(5 * steps)) == pytest.approx(top)
