"""The edge runtime: LiteRT / onnxruntime inference, OpenCV face detection, capture loop.

May import numpy, OpenCV, the inference runtimes (LiteRT, tflite-runtime or onnxruntime, each inside
the function that loads a model, whichever is installed), Gradio (the ui only) and feredge.models; never
TensorFlow, Keras, feredge.train, feredge.export or feredge.benchmarks (tests/test_architecture.py).
"""

from feredge.edge.detector import EmotionDetector
from feredge.edge.preprocess import LABELS

__all__ = ["LABELS", "EmotionDetector"]

