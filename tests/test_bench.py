import csv
import json
import shutil

import numpy as np
import pytest

from conftest import write_votes
from feredge.benchmarks.bench import COLUMNS, E2E_COLUMNS
from feredge.benchmarks.peer import FER_LABELS, PEER_FORMAT, PEER_MODEL, TO_OURS
from feredge.train.ferplus import VOTES_FILE


def test_quick_benchmark_table_and_csv_are_complete(tmp_path, tiny_models, mini_zip, yunet):
    from feredge.cli import main

    # Votes beside a copy of the zip: the FER+ columns are measured too.
    data = tmp_path / "data" / "mini.zip"
    data.parent.mkdir()
    shutil.copy(mini_zip, data)
    write_votes(data, data.parent / VOTES_FILE)
    # The tiny float model stands in for the peer's file: the peer path (adapter, timer, RSS probe) runs.
    code = main(["bench", str(tiny_models), "--quick", "--data", str(data), "--face-model", str(yunet),
                 "--out", str(tmp_path), "--name", "test-machine", "--formats", "tflite_int8,onnx_int8,tflite_float32",
                 "--peer-fer", str(tiny_models / "model_float32.tflite")])
    assert code == 0
    with open(tmp_path / "test-machine.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["format"] for r in rows] == ["tflite_int8", "onnx_int8", "tflite_float32", PEER_FORMAT]
    manifest = json.loads((tiny_models / "manifest.json").read_text())
    for r in rows:
        assert all(r[c] != "" for c in COLUMNS), r  # every column measured, end-to-end accuracy included
        assert float(r["p90_ms_1t"]) >= float(r["p50_ms_1t"]) > 0
        assert float(r["peak_rss_mb"]) > 0 and float(r["batch32_img_s"]) > 0
        assert 0 <= float(r["e2e_accuracy"]) <= 1 and 0 <= float(r["accuracy"]) <= 1
    for r in rows[:3]:
        assert abs(float(r["size_kb"]) * 1024 - manifest["formats"][r["format"]]["bytes"]) < 100
    md = (tmp_path / "test-machine.md").read_text()
    assert md.count("| tiny |") == 3 + 4 and md.count(f"| {PEER_MODEL} |") == 1  # 3 formats, 4 video rows, the peer
    assert "faces found: tiny" in md
    with open(tmp_path / "test-machine_e2e.csv") as f:
        e2e = list(csv.DictReader(f))
    assert [(r["settings"], int(r["faces"])) for r in e2e] == [("default", 1), ("default", 3), ("--pi, 1 thread", 1),
                                                                ("--pi, 1 thread", 3)]
    assert all(r[c] != "" for r in e2e for c in E2E_COLUMNS)
    assert (tmp_path / "test-machine.png").read_bytes()[:4] == b"\x89PNG"


def test_rss_probe_runs_without_tensorflow(tiny_models):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "feredge.benchmarks.rss", str(tiny_models), "tflite_int8", "5"],
                       capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["tensorflow_loaded"] is False and out["peak_rss_mb"] > 10


def test_peer_outputs_are_reordered_to_our_labels():
    from feredge.edge.preprocess import LABELS

    assert [FER_LABELS[i] for i in TO_OURS] == list(LABELS)


def test_composited_frames_are_seeded_and_hold_the_face():
    from feredge.benchmarks.e2e import FACE_SIDE, FRAME, composite

    face = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    a, box = composite(face, 7)
    b, box_b = composite(face, 7)
    c, _ = composite(face, 8)
    assert np.array_equal(a, b) and box == box_b and not np.array_equal(a, c)
    x, y, side, _ = box
    assert a.shape == (FRAME[1], FRAME[0], 3) and FACE_SIDE[0] <= side < FACE_SIDE[1]
    assert x >= 0 and y >= 0 and x + side <= FRAME[0] and y + side <= FRAME[1]  # the face itself is in the frame


def test_e2e_metrics_count_a_missed_face_as_wrong():
    from feredge.benchmarks.e2e import e2e_metrics

    y = np.array([0, 1, 2, 3])
    crops = [np.zeros((10, 10), np.uint8)] * 3 + [None]  # the last face was not found

    def perfect(faces):  # right about every face it is given
        return np.eye(7)[y[: len(faces)]]

    m = e2e_metrics(perfect, crops, y)
    assert m["e2e_accuracy"] == 0.75 and m["faces_found_pct"] == 75.0
    assert m["e2e_macro_f1"] == pytest.approx((1 + 1 + 1 + 0) / 7, abs=1e-4)  # classes 4-6 absent: F1 0


def test_e2e_finds_and_crops_a_real_face(yunet):
    import cv2

    from feredge.benchmarks.e2e import e2e_crops
    from feredge.benchmarks.synthetic import sample_face
    from feredge.edge.detector import EmotionDetector
    from feredge.edge.preprocess import DEFAULT_CROP

    class NoClassifier(EmotionDetector):  # the detector and crop only
        def __init__(self):
            from feredge.edge.faces import FaceDetector

            self.faces, self.crop = FaceDetector(yunet), DEFAULT_CROP

    face = cv2.resize(cv2.cvtColor(sample_face(150), cv2.COLOR_BGR2GRAY)[10:160, :], (48, 48))
    crops = e2e_crops(NoClassifier(), np.stack([face] * 4))
    assert all(c is not None and c.shape[0] == c.shape[1] for c in crops)


def test_pi_estimate_scales_this_machines_figures_by_the_published_yunet_ratio():
    from feredge.benchmarks.pi_estimate import PI4_YUNET_320_1T_MS, PI5_OVER_PI4, estimate

    here = PI4_YUNET_320_1T_MS[0] / 10  # YuNet 10x (low) slower on the Pi 4 than here
    high = PI4_YUNET_320_1T_MS[1] / here
    bench = [{"model": "m", "format": "tflite_int8", "p50_ms_1t": "1.0"}]
    loop = [{"model": "m", "settings": "--pi, 1 thread", "faces": "1", "fps": "100", "detector_ms": "4"}]
    text = estimate(bench, loop, here)
    assert f"| m | tflite_int8 | 1.00 | 10.00–{high:.2f} | {10 / PI5_OVER_PI4:.2f}–{high / PI5_OVER_PI4:.2f} |" in text
    # 10 ms a frame here -> 100-108 ms on a Pi 4 at 1 thread: 9.3-10.0 fps.
    assert f"| m | --pi, 1 thread | 1 | 100 | {1000 / (10 * high):.1f}–10.0 |" in text


def test_detection_operating_points_count_the_retry_only_where_nothing_was_found():
    from feredge.benchmarks.detection import RETRY_ZOOM, operating_points

    none = np.array([])
    # Per frame and scale (0.5, 1, 2 for widths 320, 640 and their retries): (face scores, other scores, s).
    frames = [
        {0.5: (none, none, 0.001), 1.0: (np.array([0.9]), none, 0.002), 2.0: (np.array([0.95]), none, 0.008)},
        {0.5: (none, np.array([0.7]), 0.001), 1.0: (none, none, 0.002), 2.0: (np.array([0.65]), np.array([0.5]), 0.008)},
    ]
    rows = {(r["detect_width"], r["retry_zoom"], r["score"]): r for r in operating_points(frames)}
    assert rows[(640, 1, 0.6)]["faces_found_pct"] == 50          # frame 2 missed at 640
    assert rows[(640, RETRY_ZOOM, 0.6)]["faces_found_pct"] == 100  # ... and found by the retry
    assert rows[(640, RETRY_ZOOM, 0.7)]["faces_found_pct"] == 50   # 0.65 is under 0.7
    assert rows[(640, RETRY_ZOOM, 0.4)]["false_per_frame"] == 0.5  # the retry's 0.5 box
    assert rows[(640, RETRY_ZOOM, 0.6)]["no_face_frame_ms"] == 10.0  # 2 + 8 ms
    # At 320 frame 2 has a (false) box at 0.7, so no retry runs there and its face stays missed.
    assert rows[(320, RETRY_ZOOM, 0.6)]["faces_found_pct"] == 50


def test_multiply_adds_are_counted_from_the_graph(tiny_models):
    from feredge.benchmarks.bench import multiply_adds

    # The tiny run: widths 8, 16 on 48x48 (two 3x3 convolutions a stage, pooling after each), a 7-way head.
    expected = (48 * 48 * 9 * (1 * 8 + 8 * 8) + 24 * 24 * 9 * (8 * 16 + 16 * 16) + 16 * 7) / 1e6
    for fmt in ("model_int8.tflite", "model_float16.tflite", "model_int8.onnx"):
        assert multiply_adds(tiny_models / fmt) == round(expected, 1), fmt


def test_resnet_input_size_table_times_int8_resnet50v2_beside_the_reference(tmp_path, tiny_models, monkeypatch):
    import sys

    from feredge.benchmarks.input_size import main

    monkeypatch.setattr(sys, "argv", ["input_size", "--sizes", "32", "--reps", "3", "--reference", str(tiny_models),
                                      "--out", str(tmp_path)])
    assert main() == 0
    text = (tmp_path / "input_size" / "resnet50v2.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| resnet50v2 32 px"))
    macs, megabytes = float(row.split("|")[2].replace(",", "")), float(row.split("|")[3])
    assert 20 < megabytes < 30  # 23.5 M parameters in int8 (float32 would be ~94 MB)
    assert macs > 50  # ResNet50V2 at 32 px: far more than the tiny reference's 0.8 M
    reference = next(line for line in text.splitlines() if line.startswith(f"| {tiny_models.name} (tflite_int8, reference)"))
    assert reference.rstrip(" |").endswith("| 1.0x | 1.0x")


def test_train_speed_times_the_config_bare_then_with_augmentation_then_with_its_teacher(tiny_run, capsys):
    from feredge.benchmarks.train_speed import main

    main(["--config", "custom_cnn.toml", "--set", "widths=[8, 16]", "--set", "batch_size=8",
          "--set", "precision=float32", "--set", f"teacher={tiny_run / 'best.keras'}", "--steps", "2"])
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms/step" not in line]
    assert [r[1].strip() for r in rows] == ["bare model", "+ augmentation", "+ augmentation + teacher"]
    for r in rows:
        ms, img_s = float(r[2]), float(r[3])
        assert ms > 0 and abs(img_s - 8 / (ms / 1000)) <= 0.05 * img_s  # img/s is the batch over the step time
