"""The edge runtime: LiteRT / onnxruntime inference, OpenCV face detection, capture loop.

Imports nothing heavy at package import; TensorFlow and Keras are never imported here.
"""

from feredge.edge.preprocess import LABELS

__all__ = ["LABELS", "EmotionDetector"]


def __getattr__(name):
    # Lazy so that `import feredge.edge` stays cheap (no OpenCV/runtime import until needed).
    if name == "EmotionDetector":
        from feredge.edge.detector import EmotionDetector

        return EmotionDetector
    raise AttributeError(name)
