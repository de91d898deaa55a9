"""Ensembles: the shipped `accurate` folder loads by name through both runtimes and combines its members
as its manifest says; a missing or damaged member fails in one line naming it; the builder gates."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from feredge.edge.classifier import (
    EmotionClassifier,
    EnsembleClassifier,
    ModelError,
    geometric_mean,
    load_classifier,
    sha256_of,
)
from feredge.edge.detector import EmotionDetector

MODELS = REPO / "models"
ENSEMBLES = sorted(p.parent for p in MODELS.glob("*/manifest.json") if json.loads(p.read_text()).get("kind") == "ensemble")


def faces(n=6, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8))


def test_accurate_is_shipped():
    assert MODELS / "accurate" in ENSEMBLES


@pytest.mark.parametrize("ensemble", ENSEMBLES, ids=lambda d: d.name)
def test_shipped_ensemble_names_its_members_by_hash(ensemble):
    m = json.loads((ensemble / "manifest.json").read_text())
    assert m["combine"]["rule"] == "geometric_mean" and len(m["members"]) >= 2
    # Each int8 format ships only if it passed the gate, as a single model's; what failed is kept as rejected.
    assert {"tflite_int8", "onnx_int8"} <= set(m["formats"]) | set(m.get("rejected", {}))
    assert set(m["formats"]) & {"tflite_int8", "onnx_int8"}
    assert not any(e.get("gate", {}).get("passed") for e in m.get("rejected", {}).values())
    for member in m["members"]:
        folder = MODELS / member["model"]
        formats = json.loads((folder / "manifest.json").read_text())["formats"]
        for fmt, digest in member["sha256"].items():
            assert sha256_of(folder / formats[fmt]["file"]) == digest, (member["model"], fmt)
    for fmt, e in m["formats"].items():
        assert e["gate"]["passed"] and e["gate"]["must_beat_best_member"], fmt
        assert e["accuracy"] > max(e["members_alone"].values()), fmt
        assert e["accuracy_drop_pt"] <= e["gate"]["max_drop_pt"], fmt
    assert m["evaluation"] == {**m["evaluation"], "split": "PrivateTest", "n": 3589, "quick": False}


@pytest.mark.parametrize("fmt", ["tflite_int8", "onnx_int8"])
def test_accurate_loads_by_name_and_combines_its_members_as_its_manifest_says(fmt):
    clf = load_classifier("accurate", fmt=fmt)
    assert isinstance(clf, EnsembleClassifier) and clf.format == fmt
    manifest = json.loads((MODELS / "accurate" / "manifest.json").read_text())
    x = faces()
    views = [x, [f[:, ::-1].copy() for f in x]] if manifest["combine"]["mirror"] else [x]
    members = [EmotionClassifier(m["model"], fmt=fmt) for m in manifest["members"]]
    expected = geometric_mean([m.predict_faces(v) for m in members for v in views])
    got = clf.predict_faces(x)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)


def test_accurate_in_the_detector_and_the_cli(tmp_path, yunet):
    det = EmotionDetector("accurate", face_model=yunet)
    found = det.predict(REPO / "edge" / "assets" / "astronaut.jpg")
    assert len(found) == 1 and found[0].label in det.labels
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "detect", str(REPO / "edge" / "assets" / "astronaut.jpg"),
                        "--model", "accurate", "--face-model", str(yunet), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "accurate" in r.stderr and "astronaut.jpg: face 1 at" in r.stdout


def test_balanced_prior_divides_each_member_by_its_own_prior():
    clf = load_classifier("accurate")
    x = faces()
    priors = [m.balance_prior for m in clf.members]
    mirror = clf.mirrored
    views = [x, [f[:, ::-1].copy() for f in x]] if mirror else [x]
    adjusted = [m.predict_faces(v) / p for m, p in zip(clf.members, priors) for v in views]
    expected = geometric_mean([a / a.sum(1, keepdims=True) for a in adjusted])
    from feredge.edge.classifier import with_prior

    np.testing.assert_allclose(with_prior(clf.predict_faces(x), clf.balance_prior, "balanced"), expected, atol=1e-5)


@pytest.fixture()
def copied_models(tmp_path):
    out = tmp_path / "models"
    manifest = json.loads((MODELS / "accurate" / "manifest.json").read_text())
    for name in ["accurate", *(m["model"] for m in manifest["members"])]:
        shutil.copytree(MODELS / name, out / name)
    return out, manifest


def test_a_damaged_member_fails_in_one_line_naming_it(copied_models):
    out, manifest = copied_models
    victim = manifest["members"][0]["model"]
    path = out / victim / "model_int8.tflite"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match=f"member '{victim}' model_int8.tflite fails its sha256 check") as e:
        load_classifier(out / "accurate", fmt="tflite_int8")
    assert "\n" not in str(e.value)
    load_classifier(out / "accurate", fmt="onnx_int8")  # the other format's files are intact


def test_a_missing_member_fails_in_one_line_naming_it(copied_models, tmp_path):
    out, manifest = copied_models
    victim = manifest["members"][-1]["model"]
    shutil.rmtree(out / victim)
    # Not beside the ensemble: then the package's own models/ is searched, so hide the name there too.
    m = json.loads((out / "accurate" / "manifest.json").read_text())
    m["members"][-1]["model"] = "no_such_member"
    (out / "accurate" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="member 'no_such_member' not found") as e:
        load_classifier(out / "accurate")
    assert "\n" not in str(e.value)


def test_the_cli_says_a_damaged_member_in_one_line(copied_models, tmp_path, yunet):
    out, manifest = copied_models
    victim = manifest["members"][0]["model"]
    (out / victim / "model_int8.onnx").write_bytes(b"not a model")
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "detect", str(REPO / "edge" / "assets" / "astronaut.jpg"),
                        "--model", str(out / "accurate"), "--format", "onnx_int8", "--face-model", str(yunet),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"feredge: error: ensemble 'accurate': member '{victim}'")


def test_the_builder_refuses_an_ensemble_no_better_than_its_best_member(tmp_path, tiny_models, mini_data):
    from feredge.export.ensemble import build_ensemble
    from feredge.export.export import GateError

    for name in ("a", "b"):
        shutil.copytree(tiny_models, tmp_path / name)
    # Two copies of one model: the combination is that model, and gains nothing.
    with pytest.raises(GateError, match="best member alone"):
        build_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens", data=mini_data, mirror="off")
    m = json.loads((tmp_path / "ens" / "manifest.json").read_text())
    assert m["formats"] == {} and m["members"] == [] and set(m["rejected"]) == {"tflite_int8", "onnx_int8"}
    with pytest.raises(ModelError, match="names no members|no format"):
        load_classifier(tmp_path / "ens")


def test_the_builder_records_what_the_runtime_gives(tmp_path, tiny_models, mini_data):
    from feredge.export.ensemble import build_ensemble, ensemble_probs

    for name in ("a", "b"):
        shutil.copytree(tiny_models, tmp_path / name)
    m = build_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens", data=mini_data, mirror="auto", require_gain=False)
    assert "mirror_choice" in m["combine"] and set(m["formats"]) == {"tflite_int8", "onnx_int8"}
    test = mini_data["test"]
    for fmt, e in m["formats"].items():
        probs = ensemble_probs(load_classifier(tmp_path / "ens", fmt=fmt), test.x)
        assert float(np.mean(probs.argmax(1) == test.y)) == pytest.approx(e["accuracy"])
        assert e["gate"]["passed"] and e["bytes"] == 2 * (tiny_models / json.loads(
            (tiny_models / "manifest.json").read_text())["formats"][fmt]["file"]).stat().st_size


def test_the_builder_wants_members_where_the_ensemble_will_find_them(tmp_path, tiny_models, mini_data):
    from feredge.export.ensemble import build_ensemble
    from feredge.export.export import ExportError

    with pytest.raises(ExportError, match="must sit beside"):
        build_ensemble([tiny_models, "custom_cnn"], tmp_path / "elsewhere" / "ens", data=mini_data)


def test_a_member_shipped_in_int8_only_is_its_own_reference(tmp_path, tiny_models, mini_data):
    from feredge.export.ensemble import build_ensemble

    for name in ("a", "b"):
        shutil.copytree(tiny_models, tmp_path / name)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["formats"] = {k: v for k, v in manifest["formats"].items() if k.endswith("int8")}
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    m = build_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens", data=mini_data, mirror="off", require_gain=False)
    assert m["reference"]["member_formats"] == {"a": "tflite_float32", "b": "tflite_int8"}


def test_a_format_a_member_lacks_is_recorded_as_not_built(tmp_path, tiny_models, mini_data):
    from feredge.export.ensemble import build_ensemble

    for name in ("a", "b"):
        shutil.copytree(tiny_models, tmp_path / name)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    del manifest["formats"]["onnx_int8"]
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    m = build_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens", data=mini_data, mirror="off", require_gain=False)
    assert set(m["formats"]) == {"tflite_int8"}
    assert m["rejected"] == {"onnx_int8": {"error": "not built: no gated onnx_int8 in member(s) b"}}


def test_evaluate_scores_an_ensemble_folder_as_the_runtime_does(tmp_path, tiny_models, mini_data):
    from feredge.export.ensemble import build_ensemble, ensemble_probs
    from feredge.train.evaluate import evaluate_and_report

    for name in ("a", "b"):
        shutil.copytree(tiny_models, tmp_path / name)
    build_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens", data=mini_data, mirror="on", require_gain=False)
    metrics = evaluate_and_report(tmp_path / "ens", mini_data, tmp_path / "eval", splits=("val",))
    probs = ensemble_probs(load_classifier(tmp_path / "ens"), mini_data["val"].x)
    assert metrics["val"]["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == mini_data["val"].y)))


def test_a_calibrated_ensemble_applies_the_offsets_it_fitted_on_publictest(tmp_path, tiny_models, mini_data):
    from feredge.edge.classifier import shifted
    from feredge.export.ensemble import build_ensemble, ensemble_probs

    for name in ("a", "b"):
        shutil.copytree(tiny_models, tmp_path / name)
    m = build_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens", data=mini_data, mirror="off",
                       require_gain=False, calibrate=True, min_recall=0.3)
    combine = m["combine"]
    assert list(combine["class_bias"]) == m["labels"] and combine["calibration"]["split"] == "PublicTest"
    assert combine["calibration"]["label_sets"] == ("both" if mini_data["val"].votes is not None else "fer2013")
    bias = np.array(list(combine["class_bias"].values()))
    test = mini_data["test"]
    for fmt, e in m["formats"].items():
        clf = load_classifier(tmp_path / "ens", fmt=fmt)
        members = geometric_mean([ensemble_probs(member, test.x) for member in clf.members])
        probs = ensemble_probs(clf, test.x)
        np.testing.assert_allclose(probs, shifted(members, bias), atol=1e-5)
        assert float(np.mean(probs.argmax(1) == test.y)) == pytest.approx(e["accuracy"])


def test_an_ensembles_class_bias_moves_its_decisions():
    # One large offset decides every face, and the outputs stay probabilities (the manifest's class_bias
    # reaching the runtime is the test above's).
    clf = EnsembleClassifier(ENSEMBLES[0], "tflite_int8")
    plain = clf.predict_faces(faces())
    clf.class_bias = np.where(np.array(clf.labels) == "disgust", 50.0, 0.0)
    biased = clf.predict_faces(faces())
    assert (biased.argmax(1) == clf.labels.index("disgust")).all() and not (plain.argmax(1) == biased.argmax(1)).all()
    np.testing.assert_allclose(biased.sum(1), 1.0, atol=1e-5)
