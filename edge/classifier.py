"""Emotion classification with LiteRT or onnxruntime, chosen from the model file: no TensorFlow.

`EmotionClassifier(path)` takes a model folder (with manifest.json) or a single .tflite / .onnx file.
With a manifest it reads labels and input spec from it and verifies the file's sha256.
`EnsembleClassifier` runs a shipped ensemble (a manifest whose "kind" is "ensemble"); `load_classifier`
returns whichever of the two a model folder or name holds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np

import feredge.models
from feredge.edge.native_log import known_noise_dropped
from feredge.edge.preprocess import LABELS, preprocess_faces

# The inference runtimes are imported where a model is loaded: whichever of LiteRT, tflite-runtime and
# onnxruntime is installed, and only the one the model's format needs.

MANIFEST = "manifest.json"
# The shipped models, models/<name>/ inside the installed package.
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
if not MODELS_DIR.is_dir():  # editable installs map feredge.models to the repo's models/
    MODELS_DIR = Path(feredge.models.__file__).parent
# Preferred format when a folder is given: int8 first (smallest, fastest on a Pi-class CPU).
FORMAT_PREFERENCE = ("tflite_int8", "onnx_int8", "tflite_float16", "tflite_float32", "tflite_dynamic", "onnx_float32")


# FER-2013's training split per LABELS class (../shared/data/README.md): the prior of a model whose
# manifest names none (a bare file, or a model trained on FER-2013's labels before manifests recorded it).
FER2013_TRAIN_COUNTS = (3995, 436, 4097, 7215, 4965, 4830, 3171)
PRIORS = ("training", "balanced")


class ModelError(Exception):
    """The model can't be used; the message is one line naming the problem."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except FileNotFoundError:
        raise ModelError(f"no {MANIFEST} in {folder}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{Path(folder) / MANIFEST} is not valid JSON: {e}") from None


def resolve_model(path, fmt: str | None = None):
    """(model file, manifest or None, format name or None) from a folder, a file path or the name of a
    shipped model (a folder under models/, e.g. "custom_cnn")."""
    path = locate_model(path)
    if path.is_dir():
        manifest = read_manifest(path)
        formats = manifest.get("formats", {})
        if fmt:
            if fmt not in formats:
                raise ModelError(f"format '{fmt}' not in {path / MANIFEST} (has: {', '.join(formats) or 'none'})")
        else:
            usable = [f for f in FORMAT_PREFERENCE if f in formats and _backend_available(formats[f]["file"])]
            if not usable:
                raise ModelError(f"no format in {path} that an installed runtime can run (install ai-edge-litert or onnxruntime)")
            fmt = usable[0]
        return path / formats[fmt]["file"], manifest, fmt
    manifest = None
    if (path.parent / MANIFEST).exists():
        manifest = read_manifest(path.parent)
        fmt = next((k for k, v in manifest.get("formats", {}).items() if v.get("file") == path.name), None)
        if fmt is None:
            manifest = None  # a file the manifest doesn't list: use it as a bare model file
    return path, manifest, fmt


def locate_model(path) -> Path:
    """A model path as given, or the folder of the shipped model of that name."""
    path = Path(path).expanduser()
    if not path.exists() and str(path) in shipped_models():
        path = MODELS_DIR / str(path)
    if not path.exists():
        raise ModelError(f"model not found: {path} (shipped models: {', '.join(shipped_models())})")
    return path


def shipped_models() -> list[str]:
    return sorted(p.parent.name for p in MODELS_DIR.glob(f"*/{MANIFEST}"))


def _backend_available(filename: str) -> bool:
    if filename.endswith(".onnx"):
        return importlib.util.find_spec("onnxruntime") is not None
    return any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))


def load_litert_interpreter(path: Path, threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:  # the predecessor, still what some Pi images have
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ModelError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from None
    try:
        return Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0]
        if "Didn't find op" in reason:  # e.g. tflite-runtime 2.14 and a dynamic-range model from TF 2.21
            raise ModelError(f"{path.name} needs a newer TFLite runtime than this one ({reason}): "
                             "pip install ai-edge-litert, or use the int8 or float formats") from None
        raise ModelError(f"{path} is not a valid TFLite model: {reason}") from None
    except (SystemError, ImportError):  # tflite-runtime <= 2.14 is built for NumPy 1.x only
        raise ModelError(f"this tflite-runtime does not work with NumPy {np.__version__}: "
                         "pip install 'numpy<2', or use ai-edge-litert") from None


MAX_BATCH = 256  # faces per interpreter call


class _LiteRT:
    def __init__(self, path: Path, threads: int | None):
        with known_noise_dropped():
            self.interp = load_litert_interpreter(path, threads)
            self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.inp["shape"])
        self.output_classes = int(self.out["shape"][-1])
        self.batch = int(self.inp["shape"][0])
        self.dynamic_batch = int(self.inp.get("shape_signature", self.inp["shape"])[0]) == -1

    def run(self, x: np.ndarray) -> np.ndarray:
        if len(x) > MAX_BATCH:  # bounded memory on a Pi; tflite-runtime 2.14 crashes past a 2 GB arena
            return np.concatenate([self.run(x[i : i + MAX_BATCH]) for i in range(0, len(x), MAX_BATCH)])
        if len(x) != self.batch:
            if not self.dynamic_batch:
                return np.concatenate([self.run(x[i : i + 1]) for i in range(len(x))])
            self.interp.resize_tensor_input(self.inp["index"], [len(x), *self.input_shape[1:]])
            self.interp.allocate_tensors()
            self.inp = self.interp.get_input_details()[0]
            self.out = self.interp.get_output_details()[0]
            self.batch = len(x)
        self.interp.set_tensor(self.inp["index"], quantize(x, self.inp))
        self.interp.invoke()
        return dequantize(self.interp.get_tensor(self.out["index"]), self.out)


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype in (np.float32, np.float16):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


class _OnnxRuntime:
    def __init__(self, path: Path, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("no ONNX runtime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"{path} is not a valid ONNX model: {str(e).splitlines()[0][:200]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        self.output_classes = self.session.get_outputs()[0].shape[-1]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x.astype(np.float32)})[0]


class EmotionClassifier:
    """Classify preprocessed faces. `predict_faces(list of grey crops)` -> (N, 7) probabilities."""

    mirrored = False  # whether predictions already average in each face's mirror image

    def __init__(self, path, fmt: str | None = None, threads: int | None = None, verify: bool = True):
        self.path, self.manifest, self.format = resolve_model(path, fmt)
        self.files = [self.path]
        if self.manifest and verify:
            entry = self.manifest["formats"][self.format]
            digest = sha256_of(self.path)
            if digest != entry.get("sha256"):
                raise ModelError(f"checksum mismatch for {self.path.name}: sha256 {digest[:12]}..., manifest says {str(entry.get('sha256'))[:12]}...")
        suffix = self.path.suffix.lower()
        if suffix == ".tflite":
            self.engine = _LiteRT(self.path, threads)
        elif suffix == ".onnx":
            self.engine = _OnnxRuntime(self.path, threads)
        else:
            raise ModelError(f"{self.path} is not a .tflite or .onnx model")
        _, h, w, c = self.engine.input_shape
        if h != w or c not in (1, 3):
            raise ModelError(f"{self.path.name} takes input {self.engine.input_shape}, not (N, size, size, 1|3): not an emotion model")
        self.input_size, self.channels = int(h), int(c)
        self.labels = tuple(self.manifest["labels"]) if self.manifest else LABELS
        if self.engine.output_classes != len(self.labels):
            raise ModelError(f"{self.path.name} outputs {self.engine.output_classes} classes but the labels are {len(self.labels)}")
        spec = self.manifest.get("input", {}) if self.manifest else {}
        self.crop = spec.get("crop")  # how the runtime cuts faces for this model; None: the default
        if self.manifest:
            if (spec.get("size"), spec.get("channels")) != (self.input_size, self.channels):
                raise ModelError(f"manifest input {spec.get('size')}x{spec.get('size')}x{spec.get('channels')} doesn't match "
                                 f"{self.path.name} ({self.input_size}x{self.input_size}x{self.channels})")

    @property
    def train_prior(self) -> np.ndarray:
        """The class shares of the targets the model was trained on (manifest's train_prior)."""
        named = (self.manifest or {}).get("train_prior")
        prior = np.array([named[k] for k in self.labels] if named else FER2013_TRAIN_COUNTS, np.float64)
        return prior / prior.sum()

    @property
    def balance_prior(self) -> np.ndarray:
        """What `--prior balanced` divides by: the model's own mean output on the Training split (the
        manifest's output_prior), else the training prior. Calibration offsets move a model's outputs
        away from its targets' prior (custom_cnn_ferplus's raise disgust fourfold), and dividing by the
        targets' prior would then count such a boost twice."""
        named = (self.manifest or {}).get("output_prior")
        if not named:
            return self.train_prior
        prior = np.array([named[k] for k in self.labels], np.float64)
        return prior / prior.sum()

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, size, size, channels) pixels 0..255 -> (N, classes) probabilities."""
        if len(pixels) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        probs = self.engine.run(pixels)
        # int8 outputs come in steps of 1/256 and need not sum to 1: renormalise (argmax unchanged).
        return probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)

    def predict_faces(self, faces) -> np.ndarray:
        """Grey face crops (any size) -> probabilities, through the shared preprocessing."""
        if len(faces) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.predict_pixels(preprocess_faces(faces, self.input_size, self.channels))


def with_prior(probs: np.ndarray, train_prior: np.ndarray, prior: str) -> np.ndarray:
    """prior "training": the model's probabilities as they are (emotions as common as in training);
    "balanced": divided by the model's prior (its balance_prior) and renormalised, i.e. every emotion equally likely
    beforehand, for places such as posed or acted footage."""
    if prior == "training":
        return probs
    if prior != "balanced":
        raise ModelError(f"prior must be one of {', '.join(PRIORS)}, got '{prior}'")
    adjusted = probs / train_prior
    return adjusted / np.maximum(adjusted.sum(axis=1, keepdims=True), 1e-12)


def geometric_mean(probs: list) -> np.ndarray:
    """An ensemble's probabilities: the normalised geometric mean of its members' (a member sure that a
    class is wrong vetoes it, which an arithmetic mean would not)."""
    if len(probs) == 1:
        return probs[0]
    log_mean = np.mean([np.log(p + 1e-7) for p in probs], axis=0)
    e = np.exp(log_mean - log_mean.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def class_bias(combine: dict, labels) -> np.ndarray | None:
    """An ensemble manifest's combine.class_bias as offsets in labels' order; None where there is none."""
    named = combine.get("class_bias")
    return np.array([named.get(label, 0.0) for label in labels]) if named else None


def shifted(probs: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """probs with per-class logit offsets added (an ensemble's calibration), renormalised."""
    if bias is None or not np.any(bias):
        return probs
    p = probs * np.exp(bias)
    return p / p.sum(axis=1, keepdims=True)


def _format_runs_here(fmt: str) -> bool:
    return _backend_available(".onnx" if fmt.startswith("onnx") else ".tflite")


class EnsembleClassifier:
    """A shipped ensemble: a folder whose manifest has "kind": "ensemble", names its members (shipped
    model folders beside it, or under the package's models/) with the sha256 of each member's file per
    format, and how they combine: the normalised geometric mean of the members' probabilities, over
    each face and, when "mirror" is set, its mirror image, shifted by "class_bias" (per-class logit
    offsets fitted on PublicTest by `feredge ensemble --calibrate`) where there is one. A member that is
    missing or whose file fails its hash is a one-line ModelError naming it. Same interface as EmotionClassifier; its input size is
    the smallest member's (FER-2013's 48 x 48 faces reach every member as they would on their own)."""

    def __init__(self, folder, fmt: str | None = None, threads: int | None = None, mirror: bool | None = None):
        self.path = Path(folder)
        self.manifest = read_manifest(self.path)
        name = self.manifest.get("name", self.path.name)
        formats = self.manifest.get("formats", {})
        if fmt is None:
            fmt = next((f for f in FORMAT_PREFERENCE if f in formats and _format_runs_here(f)), None)
            if fmt is None:
                raise ModelError(f"ensemble '{name}': no format an installed runtime can run (has: {', '.join(formats) or 'none'})")
        elif fmt not in formats:
            raise ModelError(f"ensemble '{name}': format '{fmt}' not in its manifest (has: {', '.join(formats) or 'none'})")
        self.format = fmt
        combine = self.manifest.get("combine", {})
        if combine.get("rule", "geometric_mean") != "geometric_mean":
            raise ModelError(f"ensemble '{name}': unknown combine rule '{combine.get('rule')}'")
        self.mirrored = bool(combine.get("mirror", False)) if mirror is None else mirror
        self.labels = tuple(self.manifest["labels"])
        self.class_bias = class_bias(combine, self.labels)
        self.crop = self.manifest.get("input", {}).get("crop")
        self.members = [self._load_member(name, m, fmt, threads) for m in self.manifest.get("members", [])]
        if not self.members:
            raise ModelError(f"ensemble '{name}' names no members")
        self.files = [f for m in self.members for f in m.files]
        self.input_size, self.channels = min(m.input_size for m in self.members), 1

    def _load_member(self, ensemble: str, member: dict, fmt: str, threads):
        folder = next((d for d in (self.path.parent / member["model"], MODELS_DIR / member["model"])
                       if (d / MANIFEST).is_file()), None)
        if folder is None:
            raise ModelError(f"ensemble '{ensemble}': member '{member['model']}' not found (looked in {self.path.parent} and {MODELS_DIR})")
        entry = read_manifest(folder).get("formats", {}).get(fmt)
        expected = member.get("sha256", {}).get(fmt)
        if entry is None or expected is None:
            raise ModelError(f"ensemble '{ensemble}': member '{member['model']}' has no {fmt} file")
        digest = sha256_of(folder / entry["file"]) if (folder / entry["file"]).is_file() else "missing"
        if digest != expected:
            raise ModelError(f"ensemble '{ensemble}': member '{member['model']}' {entry['file']} fails its sha256 check "
                             f"({digest[:12]}..., the ensemble was measured with {expected[:12]}...)")
        clf = EmotionClassifier(folder, fmt=fmt, threads=threads, verify=False)
        if clf.labels != self.labels:
            raise ModelError(f"ensemble '{ensemble}': member '{member['model']}' has labels {clf.labels}, not {self.labels}")
        return clf

    @property
    def train_prior(self) -> np.ndarray:
        """The members' priors combined as their probabilities are, so that the balanced prior divides
        each member's probabilities by its own prior (balance_prior likewise)."""
        return geometric_mean([m.train_prior[None, :] for m in self.members])[0]

    @property
    def balance_prior(self) -> np.ndarray:
        # Shifted as the outputs are: the calibration's offsets move the ensemble's own prior with them.
        return shifted(geometric_mean([m.balance_prior[None, :] for m in self.members]), self.class_bias)[0]

    def predict_faces(self, faces) -> np.ndarray:
        if len(faces) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        views = [faces, [np.ascontiguousarray(np.asarray(f)[:, ::-1]) for f in faces]] if self.mirrored else [faces]
        combined = geometric_mean([m.predict_faces(v) for m in self.members for v in views])
        return shifted(combined, self.class_bias).astype(np.float32)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, size, size, 1) pixels 0..255 -> probabilities: each member resizes them to its own input."""
        return self.predict_faces(list(np.asarray(pixels)[..., 0]))


def load_classifier(model, fmt: str | None = None, threads: int | None = None):
    """The classifier a model folder, file or shipped name holds: an EnsembleClassifier for an ensemble's
    folder, else an EmotionClassifier."""
    path = locate_model(model)
    if path.is_dir() and (path / MANIFEST).is_file() and read_manifest(path).get("kind") == "ensemble":
        return EnsembleClassifier(path, fmt=fmt, threads=threads)
    return EmotionClassifier(path, fmt=fmt, threads=threads)
