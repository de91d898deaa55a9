"""Per-face temporal smoothing with simple IoU tracking, so labels stay stable from frame to frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    track_id: int
    box: tuple
    probs: np.ndarray
    score: float
    missed: int = 0


class FaceTracker:
    """Greedy IoU matching of detections to tracks; probabilities are smoothed with an exponential
    moving average (alpha = weight of the newest frame). A track unseen for max_missed frames ends."""

    def __init__(self, alpha: float = 0.4, iou_threshold: float = 0.3, max_missed: int = 5):
        self.alpha, self.iou_threshold, self.max_missed = alpha, iou_threshold, max_missed
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes, probs, scores) -> list[Track]:
        """Feed one frame's detections; returns the tracks seen in this frame, in detection order."""
        pairs = sorted(((iou(t.box, b), ti, di) for ti, t in enumerate(self.tracks) for di, b in enumerate(boxes)),
                       reverse=True)
        matched_t, matched_d, assignment = set(), set(), {}
        for overlap, ti, di in pairs:
            if overlap < self.iou_threshold:
                break
            if ti in matched_t or di in matched_d:
                continue
            matched_t.add(ti)
            matched_d.add(di)
            assignment[di] = ti
        seen = []
        for di, (box, p, s) in enumerate(zip(boxes, probs, scores)):
            p = np.asarray(p, np.float64)
            if di in assignment:
                t = self.tracks[assignment[di]]
                t.probs = self.alpha * p + (1 - self.alpha) * t.probs
                t.box, t.score, t.missed = tuple(box), s, 0
            else:
                t = Track(self._next_id, tuple(box), p, s)
                self._next_id += 1
                self.tracks.append(t)
            seen.append(t)
        seen_ids = {t.track_id for t in seen}
        for t in self.tracks:
            if t.track_id not in seen_ids:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return seen

    def predict_only(self) -> list[Track]:
        """Frames where detection is skipped (detect every N frames): keep the last tracks as they are."""
        return [t for t in self.tracks if t.missed == 0]
