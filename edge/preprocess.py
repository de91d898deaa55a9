"""Preprocessing shared by training, export and the edge runtime: the one definition.

A model's input is a batch of grey faces as float32 pixel values in 0..255, shape (N, size, size,
channels); channels is 1, or 3 for ImageNet backbones (the grey plane replicated). Scaling to the
range a network wants happens inside the network (a Rescaling layer), so int8 models can take the
raw pixels with an exact input quantization (scale 1, zero point -128).
"""

from __future__ import annotations

import cv2
import numpy as np

# FER-2013's classes, in the order of the Kaggle folders and of the csv's emotion codes 0..6.
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
FER_SIZE = 48


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grey image from a grey, BGR or BGRA OpenCV image."""

    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a grey or BGR image, got shape {image.shape}")


def preprocess_faces(faces, size: int, channels: int = 1) -> np.ndarray:
    """Grey uint8 faces (N, h, w) or a list of images -> float32 (N, size, size, channels) in 0..255."""
    if isinstance(faces, np.ndarray) and faces.ndim == 3 and faces.shape[1:] == (size, size):
        out = faces.astype(np.float32)  # already grey and the right size (the training fast path)
    else:
        out = np.stack([resize_face(to_gray(np.asarray(f)), size) for f in faces]).astype(np.float32)
    out = out[..., None]
    if channels == 3:
        out = np.repeat(out, 3, axis=-1)
    elif channels != 1:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return out


def resize_face(gray: np.ndarray, size: int) -> np.ndarray:
    if gray.shape == (size, size):
        return gray
    # INTER_AREA when shrinking (anti-aliased), INTER_LINEAR when enlarging.
    interp = cv2.INTER_AREA if gray.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interp)


# How a detector box becomes the classifier's input: a square of side scale x basis (the box's "width",
# "height", their "mean" or "max"), centred offset x (w, h) from the box centre; "align": "eyes" also
# levels the eye line. Measured, not guessed:
# `python -m feredge.benchmarks.framing` fits it to where YuNet puts its box on FER-2013 PublicTest
# frames (benchmarks/results/framing.json; a test keeps the two equal). Exports record it.
DEFAULT_CROP = {"basis": "width", "scale": 1.303, "offset": [0.004, 0.006]}
CROP_BASES = ("width", "height", "mean", "max")


def crop_basis(basis: str, w, h):
    if basis == "width":
        return w
    if basis == "height":
        return h
    if basis == "mean":
        return (w + h) / 2
    if basis == "max":
        return np.maximum(w, h)
    raise ValueError(f"crop basis must be one of {', '.join(CROP_BASES)}, got '{basis}'")


def square_crop(gray: np.ndarray, box, crop: dict = DEFAULT_CROP, roll_degrees: float = 0.0) -> np.ndarray:
    """The square face crop for box (x, y, w, h) under a crop spec (see DEFAULT_CROP); where it
    leaves the image, edges are replicated (as FER-2013's framing would show more of the scene).
    roll_degrees != 0 rotates the crop about its centre by that much (levels the eyes)."""

    x, y, w, h = (float(v) for v in box)
    side = crop["scale"] * crop_basis(crop["basis"], w, h)
    cx = x + w / 2.0 + crop["offset"][0] * w
    cy = y + h / 2.0 + crop["offset"][1] * h
    s = max(1, int(round(side)))
    if roll_degrees:  # rotate and cut in one resampling
        m = cv2.getRotationMatrix2D((cx, cy), roll_degrees, 1.0)
        m[:, 2] += (s / 2.0 - cx, s / 2.0 - cy)
        return cv2.warpAffine(gray, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    H, W = gray.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    return gray[y0 : y0 + s, x0 : x0 + s]
