"""The three architectures. Each takes grey pixels 0..255 (see feredge.edge.preprocess) and scales
them itself, so every exported format shares one input contract.

Only inference layers live here; random augmentation is added around the model at training time
(train/augment.py), never inside it: TFLite would need Flex ops for it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import keras
import numpy as np
from keras import layers

from feredge.edge.preprocess import LABELS

# onnx is imported where a shipped ONNX file is rebuilt as a Keras network (the `export` extra).

log = logging.getLogger(__name__)

ARCHITECTURES = ("custom_cnn", "separable_cnn", "resnet50v2", "vgg16")
# Channels each architecture takes: ImageNet backbones get the grey plane replicated to 3.
INPUT_CHANNELS = {"custom_cnn": 1, "separable_cnn": 1, "resnet50v2": 3, "vgg16": 3}


def build_model(arch: str, input_size: int = 48, weights: str | None = None, dropout: float = 0.4,
                widths=(32, 64, 128, 256)) -> keras.Model:
    """weights: for the ImageNet backbones, "imagenet" (Keras cache or download), a local .h5/.weights
    file, or None for random initialisation (logged only when asked for as "none").
    Ignored by the custom CNNs."""
    if arch in ("custom_cnn", "separable_cnn"):
        return custom_cnn(input_size, widths=widths, dropout=dropout, separable=arch == "separable_cnn")
    if arch in ("resnet50v2", "vgg16"):
        return imagenet_backbone(arch, input_size, weights, dropout)
    raise ValueError(f"unknown architecture '{arch}' (choose from {', '.join(ARCHITECTURES)})")


def _conv_bn_relu(x, filters, name, separable=False):
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    x = conv(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def custom_cnn(input_size: int = 48, widths=(32, 64, 128, 256), dropout: float = 0.4,
               separable: bool = False) -> keras.Model:
    """A VGG-style network sized for 48x48 faces and a Pi-class CPU: four stages of two 3x3
    conv-BN-ReLU layers with max pooling, global average pooling, dropout, softmax.

    Plain 3x3 convolutions and ReLU quantize cleanly to int8 and are what XNNPACK runs fastest.
    separable (the "separable_cnn" architecture): every convolution after the first is depthwise-
    separable, as in the `fer` peer's mini-Xception: far fewer multiply-adds per channel, so wider
    stages fit the same latency.
    """
    inputs = keras.Input((input_size, input_size, 1), name="pixels")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(inputs)  # zero-centred: faster start
    for stage, filters in enumerate(widths, start=1):
        x = _conv_bn_relu(x, filters, f"s{stage}a", separable and stage > 1)  # one input plane: plain
        x = _conv_bn_relu(x, filters, f"s{stage}b", separable)
        x = layers.MaxPooling2D(2, name=f"s{stage}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(len(LABELS), activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="separable_cnn" if separable else "custom_cnn")


def start_from(source, arch: str, input_size: int, widths=(32, 64, 128, 256), dropout: float = 0.4) -> keras.Model:
    """A model initialised from a trained one (the `init_from` config key): the same architecture takes
    its weights at any input size (all three are convolutional up to global pooling, so a 64 px run can
    go on at 96 px); a custom CNN of smaller `widths` is slimmed from a wider one (slim_custom_cnn)."""
    source = _load_source(source)
    if arch == "custom_cnn" and source.name == "custom_cnn" and stage_widths(source) != list(widths):
        return slim_custom_cnn(source, widths, dropout, input_size)
    model = build_model(arch, input_size, None, dropout, tuple(widths))
    theirs, ours = [w.shape for w in source.weights], [w.shape for w in model.weights]
    if source.name != model.name or theirs != ours:
        raise ValueError(f"init_from must be a {arch} like this run's (or, for custom_cnn, a wider one); got {source.name}")
    model.set_weights(source.get_weights())
    for theirs_layer, our_layer in zip(source.layers, model.layers):
        our_layer.trainable = theirs_layer.trainable  # frozen BatchNorm stays frozen (_load_source)
    log.info("%s at %d px: weights from %s (trained at %d px)", arch, input_size, source.name, source.input_shape[1])
    return model


def stage_widths(model: keras.Model) -> list[int]:
    """A custom CNN's widths, one per stage."""
    return [layer.filters for layer in model.layers if layer.name.endswith("a_conv")]


def _load_source(source) -> keras.Model:
    """A .keras file, or a shipped custom CNN (its model folder or float32 .onnx) rebuilt by
    custom_cnn_from_onnx with its BatchNorm layers frozen: they are identities after the folding, and
    would otherwise normalise by batch statistics the folded convolutions were never trained for."""
    if isinstance(source, keras.Model):
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"init_from model not found: {path}")
    if path.is_dir() or path.suffix == ".onnx":
        model = custom_cnn_from_onnx(path)
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
        return model
    return keras.models.load_model(path, compile=False)


def slim_custom_cnn(source, widths, dropout: float = 0.4, input_size: int | None = None) -> keras.Model:
    """A narrower custom CNN initialised from a trained one (network slimming, Liu et al. 2017):
    every conv layer keeps the output channels with the largest BatchNorm scale |gamma|, and the
    next layer keeps the matching input channels. It is a starting point for fine-tuning, not a
    compressed model: slimming the shipped run to 16-48-112-224 left 18.8 % PublicTest until retrained.

    source: a custom_cnn keras.Model or the path of one; widths: the new stage widths, each no wider
    than the source's; input_size: the new model's (default: the source's).
    """
    source = _load_source(source)
    old_widths = stage_widths(source)
    if len(old_widths) != len(widths) or any(new > old for new, old in zip(widths, old_widths)):
        raise ValueError(f"init_from must be a custom_cnn at least as wide as {list(widths)}; got {source.name} {old_widths}")
    model = custom_cnn(input_size or source.input_shape[1], widths=widths, dropout=dropout)
    kept_in = np.arange(1)  # the grey input plane
    for stage, width in enumerate(widths, start=1):
        for part in "ab":
            conv, bn = (source.get_layer(f"s{stage}{part}_{kind}") for kind in ("conv", "bn"))
            gamma, beta, mean, var = (np.asarray(w) for w in bn.get_weights())
            kept = np.sort(np.argsort(-np.abs(gamma))[:width])
            model.get_layer(f"s{stage}{part}_conv").set_weights([np.asarray(conv.kernel)[:, :, kept_in][..., kept]])
            model.get_layer(f"s{stage}{part}_bn").set_weights([gamma[kept], beta[kept], mean[kept], var[kept]])
            kept_in = kept
    kernel, bias = (np.asarray(w) for w in source.get_layer("probs").get_weights())
    model.get_layer("probs").set_weights([kernel[kept_in], bias])
    return model


def custom_cnn_from_onnx(path) -> keras.Model:
    """A shipped custom CNN as a Keras model, rebuilt from its float32 ONNX export (a model folder or
    the .onnx file): what a shipped model can teach with when its training run is gone. tf2onnx folds
    each BatchNorm into the convolution before it, so the convolutions take the folded weights and bias
    and the BatchNorm layers are left as identities. The probabilities are the ONNX file's (a test holds
    them to 1e-5); the BatchNorm scales are not the trained ones, so don't slim or resume from it."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ValueError("reading a model from ONNX needs the onnx package: pip install 'feredge[export]'") from None
    path = Path(path).expanduser()
    path = path / "model_float32.onnx" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    graph = onnx.load(path).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def constant(name):  # an initializer, possibly through the Reshape tf2onnx puts on a folded kernel
        if name in constants:
            return constants[name]
        node = producer[name]
        if node.op_type != "Reshape":
            raise ValueError(f"{path.name}: not a custom_cnn export ({name} is computed by {node.op_type})")
        return constant(node.input[0]).reshape(constant(node.input[1]))

    convs = [(constant(n.input[1]), constant(n.input[2])) for n in graph.node if n.op_type == "Conv"]
    if not convs or len(convs) % 2 or any(k.shape[2:] != (3, 3) for k, _ in convs):
        raise ValueError(f"{path.name}: not a custom_cnn export (expected pairs of 3x3 convolutions)")
    widths = [kernel.shape[0] for kernel, _ in convs[::2]]
    size = graph.input[0].type.tensor_type.shape.dim[1].dim_value
    model = custom_cnn(size, widths=widths)
    for i, (kernel, bias) in enumerate(convs):
        name = f"s{i // 2 + 1}{'ab'[i % 2]}"
        model.get_layer(f"{name}_conv").set_weights([kernel.transpose(2, 3, 1, 0)])  # OIHW -> HWIO
        bn = model.get_layer(f"{name}_bn")  # gamma sqrt(1 + eps), variance 1: y = x + bias
        bn.set_weights([np.full_like(bias, np.sqrt(1 + bn.epsilon)), bias, np.zeros_like(bias), np.ones_like(bias)])
    matmul = next(n for n in graph.node if n.op_type == "MatMul")
    bias_add = next(n for n in graph.node if n.op_type == "Add" and matmul.output[0] in n.input)
    model.get_layer("probs").set_weights([constant(matmul.input[1]),
                                          constant(next(i for i in bias_add.input if i != matmul.output[0]))])
    log.info("%s rebuilt from %s (widths %s, %d px)", model.name, path, widths, size)
    return model


def imagenet_backbone(arch: str, input_size: int, weights, dropout: float) -> keras.Model:
    apps = {
        "resnet50v2": keras.applications.ResNet50V2,
        "vgg16": keras.applications.VGG16,
    }
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    if arch == "resnet50v2":  # ResNetV2 expects -1..1
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(inputs)
    else:  # VGG16 expects caffe-style mean-subtracted BGR; grey replicated, so channel order is moot
        x = layers.Normalization(mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0], name="scale")(inputs)
    backbone = apps[arch](include_top=False, weights=None, input_shape=(input_size, input_size, 3))
    load_imagenet_weights(backbone, arch, weights)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(len(LABELS), activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=arch)


def load_imagenet_weights(backbone: keras.Model, arch: str, weights) -> str:
    """Load ImageNet weights into a notop backbone; returns what was used ("imagenet", a path, "scratch").

    Falls back to random initialisation, loudly, when "imagenet" weights are neither cached nor
    downloadable; a local file that does not fit is an error.
    """
    if weights is None:  # not asked for: the caller sets the weights (init_from)
        return "scratch"
    if weights == "none":
        log.warning("%s: training from scratch (no ImageNet weights requested)", arch)
        return "scratch"
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"ImageNet weights file not found: {path}")
        backbone.load_weights(str(path), skip_mismatch=False)
        log.info("%s: ImageNet weights loaded from %s", arch, path)
        return str(path)
    try:
        ref = {"resnet50v2": keras.applications.ResNet50V2, "vgg16": keras.applications.VGG16}[arch](
            include_top=False, weights="imagenet", input_shape=backbone.input_shape[1:])
    except Exception as e:  # no cache and no network: say so and go on from scratch
        log.warning("%s: ImageNet weights unavailable (%s); training FROM SCRATCH", arch, str(e).splitlines()[0][:200])
        return "scratch"
    backbone.set_weights(ref.get_weights())
    log.info("%s: ImageNet weights loaded (Keras cache or download)", arch)
    return "imagenet"


@contextlib.contextmanager
def precision_policy(name: str):
    """Keras's global dtype policy set to name inside the block, and put back after it: later model
    loading in the process must not inherit a half-precision policy."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_copy(model: keras.Model) -> keras.Model:
    """The same network with every layer in float32: what is saved and exported after a
    mixed-precision (bfloat16/float16) run, so no half-precision casts reach TFLite or ONNX."""

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    with precision_policy("float32"):  # the input layer takes the global policy
        # recursive: the layers inside a nested backbone (ResNet50V2, VGG16) too
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def dtype_policies(model: keras.Model) -> set[str]:
    """Every layer's dtype policy, nested models' layers included."""
    out = set()
    for layer in model.layers:
        out.add(layer.dtype_policy.name)
        if isinstance(layer, keras.Model):
            out |= dtype_policies(layer)
    return out
