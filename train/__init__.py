"""Keras 3 training on FER-2013 (backend-agnostic: TensorFlow, JAX or PyTorch).

Holds data loading (data.py; FER+ votes: ferplus.py), the networks (models.py), augmentation,
distillation, the training loop (train.py), evaluation and its pictures (evaluate.py), calibration
(calibrate.py), configs/ and gpu/ (the lent-GPU path). May import Keras, matplotlib, tqdm and
feredge.edge (the preprocessing contract, and the runtime to score exported files); never
feredge.export or feredge.benchmarks. docs/architecture.md.
"""
