"""What ResNet50V2's input size costs at inference: `python -m feredge.benchmarks.input_size`

For each size (default 48, 64, 96 px): ResNet50V2 as `feredge train` builds it, converted to full-integer
int8 TFLite exactly as the export does (int8 convolutions, float head), then timed through the edge
runtime one face at a time on 1 thread, with the shipped default model timed in the same turns as the
yardstick. The weights are random: latency, size and multiply-adds depend on the shape, not the values,
so this needs no trained model and answers the question before a long training run is chosen.
With --face-model, a Raspberry Pi 4 / 5 estimate by the same scale as benchmarks/pi_estimate.py.
Needs TensorFlow (the converter). Writes benchmarks/results/input_size/resnet50v2.md (the README shows it).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from feredge.benchmarks import RESULTS_DIR, publish
from feredge.benchmarks.bench import interleaved_latency, machine_name, multiply_adds
from feredge.benchmarks.pi_estimate import PI5_OVER_PI4, pi4_slowdown, yunet_ms_here
from feredge.edge.classifier import resolve_model
from feredge.export.export import to_tflite

# Keras and the Keras networks (feredge.train.models) are imported where used: heavy, `export` extra.

ARCH = "resnet50v2"


def int8_tflite(size: int, out: Path, calib_n: int = 16) -> Path:
    """ResNet50V2 at size x size, random weights, as the export's tflite_int8 (random calibration pixels)."""
    import keras

    from feredge.train.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(ARCH, size, "none", 0.3)
    calib = np.random.default_rng(0).uniform(0, 255, (calib_n, size, size, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved, verbose=False)
        out.write_bytes(to_tflite(Path(saved), "int8", calib))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="48,64,96", help="input sizes in px, comma-separated")
    parser.add_argument("--reps", type=int, default=100, help="timed calls per size")
    parser.add_argument("--reference", default="custom_cnn", help="a shipped model's name or a model folder, timed beside them (its default format)")
    parser.add_argument("--face-model", help="YuNet file: adds Pi 4 / Pi 5 estimates (benchmarks/pi_estimate.py)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        files = {f"{ARCH} {s} px": int8_tflite(s, Path(tmp) / f"{ARCH}_{s}.tflite") for s in sizes}
        ref_path, _, ref_fmt = resolve_model(args.reference)
        files[f"{Path(args.reference).name} ({ref_fmt}, reference)"] = ref_path
        # Timed in turns, as `feredge bench` times formats, so a slow spell falls on all of them alike.
        p50 = interleaved_latency([(name, path, None) for name, path in files.items()], [1], args.reps, rounds=5)
        rows = [(name, multiply_adds(path), path.stat().st_size / 1e6, p50[(name, None)]["p50_ms_1t"])
                for name, path in files.items()]

    head = ["model", "M multiply-adds", "int8 file MB", "p50 ms, 1 thread"]
    scale = None
    if args.face_model:
        scale = pi4_slowdown(yunet_ms_here(Path(args.face_model)))
        head += ["Pi 4 ms (est.)", "Pi 5 ms (est.)"]
    ref_macs, ref_ms = rows[-1][1], rows[-1][3]
    lines = [f"ResNet50V2 int8 TFLite by input size, random weights, on {machine_name()} "
             f"(`python -m feredge.benchmarks.input_size`). x reference: over the reference model, its p50 timed in the same turns; "
             "a compute-bound Pi core scales more like the multiply-adds than like this x86 core's int8 time.", "",
             "| " + " | ".join(head + ["x reference: time", "x reference: multiply-adds"]) + " |", "|" + "---|" * (len(head) + 2)]
    for name, macs, mb, ms in rows:
        cells = [name, f"{macs:,.1f}", f"{mb:.2f}", f"{ms:.2f}"]
        if scale:
            cells += [f"{ms * scale[0]:.1f}–{ms * scale[1]:.1f}",
                      f"{ms * scale[0] / PI5_OVER_PI4:.1f}–{ms * scale[1] / PI5_OVER_PI4:.1f}"]
        lines.append("| " + " | ".join(cells + [f"{ms / ref_ms:.1f}x", f"{macs / ref_macs:.1f}x"]) + " |")
    publish(args.out / "input_size" / f"{ARCH}.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
