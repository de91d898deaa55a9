"""Train one model on FER-2013 from a config file: `feredge train --config train/configs/custom_cnn.toml`.

Backend-agnostic Keras 3 (no tf.* here): the same script runs under KERAS_BACKEND=tensorflow, jax or
torch. Reading top to bottom: config -> data -> model -> fit (with augmentation around the model,
class weights, label smoothing, warm-up + cosine schedule, best-on-PublicTest checkpoint, resumable
backup) -> evaluation of the best model on PublicTest and PrivateTest.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import tomllib

from feredge.edge.preprocess import LABELS, preprocess_faces, resize_face
from feredge.train import ferplus
from feredge.train.data import default_data_path, load_fer2013, subset
from feredge.train.evaluate import evaluate_and_report

# Keras, TensorFlow and the Keras-level modules (feredge.train.models, augment, distill) are imported
# inside the functions that use them: heavy, so load_config, the targets and the data path stay usable
# (and the tests fast) without loading them.

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).parent / "configs"

DEFAULTS = {
    "arch": "custom_cnn",
    "input_size": 48,
    "weights": "imagenet",        # ImageNet backbones: "imagenet", a local weights file, or "none"
    "widths": [32, 64, 128, 256],  # custom CNN stage widths
    "init_from": "",              # a trained .keras to start from: same arch (any input size) or a wider custom CNN to slim
    "teacher": "",                # a trained .keras to distil from, or several separated by commas (train/distill.py)
    "distill_weight": 0.8,        # share of the loss that follows the teacher
    "distill_temperature": 3.0,
    "teacher_flip": True,         # teach with the mean over the face and its mirror (the shipped CNN: +0.6 pt PublicTest)
    "dropout": 0.4,
    "data": "",                   # empty: FER2013_ZIP or the shared copy
    "epochs": 60,
    "batch_size": 128,
    "optimizer": "adamw",         # adamw | sgd (Nesterov)
    "learning_rate": 2e-3,
    "weight_decay": 5e-4,
    "warmup_epochs": 2,
    "schedule": "cosine",         # cosine (after linear warm-up) | constant
    "label_smoothing": 0.1,
    "targets": "labels",          # labels (FER-2013's) | majority (FER+'s) | votes (FER+ vote shares) |
                                  # mix (label_weight x label + the rest x votes); train/ferplus.py
    "label_weight": 0.5,          # the label's share of a mix target
    "min_label_votes": 0,         # >0: leave out training images whose FER-2013 label got fewer crowd votes
    "rejected_label_weight": -1.0,  # mix, >=0: the label's share instead of label_weight where FER+'s majority
                                  # names another emotion (the crowd rejects the label: down-weighted, not dropped)
    "select_on": "val_accuracy",  # the PublicTest figure best.keras maximises: val_accuracy (FER-2013 labels)
                                  # | val_ferplus_accuracy (FER+ majority) | val_mean_accuracy (their mean)
    "class_weight": "balanced",   # balanced | sqrt (square root of balanced) | none, on the targets' prior
    "mixup": 0.0,                 # Beta(a, a) mixup on a fraction of batches; 0 disables
    "clipnorm": 0.0,              # >0: scale each step's gradients to at most this global norm; 0 disables
    "ema": 0.0,                   # momentum of an exponential moving average of the weights, validated
                                  # and saved in their place (Keras's use_ema); 0 disables
    "precision": "float32",       # float32 | mixed_bfloat16 | mixed_float16
    "patience": 0,                # early stopping on val accuracy; 0 disables
    "time_budget_s": 0,           # >0: train for this many seconds (a GPU lease): `epochs` becomes a cap, the
                                  # cosine follows the clock and the run stops before an epoch would overrun
    "seed": 0,
    "max_train_samples": 0,       # >0: a seeded stratified subset, for quick runs
    "max_eval_samples": 0,
    "tta": True,                  # also report horizontal-flip test-time augmentation
    "data_parallel": "auto",      # auto (several GPUs) | on | off
    "augment": {"flip": True, "rotation": 15, "shift": 0.1, "zoom": 0.1,
                "contrast": 0.2, "brightness": 0.2, "erasing": 0.25},
}


def load_config(path=None, overrides: dict | None = None) -> dict:
    cfg = json.loads(json.dumps(DEFAULTS))
    if path:
        merge_config(cfg, read_config_file(Path(path)))
    merge_config(cfg, overrides or {})
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(sorted(unknown))}")
    return cfg


def read_config_file(path: Path, seen=()) -> dict:
    """A TOML config; `base = "other.toml"` (beside it, or a packaged config) is read first and this
    file's keys override it, so a variant states only what it changes."""
    if not path.exists() and (CONFIG_DIR / path.name).exists():
        path = CONFIG_DIR / path.name
    if not path.exists():
        raise FileNotFoundError(f"config not found: {path}")
    if path.resolve() in seen:
        raise ValueError(f"config base loop at {path}")
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    if "base" not in cfg:
        return cfg
    out = read_config_file(path.parent / cfg.pop("base"), (*seen, path.resolve()))
    merge_config(out, cfg)
    return out


def merge_config(base: dict, new: dict):
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge_config(base[k], v)
        else:
            base[k] = v


def parse_override(text: str) -> dict:
    """'augment.rotation=10' -> {'augment': {'rotation': 10}}; values parsed as TOML."""
    key, _, value = text.partition("=")
    if not key or not _:
        raise ValueError(f"override must be key=value, got '{text}'")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare string
    out: dict = {}
    node = out
    *parents, last = key.strip().split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = parsed
    return out


def parse_overrides(texts) -> dict:
    """Several --set key=value texts (parse_override) merged into one overrides dict."""
    out: dict = {}
    for text in texts or []:
        merge_config(out, parse_override(text))
    return out


def class_weights(targets: np.ndarray, mode: str) -> np.ndarray:
    """Per-class weights from the prior of the targets trained on ((N, 7) shares, or (N,) class indices)."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        targets = np.eye(len(LABELS))[targets]
    counts = targets.sum(0).astype(np.float64)
    balanced = len(targets) / (len(LABELS) * np.maximum(counts, 1e-9))
    if mode == "balanced":
        return balanced
    if mode == "sqrt":
        return np.sqrt(balanced)
    if mode == "none":
        return np.ones(len(LABELS))
    raise ValueError(f"class_weight must be balanced, sqrt or none, got '{mode}'")


def training_targets(split, cfg: dict):
    """(kept image indices, (N, 7) float32 targets) per cfg["targets"]: see DEFAULTS."""

    if cfg["rejected_label_weight"] >= 0 and cfg["targets"] != "mix":
        raise ValueError(f"rejected_label_weight applies to targets = 'mix', not '{cfg['targets']}'")
    onehot = np.eye(len(LABELS), dtype=np.float32)[split.y]
    keep = np.ones(len(split), bool)
    if cfg["targets"] == "labels" and not cfg["min_label_votes"]:
        return np.flatnonzero(keep), onehot
    if split.votes is None:
        raise ValueError(f"targets = '{cfg['targets']}' needs FER+ votes: put {ferplus.VOTES_FILE} beside the data "
                         "or set FERPLUS_VOTES")
    if cfg["targets"] != "labels":
        keep &= ferplus.has_target(split.votes)
    if cfg["min_label_votes"]:
        keep &= ferplus.emotion_votes(split.votes)[np.arange(len(split)), split.y] >= cfg["min_label_votes"]
    shares = ferplus.distribution(split.votes).astype(np.float32)
    label_weight = np.full((len(split), 1), cfg["label_weight"], np.float32)
    if cfg["rejected_label_weight"] >= 0:
        rejected = ferplus.has_target(split.votes) & (ferplus.majority(split.votes) != split.y)
        label_weight[rejected] = cfg["rejected_label_weight"]
    targets = {"labels": onehot,
               "majority": np.eye(len(LABELS), dtype=np.float32)[np.maximum(ferplus.majority(split.votes), 0)],
               "votes": shares,
               "mix": label_weight * onehot + (1 - label_weight) * shares}.get(cfg["targets"])
    if targets is None:
        raise ValueError(f"targets must be labels, majority, votes or mix, got '{cfg['targets']}'")
    return np.flatnonzero(keep), targets[keep]


def make_batches(x, targets, cfg, channels, weights, shuffle: bool, seed: int | None = None):
    """A keras.utils.PyDataset of (pixels, targets, sample weights); mixup in numpy. targets: (N, 7)
    shares; weights: per-class, each image weighted by its targets' mix of them. seed (default
    cfg["seed"]) drives the shuffle and mixup."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(cfg["seed"] if seed is None else seed)
            self.order = np.arange(len(targets))
            self.on_epoch_end()

        def __len__(self):
            # Training takes whole batches only: a smaller last batch is a new shape, which XLA compiles
            # again (28 s for the ResNet50V2 step on 2 cores); the shuffle leaves out other images each epoch.
            if shuffle and len(targets) >= cfg["batch_size"]:
                return len(targets) // cfg["batch_size"]
            return math.ceil(len(targets) / cfg["batch_size"])

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

        def __getitem__(self, i):
            idx = self.order[i * cfg["batch_size"] : (i + 1) * cfg["batch_size"]]
            xb = preprocess_faces(x[idx], cfg["input_size"], channels)
            yb = targets[idx]
            wb = (yb @ weights).astype(np.float32)
            if shuffle and cfg["mixup"] > 0 and self.rng.random() < 0.5:
                lam = self.rng.beta(cfg["mixup"], cfg["mixup"])
                perm = self.rng.permutation(len(idx))
                xb = lam * xb + (1 - lam) * xb[perm]
                yb = lam * yb + (1 - lam) * yb[perm]
                wb = lam * wb + (1 - lam) * wb[perm]
            return xb, yb, wb

    return Batches()


@contextlib.contextmanager
def distribution(mode: str):
    """Data parallelism over all GPUs of the running backend, when there are several (or forced on)."""
    import keras

    backend = keras.backend.backend()
    if mode == "off":
        yield "single device"
        return
    if backend == "tensorflow":
        import tensorflow as tf  # only to count GPUs and build the strategy: this is the TF engine's own API

        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1 or mode == "on":
            strategy = tf.distribute.MirroredStrategy()
            with strategy.scope():
                yield f"MirroredStrategy over {strategy.num_replicas_in_sync} replicas"
            return
    elif backend == "jax":
        devices = keras.distribution.list_devices()
        if len(devices) > 1 and (mode == "on" or any("gpu" in str(d).lower() for d in devices)):
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            try:
                yield f"DataParallel over {len(devices)} devices"
            finally:
                keras.distribution.set_distribution(None)
            return
    yield "single device"


def ferplus_val_callback(model, val_x, val_votes, batch_size: int):
    """Adds val_ferplus_accuracy (PublicTest on FER+'s majority) and val_mean_accuracy (its mean with
    val_accuracy, FER-2013's labels) to each epoch's logs, for selection and history.csv. `model` is the
    inference model: the one fit() trains may wrap it (a distiller's output also holds the teacher's)."""
    import keras

    truth = ferplus.majority(val_votes)
    scored = truth >= 0

    class FerPlusVal(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None or "val_accuracy" not in logs:
                return
            pred = np.asarray(model.predict(val_x, batch_size=batch_size, verbose=0)).argmax(1)
            logs["val_ferplus_accuracy"] = float(np.mean(pred[scored] == truth[scored]))
            logs["val_mean_accuracy"] = (logs["val_accuracy"] + logs["val_ferplus_accuracy"]) / 2

    return FerPlusVal()


def save_best_callback(model, path: Path, best: float, key: str = "val_accuracy"):
    """A Keras callback saving the float32 inference model whenever logs[key] beats `best`."""
    import keras

    from feredge.train.models import float32_copy

    class SaveBest(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = best

        def on_epoch_end(self, epoch, logs=None):
            acc = (logs or {}).get(key)
            if acc is not None and acc > self.best:
                self.best = acc
                tmp = path.with_name("best.tmp.keras")
                float32_copy(model).save(tmp)
                tmp.replace(path)
                log.info("epoch %d: %s %.4f, saved %s", epoch + 1, key, acc, path)

    return SaveBest()


def time_budget_callback(cfg: dict, clock=time.monotonic):
    """Fits a run into cfg["time_budget_s"] seconds from the start of fit(): linear warm-up over the first
    warmup_epochs, then a cosine (to 1 % of the rate) over the time left, set at each epoch's start; stops
    when the next epoch, as long as the last one, would end past the budget. The first epoch holds the
    compilation (45-65 s of ResNet50V2's first on an H200, against 5-9 s for the next), so it predicts nothing."""
    import keras

    budget, base, warmup = cfg["time_budget_s"], cfg["learning_rate"], cfg["warmup_epochs"]

    class TimeBudget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = self.cosine_start = clock()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = clock()
            if epoch < warmup:
                self.rate = base * (epoch + 1) / warmup
            else:
                if epoch == warmup:
                    self.cosine_start = self.epoch_start
                left = self.start + budget - self.cosine_start
                progress = min(1.0, (self.epoch_start - self.cosine_start) / left) if left > 0 else 1.0
                self.rate = base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
            self.model.optimizer.learning_rate = self.rate

        def on_epoch_end(self, epoch, logs=None):
            now = clock()
            if logs is not None:
                logs["learning_rate"] = self.rate
            next_epoch = 0.0 if epoch == 0 else now - self.epoch_start
            if now + next_epoch > self.start + budget:
                log.info("time budget: stopping after epoch %d, %.0f s of %.0f", epoch + 1, now - self.start, budget)
                self.model.stop_training = True

    return TimeBudget()


def throughput_callback(batch_size: int, steps: int = 20):
    """Logs how long the first step took (compilation included) and the training rate over the next
    `steps` steps: a run's speed in its first seconds, not after its first epoch."""
    import keras

    class Throughput(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = [time.monotonic()]

        def on_train_batch_end(self, batch, logs=None):
            if len(self.times) <= steps + 1:
                self.times.append(time.monotonic())
                if len(self.times) == 2:
                    log.info("first step: %.1f s (compilation included)", self.times[1] - self.times[0])
                elif len(self.times) == steps + 2:
                    log.info("steps 2-%d: %.0f img/s", steps + 1, steps * batch_size / (self.times[-1] - self.times[1]))

    return Throughput()


def best_so_far(history_csv: Path, key: str = "val_accuracy") -> float:
    if not history_csv.exists():
        return -1.0
    with open(history_csv) as f:
        vals = [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    return max(vals, default=-1.0)


def epochs_done(run_dir: Path) -> int:
    """Epochs completed by the run in run_dir, as its BackupAndRestore backup records them (0 if none)."""
    meta = Path(run_dir) / "backup" / "training_metadata.json"
    return int(json.loads(meta.read_text()).get("epoch", 0)) if meta.exists() else 0


def train(cfg: dict, run_dir: Path, data=None) -> dict:
    """Train per cfg into run_dir; resumes from run_dir's backup if one is there. Returns metrics."""
    import keras

    from feredge.train.models import precision_policy

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = run_dir / "config.json"
    if (run_dir / "backup").exists() and resolved.exists():
        saved = {**DEFAULTS, **json.loads(resolved.read_text())}  # keys added since the run began: their defaults
        if {k: v for k, v in saved.items() if k != "epochs"} != {k: v for k, v in cfg.items() if k != "epochs"}:
            raise ValueError(f"{run_dir} holds a run with another config; resume it with the same config or use a new --run-dir")
        if cfg["time_budget_s"]:
            raise ValueError(f"{run_dir} holds a started run: a time-budgeted run starts fresh (use a new --run-dir)")
        log.info("resuming the run in %s", run_dir)
    resolved.write_text(json.dumps(cfg, indent=2))
    # Seeded by the epochs already done: a resumed run must not replay the shuffles and augmentations
    # of its first epochs (measured: train accuracy jumped 3.5 points on a ResNet resume, val did not).
    run_seed = cfg["seed"] + epochs_done(run_dir)
    keras.utils.set_random_seed(run_seed)
    with precision_policy(cfg["precision"]):
        return _train(cfg, run_dir, data, run_seed)


def _train(cfg: dict, run_dir: Path, data, run_seed: int) -> dict:
    import keras

    from feredge.train import models

    log.info("Keras %s, backend %s, precision %s", keras.__version__, keras.backend.backend(), cfg["precision"])

    data = data or load_fer2013(cfg["data"] or default_data_path())
    train_split = subset(data["train"], cfg["max_train_samples"], cfg["seed"])
    val_split = subset(data["val"], cfg["max_eval_samples"], cfg["seed"])
    channels = models.INPUT_CHANNELS[cfg["arch"]]
    # Enlarged once, not per batch: at 96 px that halves the host's work per batch (14 -> 8 ms for 256 faces here).
    kept, targets = training_targets(train_split, cfg)
    train_x = np.stack([resize_face(face, cfg["input_size"]) for face in train_split.x[kept]])
    weights = class_weights(targets, cfg["class_weight"])
    log.info("train %d of %d images (targets: %s), val %d; class weights %s", len(kept), len(train_split),
             cfg["targets"], len(val_split), dict(zip(LABELS, np.round(weights, 2).tolist())))
    (run_dir / "train_prior.json").write_text(json.dumps(dict(zip(LABELS, np.round(targets.mean(0), 5).tolist()))))

    batches = make_batches(train_x, targets, cfg, channels, weights, shuffle=True, seed=run_seed)
    steps_per_epoch = len(batches)
    with distribution(cfg["data_parallel"]) as how:
        log.info("distribution: %s", how)
        model, fit_model = build_fit_model(cfg, steps_per_epoch)
        callbacks = [throughput_callback(cfg["batch_size"])]
        if cfg["time_budget_s"]:
            callbacks.append(time_budget_callback(cfg))  # before CSVLogger, which logs its rate
        val_x = preprocess_faces(val_split.x, cfg["input_size"], channels)
        val_y = np.eye(len(LABELS), dtype=np.float32)[val_split.y]
        if val_split.votes is not None:  # before the logger and the checkpoint, which read what it adds
            callbacks.append(ferplus_val_callback(model, val_x, val_split.votes, cfg["batch_size"]))
        elif cfg["select_on"] != "val_accuracy":
            raise ValueError(f"select_on = '{cfg['select_on']}' needs FER+ votes for PublicTest")
        callbacks += [
            # Kept after a finished run too, so that a larger --epochs extends the run where it stopped.
            keras.callbacks.BackupAndRestore(str(run_dir / "backup"), delete_checkpoint=False),
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        ]
        if cfg["ema"]:  # after the backup (which keeps the raw weights), before saving the best (the averaged ones)
            callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        select = cfg["select_on"]
        callbacks.append(save_best_callback(model, run_dir / "best.keras", best_so_far(run_dir / "history.csv", select), select))
        if cfg["patience"]:
            callbacks.append(keras.callbacks.EarlyStopping(select, patience=cfg["patience"], mode="max"))
        start = time.time()
        fit_model.fit(batches, validation_data=(val_x, val_y), validation_batch_size=cfg["batch_size"],
                      epochs=cfg["epochs"], callbacks=callbacks, verbose=2)
        wall = time.time() - start
    (run_dir / "train_time.json").write_text(json.dumps({"wall_s_this_session": round(wall, 1), "epochs": cfg["epochs"]}))
    metrics = evaluate_and_report(run_dir / "best.keras", data, run_dir, splits=("val", "test"),
                                  tta=cfg["tta"], max_samples=cfg["max_eval_samples"], seed=cfg["seed"])
    return metrics


def build_fit_model(cfg: dict, steps_per_epoch: int):
    """(model, fit_model): the inference model, and the compiled model fit() trains (augmentation and,
    with a teacher, distillation around the model)."""
    import keras

    from feredge.train import augment, distill, models

    if cfg["init_from"]:
        model = models.start_from(cfg["init_from"], cfg["arch"], cfg["input_size"], cfg["widths"], cfg["dropout"])
    else:
        model = models.build_model(cfg["arch"], cfg["input_size"], cfg["weights"], cfg["dropout"], tuple(cfg["widths"]))
    if cfg["teacher"]:
        teacher = distill.load_teacher(cfg["teacher"], model.input_shape[1:])
        fit_model = augment.training_model(model, cfg["augment"], teacher, cfg["teacher_flip"])
        loss = distill.distillation_loss(cfg["distill_weight"], cfg["distill_temperature"], cfg["label_smoothing"])
        metrics = [distill.student_accuracy()]
    else:
        fit_model = augment.training_model(model, cfg["augment"])
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg["label_smoothing"])
        metrics = ["accuracy"]
    fit_model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=loss, metrics=metrics)
    return model, fit_model


def make_optimizer(cfg: dict, steps_per_epoch: int):
    import keras

    warmup = cfg["warmup_epochs"] * steps_per_epoch
    if cfg["time_budget_s"]:  # time_budget_callback sets the rate at each epoch's start
        cfg = {**cfg, "schedule": "constant", "learning_rate": cfg["learning_rate"] / 100}
    total = max(1, cfg["epochs"] * steps_per_epoch - warmup)
    if cfg["schedule"] == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=cfg["learning_rate"] / 100 if warmup else cfg["learning_rate"],
            decay_steps=total, alpha=0.01, warmup_target=cfg["learning_rate"] if warmup else None,
            warmup_steps=warmup)
    elif cfg["schedule"] == "constant":
        lr = cfg["learning_rate"]
    else:
        raise ValueError(f"schedule must be cosine or constant, got '{cfg['schedule']}'")
    extra = {"use_ema": True, "ema_momentum": cfg["ema"]} if cfg["ema"] else {}
    if cfg["clipnorm"]:
        extra["global_clipnorm"] = cfg["clipnorm"]
    if cfg["optimizer"] == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg["weight_decay"], **extra)
    if cfg["optimizer"] == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"], **extra)
    raise ValueError(f"optimizer must be adamw or sgd, got '{cfg['optimizer']}'")
