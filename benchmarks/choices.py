"""What each runtime choice buys and costs: `python -m feredge.benchmarks.choices MODEL...`

For each model (a shipped name or a model folder, its default format) and each combination of
`--tta` and `--prior training|balanced`, the choice is applied exactly as `feredge detect` applies it
(EmotionDetector.classify_crops) to the 3,589 FER-2013 PrivateTest faces, and scored on FER-2013's
labels and on FER+'s majority (images without one left out): accuracy, balanced accuracy (mean
recall), macro-F1, lowest class recall. Cost: the classifier's median time per face, 1 thread, timed
with the choices in turns. `--min-confidence` is reported as the share of faces it would call
"uncertain" and the accuracy on the rest. Writes benchmarks/results/choices/choices.md. Takes
`--face-model PATH` like the other benchmarks: no face is detected, but EmotionDetector needs one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from feredge.benchmarks import RESULTS_DIR, publish
from feredge.benchmarks.bench import machine_name
from feredge.benchmarks.report import lowest_recall
from feredge.edge.detector import EmotionDetector
from feredge.train import ferplus
from feredge.train.data import default_data_path, load_fer2013
from feredge.train.evaluate import classification_metrics

CHOICES = [(False, "training"), (True, "training"), (False, "balanced"), (True, "balanced")]
CONFIDENCES = (0.4, 0.6)


def scores(y, pred) -> dict:
    m = classification_metrics(y, pred)
    return {"acc": m["accuracy"], "bal": m["balanced_accuracy"], "f1": m["macro_f1"],
            "worst": lowest_recall({"recall": {label: c["recall"] for label, c in m["per_class"].items()}})}


def ms_per_face(detector, faces, reps: int) -> float:
    """Median ms per face over reps calls of one face each."""
    detector.classify_crops(faces[:1])  # warm-up
    times = []
    for i in range(reps):
        start = time.perf_counter()
        detector.classify_crops(faces[i % len(faces): i % len(faces) + 1])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="shipped model names or model folders")
    parser.add_argument("--data", help="FER-2013 (default: FER2013_ZIP or ../shared); FER+ votes beside it")
    parser.add_argument("--reps", type=int, default=300, help="timed one-face calls per choice")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "choices" / "choices.md")
    parser.add_argument("--face-model", help="YuNet file (or FEREDGE_FACE_MODEL): the detector is built, not timed")
    args = parser.parse_args()
    test = load_fer2013(args.data or default_data_path())["test"]
    if test.votes is None:
        raise SystemExit("feredge: error: no FER+ votes beside the data (ferplus_votes.csv or FERPLUS_VOTES)")
    faces = list(test.x)
    majority = ferplus.majority(test.votes)
    scored = majority >= 0
    head = ["model", "tta", "prior", "FER-2013 acc", "bal. acc", "macro-F1", "lowest recall",
            "FER+ acc", "bal. acc", "macro-F1", "lowest recall", "ms/face, 1 thread"]
    lines = [f"Runtime choices on FER-2013 PrivateTest ({len(test)} faces; FER+ majority: {scored.sum()}, "
             f"{(~scored).sum()} without one left out), {machine_name()}, "
             "`python -m feredge.benchmarks.choices " + " ".join(args.models) + "`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    uncertain = []
    for model in args.models:
        for tta, prior in CHOICES:
            det = EmotionDetector(model, threads=1, tta=tta, prior=prior, face_model=args.face_model)
            probs = det.classify_crops(faces)
            pred = probs.argmax(1)
            a, b = scores(test.y, pred), scores(majority[scored], pred[scored])
            ms = ms_per_face(det, faces, args.reps)
            lines.append("| " + " | ".join([model, "on" if tta else "off", prior,
                                            *(f"{100 * a[k]:.2f} %" for k in ("acc", "bal")), f"{a['f1']:.3f}", a["worst"],
                                            *(f"{100 * b[k]:.2f} %" for k in ("acc", "bal")), f"{b['f1']:.3f}", b["worst"],
                                            f"{ms:.3f}"]) + " |")
            if not tta and prior == "training":
                for c in CONFIDENCES:
                    sure = probs.max(1) >= c
                    uncertain.append(f"| {model} | {c} | {100 * (1 - sure.mean()):.1f} % | "
                                     f"{100 * np.mean(pred[sure] == test.y[sure]):.2f} % | "
                                     f"{100 * np.mean(pred[sure & scored] == majority[sure & scored]):.2f} % |")
    lines += ["", "`--min-confidence` (tta off, prior training): share called uncertain, accuracy on the rest.", "",
              "| model | min confidence | uncertain | FER-2013 acc (rest) | FER+ acc (rest) |", "|---|---|---|---|---|",
              *uncertain]
    publish(args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
