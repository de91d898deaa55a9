"""`feredge` command line: detect | train | evaluate | calibrate | export | bench | ui.

The edge runtime (the default install) is imported here; training, export, benchmarks and the Gradio
page belong to optional extras and pull Keras, TensorFlow or Gradio, so each subcommand imports its
own inside its function, and `feredge detect` never loads them.
Known bad input ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from feredge.edge.classifier import ModelError
from feredge.edge.detector import DEFAULT_SETTINGS, PI_PRESET, EmotionDetector, ImageError
from feredge.edge.faces import FaceDetectorError
from feredge.edge.loop import LoopOptions, SourceError, VideoLoop, run_images, source_kind
from feredge.edge.mqtt import QUEUE_SIZE, MqttError, MqttPublisher
from feredge.edge.service import DEFAULT_DETECT, systemd_unit

EXIT_ERROR, EXIT_GATE = 2, 3


def _detect(args):
    for key, default in DEFAULT_SETTINGS.items():  # given on the command line > --pi > default
        if getattr(args, key) is None:
            setattr(args, key, PI_PRESET[key] if args.pi else default)
    detector = EmotionDetector(args.model, fmt=args.format, face_model=args.face_model, threads=args.threads,
                               min_face=args.min_face, detect_width=args.detect_width, retry_zoom=args.retry_zoom,
                               allow_download=not args.no_download, **runtime_choices(args))
    print(f"model: {detector.classifier.path} ({detector.classifier.format or 'file'}), faces: {detector.faces.kind}",
          file=sys.stderr)
    kind = source_kind(args.source)
    if kind in ("image", "folder"):
        out = args.out or "detections"
        results = run_images(detector, args.source, out, blur=args.blur_faces)
        print(f"annotated image(s) and JSON written to {out}/", file=sys.stderr)
        return 0 if any(r["faces"] for r in results) else 1
    opts = LoopOptions(show=args.show, kiosk=args.kiosk, video_out=args.video_out, events=args.events,
                       detect_every=args.detect_every, smooth=args.smooth, max_frames=args.max_frames,
                       timeout_s=args.timeout, reconnect=args.reconnect, max_reconnects=args.max_reconnects,
                       report_dir=args.report, summary_every_s=args.summary_every, blur_faces=args.blur_faces,
                       mqtt=MqttPublisher(args.mqtt, args.mqtt_user, args.mqtt_password, args.mqtt_tls, args.mqtt_ca,
                                          args.mqtt_queue) if args.mqtt else None)
    summary = VideoLoop(detector, args.source, opts).run()
    print(json.dumps(summary))
    return 0


def runtime_choices(args) -> dict:
    return {"tta": args.tta, "prior": args.prior, "min_confidence": args.min_confidence}


def add_runtime_choices(parser):
    """The classifier's runtime choices, shared by detect and ui (defaults: docs/ferplus.md)."""
    parser.add_argument("--tta", action="store_true",
                        help="average each face with its mirror image (twice the classifier's time)")
    parser.add_argument("--prior", choices=("training", "balanced"), default="training",
                        help="training: emotions as common as in the training data (default); balanced: every "
                             "emotion equally likely, e.g. posed or acted footage")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help="label faces whose top probability is under this 'uncertain' (default 0: never)")


def _train(args):
    from feredge.train.train import load_config, parse_overrides, train

    overrides = parse_overrides(args.set)
    for key in ("epochs", "data", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    cfg = load_config(args.config, overrides)
    metrics = train(cfg, Path(args.run_dir))
    print(json.dumps({s: {k: metrics[s][k] for k in ("accuracy", "macro_f1")} for s in ("val", "test") if s in metrics}))
    return 0


def default_eval_dir(paths) -> Path:
    """Where `feredge evaluate` writes without --out: a training run's .keras into its run folder's eval/;
    anything else (a shipped model's name or folder, an exported file, an ensemble of several) into
    eval/<name> under the current folder, so that evaluating a shipped model never writes into models/."""
    if len(paths) == 1 and paths[0].endswith(".keras"):
        return Path(paths[0]).parent / "eval"
    return Path("eval") / "+".join(Path(p.rstrip("/")).stem for p in paths)


def _evaluate(args):
    from feredge.train.data import default_data_path, load_fer2013
    from feredge.train.evaluate import evaluate_and_report, model_paths

    data = load_fer2013(args.data or default_data_path())
    splits = {"test": ("test",), "val": ("val",), "both": ("val", "test")}[args.split]
    paths = model_paths(args.model)
    out = args.out or default_eval_dir(paths)
    metrics = evaluate_and_report(args.model, data, out, splits=splits, tta=args.tta)
    keys = ("n", "accuracy", "macro_f1", "balanced_accuracy", "ece")
    summary = {s: {k: metrics[s][k] for k in keys} for s in splits}
    for s in splits:  # FER+ majority, where the votes file is there
        if f"{s}_ferplus" in metrics:
            summary[f"{s}_ferplus"] = {k: metrics[f"{s}_ferplus"][k] for k in (*keys, "left_out", "vote_cross_entropy")}
    summary.update({k: v for k, v in metrics.items() if k.endswith("flip_tta")})
    print(json.dumps(summary))
    return 0


def _calibrate(args):
    from feredge.train.calibrate import calibrate

    data = None
    if args.data:
        from feredge.train.data import load_fer2013

        data = load_fer2013(args.data)
    summary = calibrate(Path(args.run_dir), args.min_recall, data, args.label_sets)
    metrics = summary.pop("metrics")
    summary["privatetest"] = {k: round(metrics["test"][k], 4) for k in ("accuracy", "macro_f1")}
    print(json.dumps(summary, indent=2))
    return 0


def _export(args):
    from feredge.export.export import Gate, export_model

    data = None
    if args.data:
        from feredge.train.data import load_fer2013

        data = load_fer2013(args.data)
    gate = Gate(args.max_drop_float, args.min_agreement_float, args.max_drop_int8, args.min_agreement_int8)
    manifest = export_model(args.source, args.out, formats=args.formats, data=data, quick=args.quick,
                            calib_n=args.calib, gate=gate, outlier_factor=args.outlier_factor)
    ref = manifest["keras_reference"]
    print(f"{'format':16} {'acc %':>7} {'drop pt':>8} {'agree %':>8} {'macro-F1':>8} {'KB':>7}")
    print(f"{'keras':16} {100 * ref['accuracy']:7.2f} {'':>8} {'':>8} {ref['macro_f1']:8.4f}")
    for fmt, v in manifest["formats"].items():
        print(f"{fmt:16} {100 * v['accuracy']:7.2f} {v['accuracy_drop_pt']:8.2f} {v['agreement_pct']:8.2f} "
              f"{v['macro_f1']:8.4f} {v['bytes'] / 1024:7.0f}")
    return 0


def _ensemble(args):
    from feredge.export.ensemble import main as ensemble_main

    return ensemble_main(args)


def _rescore(args):
    from feredge.export.export import rescore_manifest

    m = rescore_manifest(args.model_dir)
    print(json.dumps({fmt: {"accuracy": round(e["accuracy"], 4), "ferplus_accuracy": round(e["ferplus"]["accuracy"], 4)}
                      for fmt, e in m["formats"].items() if "ferplus" in e}))
    return 0


def _requantize(args):
    from feredge.export.export import requantize_onnx

    e = requantize_onnx(args.model_dir)["formats"]["onnx_int8"]
    print(f"onnx_int8: accuracy {100 * e['accuracy']:.2f} % (drop {e['accuracy_drop_pt']:.2f} pt), "
          f"agreement {e['agreement_pct']:.2f} %, gate passed")
    return 0


def _bench(args):
    from feredge.benchmarks.bench import main as bench_main

    return bench_main(args)


def _ui(args):
    from feredge.edge.gradio_app import launch

    launch(args.model, face_model=args.face_model, host=args.host, port=args.port, **runtime_choices(args))
    return 0


def _systemd_unit(args):
    detect_args = [a for a in args.detect_args if a != "--"] or None
    print(systemd_unit(detect_args, user=args.user, face_model=args.face_model), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="feredge", description="Facial-emotion detection for Pi-class CPUs.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("detect", help="detect faces and emotions in an image, folder, video, camera or stream")
    d.add_argument("source", help="image file, folder of images, video file, camera index (0) or stream URL")
    d.add_argument("--model", help="a shipped model's name (e.g. custom_cnn), a model folder (with manifest.json) or a .tflite/.onnx file; default: custom_cnn")
    d.add_argument("--format", help="format from the manifest, e.g. tflite_int8 or onnx_int8 (default: best available)")
    d.add_argument("--face-model", help="path to the YuNet face model (or set FEREDGE_FACE_MODEL)")
    d.add_argument("--no-download", action="store_true", help="never download the YuNet file")
    d.add_argument("--threads", type=int, help="inference threads (default: the runtime's)")
    d.add_argument("--min-face", type=int, default=24, help="smallest face side in pixels (default 24)")
    d.add_argument("--detect-width", type=int, help="shrink wider frames to this width for face detection (default 640)")
    d.add_argument("--retry-zoom", type=float, default=2.0,
                   help="where no face is found, look again with the frame enlarged this much (default 2; 1: off)")
    d.add_argument("--out", help="image inputs: folder for annotated images + JSON (default: detections/)")
    d.add_argument("--video-out", help="write the annotated video here (.mp4)")
    d.add_argument("--events", help="append JSON-lines events (time, face id, box, probabilities) here")
    d.add_argument("--report", metavar="DIR", help="videos, cameras, streams: write events.csv/.jsonl, people.csv, "
                                                   "summary.json and timeline.png here")
    d.add_argument("--summary-every", type=float, default=10.0, metavar="S",
                   help="rewrite the report's summary (and the MQTT summary) every S seconds (default 10)")
    d.add_argument("--mqtt", metavar="URL", help="publish events and per-person summaries to mqtt://HOST[:PORT]/TOPIC "
                                                 "(mqtts:// for TLS; pip install \"feredge[mqtt]\")")
    d.add_argument("--mqtt-user", help="MQTT username (or in the URL)")
    d.add_argument("--mqtt-password", help="MQTT password (better: FEREDGE_MQTT_PASSWORD, kept out of the process list)")
    d.add_argument("--mqtt-tls", action="store_true", help="TLS with the system's CAs (mqtts:// implies it)")
    d.add_argument("--mqtt-ca", metavar="FILE", help="TLS with this CA certificate file")
    d.add_argument("--mqtt-queue", type=int, default=QUEUE_SIZE,
                   help=f"messages held while the broker is away; newer ones are dropped when full (default {QUEUE_SIZE})")
    d.add_argument("--blur-faces", action="store_true", help="blur every face in saved images and videos")
    d.add_argument("--show", action="store_true", help="live window (falls back to headless without a display)")
    d.add_argument("--kiosk", action="store_true", help="fullscreen, large labels, reconnect, run until stopped")
    d.add_argument("--detect-every", type=int, help="run face detection every N frames, tracks in between (default 1)")
    d.add_argument("--pi", action="store_true", help="Raspberry Pi 4/5 settings: 4 threads, detect width 320, "
                   "detect every 2nd frame (options given explicitly win)")
    d.add_argument("--smooth", type=float, default=0.4, help="EMA weight of the newest frame (1 = no smoothing)")
    d.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: run to the end)")
    d.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a stream to open or deliver")
    d.add_argument("--reconnect", action="store_true", help="reopen a camera/stream that drops (kiosk implies it)")
    d.add_argument("--max-reconnects", type=int, default=0, help="give up after N reconnects (0: never)")
    add_runtime_choices(d)
    d.set_defaults(func=_detect)

    t = sub.add_parser("train", help="train a model from a config file")
    t.add_argument("--config", required=True, help="TOML config (train/configs/*.toml)")
    t.add_argument("--run-dir", required=True, help="run directory (resumes if it holds a backup)")
    t.add_argument("--data", help="FER-2013 zip, folder or csv (default: $FER2013_ZIP or ../shared)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. augment.rotation=10")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="evaluate a .keras, .tflite or .onnx model (or several, comma-separated: "
                                        "their geometric mean) on FER-2013")
    e.add_argument("model")
    e.add_argument("--data")
    e.add_argument("--split", choices=("test", "val", "both"), default="test", help="test = PrivateTest, val = PublicTest")
    e.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    e.add_argument("--out", help="folder for metrics.json and confusion matrices (default: RUN/eval for a run's "
                                 ".keras, else eval/MODEL under the current folder)")
    e.set_defaults(func=_evaluate)

    c = sub.add_parser("calibrate", help="fit per-class logit offsets on PublicTest (writes RUN_DIR/calibrated.keras)")
    c.add_argument("run_dir", help="training run directory (with best.keras)")
    c.add_argument("--min-recall", type=float, default=0.45, help="recall every class should keep on PublicTest")
    c.add_argument("--label-sets", choices=("fer2013", "both"), default="fer2013",
                   help="fit to FER-2013's labels, or to them and FER+'s majority together (needs the votes)")
    c.add_argument("--data")
    c.set_defaults(func=_calibrate)

    x = sub.add_parser("export", help="export to TFLite/ONNX formats behind the accuracy gate")
    x.add_argument("source", help="training run directory or .keras file")
    x.add_argument("--out", required=True, help="model folder, e.g. models/custom_cnn")
    x.add_argument("--formats", default="all", help="comma list or 'all': tflite_float32, tflite_float16, "
                   "tflite_dynamic, tflite_int8, onnx_float32, onnx_int8")
    x.add_argument("--data")
    x.add_argument("--quick", type=int, default=0, help="gate on a fixed stratified subset of N PrivateTest images")
    x.add_argument("--calib", type=int, default=500, help="training images for int8 calibration (default 500)")
    x.add_argument("--outlier-factor", type=float,
                   help="leave out int8 calibration images whose activations peak above this x the median "
                        "image's (default: export.OUTLIER_FACTOR, 3; inf keeps every image)")
    x.add_argument("--max-drop-float", type=float, default=0.1)
    x.add_argument("--min-agreement-float", type=float, default=99.5)
    x.add_argument("--max-drop-int8", type=float, default=1.0)
    x.add_argument("--min-agreement-int8", type=float, default=97.0)
    x.set_defaults(func=_export)

    n = sub.add_parser("ensemble", help="combine shipped models into a gated ensemble (e.g. models/accurate)")
    n.add_argument("members", nargs="+", help="shipped model names or folders (beside --out)")
    n.add_argument("--out", required=True, help="the ensemble's folder, e.g. models/accurate")
    n.add_argument("--mirror", choices=("auto", "on", "off"), default="auto",
                   help="average in each face's mirror image: auto = where it raises PublicTest accuracy")
    n.add_argument("--formats", default="tflite_int8,onnx_int8")
    n.add_argument("--data")
    n.add_argument("--quick", type=int, default=0, help="score on a fixed stratified subset of N images")
    n.add_argument("--max-drop", type=float, default=0.5, help="points the int8 ensemble may lose to its float members")
    n.add_argument("--calibrate", action="store_true",
                   help="fit per-class offsets on the combined output (PublicTest, both label sets) holding every recall")
    n.add_argument("--min-recall", type=float, default=0.45, help="the recall --calibrate holds for every class")
    n.set_defaults(func=_ensemble)

    r = sub.add_parser("rescore", help="add newer figures (FER+ majority, balanced accuracy, ECE, output prior) to a model "
                                       "folder's manifest, through the edge runtime; files and gate unchanged")
    r.add_argument("model_dir")
    r.set_defaults(func=_rescore)

    q = sub.add_parser("requantize", help="re-make a model folder's onnx_int8 from its float32 ONNX and gate it "
                                          "(for folders whose training run is gone)")
    q.add_argument("model_dir")
    q.set_defaults(func=_requantize)

    b = sub.add_parser("bench", help="accuracy, latency, memory and size per format")
    from feredge.benchmarks.bench import add_arguments

    add_arguments(b)
    b.set_defaults(func=_bench)

    u = sub.add_parser("ui", help="Gradio front end (pip install 'feredge[ui]')")
    u.add_argument("--model", help="a shipped model's name, a model folder or file (default: custom_cnn)")
    u.add_argument("--face-model")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=7860)
    add_runtime_choices(u)
    u.set_defaults(func=_ui)

    s = sub.add_parser("systemd-unit", help="print a systemd unit that runs a kiosk unattended (docs/kiosk.md)")
    s.add_argument("--user", help="the user the kiosk runs as (default: you)")
    s.add_argument("--face-model", help="the YuNet file the service uses (set as FEREDGE_FACE_MODEL)")
    s.add_argument("detect_args", nargs=argparse.REMAINDER,
                   help=f"after --: the detect command's source and options (default: {' '.join(DEFAULT_DETECT)})")
    s.set_defaults(func=_systemd_unit)
    return p


def known_errors() -> tuple:
    errors = [ModelError, ImageError, FaceDetectorError, SourceError, MqttError, FileNotFoundError]
    for mod, names in (("feredge.train.data", ("DataError",)), ("feredge.train.ferplus", ("VotesError",)),
                       ("feredge.export.export", ("ExportError",))):
        if mod in sys.modules:
            errors += [getattr(sys.modules[mod], n) for n in names]
    return tuple(errors)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if type(e).__name__ == "GateError":
            print(f"feredge: export gate FAILED: {e}", file=sys.stderr)
            return EXIT_GATE
        if isinstance(e, known_errors()) or (isinstance(e, ValueError) and args.command == "train"):
            print(f"feredge: error: {e}", file=sys.stderr)
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
