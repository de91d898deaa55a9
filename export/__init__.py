"""Keras model -> TFLite (float32, float16, dynamic-range, int8) and ONNX (float32, int8), gated."""
