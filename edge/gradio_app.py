"""Optional Gradio front end (`pip install 'feredge[ui]'`, then `feredge ui`).

Pick a model (the shipped ones, or the one `feredge ui --model` names), upload a photo or stream the
webcam; see the annotated image and the probability bars of the largest face. Upload a video clip; get the annotated video, the timeline of each person's emotions,
the people table and the per-face CSV (the same report as `feredge detect CLIP --report DIR`). Binds to 127.0.0.1 unless told otherwise. Uploads are checked before decoding (empty,
not an image, too many pixels: a clear message, no memory blow-up) and requests wait in a bounded
queue.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.classifier import ModelError, shipped_models
from feredge.edge.detector import DEFAULT_MODEL, EmotionDetector
from feredge.edge.loop import LoopOptions, SourceError, VideoLoop
from feredge.edge.overlay import draw_faces

# Gradio and Pillow (the `ui` extra) are imported where the page is built.

MAX_UPLOAD_PIXELS = 40_000_000  # 40 megapixels: a decoded 30,000 x 30,000 "decompression bomb" would need 2.7 GB
MAX_UPLOAD_SIZE = "25mb"        # refused by Gradio before it reaches us
CONCURRENT_REQUESTS, QUEUE_SIZE = 2, 32  # 2 cores; more waiting clients get Gradio's "queue full"
MAX_VIDEO_FRAMES = 9_000  # 5 minutes at 30 fps: a clip's analysis stops there (said in the summary)


class UploadError(Exception):
    """An upload we refuse; the message is shown to the user."""


def load_upload(path) -> np.ndarray:
    """The uploaded file as a BGR image, its header checked before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError  # Gradio depends on Pillow

    path = Path(path)
    if path.stat().st_size == 0:
        raise UploadError("the file is empty (0 bytes)")
    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except Image.DecompressionBombError:
        raise UploadError(f"the image has too many pixels (limit {MAX_UPLOAD_PIXELS // 1_000_000} megapixels)") from None
    except (UnidentifiedImageError, OSError):
        raise UploadError("not an image: upload a JPEG, PNG, BMP or WebP photo") from None
    if width * height > MAX_UPLOAD_PIXELS:
        raise UploadError(f"the image is {width} x {height} pixels, too large "
                          f"(limit {MAX_UPLOAD_PIXELS // 1_000_000} megapixels)")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UploadError("the image could not be decoded (corrupt or unsupported format)")
    return image


def analyse_video_file(detector, path, work_dir) -> dict:
    """Run the capture loop over an uploaded clip into work_dir: annotated.webm (VP8, which browsers play)
    and report/ (events.csv, people.csv, summary.json, timeline.png). Raises UploadError for what it refuses."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UploadError("the file is empty (0 bytes)")
    work = Path(work_dir)
    opts = LoopOptions(video_out=str(work / "annotated.webm"), report_dir=str(work / "report"),
                       max_frames=MAX_VIDEO_FRAMES, progress=False)
    try:
        run = VideoLoop(detector, str(path), opts).run()
    except SourceError:
        raise UploadError("not a video this runtime can read: upload an MP4, MKV, AVI or WebM clip") from None
    if run["frames_in"] == 0:
        raise UploadError("the video has no readable frames")
    with open(work / "report" / "people.csv", newline="") as f:
        people = list(csv.reader(f))
    return {"run": run, "video": work / "annotated.webm", "timeline": work / "report" / "timeline.png",
            "people": people, "csv": work / "report" / "events.csv"}


def video_summary(result) -> str:
    s = json.loads((Path(result["csv"]).parent / "summary.json").read_text())
    cut = " (stopped at the frame limit)" if result["run"]["frames_in"] >= MAX_VIDEO_FRAMES else ""
    people = f"{s['people']} {'person' if s['people'] == 1 else 'people'}"
    top = f"; top emotion overall: {s['overall']['top_emotion']}" if s["overall"]["top_emotion"] else "; no face found"
    return f"{people}, {s['frames']} frames, {s['duration_s']:.1f} s{cut}{top}"


class Detectors:
    """The detectors the page offers, by model name: the first one given, the others built on first use
    with the same settings (make_detector(name)) and kept; a model that fails to load is said in one line."""

    def __init__(self, name: str, detector, make_detector=None):
        self.loaded = {name: detector}
        self.make_detector = make_detector
        self.names = [name, *(m for m in shipped_models() if m != name)] if make_detector else [name]

    def get(self, name):
        if name not in self.loaded:
            if name not in self.names:
                raise UploadError(f"unknown model '{name}'")
            try:
                self.loaded[name] = self.make_detector(name)
            except ModelError as e:
                raise UploadError(f"model {name} can't be used: {e}") from None
        return self.loaded[name]


def build_app(detector, model_name: str = DEFAULT_MODEL, make_detector=None):
    """The page around detector (shown as model_name); make_detector(name) -> EmotionDetector lets the
    page offer every shipped model too."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from an edge device
    import gradio as gr

    detectors = Detectors(model_name, detector, make_detector)

    def analyse_bgr(bgr, model):
        faces = detectors.get(model).predict(bgr)
        annotated = draw_faces(bgr.copy(), faces)[:, :, ::-1]
        if not faces:
            return annotated, {}, "no face found"
        summary = ", ".join(f"face {i + 1}: {f.label}" for i, f in enumerate(faces))
        return annotated, faces[0].probabilities, summary

    def analyse_upload(path, model):
        if path is None:
            return None, {}, "no image"
        try:
            return analyse_bgr(load_upload(path), model)
        except UploadError as e:
            return None, {}, f"refused: {e}"

    def analyse_frame(rgb, model):
        if rgb is None:
            return None, {}, "no image"
        try:
            return analyse_bgr(np.ascontiguousarray(rgb[:, :, ::-1]), model)
        except UploadError as e:
            return None, {}, f"refused: {e}"

    def analyse_video(path, model):
        if path is None:
            return None, None, None, None, "no video"
        work = tempfile.mkdtemp(prefix="feredge-video-")  # Gradio serves the results from here
        try:
            result = analyse_video_file(detectors.get(model), path, work)
        except UploadError as e:
            return None, None, None, None, f"refused: {e}"
        table = gr.Dataframe(value=result["people"][1:], headers=result["people"][0]) if result["people"] else None
        return str(result["video"]), str(result["timeline"]), table, str(result["csv"]), video_summary(result)

    with gr.Blocks(title="feredge: facial emotion") as app:
        gr.Markdown("## Facial emotion detection\nUpload a photo or a video, or stream the webcam. Runs on the CPU; "
                    "no TensorFlow.")
        model = gr.Dropdown(choices=detectors.names, value=model_name, label="model", elem_id="model",
                            interactive=len(detectors.names) > 1)
        with gr.Tab("photo"):
            with gr.Row():
                # A file, not gr.Image: Gradio would decode an image upload before we can check it.
                inp = gr.File(label="photo", file_types=["image"], type="filepath", elem_id="input-image")
                out = gr.Image(label="annotated", elem_id="annotated")
            with gr.Row():
                bars = gr.Label(label="emotions (largest face)", num_top_classes=7, elem_id="emotions")
                text = gr.Textbox(label="faces", elem_id="summary")
            inp.change(analyse_upload, [inp, model], [out, bars, text])
        with gr.Tab("live webcam"):
            with gr.Row():
                cam = gr.Image(label="webcam", sources=["webcam"], streaming=True, type="numpy")
                cam_out = gr.Image(label="annotated")
            with gr.Row():
                cam_bars = gr.Label(label="emotions (largest face)", num_top_classes=7)
                cam_text = gr.Textbox(label="faces")
            cam.stream(analyse_frame, [cam, model], [cam_out, cam_bars, cam_text], stream_every=0.2)
        with gr.Tab("video"):
            with gr.Row():
                vid_in = gr.File(label="video clip", file_types=["video"], type="filepath", elem_id="input-video")
                vid_out = gr.Video(label="annotated", elem_id="annotated-video")
            vid_text = gr.Textbox(label="summary", elem_id="video-summary")
            timeline = gr.Image(label="emotions over time, per person", elem_id="timeline")
            people = gr.Dataframe(label="people", elem_id="people")
            events_csv = gr.File(label="events.csv (one row per face per frame)", elem_id="events-csv")
            # One clip at a time: a clip keeps both cores busy for a while.
            vid_in.change(analyse_video, [vid_in, model], [vid_out, timeline, people, events_csv, vid_text], concurrency_limit=1)
    app.queue(default_concurrency_limit=CONCURRENT_REQUESTS, max_size=QUEUE_SIZE)
    return app


def launch(model=None, face_model=None, host: str = "127.0.0.1", port: int = 7860, **choices):
    """choices: EmotionDetector's runtime choices (tta, prior, min_confidence)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("feredge: error: the UI needs Gradio: pip install 'feredge[ui]'") from None

    def make_detector(name):
        return EmotionDetector(name, face_model=face_model, **choices)

    build_app(make_detector(model or DEFAULT_MODEL), str(model or DEFAULT_MODEL), make_detector).launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD_SIZE)
