"""Accuracy, latency, memory and size per exported format: `feredge bench models/custom_cnn`."""
