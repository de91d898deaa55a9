"""The runtime with `tflite-runtime` (LiteRT's predecessor, still on some Pi images) instead of
`ai-edge-litert`, in a small venv of its own: the same answers, and clear errors where it can't.

Float formats give the same labels. int8 kernels differ between the two runtimes by a rounding step
(seen: 79 of 3,589 PrivateTest labels, accuracy 68.51 % against 68.65 %), so int8 is held to the
export gate's standard instead: the manifest's accuracy within 0.3 points, 97 % label agreement."""

import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from conftest import REPO, real_data_path
from feredge.edge.classifier import EmotionClassifier, read_manifest
from feredge.edge.preprocess import LABELS

MODEL = REPO / "models" / "custom_cnn"
TFLITE_FORMATS = sorted(f for f in read_manifest(MODEL)["formats"] if f.startswith("tflite"))
# tflite-runtime 2.14 (the last release) predates TF 2.21's FULLY_CONNECTED version 12, which only the
# dynamic-range converter emits here: that format gets a clear error instead.
NEEDS_NEWER_RUNTIME = {"tflite_dynamic"}

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    class Block:  # make sure the fallback, not ai-edge-litert, is what runs
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ai_edge_litert", "tensorflow"):
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Block())
    from feredge.edge.classifier import EmotionClassifier, ModelError
    pixels = np.load(sys.argv[2])
    out = {}
    for fmt in sys.argv[3:]:
        try:
            out[fmt] = EmotionClassifier(sys.argv[1], fmt=fmt, threads=1).predict_pixels(pixels).argmax(1).tolist()
        except ModelError as e:
            out[fmt] = str(e)
    import tflite_runtime
    print(json.dumps({"runtime": tflite_runtime.__version__, "labels": out}))
""")


def pip(venv, *args):
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary=:all:", *args],
                          capture_output=True, text=True, timeout=600)


def run(venv, pixels_path, formats):
    r = subprocess.run([str(venv / "bin" / "python"), "-c", SCRIPT, str(MODEL), str(pixels_path), *formats],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.realdata
def test_tflite_runtime_predicts_the_same_labels(tmp_path):
    if not real_data_path().exists():
        pytest.skip(f"FER-2013 not found at {real_data_path()} (set FER2013_ZIP)")
    import cv2

    with zipfile.ZipFile(real_data_path()) as z:  # PrivateTest, already 48x48
        names = sorted(n for n in z.namelist() if "/PrivateTest_" in n)
        faces = [cv2.imdecode(np.frombuffer(z.read(n), np.uint8), cv2.IMREAD_GRAYSCALE) for n in names]
        truth = np.array([LABELS.index(n.split("/")[-2]) for n in names])
    pixels = np.stack(faces).astype(np.float32)[..., None]
    np.save(tmp_path / "pixels.npy", pixels)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = pip(venv, "tflite-runtime")
    if r.returncode != 0:
        pytest.skip(f"no tflite-runtime wheel for this platform: {r.stderr.strip().splitlines()[-1][:200]}")
    # The runtime imports OpenCV (face detection, preprocessing): a release built for NumPy 1.x and 2.x alike,
    # as a Pi with tflite-runtime needs.
    assert pip(venv, "opencv-python-headless<4.11").returncode == 0
    assert pip(venv, "--no-deps", str(REPO)).returncode == 0

    # tflite-runtime 2.14 is built for NumPy 1.x: with NumPy 2 the runtime says so in one line.
    seen = run(venv, tmp_path / "pixels.npy", ["tflite_int8"])
    assert "pip install 'numpy<2'" in seen["labels"]["tflite_int8"]

    assert pip(venv, "numpy<2").returncode == 0
    seen = run(venv, tmp_path / "pixels.npy", TFLITE_FORMATS)
    for fmt in TFLITE_FORMATS:
        if fmt in NEEDS_NEWER_RUNTIME:
            assert "needs a newer TFLite runtime" in seen["labels"][fmt], seen["labels"][fmt]
            continue
        got = np.array(seen["labels"][fmt])
        expected = EmotionClassifier(MODEL, fmt=fmt, threads=1).predict_pixels(pixels).argmax(1)
        if "int8" in fmt:
            print(f"{fmt}: tflite-runtime {seen['runtime']} {(got == truth).mean():.2%} on PrivateTest, "
                  f"{int((got != expected).sum())} labels differ from ai-edge-litert")  # the README's figures (-s)
            assert (got == truth).mean() == pytest.approx(read_manifest(MODEL)["formats"][fmt]["accuracy"], abs=0.003)
            assert (got == expected).mean() >= 0.97, fmt
        else:
            assert np.array_equal(got, expected), fmt
    assert seen["runtime"].startswith("2.")
