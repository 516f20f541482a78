"""Crash-safe training: every epoch checkpointed, so that a killed run resumes where it stopped, with
its own config, seed and split; a stop by Ctrl-C or SIGTERM says what is kept and how to go on."""
import json
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import keras

import data
from presets import make_config, with_todays_names


def log(message):
    """A line of the training log, timed."""
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def phase_name(phase):
    """The log's name of a phase the state calls head or finetune."""
    return "phase 1" if phase == "head" else "phase 2"


class Checkpoint(keras.callbacks.Callback):
    """Everything a killed run needs, saved at the end of every epoch, put back by --resume.

    A checkpoint is a folder: state.json (split, config, phase, epoch, history, the early-stopping
    and learning-rate bookkeeping), network.npz, optimizer.npz (AdamW's moments, its step and
    learning rate) and best.npz (the weights early stopping would restore). Each one is written
    into a new folder, then latest.json is renamed over the old pointer: a kill at any moment
    leaves the previous complete checkpoint.
    """

    def __init__(self, folder):
        super().__init__()
        self.folder = Path(folder)
        self.state, self.watched, self.current = None, {}, None  # current: the newest complete checkpoint

    def load(self):
        """The saved state, or None when there is no complete checkpoint."""
        pointer = self.folder / "latest.json"
        if not pointer.is_file():
            return None
        self.current = self.folder / json.loads(pointer.read_text())["folder"]
        return json.loads((self.current / "state.json").read_text())

    def save(self, network, with_optimizer=True):
        with signals_held():  # Ctrl-C stops the run once this checkpoint is complete, so it can be named
            self.state["saved"] = self.state.get("saved", 0) + 1
            name = f"{self.state['phase']}-{self.state['epoch']:03d}-{self.state['saved']}"
            folder = self.folder / name
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(folder / "network.npz", *network.get_weights())
            if with_optimizer and network.optimizer.built:  # unbuilt when a phase of 0 epochs went before
                np.savez(folder / "optimizer.npz", *[v.numpy() for v in network.optimizer.variables])
            stop = self.watched.get("early_stopping")
            if stop is not None and stop.best_weights is not None:
                np.savez(folder / "best.npz", *stop.best_weights)
            (folder / "state.json").write_text(json.dumps(self.state))  # a new folder: complete once latest.json names it
            data.write_json(self.folder / "latest.json", {"folder": name})
            for old in self.folder.iterdir():  # only now may the previous checkpoint go
                if old.is_dir() and old.name != name:
                    shutil.rmtree(old)
            self.current = folder

    def remove(self, then_stop=True):
        """Delete the checkpoint whole: a stop meanwhile waits, so it leaves no half of one."""
        with signals_held(then_stop):
            shutil.rmtree(self.folder, ignore_errors=True)

    def restore(self, network):
        """Put the checkpoint's network weights, and its optimizer state when it has one, back."""
        network.set_weights(arrays(self.current / "network.npz"))
        optimizer = network.optimizer
        if (self.current / "optimizer.npz").is_file():
            optimizer.build(network.trainable_variables)
            saved = arrays(self.current / "optimizer.npz")
            if len(saved) != len(optimizer.variables):  # say, a checkpoint from before weight averaging
                sys.exit(f"the optimizer state in {self.current} does not fit this run's optimizer ({len(saved)} "
                         f"arrays for {len(optimizer.variables)}): start afresh with OVERWRITE=1 (--overwrite)")
            for variable, value in zip(optimizer.variables, saved):
                variable.assign(value)
        if optimizer.use_ema and optimizer.built:
            # Saved at an epoch's end, the network held the average (SwapEMAWeights puts it there for
            # early stopping and this checkpoint) and the average's slots the weights in training:
            # swap them back. A phase's first epoch starts the average afresh from its weights.
            mid_phase = json.loads((self.current / "state.json").read_text())["epoch"] > 0
            for weight, average in zip(network.trainable_variables, optimizer._model_variables_moving_average):
                held = weight.numpy()
                if mid_phase:
                    weight.assign(average)
                average.assign(held)

    def on_train_begin(self, logs=None):
        # Keras resets EarlyStopping and ReduceLROnPlateau here; give them back what the killed run had
        stop = self.watched.get("early_stopping")
        if stop is not None and stop.monitor_op is None:
            stop._set_monitor_op()  # Keras 3.4 sets `best` at the first epoch's end, over a restored one
        for name, callback in self.watched.items():
            for key, value in self.state["callbacks"].get(name, {}).items():
                setattr(callback, key, value)
        if "early_stopping" in self.watched and self.current and (self.current / "best.npz").is_file():
            self.watched["early_stopping"].best_weights = arrays(self.current / "best.npz")

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.state["history"].append({"phase": self.state["phase"], "epoch": epoch + 1,
                                      **{k: float(v) for k, v in (logs or {}).items()},
                                      "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),  # next step's
                                      "seconds": round(time.time() - self.started, 1)})
        self.state["epoch"] = epoch + 1
        self.state["stopped"] = bool(self.model.stop_training)  # early stopping ended the phase here
        self.state["callbacks"] = {name: {key: float(getattr(callback, key)) for key in WATCHED[name]}
                                   for name, callback in self.watched.items()}
        self.save(self.model)


class Stopped(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM arrived: the run stops, its last complete checkpoint kept."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


_held = {"depth": 0, "signal": None}  # inside signals_held, and the signal that waits for its end


def _stop(signum, frame):
    if _held["depth"]:
        _held["signal"] = signum
    else:
        raise Stopped(signum)


@contextmanager
def stopping_cleanly():
    """SIGINT and SIGTERM raise Stopped instead of a KeyboardInterrupt or a silent end, and never
    while a checkpoint is written: then as soon as it is complete."""
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def signals_held(then_stop=True):
    """A stop that arrives inside waits for the end (with then_stop False, it is dropped: the run
    ends anyway)."""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
    if _held["depth"] == 0 and _held["signal"] is not None:
        signum, _held["signal"] = _held["signal"], None
        if then_stop:
            raise Stopped(signum)


# the bookkeeping of Keras' callbacks that a resumed run needs to stop where an unbroken one would
WATCHED = {"early_stopping": ("wait", "best", "best_epoch"), "plateau": ("wait", "best", "cooldown_counter")}


def arrays(path):
    """The arrays of an np.savez file, in the order they were saved."""
    with np.load(path) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def run_phase(network, epochs, train_ds, val_ds, checkpoint, config, plateau=None, follow=(), keep_last=False):
    """fit() from the checkpoint's epoch on, with early stopping after config["patience"] epochs
    without a better validation loss (0: none), ending with the best epoch's weights either way, or
    with keep_last the last epoch's, unstopped (and the callbacks in follow, which keep no state of their own)."""
    start, phase = checkpoint.state["epoch"], phase_name(checkpoint.state["phase"])
    if checkpoint.state.get("stopped") or start >= epochs:  # killed after early stopping, or no epochs asked for
        log(f"{phase}: no epochs left of {epochs}")
        return
    trainable = sum(int(np.prod(w.shape)) for w in network.trainable_weights)
    log(f"{phase}: epochs {start + 1} to {epochs}, {trainable:,} trainable parameters")
    # patience 0: no early stopping, the phase runs all its epochs (on a random start's one learning-rate
    # curve, validation is noisy while the rate is high) and still ends with its best epoch's weights
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config["patience"] or epochs, restore_best_weights=True,
                                         start_from_epoch=epochs - 1 if keep_last else 0, verbose=1)
    checkpoint.watched = {"early_stopping": stop, **({"plateau": plateau} if plateau else {})}
    # with weight averaging, validation scores the average, and at each epoch's end the average goes
    # into the network before early stopping keeps the best one: the phase ends with the best average
    average = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if network.optimizer.use_ema else []
    network.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=start,
                callbacks=[*follow, *average, *checkpoint.watched.values(), checkpoint],  # checkpoint last: it sees their state
                verbose=1 if sys.stdout.isatty() else 2)  # bars on a terminal, a line per epoch in logs


def start_or_resume(checkpoint, out, resume, overwrite, command):
    """The checkpoint's state when resuming, else None; refuses a folder whose work would be lost."""
    state = checkpoint.load()
    if resume and state is None:
        sys.exit(f"nothing to resume: {checkpoint.folder} holds no checkpoint. Start the run without RESUME=1 / --resume")
    if state is not None and not resume and not overwrite:
        sys.exit(f"{checkpoint.folder} holds an interrupted run ({phase_name(state['phase'])}, epoch {state['epoch']}). "
                 f"Continue it with {command.train(RESUME=1)} (--resume), or start afresh with "
                 f"{command.train(OVERWRITE=1)} (--overwrite)")
    if (out / "weights.npz").is_file() and not resume and not overwrite:
        other = next(f"{out}-{n}" for n in range(2, 1000) if not Path(f"{out}-{n}").exists())
        sys.exit(f"{out} holds the weights of a finished run. Keep them and train into another folder: "
                 f"{command.train(WEIGHTS=other)} (--out {other}); or replace them: {command.train(OVERWRITE=1)} (--overwrite)")
    return state if resume else None


def new_state(config, preset, seed, split):
    """A fresh run's state: its config (of preset, by name), seed and split, at phase 1's start."""
    return {"config": config, "preset": preset, "seed": seed, "split": split, "phase": "head", "epoch": 0, "history": [],
            "callbacks": {}}


def resumed(state, config):
    """A resumed run's config and seed: the checkpoint's own, with today's key names; settings added
    since come from config (the preset and flags given now). Marks where it resumed, for history.png."""
    saved = with_todays_names(state["config"])
    state["config"] = make_config(config, saved=saved)
    predates = [key for key in state["config"] if key not in saved]
    if predates:
        log(f"the checkpoint predates {', '.join(predates)}: from the preset and flags given now")
    state.setdefault("resumed_at", []).append(len(state["history"]))  # epochs done before it
    log(f"resuming from {phase_name(state['phase'])} epoch {state['epoch']}")
    return state["config"], state["seed"]


def check_same_data(state, checkpoint, images, labels, data_path, command):
    """Stop, naming the file to resume with, unless the checkpoint's split was made from these images."""
    if state["split"]["fingerprint"] != data.fingerprint(images, labels):
        made_from = state["split"].get("data")
        sys.exit(f"the checkpoint in {checkpoint.folder} was made from {made_from or 'other data'}, not {data_path}"
                 + (f": resume with {command.train(RESUME=1, DATA=made_from)}" if made_from else ""))


def stopped(signum, out, command):
    """The line a run stopped by a signal ends with: what its checkpoint keeps, and the command that goes on."""
    how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    checkpoint = Checkpoint(Path(out) / "checkpoint")
    state = checkpoint.load()
    if state is None:
        again = command.train(**({"OVERWRITE": 1} if (Path(out) / "weights.npz").is_file() else {}))
        return f"stopped by {how} before the first epoch's checkpoint, so nothing is kept: start again with {again}"
    config = with_todays_names(state["config"])
    if state["phase"] == "finetune" and state["epoch"] == 0:
        kept = "phase 1 complete, phase 2 not begun"
    else:
        epochs = config["phase1_epochs" if state["phase"] == "head" else "phase2_epochs"]
        kept = f"{phase_name(state['phase'])}, epoch {state['epoch']} of {epochs}"
    return f"stopped by {how}: {checkpoint.folder} keeps {kept}; continue with {command.train(RESUME=1)}"
