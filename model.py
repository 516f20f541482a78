"""The Codabench submission: the scorer imports this file, builds Model() and calls predict(X).

It is uploaded alone beside its weights, so the facts the whole project shares live here and
the other files import them: the class names, the image size and the network's definition.
Needs only numpy and TensorFlow/Keras (the scorer ran TensorFlow 2.17.0 with Keras 3.4.1).
"""
import json
import os
from pathlib import Path

import numpy as np
import keras
import tensorflow as tf

CLASS_NAMES = ("basophil", "eosinophil", "erythroblast", "immature granulocyte",
               "lymphocyte", "monocyte", "neutrophil", "platelet")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 96  # the challenge's images are 96x96 RGB, values in [0, 255]
WEIGHTS_GLOB = "weights*.npz"  # every matching file beside model.py is one network; several are averaged
BATCH_SIZE = 64  # images through the network at once (views included): a few GB even for EfficientNetV2L
# Test-time augmentation: average the eight flips and right-angle rotations (cells have no
# orientation). On: it gained clean and corrupted accuracy on the networks measured (the project's
# BENCHMARKS.md), for eight times the predict time. Set False for a faster bundle.
TEST_TIME_AUGMENTATION = True

# the backbones we know: keras.applications networks, each with the module that holds its own
# preprocess_input, and ours, with None
BACKBONES = {
    "EfficientNetV2B0": "efficientnet_v2", "EfficientNetV2B1": "efficientnet_v2",
    "EfficientNetV2B2": "efficientnet_v2", "EfficientNetV2B3": "efficientnet_v2",
    "EfficientNetV2S": "efficientnet_v2", "EfficientNetV2M": "efficientnet_v2",
    "EfficientNetV2L": "efficientnet_v2",
    "ConvNeXtTiny": "convnext", "ConvNeXtSmall": "convnext", "ConvNeXtBase": "convnext",
    "ConvNeXtLarge": "convnext", "ConvNeXtXLarge": "convnext",
    "MobileNetV3Small": "mobilenet_v3", "MobileNetV3Large": "mobilenet_v3",
    "ResNet50": "resnet", "ResNet50V2": "resnet_v2", "VGG19": "vgg19", "VGG16": "vgg16",
    "ResNet10": None,  # ours (resnet10, below), from random weights only
}


def resnet10(input_shape, widths=(32, 64, 128, 256), folded=False, ibn=False):
    """A ResNet-10 for training from scratch: a 4x4 stride-4 patch stem, then four stages of one
    basic block (two 3x3 convolutions beside a shortcut), each after the first halving the size
    and doubling the channels. Its convolutions are dense, which keeps a CPU's vector units busier
    than MobileNetV3's depthwise ones; the patch stem starts the first stage at 24 px, which keeps
    an epoch cheap. folded=True builds the form fold_into_convolutions fills: a bias in each
    convolution where its BatchNormalization was. ibn=True (IBN-a, Pan et al. 2018) normalises half
    the channels of the stem and of the first convolution of stages 1 and 2 per image (instance
    normalisation), which discards each image's contrast and colour statistics there."""
    layers = keras.layers
    def conv(x, width, size, strides, padding, name, instance=False):  # its batch normalization is "name_bn"
        x = layers.Conv2D(width, size, strides=strides, padding=padding, use_bias=folded, name=name)(x)
        if not instance:
            return x if folded else layers.BatchNormalization(name=f"{name}_bn")(x)
        half = width // 2  # the first half per image ("name_in"), the rest per batch
        per_image = layers.GroupNormalization(groups=-1, name=f"{name}_in")(x[..., :half])
        per_batch = x[..., half:] if folded else layers.BatchNormalization(name=f"{name}_bn")(x[..., half:])
        return layers.Concatenate(name=f"{name}_ibn")([per_image, per_batch])
    inputs = keras.Input(input_shape)
    x = layers.ReLU(name="stem_relu")(conv(inputs, widths[0], 4, 4, "valid", "stem_conv", instance=ibn))
    for stage, width in enumerate(widths, start=1):
        strides = 1 if stage == 1 else 2
        y = conv(x, width, 3, strides, "same", f"stage{stage}_conv1", instance=ibn and stage <= 2)
        y = conv(layers.ReLU(name=f"stage{stage}_relu1")(y), width, 3, 1, "same", f"stage{stage}_conv2")
        if strides != 1 or x.shape[-1] != width:  # the shortcut must change size and channels too
            x = conv(x, width, 1, strides, "valid", f"stage{stage}_project")
        x = layers.ReLU(name=f"stage{stage}_out")(layers.Add(name=f"stage{stage}_add")([x, y]))
    return keras.Model(inputs, x, name="resnet10")


class Blur(keras.layers.Layer):
    """A fixed 5x5 binomial low-pass filter, each channel alone: before a strided layer it is the
    anti-aliasing of BlurPool (Zhang 2019, "Making convolutional networks shift-invariant again"),
    which drops the frequencies a stride of 4 would fold into false patterns."""

    TAPS = np.array([1, 4, 6, 4, 1], np.float32) / 16

    def call(self, x):
        kernel = np.tile(np.outer(self.TAPS, self.TAPS)[:, :, None, None], (1, 1, 3, 1))
        padded = keras.ops.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]], mode="symmetric")  # no dark frame
        return keras.ops.depthwise_conv(padded, kernel, padding="valid")


class ColourConstancy(keras.layers.Layer):
    """Each image's colours mapped to a reference frame by its own statistics, so that a global hue
    turn, channel swap, colour cast or gain, brightness or contrast changes little of what follows
    (grey-world and Reinhard-style normalisation, Reinhard et al. 2001, in an opponent space).

    Per image: luminance standardised; the two chroma axes centred, turned so that their main
    direction of spread lies on the first, each axis' sign set by its skew (so a mirror image of the
    colour wheel, as a channel swap makes, lands on the same frame), and scaled by their spread.
    Output in [0, 255] terms (127.5 + 42.5 per standard deviation), for any backbone's preprocessing."""

    OPPONENT = np.array([[1, 1, 1], [1, -1, 0], [1, 1, -2]], np.float32).T / np.sqrt([3, 2, 6]).astype(np.float32)

    def call(self, x):
        ops = keras.ops
        o = ops.matmul(x / 255.0, self.OPPONENT)  # (n, h, w, 3): luminance, red-green, yellow-blue
        o = o - ops.mean(o, axis=(1, 2), keepdims=True)
        luminance = o[..., :1] / ops.sqrt(ops.mean(o[..., :1] ** 2, axis=(1, 2), keepdims=True) + 1e-4)
        a, b = o[..., 1], o[..., 2]
        saa, sbb, sab = (ops.mean(v, axis=(1, 2), keepdims=True) for v in (a * a, b * b, a * b))
        angle = 0.5 * ops.arctan2(2 * sab, saa - sbb)  # the main axis of the chroma's spread
        cos, sin = ops.cos(angle), ops.sin(angle)
        u, v = cos * a + sin * b, cos * b - sin * a
        u = u * ops.where(ops.mean(u ** 3, axis=(1, 2), keepdims=True) < 0, -1.0, 1.0)
        v = v * ops.where(ops.mean(v ** 3, axis=(1, 2), keepdims=True) < 0, -1.0, 1.0)
        spread = ops.sqrt(saa + sbb + 1e-4)
        return 127.5 + 42.5 * ops.concatenate([luminance, ops.stack([u, v], axis=-1) / spread[..., None]], axis=-1)


def build_network(backbone="EfficientNetV2L", input_size=IMAGE_SIZE, dropout=0.2, backbone_weights=None, width=1.0,
                  colour_constancy=False, ibn=False, antialias=False, folded=False):
    """The one definition of the network, for training and for inference.

    Input: (batch, 96, 96, 3) RGB floats in [0, 255]. The backbone's own preprocessing is part of
    the network, so callers never scale the images. The head is global average pooling, dropout
    and an 8-way softmax. width multiplies the channels of every layer (Keras' alpha); only the
    MobileNets take it. colour_constancy puts ColourConstancy first; ibn (ResNet10 only) normalises
    half of the first layers' channels per image; antialias (ResNet10 only) blurs before its stride-4
    stem. folded=True (ResNet10 only) is the form fold_into_convolutions fills.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if width != 1.0 and not backbone.startswith("MobileNet"):
        raise ValueError(f"width {width}: only the MobileNets scale their width; {backbone} takes 1.0")
    if BACKBONES[backbone] is None and backbone_weights is not None:
        raise ValueError(f"{backbone} has no pretrained weights: train it from scratch with --backbone-weights none")
    if (ibn or antialias) and backbone != "ResNet10":
        raise ValueError(f"ibn and antialias: only our ResNet10 has them; {backbone} takes neither")
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = ColourConstancy(name="colour_constancy")(inputs) if colour_constancy else inputs
    if input_size != IMAGE_SIZE:
        x = keras.layers.Resizing(input_size, input_size, name="resize")(x)
    if backbone == "ResNet10":
        if antialias:  # before the scaling, which a blur commutes with, so that it folds as before
            x = Blur(name="antialias")(x)
        if not folded:
            x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(x)  # to [-1, 1]
        base = resnet10((input_size, input_size, 3), folded=folded, ibn=ibn)
    else:
        x = getattr(keras.applications, BACKBONES[backbone]).preprocess_input(x)
        base = getattr(keras.applications, backbone)(include_top=False, weights=backbone_weights,
                                                     input_shape=(input_size, input_size, 3),
                                                     **({"alpha": width} if width != 1.0 else {}))
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"blood_cells_{backbone}")


def save_network(network, config, path, float16=False):
    """Write the weights (no optimizer state) and the config that rebuilds them, atomically.

    The file is a plain .npz: it loads under any Keras version that builds the same network.
    float16 halves the size; arrays that would overflow it stay float32.
    """
    arrays = {"config": np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)}
    for i, w in enumerate(network.get_weights()):
        if float16 and w.dtype == np.float32 and np.isfinite(w.astype(np.float16)).all():
            w = w.astype(np.float16)
        arrays[f"w{i:04d}"] = w
    write_atomically(path, lambda f: np.savez(f, **arrays))


def write_atomically(path, write):
    """Call write(file) on a temporary file, then rename it into place: readers, and runs killed
    mid-write, see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_network(path):
    """Rebuild the network its config describes and fill in the saved weights."""
    with np.load(path, allow_pickle=False) as npz:
        config = json.loads(npz["config"].tobytes())
        weights = [npz[f"w{i:04d}"].astype(np.float32) for i in range(len(npz.files) - 1)]
    network = build_network(**config)
    expected = [tuple(w.shape) for w in network.weights]
    if [w.shape for w in weights] != expected:
        raise ValueError(f"{path} does not fit the network its config describes ({config}): "
                         f"{len(weights)} arrays saved, {len(expected)} expected; rebuild it with train.py")
    network.set_weights(weights)
    return network, config


def fold_into_convolutions(network, config):
    """The same function for inference with fewer passes over memory, which bound a CPU's speed on
    a small network: each BatchNormalization folded into the convolution before it (its kernel
    times gamma / sqrt(variance + epsilon), and a bias), and the scaling to [-1, 1] into the stem's
    (exact: the stem pads nothing). Our ResNet10 only; other networks come back as they are."""
    if config["backbone"] != "ResNet10":
        return network
    folded = build_network(**config, folded=True)
    trained, inference = network.get_layer("resnet10"), folded.get_layer("resnet10")
    for layer in inference.layers:
        if isinstance(layer, keras.layers.GroupNormalization):  # per image: nothing to fold, copied as it is
            layer.set_weights(trained.get_layer(layer.name).get_weights())
    for conv in inference.layers:
        if isinstance(conv, keras.layers.Conv2D):
            bn = trained.get_layer(f"{conv.name}_bn")
            gamma, beta, mean, variance = bn.get_weights()
            scale = gamma / np.sqrt(variance + bn.epsilon)
            shift = beta - mean * scale
            kernel, = trained.get_layer(conv.name).get_weights()
            per_image = kernel.shape[-1] - len(scale)  # IBN: the first channels are normalised per image, after it
            scale = np.concatenate([np.ones(per_image, np.float32), scale])
            shift = np.concatenate([np.zeros(per_image, np.float32), shift])
            kernel, bias = kernel * scale, shift
            if conv.name == "stem_conv":  # it sees x / 127.5 - 1
                kernel, bias = kernel / 127.5, bias - kernel.sum(axis=(0, 1, 2))
            conv.set_weights([kernel, bias])
    folded.get_layer("probabilities").set_weights(network.get_layer("probabilities").get_weights())
    return folded


def as_images(X):
    """Check X and return it as float32 (n, 96, 96, 3) in [0, 255], or raise ValueError saying why.

    Accepted beyond the scorer's uint8/float RGB batch: a Python list, grayscale images
    (n, 96, 96) or (n, 96, 96, 1), copied to three channels, and floats in [0, 1] (every value
    at most 1), multiplied by 255. Values outside [0, 255] are clipped. Other sizes are refused:
    resize them to 96x96 first, as the training images were.
    """
    X = np.asarray(X)
    if X.dtype == bool or not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"X has dtype {X.dtype}; expected numbers (uint8 or float) of shape (n, 96, 96, 3)")
    if X.ndim == 3 and X.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE):
        X = X[..., None]
    if X.ndim != 4:
        raise ValueError(f"X has shape {X.shape}; expected a batch of shape (n, 96, 96, 3)")
    if X.shape[-1] == 1:
        X = np.repeat(X, 3, axis=-1)
    if X.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE) or X.shape[3] != 3:
        hint = " (channels first? use X.transpose(0, 2, 3, 1))" if X.shape[1] in (1, 3) else ""
        hint = " (RGBA? use X[..., :3])" if X.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 4) else hint
        raise ValueError(f"X has shape {X.shape}; expected (n, 96, 96, 3) RGB{hint}. "
                         "Resize other sizes to 96x96 first")
    was_float = np.issubdtype(X.dtype, np.floating)
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"X holds {np.size(X) - np.isfinite(X).sum()} NaN or infinite values; expected pixels in [0, 255]")
    if was_float and X.size and X.max() <= 1.0:
        X = X * 255.0  # a [0, 1] float batch: the common mistake, scaled back to the training range
    return np.clip(X, 0.0, 255.0)


VIEWS = 8  # the flips and right-angle rotations of a square: four turns, each also mirrored


def dihedral_views(x):
    """The eight (VIEWS) flips and right-angle rotations of a batch of square images."""
    turns = [tf.image.rot90(x, k) for k in range(4)]
    return turns + [tf.image.flip_left_right(t) for t in turns]


def compiled_forward(network, tta):
    """The network as one traced graph for float batches, averaged over the eight views when tta.

    The views go through the network as one batch: a single copy of the network in the graph
    traces in seconds, where eight copies take minutes for a large backbone."""
    @tf.function(input_signature=[tf.TensorSpec((None, IMAGE_SIZE, IMAGE_SIZE, 3), tf.float32)])
    def forward(x):
        if not tta:
            return network(x, training=False)
        views = dihedral_views(x)
        probs = network(tf.concat(views, axis=0), training=False)
        return tf.reduce_mean(tf.reshape(probs, (len(views), -1, NUM_CLASSES)), axis=0)
    return forward


class Model:
    """What Codabench calls: Model() loads the weights beside this file, predict(X) gives labels."""

    def __init__(self, weights_dir=None, tta=TEST_TIME_AUGMENTATION):
        """weights_dir: a folder, or a list of folders whose networks make one ensemble; default beside this file."""
        weights_dir = weights_dir or Path(__file__).resolve().parent
        folders = weights_dir if isinstance(weights_dir, (list, tuple)) else [weights_dir]
        files = sorted(f for folder in folders for f in Path(folder).glob(WEIGHTS_GLOB))
        if not files:
            raise FileNotFoundError(f"no {WEIGHTS_GLOB} in {', '.join(map(str, folders))}: "
                                    "put the weights train.py wrote beside model.py")
        self.networks = [fold_into_convolutions(*load_network(f)) for f in files]
        self._forward = [compiled_forward(network, tta) for network in self.networks]
        self._batch = BATCH_SIZE // VIEWS if tta else BATCH_SIZE  # images per call

    def predict_proba(self, X):
        """Class probabilities (n, 8), averaged over the bundled networks."""
        X = as_images(X)
        probs = np.zeros((len(X), NUM_CLASSES), np.float32)
        for start in range(0, len(X), self._batch):
            batch = tf.constant(X[start:start + self._batch])
            probs[start:start + self._batch] = np.mean([f(batch).numpy() for f in self._forward], axis=0)
        return probs

    def predict(self, X):
        """X: (n, 96, 96, 3) RGB in [0, 255], uint8 or float. Returns integer labels of shape (n,)."""
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int64)
