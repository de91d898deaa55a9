"""Preprocessing shared by training, export and the edge runtime: the one definition.

A model's input is a batch of grey faces as float32 pixel values in 0..255, shape (N, size, size,
channels); channels is 1, or 3 for ImageNet backbones (the grey plane replicated). Scaling to the
range a network wants happens inside the network (a Rescaling layer), so int8 models can take the
raw pixels with an exact input quantization (scale 1, zero point -128).
"""

from __future__ import annotations

import numpy as np

# FER-2013's classes, in the order of the Kaggle folders and of the csv's emotion codes 0..6.
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
FER_SIZE = 48


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grey image from a grey, BGR or BGRA OpenCV image."""
    import cv2

    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a grey or BGR image, got shape {image.shape}")


def preprocess_faces(faces, size: int, channels: int = 1, blur_sigma: float = 0.0) -> np.ndarray:
    """Grey uint8 faces (N, h, w) or a list of images -> float32 (N, size, size, channels) in 0..255.

    blur_sigma (in pixels of a 48x48 face, scaled to `size`): a Gaussian blur that brings sharp faces
    to the sharpness of blurred training data (see train/data.py, check_sharpness). 0 disables it.
    """
    if isinstance(faces, np.ndarray) and faces.ndim == 3 and faces.shape[1:] == (size, size):
        out = faces.astype(np.float32)  # already grey and the right size (the training fast path)
    else:
        out = np.stack([resize_face(to_gray(np.asarray(f)), size) for f in faces]).astype(np.float32)
    if blur_sigma > 0:
        import cv2

        sigma = blur_sigma * size / FER_SIZE
        out = np.stack([cv2.GaussianBlur(face, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for face in out])
    out = out[..., None]
    if channels == 3:
        out = np.repeat(out, 3, axis=-1)
    elif channels != 1:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return out


def resize_face(gray: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if gray.shape == (size, size):
        return gray
    # INTER_AREA when shrinking (anti-aliased), INTER_LINEAR when enlarging.
    interp = cv2.INTER_AREA if gray.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interp)


def square_crop(gray: np.ndarray, box, margin: float = 0.1) -> np.ndarray:
    """Square crop around box (x, y, w, h) grown by `margin` of its side; edges padded by replication.

    FER-2013 faces are tightly framed squares, so the crop is square and centred on the box.
    """
    import cv2

    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    s = max(1, int(round(side)))
    H, W = gray.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    return gray[y0 : y0 + s, x0 : x0 + s]
