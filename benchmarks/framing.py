"""Where does a FER-2013 face sit relative to a YuNet box? The measurement behind the runtime's crop.

    python -m feredge.benchmarks.framing --face-model PATH/face_detection_yunet.onnx

FER-2013 faces are 48x48 frames. Each PublicTest face (the selection split) is upscaled to 160 px,
padded by 80 px of edge replication so YuNet sees the whole head, and detected; the best box (and its
eye landmarks) is expressed in units of the FER frame. The crop that reproduces the frame from a box is
then: a square of side `scale` x a basis (the box's width, height or their mean: whichever varies least
relative to the frame; the spreads are recorded), centred `offset` (fractions of the box's width and
height) from the box centre. Medians make the fit robust to the few odd detections.

Writes benchmarks/results/framing.json; edge/preprocess.py's DEFAULT_CROP must equal its "crop"
(a test checks it), and every export records the crop in the manifest's input spec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from feredge.benchmarks import RESULTS_DIR
from feredge.benchmarks.e2e import e2e_faces, e2e_metrics
from feredge.edge.classifier import EmotionClassifier
from feredge.edge.faces import FaceDetector, find_yunet
from feredge.edge.preprocess import CROP_BASES, crop_basis, square_crop, to_gray
from feredge.train.data import default_data_path, load_fer2013

RESULTS = RESULTS_DIR / "framing.json"
UPSCALE, PAD = 160, 80  # the FER frame as YuNet sees it: 160 px face inside 320 px of context


def detect_in_frames(faces_gray: np.ndarray, face_model) -> np.ndarray:
    """Per 48x48 face: [found, x, y, w, h, right-eye x, y, left-eye x, y, score] in FER-frame units
    (0..1 across the frame); NaN where YuNet finds nothing."""

    side = UPSCALE + 2 * PAD
    yunet = cv2.FaceDetectorYN.create(str(find_yunet(face_model)), "", (side, side), 0.6, 0.3, 5)
    out = np.full((len(faces_gray), 10), np.nan)
    for i, face in enumerate(faces_gray):
        big = cv2.resize(face, (UPSCALE, UPSCALE), interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
        _, found = yunet.detect(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
        if found is None or not len(found):
            out[i, 0] = 0
            continue
        f = found[np.argmax(found[:, 14])]
        xy = (f[[0, 1, 4, 5, 6, 7]] - PAD) / UPSCALE
        out[i] = [1, xy[0], xy[1], f[2] / UPSCALE, f[3] / UPSCALE, *xy[2:], f[14]]
    return out


def fit_crop(det: np.ndarray) -> dict:
    """The square crop that best reproduces the FER frame from a box: side = scale x basis (the box's
    width, height or their mean, whichever predicts the frame's side most consistently), centre = box
    centre + offset x (w, h); plus the statistics it rests on."""
    ok = det[:, 0] == 1
    x, y, w, h = det[ok, 1], det[ok, 2], det[ok, 3], det[ok, 4]
    cx, cy = x + w / 2, y + h / 2
    eye_dx, eye_dy = det[ok, 7] - det[ok, 5], det[ok, 8] - det[ok, 6]
    roll = np.degrees(np.arctan2(eye_dy, eye_dx))

    def spread(v):  # interquartile range relative to the median: how consistent a basis is
        q1, q2, q3 = np.percentile(v, [25, 50, 75])
        return float((q3 - q1) / q2)

    bases = {name: crop_basis(name, w, h) for name in CROP_BASES}
    spreads = {name: round(spread(1 / b), 3) for name, b in bases.items()}
    basis = min(spreads, key=spreads.get)
    return {
        "crop": {"basis": basis, "scale": round(float(np.median(1 / bases[basis])), 3),
                 "offset": [round(float(np.median((0.5 - cx) / w)), 3), round(float(np.median((0.5 - cy) / h)), 3)]},
        "found": int(ok.sum()), "of": int(len(det)), "found_pct": round(100 * float(ok.mean()), 2),
        "median_box": {"w": round(float(np.median(w)), 3), "h": round(float(np.median(h)), 3),
                       "centre": [round(float(np.median(cx)), 3), round(float(np.median(cy)), 3)]},
        "relative_spread_of_frame_over_basis": spreads,
        "eye_roll_deg": {"median": round(float(np.median(roll)), 2),
                         "p10_p90": [round(float(v), 2) for v in np.percentile(roll, [10, 90])]},
    }


def compare_crops(fitted: dict, model, face_model, split, seed: int = 0) -> dict:
    """End-to-end accuracy (benchmarks/e2e.py) of one classifier under candidate crops: the fitted
    crop, the same with eye-levelling, and the runtime's earlier guess (1.2 x the box's longer side)."""

    variants = {"fitted": (fitted, False), "fitted + eye levelling": (fitted, True),
                "earlier: 1.2 x longer side": ({"basis": "max", "scale": 1.2, "offset": [0, 0]}, False)}
    crops = {name: [] for name in variants}
    for frame, best in e2e_faces(FaceDetector(face_model), split.x, seed):
        gray = to_gray(frame)
        for name, (spec, level) in variants.items():
            crops[name].append(None if best is None else
                               square_crop(gray, best.box, spec, best.roll_degrees() if level else 0.0))
    clf = EmotionClassifier(model)
    return {name: e2e_metrics(clf.predict_faces, c, split.y) for name, c in crops.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--face-model", help="YuNet file (or FEREDGE_FACE_MODEL)")
    p.add_argument("--data", help="FER-2013 zip, folder or csv (default: $FER2013_ZIP or ../shared)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--compare", metavar="MODEL", help="also measure end-to-end PublicTest accuracy of MODEL "
                   "under the fitted crop, with eye levelling, and the earlier crop (written as 'comparison')")
    args = p.parse_args(argv)

    data = load_fer2013(args.data or default_data_path())
    if args.compare:  # keeps the fit in --out; adds the comparison to it
        if not Path(args.out).exists():
            raise SystemExit(f"framing: no fit in {args.out}: run without --compare first")
        result = json.loads(Path(args.out).read_text())
        result["comparison"] = {"model": str(args.compare), "split": "PublicTest",
                                **compare_crops(result["crop"], args.compare, args.face_model, data["val"])}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["comparison"], indent=2))
        return 0
    result = {"method": f"PublicTest faces upscaled to {UPSCALE} px, padded {PAD} px by edge replication, "
                        "YuNet 2023mar (score >= 0.6), best box per face; medians",
              **fit_crop(detect_in_frames(data["val"].x, args.face_model))}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
