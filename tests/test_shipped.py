"""The shipped models (every folder under models/ with a manifest): files and checksums as the manifest
says, accuracy as the gate measured, a benchmark row; and the README's first command on the default.
Ensembles (a manifest of members, no files of their own) are checked in test_ensemble.py; their
accuracy reproduces here like every model's."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, real_data_path
from feredge.edge.classifier import load_classifier, sha256_of
from feredge.edge.detector import default_model_dir
from feredge.edge.preprocess import DEFAULT_CROP
from feredge.export.export import CALIBRATED_FORMATS

SHIPPED = REPO / "models" / "custom_cnn"  # the default model
MANIFESTS = {p.parent: json.loads(p.read_text()) for p in sorted((REPO / "models").glob("*/manifest.json"))}
SHIPPED_MODELS = [d for d, m in MANIFESTS.items() if m.get("kind") != "ensemble"]
SHIPPED_FORMATS = [(d, fmt) for d, m in MANIFESTS.items() for fmt in sorted(m["formats"])]


def test_default_is_the_custom_cnn():
    # The installed package's default model is the repository's models/custom_cnn (editable or copied).
    assert default_model_dir().name == "custom_cnn"
    assert (default_model_dir() / "manifest.json").read_text() == (SHIPPED / "manifest.json").read_text()


@pytest.mark.parametrize("shipped", SHIPPED_MODELS, ids=lambda d: d.name)
def test_shipped_model_matches_its_manifest(shipped):
    m = json.loads((shipped / "manifest.json").read_text())
    assert CALIBRATED_FORMATS & set(m["formats"])  # a full-integer artifact that passed the gate
    for fmt, e in m["formats"].items():
        assert sha256_of(shipped / e["file"]) == e["sha256"], fmt
        assert e["gate"]["passed"]
    assert m["evaluation"] == {**m["evaluation"], "split": "PrivateTest", "n": 3589, "quick": False}
    assert m["input"]["crop"] == DEFAULT_CROP and set(m["input"]) == {"size", "channels", "dtype", "range", "layout",
                                                                      "preprocessing", "crop"}
    for f in ("training_config.json", "training_metrics.json", "confusion_test.png", "curves.png"):
        assert (shipped / f).exists(), f


@pytest.mark.realdata
@pytest.mark.parametrize("shipped, fmt", SHIPPED_FORMATS, ids=[f"{d.name}-{f}" for d, f in SHIPPED_FORMATS])
def test_shipped_accuracy_reproduces_through_the_edge_runtime(shipped, fmt):
    path = real_data_path()
    if not path.exists():
        pytest.skip(f"FER-2013 not found at {path} (set FER2013_ZIP)")
    from feredge.train.data import load_fer2013
    from feredge.train.evaluate import classification_metrics, predict_split

    test = load_fer2013(path)["test"]
    m = json.loads((shipped / "manifest.json").read_text())["formats"][fmt]
    clf = load_classifier(shipped, fmt=fmt)
    pred = predict_split(clf.predict_pixels, test.x, clf.input_size, clf.channels, tta=False).argmax(1)
    acc = classification_metrics(test.y, pred)["accuracy"]
    assert acc == pytest.approx(m["accuracy"], abs=0.002)  # same figure as the gate saw (±7 images)


def test_readme_first_command_on_the_shipped_model(tmp_path, yunet):
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "detect", str(REPO / "edge" / "assets" / "astronaut.jpg"),
                        "--face-model", str(yunet), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "astronaut.jpg: face 1 at" in r.stdout and "custom_cnn" in r.stderr
    # Only our own two lines (model used, where output went): no native start-up chatter.
    assert len(r.stderr.strip().splitlines()) == 2, r.stderr
    faces = json.loads((tmp_path / "astronaut.json").read_text())["faces"]
    assert len(faces) == 1 and np.isclose(sum(faces[0]["probabilities"].values()), 1, atol=1e-3)


@pytest.mark.parametrize("shipped", SHIPPED_MODELS, ids=lambda d: d.name)
def test_default_format_is_the_fastest_gated_int8_format_measured(shipped):
    # On this machine's committed benchmark where it covers the model, else the README's machine's, else
    # any committed machine's that does (a model benched on one machine only).
    from feredge.benchmarks.bench import machine_name
    from feredge.benchmarks.report import bench_rows, machine_rows
    from feredge.edge.classifier import resolve_model

    formats = json.loads((shipped / "manifest.json").read_text())["formats"]
    results = REPO / "benchmarks" / "results"
    others = [bench_rows(results, p.stem) for p in sorted(results.glob("*.csv")) if not p.stem.endswith("_e2e")]
    scale, reference = machine_rows(results)
    assert scale, "no Pi scale in benchmarks/results/pi: run python -m feredge.benchmarks.pi_estimate"
    candidates = [bench_rows(results, machine_name()), reference, *others]
    rows = next((c for c in candidates if any(model == shipped.name for model, _ in c)), {})
    int8 = {fmt: float(r["p50_ms_1t"]) for (model, fmt), r in rows.items()
            if model == shipped.name and fmt in formats and fmt in CALIBRATED_FORMATS}
    assert int8, f"no benchmark has an int8 row for {shipped.name}: run feredge bench"
    assert resolve_model(shipped)[2] == min(int8, key=int8.get)


def test_the_shipped_model_rebuilt_from_onnx_gives_its_probabilities():
    # What `--set teacher=models/custom_cnn` teaches with: the float32 ONNX export as a Keras model.
    import onnxruntime as ort

    from feredge.train.models import custom_cnn_from_onnx

    model = custom_cnn_from_onnx(SHIPPED)
    x = np.random.default_rng(0).uniform(0, 255, (64, 48, 48, 1)).astype(np.float32)
    session = ort.InferenceSession(str(SHIPPED / "model_float32.onnx"), providers=["CPUExecutionProvider"])
    reference = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.abs(model.predict(x, verbose=0) - reference).max() < 1e-5


@pytest.mark.parametrize("shipped, fmt", SHIPPED_FORMATS, ids=[f"{d.name}-{f}" for d, f in SHIPPED_FORMATS])
def test_every_shipped_model_loads_by_name_in_every_format(shipped, fmt):
    clf = load_classifier(shipped.name, fmt=fmt)
    faces = list(np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8))
    probs = clf.predict_faces(faces)
    assert probs.shape == (3, 7) and np.allclose(probs.sum(1), 1, atol=1e-3)


def test_the_shipped_files_fit_pypis_upload_limit_even_uncompressed():
    # The wheel compresses, so the package files' own sizes bound it from above (PyPI's default: 100 MB).
    files = [p for p in (REPO / "models").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 95 * 1024 * 1024
    assert max(p.stat().st_size for p in files) < 50 * 1024 * 1024  # the repository's per-file limit
