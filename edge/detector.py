"""The three-line API:
    from feredge.edge import EmotionDetector
    detector = EmotionDetector()                 # the shipped model, loaded once
    for face in detector.predict("photo.jpg"):   # a path or a BGR/grey numpy image
        print(face.label, face.probabilities, face.box)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.classifier import (
    MODELS_DIR,
    PRIORS,
    ModelError,
    load_classifier,
    with_prior,
)
from feredge.edge.faces import FaceDetector
from feredge.edge.preprocess import DEFAULT_CROP, square_crop, to_gray

DEFAULT_MODEL = "custom_cnn"  # the shipped default, models/custom_cnn
UNCERTAIN = "uncertain"  # the label of a face whose top probability is under min_confidence


class ImageError(Exception):
    """An input image can't be read; one line naming it."""


@dataclass
class Face:
    box: tuple[int, int, int, int]
    label: str
    probabilities: dict[str, float]
    detector_score: float
    track_id: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"box": list(self.box), "label": self.label, "detector_score": round(self.detector_score, 4),
               "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()}}
        if self.track_id is not None:
            out["face_id"] = self.track_id
        return out


def default_model_dir() -> Path:
    return Path(os.environ.get("FEREDGE_MODEL", MODELS_DIR / DEFAULT_MODEL))


def read_image(path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"cannot decode image: {path} (corrupt or not an image)")
    return image


# Settings for a Raspberry Pi 4/5 (`feredge detect --pi`): all 4 cores; detection on frames shrunk to
# 320 px wide (a quarter of YuNet's work at 640, still finds faces of about 20 px in the original);
# detection every 2nd frame, tracked faces classified in between. Their x86 1-thread cost is in
# `feredge bench`'s loop table, the Pi estimate in benchmarks/pi_estimate.py.
PI_PRESET = {"threads": 4, "detect_width": 320, "detect_every": 2}
# The same settings without --pi (threads None: the runtimes' own default).
DEFAULT_SETTINGS = {"threads": None, "detect_width": 640, "detect_every": 1}


class EmotionDetector:
    def __init__(self, model=None, fmt: str | None = None, face_model=None, threads: int | None = None,
                 min_face: int = 24, detect_width: int = 640, allow_download: bool = False,
                 face_score: float = 0.6, retry_zoom: float = 2.0, crop: dict | None = None,
                 tta: bool = False, prior: str = "training", min_confidence: float = 0.0):
        """tta: average each face's probabilities with its mirror's (twice the classifier's work).
        prior: "training" or "balanced" (classifier.with_prior). min_confidence: faces whose top
        probability is under it are labelled "uncertain" (their probabilities are kept)."""
        if prior not in PRIORS:
            raise ModelError(f"prior must be one of {', '.join(PRIORS)}, got '{prior}'")
        if not 0.0 <= min_confidence <= 1.0:
            raise ModelError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        self.tta, self.prior, self.min_confidence = tta, prior, min_confidence
        self.classifier = load_classifier(model or default_model_dir(), fmt=fmt, threads=threads)
        if threads:  # YuNet runs on OpenCV's own (process-wide) thread pool
            cv2.setNumThreads(threads)
        self.faces = FaceDetector(face_model, score_threshold=face_score, min_face=min_face,
                                  detect_width=detect_width, retry_zoom=retry_zoom, allow_download=allow_download)
        # The crop the model was exported with (its manifest), else the measured default.
        self.crop = crop or self.classifier.crop or DEFAULT_CROP
        self.labels = self.classifier.labels

    def detect_faces(self, image: np.ndarray):
        return self.faces.detect(image)

    def crops(self, image: np.ndarray, faces) -> list[np.ndarray]:
        """The grey face crop for each FaceBox found in image (eye-levelled if the crop spec says so)."""
        gray = to_gray(image)
        align = self.crop.get("align") == "eyes"
        return [square_crop(gray, f.box, self.crop, f.roll_degrees() if align else 0.0) for f in faces]

    def classify(self, image: np.ndarray, faces) -> np.ndarray:
        """Probabilities for each FaceBox found in image."""
        return self.classify_crops(self.crops(image, faces))

    def classify_crops(self, crops) -> np.ndarray:
        """Probabilities for grey face crops, with the detector's tta and prior."""
        probs = self.classifier.predict_faces(crops)
        if self.tta and len(crops) and not self.classifier.mirrored:  # an ensemble may mirror already
            probs = (probs + self.classifier.predict_faces([np.ascontiguousarray(c[:, ::-1]) for c in crops])) / 2
        return with_prior(probs, self.classifier.balance_prior, self.prior)

    def predict(self, image) -> list[Face]:
        if isinstance(image, (str, Path)):
            image = read_image(image)
        found = self.detect_faces(image)
        probs = self.classify(image, found)
        return [self.make_face(f.box, p, f.score) for f, p in zip(found, probs)]

    def make_face(self, box, probs, score, track_id=None) -> Face:
        probs = np.asarray(probs, np.float64)
        label = self.labels[int(probs.argmax())] if probs.max() >= self.min_confidence else UNCERTAIN
        return Face(tuple(int(v) for v in box), label,
                    {lab: float(p) for lab, p in zip(self.labels, probs)}, float(score), track_id)
