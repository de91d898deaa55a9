"""FER+ crowd votes (Barsoum et al. 2016, MIT licence): ten taggers' votes for every FER-2013 image.

The votes file (`ferplus_votes.csv`, one row per zip member: see ../shared/data/README.md) holds counts
for FER+'s ten columns: its eight emotions, `unknown` and `NF` (not a face). This project outputs
FER-2013's seven emotions, so the rule for the extras is:

- `contempt` and `unknown` votes are dropped (FER-2013 has no contempt; unknown is no answer). They are
  1.7 % and 4.8 % of all votes; an image's remaining votes are renormalised over the seven emotions.
- An image has a FER+ target when it has at least one vote on the seven emotions. 175 images have no
  row (173 marked not-a-face by FER+, 2 unmatched) and 5 more have no vote on the seven; they have no
  FER+ target: training with FER+ targets leaves them out, FER+ evaluation counts them as left out.
  No image with a vote on the seven has NF as its plurality (measured on the shared file), so NF
  votes need no further rule.
- The majority is the emotion with most votes; a tie (4.6 % of PrivateTest) goes to the emotion that
  comes first in LABELS' order (angry, disgust, fear, happy, neutral, sad, surprise). That rule
  reproduces the reference figures in ../shared/data/README.md (63.8 % agreement with FER-2013's
  label on train, the shipped custom CNN's 65.3 % on PrivateTest).

This module only reads and derives; `train/data.py` attaches the votes to each image.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from feredge.edge.preprocess import LABELS

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
# FER+'s name for each of our LABELS (angry, disgust, fear, happy, neutral, sad, surprise).
FERPLUS_NAME = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                "neutral": "neutral", "sad": "sadness", "surprise": "surprise"}
EMOTION_COLUMNS = [VOTE_COLUMNS.index(FERPLUS_NAME[label]) for label in LABELS]
VOTES_FILE = "ferplus_votes.csv"
# More zip members than this share without a row in the votes file: the file belongs to another copy.
MAX_UNMATCHED = 0.01


class VotesError(ValueError):
    """A votes file that is missing, unreadable or doesn't match the images; the message is one line."""


def votes_path_for(data_path) -> Path | None:
    """FERPLUS_VOTES if set (it must exist), else ferplus_votes.csv beside the data, else None."""
    env = os.environ.get("FERPLUS_VOTES")
    if env:
        if not Path(env).exists():
            raise VotesError(f"FERPLUS_VOTES points at {env}, which does not exist")
        return Path(env)
    beside = Path(data_path).expanduser().resolve().parent / VOTES_FILE
    return beside if beside.exists() else None


def read_votes(path) -> dict[str, np.ndarray]:
    """{zip member name: float32 (10,) counts in VOTE_COLUMNS order, NaN where FER+ has no votes}."""
    path = Path(path)
    if not path.exists():
        raise VotesError(f"FER+ votes file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", *VOTE_COLUMNS} - set(reader.fieldnames or ())
        if missing:
            raise VotesError(f"{path} is not a FER+ votes file (no column {', '.join(sorted(missing))})")
        out = {}
        for row in reader:
            try:
                out[row["path"]] = np.array([float(row[c]) if row[c] else np.nan for c in VOTE_COLUMNS], np.float32)
            except ValueError:
                raise VotesError(f"{path}: unreadable vote counts for {row['path']}") from None
    return out


def join_votes(names, votes_by_name: dict, where: str) -> np.ndarray:
    """(N, 10) votes for the images named (NaN rows for images FER+ has no votes for); a one-line error
    when the names are not the votes file's (another copy of FER-2013, or another layout)."""
    if names is None:
        raise VotesError(f"FER+ votes need the zip's or folder's file names; {where} has none (a csv source?)")
    unmatched = [n for n in names if n not in votes_by_name]
    if len(unmatched) > MAX_UNMATCHED * max(1, len(names)):
        raise VotesError(f"the FER+ votes file does not match {where}: {len(unmatched)} of {len(names)} images "
                         f"have no row (e.g. {unmatched[0]})")
    empty = np.full(len(VOTE_COLUMNS), np.nan, np.float32)
    return np.stack([votes_by_name.get(n, empty) for n in names]) if len(names) else np.zeros((0, 10), np.float32)


def emotion_votes(votes: np.ndarray) -> np.ndarray:
    """(N, 7) counts on LABELS' emotions; 0 where FER+ has no votes."""
    return np.nan_to_num(votes[:, EMOTION_COLUMNS])


def has_target(votes: np.ndarray) -> np.ndarray:
    """Images with at least one vote on the seven emotions (the rule above)."""
    return emotion_votes(votes).sum(1) > 0


def distribution(votes: np.ndarray) -> np.ndarray:
    """(N, 7) vote shares over LABELS' emotions; rows without a target are all zero."""
    counts = emotion_votes(votes)
    total = counts.sum(1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def majority(votes: np.ndarray) -> np.ndarray:
    """FER+ majority as an index into LABELS; -1 where there is no target. Ties: LABELS' order."""
    return np.where(has_target(votes), emotion_votes(votes).argmax(1), -1)
