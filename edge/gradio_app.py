"""Optional Gradio front end (`pip install 'feredge[ui]'`, then `feredge ui`).

Upload a photo or stream the webcam; see the annotated image and the probability bars of the
largest face. Binds to 127.0.0.1 unless told otherwise. Uploads are checked before decoding (empty,
not an image, too many pixels: a clear message, no memory blow-up) and requests wait in a bounded
queue.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.detector import EmotionDetector
from feredge.edge.overlay import draw_faces

# Gradio and Pillow (the `ui` extra) are imported where the page is built.

MAX_UPLOAD_PIXELS = 40_000_000  # 40 megapixels: a decoded 30,000 x 30,000 "decompression bomb" would need 2.7 GB
MAX_UPLOAD_SIZE = "25mb"        # refused by Gradio before it reaches us
CONCURRENT_REQUESTS, QUEUE_SIZE = 2, 32  # 2 cores; more waiting clients get Gradio's "queue full"


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


def build_app(detector):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from an edge device
    import gradio as gr

    def analyse_bgr(bgr):
        faces = detector.predict(bgr)
        annotated = draw_faces(bgr.copy(), faces)[:, :, ::-1]
        if not faces:
            return annotated, {}, "no face found"
        summary = ", ".join(f"face {i + 1}: {f.label}" for i, f in enumerate(faces))
        return annotated, faces[0].probabilities, summary

    def analyse_upload(path):
        if path is None:
            return None, {}, "no image"
        try:
            return analyse_bgr(load_upload(path))
        except UploadError as e:
            return None, {}, f"refused: {e}"

    def analyse_frame(rgb):
        if rgb is None:
            return None, {}, "no image"
        return analyse_bgr(np.ascontiguousarray(rgb[:, :, ::-1]))

    with gr.Blocks(title="feredge: facial emotion") as app:
        gr.Markdown("## Facial emotion detection\nUpload a photo or stream the webcam. Runs on the CPU; no TensorFlow.")
        with gr.Tab("photo"):
            with gr.Row():
                # A file, not gr.Image: Gradio would decode an image upload before we can check it.
                inp = gr.File(label="photo", file_types=["image"], type="filepath", elem_id="input-image")
                out = gr.Image(label="annotated", elem_id="annotated")
            with gr.Row():
                bars = gr.Label(label="emotions (largest face)", num_top_classes=7, elem_id="emotions")
                text = gr.Textbox(label="faces", elem_id="summary")
            inp.change(analyse_upload, inp, [out, bars, text])
        with gr.Tab("live webcam"):
            with gr.Row():
                cam = gr.Image(label="webcam", sources=["webcam"], streaming=True, type="numpy")
                cam_out = gr.Image(label="annotated")
            with gr.Row():
                cam_bars = gr.Label(label="emotions (largest face)", num_top_classes=7)
                cam_text = gr.Textbox(label="faces")
            cam.stream(analyse_frame, cam, [cam_out, cam_bars, cam_text], stream_every=0.2)
    app.queue(default_concurrency_limit=CONCURRENT_REQUESTS, max_size=QUEUE_SIZE)
    return app


def launch(model=None, face_model=None, host: str = "127.0.0.1", port: int = 7860, **choices):
    """choices: EmotionDetector's runtime choices (tta, prior, min_confidence)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("feredge: error: the UI needs Gradio: pip install 'feredge[ui]'") from None

    detector = EmotionDetector(model, face_model=face_model, **choices)
    build_app(detector).launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD_SIZE)
