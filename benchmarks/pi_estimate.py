"""Raspberry Pi 4 and 5 figures on paper: `python -m feredge.benchmarks.pi_estimate --face-model PATH`

No Pi is at hand, so these are ESTIMATES: this machine's figures from `feredge bench`
(benchmarks/results/<machine>.csv and <machine>_e2e.csv) multiplied by how much slower a Pi runs a
model that was timed on both. That model is YuNet (the same 2023mar file) at 320x320 on 1 thread:
published for a Raspberry Pi 4 below, measured here by this script. Pi 5 = Pi 4 divided by a
published single-thread CPU ratio. Writes benchmarks/results/pi/estimate.md (the README shows it).

What the scale leaves out: YuNet runs on OpenCV's float DNN engine while our default is LiteRT int8;
the Pi 4's Cortex-A72 lacks the int8 dot-product instructions that x86 CPUs with VNNI and the
Pi 5's Cortex-A76 have, so int8 formats may fare worse on a Pi 4 than the scale says. Treat the
figures as ranges to plan with, to be replaced by a run of `feredge bench` on the device.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import cv2

from feredge.benchmarks import RESULTS_DIR, publish
from feredge.benchmarks.bench import machine_name, slug
from feredge.edge.detector import PI_PRESET
from feredge.edge.faces import FaceDetector

# Published: YuNet 2023mar, 320x320, 1 thread, Raspberry Pi 4 (64-bit OS), mean per image over the
# source's test images 0-2: 58.7, 54.4, 54.4 ms. TonyCongqianWang/cv_facedetection_eval, time_comparison_pi.md.
PI4_YUNET_320_1T_MS = (54.4, 58.7)
# Same source, 4 threads: 37.1, 33.1, 33.0 ms, so a Pi 4 runs YuNet 1.5-1.6x faster on 4 threads.
PI4_YUNET_320_4T_MS = (33.0, 37.1)
# Pi 5 against Pi 4, single thread: sysbench CPU 1,847 against 812 events/s (2.27x; both on 64-bit
# Raspberry Pi OS, zbotic.in "Raspberry Pi 5 benchmarks"); the Raspberry Pi Foundation says 2-3x.
PI5_OVER_PI4 = 1847 / 812
# Where the scale is written for the README's summary table (benchmarks/report.py).
SCALE_FILE = "scale.json"
# Cross-check, not used in the arithmetic: OpenCV Zoo's README table times the same models on an Intel
# i7-12700K and a Raspberry Pi 4B; the Pi is 7.5x slower on YuNet 160x120 and 10.3x on its FER model.
OPENCV_ZOO_PI4_OVER_I7 = {"YuNet 160x120": 5.43 / 0.72, "FER 112x112": 32.53 / 3.16}


def yunet_ms_here(face_model: Path, runs: int = 200) -> float:
    """YuNet at 320x320 on 1 thread on this machine: median ms per call, the sample photo as input."""

    image = cv2.resize(cv2.imread(str(Path(__file__).resolve().parents[1] / "edge" / "assets" / "astronaut.jpg")),
                       (320, 320))
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        detector = FaceDetector(face_model, detect_width=320)
        for _ in range(10):
            detector.detect(image)
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            detector.detect(image)
            samples.append((time.perf_counter() - t) * 1000)
    finally:
        cv2.setNumThreads(previous)
    return statistics.median(samples)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise SystemExit(f"{path} not found: run `feredge bench` on this machine first")
    with open(path) as f:
        return list(csv.DictReader(f))


def pi4_slowdown(yunet_here_ms: float) -> tuple[float, float]:
    """How many times slower a Pi 4 is than this machine (low, high): YuNet's published Pi 4 times over its time here."""
    low, high = (ms / yunet_here_ms for ms in PI4_YUNET_320_1T_MS)
    return low, high


def estimate(bench_rows, loop_rows, yunet_here_ms: float) -> str:
    low, high = pi4_slowdown(yunet_here_ms)
    four_threads = statistics.mean(PI4_YUNET_320_1T_MS) / statistics.mean(PI4_YUNET_320_4T_MS)

    def span(value, scale_lo, scale_hi, digits=1):
        return f"{value * scale_lo:.{digits}f}–{value * scale_hi:.{digits}f}"

    lines = [
        f"Scale: YuNet 320x320 on 1 thread takes {yunet_here_ms:.2f} ms here and {PI4_YUNET_320_1T_MS[0]}–"
        f"{PI4_YUNET_320_1T_MS[1]} ms on a Pi 4 (published), so a Pi 4 is taken as {low:.1f}–{high:.1f}x slower and a "
        f"Pi 5 as {PI5_OVER_PI4:.2f}x faster than a Pi 4. Cross-check: OpenCV Zoo's Pi 4B is "
        + ", ".join(f"{v:.1f}x slower than its i7-12700K on {k}" for k, v in OPENCV_ZOO_PI4_OVER_I7.items()) + ".",
        "", "Classifier alone, one face, 1 thread (ms, estimated):", "",
        "| model | format | here (measured) | Raspberry Pi 4 | Raspberry Pi 5 |", "|---|---|---|---|---|"]
    for r in bench_rows:
        if not r.get("p50_ms_1t"):
            continue
        ms = float(r["p50_ms_1t"])
        lines.append(f"| {r['model']} | {r['format']} | {ms:.2f} | {span(ms, low, high, 2)} | {span(ms, low / PI5_OVER_PI4, high / PI5_OVER_PI4, 2)} |")
    lines += ["", f"Whole loop under `--pi` (YuNet at 320 px every {PI_PRESET['detect_every']}nd frame, tracking, "
              "classifier, overlay; generated 640x480 video), frames per second, estimated from this machine's "
              "1-thread run; the 4-thread columns speed up only the detector, by the published "
              f"{four_threads:.2f}x:", "",
              "| model | settings | faces | here, 1 thread (measured) | Pi 4, 1 thread | Pi 4, 4 threads | Pi 5, 4 threads |",
              "|---|---|---|---|---|---|---|"]
    for r in (r for r in loop_rows if r["settings"].startswith("--pi")):  # the rows measured at 1 thread
        fps = float(r["fps"])
        frame_ms = 1000 / fps
        detector_share = min(frame_ms, float(r["detector_ms"]) / PI_PRESET["detect_every"])
        frame_4t_ms = frame_ms - detector_share * (1 - 1 / four_threads)

        def fps_span(ms, slo, shi):
            lo, hi = 1000 / (ms * shi), 1000 / (ms * slo)
            return f"{lo:.0f}–{hi:.0f}" if lo >= 20 else f"{lo:.1f}–{hi:.1f}"

        lines.append(f"| {r.get('model', '')} | {r['settings']} | {r['faces']} | {fps:.0f} | {fps_span(frame_ms, low, high)} | "
                     f"{fps_span(frame_4t_ms, low, high)} | "
                     f"{fps_span(frame_4t_ms, low / PI5_OVER_PI4, high / PI5_OVER_PI4)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--face-model", type=Path, required=True, help="face_detection_yunet_2023mar.onnx")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where feredge bench wrote this machine's CSVs")
    args = parser.parse_args()
    name = slug(machine_name())
    bench_rows = [r for r in read_rows(args.results / f"{name}.csv") if r["format"] != "keras (TensorFlow)"]
    loop_rows = read_rows(args.results / f"{name}_e2e.csv")
    if not any(r.get("settings", "").startswith("--pi") for r in loop_rows):
        raise SystemExit(f"{name}_e2e.csv has no --pi rows: rerun `feredge bench` with this version")
    here = yunet_ms_here(args.face_model)
    text = (f"Estimated from measurements on {machine_name()} (`python -m feredge.benchmarks.pi_estimate`); "
            "not measured on a Pi.\n\n" + estimate(bench_rows, loop_rows, here))
    publish(args.results / "pi" / "estimate.md", text)
    low, high = pi4_slowdown(here)
    (args.results / "pi" / SCALE_FILE).write_text(json.dumps(
        {"machine": machine_name(), "yunet_320_1t_ms_here": round(here, 3), "pi4_slowdown": [round(low, 3), round(high, 3)],
         "pi5_over_pi4": round(PI5_OVER_PI4, 3)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
