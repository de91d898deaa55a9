"""FER-2013 as users have it: the Kaggle zip, its extracted folder, or the original fer2013.csv.

`load_fer2013(path)` returns the three standard splits as uint8 48x48 grey images and int labels:
train (Training_*), val (PublicTest_*, for model selection) and test (PrivateTest_*, what papers
report). Without those names a stratified, seeded validation split is carved from train. The decoded
arrays are cached as a compressed npz keyed by the source's size and mtime, so the second load takes
seconds.

FER+ crowd votes (train/ferplus.py) are attached to each image when a votes file is found: the
`votes` argument, FERPLUS_VOTES, or `ferplus_votes.csv` beside the zip.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.preprocess import FER_SIZE, LABELS
from feredge.train import ferplus

# tqdm (the `train` extra) is imported where images are decoded.

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# More unreadable images than this fraction of the set is an error, not a warning.
MAX_BAD_FRACTION = 0.10
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm")


class DataError(Exception):
    """Bad dataset input; the message is one line that names the problem."""


@dataclass
class Split:
    x: np.ndarray  # uint8 (N, 48, 48)
    y: np.ndarray  # int64 (N,): FER-2013's label
    names: np.ndarray | None = None  # str (N,): "train/angry/Training_1.jpg", the source's member name
    votes: np.ndarray | None = None  # float32 (N, 7): FER+ votes on LABELS' emotions (train/ferplus.py)

    def __len__(self):
        return len(self.y)

    def take(self, idx) -> "Split":
        """The images at idx, with their names and votes."""
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Split(self.x[idx], self.y[idx], pick(self.names), pick(self.votes))


def subset(split: Split, n: int, seed: int) -> Split:
    """A seeded, stratified subset of n images (all of them when n is 0 or covers the split)."""
    if not n or n >= len(split):
        return split
    _, keep = stratified_split(split.y, n / len(split), seed)
    return split.take(keep)


SHARED_ZIP = Path("shared") / "data" / "fer2013" / "fer2013.zip"


def default_data_path() -> Path:
    """FER2013_ZIP if set, else the team's shared copy beside the checkout: ../shared from the working
    folder (where the README's commands run, also after a plain `pip install .`), or beside the source
    tree of an editable install."""
    env = os.environ.get("FER2013_ZIP")
    if env:
        return Path(env)
    beside_cwd = Path.cwd().parent / SHARED_ZIP
    beside_source = Path(__file__).resolve().parents[1].parent / SHARED_ZIP
    return beside_cwd if beside_cwd.exists() or not beside_source.exists() else beside_source


def cache_dir() -> Path:
    return Path(os.environ.get("FEREDGE_CACHE", Path.home() / ".cache" / "feredge"))


def load_fer2013(path, val_fraction: float = 0.1, seed: int = 0, use_cache: bool = True,
                 votes="auto") -> dict[str, Split]:
    """votes: a FER+ votes csv to attach, "auto" (FERPLUS_VOTES, else ferplus_votes.csv beside the
    data if there is one) or None."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"FER-2013 not found at {path} (give the Kaggle zip, its folder, or fer2013.csv)")
    votes_path = ferplus.votes_path_for(path) if votes == "auto" else votes
    cache = _cache_file(path, val_fraction, seed)
    if use_cache and cache.exists():
        with np.load(cache) as z:
            splits = {s: Split(z[f"{s}_x"], z[f"{s}_y"], z[f"{s}_names"] if f"{s}_names" in z else None)
                      for s in SPLITS}
        check_sharpness(splits)
        return attach_votes(splits, votes_path) if votes_path else splits

    if path.is_dir():
        items = _folder_items(path)
        images, labels, names = _decode_items(items, str(path))
        splits = _split_by_name(images, labels, names, val_fraction, seed)
    elif path.suffix.lower() == ".zip":
        images, labels, names = _read_zip(path)
        splits = _split_by_name(images, labels, names, val_fraction, seed)
    elif path.suffix.lower() == ".csv":
        splits = _read_csv(path, val_fraction, seed)
    else:
        raise DataError(f"unknown FER-2013 format: {path} (expected a .zip, a folder or a .csv)")

    check_sharpness(splits)
    for name, split in splits.items():
        missing = [LABELS[c] for c in range(len(LABELS)) if not np.any(split.y == c)]
        if name == "train" and missing:
            raise DataError(f"class {', '.join(missing)} has no images in the train split of {path}")
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")  # runs started together each write their own
        np.savez_compressed(tmp, **{f"{s}_{k}": getattr(splits[s], k) for s in SPLITS for k in ("x", "y", "names")
                                    if getattr(splits[s], k) is not None})
        tmp.replace(cache)
    return attach_votes(splits, votes_path) if votes_path else splits


def attach_votes(splits: dict[str, Split], votes_path) -> dict[str, Split]:
    """The splits with each image's FER+ votes (train/ferplus.py), joined by member name."""
    by_name = ferplus.read_votes(votes_path)
    return {name: dataclasses.replace(split, votes=ferplus.join_votes(split.names, by_name, f"the {name} split"))
            for name, split in splits.items()}


def sharpness(x: np.ndarray, n: int = 500) -> float:
    """Median variance of the Laplacian over up to n images: a standard focus / blur measure."""

    step = max(1, len(x) // n)
    return float(np.median([cv2.Laplacian(img, cv2.CV_64F).var() for img in x[::step]]))


def check_sharpness(splits: dict[str, Split]) -> dict:
    """Warn when the train split is far blurrier than the test split: a train/test domain shift that
    makes a model trained on it fail on sharp faces. Seen on an earlier copy of FER-2013 whose train
    images were Gaussian-blurred (median Laplacian variance 6 against about 2,100 for test)."""
    stats = {name: sharpness(split.x) for name, split in splits.items() if len(split)}
    if stats.get("train", 0) * 10 < stats.get("test", 0):
        log.warning("train images are much blurrier than test images (median Laplacian variance %.1f vs %.1f): "
                    "a train/test domain shift: a model trained on these images will fail on sharp faces", stats["train"], stats["test"])
    return stats


def _cache_file(path: Path, val_fraction: float, seed: int) -> Path:
    st = path.stat()
    if path.is_dir():  # a folder's identity: its files' count, total size and newest mtime
        files = [f.stat() for f in path.rglob("*") if f.is_file()]
        size, mtime = (len(files), sum(f.st_size for f in files)), max((f.st_mtime_ns for f in files), default=0)
    else:
        size, mtime = st.st_size, st.st_mtime_ns
    key = f"{path.resolve()}|{size}|{mtime}|{val_fraction}|{seed}|v2"  # v2: member names stored
    return cache_dir() / f"fer2013-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _parse_member(name: str):
    """'[prefix/]train/happy/Training_1.jpg' -> ('train', 'happy', 'Training_1.jpg'); None if not an image."""
    parts = Path(name).parts
    if len(parts) < 3 or not name.lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-3].lower(), parts[-2].lower(), parts[-1]


def _check_layout(entries, where: str):
    """entries: (top, class, filename) tuples. Validates folder and class names."""
    if not entries:
        raise DataError(f"unknown layout in {where}: no images under train/<class>/ or test/<class>/")
    tops = {e[0] for e in entries}
    if "train" not in tops or "test" not in tops:
        raise DataError(f"unknown layout in {where}: expected train/<class>/ and test/<class>/ folders, found {sorted(tops)}")
    for top, cls, fname in entries:
        if top in ("train", "test") and cls not in LABELS:
            raise DataError(f"unknown class folder '{cls}' in {where}/{top} (expected one of {', '.join(LABELS)})")


def _folder_items(root: Path):
    entries = []
    for f in sorted(root.rglob("*")):
        parsed = _parse_member(str(f.relative_to(root)))
        if parsed and f.is_file():
            entries.append((parsed, f))
    _check_layout([e for e, _ in entries], str(root))
    return [(e, (lambda f=f: f.read_bytes())) for e, f in entries if e[0] in ("train", "test")]


def _read_zip(path: Path):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable zip (truncated or corrupt?): {e}") from None
    with zf:
        entries = []
        for info in zf.infolist():
            parsed = _parse_member(info.filename)
            if parsed and not info.is_dir():
                entries.append((parsed, info))
        _check_layout([e for e, _ in entries], str(path))

        def reader(info):
            def read():
                return zf.read(info)
            return read

        items = [(e, reader(info)) for e, info in entries if e[0] in ("train", "test")]
        return _decode_items(items, str(path))


def _decode_items(items, where: str):
    """Decode (entry, read_bytes) pairs; a few unreadable files are skipped with a warning."""
    from tqdm import tqdm

    images, labels, names, bad = [], [], [], []
    for (top, cls, fname), read in tqdm(items, desc=f"decoding {Path(where).name}", unit="img", mininterval=1.0):
        try:
            buf = np.frombuffer(read(), np.uint8)
            img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if buf.size else None
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC error or truncated member
            log.debug("unreadable %s: %s", fname, e)
            img = None
        if img is None:
            bad.append(f"{top}/{cls}/{fname}")
            continue
        if img.shape != (FER_SIZE, FER_SIZE):
            img = cv2.resize(img, (FER_SIZE, FER_SIZE), interpolation=cv2.INTER_AREA)
        images.append(img)
        labels.append(LABELS.index(cls))
        names.append(f"{top}/{cls}/{fname}")
    total = len(items)
    if bad:
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        if len(bad) > MAX_BAD_FRACTION * total:
            raise DataError(f"{len(bad)} of {total} images in {where} are unreadable ({shown})")
        log.warning("skipped %d unreadable image(s) of %d in %s: %s", len(bad), total, where, shown)
    if not images:
        raise DataError(f"no readable images in {where}")
    return np.stack(images), np.asarray(labels, np.int64), names


def _split_by_name(images, labels, names, val_fraction, seed) -> dict[str, Split]:
    names = np.asarray(names)
    top = np.array([n.split("/")[0] for n in names])
    base = np.array([n.split("/")[-1] for n in names])
    public = np.char.startswith(base, "PublicTest")
    private = np.char.startswith(base, "PrivateTest")
    train = top == "train"
    test = top == "test"
    if np.any(test & public):  # without PrivateTest (a training pack, train/gpu/pack.py) test is empty
        if not np.any(test & private):
            log.warning("no PrivateTest images: validation on PublicTest, no test split to report")
        everything = Split(images, labels, names)
        return {"train": everything.take(train), "val": everything.take(test & public),
                "test": everything.take(test & private)}
    # No PublicTest/PrivateTest names: validation is carved from train, test is the whole test folder.
    tr_idx, va_idx = stratified_split(labels[train], val_fraction, seed)
    train_split = Split(images[train], labels[train], names[train])
    return {"train": train_split.take(tr_idx), "val": train_split.take(va_idx),
            "test": Split(images[test], labels[test], names[test])}


def stratified_split(y: np.ndarray, fraction: float, seed: int):
    """Indices (keep, held_out) with `fraction` of every class held out, reproducibly."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        held.extend(idx[: int(round(fraction * len(idx)))])
    held = np.sort(np.asarray(held, np.int64))
    keep = np.setdiff1d(np.arange(len(y)), held)
    return keep, held


def _read_csv(path: Path, val_fraction, seed) -> dict[str, Split]:
    usage_to_split = {"training": "train", "publictest": "val", "privatetest": "test"}
    xs, ys, usages, bad = [], [], [], 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"emotion", "pixels"} <= set(reader.fieldnames):
            raise DataError(f"unknown csv layout in {path}: expected columns emotion,pixels[,Usage], found {reader.fieldnames}")
        for row in reader:
            try:
                px = np.array(row["pixels"].split(), np.uint8)
                label = int(row["emotion"])
                if px.size != FER_SIZE * FER_SIZE or not 0 <= label < len(LABELS):
                    raise ValueError
            except (ValueError, TypeError, AttributeError):
                bad += 1
                continue
            xs.append(px.reshape(FER_SIZE, FER_SIZE))
            ys.append(label)
            usages.append(usage_to_split.get((row.get("Usage") or "").strip().lower()))
    total = len(xs) + bad
    if total == 0:
        raise DataError(f"{path} has no rows")
    if bad > MAX_BAD_FRACTION * total:
        raise DataError(f"{bad} of {total} rows in {path} are unreadable (need 2304 pixel values and emotion 0-6)")
    if bad:
        log.warning("skipped %d unreadable row(s) of %d in %s", bad, total, path)
    x, y, u = np.stack(xs), np.asarray(ys, np.int64), np.array(usages, object)
    if all(s in u for s in ("train", "val", "test")):
        return {s: Split(x[u == s], y[u == s]) for s in SPLITS}
    # No Usage column: test and val are both stratified, seeded fractions.
    rest, test = stratified_split(y, val_fraction, seed)
    tr, va = stratified_split(y[rest], val_fraction, seed + 1)
    return {"train": Split(x[rest][tr], y[rest][tr]), "val": Split(x[rest][va], y[rest][va]), "test": Split(x[test], y[test])}
