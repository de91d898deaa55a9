"""Keras 3 training on FER-2013 (backend-agnostic: TensorFlow, JAX or PyTorch)."""
