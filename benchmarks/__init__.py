"""Accuracy, latency, memory and size per exported format: `feredge bench models/custom_cnn`."""

from pathlib import Path

# Results go to benchmarks/results of the checkout a command runs in, as the README says: a plain
# `pip install .` puts this package in site-packages, where results would be lost to the user.
_CHECKOUT_RESULTS = Path("benchmarks") / "results"
RESULTS_DIR = _CHECKOUT_RESULTS.resolve() if _CHECKOUT_RESULTS.is_dir() else Path(__file__).resolve().parent / "results"
