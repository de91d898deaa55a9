"""How fast a training config trains here: `python -m feredge.benchmarks.train_speed --config CONFIG [--set k=v]`

Builds the config's model exactly as `feredge train` does (precision, optimizer, augmentation, teacher),
then times train_on_batch on random pixels at the config's batch size: the bare model first, then with
the augmentation, then with the teacher too, so the table shows what each costs. No data is read; the
first steps (compilation, warm-up) are left out and the median of the rest is quoted. Run it with
nothing else training: two jobs on the same cores halve each other. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from feredge.benchmarks.bench import machine_name
from feredge.edge.preprocess import LABELS
from feredge.train.train import build_fit_model, load_config, parse_overrides

# Keras and the Keras networks (feredge.train.models) are imported where used: heavy, `train` extra.


def step_times(cfg: dict, steps: int, warmup: int = 2) -> list[float]:
    """Seconds per train_on_batch for cfg's fit model, after `warmup` untimed steps."""
    import keras

    from feredge.train.models import INPUT_CHANNELS, precision_policy

    keras.utils.set_random_seed(cfg["seed"])
    with precision_policy(cfg["precision"]):
        _, fit_model = build_fit_model(cfg, steps_per_epoch=100)
    rng = np.random.default_rng(0)
    n, size = cfg["batch_size"], cfg["input_size"]
    x = rng.uniform(0, 255, (n, size, size, INPUT_CHANNELS[cfg["arch"]])).astype(np.float32)
    y = np.eye(len(LABELS), dtype=np.float32)[rng.integers(0, len(LABELS), n)]
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        fit_model.train_on_batch(x, y)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def variants(cfg: dict) -> dict[str, dict]:
    """The config without augmentation or teacher, with augmentation, and as given (if it has a teacher)."""
    bare = {**cfg, "teacher": "", "augment": {k: 0 for k in cfg["augment"]}}
    out = {"bare model": bare, "+ augmentation": {**cfg, "teacher": ""}}
    if cfg["teacher"]:
        out["+ augmentation + teacher"] = cfg
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a training config (train/configs/*.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant (default 8)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, parse_overrides(args.set))
    print(f"{cfg['arch']} at {cfg['input_size']} px, batch {cfg['batch_size']}, {cfg['precision']}, on {machine_name()}: "
          f"median of {args.steps} steps\n")
    print("| variant | ms/step | img/s |\n|---|---:|---:|")
    for name, variant in variants(cfg).items():
        median = float(np.median(step_times(variant, args.steps)))
        print(f"| {name} | {median * 1000:.1f} | {cfg['batch_size'] / median:.0f} |", flush=True)


if __name__ == "__main__":
    main()
