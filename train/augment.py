"""Training-time augmentation as Keras preprocessing layers, wrapped around the inference model.

The wrapper is used for fit() only; the inference model inside it is what gets saved and exported.
"""

from __future__ import annotations

import keras
from keras import layers, ops


def augmentation_layers(cfg: dict) -> list:
    """cfg keys (0 disables one): flip, rotation (degrees), shift and zoom (fractions),
    contrast, brightness (fractions), erasing (probability of one random erase)."""
    out = []
    if cfg.get("flip", True):
        out.append(layers.RandomFlip("horizontal"))
    if cfg.get("rotation", 0):
        out.append(layers.RandomRotation(cfg["rotation"] / 360.0, fill_mode="reflect"))
    if cfg.get("shift", 0):
        out.append(layers.RandomTranslation(cfg["shift"], cfg["shift"], fill_mode="reflect"))
    if cfg.get("zoom", 0):
        out.append(layers.RandomZoom((-cfg["zoom"], cfg["zoom"]), fill_mode="reflect"))
    if cfg.get("contrast", 0):
        out.append(layers.RandomContrast(cfg["contrast"], value_range=(0, 255)))
    if cfg.get("brightness", 0):
        out.append(layers.RandomBrightness(cfg["brightness"], value_range=(0, 255)))
    if cfg.get("erasing", 0):
        out.append(layers.RandomErasing(factor=cfg["erasing"], scale=(0.02, 0.15), value_range=(0, 255)))
    if keras.backend.backend() == "jax":
        # RandomRotation, RandomTranslation and RandomZoom say supports_jit=False, which is TensorFlow's
        # answer (its transform op has no XLA kernel); compile() then leaves the whole model unjitted, and
        # unjitted JAX runs op by op: 4.3 s a step of 256 on an H200. Their JAX kernel (map_coordinates) jits.
        for layer in out:
            layer.supports_jit = True
    return out


def training_model(model: keras.Model, cfg: dict, teacher: keras.Model | None = None,
                   teacher_flip: bool = False) -> keras.Model:
    """model preceded by the augmentation layers (active only when training=True). With a teacher
    (train/distill.py) the output is [model probs | teacher probs], both on the same augmented pixels;
    teacher_flip averages the teacher's probabilities over the pixels and their mirror image."""
    aug = augmentation_layers(cfg)
    if not aug and teacher is None:
        return model
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    x = inputs
    for layer in aug:
        x = layer(x)
    if teacher is None:
        return keras.Model(inputs, model(x), name=f"{model.name}_train")
    seen = teacher_view(x, teacher)
    taught = teacher(seen, training=False)
    if teacher_flip:
        mirrored = layers.Lambda(lambda t: ops.flip(t, axis=2), name="teacher_mirror")(seen)
        taught = layers.Average(name="teacher_flip_tta")([taught, teacher(mirrored, training=False)])
    both = layers.Concatenate(dtype="float32", name="student_teacher")([model(x), taught])
    return keras.Model(inputs, both, name=f"{model.name}_distill")


def teacher_view(x, teacher: keras.Model, prefix: str = "teacher"):
    """The student's pixels as the teacher takes them: resized (bilinear, as preprocess_faces enlarges)
    and the grey plane replicated (or the replicated planes averaged back to one), so a 64 px RGB-input
    ResNet50V2 and a 48 px grey custom CNN can teach each other."""
    size, channels = teacher.input_shape[1], teacher.input_shape[3]
    if x.shape[1] != size:
        x = layers.Resizing(size, size, interpolation="bilinear", name=f"{prefix}_resize")(x)
    if x.shape[3] == 1 and channels > 1:
        x = layers.Concatenate(name=f"{prefix}_channels")([x] * channels)
    elif x.shape[3] > 1 and channels == 1:
        x = layers.Lambda(lambda t: ops.mean(t, axis=-1, keepdims=True), name=f"{prefix}_grey")(x)
    return x
