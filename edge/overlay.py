"""Drawing: face box, label, per-class confidence bars, FPS."""

from __future__ import annotations

import cv2
import numpy as np

COLORS = {  # BGR
    "angry": (40, 40, 220), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (40, 200, 240),
    "neutral": (180, 180, 180), "sad": (200, 120, 40), "surprise": (40, 160, 250),
}


def draw_faces(image: np.ndarray, faces, bars: bool = True, scale: float = 1.0) -> np.ndarray:
    """Annotate image in place (BGR) with each face's box, label and probability bars."""

    h, w = image.shape[:2]
    font_scale = max(0.4, min(w, h) / 900.0) * scale
    thick = max(1, int(round(2 * font_scale)))
    for face in faces:
        x, y, bw, bh = face.box
        color = COLORS.get(face.label, (0, 255, 0))
        cv2.rectangle(image, (x, y), (x + bw, y + bh), color, thick + 1)
        conf = max(face.probabilities.values())  # the top class's, also for an 'uncertain' face
        text = f"{face.label} {conf:.0%}" + (f" #{face.track_id}" if face.track_id is not None else "")
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale * 1.2, thick)
        ty = max(th + base, y - 4)
        cv2.rectangle(image, (x, ty - th - base), (x + tw + 4, ty + 2), color, -1)
        cv2.putText(image, text, (x + 2, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale * 1.2, (0, 0, 0), thick, cv2.LINE_AA)
        if bars:
            _draw_bars(image, face.probabilities, x + bw + 6 if x + bw + 130 * font_scale < w else max(0, x - int(130 * font_scale) - 6),
                       y, font_scale)
    return image


def _draw_bars(image, probs: dict, x0: int, y0: int, font_scale: float):
    row = int(16 * font_scale / 0.5)
    width = int(60 * font_scale / 0.5)
    for i, (label, p) in enumerate(sorted(probs.items(), key=lambda kv: -kv[1])):
        y = y0 + i * row
        cv2.rectangle(image, (x0, y), (x0 + width, y + row - 3), (60, 60, 60), -1)
        cv2.rectangle(image, (x0, y), (x0 + int(width * p), y + row - 3), COLORS.get(label, (0, 255, 0)), -1)
        cv2.putText(image, f"{label[:4]} {p:.2f}", (x0 + width + 3, y + row - 5), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale * 0.8, (255, 255, 255), 1, cv2.LINE_AA)


def draw_fps(image: np.ndarray, fps: float, scale: float = 1.0):
    fs = max(0.5, image.shape[1] / 1000.0) * scale
    cv2.putText(image, f"{fps:5.1f} FPS", (10, int(30 * fs)), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 255, 0), max(1, int(2 * fs)), cv2.LINE_AA)


def draw_status(image: np.ndarray, text: str, scale: float = 1.0):
    fs = max(0.6, image.shape[1] / 900.0) * scale
    cv2.putText(image, text, (10, image.shape[0] - int(20 * fs)), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 200, 255), max(1, int(2 * fs)), cv2.LINE_AA)


def blur_faces(image: np.ndarray, faces, margin: float = 0.15) -> np.ndarray:
    """Blur every face box (enlarged by margin on each side) in place, beyond recognition; returns image."""
    h, w = image.shape[:2]
    for face in faces:
        x, y, bw, bh = face.box
        x0, y0 = max(0, int(x - margin * bw)), max(0, int(y - margin * bh))
        x1, y1 = min(w, int(x + bw * (1 + margin))), min(h, int(y + bh * (1 + margin)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        region = image[y0:y1, x0:x1]
        # Pixelate to an 8x8 grid, then smooth: no facial detail survives, the overlay stays readable.
        small = cv2.resize(region, (8, 8), interpolation=cv2.INTER_AREA)
        image[y0:y1, x0:x1] = cv2.GaussianBlur(cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR), (0, 0), 3)
    return image
