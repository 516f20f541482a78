"""The recipes train.py runs, as plain data, and the command line that picks and changes them.

    train.py --preset cpu --phase2-epochs 80     # a preset, then single values changed by flags

The `seed` recipe, presets that say what they change from it, a flag for each setting a user may
change (named after it), and make_config: the one place a run's config is assembled from a preset,
the flags and a resumed run's own. Command words the make lines our messages suggest.
"""
import argparse
import math
import sys

import data

# The seed recipe: our 11th-place entry (0.95 on the modified test set), EfficientNetV2L from ImageNet.
BASE = dict(
    backbone="EfficientNetV2L", width=1.0, backbone_weights="imagenet", input_size=96, phase1_input_size=None, dropout=0.3,
    colour_constancy=False, ibn=False, antialias=False,
    max_images=None, holdout=0.1, validation=0.1,
    batch_size=32, augment_ops=3, augment_magnitude=0.5, corrupt_p=(0.0, 0.0), clean_share=0.0, mix="none",
    colour_p=0.0, randconv_p=0.0, apr_p=0.0,
    focal_gamma=2.0, balance_classes=True, label_smoothing=0.0, weight_decay=1e-4, ema_momentum=0.0,
    swa_epochs=0, swa_rate=0.2,
    phase1_epochs=20, learning_rate=1e-4, phase2_epochs=30, patience=5,
)
# a pretrained backbone's fine-tuning, which random weights skip: phase 1's rate cut on plateaus, then
# phase 2 on the top `unfreeze` layers at its own rate, restarted every restart_epochs (None: one decay)
FINE_TUNING = dict(plateau_patience=2, phase2_learning_rate=1e-5, restart_epochs=5, unfreeze=150)
PRESETS = {
    "seed": {**BASE, **FINE_TUNING},
    "tiny": {**BASE, "backbone": "MobileNetV3Small", "backbone_weights": "none", "input_size": 64, "dropout": 0.2,
             "max_images": 400, "batch_size": 16, "phase1_epochs": 8, "learning_rate": 2e-3, "phase2_epochs": 8},
    # A CPU's hour is bound by memory speed: a small dense ResNet-10 (model.py) given many epochs gained more
    # than larger networks. It underfits, so what lets it fit more gained: cross-entropy, a high peak rate.
    # Phase 1 learns the cells at 64 px on RandAugment alone (a random network does not start learning
    # under the corruptions); phase 2 adds them at 96 px. No early stopping: the one learning-rate curve must
    # reach its end, and while the rate is high validation is too noisy to judge (a phase cut at its 24th
    # epoch of 72 lost 2 to 6 points). The runs behind it: experiments/2026-11-26-cpu-preset.md
    "cpu": {**BASE, "backbone": "ResNet10", "backbone_weights": "none", "phase1_input_size": 64, "dropout": 0.2,
            "batch_size": 64, "augment_ops": 2, "augment_magnitude": 0.3, "corrupt_p": (0.0, 0.2),
            "focal_gamma": 0.0, "label_smoothing": 0.1, "weight_decay": 0.05,
            "phase1_epochs": 36, "learning_rate": 3e-3, "phase2_epochs": 72, "patience": 0},
}
ABOUT = {  # what each preset is for, one line each in --help and in the messages that suggest one
    "seed": "the full recipe: EfficientNetV2L fine-tuned from ImageNet; needs a GPU and a 470 MB download",
    "tiny": "a smoke run of about two minutes on 2 CPU cores, for tests: MobileNetV3Small on 400 images",
    "cpu": "a CPU without internet: our ResNet10 from random weights (how long: BENCHMARKS.md, or benchmark.py train-speed)",
}
RENAMED = {"epochs_head": "phase1_epochs", "epochs_finetune": "phase2_epochs", "lr_head": "learning_rate",
           "lr_finetune": "phase2_learning_rate", "head_input_size": "phase1_input_size"}  # old name: new, in old checkpoints
ARCHITECTURE_KEYS = ("backbone", "width", "input_size", "dropout", "colour_constancy", "ibn", "antialias")  # what model.py rebuilds from


def with_todays_names(config):
    """A config with the keys older train.py named otherwise renamed (RENAMED)."""
    return {RENAMED.get(key, key): value for key, value in config.items()}


def make_config(preset, flags=None, saved=None):
    """The config a run trains with. preset: a name in PRESETS, or a config made before; flags: {key: value}
    of the flags given (None: not given); saved: a resumed run's config, which wins over both (settings
    added since it was saved come from the preset and flags). A pretrained backbone gets FINE_TUNING's
    settings where the config lacks them."""
    config = dict(PRESETS[preset] if isinstance(preset, str) else preset)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key == "corrupt_p":  # the flag sets phase 2's share; phase 1 keeps the preset's
            value = (config["corrupt_p"][0], value)
        if key == "clean_share" and isinstance(value, (list, tuple)):  # one share, or phase 2's first and last
            value = value[0] if len(value) == 1 else tuple(value)
        config[key] = value
    if saved is not None:
        config = {**config, **with_todays_names(saved)}
    return {**FINE_TUNING, **config} if config["backbone_weights"] != "none" else config


# ---------------------------------------------------------------------------------------------
# the command line: a flag for each preset key it may change, named after it

def checked(kind, ok, rule):
    """An argparse type: kind(text), refused (naming the flag) unless ok(value)."""
    def parse(text):
        value = kind(text)  # a ValueError: argparse says "invalid int value" or "invalid float value"
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"{text}: {rule}")
        return value
    parse.__name__ = kind.__name__
    return parse


COUNT = checked(int, lambda n: n >= 0, "0 or more")
SHARE = checked(float, lambda x: 0 <= x <= 1, "a share of the images, from 0 to 1")
PIXELS = checked(int, lambda n: n >= 32, "the backbones take at least 32 pixels (the images are 96)")
FLAGS = {  # preset key: its flag's argparse settings; --phase1-epochs sets phase1_epochs, and so on
    "backbone": dict(metavar="NAME", help="a keras.applications network, or our ResNet10: {backbones}"),
    "width": dict(type=checked(float, lambda x: x > 0, "a multiplier of the channels, above 0 (1.0: as published)"),
                  help="the MobileNets' channel multiplier, Keras' alpha"),
    "input_size": dict(type=PIXELS, help="pixels the network sees, resized from 96"),
    "phase1_input_size": dict(type=PIXELS, help="pixels the network sees in phase 1 only, for cheaper epochs "
                                                "(progressive resizing; None: --input-size)"),
    "backbone_weights": dict(metavar="imagenet|none|FILE", help="imagenet (download), none (random start), or a "
                                                                "local .h5 file of the backbone without its top"),
    "phase1_epochs": dict(type=COUNT, help="phase 1's epochs (0 skips it): a pretrained backbone frozen under its "
                                           "new head; random weights: the whole network, at --phase1-input-size"),
    "phase2_epochs": dict(type=COUNT, help="phase 2's epochs (0 skips it): a pretrained backbone's top --unfreeze "
                                           "layers trained too; random weights: the whole network, with the corruptions"),
    "unfreeze": dict(type=COUNT, help="a pretrained backbone's layers trained in phase 2, counted from the top"),
    "batch_size": dict(type=checked(int, lambda n: n >= 1, "1 or more"), help="images per step on each device"),
    "learning_rate": dict(type=checked(float, lambda x: x > 0, "a learning rate, above 0"),
                          help="phase 1's learning rate; from random weights, the peak of the one curve over both phases"),
    "focal_gamma": dict(type=checked(float, lambda x: x >= 0, "0 or more (0: cross-entropy)"),
                        help="the focal loss' gamma; 0 gives cross-entropy, weighted by class as the focal loss is"),
    "balance_classes": dict(action=argparse.BooleanOptionalAction,
                            help="weigh each class' images by its inverse frequency in the loss"),
    "label_smoothing": dict(type=checked(float, lambda x: 0 <= x < 1, "from 0 (hard labels) to below 1"),
                            help="share of each label's weight spread over the other classes"),
    "weight_decay": dict(type=checked(float, lambda x: x >= 0, "0 (none) or more"),
                         help="AdamW's decoupled weight decay of the kernels"),
    "ema_momentum": dict(type=checked(float, lambda x: 0 <= x < 1, "from 0 (no average) to below 1"),
                         help="validate and keep a moving average of the weights with this momentum (0.998: over "
                              "about 500 steps); 0: none"),
    "swa_epochs": dict(type=COUNT, help="phase 2's last N epochs at a constant rate (--swa-rate), ending with the mean of "
                                        "the weights of each of their steps, BatchNorm's statistics then recomputed for it "
                                        "(stochastic weight averaging); 0: none"),
    "swa_rate": dict(type=checked(float, lambda x: 0 < x <= 1, "a share of the peak rate, above 0 and at most 1"),
                     help="the rate --swa-epochs holds, as a share of the curve's peak"),
    "patience": dict(type=COUNT, help="epochs without a better validation loss before a phase stops early; 0: "
                                      "never. The best epoch is kept either way; with --swa-epochs, phase 2 runs "
                                      "to its end and keeps its last"),
    "mix": dict(help="mix each training batch's images and labels in pairs: MixUp or CutMix"),
    "corrupt_p": dict(type=SHARE, help="phase 2: each corruption's share of the images"),
    "colour_p": dict(type=SHARE, help="phase 2: each broad colour change's share of the images (hue turned anywhere, "
                                      "channels shuffled or shifted by up to half the range, solarized, coloured cut-outs)"),
    "randconv_p": dict(type=SHARE, help="phase 2: share of the images through a random convolution (RandConv)"),
    "apr_p": dict(type=SHARE, help="phase 2: share of the images given another's Fourier amplitude (APR-P)"),
    "colour_constancy": dict(action=argparse.BooleanOptionalAction,
                             help="the network's first layer maps each image's colours to a reference frame"),
    "ibn": dict(action=argparse.BooleanOptionalAction,
                help="ResNet10: instance normalisation on half the channels of the stem and stages 1-2 (IBN-a)"),
    "antialias": dict(action=argparse.BooleanOptionalAction,
                      help="ResNet10: a fixed blur before the stride-4 stem (BlurPool's anti-aliasing)"),
    "clean_share": dict(type=SHARE, nargs="+", metavar="SHARE",
                        help="share of the images spared the corruptions; two values: phase 2's first and last "
                             "epoch's, a straight line between"),
}


def preset_values(key):
    """Each preset's value of a setting, for --help: "seed 20, tiny 8, cpu 36"."""
    values = {name: preset[key] for name, preset in PRESETS.items() if key in preset}
    if key == "corrupt_p":
        values = {name: value[1] for name, value in values.items()}
    if len(set(map(str, values.values()))) == 1:
        return f"every preset: {next(iter(values.values()))}" if len(values) == len(PRESETS) else \
            f"{', '.join(values)}: {next(iter(values.values()))}; pretrained backbones only"
    return ", ".join(f"{name} {value}" for name, value in values.items())


def parse_args(argv=None, description=None):
    """train.py's command line: (args, the config it asks for)."""
    from augment import MIXES  # the modules that implement the choices name them
    from model import BACKBONES
    choices = {"backbone": list(BACKBONES), "mix": list(MIXES)}
    argv = sys.argv[1:] if argv is None else list(argv)
    epilog = "presets:\n" + "\n".join(f"  {name:5} {about}" for name, about in ABOUT.items())
    p = data.ArgumentParser(prog="train.py", description=description, epilog=epilog,
                            allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/training_set.npz", help="the challenge's training_set.npz (default: %(default)s)")
    p.add_argument("--preset", default="seed", choices=PRESETS, help="the recipe; flags change single values of it "
                                                                     "(default: %(default)s; listed below)")
    for key, settings in FLAGS.items():
        settings = {**settings, "choices": choices.get(key)} if key in choices else settings
        if "type" in settings:
            settings = {"metavar": {"int": "N", "float": "X"}[settings["type"].__name__], **settings}
        text = settings["help"].format(backbones=", ".join(BACKBONES))
        p.add_argument("--" + key.replace("_", "-"), dest=key, **{**settings, "help": f"{text} ({preset_values(key)})"})
    for old, key in RENAMED.items():  # the names of older train.py, still taken
        if key in FLAGS:
            p.add_argument("--" + old.replace("_", "-"), dest=key, **{**FLAGS[key], "help": argparse.SUPPRESS})
    p.add_argument("--seed", type=int, default=0, help="fixes the initial weights and the augmentation (default: %(default)s)")
    p.add_argument("--split-seed", type=int, default=0, help="fixes the cleaning sample and the held-out images "
                                                             "(default: %(default)s)")
    p.add_argument("--out", default="weights", help="folder for weights.npz, split.json and the history (default: %(default)s)")
    p.add_argument("--keep-outliers", action="store_true", help="train on every image, outliers included")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run checkpointed in --out (RESUME=1)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out, finished or interrupted (OVERWRITE=1)")
    args = p.parse_args(argv)
    if args.clean_share is not None and len(args.clean_share) > 2:
        p.error(f"--clean-share {' '.join(map(str, args.clean_share))}: one share, or two (phase 2's first and last epoch's)")
    config = make_config(args.preset, {key: getattr(args, key) for key in FLAGS})
    if config["swa_epochs"] > config["phase2_epochs"]:
        p.error(f"--swa-epochs {config['swa_epochs']}: phase 2 has {config['phase2_epochs']} epochs; average at most that many")
    if config["swa_epochs"] and config["ema_momentum"]:
        p.error("--swa-epochs and --ema-momentum are two ways of averaging the weights: choose one")
    args.command = Command(args.preset, args.data, args.out, without(argv, {"--data", "--preset", "--out", "--resume", "--overwrite"}))
    return args, config


MAKE_DEFAULTS = {"PRESET": "seed", "DATA": "data/training_set.npz", "WEIGHTS": "weights",
                 "SUBMISSION": "submission/submission.zip"}  # the Makefile's


class Command:
    """The user's own make train (preset, data, weights folder and flags), so that the commands a
    message suggests change only what they must."""

    def __init__(self, preset=None, data_path=None, out=None, flags=()):
        self.variables = {"PRESET": preset, "DATA": data_path, "WEIGHTS": out}
        self.flags = list(flags)

    def train(self, keep_flags=True, flags=None, **variables):
        """make train as the user ran it, with flags ({"--flag": "value"}) and variables set."""
        kept = without(self.flags, flags or {}) if keep_flags else []
        words = kept + [f"{k} {v}" for k, v in (flags or {}).items()]
        return make_command("train", **{**self.variables, **variables}, ARGS=" ".join(words) or None)

    def then(self, target):
        return make_command(target, WEIGHTS=self.variables["WEIGHTS"], DATA=self.variables["DATA"])


def make_command(target, **variables):
    """make target with the variables that differ from the Makefile's defaults."""
    words = [f'{k}="{v}"' if " " in str(v) or k == "ARGS" else f"{k}={v}"
             for k, v in variables.items() if v is not None and str(v) != MAKE_DEFAULTS.get(k)]
    return " ".join(["make", target, *words])


def without(argv, names):
    """argv without the flags in names and their values."""
    kept, skipping = [], False
    for word in argv:
        if word.startswith("--"):
            skipping = word.split("=")[0] in names
        if not skipping:
            kept.append(word)
    return kept
