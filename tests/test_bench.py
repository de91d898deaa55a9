import csv
import json

from feredge.benchmarks.bench import COLUMNS, E2E_COLUMNS


def test_quick_benchmark_table_and_csv_are_complete(tmp_path, tiny_models, mini_zip, yunet):
    from feredge.cli import main

    code = main(["bench", str(tiny_models), "--quick", "--data", str(mini_zip), "--face-model", str(yunet),
                 "--out", str(tmp_path), "--name", "test-machine", "--formats", "tflite_int8,onnx_int8,tflite_float32"])
    assert code == 0
    with open(tmp_path / "test-machine.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["format"] for r in rows] == ["tflite_int8", "onnx_int8", "tflite_float32"]
    manifest = json.loads((tiny_models / "manifest.json").read_text())
    for r in rows:
        assert all(r[c] != "" for c in COLUMNS), r  # every column measured
        assert float(r["p90_ms_1t"]) >= float(r["p50_ms_1t"]) > 0
        assert float(r["peak_rss_mb"]) > 0 and float(r["batch32_img_s"]) > 0
        assert abs(float(r["size_kb"]) * 1024 - manifest["formats"][r["format"]]["bytes"]) < 100
        assert 0 <= float(r["accuracy"]) <= 1
    md = (tmp_path / "test-machine.md").read_text()
    assert md.count("| tiny |") == 3 + 2  # three format rows, two end-to-end rows
    with open(tmp_path / "test-machine_e2e.csv") as f:
        e2e = list(csv.DictReader(f))
    assert [int(r["faces"]) for r in e2e] == [1, 3] and all(r[c] != "" for r in e2e for c in E2E_COLUMNS)
    assert (tmp_path / "test-machine.png").read_bytes()[:4] == b"\x89PNG"


def test_rss_probe_runs_without_tensorflow(tiny_models):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "feredge.benchmarks.rss", str(tiny_models), "tflite_int8", "5"],
                       capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["tensorflow_loaded"] is False and out["peak_rss_mb"] > 10
