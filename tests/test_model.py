"""The interface Codabench calls: Model() with no arguments, predict(X) -> integer labels (n,)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import corruptions
import model
from conftest import ROOT, Killed, learnable_images


ARCHITECTURE = {"backbone": "EfficientNetV2B0", "input_size": 96, "dropout": 0.2}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An unpacked bundle: model.py beside a weights file of a small random network."""
    folder = tmp_path_factory.mktemp("bundle")
    shutil.copy(ROOT / "model.py", folder)
    network = model.build_network(**ARCHITECTURE)
    model.save_network(network, ARCHITECTURE, folder / "weights.npz")
    return folder, network


@pytest.fixture(scope="module")
def loaded(bundle):
    return model.Model(bundle[0])


def test_save_and_load_give_the_same_network(bundle):
    folder, network = bundle
    loaded, config = model.load_network(folder / "weights.npz")
    assert config == ARCHITECTURE
    for a, b in zip(network.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_float16_storage_is_smaller_and_close(bundle, tmp_path):
    folder, network = bundle
    model.save_network(network, ARCHITECTURE, tmp_path / "weights.npz", float16=True)
    assert (tmp_path / "weights.npz").stat().st_size < 0.6 * (folder / "weights.npz").stat().st_size
    half, _ = model.load_network(tmp_path / "weights.npz")
    for a, b in zip(network.get_weights(), half.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_a_kill_while_writing_weights_leaves_the_previous_ones(tmp_path, monkeypatch):
    architecture = {"backbone": "MobileNetV3Small", "input_size": 96, "dropout": 0.2}
    network = model.build_network(**architecture)
    path = tmp_path / "weights.npz"
    model.save_network(network, architecture, path)
    before = path.read_bytes()

    real_savez = np.savez
    def savez_then_die(file, **arrays):
        real_savez(file, **dict(list(arrays.items())[:3]))  # part of the file is on disk...
        raise Killed()                                     # ...when the process dies
    monkeypatch.setattr(np, "savez", savez_then_die)
    with pytest.raises(Killed):
        model.save_network(network, architecture, path, float16=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    model.load_network(path)
    assert [p.name for p in tmp_path.glob("weights*.npz")] == ["weights.npz"]  # nothing half-written is bundled


@pytest.mark.parametrize("n", [0, 1, 5, 70])  # 70 spans two prediction batches
def test_predict_returns_integer_labels_of_shape_n(loaded, n):
    images, _ = learnable_images(n) if n else (np.zeros((0, 96, 96, 3), np.uint8), None)
    labels = loaded.predict(images)
    assert isinstance(labels, np.ndarray)
    assert labels.shape == (n,)
    assert np.issubdtype(labels.dtype, np.integer)
    assert ((labels >= 0) & (labels < model.NUM_CLASSES)).all()


def test_uint8_float32_float64_and_list_give_the_same_labels(loaded):
    images, _ = learnable_images(12, seed=3)
    probs = loaded.predict_proba(images)
    expected = probs.argmax(1)
    for X in (images.astype(np.float32), images.astype(np.float64), images.tolist()):
        np.testing.assert_array_equal(loaded.predict(X), expected)
    # the same images scaled to [0, 1] are recognised and scaled back
    np.testing.assert_allclose(loaded.predict_proba(images / 255.0), probs, atol=1e-5)


def test_grayscale_is_copied_to_three_channels(loaded):
    images, _ = learnable_images(4)
    gray = images.mean(-1).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(loaded.predict_proba(gray), loaded.predict_proba(rgb), atol=1e-6)
    np.testing.assert_allclose(loaded.predict_proba(gray[..., None]), loaded.predict_proba(rgb), atol=1e-6)


@pytest.mark.parametrize("X, message", [
    (np.zeros((2, 3, 96, 96)), "channels first"),
    (np.zeros((2, 96, 96, 4)), "RGBA"),
    (np.zeros((2, 64, 64, 3)), "Resize"),
    (np.zeros((96, 96, 3)), "a batch of shape"),
    (np.full((1, 96, 96, 3), np.nan), "NaN"),
    (np.full((1, 96, 96, 3), np.inf), "infinite"),
    (np.array([["a"] * 3]), "dtype"),
])
def test_bad_input_gets_a_clear_value_error(loaded, X, message):
    with pytest.raises(ValueError, match=message):
        loaded.predict(X)


def test_model_loads_its_weights_from_any_working_directory(bundle, tmp_path):
    """As the scorer does: import model.py from the unpacked folder while standing elsewhere."""
    folder, _ = bundle
    images, _ = learnable_images(3)
    np.save(tmp_path / "X.npy", images)
    code = ("import json, sys, numpy as np; sys.path.insert(0, sys.argv[1]); from model import Model; "
            "y = Model().predict(np.load(sys.argv[2])); print(json.dumps([y.shape, str(y.dtype), y.tolist()]))")
    other = tmp_path / "elsewhere"
    other.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run = subprocess.run([sys.executable, "-I", "-c", code, str(folder), str(tmp_path / "X.npy")],
                         cwd=other, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    shape, dtype, labels = json.loads(run.stdout.strip().splitlines()[-1])
    assert shape == [3] and dtype.startswith("int")
    assert labels == model.Model(folder).predict(images).tolist()


def test_missing_weights_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        model.Model(tmp_path)


def test_weights_of_another_architecture_are_refused(bundle, tmp_path):
    folder, network = bundle
    model.save_network(network, {**ARCHITECTURE, "backbone": "MobileNetV3Small"}, tmp_path / "weights.npz")
    with pytest.raises(ValueError, match="does not fit"):
        model.Model(tmp_path)


def test_test_time_augmentation_averages_the_eight_flips_and_rotations(bundle):
    folder, _ = bundle
    images, _ = learnable_images(6, seed=5)
    plain, averaged = model.Model(folder, tta=False), model.Model(folder, tta=True)
    views = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    views += [v[:, :, ::-1] for v in views]
    expected = np.mean([plain.predict_proba(v) for v in views], axis=0)
    np.testing.assert_allclose(averaged.predict_proba(images), expected, atol=1e-5)
    assert not np.allclose(plain.predict_proba(images), expected, atol=1e-5)  # the views do differ


@pytest.mark.parametrize("backbone", ["VGG19", "ConvNeXtLarge"])
def test_the_seed_comparisons_other_backbones_round_trip_through_a_bundle(backbone, tmp_path):
    architecture = {"backbone": backbone, "input_size": 96, "dropout": 0.3}
    network = model.build_network(**architecture)
    model.save_network(network, architecture, tmp_path / "weights.npz", float16=True)
    images = learnable_images(3)[0]
    probs = model.Model(tmp_path, tta=False).predict_proba(images)  # one view, as network.predict sees it
    np.testing.assert_allclose(probs, network.predict(images.astype(np.float32), verbose=0), atol=2e-2)


def test_a_wider_mobilenet_round_trips_through_a_bundle_and_other_backbones_refuse_a_width(tmp_path):
    architecture = {"backbone": "MobileNetV3Small", "width": 1.25, "input_size": 96, "dropout": 0.2}
    network = model.build_network(**architecture)
    assert network.count_params() > 1.3 * model.build_network(**{**architecture, "width": 1.0}).count_params()
    model.save_network(network, architecture, tmp_path / "weights.npz")
    images = learnable_images(3)[0]
    probs = model.Model(tmp_path, tta=False).predict_proba(images)
    np.testing.assert_allclose(probs, network.predict(images.astype(np.float32), verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="only the MobileNets"):
        model.build_network("EfficientNetV2B0", width=1.25)


def test_our_resnet10_keeps_its_weights_across_sizes_and_round_trips_through_a_bundle(tmp_path):
    # the cpu preset's phase 1 trains at 64 px and phase 2 at 96 with the same weights (phase1_input_size)
    architecture = {"backbone": "ResNet10", "input_size": 96, "dropout": 0.2}
    network = model.build_network(**architecture)
    network.set_weights(model.build_network(**{**architecture, "input_size": 64}).get_weights())
    assert 1.0e6 < network.count_params() < 1.5e6  # a small network, as MobileNetV3Small (0.9M)
    model.save_network(network, architecture, tmp_path / "weights.npz")
    images = learnable_images(3)[0]
    probs = model.Model(tmp_path, tta=False).predict_proba(images)
    np.testing.assert_allclose(probs, network.predict(images.astype(np.float32), verbose=0), atol=1e-5)


def test_our_resnet10_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="ResNet10 has no pretrained weights.*--backbone-weights none"):
        model.build_network("ResNet10", backbone_weights="imagenet")


@pytest.mark.parametrize("input_size, ibn, colour_constancy, antialias", [(96, False, False, False), (64, False, False, False),
                                                                        (96, True, True, True)])
def test_our_resnet10_predicts_with_its_batch_norms_and_scaling_folded_into_its_convolutions(input_size, ibn, colour_constancy,
                                                                                             antialias, tmp_path):
    architecture = {"backbone": "ResNet10", "input_size": input_size, "dropout": 0.2, "ibn": ibn,
                    "colour_constancy": colour_constancy, "antialias": antialias}
    network = model.build_network(**architecture)
    rng = np.random.default_rng(0)
    for layer in network.get_layer("resnet10").layers:  # statistics as training leaves them, far from 0 and 1
        if layer.name.endswith("_bn"):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 2, gamma), rng.normal(0, 0.5, beta),
                               rng.normal(0, 0.5, mean), rng.uniform(0.005, 2, variance)])
        if layer.name.endswith("_in"):  # IBN's per-image half: its scale and offset are copied, not folded
            gamma, beta = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 2, gamma), rng.normal(0, 0.5, beta)])
    assert ibn == any(layer.name.endswith("_in") for layer in network.get_layer("resnet10").layers)
    model.save_network(network, architecture, tmp_path / "weights.npz")
    bundled = model.Model(tmp_path, tta=False)
    assert not any(layer.name.endswith("_bn") for layer in bundled.networks[0].get_layer("resnet10").layers)
    images = learnable_images(3)[0][:64]
    np.testing.assert_allclose(bundled.predict_proba(images), network.predict(images.astype(np.float32), verbose=0),
                               atol=1e-5)
    # and before the softmax, which saturates: the features each form computes from the same input
    x = np.random.default_rng(1).uniform(0, 255, (8, input_size, input_size, 3)).astype(np.float32)
    features = network.get_layer("resnet10")(x / 127.5 - 1, training=False).numpy()
    folded = bundled.networks[0].get_layer("resnet10")(x, training=False).numpy()  # scaling folded in too
    assert features.std() > 1
    np.testing.assert_allclose(folded, features, atol=1e-4 * np.abs(features).max())


def test_colour_constancy_sees_through_channel_swaps_casts_and_hue_turns():
    rng = np.random.default_rng(5)  # smears: a pale pink field, a purple disc, some texture
    disc = (np.mgrid[:96, :96] - 48) ** 2
    disc = (disc.sum(0) < 24 ** 2)[None, ..., None]
    images = np.where(disc, [110, 60, 150], [235, 210, 205]) + rng.normal(0, 12, (16, 96, 96, 3))
    images = images.clip(0, 255).astype(np.uint8)
    layer = model.ColourConstancy()
    def seen(x):
        return layer(np.asarray(x, np.float32)).numpy()
    plain = seen(images)
    assert np.isfinite(plain).all() and plain.std() > 10
    for swapped in (images[..., ::-1], images[..., [1, 2, 0]]):  # a mirror and a turn of the colour wheel: exact
        np.testing.assert_allclose(seen(swapped), plain, atol=1e-2)
    cast = np.clip(images.astype(np.float32) * 0.8 + np.array([10, -5, 20]), 0, 255)  # a gain and a cast
    for changed in (cast, corruptions.corrupt(images, "hue_rotation", 3)):
        moved, raw = np.abs(seen(changed) - plain).mean(), np.abs(changed.astype(np.float32) - images).mean()
        assert moved < 0.25 * raw, (moved, raw)
    assert np.isfinite(seen(np.full((2, 96, 96, 3), 128, np.uint8))).all()  # no colour at all: no NaN


def test_colour_constancy_and_ibn_round_trip_through_a_bundle_and_ibn_is_resnet10_only(tmp_path):
    architecture = {"backbone": "MobileNetV3Small", "input_size": 96, "dropout": 0.2, "colour_constancy": True}
    network = model.build_network(**architecture)
    assert network.layers[1].name == "colour_constancy"  # first, before the backbone's own preprocessing
    model.save_network(network, architecture, tmp_path / "weights.npz")
    images = learnable_images(3)[0]
    np.testing.assert_allclose(model.Model(tmp_path, tta=False).predict_proba(images),
                               network.predict(images.astype(np.float32), verbose=0), atol=1e-5)
    for lever in ("ibn", "antialias"):
        with pytest.raises(ValueError, match="only our ResNet10"):
            model.build_network("MobileNetV3Small", **{lever: True})


def test_antialiasing_blurs_away_what_a_stride_of_4_would_alias():
    # a checkerboard of period 2 (all above the stride-4 stem's Nyquist) becomes flat grey; a
    # constant stays itself, edges included (no dark frame)
    checker = (np.indices((96, 96)).sum(0) % 2 * 255.0)[None, ..., None].repeat(3, -1).astype(np.float32)
    blurred = model.Blur()(checker).numpy()
    assert blurred[:, 4:-4, 4:-4].std() < 0.1 * checker.std()
    np.testing.assert_allclose(model.Blur()(np.full((1, 96, 96, 3), 200.0, np.float32)).numpy(), 200.0, atol=1e-3)
