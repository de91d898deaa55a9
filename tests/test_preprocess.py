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


def test_square_crop_is_square_with_margin_and_padded_at_edges():
    img = np.arange(100 * 200, dtype=np.uint32).reshape(100, 200).astype(np.uint8)
    crop = square_crop(img, (50, 20, 40, 60), margin=0.1)
    assert crop.shape == (72, 72)
    edge = square_crop(img, (0, 0, 50, 50), margin=0.2)  # sticks out top-left: replicated border
    assert edge.shape == (70, 70) and edge[0, 0] == img[0, 0]


def test_to_gray_rejects_odd_shapes():
    with pytest.raises(ValueError):
        to_gray(np.zeros((4, 4, 2), np.uint8))
