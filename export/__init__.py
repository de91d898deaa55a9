"""Keras model -> TFLite (float32, float16, dynamic-range, int8) and ONNX (float32, int8), gated.

Holds the conversion, int8 calibration, the accuracy gate and the manifest (export.py). May import
TensorFlow, tf2onnx, onnx, onnxruntime, feredge.train and feredge.edge; never feredge.benchmarks.
"""
