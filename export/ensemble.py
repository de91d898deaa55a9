"""Build a shipped ensemble: `feredge ensemble custom_cnn custom_cnn_ferplus --out models/accurate`.

The ensemble's folder holds only a manifest: its members (shipped model folders beside it), the
sha256 of each member's file per format, and how they combine (edge/classifier.py, EnsembleClassifier:
normalised geometric mean of the members' probabilities, over each face and its mirror image when
that pays on PublicTest). Each format is scored on PrivateTest through the edge runtime, on FER-2013's
labels and FER+'s majority, and gated:
- against the same members' float files combined the same way (drop <= max_drop points; a member
  shipped in int8 only is its own reference), and
- against its best member under the same mirroring: an ensemble that doesn't beat it isn't shipped.
With calibrate, one set of per-class logit offsets on the combined output is fitted on PublicTest (both
label sets where the votes are there, every recall held at min_recall: train/calibrate.py's fit), so
that a member left uncalibrated (one trained mostly on FER+'s votes, which rarely says fear) keeps its
gain where the others carry the rare emotions.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

import numpy as np

from feredge.edge.classifier import (
    MODELS_DIR,
    EmotionClassifier,
    EnsembleClassifier,
    ModelError,
    class_bias,
    geometric_mean,
    locate_model,
    read_manifest,
    shifted,
)
from feredge.export.export import (
    ExportError,
    GateError,
    check_writable,
    gate_eval_set,
    prediction_digest,
    scored_figures,
    tool_versions,
)
from feredge.train import ferplus
from feredge.train.calibrate import fit_class_bias
from feredge.train.data import default_data_path, load_fer2013, subset
from feredge.train.evaluate import predict_split

log = logging.getLogger(__name__)

ENSEMBLE_FORMATS = ("tflite_int8", "onnx_int8")
# A member's reference: its most precise shipped format.
REFERENCE_FORMATS = ("tflite_float32", "onnx_float32", "tflite_float16")
MAX_DROP_PT = 0.5


def member_views(clf, x_gray, mirror: bool) -> list[np.ndarray]:
    """A single model's probabilities on grey faces, and on their mirror images when mirror is set."""
    views = [x_gray, x_gray[:, :, ::-1].copy()] if mirror else [x_gray]
    return [predict_split(clf.predict_pixels, v, clf.input_size, clf.channels, tta=False) for v in views]


def ensemble_probs(clf: EnsembleClassifier, x_gray) -> np.ndarray:
    """The ensemble's probabilities as the edge runtime gives them."""
    return predict_split(clf.predict_pixels, x_gray, clf.input_size, clf.channels, tta=False)


def fit_ensemble_bias(probs: np.ndarray, labels, fmt: str, valset, min_recall: float) -> dict:
    """The combine entries of a calibrated ensemble: class_bias fitted to probs, the combination the
    runtime gives on valset (PublicTest) in format fmt, and what it changed there."""
    label_sets = [valset.y] + ([ferplus.majority(valset.votes)] if valset.votes is not None else [])
    bias = fit_class_bias(probs, label_sets, min_recall)

    def figures(p):
        return {k: v for k, v in scored_figures(p, valset.y, valset.votes).items() if k in ("accuracy", "recall", "ferplus")}

    calibration = {"split": "PublicTest", "n": len(valset), "format": fmt, "min_recall": min_recall,
                   "label_sets": "both" if len(label_sets) == 2 else "fer2013",
                   "before": figures(probs), "after": figures(shifted(probs, bias))}
    log.info("calibration on PublicTest: accuracy %.4f -> %.4f", calibration["before"]["accuracy"],
             calibration["after"]["accuracy"])
    return {"class_bias": {label: round(float(b), 3) for label, b in zip(labels, bias)},
            "calibration": calibration}


def member_folders(members, out_dir: Path) -> list[Path]:
    """Each member's folder; it must be where the shipped ensemble will look: beside out_dir or shipped."""
    folders = []
    for m in members:
        folder = locate_model(m)
        if read_manifest(folder).get("kind") == "ensemble":
            raise ExportError(f"member '{m}' is itself an ensemble; name its members instead")
        if folder.resolve().parent not in (out_dir.resolve().parent, MODELS_DIR.resolve()):
            raise ExportError(f"member '{m}' ({folder}) must sit beside {out_dir} or among the shipped models")
        folders.append(folder)
    if len(folders) < 2:
        raise ExportError("an ensemble needs at least two members")
    return folders


def build_ensemble(members, out_dir, data=None, formats=ENSEMBLE_FORMATS, mirror: str = "auto", quick: int = 0,
                   seed: int = 0, max_drop: float = MAX_DROP_PT, require_gain: bool = True, name: str | None = None,
                   calibrate: bool = False, min_recall: float = 0.45) -> dict:
    """Write out_dir/manifest.json for an ensemble of members (shipped names or folders), scored and gated.
    mirror: "auto" (on where it raises PublicTest accuracy), "on" or "off". Raises GateError after writing
    the formats that passed, naming those that failed."""

    out_dir = Path(out_dir)
    check_writable(out_dir)
    folders = member_folders(members, out_dir)
    manifests = [read_manifest(f) for f in folders]
    labels, crop = manifests[0]["labels"], manifests[0]["input"].get("crop")
    for f, m in zip(folders, manifests):
        if m["labels"] != labels:
            raise ExportError(f"member '{f.name}' has labels {m['labels']}, not {labels}")
        if m["input"].get("crop") != crop:
            raise ExportError(f"member '{f.name}' cuts faces differently ({m['input'].get('crop')} vs {crop}); "
                              "an ensemble's members share one crop")
    usable = [fmt for fmt in formats if all(m["formats"].get(fmt, {}).get("gate", {}).get("passed") for m in manifests)]
    if not usable:
        raise ExportError(f"no format of {', '.join(formats)} that every member has, gated")
    # A format some member lacks is not built; the manifest says which member, as the report shows it.
    unbuilt = {fmt: {"error": "not built: no gated " + fmt + " in member(s) " +
                     ", ".join(f.name for f, m in zip(folders, manifests) if fmt not in m["formats"])}
               for fmt in formats if fmt not in usable}
    for fmt, e in unbuilt.items():
        log.warning("%s: %s", fmt, e["error"])
    data = data or load_fer2013(default_data_path())
    evalset, valset = gate_eval_set(data, quick, seed), subset(data["val"], quick, seed)

    manifest = {
        "name": name or out_dir.name,
        "kind": "ensemble",
        "labels": labels,
        "input": {"crop": crop, "preprocessing": "each member's own (its manifest); faces cut once with the shared crop"},
        "combine": {"rule": "geometric_mean", "mirror": False},
        "members": [{"model": f.name, "sha256": {fmt: m["formats"][fmt]["sha256"] for fmt in usable}}
                    for f, m in zip(folders, manifests)],
        "formats": {fmt: {} for fmt in usable},  # provisional, replaced by the scored ones below
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2))  # provisional: lets the edge runtime load it

    val_probs = {}  # PublicTest through the runtime in usable[0], by mirroring: for the choice and the calibration
    if mirror == "auto":
        for mirrored in (False, True):
            val_probs[mirrored] = ensemble_probs(EnsembleClassifier(out_dir, usable[0], mirror=mirrored), valset.x)
        choice = {"format": usable[0], "split": "PublicTest", "n": len(valset)}
        choice["accuracy_plain"] = float(np.mean(val_probs[False].argmax(1) == valset.y))
        choice["accuracy_mirrored"] = float(np.mean(val_probs[True].argmax(1) == valset.y))
        use_mirror = choice["accuracy_mirrored"] > choice["accuracy_plain"]
        manifest["combine"]["mirror_choice"] = choice
        log.info("mirror: PublicTest %.4f without, %.4f with: %s", choice["accuracy_plain"], choice["accuracy_mirrored"],
                 "on" if use_mirror else "off")
    elif mirror in ("on", "off"):
        use_mirror = mirror == "on"
    else:
        raise ExportError(f"mirror must be auto, on or off, got '{mirror}'")
    manifest["combine"]["mirror"] = use_mirror
    if calibrate:
        if use_mirror not in val_probs:
            val_probs[use_mirror] = ensemble_probs(EnsembleClassifier(out_dir, usable[0], mirror=use_mirror), valset.x)
        manifest["combine"].update(fit_ensemble_bias(val_probs[use_mirror], labels, usable[0], valset, min_recall))
        manifest_path.write_text(json.dumps(manifest, indent=2))  # the formats below are scored with the offsets
    bias = class_bias(manifest["combine"], labels)  # as the runtime reads it: rounded, in the manifest

    reference_formats = {}
    reference_views = []
    for f, m in zip(folders, manifests):
        # A member shipped in int8 only (a big network: its float files would not fit the wheel) stands for
        # itself: it was gated against its Keras model when exported.
        ref = next((r for r in (*REFERENCE_FORMATS, *usable) if m["formats"].get(r, {}).get("gate", {}).get("passed")))
        reference_formats[f.name] = ref
        reference_views += member_views(EmotionClassifier(f, fmt=ref), evalset.x, use_mirror)
    reference_probs = shifted(geometric_mean(reference_views), bias)
    reference_pred = reference_probs.argmax(1)
    manifest["reference"] = {**scored_figures(reference_probs, evalset.y, evalset.votes), "member_formats": reference_formats}

    rejected, manifest["formats"] = {}, {}
    for fmt in usable:
        clf = EnsembleClassifier(out_dir, fmt, mirror=use_mirror)
        probs = ensemble_probs(clf, evalset.x)
        figures = scored_figures(probs, evalset.y, evalset.votes)
        pred = probs.argmax(1)
        singles = {member.path.parent.name: float(np.mean(geometric_mean(member_views(member, evalset.x, use_mirror))
                                                           .argmax(1) == evalset.y)) for member in clf.members}
        best = max(singles, key=singles.get)
        drop = 100 * (manifest["reference"]["accuracy"] - figures["accuracy"])
        passed = drop <= max_drop and (figures["accuracy"] > singles[best] or not require_gain)
        entry = {**figures, "bytes": sum(p.stat().st_size for p in clf.files), "accuracy_drop_pt": round(drop, 3),
                 "agreement_pct": round(100 * float(np.mean(pred == reference_pred)), 3),
                 "members_alone": singles, "predictions_sha256": prediction_digest(pred),
                 "gate": {"max_drop_pt": max_drop, "must_beat_best_member": require_gain, "passed": passed}}
        log.info("%s: PrivateTest %.4f (FER+ %.4f), drop %.2f pt, best member %s %.4f: %s", fmt, figures["accuracy"],
                 figures.get("ferplus", {}).get("accuracy", float("nan")), drop, best, singles[best],
                 "passed" if passed else "FAILED")
        (manifest["formats"] if passed else rejected)[fmt] = entry

    manifest.update({
        "evaluation": {"split": "PrivateTest", "n": int(len(evalset)), "quick": bool(quick), "seed": seed,
                       "predictions": "argmax per image, in the order of the eval set; predictions_sha256 hashes them as int8"},
        "rejected": {**rejected, **unbuilt},
        "tools": tool_versions(),
        "platform": {"machine": platform.machine(), "system": platform.system()},
    })
    if not manifest["formats"]:
        manifest["members"] = []  # nothing passed: the folder must not load as a working model
    manifest_path.write_text(json.dumps(manifest, indent=2))
    if rejected:
        raise GateError("; ".join(
            f"{fmt}: accuracy {100 * v['accuracy']:.2f}% (drop {v['accuracy_drop_pt']:.2f} pt, limit {max_drop}; "
            f"best member alone {100 * max(v['members_alone'].values()):.2f}%)" for fmt, v in rejected.items()))
    return manifest


def main(args) -> int:
    data = load_fer2013(args.data) if args.data else None
    try:
        m = build_ensemble(args.members, args.out, data=data, formats=[f.strip() for f in args.formats.split(",")],
                           mirror=args.mirror, quick=args.quick, max_drop=args.max_drop, calibrate=args.calibrate,
                           min_recall=args.min_recall)
    except ModelError as e:
        raise ExportError(str(e)) from None
    for fmt, v in m["formats"].items():
        print(f"{fmt}: PrivateTest {100 * v['accuracy']:.2f} % (FER+ majority {100 * v['ferplus']['accuracy']:.2f} %), "
              f"members alone {', '.join(f'{k} {100 * a:.2f} %' for k, a in v['members_alone'].items())}"
              if "ferplus" in v else f"{fmt}: PrivateTest {100 * v['accuracy']:.2f} %")
    return 0
