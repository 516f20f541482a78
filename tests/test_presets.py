"""presets.py's command line: each flag sets only its own preset key, and a value out of range is refused in one line."""
import pytest

import presets


def test_command_line_options_change_only_their_own_preset_values():
    _, config = presets.parse_args(["--preset", "cpu", "--backbone", "MobileNetV3Large", "--width", "0.75",
                                  "--input-size", "80", "--phase1-epochs", "3", "--clean-share", "0.25", "--corrupt-p", "0.3"])
    changed = {key for key in config if config[key] != presets.PRESETS["cpu"][key]}
    assert changed == {"backbone", "width", "input_size", "phase1_epochs", "clean_share", "corrupt_p"}
    assert (config["backbone"], config["width"], config["input_size"], config["phase1_epochs"]) == ("MobileNetV3Large", 0.75, 80, 3)
    assert (config["clean_share"], config["corrupt_p"]) == (0.25, (0.0, 0.3))  # --corrupt-p: phase 2's share
    falling = presets.parse_args(["--preset", "cpu", "--clean-share", "0.5", "0"])[1]["clean_share"]
    assert falling == (0.5, 0.0)  # phase 2's first and last epoch's
    assert presets.parse_args(["--preset", "cpu", "--phase1-input-size", "48"])[1]["phase1_input_size"] == 48
    loss_and_rate = presets.parse_args(["--preset", "cpu", "--focal-gamma", "1.5", "--learning-rate", "4e-3", "--label-smoothing", "0",
                                      "--weight-decay", "0.05", "--ema-momentum", "0.998", "--patience", "0"])[1]
    assert (loss_and_rate["focal_gamma"], loss_and_rate["learning_rate"], loss_and_rate["label_smoothing"],
            loss_and_rate["weight_decay"], loss_and_rate["ema_momentum"], loss_and_rate["patience"]) == (1.5, 4e-3, 0.0, 0.05, 0.998, 0)
    assert presets.PRESETS["cpu"]["balance_classes"] and not presets.parse_args(["--preset", "cpu", "--no-balance-classes"])[1]["balance_classes"]


def test_every_flag_sets_the_preset_key_it_is_named_after():
    for key in presets.FLAGS:
        assert key in presets.BASE or key in presets.FINE_TUNING, key
    _, config = presets.parse_args(["--preset", "seed", "--phase2-epochs", "4", "--unfreeze", "20", "--batch-size", "8"])
    assert (config["phase2_epochs"], config["unfreeze"], config["batch_size"]) == (4, 20, 8)


def test_the_flags_of_older_versions_still_work():
    _, config = presets.parse_args(["--preset", "cpu", "--epochs-head", "3", "--epochs-finetune", "4", "--lr-head", "1e-3",
                                  "--head-input-size", "48"])
    assert (config["phase1_epochs"], config["phase2_epochs"], config["learning_rate"], config["phase1_input_size"]) == (3, 4, 1e-3, 48)
    assert not {"epochs_head", "epochs_finetune", "lr_head", "head_input_size"} & set(config)


def test_presets_carry_only_the_keys_they_use():
    assert set(presets.PRESETS["seed"]) == set(presets.BASE) | set(presets.FINE_TUNING)
    for name in ("tiny", "cpu"):  # from random weights: nothing to fine-tune
        assert presets.PRESETS[name]["backbone_weights"] == "none" and set(presets.PRESETS[name]) == set(presets.BASE)


@pytest.mark.parametrize("refused", [
    ["--width", "0"], ["--input-size", "16"], ["--phase1-input-size", "16"], ["--head-input-size", "16"],  # too small
    ["--clean-share", "1.5"], ["--clean-share", "0.5", "-1"], ["--corrupt-p", "-0.1"],  # not shares
    ["--clean-share", "0.5", "0.2", "0"],  # a line needs two ends, no more
    ["--learning-rate", "0"], ["--lr-head", "0"], ["--learning-rate", "nan"], ["--focal-gamma", "-1"],  # no rate; no focal loss
    ["--label-smoothing", "1"], ["--label-smoothing", "-0.1"],  # no label left; not a share
    ["--weight-decay", "-1e-4"],  # a decay that grows the weights
    ["--ema-momentum", "1"], ["--ema-momentum", "-0.1"],  # an average that never moves; not a momentum
    ["--swa-epochs", "73"], ["--swa-rate", "0"], ["--swa-rate", "1.5"],  # past phase 2's 72 epochs; no rate; past the peak
    ["--swa-epochs", "4", "--ema-momentum", "0.99"],  # two averages of one set of weights
    ["--phase1-epochs", "-1"], ["--phase2-epochs", "-2"], ["--epochs-head", "-1"], ["--unfreeze", "-1"], ["--patience", "-1"],  # no negative counts
    ["--batch-size", "0"], ["--phase1-epochs", "1.5"],  # no empty batch; not a count
])
def test_out_of_range_values_are_refused_naming_the_flag_in_one_line(refused, capsys):
    with pytest.raises(SystemExit):
        presets.parse_args(["--preset", "cpu", *refused])
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and refused[0] in error[0] and "--help lists every option" in error[0]  # no usage above it


def test_help_shows_each_presets_purpose_and_every_default(capsys):
    with pytest.raises(SystemExit):
        presets.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, about in presets.ABOUT.items():
        assert f"{name} {about}" in text
    assert "(seed 20, tiny 8, cpu 36)" in text and "(default: weights)" in text
    phase1 = text.rsplit("--phase1-epochs N", 1)[1].split("--phase2-epochs")[0]
    assert "random weights: the whole network" in phase1  # frozen only where a pretrained backbone is
