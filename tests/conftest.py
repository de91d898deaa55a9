"""Shared fixtures. Tests make their own small data; only tests marked `realdata` read FER-2013 from
FER2013_ZIP or ../shared, and the YuNet face model from FEREDGE_FACE_MODEL or ../shared."""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from feredge.edge.preprocess import LABELS
from feredge.train import ferplus

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "edge" / "assets" / "astronaut.jpg"
SHARED = REPO.parent / "shared"


VOTE_HEADER = ["path", "fer2013_row", "rmse", *ferplus.VOTE_COLUMNS]


def write_votes(zip_path, out, rule=lambda name, label: {ferplus.FERPLUS_NAME[label]: 10}, rename=None):
    """A votes file for every image of zip_path: rule(member name, folder label) -> {FER+ column: count}."""
    with zipfile.ZipFile(zip_path) as zf, open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(VOTE_HEADER)
        for i, name in enumerate(n for n in zf.namelist() if n.endswith(".jpg")):
            counts = rule(name, name.split("/")[-2])
            row = [counts.get(c, 0) for c in ferplus.VOTE_COLUMNS] if counts is not None else [""] * 10
            w.writerow([rename(name) if rename else name, i, 1.0, *row])
    return out


def real_data_path() -> Path:
    return Path(os.environ.get("FER2013_ZIP", SHARED / "data" / "fer2013" / "fer2013.zip"))


def yunet_path() -> Path:
    return Path(os.environ.get("FEREDGE_FACE_MODEL", SHARED / "models" / "face_detection_yunet.onnx"))


def pattern_image(label: int, rng) -> np.ndarray:
    """A 48x48 grey image a tiny CNN can classify: a grating whose orientation encodes the class
    (local texture survives global pooling), plus a bright band whose row encodes it too (for the
    loader tests)."""
    yy, xx = np.mgrid[0:48, 0:48]
    angle = np.pi * label / 7
    grating = 60 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / 6 + rng.uniform(0, 6.3))
    img = np.clip(110 + grating + rng.normal(0, 8, (48, 48)), 0, 255).astype(np.uint8)
    img[6 * label + 3 : 6 * label + 8, 4:44] = 250
    return img


def jpeg(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def make_zip(path: Path, per_class=(12, 4, 4), prefix: str = "", named=True, seed=0, extra=None) -> Path:
    """Kaggle-layout zip: train/<class>/Training_*.jpg, test/<class>/{PublicTest,PrivateTest}_*.jpg."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as zf:
        for c, label in enumerate(LABELS):
            for split, stem, n in (("train", "Training", per_class[0]), ("test", "PublicTest", per_class[1]),
                                   ("test", "PrivateTest", per_class[2])):
                for i in range(n):
                    name = f"{stem}_{c}{i:04d}.jpg" if named else f"{c}_{stem[:3]}{i:04d}.jpg"
                    zf.writestr(f"{prefix}{split}/{label}/{name}", jpeg(pattern_image(c, rng)))
        for name, blob in (extra or {}).items():
            zf.writestr(prefix + name, blob)
    return path


def make_csv(path: Path, per_class=(12, 4, 4), usage=True, seed=0, bad_rows=0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels,Usage" if usage else "emotion,pixels"]
    for c in range(len(LABELS)):
        for use, n in zip(("Training", "PublicTest", "PrivateTest"), per_class):
            for _ in range(n):
                px = " ".join(map(str, pattern_image(c, rng).ravel()))
                lines.append(f"{c},{px},{use}" if usage else f"{c},{px}")
    lines += ["3,1 2 3,Training"] * bad_rows
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Each test session decodes into its own cache, never the user's.
    monkeypatch.setenv("FEREDGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def mini_zip(tmp_path_factory) -> Path:
    return make_zip(tmp_path_factory.mktemp("data") / "mini.zip", per_class=(24, 10, 10))


@pytest.fixture(scope="session")
def mini_data(mini_zip):
    from feredge.train.data import load_fer2013

    return load_fer2013(mini_zip, use_cache=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mini_data) -> Path:
    """A tiny custom CNN trained on the pattern data: confident, non-trivial predictions."""
    from feredge.train.train import load_config, train

    run = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("custom_cnn.toml", {"epochs": 6, "widths": [8, 16], "batch_size": 16, "precision": "float32",
                                          "learning_rate": 5e-3, "warmup_epochs": 0, "mixup": 0.0, "tta": False,
                                          "augment": {"rotation": 0, "shift": 0, "zoom": 0, "erasing": 0, "flip": False}})
    train(cfg, run, data=mini_data)
    return run


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_run, mini_data) -> Path:
    """The tiny run exported to all six formats (gate on the mini PrivateTest split)."""
    from feredge.export.export import export_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    export_model(tiny_run, out, data=mini_data, calib_n=100, progress=False)
    return out


@pytest.fixture(scope="session")
def yunet() -> Path:
    path = yunet_path()
    if not path.is_file():
        pytest.skip(f"YuNet face model not found at {path} (set FEREDGE_FACE_MODEL)")
    return path


@pytest.fixture()
def detector(tiny_models, yunet):
    from feredge.edge.detector import EmotionDetector

    return EmotionDetector(tiny_models, face_model=yunet)
