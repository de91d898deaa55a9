"""What the analytics cost the loop: `python -m feredge.benchmarks.report_cost --face-model PATH`

The generated 640x480 clip (benchmarks/synthetic.py, one face) runs through the real capture loop with
the default model and settings, in turns without and with `--report` (events.csv/.jsonl written every
frame, the per-person tally, summaries), `rounds` times each; the figure is each setting's median
frames per second of the loop itself. Closing the report (the final summary and the timeline picture,
once per run) is timed apart. Writes benchmarks/results/report_cost/report_cost.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from feredge.benchmarks import RESULTS_DIR, publish
from feredge.benchmarks.bench import machine_name
from feredge.benchmarks.synthetic import make_video
from feredge.edge.detector import EmotionDetector
from feredge.edge.loop import LoopOptions, VideoLoop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--face-model", type=Path, help="face_detection_yunet_2023mar.onnx (or FEREDGE_FACE_MODEL)")
    parser.add_argument("--model", default=None, help="default: the shipped default model")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "report_cost")
    args = parser.parse_args()
    detector = EmotionDetector(args.model, face_model=args.face_model)
    fps = {"without --report": [], "with --report": []}
    close_s = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_video(Path(tmp) / "clip.mp4", faces=1, frames=args.frames)
        VideoLoop(detector, str(clip), LoopOptions(progress=False)).run()  # warm-up
        for i in range(args.rounds):
            for name in fps:  # in turns, so a slow spell of the machine falls on both
                report = str(Path(tmp) / f"report{i}") if name == "with --report" else None
                t = time.perf_counter()
                run = VideoLoop(detector, str(clip), LoopOptions(report_dir=report, progress=False)).run()
                fps[name].append(run["fps"])
                if report:
                    close_s.append(time.perf_counter() - t - run["wall_s"])
    without, with_report = (statistics.median(v) for v in fps.values())
    cost = 100 * (without - with_report) / without
    lines = [f"Cost of `--report` on {machine_name()} (`python -m feredge.benchmarks.report_cost`): the generated "
             f"640x480 clip, {args.frames} frames, one face, default model and settings, {args.rounds} runs of each "
             "setting in turns (medians).", "",
             "| setting | loop fps (median) | runs |", "|---|---|---|"]
    lines += [f"| {name} | {statistics.median(v):.1f} | {', '.join(f'{x:.0f}' for x in v)} |" for name, v in fps.items()]
    lines += ["", f"The report costs {cost:.1f} % of the loop's speed (bar: under 5 %); closing it (final summary and "
                  f"timeline.png, once per run) takes {statistics.median(close_s):.2f} s (median)."]
    publish(args.out / "report_cost.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
