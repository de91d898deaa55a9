"""Export a trained Keras model to every edge format and refuse any format that lost accuracy.

`feredge export runs/custom_cnn --out models/custom_cnn` writes, into the model folder:

| format          | file                 | input / output             | weights / activations        |
|-----------------|----------------------|----------------------------|------------------------------|
| tflite_float32  | model_float32.tflite | float32 / float32          | float32                      |
| tflite_float16  | model_float16.tflite | float32 / float32          | float16 weights, float32 math|
| tflite_dynamic  | model_dynamic.tflite | float32 / float32          | int8 weights, float32 acts   |
| tflite_int8     | model_int8.tflite    | float32 / float32 (quantized on entry) | int8 convolutions; float head |
| onnx_float32    | model_float32.onnx   | float32 / float32          | float32 (opset 17)           |
| onnx_int8       | model_int8.onnx      | float32 / float32 (QDQ)    | int8 per-channel / int8; float head |

Full-integer formats are calibrated on a fixed, seeded sample of *training* images, less any image whose
activations are extreme outliers (drop_outlier_faces). Every artifact is then run through the edge
runtime (LiteRT / onnxruntime, not TensorFlow) on FER-2013 PrivateTest and
compared with the Keras model on the same images; a breach of the gate removes the artifact from the
manifest, moves it to rejected/, and fails the export.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import platform
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feredge.edge.classifier import (
    EmotionClassifier,
    load_litert_interpreter,
    sha256_of,
)
from feredge.edge.preprocess import DEFAULT_CROP, LABELS, preprocess_faces
from feredge.train.data import default_data_path, load_fer2013, subset
from feredge.train.evaluate import (
    agreement_with_people,
    calibration_bins,
    classification_metrics,
    predict_split,
)

# TensorFlow, Keras, onnx, onnxruntime's quantizer, LiteRT and tqdm are imported where each format is
# made or checked: heavy, and each step needs only its own.

log = logging.getLogger(__name__)

FORMATS = {
    "tflite_float32": "model_float32.tflite",
    "tflite_float16": "model_float16.tflite",
    "tflite_dynamic": "model_dynamic.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx_float32": "model_float32.onnx",
    "onnx_int8": "model_int8.onnx",
}
INT8_FORMATS = {"tflite_dynamic", "tflite_int8", "onnx_int8"}
# The int8 formats whose activation ranges come from calibration images (dynamic range needs none).
CALIBRATED_FORMATS = {"tflite_int8", "onnx_int8"}
# Ops tflite_int8 keeps in float: the classifier head (see to_tflite).
INT8_FLOAT_OPS = ["FULLY_CONNECTED", "SOFTMAX"]
ONNX_FLOAT_OPS = ("Gemm", "MatMul", "Softmax")
ONNX_OPSET = 17
# A calibration image whose activations peak above this x the median image's is left out (drop_outlier_faces).
# Measured on a ResNet50V2 checkpoint (epoch 32 of its CPU run), int8 agreement with Keras on PublicTest:
#   factor               none    10     5     3     2
#   images dropped (500)    0    17    27    45    88
#   tflite_int8 %        89.9  97.3  97.6  97.8  98.1
#   onnx_int8 %             -  97.7  97.8  97.7  98.3
# At 3 the shipped custom CNN's sample loses none (at 2, five), so its exported files stay reproducible.
OUTLIER_FACTOR = 3.0
PREPROCESSING = ("grey; square face crop (see crop); resize to size x size (INTER_AREA shrinking, "
                 "INTER_LINEAR enlarging); float32 pixels 0..255 (scaling happens inside the model); "
                 "grey plane replicated when channels is 3")
# Training artifacts copied into the model folder when exporting from a run directory.
RUN_FILES = ("config.json", "metrics.json", "history.csv", "curves.png", "confusion_test.png",
             "confusion_test.json", "confusion_val.png", "train_time.json", "calibration.json",
             "reliability_test.png", "train_prior.json")
# Those describing the run's last evaluated model: calibrated.keras once `feredge calibrate` has run
# (it re-evaluates into the run), else best.keras. Exporting the other file leaves them behind.
EVALUATION_FILES = ("metrics.json", "confusion_test.png", "confusion_test.json", "confusion_val.png",
                    "calibration.json", "reliability_test.png")


class ExportError(Exception):
    """Export can't proceed; one line naming the problem."""


class GateError(Exception):
    """One or more formats lost more accuracy than the gate allows."""


@dataclass
class Gate:
    float_max_drop: float = 0.1      # accuracy points
    float_min_agreement: float = 99.5  # percent top-1 agreement with Keras
    int8_max_drop: float = 1.0
    int8_min_agreement: float = 97.0

    def limits(self, fmt: str):
        if fmt in INT8_FORMATS:
            return self.int8_max_drop, self.int8_min_agreement
        return self.float_max_drop, self.float_min_agreement


def parse_formats(text: str | None) -> list[str]:
    if not text or text == "all":
        return list(FORMATS)
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format(s) {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
    return chosen


def resolve_source(source) -> tuple[Path, Path | None]:
    """(the .keras file, the run directory or None) from a .keras path or a training run directory.
    A .keras file inside a run directory (e.g. calibrated.keras) brings that run's artifacts along."""
    source = Path(source).expanduser()
    if source.is_dir():
        if not (source / "best.keras").exists():
            raise ExportError(f"no best.keras in run directory {source}")
        return source / "best.keras", source
    if not source.exists():
        raise ExportError(f"model not found: {source}")
    if source.suffix != ".keras":
        raise ExportError(f"{source} is not a .keras file (give a .keras model or a training run directory)")
    return source, (source.parent if (source.parent / "config.json").exists() else None)


def load_keras(path: Path):
    import keras

    from feredge.train.models import dtype_policies, float32_copy

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises several types for a corrupt or foreign file
        raise ExportError(f"{path} is not a loadable Keras model: {str(e).splitlines()[0][:200]}") from None
    if dtype_policies(model) != {"float32"}:  # half-precision casts would reach TFLite and ONNX
        log.warning("%s has mixed-precision layers; exporting a float32 copy", path.name)
        model = float32_copy(model)
    return model


def check_writable(out_dir: Path):
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ExportError(f"output folder {out_dir} is not writable: {e.strerror or e}") from None


def calibration_sample(train_x: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return train_x[np.sort(rng.choice(len(train_x), size=min(n, len(train_x)), replace=False))]


def drop_outlier_faces(float_tflite: bytes, pixels: np.ndarray, factor: float = OUTLIER_FACTOR) -> tuple[np.ndarray, int]:
    """The calibration images whose activations stay within `factor` x the median image's, and how many were dropped.

    int8 calibration takes each tensor's range from its minimum and maximum over all calibration images,
    so one image that drives the network to extreme activations stretches a range and leaves typical
    faces a few quantization steps. Measured on a ResNet50V2 checkpoint (epoch 25 of its CPU run): 7 of 500
    training faces peaked at 10-286 x the median image somewhere in the network; calibrated with them,
    tflite_int8 agreed with Keras on 82.8 % of PrivateTest, without them on 97.6 %. Every activation
    tensor of the float32 TFLite graph (the one the int8 converter calibrates) is checked, one image at a time.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the XNNPACK delegate, so that every intermediate tensor is computed and kept.
    interp = Interpreter(model_content=float_tflite, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    entry = interp.get_input_details()[0]["index"]
    # Batch-1 4-D float tensors: the activations (constants among them, e.g. depthwise kernels, never vary).
    taps = [t["index"] for t in interp.get_tensor_details()
            if t["index"] != entry and t["dtype"] == np.float32 and len(t["shape"]) == 4 and t["shape"][0] == 1]
    peaks = np.zeros((len(pixels), len(taps)), np.float32)
    for i in range(len(pixels)):
        interp.set_tensor(entry, pixels[i : i + 1].astype(np.float32))
        interp.invoke()
        peaks[i] = [np.abs(interp.get_tensor(t)).max() for t in taps]
    median = np.median(peaks, 0)
    ratio = (peaks[:, median > 0] / median[median > 0]).max(1, initial=0.0)
    keep = ratio <= factor
    if not keep.all():
        log.info("int8 calibration: dropped %d of %d images whose activations peak above %g x the median image's "
                 "(%s x)", (~keep).sum(), len(pixels), factor, ", ".join(f"{r:.0f}" for r in sorted(ratio[~keep])))
    return pixels[keep], int((~keep).sum())


# --- converters ---------------------------------------------------------------------------------

def to_tflite(saved_model_dir: Path, mode: str, calib_pixels: np.ndarray | None) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib_pixels[i : i + 1]] for i in range(len(calib_pixels)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Every convolution runs in int8; the 7-way classifier head (fully connected + softmax) stays
        # float. An int8 softmax outputs probabilities in steps of 1/256, so near-ties between the two
        # top classes collapse into exact ties (1.9 % of PublicTest rows on one checkpoint) and the
        # argmax flips against Keras; a float head costs a 256x7 matrix product. TFLite's selective
        # quantization (the quantization debugger's denylist) is the documented way to keep ops float;
        # its model takes and returns float32 (quantized on entry), whatever inference_*_type says.
        with warnings.catch_warnings():  # TF's own calibrator builds tf.lite.Interpreter, which warns it is deprecated
            warnings.filterwarnings("ignore", r"\s*Warning: tf.lite.Interpreter is deprecated", UserWarning)
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=conv, debug_dataset=conv.representative_dataset,
                debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=INT8_FLOAT_OPS))
            return debugger.get_nondebug_quantized_model()
    return conv.convert()


def to_onnx(model, path: Path):
    model.export(str(path), format="onnx", opset_version=ONNX_OPSET, verbose=False)


def quantize_onnx(float_path: Path, out_path: Path, calib_pixels: np.ndarray):
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: calib_pixels[i : i + 1]} for i in range(len(calib_pixels))])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(float_path), str(prepped), skip_symbolic_shape=True)
        import onnx

        # The classifier head stays float, as in tflite_int8 (see to_tflite): no 1/256-step ties.
        head = [n.name for n in onnx.load(str(prepped)).graph.node if n.op_type in ONNX_FLOAT_OPS]
        # 7-bit weights (reduce_range): onnxruntime's int8 kernels for x86 CPUs without VNNI add pairs of
        # 8-bit products in 16 bits, which saturate for 8-bit weights and change answers (PrivateTest
        # 68.57 % -> 68.24 % for custom_cnn, 67.76 % -> 55.87 % for resnet50v2 on an AVX2-only EPYC).
        # With |weight| <= 64 no pair can overflow, so every CPU computes the same integers.
        quantize_static(str(prepped), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=head)


def convert(model, fmt: str, out_path: Path, saved_model_dir: Path, calib_pixels, onnx_float: Path):
    if fmt.startswith("tflite_"):
        out_path.write_bytes(to_tflite(saved_model_dir, fmt.split("_", 1)[1], calib_pixels))
    elif fmt == "onnx_float32":
        to_onnx(model, out_path)
    elif fmt == "onnx_int8":
        if not onnx_float.exists():
            to_onnx(model, onnx_float)
        quantize_onnx(onnx_float, out_path, calib_pixels)


# --- the gate -------------------------------------------------------------------------------------

def prediction_digest(pred: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(pred, np.int8).tobytes()).hexdigest()


def training_prior(run_dir, train_labels) -> dict:
    """The run's train_prior.json (the targets it trained on), else FER-2013's label shares."""
    if run_dir and (Path(run_dir) / "train_prior.json").exists():
        return json.loads((Path(run_dir) / "train_prior.json").read_text())
    counts = np.bincount(train_labels, minlength=len(LABELS))
    return {label: round(float(c / counts.sum()), 5) for label, c in zip(LABELS, counts)}


def gate_eval_set(data, quick: int, seed: int):
    """PrivateTest, or for quick mode a fixed stratified subset of it."""

    return subset(data["test"], quick, seed)


def evaluate_artifact(path: Path, x_gray, y, votes=None):
    clf = EmotionClassifier(path, verify=False)
    probs = predict_split(clf.predict_pixels, x_gray, clf.input_size, clf.channels, tta=False)
    return scored_figures(probs, y, votes), probs.argmax(1)


def gate_artifact(fmt: str, path: Path, evalset, reference_accuracy: float, reference_pred: np.ndarray,
                  gate: Gate) -> dict:
    """The manifest entry of one exported file, scored through the edge runtime against the reference's
    accuracy and predictions; a file that fails the gate is moved to rejected/ beside it."""
    metrics, pred = evaluate_artifact(path, evalset.x, evalset.y, evalset.votes)
    drop = 100 * (reference_accuracy - metrics["accuracy"])
    agreement = 100 * float(np.mean(pred == reference_pred))
    max_drop, min_agree = gate.limits(fmt)
    passed = drop <= max_drop and agreement >= min_agree
    entry = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path),
             **io_details(path), **metrics, "accuracy_drop_pt": round(drop, 3), "agreement_pct": round(agreement, 3),
             "gate": {"max_drop_pt": max_drop, "min_agreement_pct": min_agree, "passed": passed},
             "predictions_sha256": prediction_digest(pred)}
    if not passed:
        (path.parent / "rejected").mkdir(exist_ok=True)
        shutil.move(str(path), path.parent / "rejected" / path.name)
        log.error("GATE FAILED %s: accuracy %.4f (drop %.2f pt > %.2f?) agreement %.2f%% (< %.2f%%?)",
                  fmt, metrics["accuracy"], drop, max_drop, agreement, min_agree)
    return entry


def gate_failure(rejected: dict) -> GateError:
    return GateError("; ".join(
        f"{fmt}: {v['error']}" if "error" in v else
        f"{fmt}: accuracy {100 * v['accuracy']:.2f}% (drop {v['accuracy_drop_pt']:.2f} pt, limit {v['gate']['max_drop_pt']}), "
        f"agreement {v['agreement_pct']:.2f}% (min {v['gate']['min_agreement_pct']})"
        for fmt, v in rejected.items()))


def scored_figures(probs: np.ndarray, y, votes=None) -> dict:
    """The manifest's figures for one model on the gate's images: on FER-2013's labels, and, with the
    FER+ votes, on FER+'s majority ("ferplus": images without one left out) with the vote cross-entropy."""

    m = classification_metrics(y, probs.argmax(1))
    out = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "balanced_accuracy": m["balanced_accuracy"],
           "ece": round(calibration_bins(probs, y)[0], 4), "recall": per_class_recall(m)}
    if votes is not None:
        people = agreement_with_people(probs, votes)
        out["ferplus"] = {"n": people["n"], "left_out": people["left_out"], "accuracy": people["accuracy"],
                          "macro_f1": people["macro_f1"], "balanced_accuracy": people["balanced_accuracy"],
                          "vote_cross_entropy": round(people["vote_cross_entropy"], 4), "ece": round(people["ece"], 4),
                          "recall": per_class_recall(people)}
    return out


def per_class_recall(metrics: dict) -> dict:
    return {label: round(c["recall"], 4) for label, c in metrics["per_class"].items()}


def io_details(path: Path) -> dict:
    """Input/output dtypes and quantization parameters, as the edge runtime sees them."""
    if path.suffix == ".tflite":
        interp = load_litert_interpreter(path, 1)
        i, o = interp.get_input_details()[0], interp.get_output_details()[0]
        return {"input_dtype": np.dtype(i["dtype"]).name, "output_dtype": np.dtype(o["dtype"]).name,
                "input_quantization": list(map(float, i["quantization"])) if i["quantization"][0] else None,
                "output_quantization": list(map(float, o["quantization"])) if o["quantization"][0] else None}
    import onnx

    m = onnx.load(str(path))
    elem = {1: "float32", 3: "int8", 2: "uint8"}
    return {"input_dtype": elem.get(m.graph.input[0].type.tensor_type.elem_type, "?"),
            "output_dtype": elem.get(m.graph.output[0].type.tensor_type.elem_type, "?"),
            "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
            "quantization": "QDQ int8, per-channel 7-bit weights" if "int8" in path.name else None}


def tool_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy", "opencv-python-headless"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def export_model(source, out_dir, formats=None, data=None, quick: int = 0, calib_n: int = 500, seed: int = 0,
                 gate: Gate | None = None, name: str | None = None, progress: bool = True,
                 calib_pixels: np.ndarray | None = None, outlier_factor: float | None = None) -> dict:
    """Export, gate and write manifest.json. Raises GateError (after writing) if any format breaches.

    calib_pixels replaces the seeded training sample for int8 calibration (tests use it to damage a model);
    outlier_factor (default OUTLIER_FACTOR) is drop_outlier_faces's rule.
    """
    from tqdm import tqdm

    gate = gate or Gate()
    outlier_factor = OUTLIER_FACTOR if outlier_factor is None else outlier_factor
    formats = parse_formats(formats) if isinstance(formats, (str, type(None))) else formats
    keras_path, run_dir = resolve_source(source)
    out_dir = Path(out_dir)
    check_writable(out_dir)
    model = load_keras(keras_path)
    _, size, _, channels = model.input_shape
    data = data or load_fer2013(default_data_path())

    calib = preprocess_faces(calibration_sample(data["train"].x, calib_n, seed), size, channels) \
        if calib_pixels is None else calib_pixels
    evalset = gate_eval_set(data, quick, seed)

    keras_probs = predict_split(lambda x: np.asarray(model.predict(x, batch_size=256, verbose=0)),
                                evalset.x, size, channels, tta=False)
    keras_pred = keras_probs.argmax(1)
    km = classification_metrics(evalset.y, keras_pred)
    reference = {**scored_figures(keras_probs, evalset.y, evalset.votes), "file": keras_path.name,
                 "sha256": sha256_of(keras_path)}
    log.info("Keras reference: accuracy %.4f, macro-F1 %.4f on %d images", km["accuracy"], km["macro_f1"], km["n"])

    results, rejected = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), verbose=False)  # TF SavedModel, the TFLite converter's input
        calib_dropped = 0
        if CALIBRATED_FORMATS & set(formats):
            calib, calib_dropped = drop_outlier_faces(to_tflite(saved, "float32", None), calib, outlier_factor)
        onnx_float_tmp = Path(tmp) / "float32.onnx"
        for fmt in tqdm(formats, desc="exporting", unit="format", disable=not progress):
            path = out_dir / FORMATS[fmt]
            try:
                convert(model, fmt, path, saved, calib, onnx_float_tmp)
            except Exception as e:  # a converter failure is a failed format, said in one line
                rejected[fmt] = {"error": f"conversion failed: {str(e).splitlines()[0][:300]}"}
                log.error("%s: conversion failed: %s", fmt, str(e).splitlines()[0][:300])
                continue
            entry = gate_artifact(fmt, path, evalset, reference["accuracy"], keras_pred, gate)
            (results if entry["gate"]["passed"] else rejected)[fmt] = entry

    manifest_path = out_dir / "manifest.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    formats_out = {k: v for k, v in previous.get("formats", {}).items() if k not in formats and (out_dir / v["file"]).exists()}
    formats_out.update(results)
    manifest = {
        "name": name or out_dir.name,
        "architecture": model.name,
        "labels": list(LABELS),
        "input": {"size": size, "channels": channels, "dtype": "float32", "range": [0, 255],
                  "layout": "NHWC", "preprocessing": PREPROCESSING, "crop": DEFAULT_CROP},
        "evaluation": {"split": "PrivateTest", "n": int(len(evalset)), "quick": bool(quick), "seed": seed,
                       "predictions": "argmax per image, in the order of the eval set; predictions_sha256 hashes them as int8"},
        "calibration": {"split": "Training", "n": int(len(calib)), "seed": seed, "outliers_dropped": calib_dropped,
                        "outlier_rule": f"an activation peak > {outlier_factor:g} x the median image's"},
        "keras_reference": reference,
        # The class shares of the targets trained on: `--prior balanced` divides by them.
        "train_prior": training_prior(run_dir, data["train"].y),
        "formats": formats_out,
        "rejected": rejected,
        "tools": tool_versions(),
        "platform": {"machine": platform.machine(), "system": platform.system()},
    }
    if run_dir:
        evaluated = "calibrated.keras" if (run_dir / "calibration.json").exists() else "best.keras"
        for f in RUN_FILES:
            if f in EVALUATION_FILES and keras_path.name != evaluated:
                continue
            if (run_dir / f).exists():
                shutil.copy2(run_dir / f, out_dir / ("training_" + f if f in ("config.json", "metrics.json") else f))
    manifest_path.write_text(json.dumps(manifest, indent=2))
    if results:
        manifest["output_prior"] = output_prior(out_dir, data["train"])
        manifest_path.write_text(json.dumps(manifest, indent=2))
    if rejected:
        raise gate_failure(rejected)
    return manifest


def rescore_manifest(model_dir, data=None) -> dict:
    """Adds the figures newer than a manifest (FER+ majority, balanced accuracy, ECE, train_prior,
    output_prior) to each gated format of model_dir by running it through the edge runtime again; the
    files, their checksums and the gate's verdicts are left as they are. The Keras reference takes the float32
    ONNX's figures where that format agreed with it on every image (its run may be gone)."""

    model_dir = Path(model_dir)
    manifest_path = model_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    data = data or load_fer2013(default_data_path())
    evalset = gate_eval_set(data, 0, manifest["evaluation"].get("seed", 0))
    for fmt, entry in manifest["formats"].items():
        figures, pred = evaluate_artifact(model_dir / entry["file"], evalset.x, evalset.y, evalset.votes)
        if prediction_digest(pred) != entry["predictions_sha256"]:
            raise ExportError(f"{model_dir.name} {fmt}: predictions differ from the gate's; re-export instead")
        entry.update(figures)
    exact = manifest["formats"].get("onnx_float32", {})
    if exact.get("agreement_pct") == 100.0:
        manifest["keras_reference"].update({k: exact[k] for k in ("balanced_accuracy", "ece", "ferplus") if k in exact})
        manifest["keras_reference"]["rescored_from"] = "onnx_float32 (100 % agreement with Keras)"
    manifest.setdefault("train_prior", training_prior(None, data["train"].y))
    manifest_path.write_text(json.dumps(manifest, indent=2))
    manifest["output_prior"] = output_prior(model_dir, data["train"])
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def requantize_onnx(model_dir, data=None, calib_n: int = 500, seed: int = 0, gate: Gate | None = None,
                    outlier_factor: float = OUTLIER_FACTOR) -> dict:
    """Re-makes a model folder's onnx_int8 from its own model_float32.onnx, calibrated as export does,
    and gates it as export does, for a folder whose training run (the Keras model) is gone. The float32
    ONNX stands in for Keras only where the gate saw it agree with Keras on every image and it still gives
    the gate's predictions. Raises GateError (after recording the rejection) if the new file fails."""

    model_dir = Path(model_dir)
    manifest_path = model_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    exact = manifest["formats"].get("onnx_float32")
    if not exact or exact.get("agreement_pct") != 100.0 or not (model_dir / "model_float32.tflite").exists():
        raise ExportError(f"{model_dir.name}: requantizing needs its onnx_float32 (100 % agreement with Keras) and "
                          "model_float32.tflite; export from the training run instead")
    data = data or load_fer2013(default_data_path())
    seed = manifest["evaluation"].get("seed", seed)  # the gate's images and calibration sample, as exported
    evalset = gate_eval_set(data, 0, seed)
    _, reference_pred = evaluate_artifact(model_dir / exact["file"], evalset.x, evalset.y, evalset.votes)
    if prediction_digest(reference_pred) != exact["predictions_sha256"]:
        raise ExportError(f"{model_dir.name} onnx_float32: predictions differ from the gate's; export from the run instead")

    size, channels = manifest["input"]["size"], manifest["input"]["channels"]
    calib = preprocess_faces(calibration_sample(data["train"].x, calib_n, seed), size, channels)
    calib, dropped = drop_outlier_faces((model_dir / "model_float32.tflite").read_bytes(), calib, outlier_factor)
    path = model_dir / FORMATS["onnx_int8"]
    quantize_onnx(model_dir / exact["file"], path, calib)
    entry = gate_artifact("onnx_int8", path, evalset, manifest["keras_reference"]["accuracy"], reference_pred,
                          gate or Gate())
    entry["calibration"] = {"split": "Training", "n": int(len(calib)), "seed": seed, "outliers_dropped": dropped,
                            "reference": "onnx_float32, standing in for Keras (100 % agreement)"}
    manifest["formats"].pop("onnx_int8", None)
    manifest["rejected"].pop("onnx_int8", None)
    (manifest["formats"] if entry["gate"]["passed"] else manifest["rejected"])["onnx_int8"] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2))
    if not entry["gate"]["passed"]:
        raise gate_failure({"onnx_int8": entry})
    return manifest


def output_prior(model_dir, train) -> dict:
    """The folder's model's mean probability per class over the Training split, in its default format:
    the prior the (calibrated) model actually assumes, which `--prior balanced` divides by (the
    classifier's balance_prior; the estimate of Saerens et al. 2002)."""
    clf = EmotionClassifier(model_dir, verify=False)
    probs = predict_split(clf.predict_pixels, train.x, clf.input_size, clf.channels, tta=False)
    return {label: round(float(p), 5) for label, p in zip(LABELS, probs.mean(0))}
