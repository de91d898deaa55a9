"""Evaluation any practitioner would trust: accuracy, per-class and macro precision / recall / F1,
confusion matrix (JSON and PNG), training curves (PNG), optional flip test-time augmentation.

Works on any saved model: `.keras` through Keras, `.tflite` / `.onnx` through the edge runtime.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from feredge.edge.classifier import geometric_mean, load_classifier, locate_model
from feredge.edge.preprocess import LABELS, preprocess_faces
from feredge.train import ferplus
from feredge.train.data import subset

# matplotlib and Keras are imported where a picture is drawn or a model loaded: heavy, and Keras's
# backend is chosen at first import.

log = logging.getLogger(__name__)


def classification_metrics(y_true, y_pred, n_classes: int = len(LABELS)) -> dict:
    """Accuracy, per-class and macro precision/recall/F1 and the confusion matrix (rows: truth)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    labels = LABELS if n_classes == len(LABELS) else tuple(str(i) for i in range(n_classes))
    return {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / max(1, len(y_true))),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "balanced_accuracy": float(recall[actual > 0].mean()) if np.any(actual > 0) else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {lab: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for lab, p, r, f, s in zip(labels, precision, recall, f1, actual)},
        "confusion_matrix": cm.tolist(),
    }


ECE_BINS = 10


def calibration_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS):
    """(expected calibration error, per-bin [confidence, accuracy, count]) of the top class's probability."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    table = [[float(conf[which == b].mean()) if np.any(which == b) else 0.0,
              float(correct[which == b].mean()) if np.any(which == b) else 0.0, int(np.sum(which == b))]
             for b in range(bins)]
    ece = sum(n * abs(c - a) for c, a, n in table) / max(1, len(y))
    return float(ece), table


def agreement_with_people(probs: np.ndarray, votes: np.ndarray) -> dict:
    """Metrics on FER+'s majority (images without a FER+ target left out, and counted), plus the mean
    cross-entropy from the crowd's vote shares to the predicted probabilities and the expected
    calibration error (ECE) of the top probability against the majority."""

    truth = ferplus.majority(votes)
    scored = truth >= 0
    m = classification_metrics(truth[scored], probs[scored].argmax(1))
    shares = ferplus.distribution(votes)[scored]
    m["left_out"] = int(np.sum(~scored))
    m["vote_cross_entropy"] = float(np.mean(-(shares * np.log(np.clip(probs[scored], 1e-7, 1))).sum(1)))
    m["ece"], m["reliability"] = calibration_bins(probs[scored], truth[scored])
    return m


def plot_reliability(curves: dict, path: Path, title: str):
    """Reliability diagram: accuracy against confidence per bin, one line per label set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for name, (ece, table) in curves.items():
        pts = [(c, a) for c, a, n in table if n]
        ax.plot(*zip(*pts), marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(cm, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(len(LABELS)), LABELS)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_history(history_csv: Path, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", a1), ("accuracy", a2)):
        ax.plot(epochs, [float(r[key]) for r in rows], label=f"train {key} (augmented)")
        if f"val_{key}" in rows[0]:
            ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], label=f"PublicTest {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def predictor(model_path: Path):
    """(predict_fn(pixels) -> probabilities, input_size, channels) for a .keras, .tflite or .onnx file, a
    model folder (an ensemble's included) or a shipped model's name."""
    model_path = locate_model(model_path)
    if model_path.suffix == ".keras":
        import keras

        model = keras.models.load_model(model_path, compile=False)
        _, h, _, c = model.input_shape
        return (lambda x: np.asarray(model.predict(x, batch_size=256, verbose=0))), h, c

    clf = load_classifier(model_path)
    return clf.predict_pixels, clf.input_size, clf.channels


def model_paths(spec) -> list[str]:
    """Several models named at once, separated by commas, act as one ensemble."""
    return [p.strip() for p in str(spec).split(",") if p.strip()]


def predict_split(predict_fn, x_gray, size, channels, tta: bool, batch: int = 512):
    out = []
    for i in range(0, len(x_gray), batch):
        xb = preprocess_faces(x_gray[i : i + batch], size, channels)
        p = predict_fn(xb)
        if tta:
            p = (p + predict_fn(xb[:, :, ::-1, :].copy())) / 2.0
        out.append(p)
    return np.concatenate(out)


def evaluate_and_report(model_path, data, out_dir, splits=("test",), tta=False, max_samples=0, seed=0) -> dict:
    """Evaluate model_path (or several, comma-separated: their geometric mean) on the given splits; write
    metrics.json, confusion matrices, curves."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    members = [predictor(p) for p in model_paths(model_path)]

    def predict(x_gray, tta):
        return geometric_mean([predict_split(fn, x_gray, size, channels, tta) for fn, size, channels in members])

    names = {"val": "PublicTest", "test": "PrivateTest", "train": "Training"}
    results = {"model": str(model_path)}
    for split in splits:
        part = subset(data[split], max_samples, seed)
        if not len(part):  # e.g. PrivateTest left out of a training pack
            log.info("%s: no images, not evaluated", names[split])
            continue
        probs = predict(part.x, tta=False)
        m = classification_metrics(part.y, probs.argmax(1))
        m["ece"], m["reliability"] = calibration_bins(probs, part.y)
        results[split] = m
        curves = {"FER-2013 labels": (m["ece"], m["reliability"])}
        if part.votes is not None:
            people = results[f"{split}_ferplus"] = agreement_with_people(probs, part.votes)
            curves["FER+ majority"] = (people["ece"], people["reliability"])
            log.info("%s %s, FER+ majority: accuracy %.4f, macro-F1 %.4f (n=%d, %d without one left out), "
                     "vote cross-entropy %.3f", Path(model_path).name, names[split], people["accuracy"],
                     people["macro_f1"], people["n"], people["left_out"], people["vote_cross_entropy"])
        plot_reliability(curves, out_dir / f"reliability_{split}.png", f"{names[split]}: reliability")
        (out_dir / f"confusion_{split}.json").write_text(json.dumps(
            {"labels": LABELS, "rows": "true", "cols": "predicted", "matrix": m["confusion_matrix"]}))
        plot_confusion(m["confusion_matrix"], out_dir / f"confusion_{split}.png",
                       f"{names[split]} ({m['n']}): accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
        if tta:
            tprobs = predict(part.x, tta=True)
            results[f"{split}_flip_tta"] = {k: v for k, v in classification_metrics(part.y, tprobs.argmax(1)).items()
                                            if k in ("n", "accuracy", "macro_f1", "balanced_accuracy")}
            if part.votes is not None:
                results[f"{split}_ferplus_flip_tta"] = {k: v for k, v in agreement_with_people(tprobs, part.votes).items()
                                                        if k in ("n", "accuracy", "macro_f1", "balanced_accuracy")}
        log.info("%s %s: accuracy %.4f, macro-F1 %.4f (n=%d)", Path(model_path).name, names[split],
                 m["accuracy"], m["macro_f1"], m["n"])
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    if (out_dir / "history.csv").exists():
        plot_history(out_dir / "history.csv", out_dir / "curves.png")
    return results
