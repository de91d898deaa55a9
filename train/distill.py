"""Knowledge distillation (Hinton et al., "Distilling the knowledge in a neural network", 2015): a small
student learns from a trained teacher's softened probabilities as well as from the labels.

The teacher runs inside the training model on the same augmented batch as the student
(`augment.training_model(student, cfg, teacher)`), and the two outputs travel concatenated to the
loss, so plain `fit()` does the rest (any backend). Only the student is saved and exported.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers, ops

from feredge.edge.preprocess import LABELS
from feredge.train.augment import teacher_view
from feredge.train.evaluate import model_paths
from feredge.train.models import custom_cnn_from_onnx

CLASSES = len(LABELS)
EPS = 1e-7


def load_teacher(spec: str, input_shape: tuple) -> keras.Model:
    """The teacher: one trained .keras model, or several (paths separated by commas) combined into one
    by the geometric mean of their probabilities, each member seeing the student's pixels (input_shape)
    its own way. An ensemble knows more than any member: on PublicTest (flip-averaged) the shipped CNN,
    the fast student and the unfinished ResNet50V2 reach 68.18, 67.82 and 65.90 %, the three 69.07 %."""
    paths = model_paths(spec)
    if len(paths) == 1:
        return _frozen(paths[0], "teacher")
    members = [_frozen(p, f"teacher_{i}") for i, p in enumerate(paths)]
    pixels = keras.Input(input_shape, name="teacher_pixels")
    probs = [m(teacher_view(pixels, m, prefix=m.name), training=False) for m in members]
    mean = layers.Lambda(lambda ps: ops.softmax(ops.mean(ops.log(ops.stack(ps) + EPS), axis=0)),
                         dtype="float32", name="teacher_geometric_mean")(probs)
    ensemble = keras.Model(pixels, mean, name="teacher")
    ensemble.trainable = False
    return ensemble


def _frozen(path, name: str) -> keras.Model:
    """A trained .keras file, or a shipped custom CNN's model folder (or its float32 .onnx), frozen."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"teacher model not found: {path}")
    if path.is_dir() or path.suffix == ".onnx":
        loaded = custom_cnn_from_onnx(path)
    else:
        loaded = keras.models.load_model(path, compile=False)
    # Renamed: a teacher of the student's architecture carries the student's name.
    teacher = keras.Model(loaded.inputs[0], loaded.outputs[0], name=name)
    teacher.trainable = False
    return teacher


def distillation_loss(weight: float, temperature: float, label_smoothing: float):
    """(1 - weight) x cross-entropy with the labels + weight x T^2 x KL(teacher_T || student_T), where _T
    is the softmax of log-probabilities divided by the temperature T (T^2 keeps the gradients' scale)."""
    hard = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=None)

    def loss(y_true, y_pred):
        student, teacher = y_pred[:, :CLASSES], ops.stop_gradient(y_pred[:, CLASSES:])
        soft_teacher = ops.softmax(ops.log(teacher + EPS) / temperature)
        log_soft_student = ops.log_softmax(ops.log(student + EPS) / temperature)
        kl = ops.sum(soft_teacher * (ops.log(soft_teacher + EPS) - log_soft_student), axis=-1)
        return (1 - weight) * hard(y_true, student) + weight * temperature**2 * kl

    return loss


def student_accuracy() -> keras.metrics.Metric:
    """Accuracy of the student's half of the output, logged as "accuracy" like an ordinary run."""
    return keras.metrics.MeanMetricWrapper(
        lambda y_true, y_pred: keras.metrics.categorical_accuracy(y_true, y_pred[:, :CLASSES]), name="accuracy")
