"""Face detection: OpenCV's YuNet (cv2.FaceDetectorYN) by default.

The YuNet file comes from, in order: the `model_path` setting, $FEREDGE_FACE_MODEL, the user cache
(~/.cache/feredge), or a one-time download of the official OpenCV Zoo file checked against a pinned
sha256 (only when downloads are allowed). Failing all of that, a Haar cascade is used if the installed
OpenCV ships one (opencv-python 5 does not), with a warning; otherwise a FaceDetectorError says how
to get the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.native_log import known_noise_dropped

log = logging.getLogger(__name__)

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_URL = "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/" + YUNET_FILE
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


RETRY_MAX_WIDTH = 1920  # widest frame the no-face retry enlarges to


class FaceDetectorError(Exception):
    """No usable face detector; one line saying what to do."""


@dataclass
class FaceBox:
    box: tuple[int, int, int, int]  # x, y, w, h in image pixels
    score: float
    eyes: tuple | None = None  # YuNet's ((right eye x, y), (left eye x, y)) in image pixels; None for Haar

    def roll_degrees(self) -> float:
        """Head roll from the eye line (positive: the subject's left eye sits lower in the image)."""
        if self.eyes is None:
            return 0.0
        (rx, ry), (lx, ly) = self.eyes
        return float(np.degrees(np.arctan2(ly - ry, lx - rx)))


def user_cache() -> Path:
    return Path(os.environ.get("FEREDGE_CACHE", Path.home() / ".cache" / "feredge"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_yunet(model_path=None, allow_download: bool = False, timeout: float = 30.0) -> Path | None:
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FaceDetectorError(f"face model not found: {path}")
        return path
    env = os.environ.get("FEREDGE_FACE_MODEL")
    if env:
        if not Path(env).is_file():
            raise FaceDetectorError(f"FEREDGE_FACE_MODEL points to a missing file: {env}")
        return Path(env)
    cached = user_cache() / YUNET_FILE
    if cached.is_file() and _sha256(cached) == YUNET_SHA256:
        return cached
    if allow_download:
        try:
            log.warning("downloading the YuNet face detector (232 KB) to %s", cached)
            cached.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(YUNET_URL, timeout=timeout) as r:
                blob = r.read()
            if hashlib.sha256(blob).hexdigest() != YUNET_SHA256:
                raise FaceDetectorError(f"downloaded {YUNET_FILE} has the wrong sha256; not used")
            tmp = cached.with_suffix(".part")
            tmp.write_bytes(blob)
            tmp.replace(cached)
            return cached
        except (OSError, ValueError) as e:
            log.warning("could not download the YuNet face detector: %s", e)
    return None


def haar_cascade_path() -> Path | None:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder or "") / "haarcascade_frontalface_default.xml"
    return path if folder and path.is_file() else None


class FaceDetector:
    """detect(bgr_or_grey_image) -> list[FaceBox], largest first.

    min_face: smallest face side in pixels of the original image; detect_width: frames wider than
    this are shrunk before detection (speed), boxes are scaled back. retry_zoom: when nothing is found,
    look once more with the frame enlarged this much (1 disables): YuNet misses many small or
    low-detail faces at their own size and finds them enlarged, at the cost of a slower empty frame
    (`python -m feredge.benchmarks.detection` measures both).
    """

    def __init__(self, model_path=None, score_threshold: float = 0.6, min_face: int = 24,
                 detect_width: int = 640, retry_zoom: float = 2.0, allow_download: bool = False):

        self.min_face, self.detect_width, self.retry_zoom, self.kind = min_face, detect_width, retry_zoom, "yunet"
        path = find_yunet(model_path, allow_download)
        if path is not None:
            try:
                with known_noise_dropped():
                    self._yunet = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, 0.3, 50)
            except cv2.error as e:
                raise FaceDetectorError(f"{path} is not a YuNet face model: {str(e).strip().splitlines()[-1][:150]}") from None
            self._size = None
            return
        haar = haar_cascade_path()
        if haar is None:
            raise FaceDetectorError(
                f"no face detector: pass --face-model PATH to {YUNET_FILE} (or set FEREDGE_FACE_MODEL); "
                f"get it from {YUNET_URL} (sha256 {YUNET_SHA256[:12]}...), or allow the download")
        log.warning("YuNet face model unavailable: falling back to OpenCV's Haar cascade (less accurate)")
        self.kind = "haar"
        self._haar = cv2.CascadeClassifier(str(haar))

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        w = image.shape[1]
        scale = min(1.0, self.detect_width / float(w)) if self.detect_width else 1.0
        faces = self.detect_at(image, scale)
        retry = min(scale * self.retry_zoom, RETRY_MAX_WIDTH / w)  # a large photo is not blown up further
        if not faces and retry > scale:
            faces = self.detect_at(image, retry)
        return faces

    def detect_at(self, image: np.ndarray, scale: float) -> list[FaceBox]:
        """Faces found with the image resized by scale (boxes in the image's own pixels)."""

        h, w = image.shape[:2]
        if scale != 1:
            small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        else:
            small = image
        if self.kind == "haar":
            gray = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            raw = [(x, y, bw, bh, 1.0, None) for x, y, bw, bh in self._haar.detectMultiScale(gray, 1.1, 5)]
        else:
            if small.ndim == 2:
                small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
            elif small.shape[2] == 4:
                small = cv2.cvtColor(small, cv2.COLOR_BGRA2BGR)
            size = (small.shape[1], small.shape[0])
            if size != self._size:
                self._yunet.setInputSize(size)
                self._size = size
            _, found = self._yunet.detect(small)
            raw = [] if found is None else [(f[0], f[1], f[2], f[3], f[14], f[4:8]) for f in found]
        faces = []
        for x, y, bw, bh, score, eyes in raw:
            box = tuple(int(round(v / scale)) for v in (x, y, bw, bh))
            if min(box[2], box[3]) >= self.min_face:
                eyes = None if eyes is None else tuple((float(eyes[i]) / scale, float(eyes[i + 1]) / scale) for i in (0, 2))
                faces.append(FaceBox(box, float(score), eyes))
        return sorted(faces, key=lambda f: -f.box[2] * f.box[3])
