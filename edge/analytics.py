"""Analytics of a run (`feredge detect SOURCE --report DIR`): per-face rows, per-person summaries,
a timeline picture.

- events.csv / events.jsonl: one row per face per frame: frame index, time in seconds (a video's own
  timestamps; for a camera or stream, seconds since start plus ISO-8601 wall-clock time), track id,
  box, the seven probabilities, the top emotion, and whether the face was detected on that frame or
  carried by the tracker (`--detect-every`). Both are flushed every frame.
- people.csv / summary.json: per track id, first and last time seen, seconds visible, top emotion
  (of the mean probabilities), mean probabilities, share of visible time per emotion (by each frame's
  top emotion); and the same for the whole run. Rewritten every `summary_every_s` seconds (by the run's
  clock) through a temporary file, so a kill loses at most that interval and never leaves half a file.
- timeline.png: per track, the probabilities over time, one colour per emotion (the overlay's).
  Needs matplotlib (`pip install "feredge[report]"`); without it the run says so once and writes the rest.

A frame's duration (what "seconds visible" adds up) is the time to the next frame, as the timestamps
give it (so variable frame rates count right), capped at MAX_FRAME_GAP_S so a stalled stream does not
count as seen; the last frame gets the median frame duration.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from feredge.edge.overlay import COLORS
from feredge.edge.preprocess import LABELS

# matplotlib (the `report` extra) is imported where the timeline is drawn.

log = logging.getLogger(__name__)

MAX_FRAME_GAP_S = 1.0
# Points kept per track for the timeline (a kiosk runs for days): the most recent ones.
TIMELINE_POINTS = 50_000
EVENT_FIELDS = ["frame", "time_s", "wall_time", "track_id", "x", "y", "w", "h", *LABELS, "label", "detected"]


class Track:
    """What is known of one tracked face: first/last time, time per emotion, probability-time sums."""

    def __init__(self, t: float):
        self.first = self.last = t
        self.seconds = 0.0
        self.prob_seconds = np.zeros(len(LABELS))
        self.label_seconds = dict.fromkeys(LABELS, 0.0)
        self.timeline = deque(maxlen=TIMELINE_POINTS)

    def add(self, t: float, probs: np.ndarray, duration: float):
        self.last = t
        self.seconds += duration
        self.prob_seconds += probs * duration
        self.label_seconds[LABELS[int(probs.argmax())]] += duration
        self.timeline.append((t, probs))

    def summary(self) -> dict:
        mean = self.prob_seconds / self.seconds if self.seconds > 0 else self.prob_seconds
        return {"first_s": round(self.first, 3), "last_s": round(self.last, 3), "seconds_visible": round(self.seconds, 3),
                "top_emotion": LABELS[int(mean.argmax())] if self.seconds > 0 else None,
                "mean": {k: round(float(v), 4) for k, v in zip(LABELS, mean)},
                "share": {k: round(v / self.seconds, 4) if self.seconds > 0 else 0.0 for k, v in self.label_seconds.items()}}


def face_row(frame: int, t: float, face, detected: bool, wall: float | None) -> dict:
    """One face on one frame, as events.csv, events.jsonl and MQTT carry it."""
    wall_time = datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds") if wall else ""
    return {"frame": frame, "time_s": round(t, 4), "wall_time": wall_time, "track_id": face.track_id,
            "x": face.box[0], "y": face.box[1], "w": face.box[2], "h": face.box[3],
            **{k: round(face.probabilities[k], 4) for k in LABELS}, "label": face.label, "detected": detected}


class PeopleTally:
    """Per-person and whole-run figures from the frames seen so far (see the module's docstring)."""

    def __init__(self, source: str, live: bool):
        self.source, self.live = source, live
        self.tracks: dict[int, Track] = {}
        self.pending = None  # the last frame, held until the next one gives its duration
        self.durations = deque(maxlen=1000)
        self.frames = 0
        self.first_t = self.last_t = None

    def add(self, t: float, faces):
        self.frames += 1
        self.first_t = t if self.first_t is None else self.first_t
        self.last_t = t
        if self.pending is not None:
            gap = max(t - self.pending[0], 0.0)
            self._account(*self.pending, duration=min(gap, MAX_FRAME_GAP_S))
            self.durations.append(gap)
        self.pending = (t, [(face.track_id, np.array([face.probabilities[k] for k in LABELS])) for face in faces])

    def finish(self):
        """Account the last frame, with the median frame duration."""
        if self.pending is not None:
            typical = statistics.median(self.durations) if self.durations else 0.0
            self._account(*self.pending, duration=min(typical, MAX_FRAME_GAP_S))
            self.pending = None

    def _account(self, t: float, faces, duration: float):
        for track_id, probs in faces:
            key = -1 if track_id is None else int(track_id)
            self.tracks.setdefault(key, Track(t)).add(t, probs, duration)

    def summary(self) -> dict:
        people = {str(k): v.summary() for k, v in sorted(self.tracks.items())}
        whole = Track(self.first_t or 0.0)
        for track in self.tracks.values():
            whole.seconds += track.seconds
            whole.prob_seconds += track.prob_seconds
            for k, v in track.label_seconds.items():
                whole.label_seconds[k] += v
        overall = whole.summary()
        overall.update(first_s=round(self.first_t or 0.0, 3), last_s=round(self.last_t or 0.0, 3))
        return {"source": self.source, "live": self.live, "frames": self.frames, "people": len(self.tracks),
                "duration_s": round((self.last_t or 0.0) - (self.first_t or 0.0), 3),
                "face_seconds": overall.pop("seconds_visible"), "overall": overall, "per_person": people}


class RunReport:
    """Writes the report of one run into out_dir; `add` per frame, `close` at the end."""

    def __init__(self, out_dir, live: bool, source: str, summary_every_s: float = 10.0):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.live, self.summary_every_s = live, summary_every_s
        self.tally = PeopleTally(source, live)
        self.csv_file = open(self.dir / "events.csv", "w", newline="")
        self.csv = csv.DictWriter(self.csv_file, EVENT_FIELDS)
        self.csv.writeheader()
        self.jsonl = open(self.dir / "events.jsonl", "w", buffering=1)
        self.last_summary_t = None
        self.closed = False

    def add(self, frame: int, t: float, faces, detected: bool, wall: float | None = None):
        """One analysed frame at time t (media seconds, or seconds since start when live)."""
        for face in faces:
            row = face_row(frame, t, face, detected, wall)
            self.csv.writerow(row)
            self.jsonl.write(json.dumps(row) + "\n")
        self.csv_file.flush()
        self.tally.add(t, faces)
        if self.last_summary_t is None:
            self.last_summary_t = t
        elif t - self.last_summary_t >= self.summary_every_s:
            self.write_summary()
            self.last_summary_t = t

    def write_summary(self):
        data = self.tally.summary()
        write_atomic(self.dir / "summary.json", json.dumps(data, indent=1) + "\n")
        rows = [{"track_id": k, **{f: v[f] for f in ("first_s", "last_s", "seconds_visible", "top_emotion")},
                 **{f"mean_{e}": v["mean"][e] for e in LABELS}, **{f"share_{e}": v["share"][e] for e in LABELS}}
                for k, v in data["per_person"].items()]
        fields = ["track_id", "first_s", "last_s", "seconds_visible", "top_emotion",
                  *(f"mean_{e}" for e in LABELS), *(f"share_{e}" for e in LABELS)]
        tmp = self.dir / "people.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.dir / "people.csv")

    def close(self) -> dict:
        """Account the last frame, write the summary and the timeline; returns what the run's summary line
        says of it."""
        if not self.closed:
            self.closed = True
            self.tally.finish()
            self.csv_file.close()
            self.jsonl.close()
            self.write_summary()
            plot_timeline(self.tally.tracks, self.dir / "timeline.png", "seconds since start" if self.live else "media time (s)")
        return {"report": str(self.dir), "people": len(self.tally.tracks)}


def write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot_timeline(tracks: dict, path: Path, xlabel: str) -> bool:
    """One panel per track: each emotion's probability over time. False (and a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("timeline.png needs matplotlib: pip install \"feredge[report]\"; the CSV and JSON files are written")
        return False
    shown = sorted(tracks.items())[:12] or [(None, None)]
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 1.9 * len(shown) + 0.8), sharex=True, squeeze=False)
    for ax, (track_id, track) in zip(axes[:, 0], shown):
        if track is None:
            ax.text(0.5, 0.5, "no faces found", ha="center", va="center", transform=ax.transAxes)
        else:
            t = np.array([p[0] for p in track.timeline])
            probs = np.array([p[1] for p in track.timeline])
            for i, label in enumerate(LABELS):
                b, g, r = COLORS[label]
                ax.plot(t, probs[:, i], color=(r / 255, g / 255, b / 255), label=label, linewidth=1.4)
            ax.set_ylabel(f"person {track_id}" if track_id != -1 else "untracked")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper center", bbox_to_anchor=(0.5, 1.45), ncol=len(LABELS), frameon=False)
    axes[-1, 0].set_xlabel(xlabel)
    more = f" (first 12 of {len(tracks)} people)" if len(tracks) > 12 else ""
    fig.suptitle(f"Emotion probabilities over time{more}", y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
