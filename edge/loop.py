"""The capture loop: camera index, video file, RTSP/HTTP stream, image file or folder.

Frames -> faces (detected every N frames, tracked and smoothed in between) -> overlay -> outputs:
a live window, an annotated video, JSON-lines events, or annotated images + JSON for image inputs.
Kiosk mode: fullscreen, large labels, reconnects when the camera drops or a stream stalls, runs until
stopped; without a display it carries on headless and says so once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from feredge.edge.analytics import RunReport
from feredge.edge.detector import ImageError, read_image
from feredge.edge.mqtt import MqttSink
from feredge.edge.overlay import blur_faces, draw_faces, draw_fps, draw_status
from feredge.edge.tracking import FaceTracker

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Video codec per container: WebM needs VP8 (which browsers play); the rest take MPEG-4 Part 2.
VIDEO_CODECS = {".webm": "VP80"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


class SourceError(Exception):
    """A source can't be opened or read; one line naming it."""


@dataclass
class LoopOptions:
    show: bool = False
    kiosk: bool = False
    video_out: str | None = None
    events: str | None = None
    out_dir: str | None = None     # annotated images + JSON (image inputs)
    detect_every: int = 1
    smooth: float = 0.4            # EMA weight of the newest frame; 1 disables smoothing
    max_frames: int = 0            # 0: until the source ends or the user stops
    timeout_s: float = 10.0        # opening or reading a stream
    reconnect: bool = False        # implied by kiosk
    reconnect_delay_s: float = 1.0  # first wait after a drop; doubles per failed attempt...
    max_reconnect_delay_s: float = 30.0  # ...up to this
    max_reconnects: int = 0        # 0: forever (kiosk)
    report_dir: str | None = None  # events.csv/jsonl, people.csv, summary.json, timeline.png (edge/analytics.py)
    summary_every_s: float = 10.0  # how often the report's summary is rewritten
    blur_faces: bool = False       # blur every face in saved images and videos
    progress: bool | None = None   # a progress bar for video files; None: when stdout is a terminal
    mqtt: object | None = None     # an edge.mqtt.MqttPublisher: events and summaries go to its broker


def source_kind(source: str) -> str:
    if source.isdigit():
        return "camera"
    if source.lower().startswith(STREAM_PREFIXES):
        return "stream"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return "video"


def open_capture(source: str, kind: str, timeout_s: float):
    if kind == "camera":
        cap = cv2.VideoCapture(int(source))
        if not cap.isOpened():
            raise SourceError(f"camera {source} is not available (no such device, or in use)")
        return cap
    if kind == "video" and not Path(source).is_file():
        raise SourceError(f"video not found: {source}")
    ms = int(timeout_s * 1000)
    # Bounded open and read times, so a stream that never answers can't hang the loop.
    cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    if not cap.isOpened():
        what = "stream" if kind == "stream" else "video"
        raise SourceError(f"cannot open {what} {source} (no answer within {timeout_s:g} s, or not a video)")
    return cap


def as_bgr(frame):
    """A 3-channel BGR view of a captured frame; None for an empty or malformed one."""

    if not isinstance(frame, np.ndarray) or frame.size == 0 or frame.ndim not in (2, 3) or min(frame.shape[:2]) < 2:
        return None
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame if frame.shape[2] == 3 else None


def fit_to(frame: np.ndarray, size) -> np.ndarray:
    """The frame at the video's (width, height): a camera may change resolution mid-run."""

    return frame if frame.shape[1::-1] == tuple(size) else cv2.resize(frame, tuple(size))


class MediaClock:
    """Each frame's time in seconds: a video's own timestamps (right for variable frame rates), or the
    seconds since the loop started for cameras and streams."""

    def __init__(self, cap, live: bool):
        self.live, self.start = live, time.monotonic()
        fps = cap.get(cv2.CAP_PROP_FPS) or 0
        self.nominal_fps = fps if 1 <= fps <= 1000 else 25.0
        self.last = -1.0

    def seconds(self, cap, index: int) -> float:
        if self.live:
            return time.monotonic() - self.start
        ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        # A backend that gives no timestamps (0 after the first frame, or going backwards): frame index / fps.
        t = ms / 1000 if ms and ms / 1000 > self.last else index / self.nominal_fps
        self.last = t
        return t


def display_available() -> bool:
    """True when OpenCV has a GUI backend and there is a screen to show it on."""

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("feredge-probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("feredge-probe")
        return True
    except cv2.error:  # opencv-python-headless: no GUI compiled in
        return False


class _Stopper:
    """SIGINT/SIGTERM end the loop cleanly (outputs are flushed and closed)."""

    def __init__(self):
        self.stop = False

    def __enter__(self):
        # Signals reach the main thread only; elsewhere (a Gradio worker) the caller ends the run.
        main = threading.current_thread() is threading.main_thread()
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        return self

    def _handle(self, *_):
        self.stop = True

    def wait(self, seconds: float):
        """Sleep, but wake within 0.1 s of a stop request."""
        end = time.monotonic() + seconds
        while not self.stop and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def run_images(detector, source: str, out_dir: str | None, print_fn=print, blur: bool = False) -> list[dict]:
    """Image file or folder: print each image's faces, write annotated images + JSON to out_dir."""

    path = Path(source)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise SourceError(f"no images in folder {path}")
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for f in files:
        try:
            image = read_image(f)
        except ImageError as e:
            if len(files) == 1:
                raise
            print_fn(f"{f.name}: skipped: {e}")
            continue
        faces = detector.predict(image)
        record = {"image": str(f), "faces": [face.to_dict() for face in faces]}
        results.append(record)
        if not faces:
            print_fn(f"{f.name}: no face found (try a larger image or a smaller --min-face)")
        for i, face in enumerate(faces):
            top = sorted(face.probabilities.items(), key=lambda kv: -kv[1])[:3]
            print_fn(f"{f.name}: face {i + 1} at {face.box}: {face.label} "
                     f"({', '.join(f'{k} {v:.2f}' for k, v in top)})")
        if out:
            annotated = draw_faces(blur_faces(image.copy(), faces) if blur else image.copy(), faces)
            cv2.imwrite(str(out / f"{f.stem}_annotated.jpg"), annotated)
            (out / f"{f.stem}.json").write_text(json.dumps(record, indent=2))
    return results


class VideoLoop:
    """Runs detector over a video source. Returns a summary dict (frames in/out, faces, fps)."""

    def __init__(self, detector, source: str, options: LoopOptions, open_source=open_capture):
        """open_source(source, kind, timeout_s) -> a cv2.VideoCapture-like object (tests and the soak
        pass scripted cameras)."""
        self.detector, self.source, self.opt, self.open_source = detector, source, options, open_source
        self.kind = source_kind(source)
        self.tracker = FaceTracker(alpha=options.smooth)
        self.reconnect = options.reconnect or options.kiosk
        self.window = None

    def run(self) -> dict:
        opt = self.opt
        cap = self.open_source(self.source, self.kind, opt.timeout_s)
        if opt.show or opt.kiosk:
            if display_available():
                self.window = "feredge"
                cv2.namedWindow(self.window, cv2.WINDOW_NORMAL)
                if opt.kiosk:
                    cv2.setWindowProperty(self.window, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
            else:
                log.warning("no display (or OpenCV without GUI): running headless; events and video files are still written")
        if opt.video_out and opt.kiosk and Path(opt.video_out).suffix.lower() == ".mp4":
            log.warning("an .mp4 video is unreadable if the process is killed before it ends; use .mkv for kiosk recordings")
        # Line-buffered: every event line reaches the file as it is written, so a kill loses at most the last.
        writer, writer_size, events = None, None, open(opt.events, "a", buffering=1) if opt.events else None
        self.events = events
        live = self.kind != "video"
        sinks = []  # per-frame analytics: the report's files, MQTT
        if opt.report_dir:
            sinks.append(RunReport(opt.report_dir, live, self.source, opt.summary_every_s))
        if opt.mqtt:
            sinks.append(MqttSink(opt.mqtt, self.source, live, opt.summary_every_s))
        results = {}
        frames_in = frames_out = faces_total = reconnects = bad_frames = 0
        times = deque(maxlen=30)  # recent frame times: FPS over a sliding window, constant memory
        fps, status, t_start = 0.0, "", time.time()
        clock = MediaClock(cap, live)
        bar = self._progress_bar(cap)
        try:
            with _Stopper() as stopper:
                while not stopper.stop and not (opt.max_frames and frames_in >= opt.max_frames):
                    ok, frame = cap.read()
                    if not ok or frame is None:
                        if self.kind == "video" or not self.reconnect:
                            if self.kind in ("camera", "stream") and frames_in == 0:
                                raise SourceError(f"{self.kind} {self.source} gave no frames")
                            if self.kind in ("camera", "stream"):
                                log.warning("%s %s stopped delivering frames after %d frames; ending", self.kind, self.source, frames_in)
                            break
                        cap.release()
                        self._event("source_lost", frames_in=frames_in)
                        cap, reconnects = self._reconnect(stopper, reconnects)
                        if cap is None:
                            break
                        status = ""
                        continue
                    frames_in += 1
                    media_s = clock.seconds(cap, frames_in - 1)
                    if bar is not None:
                        bar.update(1)
                    frame = as_bgr(frame)
                    if frame is None:  # empty or malformed buffer from the driver: skip it, count it
                        bad_frames += 1
                        continue
                    detected = (frames_in - 1) % max(1, opt.detect_every) == 0
                    faces = self._faces(frame, frames_in - 1)
                    faces_total += len(faces)
                    now = time.time()
                    times.append(now)
                    if len(times) > 1:
                        fps = (len(times) - 1) / (times[-1] - times[0])
                    if events:
                        for face in faces:
                            events.write(json.dumps({"t": round(now, 3), "time_s": round(media_s, 4), "event": "face",
                                                    "frame": frames_in - 1, **face.to_dict()}) + "\n")
                    for sink in sinks:
                        sink.add(frames_in - 1, media_s, faces, detected, wall=now if live else None)
                    if opt.blur_faces:
                        blur_faces(frame, faces)
                    annotated = draw_faces(frame, faces, scale=1.8 if opt.kiosk else 1.0)
                    draw_fps(annotated, fps, scale=1.5 if opt.kiosk else 1.0)
                    if status:
                        draw_status(annotated, status)
                    if opt.video_out:
                        if writer is None:  # sized by the first frame; later frames of another size are scaled
                            writer, writer_size = self._open_writer(opt.video_out, annotated, cap), annotated.shape[1::-1]
                        writer.write(fit_to(annotated, writer_size))
                    frames_out += 1
                    if self.window:
                        cv2.imshow(self.window, annotated)
                        if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                            break
        finally:
            wall = time.time() - t_start  # the loop's own time, before the outputs' closing waits
            if bar is not None:
                bar.close()
            for sink in sinks:
                results.update(sink.close())
            if cap is not None:  # None when reconnecting gave up
                cap.release()
            if writer:
                writer.release()
            if events:
                events.close()
            if self.window:
                cv2.destroyAllWindows()
        return {"frames_in": frames_in, "frames_out": frames_out, "faces": faces_total, "reconnects": reconnects,
                "bad_frames": bad_frames, "wall_s": round(wall, 2), "fps": round(frames_out / wall, 2) if wall > 0 else 0.0,
                **results}

    def _progress_bar(self, cap):
        """tqdm over a video file's frames on a terminal; None for live sources or without a terminal."""
        show = self.opt.progress if self.opt.progress is not None else sys.stdout.isatty()
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self.kind == "video" else 0
        if not show or total <= 0:
            return None
        return tqdm(total=total, unit="frame", desc=Path(self.source).name, leave=False)

    def _faces(self, frame: np.ndarray, index: int):
        det = self.detector
        if index % max(1, self.opt.detect_every) == 0:
            found = det.detect_faces(frame)
            probs = det.classify(frame, found)
            tracks = self.tracker.update([f.box for f in found], probs, [f.score for f in found])
        else:
            tracks = self.tracker.predict_only()
        return [det.make_face(t.box, t.probs, t.score, t.track_id) for t in tracks]

    def _reconnect(self, stopper, reconnects: int):
        """Reopen the source until it answers, the user stops, or max_reconnects is spent; the wait
        doubles after each failed attempt (capped), and every attempt is an event."""
        delay = self.opt.reconnect_delay_s
        while not stopper.stop:
            if self.opt.max_reconnects and reconnects >= self.opt.max_reconnects:
                log.warning("%s %s: gave up after %d reconnect attempts", self.kind, self.source, reconnects)
                self._event("gave_up", attempts=reconnects)
                return None, reconnects
            reconnects += 1
            log.warning("%s %s lost; reconnecting (attempt %d) in %.1f s", self.kind, self.source, reconnects, delay)
            stopper.wait(delay)
            if stopper.stop:
                break
            try:
                cap = self.open_source(self.source, self.kind, self.opt.timeout_s)
            except SourceError as e:
                log.warning("%s", e)
                self._event("reconnect", attempt=reconnects, delay_s=round(delay, 3), ok=False, error=str(e))
                delay = min(delay * 2, self.opt.max_reconnect_delay_s)
                continue
            self._event("reconnect", attempt=reconnects, delay_s=round(delay, 3), ok=True)
            return cap, reconnects
        return None, reconnects

    def _event(self, kind: str, **fields):
        if self.events:
            self.events.write(json.dumps({"t": round(time.time(), 3), "event": kind, "source": self.source, **fields}) + "\n")

    @staticmethod
    def _open_writer(path: str, frame: np.ndarray, cap):
        fps = cap.get(cv2.CAP_PROP_FPS) or 0
        fps = fps if 1 <= fps <= 120 else 25.0
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        codec = VIDEO_CODECS.get(Path(path).suffix.lower(), "mp4v")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, (frame.shape[1], frame.shape[0]))
        if not writer.isOpened():
            raise SourceError(f"cannot write video {path}")
        return writer
