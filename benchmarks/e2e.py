"""End-to-end accuracy: FER-2013 faces composited into larger camera-like frames, then found by the
face detector, cropped and classified exactly as the runtime does. A face the detector misses counts
as wrong, so the figure is what a user gets, and its gap to the plain crop accuracy is what detection
and cropping cost.

Each frame (seeded per image, so runs are comparable): a 640x480 background of smooth colour and
clutter; the face upscaled to 64-200 px, its surroundings extended by edge replication and feathered
into the background at a random position; then mild blur (sigma 0-1 px), sensor noise (sigma 0-6) and
a brightness/contrast change (x0.7-1.3, +-20). The face's true square is known, so the detection that
overlaps it best is the one that counts.
"""

from __future__ import annotations

import cv2
import numpy as np

from feredge.edge.tracking import iou
from feredge.train.evaluate import classification_metrics

FRAME = (640, 480)
FACE_SIDE = (64, 200)
MIN_IOU = 0.3  # a detection overlapping the true face square this much has found it


def composite(face_gray: np.ndarray, seed: int, frame_size=FRAME):
    """(BGR frame, true face square (x, y, side, side)) for one 48x48 grey face."""

    rng = np.random.default_rng(seed)
    w, h = frame_size
    small = rng.uniform(40, 220, (6, 8, 3)).astype(np.float32)  # smooth colour field
    frame = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(2, 7)):  # clutter: random rectangles
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        cv2.rectangle(frame, (x0, y0), (x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 150))),
                      rng.uniform(0, 255, 3).tolist(), -1)
    side = int(rng.integers(*FACE_SIDE))
    pad = side // 2
    face = cv2.resize(face_gray, (side, side), interpolation=cv2.INTER_CUBIC)
    patch = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE).astype(np.float32)
    full = side + 2 * pad
    alpha = np.zeros((full, full), np.float32)  # 1 on the face, fading out over the replicated border
    alpha[pad // 2 : full - pad // 2, pad // 2 : full - pad // 2] = 1
    alpha = cv2.GaussianBlur(alpha, (0, 0), pad / 4)
    alpha[pad : pad + side, pad : pad + side] = 1
    x = int(rng.integers(-pad // 2, w - full + pad // 2))
    y = int(rng.integers(-pad // 2, h - full + pad // 2))
    fx0, fy0, fx1, fy1 = max(0, x), max(0, y), min(w, x + full), min(h, y + full)
    px0, py0 = fx0 - x, fy0 - y
    a = alpha[py0 : py0 + fy1 - fy0, px0 : px0 + fx1 - fx0, None]
    p = patch[py0 : py0 + fy1 - fy0, px0 : px0 + fx1 - fx0, None]
    frame[fy0:fy1, fx0:fx1] = a * p + (1 - a) * frame[fy0:fy1, fx0:fx1]
    sigma = rng.uniform(0, 1.0)
    if sigma > 0.1:
        frame = cv2.GaussianBlur(frame, (0, 0), sigma)
    frame = frame * rng.uniform(0.7, 1.3) + rng.uniform(-20, 20) + rng.normal(0, rng.uniform(0, 6), frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8), (x + pad, y + pad, side, side)


def composites(faces_gray: np.ndarray, seed: int = 0):
    """(frame, true face square) per face, each seeded by the run's seed and the face's index."""
    for i, face in enumerate(faces_gray):
        yield composite(face, seed * 1_000_003 + i)


def e2e_faces(face_detector, faces_gray: np.ndarray, seed: int = 0):
    """Per face: (its composited frame, the detection overlapping it best, or None where no detection
    overlaps it by MIN_IOU). face_detector: anything with detect_faces(frame) or detect(frame)."""
    detect = getattr(face_detector, "detect_faces", None) or face_detector.detect
    for frame, truth in composites(faces_gray, seed):
        found = detect(frame)
        overlaps = [iou(f.box, truth) for f in found]
        yield frame, (found[int(np.argmax(overlaps))] if overlaps and max(overlaps) >= MIN_IOU else None)


def e2e_crops(detector, faces_gray: np.ndarray, seed: int = 0) -> list:
    """Per face: the runtime's crop of its detection (None if missed). Detection runs once; every
    format reuses the crops."""
    return [None if best is None else detector.crops(frame, [best])[0] for frame, best in e2e_faces(detector, faces_gray, seed)]


def e2e_metrics(predict_faces, crops: list, y: np.ndarray) -> dict:
    """Accuracy and macro-F1 of predict_faces over the crops, a missed face counting as wrong."""

    found = np.array([c is not None for c in crops])
    pred = np.full(len(crops), 7)  # an eighth "no face" column: wrong for recall, no false positive
    if found.any():
        pred[found] = predict_faces([c for c in crops if c is not None]).argmax(1)
    m = classification_metrics(y, pred, n_classes=8)
    f1 = [c["f1"] for c in list(m["per_class"].values())[:7]]
    return {"e2e_accuracy": round(m["accuracy"], 4), "e2e_macro_f1": round(float(np.mean(f1)), 4),
            "faces_found_pct": round(100 * float(found.mean()), 2),
            "accuracy_on_found_faces": round(float(np.mean(pred[found] == y[found])) if found.any() else 0.0, 4)}
