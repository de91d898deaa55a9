import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from conftest import SAMPLE
from feredge.edge.classifier import EmotionClassifier, ModelError
from feredge.edge.preprocess import LABELS


def run_cli(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "feredge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_edge_imports_and_predicts_without_tensorflow(tiny_models, yunet):
    script = textwrap.dedent(f"""
        import sys, time
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        t = time.perf_counter()
        from feredge.edge import EmotionDetector
        det = EmotionDetector({str(tiny_models)!r}, face_model={str(yunet)!r})
        print("import+load ms", round((time.perf_counter() - t) * 1000))
        faces = det.predict({str(SAMPLE)!r})
        print("faces", len(faces), faces[0].label)
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "faces 1 " in r.stdout
    print(r.stdout)  # the import time is reported here (pytest -s) and in the README


def test_api_finds_the_sample_face(detector):
    faces = detector.predict(str(SAMPLE))
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert 150 < x + w / 2 < 300 and 50 < y + h / 2 < 200 and w > 80  # the astronaut's face
    assert faces[0].label in LABELS and abs(sum(faces[0].probabilities.values()) - 1) < 1e-3
    assert 0.6 <= faces[0].detector_score <= 1.0


def test_edge_preprocessing_is_the_training_preprocessing(tiny_models, mini_data):
    from feredge.train.train import load_config, make_batches

    cfg = load_config("custom_cnn.toml", {"batch_size": 5, "mixup": 0.0})
    x, y = mini_data["test"].x[:5], mini_data["test"].y[:5]
    train_pixels, _, _ = make_batches(x, np.eye(7, dtype=np.float32)[y], cfg, 1, np.ones(7), shuffle=False)[0]
    clf = EmotionClassifier(tiny_models, fmt="onnx_float32")
    seen = []
    clf.predict_pixels = lambda p: seen.append(p) or np.zeros((len(p), 7))
    clf.predict_faces(list(x))
    assert np.array_equal(seen[0], train_pixels)


def test_cli_detect_writes_annotated_image_and_json(tmp_path, tiny_models, yunet):
    r = run_cli("detect", SAMPLE, "--model", tiny_models, "--face-model", yunet, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "astronaut.jpg: face 1 at" in r.stdout
    record = json.loads((tmp_path / "astronaut.json").read_text())
    assert len(record["faces"]) == 1 and record["faces"][0]["label"] in LABELS
    assert (tmp_path / "astronaut_annotated.jpg").stat().st_size > 10_000


def one_line_error(r, code=2):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return lines[-1]


def test_bad_images(tmp_path, tiny_models, yunet):
    import cv2

    base = ("--model", tiny_models, "--face-model", yunet, "--out", tmp_path / "out")
    assert "image not found" in one_line_error(run_cli("detect", tmp_path / "missing.jpg", *base))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert "cannot decode image" in one_line_error(run_cli("detect", tmp_path / "corrupt.jpg", *base))
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((240, 320, 3), 128, np.uint8))
    r = run_cli("detect", tmp_path / "blank.png", *base)
    assert r.returncode == 1 and "no face found" in r.stdout
    tiny = cv2.resize(cv2.imread(str(SAMPLE)), (60, 60), interpolation=cv2.INTER_AREA)  # face ~18 px < min 24
    cv2.imwrite(str(tmp_path / "tiny.png"), tiny)
    r = run_cli("detect", tmp_path / "tiny.png", *base)
    assert r.returncode == 1 and "no face found" in r.stdout


def test_a_shipped_model_is_chosen_by_name(tmp_path, monkeypatch):
    from feredge.edge.classifier import MODELS_DIR, resolve_model

    monkeypatch.chdir(tmp_path)  # nothing called custom_cnn here
    path, manifest, fmt = resolve_model("custom_cnn")
    assert path.parent == MODELS_DIR / "custom_cnn" and manifest["formats"][fmt]["file"] == path.name
    with pytest.raises(ModelError, match=r"model not found: nope \(shipped models: .*custom_cnn"):
        resolve_model("nope")


def test_bad_models(tmp_path, tiny_models, yunet):
    base = ("--face-model", yunet)
    assert "model not found" in one_line_error(run_cli("detect", SAMPLE, "--model", tmp_path / "nope", *base))
    (tmp_path / "junk.tflite").write_bytes(os.urandom(2048))
    assert "not a valid TFLite model" in one_line_error(run_cli("detect", SAMPLE, "--model", tmp_path / "junk.tflite", *base))
    # A real ONNX model of the wrong kind: the face detector itself.
    assert "not an emotion model" in one_line_error(run_cli("detect", SAMPLE, "--model", yunet, *base))
    # Checksum and manifest mismatches.
    bad = tmp_path / "bad_sum"
    shutil.copytree(tiny_models, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["formats"]["tflite_int8"]["sha256"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(m))
    assert "checksum mismatch" in one_line_error(run_cli("detect", SAMPLE, "--model", bad, "--format", "tflite_int8", *base))
    wrong = tmp_path / "wrong_input"
    shutil.copytree(tiny_models, wrong)
    m = json.loads((wrong / "manifest.json").read_text())
    m["input"]["size"] = 64
    (wrong / "manifest.json").write_text(json.dumps(m))
    assert "doesn't match" in one_line_error(run_cli("detect", SAMPLE, "--model", wrong, *base))
    assert "face model not found" in one_line_error(run_cli("detect", SAMPLE, "--model", tiny_models, "--face-model", tmp_path / "x.onnx"))


def test_no_face_model_without_download_is_a_clear_error(tmp_path, tiny_models):
    r = run_cli("detect", SAMPLE, "--model", tiny_models, "--no-download",
                env={"FEREDGE_CACHE": str(tmp_path), "FEREDGE_FACE_MODEL": ""})
    assert "--face-model" in one_line_error(r)


def test_loop_on_a_generated_video(tmp_path, tiny_models, yunet):
    from feredge.benchmarks.synthetic import make_video

    video = make_video(tmp_path / "in.mp4", faces=3, frames=24)
    r = run_cli("detect", video, "--model", tiny_models, "--face-model", yunet, "--video-out", tmp_path / "out.mp4",
                "--events", tmp_path / "events.jsonl")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["frames_in"] == summary["frames_out"] == 24
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 24
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(events) == summary["faces"] == 72  # three faces in every frame
    assert {e["face_id"] for e in events} == {1, 2, 3}  # tracking keeps three stable ids
    assert set(events[0]) >= {"t", "frame", "face_id", "box", "label", "probabilities"}


def test_detect_every_n_frames_keeps_faces_between_detections(tmp_path, detector):
    from feredge.benchmarks.synthetic import make_video
    from feredge.edge.loop import LoopOptions, VideoLoop

    video = make_video(tmp_path / "in.mp4", faces=1, frames=12)
    calls = []
    detect = detector.detect_faces
    detector.detect_faces = lambda img: calls.append(1) or detect(img)
    summary = VideoLoop(detector, str(video), LoopOptions(detect_every=4, events=str(tmp_path / "e.jsonl"))).run()
    assert len(calls) == 3 and summary["frames_out"] == 12 and summary["faces"] == 12


class FakeCamera:
    """cv2.VideoCapture stand-in: delivers `frames` frames, then the camera is gone."""

    opened = 0

    def __init__(self, *a, **k):
        FakeCamera.opened += 1
        self.left = 5 if FakeCamera.opened == 1 else 0
        self.frame = __import__("cv2").imread(str(SAMPLE))

    def isOpened(self):
        return FakeCamera.opened <= 1

    def read(self):
        if self.left > 0:
            self.left -= 1
            return True, self.frame.copy()
        return False, None

    def get(self, prop):
        return 25.0

    def release(self):
        pass


def test_camera_that_disappears_mid_run_ends_cleanly_with_outputs(tmp_path, detector, monkeypatch):
    import cv2

    from feredge.edge.loop import LoopOptions, VideoLoop

    FakeCamera.opened = 0
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    opts = LoopOptions(events=str(tmp_path / "e.jsonl"), video_out=str(tmp_path / "o.mp4"), reconnect=True,
                       max_reconnects=2, reconnect_delay_s=0.01)
    summary = VideoLoop(detector, "0", opts).run()
    assert summary["frames_out"] == 5 and summary["reconnects"] == 2
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["face"] * 5 + ["source_lost", "reconnect", "reconnect", "gave_up"]
    assert [e["ok"] for e in events if e["event"] == "reconnect"] == [False, False]
    assert events[7]["delay_s"] == 2 * events[6]["delay_s"]  # backoff
    monkeypatch.undo()
    assert int(cv2.VideoCapture(str(tmp_path / "o.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 5


def test_missing_camera_is_one_line(tiny_models, yunet):
    assert "camera 99 is not available" in one_line_error(
        run_cli("detect", "99", "--model", tiny_models, "--face-model", yunet, timeout=60))


def test_stream_that_never_answers_times_out(tiny_models, yunet):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    conns = []
    threading.Thread(target=lambda: conns.append(server.accept()), daemon=True).start()
    t = time.time()
    r = run_cli("detect", f"http://127.0.0.1:{port}/stream.mjpg", "--model", tiny_models, "--face-model", yunet,
                "--timeout", "2", timeout=60)
    assert "cannot open stream" in one_line_error(r)
    assert time.time() - t < 30
    server.close()


def test_kiosk_without_display_runs_headless(tmp_path, tiny_models, yunet):
    from feredge.benchmarks.synthetic import make_video

    video = make_video(tmp_path / "in.mp4", faces=1, frames=6)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "detect", str(video), "--kiosk", "--model", str(tiny_models),
                        "--face-model", str(yunet), "--events", str(tmp_path / "e.jsonl"), "--max-frames", "6"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "running headless" in r.stderr
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 6


def test_tracker_smooths_and_keeps_ids():
    from feredge.edge.tracking import FaceTracker

    tr = FaceTracker(alpha=0.5)
    a, b = np.eye(7)[3], np.eye(7)[4]
    t1 = tr.update([(10, 10, 50, 50), (200, 10, 50, 50)], [a, b], [0.9, 0.9])
    assert [t.track_id for t in t1] == [1, 2]
    t2 = tr.update([(205, 12, 50, 50), (12, 11, 50, 50)], [a, b], [0.9, 0.9])  # order swapped, small motion
    assert [t.track_id for t in t2] == [2, 1]
    assert t2[1].probs[3] == pytest.approx(0.5) and t2[1].probs[4] == pytest.approx(0.5)  # EMA, no flip
    for _ in range(6):
        tr.update([], [], [])
    assert tr.tracks == []  # tracks end after max_missed frames: no growth on long runs
    t3 = tr.update([(10, 10, 50, 50)], [a], [0.9])
    assert t3[0].track_id == 3


def test_sha256_checked_on_load(tiny_models, tmp_path):
    bad = tmp_path / "m"
    shutil.copytree(tiny_models, bad)
    with open(bad / "model_int8.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="checksum mismatch"):
        EmotionClassifier(bad, fmt="onnx_int8")


def test_long_run_memory_stays_flat(tmp_path, detector):
    """Kiosk-style long runs must not grow: tracks expire, FPS uses a fixed window, nothing accumulates."""
    psutil = pytest.importorskip("psutil")
    from feredge.benchmarks.synthetic import make_video
    from feredge.edge.loop import LoopOptions, VideoLoop

    video = make_video(tmp_path / "long.mp4", faces=3, frames=240)
    proc, rss = psutil.Process(), []
    detect = detector.detect_faces
    detector.detect_faces = lambda img: rss.append(proc.memory_info().rss) or detect(img)
    summary = VideoLoop(detector, str(video), LoopOptions(events=str(tmp_path / "e.jsonl"))).run()
    assert summary["frames_out"] == 240
    early, late = np.median(rss[30:60]), np.median(rss[-30:])
    assert late - early < 15 * 2**20, f"RSS grew {(late - early) / 2**20:.1f} MiB over 180 frames"


def test_native_start_up_noise_is_dropped_and_anything_else_passed_on():
    script = textwrap.dedent("""
        import os, sys
        from feredge.edge.native_log import known_noise_dropped
        with known_noise_dropped():
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
            os.write(2, b"[ WARN:0@0.01] setPreferableTarget Targets are not supported by the new graph engine for now\\n")
            os.write(2, b"a real native warning\\n")
        print("after", file=sys.stderr)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.splitlines() == ["a real native warning", "after"], r.stderr


@pytest.mark.parametrize("extra, expected", [
    ([], (None, 640, 1)),
    (["--pi"], (4, 320, 2)),
    (["--pi", "--threads", "2", "--detect-every", "3"], (2, 320, 3)),  # explicit options win over the preset
])
def test_pi_preset_sets_threads_detect_width_and_detect_every(monkeypatch, extra, expected):
    import feredge.cli as cli

    seen = {}

    class Detector:
        def __init__(self, *a, threads=None, detect_width=None, **k):
            seen.update(threads=threads, detect_width=detect_width)
            self.classifier = type("C", (), {"path": "m", "format": "f"})()
            self.faces = type("F", (), {"kind": "yunet"})()

    class Loop:
        def __init__(self, detector, source, opts):
            seen["detect_every"] = opts.detect_every

        def run(self):
            return {}

    monkeypatch.setattr(cli, "EmotionDetector", Detector)
    monkeypatch.setattr(cli, "VideoLoop", Loop)
    assert cli.main(["detect", "video.mp4", *extra]) == 0
    assert (seen["threads"], seen["detect_width"], seen["detect_every"]) == expected


def test_a_face_too_small_at_its_own_size_is_found_by_the_retry(yunet):
    import cv2

    from feredge.edge.faces import FaceDetector

    # The astronaut shrunk until her face is ~8 px: YuNet misses it at this size, finds it enlarged 2x.
    sample = cv2.imread(str(SAMPLE))
    small = cv2.resize(sample, (48, 48), interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 127, np.uint8)
    frame[100:148, 200:248] = small
    assert FaceDetector(yunet, min_face=4, retry_zoom=1).detect(frame) == []
    found = FaceDetector(yunet, min_face=4).detect(frame)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert 200 <= x + w / 2 <= 248 and 100 <= y + h / 2 <= 148 and w < 24  # boxes in the frame's own pixels


@pytest.mark.parametrize("width, detect_width, expected", [
    (640, 640, [1.0, 2.0]),   # nothing found: one retry, enlarged
    (640, 320, [0.5, 1.0]),   # the retry is relative to the working size
    (4000, 0, [1.0]),         # a large photo is not blown up further
])
def test_the_retry_runs_only_when_nothing_is_found(yunet, width, detect_width, expected):
    from feredge.edge.faces import FaceDetector

    detector = FaceDetector(yunet, detect_width=detect_width)
    scales = []
    detector.detect_at = lambda image, scale: scales.append(scale) or []
    detector.detect(np.zeros((300, width, 3), np.uint8))
    assert scales == expected
    scales.clear()
    detector.detect_at = lambda image, scale: scales.append(scale) or ["a face"]
    detector.detect(np.zeros((300, width, 3), np.uint8))
    assert scales == expected[:1]
