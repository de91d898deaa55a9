"""Generated test videos: the sample astronaut face pasted 1 or 3 times onto a 640x480 frame,
drifting a little each frame, so detection and tracking have real work to do."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from feredge.edge.detector import read_image

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "edge" / "assets" / "astronaut.jpg"
# The face in the 512x512 sample (found by YuNet), with some hair and chin around it.
SAMPLE_FACE_BOX = (150, 20, 150, 190)


def sample_face(width: int) -> np.ndarray:
    x, y, w, h = SAMPLE_FACE_BOX
    crop = read_image(SAMPLE_IMAGE)[y : y + h, x : x + w]
    return cv2.resize(crop, (width, int(round(width * h / w))), interpolation=cv2.INTER_AREA)


def make_video(path, faces: int = 1, frames: int = 60, size=(640, 480), fps: float = 25.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    face_w = 150 if faces == 1 else 120
    face = sample_face(face_w)
    fh, fw = face.shape[:2]
    starts = [((w - fw) // 2, (h - fh) // 2)] if faces == 1 else [(20 + i * (w - 40) // faces, (h - fh) // 2) for i in range(faces)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    rng = np.random.default_rng(0)
    background = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(background, (0, 0), 8)
    for i in range(frames):
        frame = background.copy()
        for k, (x0, y0) in enumerate(starts):
            dx = int(8 * np.sin(i / 6.0 + k))
            dy = int(5 * np.cos(i / 7.0 + k))
            x, y = min(max(0, x0 + dx), w - fw), min(max(0, y0 + dy), h - fh)
            frame[y : y + fh, x : x + fw] = face
        writer.write(frame)
    writer.release()
    return path
