"""checkpoint.py: a killed or stopped run resumes where it stopped, a finished one is kept, no kill half-writes a checkpoint."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import keras
import tensorflow as tf

import augment
import data
import model
import presets
import train
from checkpoint import Checkpoint, Stopped, run_phase, stopping_cleanly
from conftest import ROOT, Killed, RawWeights, latest_checkpoint


def run_train(data_path, out, *flags):
    """train.py with the tiny preset, shortened to 3 + 3 epochs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--data", str(data_path), "--preset", "tiny",
                             "--phase1-epochs", "3", "--phase2-epochs", "3", "--out", str(out), "--keep-outliers",
                             *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_and_ends_like_an_unbroken_one(learnable_npz, tmp_path):
    out = tmp_path / "weights"
    first = run_train(learnable_npz, out)
    while first.poll() is None:  # wait for the second epoch of phase 1 to start, then kill without warning
        state = latest_checkpoint(out)
        if state and state["phase"] == "head" and state["epoch"] >= 1:
            time.sleep(0.5)
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    log = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{log[-3000:]}"
    state = latest_checkpoint(out)
    assert not (out / "weights.npz").exists()

    # as a checkpoint of an older train.py: its keys of older names, and without a setting added since,
    # which the preset given supplies. Its phase 2 of 2 epochs, not the 3 given now, shows that its config rules
    state_file = out / "checkpoint" / json.loads((out / "checkpoint" / "latest.json").read_text())["folder"] / "state.json"
    older = json.loads(state_file.read_text())
    del older["config"]["balance_classes"]
    older["config"].update(phase2_learning_rate=1e-3, restart_epochs=2, unfreeze=1000, plateau_patience=2)  # tiny had them
    for old, new in presets.RENAMED.items():
        older["config"][old] = older["config"].pop(new)
    older["config"]["epochs_finetune"] = 2
    state_file.write_text(json.dumps(older))

    refused = run_train(learnable_npz, out)
    message = refused.communicate()[0]
    assert refused.returncode != 0 and "RESUME=1" in message and "--overwrite" in message and "OVERWRITE=1" in message

    resumed = run_train(learnable_npz, out, "--resume")
    log = resumed.communicate()[0]
    assert resumed.returncode == 0, log[-3000:]
    assert f"resuming from phase 1 epoch {state['epoch']}" in log
    assert "the checkpoint predates balance_classes:" in log  # the only one: the old names were understood
    assert "phase1_epochs: 3" in log and "focal_gamma" not in log  # the start lists what differs from the preset
    assert f"make submission WEIGHTS={out}" in log  # what to run next
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert history[:len(state["history"])] == [{k: str(v) for k, v in row.items()} for row in state["history"]]
    for phase, epochs in (("head", 3), ("finetune", 2)):  # every epoch once, in order, up to where early stopping says
        rows = [row for row in history if row["phase"] == phase]
        assert [int(row["epoch"]) for row in rows] == list(range(1, len(rows) + 1))
        assert len(rows) == epochs_until_early_stop([float(row["val_loss"]) for row in rows], epochs,
                                                    presets.PRESETS["tiny"]["patience"])
    split = json.loads((out / "split.json").read_text())
    assert split["holdout"] == state["split"]["holdout"]
    assert split["config"]["balance_classes"] == presets.PRESETS["tiny"]["balance_classes"]
    assert split["config"]["phase2_epochs"] == 2 and "epochs_finetune" not in split["config"]
    assert not (out / "checkpoint").exists()
    model.Model(out)  # the finished weights load


@pytest.mark.slow
@pytest.mark.parametrize("stop, how", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_or_sigterm_ends_with_one_line_naming_the_checkpoint_and_the_command_that_resumes(
        learnable_npz, tmp_path, stop, how):
    out = tmp_path / "weights"
    run = run_train(learnable_npz, out)
    while run.poll() is None and not latest_checkpoint(out):  # phase 1's first epoch is kept
        time.sleep(0.2)
    run.send_signal(stop)
    log = run.communicate()[0]
    assert run.returncode == 128 + stop, log[-3000:]  # as a shell reports a process its signal ended
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    state = latest_checkpoint(out)
    resume = (f'make train PRESET=tiny DATA={learnable_npz} WEIGHTS={out} RESUME=1 '
              f'ARGS="--phase1-epochs 3 --phase2-epochs 3 --keep-outliers"')  # the user's own variables and flags
    last = log.strip().splitlines()[-1]
    assert last.endswith(f"stopped by {how}: {out / 'checkpoint'} keeps phase 1, epoch {state['epoch']} of 3; "
                         f"continue with {resume}"), last


def test_a_stop_while_a_checkpoint_is_written_waits_for_it_to_be_complete(tmp_path, monkeypatch):
    network = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(8, activation="softmax")])
    train.compile_network(network, 1e-3, presets.PRESETS["tiny"], [1.0] * 8)
    checkpoint = Checkpoint(tmp_path / "checkpoint")
    checkpoint.state = {"phase": "head", "epoch": 1, "history": [], "callbacks": {}}
    real_savez = np.savez
    def savez_then_ctrl_c(file, *arrays):
        real_savez(file, *arrays)
        os.kill(os.getpid(), signal.SIGINT)  # arrives with the checkpoint's first file on disk
    monkeypatch.setattr(np, "savez", savez_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    with stopping_cleanly(), pytest.raises(Stopped):
        checkpoint.save(network, with_optimizer=False)
    monkeypatch.undo()
    assert Checkpoint(tmp_path / "checkpoint").load()["epoch"] == 1  # complete, and named by latest.json
    assert signal.getsignal(signal.SIGINT) is before  # pytest's again


def epochs_until_early_stop(val_losses, epochs, patience):
    """How many epochs an unbroken run with Keras' EarlyStopping on these losses would train."""
    best, wait = float("inf"), 0
    for epoch, loss in enumerate(val_losses):
        best, wait = (loss, 0) if loss < best else (best, wait + 1)
        if wait >= patience:
            return epoch + 1
    return epochs


def test_resume_without_a_checkpoint_says_so(learnable_npz, tmp_path):
    with pytest.raises(SystemExit, match="nothing to resume"):
        train.train(dict(presets.PRESETS["tiny"]), learnable_npz, tmp_path, resume=True)


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path):
    out = tmp_path / "weights"
    out.mkdir()
    (out / "weights.npz").write_bytes(b"45 minutes of training")
    args, config = presets.parse_args(["--preset", "tiny", "--out", str(out)])
    with pytest.raises(SystemExit) as error:
        train.train(config, tmp_path / "absent.npz", out, command=args.command)  # refused before the data is read
    assert f"WEIGHTS={out}-2" in str(error.value) and "OVERWRITE=1" in str(error.value) and "--overwrite" in str(error.value)
    assert (out / "weights.npz").read_bytes() == b"45 minutes of training"
    with pytest.raises(data.DataError):  # --overwrite goes on, to the data
        train.train(config, tmp_path / "absent.npz", out, overwrite=True, command=args.command)


def test_a_kill_while_checkpointing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    network = model.build_network("MobileNetV3Small")
    train.compile_network(network, 1e-3, presets.PRESETS["tiny"], [1.0] * 8)
    checkpoint = Checkpoint(tmp_path / "checkpoint")
    checkpoint.state = {"phase": "head", "epoch": 1, "history": [], "callbacks": {}}
    checkpoint.save(network, with_optimizer=False)

    checkpoint.state = {"phase": "head", "epoch": 2, "history": [], "callbacks": {}}
    def die(*args, **kwargs):
        raise Killed()
    monkeypatch.setattr(data, "write_json", die)  # dies after the files, before the pointer moves
    with pytest.raises(Killed):
        checkpoint.save(network, with_optimizer=False)
    monkeypatch.undo()
    reloaded = Checkpoint(tmp_path / "checkpoint")
    assert reloaded.load()["epoch"] == 1
    reloaded.restore(network)


def phase_on_noise(tmp_path, epochs, patience, state=None):
    """run_phase on a small dense network that cannot learn (learning rate 0): val_loss never improves."""
    network = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(8, activation="softmax")])
    config = {**presets.PRESETS["tiny"], "patience": patience}
    train.compile_network(network, 0.0, config, [1.0] * 8)
    rng = np.random.default_rng(0)
    ds = augment.make_dataset(rng.integers(0, 256, (32, 96, 96, 3), dtype=np.uint8), rng.integers(0, 8, 32), 16)
    checkpoint = Checkpoint(tmp_path / "checkpoint")
    checkpoint.state = state or {"phase": "head", "epoch": 0, "history": [], "callbacks": {}}
    if state:
        checkpoint.load()
        checkpoint.restore(network)
    run_phase(network, epochs, ds, ds, checkpoint, config)
    return checkpoint


def test_early_stopping_waits_its_patience_also_across_a_resume(tmp_path):
    # val_loss first sets the best, then never improves: patience 2 stops after epoch 3
    assert len(phase_on_noise(tmp_path / "a", epochs=6, patience=2).state["history"]) == 3
    # killed after epoch 2, resumed: the wait already spent counts, so it still stops after epoch 3
    first = phase_on_noise(tmp_path / "b", epochs=2, patience=2)
    assert first.state["callbacks"]["early_stopping"]["wait"] == 1
    resumed = phase_on_noise(tmp_path / "b", epochs=6, patience=2, state=first.load())
    assert [row["epoch"] for row in resumed.state["history"]] == [1, 2, 3]
    assert resumed.state["stopped"]


def test_patience_0_runs_every_epoch_and_still_keeps_the_best_weights(tmp_path):
    # learning rate 0: val_loss never improves on epoch 1, so the phase must not stop, only end
    checkpoint = phase_on_noise(tmp_path, epochs=5, patience=0)
    assert [row["epoch"] for row in checkpoint.state["history"]] == [1, 2, 3, 4, 5]
    assert not checkpoint.state["stopped"]
    assert checkpoint.state["callbacks"]["early_stopping"]["best_epoch"] == 0  # what the phase ends with


def test_the_cpu_preset_runs_every_epoch_of_its_learning_rate_curve(tmp_path):
    # its rate decays once to zero, and validation is noisy while it is high: a phase stopped early
    # never anneals. On noise val_loss never improves, which stops any patience short of the phase.
    checkpoint = phase_on_noise(tmp_path, epochs=12, patience=presets.PRESETS["cpu"]["patience"])
    assert len(checkpoint.state["history"]) == 12 and not checkpoint.state["stopped"]


MOMENTUM, STEPS_PER_EPOCH = 0.8, 4

AVERAGING = {**presets.PRESETS["tiny"], "ema_momentum": MOMENTUM, "patience": 10}


def averaging_network():
    network = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.Rescaling(1 / 255),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(8, activation="softmax")])
    train.compile_network(network, 1e-2, AVERAGING, [1.0] * 8)
    return network


def averaging_phase(folder, *follow):
    """run_phase of 3 epochs with weight averaging; returns the network, the checkpoint, the weights in
    training after every step and their average, computed here."""
    rng = np.random.default_rng(0)
    ds = augment.make_dataset(rng.integers(0, 256, (16 * STEPS_PER_EPOCH, 96, 96, 3), dtype=np.uint8),
                              rng.integers(0, 8, 16 * STEPS_PER_EPOCH), 16)
    network, raw = averaging_network(), RawWeights()
    checkpoint = Checkpoint(folder)
    checkpoint.state = {"phase": "head", "epoch": 0, "history": [], "callbacks": {}}
    try:
        run_phase(network, 3, ds, ds, checkpoint, AVERAGING, follow=[raw, *follow])
    except Killed:
        pass
    averages, average = [], raw.steps[0]  # Keras' first step copies the weights
    for step in raw.steps:
        average = [MOMENTUM * a + (1 - MOMENTUM) * w for a, w in zip(average, step)]
        averages.append(average)
    return network, checkpoint, raw.steps, averages, ds


def test_weight_averaging_validates_and_keeps_the_best_average(tmp_path):
    network, checkpoint, steps, averages, ds = averaging_phase(tmp_path / "whole")
    best = int(checkpoint.state["callbacks"]["early_stopping"]["best_epoch"])
    kept = averages[(best + 1) * STEPS_PER_EPOCH - 1]
    for weight, expected, trained in zip(network.trainable_weights, kept, steps[(best + 1) * STEPS_PER_EPOCH - 1]):
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-4, atol=1e-6)  # the phase ends with the average
        assert not np.allclose(expected, trained, rtol=1e-3)  # which is not the weights in training
    assert network.evaluate(ds, verbose=0)[0] == pytest.approx(checkpoint.state["history"][best]["val_loss"], rel=1e-5)

    checkpoint.state.update(phase="finetune", epoch=0)  # the next phase starts its average from its first weights
    checkpoint.save(network)
    following = averaging_network()
    reloaded = Checkpoint(tmp_path / "whole")
    reloaded.load()
    reloaded.restore(following)
    for weight, average, expected in zip(following.trainable_weights, following.optimizer._model_variables_moving_average, kept):
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(average.numpy(), weight.numpy())


def test_weight_averaging_resumes_with_the_weights_in_training(tmp_path):
    def die(epoch, logs=None):
        if epoch == 1:
            raise Killed()
    _, _, steps, averages, _ = averaging_phase(tmp_path / "killed", keras.callbacks.LambdaCallback(on_epoch_begin=die))
    assert len(steps) == STEPS_PER_EPOCH  # killed after the first epoch's checkpoint
    resumed = averaging_network()  # training goes on from the weights in training, averaging from the average
    reloaded = Checkpoint(tmp_path / "killed")
    reloaded.load()
    reloaded.restore(resumed)
    for weight, average, trained, expected in zip(resumed.trainable_weights, resumed.optimizer._model_variables_moving_average,
                                                  steps[-1], averages[-1]):
        np.testing.assert_allclose(weight.numpy(), trained, rtol=1e-6, atol=1e-7)  # SwapEMAWeights swaps by sums
        np.testing.assert_allclose(average.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_stochastic_weight_averaging_resumed_ends_with_the_mean_of_every_step_of_its_hold(tmp_path):
    config = {**presets.PRESETS["tiny"], "swa_epochs": 2, "patience": 0}
    def averaging():  # the mean from the second of three epochs on
        network = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.Rescaling(1 / 255),
                                    keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(8, activation="softmax")])
        train.compile_network(network, 1e-2, config, [1.0] * 8, average_from=STEPS_PER_EPOCH)
        return network
    def die(epoch, logs=None):
        if epoch == 2:
            raise Killed()
    rng = np.random.default_rng(0)
    ds = augment.make_dataset(rng.integers(0, 256, (16 * STEPS_PER_EPOCH, 96, 96, 3), dtype=np.uint8),
                              rng.integers(0, 8, 16 * STEPS_PER_EPOCH), 16)
    checkpoint, before, after = Checkpoint(tmp_path / "killed"), RawWeights(), RawWeights()
    checkpoint.state = {"phase": "finetune", "epoch": 0, "history": [], "callbacks": {}}
    with pytest.raises(Killed):  # killed in the hold, after its first epoch's checkpoint
        run_phase(averaging(), 3, ds, ds, checkpoint, config, follow=[before, keras.callbacks.LambdaCallback(on_epoch_begin=die)],
                  keep_last=True)
    resumed, reloaded = averaging(), Checkpoint(tmp_path / "killed")
    reloaded.state = reloaded.load()
    reloaded.restore(resumed)
    run_phase(resumed, 3, ds, ds, reloaded, config, follow=[after], keep_last=True)
    steps = before.steps + after.steps
    assert len(steps) == 3 * STEPS_PER_EPOCH
    for k, weight in enumerate(resumed.trainable_weights):
        expected = np.mean([step[k] for step in steps[STEPS_PER_EPOCH:]], axis=0)  # both runs' steps of the hold, alike
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-4, atol=1e-6)
        assert not np.allclose(expected, steps[-1][k], rtol=1e-3)  # not the weights in training
    assert reloaded.state["callbacks"]["early_stopping"]["best_epoch"] == 2  # the last epoch kept, whatever its loss


def test_a_checkpoint_restores_the_optimizer_state_also_under_mirrored_strategy(tmp_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    def compiled():
        with strategy.scope():
            network = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.GlobalAveragePooling2D(),
                                        keras.layers.Dense(8, activation="softmax")])
            train.compile_network(network, 1e-3, presets.PRESETS["tiny"], [1.0] * 8)
        return network
    first = compiled()
    rng = np.random.default_rng(0)
    first.fit(rng.uniform(0, 255, (32, 96, 96, 3)), np.eye(8)[rng.integers(0, 8, 32)], epochs=2, verbose=0)
    checkpoint = Checkpoint(tmp_path / "checkpoint")
    checkpoint.state = {"phase": "head", "epoch": 2, "history": [], "callbacks": {}}
    checkpoint.save(first)

    second = compiled()
    with strategy.scope():
        reloaded = Checkpoint(tmp_path / "checkpoint")
        reloaded.load()
        reloaded.restore(second)
    assert int(second.optimizer.iterations.numpy()) == int(first.optimizer.iterations.numpy()) > 0
    for a, b in zip(first.optimizer.variables + first.weights, second.optimizer.variables + second.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
