"""Accuracy, latency, memory and size per exported format: `feredge bench models/custom_cnn`.

Holds the benchmarks (bench.py, e2e.py, detection.py, framing.py, choices.py, label_sets.py, soak.py, pi_estimate.py,
input_size.py, train_speed.py), the peer adapter (peer.py) and report.py, which regenerates the
documents' tables from results/. May import feredge.edge, feredge.train (data, metrics) and
feredge.export (conversion); nothing imports it but the cli.
"""

from pathlib import Path

# The checkout a command runs in, as the README's commands assume: a plain `pip install .` puts this
# package in site-packages, where results and the README would be lost to the user. Elsewhere (an
# editable install run from another folder), the source tree this package sits in.
CHECKOUT = Path.cwd() if (Path.cwd() / "benchmarks" / "results").is_dir() else Path(__file__).resolve().parents[1]
RESULTS_DIR = CHECKOUT / "benchmarks" / "results"


def publish(path: Path, text: str) -> None:
    """Write a result table (markdown) where the README's report reads it, and show it."""
    text = text.rstrip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text)
