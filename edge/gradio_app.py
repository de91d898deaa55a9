"""Optional Gradio front end (`pip install 'feredge[ui]'`, then `feredge ui`).

Upload an image or stream the webcam; see the annotated image and the probability bars of the
largest face. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import numpy as np

from feredge.edge.overlay import draw_faces


def build_app(detector):
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from an edge device
    import gradio as gr

    def analyse(rgb):
        if rgb is None:
            return None, {}, "no image"
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        faces = detector.predict(bgr)
        annotated = draw_faces(bgr.copy(), faces)[:, :, ::-1]
        if not faces:
            return annotated, {}, "no face found"
        summary = ", ".join(f"face {i + 1}: {f.label}" for i, f in enumerate(faces))
        return annotated, faces[0].probabilities, summary

    with gr.Blocks(title="feredge: facial emotion") as app:
        gr.Markdown("## Facial emotion detection\nUpload a photo or stream the webcam. Runs on the CPU; no TensorFlow.")
        with gr.Tab("photo"):
            with gr.Row():
                inp = gr.Image(label="input", sources=["upload", "webcam", "clipboard"], type="numpy", elem_id="input-image")
                out = gr.Image(label="annotated", elem_id="annotated")
            with gr.Row():
                bars = gr.Label(label="emotions (largest face)", num_top_classes=7, elem_id="emotions")
                text = gr.Textbox(label="faces", elem_id="summary")
            inp.change(analyse, inp, [out, bars, text])
        with gr.Tab("live webcam"):
            with gr.Row():
                cam = gr.Image(label="webcam", sources=["webcam"], streaming=True, type="numpy")
                cam_out = gr.Image(label="annotated")
            with gr.Row():
                cam_bars = gr.Label(label="emotions (largest face)", num_top_classes=7)
                cam_text = gr.Textbox(label="faces")
            cam.stream(analyse, cam, [cam_out, cam_bars, cam_text], stream_every=0.2)
    return app


def launch(model=None, face_model=None, host: str = "127.0.0.1", port: int = 7860):
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("feredge: error: the UI needs Gradio: pip install 'feredge[ui]'") from None
    from feredge.edge.detector import EmotionDetector

    detector = EmotionDetector(model, face_model=face_model)
    build_app(detector).launch(server_name=host, server_port=port)
