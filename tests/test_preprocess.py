import numpy as np
import pytest

from feredge.edge.preprocess import preprocess_faces, square_crop, to_gray


def test_fast_path_equals_general_path():
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 48, 48), dtype=np.uint8)
    a = preprocess_faces(faces, 48)
    b = preprocess_faces(list(faces), 48)
    assert a.shape == (3, 48, 48, 1) and a.dtype == np.float32
    assert np.array_equal(a, b) and np.array_equal(a[..., 0], faces)


def test_bgr_resize_and_channel_replication():
    import cv2

    bgr = np.random.default_rng(1).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    out = preprocess_faces([bgr], 96, channels=3)
    want = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (96, 96), interpolation=cv2.INTER_AREA)
    assert out.shape == (1, 96, 96, 3)
    assert np.array_equal(out[0, :, :, 0], want) and np.array_equal(out[0, :, :, 2], want)
    with pytest.raises(ValueError):
        preprocess_faces([bgr], 48, channels=2)


def test_square_crop_follows_the_crop_spec_and_pads_at_edges():
    img = np.arange(100 * 200, dtype=np.uint32).reshape(100, 200).astype(np.uint8)
    crop = square_crop(img, (50, 20, 40, 60), {"basis": "width", "scale": 1.5, "offset": [0, 0]})
    assert crop.shape == (60, 60) and crop[0, 0] == img[20, 40]  # side 1.5 x 40, centred on (70, 50)
    tall = square_crop(img, (50, 20, 40, 60), {"basis": "height", "scale": 1.0, "offset": [0.25, -0.1]})
    assert tall.shape == (60, 60) and tall[0, 0] == img[14, 50]  # centre moved by (+10, -6)
    edge = square_crop(img, (0, 0, 50, 50), {"basis": "mean", "scale": 1.4, "offset": [0, 0]})
    assert edge.shape == (70, 70) and edge[0, 0] == img[0, 0]  # sticks out top-left: replicated border
    with pytest.raises(ValueError, match="crop basis"):
        square_crop(img, (0, 0, 10, 10), {"basis": "diagonal", "scale": 1, "offset": [0, 0]})


def test_roll_correction_levels_the_eyes():
    import cv2

    from feredge.edge.faces import FaceBox

    img = np.zeros((200, 200), np.uint8)
    right_eye, left_eye = (80, 90), (120, 110)  # the subject's left eye lower: rolled about 26.6 degrees
    for x, y in (right_eye, left_eye):
        cv2.circle(img, (x, y), 4, 255, -1)
    face = FaceBox((60, 60, 80, 100), 0.9, (right_eye, left_eye))
    assert face.roll_degrees() == pytest.approx(26.57, abs=0.01)
    crop = square_crop(img, face.box, {"basis": "width", "scale": 1.0, "offset": [0, 0]}, face.roll_degrees())
    ys, xs = np.nonzero(crop > 128)
    left, right = ys[xs < crop.shape[1] / 2].mean(), ys[xs >= crop.shape[1] / 2].mean()
    assert abs(left - right) < 1.0  # level after rotation
    assert FaceBox((0, 0, 1, 1), 1.0).roll_degrees() == 0.0  # Haar boxes have no eyes: no rotation


def test_default_crop_is_the_committed_measurement():
    import json
    from pathlib import Path

    from feredge.edge.preprocess import DEFAULT_CROP

    measured = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "framing.json").read_text())
    assert {k: v for k, v in DEFAULT_CROP.items() if k != "align"} == measured["crop"]


def test_crop_fit_recovers_a_known_framing():
    from feredge.benchmarks.framing import fit_crop

    rng = np.random.default_rng(0)
    n = 400
    w = 0.8 * np.exp(rng.normal(0, 0.05, n))  # width tracks the frame closely, height loosely
    h = 0.95 * np.exp(rng.normal(0, 0.2, n))
    cx, cy = 0.5 - 0.02 * w, 0.5 + 0.01 * h  # the frame centre sits at offset (+0.02, -0.01)
    det = np.column_stack([np.ones(n), cx - w / 2, cy - h / 2, w, h, cx - 0.2, cy - 0.1, cx + 0.2, cy - 0.1, np.ones(n)])
    det = np.vstack([det, np.full((20, 10), np.nan)])
    det[-20:, 0] = 0
    fit = fit_crop(det)
    assert fit["crop"]["basis"] == "width" and fit["crop"]["scale"] == pytest.approx(1 / 0.8, abs=0.01)
    assert fit["crop"]["offset"] == pytest.approx([0.02, -0.01], abs=0.002)
    assert fit["found"] == n and fit["of"] == n + 20 and fit["eye_roll_deg"]["median"] == pytest.approx(0, abs=0.01)


def test_to_gray_rejects_odd_shapes():
    with pytest.raises(ValueError):
        to_gray(np.zeros((4, 4, 2), np.uint8))
