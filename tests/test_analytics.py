"""`feredge detect SOURCE --report DIR`: media times from the container, per-person summaries, the
timeline, live sources' wall-clock rows and periodic summaries, face blurring, progress, bad input."""

import csv
import json
import subprocess
import sys
from datetime import datetime
from fractions import Fraction

import cv2
import numpy as np
import pytest

from feredge.benchmarks.synthetic import make_video, sample_face
from feredge.edge.preprocess import LABELS

# A variable frame rate: gaps of 40 ms to 700 ms between frames.
VFR_TIMES = [0.0, 0.04, 0.08, 0.5, 0.54, 1.24, 1.28, 1.32, 2.0, 2.04, 2.3, 2.34]


def write_vfr_video(path, times, face=True):
    """A Matroska file whose frames carry the given timestamps (ms time base), the sample face drifting."""
    import av

    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(90, 160, (480, 640, 3), dtype=np.uint8), (0, 0), 8)
    crop = sample_face(150)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=1000)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = background.copy()
            if face:
                x, y = 240 + 4 * i, 140
                frame[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts, vf.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def container_times(path) -> list[float]:
    """Each frame's presentation time as the container says (PyAV), in decoding order."""
    import av

    with av.open(str(path)) as container:
        return [float(f.time) for f in container.decode(video=0)]


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def detect(*args, yunet):
    return subprocess.run([sys.executable, "-m", "feredge.cli", "detect", *map(str, args), "--face-model", str(yunet)],
                          capture_output=True, text=True, timeout=300)


def test_report_of_a_variable_frame_rate_video_uses_its_timestamps(tmp_path, yunet):
    video = write_vfr_video(tmp_path / "vfr.mkv", VFR_TIMES)
    truth = container_times(video)
    assert np.allclose(truth, VFR_TIMES, atol=1e-3)
    r = detect(video, "--report", tmp_path / "rep", "--detect-every", "2", yunet=yunet)
    assert r.returncode == 0, r.stderr
    events = rows(tmp_path / "rep" / "events.csv")
    by_frame = {int(e["frame"]): e for e in events}
    assert sorted(by_frame) == list(range(len(VFR_TIMES)))  # one face on every frame, tracked between detections
    for i, t in enumerate(truth):
        assert float(by_frame[i]["time_s"]) == pytest.approx(t, abs=2e-3)
        assert by_frame[i]["detected"] == str(i % 2 == 0)  # --detect-every 2: the tracker carries odd frames
    lines = (tmp_path / "rep" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["time_s"] for line in lines] == [float(e["time_s"]) for e in events]
    first = json.loads(lines[0])
    assert set(LABELS) <= set(first) and abs(sum(first[k] for k in LABELS) - 1) < 1e-2 and first["label"] in LABELS

    people = rows(tmp_path / "rep" / "people.csv")
    assert len(people) == 1
    person = people[0]
    # Seen on every frame: visible from the first to the last timestamp plus the last frame's (median) duration,
    # each gap capped at 1 s (none is over it here).
    gaps = np.diff(VFR_TIMES)
    assert float(person["seconds_visible"]) == pytest.approx(VFR_TIMES[-1] + np.median(gaps), abs=0.01)
    assert float(person["first_s"]) == 0.0 and float(person["last_s"]) == pytest.approx(VFR_TIMES[-1], abs=2e-3)
    shares = [float(person[f"share_{e}"]) for e in LABELS]
    assert sum(shares) == pytest.approx(1, abs=1e-3) and person["top_emotion"] in LABELS
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["people"] == 1 and summary["frames"] == len(VFR_TIMES) and not summary["live"]
    assert summary["face_seconds"] == pytest.approx(float(person["seconds_visible"]), abs=1e-3)
    assert (tmp_path / "rep" / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_a_video_with_no_face_gives_an_empty_report_not_an_error(tmp_path, yunet):
    video = write_vfr_video(tmp_path / "empty.mkv", VFR_TIMES[:5], face=False)
    r = detect(video, "--report", tmp_path / "rep", yunet=yunet)
    assert r.returncode == 0, r.stderr
    assert rows(tmp_path / "rep" / "events.csv") == [] and rows(tmp_path / "rep" / "people.csv") == []
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["people"] == 0 and summary["frames"] == 5 and summary["overall"]["top_emotion"] is None
    assert (tmp_path / "rep" / "timeline.png").exists()


def test_a_truncated_video_keeps_what_was_read_complete(tmp_path, yunet):
    full = make_video(tmp_path / "full.mp4", faces=1, frames=60)
    # An .avi keeps its frames in order without an index at the end, so half a file decodes up to the cut.
    avi = tmp_path / "full.avi"
    cap, writer = cv2.VideoCapture(str(full)), None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        writer = writer or cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 25, frame.shape[1::-1])
        writer.write(frame)
    writer.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])
    r = detect(cut, "--report", tmp_path / "rep", yunet=yunet)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    events = rows(tmp_path / "rep" / "events.csv")
    assert 10 < len(events) < 60
    for line in (tmp_path / "rep" / "events.jsonl").read_text().splitlines():
        json.loads(line)  # every line complete
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["frames"] == len(events)


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100], ids=["zero-length", "garbage"])
def test_an_unreadable_video_is_one_line(tmp_path, yunet, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    r = detect(bad, "--report", tmp_path / "rep", yunet=yunet)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("feredge: error")]
    assert len(errors) == 1 and "bad.mp4" in errors[0] and "Traceback" not in r.stderr


class ScriptedCamera:
    """A camera of the sample face that, at frame `check_at`, records what the report folder holds."""

    def __init__(self, frames, check_at, report_dir, seen):
        self.frames, self.i, self.check_at, self.dir, self.seen = frames, 0, check_at, report_dir, seen
        self.image = np.full((480, 640, 3), 120, np.uint8)
        crop = sample_face(150)
        self.image[150 : 150 + crop.shape[0], 240 : 240 + crop.shape[1]] = crop

    def read(self):
        if self.i == self.check_at:
            self.seen["summary"] = json.loads((self.dir / "summary.json").read_text())
        self.i += 1
        return (self.i <= self.frames), self.image.copy()

    def get(self, prop):
        return 0

    def release(self):
        pass


def test_a_camera_report_has_wall_clock_rows_and_a_summary_rewritten_while_it_runs(tmp_path, detector):
    import time

    from feredge.edge.loop import LoopOptions, VideoLoop

    seen, rep = {}, tmp_path / "rep"

    def slow_camera(source, kind, timeout_s):
        cam = ScriptedCamera(40, 35, rep, seen)
        read = cam.read

        def paced():
            time.sleep(0.01)
            return read()

        cam.read = paced
        return cam

    opts = LoopOptions(report_dir=str(rep), summary_every_s=0.1)
    VideoLoop(detector, "0", opts, open_source=slow_camera).run()
    assert seen["summary"]["live"] and seen["summary"]["people"] == 1  # written before the run ended
    assert 0 < seen["summary"]["frames"] < 40
    events = rows(rep / "events.csv")
    assert len(events) == 40
    times = [float(e["time_s"]) for e in events]
    assert times == sorted(times) and times[-1] > 0.3  # seconds since start
    walls = [datetime.fromisoformat(e["wall_time"]) for e in events]
    assert walls[0].tzinfo is not None and (walls[-1] - walls[0]).total_seconds() == pytest.approx(times[-1] - times[0], abs=0.05)


def test_blur_faces_leaves_no_detail_in_saved_images(tmp_path, yunet):
    from conftest import SAMPLE

    r = detect(SAMPLE, "--out", tmp_path / "plain", yunet=yunet)
    r2 = detect(SAMPLE, "--out", tmp_path / "blurred", "--blur-faces", yunet=yunet)
    assert r.returncode == 0 and r2.returncode == 0
    x, y, w, h = json.loads((tmp_path / "plain" / f"{SAMPLE.stem}.json").read_text())["faces"][0]["box"]

    def detail(folder):
        image = cv2.imread(str(folder / f"{SAMPLE.stem}_annotated.jpg"), cv2.IMREAD_GRAYSCALE)
        inner = image[y + h // 4 : y + 3 * h // 4, x + w // 4 : x + 3 * w // 4]  # inside the box, away from the overlay
        return cv2.Laplacian(inner, cv2.CV_64F).var()

    assert detail(tmp_path / "blurred") < detail(tmp_path / "plain") / 20


def test_progress_bar_on_request_and_a_one_line_summary_off_a_terminal(tmp_path, detector, yunet, capsys):
    from feredge.edge.loop import LoopOptions, VideoLoop

    video = make_video(tmp_path / "clip.mp4", frames=20)
    VideoLoop(detector, str(video), LoopOptions(progress=True)).run()
    assert "/20 [" in capsys.readouterr().err  # tqdm's bar, with the frame count known
    r = detect(video, yunet=yunet)
    assert r.returncode == 0 and "/20 [" not in r.stderr  # stdout is a pipe: no bar...
    assert len(r.stdout.strip().splitlines()) == 1 and json.loads(r.stdout)["frames_in"] == 20  # ...one summary line


def test_the_report_cost_benchmark_runs_and_writes_its_table(tmp_path, yunet):
    r = subprocess.run([sys.executable, "-m", "feredge.benchmarks.report_cost", "--face-model", str(yunet),
                        "--frames", "20", "--rounds", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "report_cost.md").read_text()
    assert "| without --report |" in text and "| with --report |" in text and "of the loop's speed" in text
