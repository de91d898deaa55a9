"""Bring a trained model back from the GPU machine, whose returned files are capped (16 MiB each, 8 in
all): ResNet50V2's best.keras is about 94 MB in float32, its weights 47 MB in float16.

    python3 train/gpu/weights.py split RUN_DIR $OUT            # there: RUN_DIR/best.keras -> parts
    python3 train/gpu/weights.py best $OUT RUN_DIR...          # there: the best run on PublicTest -> parts
    python train/gpu/weights.py join PARTS_DIR RUN_DIR         # here: parts -> RUN_DIR/best.keras

`split` writes the weights as float16 in parts of at most 15 MiB plus the run's config.json; `join`
rebuilds the architecture from that config, loads the weights back into float32 and saves best.keras,
ready for `feredge evaluate`, `calibrate` and `export` (which measure the rebuilt model itself).
float16 keeps about three significant digits (tests/test_train.py holds a rebuilt model's probabilities
within 5e-3 of the original's).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from feredge.train.train import best_so_far

# Keras and the Keras networks (feredge.train.models) are imported where used: heavy.

PART_BYTES = 15 * 2**20


def split(run_dir: Path, out_dir: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    import keras

    model = keras.models.load_model(run_dir / "best.keras", compile=False)
    weights = [np.asarray(w, np.float16) for w in model.get_weights()]
    blob = b"".join(w.tobytes() for w in weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "config.json", out_dir / "config.json")
    (out_dir / "weights.json").write_text(json.dumps({"shapes": [list(w.shape) for w in weights]}))
    parts = []
    for i in range(0, len(blob), part_bytes):
        parts.append(out_dir / f"weights.f16.part{i // part_bytes:02d}")
        parts[-1].write_bytes(blob[i : i + part_bytes])
    return parts


def best(out_dir: Path, run_dirs: list[Path]) -> list[Path]:
    """Split the run whose best.keras scored highest on PublicTest (its history.csv) of those that saved one."""

    scores = {r: best_so_far(r / "history.csv") for r in run_dirs if (r / "best.keras").exists()}
    for r in run_dirs:
        print(f"{r}: best PublicTest accuracy {scores[r]:.4f}" if r in scores else f"{r}: no best.keras")
    if not scores:
        raise SystemExit("best: no run saved a model")
    return split(max(scores, key=scores.get), out_dir)


def join(parts_dir: Path, run_dir: Path) -> Path:
    from feredge.train.models import build_model

    cfg = json.loads((parts_dir / "config.json").read_text())
    shapes = json.loads((parts_dir / "weights.json").read_text())["shapes"]
    blob = b"".join(p.read_bytes() for p in sorted(parts_dir.glob("weights.f16.part*")))
    flat = np.frombuffer(blob, np.float16)
    sizes = [int(np.prod(s)) for s in shapes]
    if flat.size != sum(sizes):
        raise SystemExit(f"join: the parts hold {flat.size} weights, the model needs {sum(sizes)} (a part missing?)")
    ends = np.cumsum(sizes)
    weights = [flat[e - n : e].astype(np.float32).reshape(s) for e, n, s in zip(ends, sizes, shapes)]
    model = build_model(cfg["arch"], cfg["input_size"], None, cfg["dropout"], tuple(cfg["widths"]))
    model.set_weights(weights)
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(parts_dir / "config.json", run_dir / "config.json")
    model.save(run_dir / "best.keras")
    return run_dir / "best.keras"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("split")
    s.add_argument("run_dir", type=Path)
    s.add_argument("out_dir", type=Path)
    b = sub.add_parser("best")
    b.add_argument("out_dir", type=Path)
    b.add_argument("run_dirs", type=Path, nargs="+")
    j = sub.add_parser("join")
    j.add_argument("parts_dir", type=Path)
    j.add_argument("run_dir", type=Path)
    a = p.parse_args()
    if a.verb == "split":
        print(split(a.run_dir, a.out_dir))
    elif a.verb == "best":
        print(best(a.out_dir, a.run_dirs))
    else:
        print(join(a.parts_dir, a.run_dir))
