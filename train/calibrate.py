"""Post-hoc class bias (logit adjustment) fitted on PublicTest: `feredge calibrate RUN_DIR`.

A network trained with class weights still under-predicts the rare, confusable classes (fear, disgust)
by an amount no training hyper-parameter pins down exactly. Adding a per-class offset to the logits
moves each decision boundary; it is the same as reweighting the predicted probabilities by a class
prior (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021). The offsets are fitted on
PublicTest only (the selection split) to maximise accuracy + macro-F1 while every class keeps a
recall of at least `min_recall`, then folded into the bias of the final dense layer, so every
exported format carries them and the runtime needs nothing new.

Writes RUN_DIR/calibrated.keras, RUN_DIR/calibration.json, and re-evaluates the calibrated model into
the run directory (metrics.json, confusion matrices), ready for `feredge export RUN_DIR/calibrated.keras`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from feredge.edge.preprocess import LABELS
from feredge.train import ferplus
from feredge.train.data import default_data_path, load_fer2013
from feredge.train.evaluate import (
    classification_metrics,
    evaluate_and_report,
    predict_split,
)

# Keras is imported where a model is loaded: heavy, and its backend is chosen at first import.

log = logging.getLogger(__name__)
HEAD = "probs"  # the name of every architecture's final softmax dense layer (train/models.py)


def objective(log_probs: np.ndarray, y, bias: np.ndarray, min_recall: float) -> float:
    """accuracy + macro-F1, less a penalty for any class under min_recall; y: the labels, or a list of
    label sets (-1: no label), whose objectives are averaged."""

    total = 0.0
    label_sets = y if isinstance(y, list) else [y]
    for labels in label_sets:
        scored = labels >= 0
        m = classification_metrics(labels[scored], (log_probs[scored] + bias).argmax(1))
        worst = min(c["recall"] for c in m["per_class"].values())
        total += m["accuracy"] + m["macro_f1"] - 10.0 * max(0.0, min_recall - worst)
    return total / len(label_sets)


def fit_class_bias(probs: np.ndarray, y, min_recall: float = 0.45, rounds: int = 3,
                   steps=np.linspace(-1.0, 1.0, 21)) -> np.ndarray:
    """Per-class logit offsets by coordinate ascent over a grid (a handful of parameters, a smooth
    enough objective: no optimiser library needed). y: labels, or a list of label sets (objective)."""
    log_probs = np.log(np.clip(probs, 1e-9, 1.0))
    bias = np.zeros(probs.shape[1])
    best = objective(log_probs, y, bias, min_recall)
    for _ in range(rounds):
        for c in range(len(bias)):
            for step in steps:
                trial = bias.copy()
                trial[c] += step
                score = objective(log_probs, y, trial, min_recall)
                if score > best + 1e-9:
                    best, bias = score, trial
    return bias - bias.mean()  # only differences matter


def with_class_bias(model, bias: np.ndarray):
    """The model with bias added to its head's logits (in place; returns it)."""
    head = model.get_layer(HEAD)
    kernel, b = head.get_weights()
    head.set_weights([kernel, b + bias.astype(b.dtype)])
    return model


def calibrate(run_dir, min_recall: float = 0.45, data=None, label_sets: str = "fer2013") -> dict:
    """label_sets: "fer2013" (FER-2013's labels) or "both" (also FER+'s majority: the objective is the
    mean of the two, and every class keeps min_recall on each)."""
    import keras

    run_dir = Path(run_dir)
    source = run_dir / "best.keras"
    if not source.exists():
        raise FileNotFoundError(f"no best.keras in run directory {run_dir}")
    data = data or load_fer2013(default_data_path())
    model = keras.models.load_model(source, compile=False)
    _, size, _, channels = model.input_shape
    predict = lambda x: np.asarray(model.predict(x, batch_size=256, verbose=0))  # noqa: E731
    val = data["val"]
    probs = predict_split(predict, val.x, size, channels, tta=False)
    if label_sets == "both":
        if val.votes is None:
            raise ValueError("calibrating on both label sets needs FER+ votes beside the data")
        targets = [val.y, ferplus.majority(val.votes)]
    else:
        targets = val.y
    bias = fit_class_bias(probs, targets, min_recall)
    before = classification_metrics(val.y, probs.argmax(1))
    after = classification_metrics(val.y, (np.log(np.clip(probs, 1e-9, 1)) + bias).argmax(1))
    out = run_dir / "calibrated.keras"
    with_class_bias(model, bias).save(out)
    summary = {"source": source.name, "method": "logit adjustment fitted on PublicTest", "min_recall": min_recall,
               "label_sets": label_sets,
               "bias": dict(zip(LABELS, np.round(bias, 3).tolist())),
               "publictest_before": {k: round(before[k], 4) for k in ("accuracy", "macro_f1")}
               | {"recall": {k: round(v["recall"], 3) for k, v in before["per_class"].items()}},
               "publictest_after": {k: round(after[k], 4) for k in ("accuracy", "macro_f1")}
               | {"recall": {k: round(v["recall"], 3) for k, v in after["per_class"].items()}}}
    (run_dir / "calibration.json").write_text(json.dumps(summary, indent=2))
    log.info("class bias %s: PublicTest accuracy %.4f -> %.4f, macro-F1 %.4f -> %.4f", summary["bias"],
             before["accuracy"], after["accuracy"], before["macro_f1"], after["macro_f1"])
    summary["metrics"] = evaluate_and_report(out, data, run_dir, splits=("val", "test"), tta=True)
    return summary
