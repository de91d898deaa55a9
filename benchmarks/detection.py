"""Face-detector operating points on the end-to-end composites: the measurement behind the runtime's
score threshold and its no-face retry.

    python -m feredge.benchmarks.detection --face-model PATH/face_detection_yunet.onnx

Each PublicTest face (the selection split; the e2e benchmark reports PrivateTest) is composited into a
640x480 frame exactly as in benchmarks/e2e.py. For each detection width, with and without the retry
(when nothing scores above the threshold, detect again with the frame enlarged 2x, as
edge/faces.py does), and each score threshold: the share of faces found (a box overlapping the true
face by IoU >= 0.3, e2e.MIN_IOU), false detections per frame (boxes overlapping nothing), the median detection
time per frame on this machine, and what a frame with no face costs (the retry always runs there).
With --model, also where the end-to-end gap comes from under the runtime's defaults (on all of
PublicTest): the faces missed, and on the faces found, end-to-end accuracy against the accuracy of
their 48x48 crops.
Writes benchmarks/results/detection/detection.md (the README shows it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from feredge.benchmarks import RESULTS_DIR, publish
from feredge.benchmarks.e2e import FRAME, MIN_IOU, composites, e2e_crops
from feredge.edge.detector import EmotionDetector
from feredge.edge.faces import FaceDetector
from feredge.edge.tracking import iou
from feredge.train.data import default_data_path, load_fer2013, subset

RESULTS = RESULTS_DIR / "detection" / "detection.md"
WIDTHS = (320, 640)  # detection widths of a 640x480 frame: the --pi preset and the default
THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8)
RETRY_ZOOM = 2.0


def detections(faces_gray: np.ndarray, face_model, scales, seed: int = 0):
    """Per frame and scale: (scores of boxes on the face, scores of the other boxes, seconds)."""

    detector = FaceDetector(face_model, score_threshold=min(THRESHOLDS), detect_width=0, retry_zoom=1)
    out = []
    for frame, truth in composites(faces_gray, seed):
        per_scale = {}
        for s in scales:
            t0 = time.perf_counter()
            found = detector.detect_at(frame, s)
            dt = time.perf_counter() - t0
            hit = [iou(f.box, truth) >= MIN_IOU for f in found]
            per_scale[s] = (np.array([f.score for f, h in zip(found, hit) if h]),
                            np.array([f.score for f, h in zip(found, hit) if not h]), dt)
        out.append(per_scale)
    return out


def operating_points(per_frame) -> list[dict]:
    rows = []
    for width in WIDTHS:
        base = width / FRAME[0]
        for retry in (False, True):
            for th in THRESHOLDS:
                found, false, times, empty = [], [], [], []
                for d in per_frame:
                    hits, others, dt = d[base]
                    empty.append(dt + (d[base * RETRY_ZOOM][2] if retry else 0))
                    if retry and not (hits >= th).any() and not (others >= th).any():
                        hits, others, dt2 = d[base * RETRY_ZOOM]
                        dt += dt2
                    found.append((hits >= th).any())
                    false.append(int((others >= th).sum()))
                    times.append(dt)
                rows.append({"detect_width": width, "retry_zoom": RETRY_ZOOM if retry else 1, "score": th,
                             "faces_found_pct": round(100 * float(np.mean(found)), 2),
                             "false_per_frame": round(float(np.mean(false)), 3),
                             "median_ms": round(1000 * float(np.median(times)), 1),
                             "no_face_frame_ms": round(1000 * float(np.median(empty)), 1)})
    return rows


def markdown(rows: list[dict], n: int) -> str:
    keys = list(rows[0])
    lines = [f"YuNet on {n} PublicTest faces (a seeded stratified sample) composited into 640x480 frames "
             "(benchmarks/e2e.py); `python -m feredge.benchmarks.detection`.", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def gap_decomposition(model, face_model, faces_gray: np.ndarray, y: np.ndarray) -> str:
    """One line: where e2e accuracy loses against crop accuracy, with the runtime's default settings."""

    detector = EmotionDetector(model, face_model=face_model)
    crops = e2e_crops(detector, faces_gray)
    found = np.array([c is not None for c in crops])
    on_crop = detector.classifier.predict_faces(list(faces_gray)).argmax(1) == y
    end_to_end = detector.classifier.predict_faces([c for c in crops if c is not None]).argmax(1) == y[found]
    pct = lambda a: f"{100 * float(np.mean(a)):.2f} %"  # noqa: E731
    return (f"{model} ({detector.classifier.format}), {len(y)} PublicTest faces, runtime defaults: crop accuracy "
            f"{pct(on_crop)}, end to end {100 * end_to_end.sum() / len(y):.2f} %; faces found {pct(found)}; "
            f"on the found faces {pct(end_to_end)} end to end against {pct(on_crop[found])} on their 48x48 "
            f"crops; the missed faces' crops were {pct(on_crop[~found])} right.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--face-model", help="YuNet file (or FEREDGE_FACE_MODEL)")
    p.add_argument("--data", help="FER-2013 zip, folder or csv (default: $FER2013_ZIP or ../shared)")
    p.add_argument("--n", type=int, default=1000, help="PublicTest faces used, a seeded stratified sample (default 1000; 0: all)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--model", help="also break down this model's end-to-end gap, on all of PublicTest")
    args = p.parse_args(argv)

    val = load_fer2013(args.data or default_data_path())["val"]
    sample = subset(val, args.n, seed=0)  # stratified
    scales = sorted({w / FRAME[0] * z for w in WIDTHS for z in (1, RETRY_ZOOM)})
    table = markdown(operating_points(detections(sample.x, args.face_model, scales)), len(sample))
    if args.model:  # one pass at the default settings: affordable on every PublicTest face
        table += "\n" + gap_decomposition(args.model, args.face_model, val.x, val.y) + "\n"
    publish(Path(args.out), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
