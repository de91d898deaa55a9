import json

import numpy as np
import pytest

from feredge.train.evaluate import classification_metrics, plot_confusion


def test_metrics_match_hand_computed_values():
    # 3 classes; confusion (rows true): [[2,1,0],[0,1,1],[0,0,1]]
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, n_classes=3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision: c0 2/2, c1 1/2, c2 1/2; recall: c0 2/3, c1 1/2, c2 1/1
    pc = m["per_class"]
    assert [pc[k]["precision"] for k in "012"] == pytest.approx([1.0, 0.5, 0.5])
    assert [pc[k]["recall"] for k in "012"] == pytest.approx([2 / 3, 0.5, 1.0])
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
    assert [pc[k]["f1"] for k in "012"] == pytest.approx(f1)
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["macro_precision"] == pytest.approx(2 / 3)
    assert [pc[k]["support"] for k in "012"] == [3, 2, 1]


def test_class_never_predicted_has_zero_precision_not_nan():
    m = classification_metrics([0, 1, 1], [0, 0, 0], n_classes=2)
    assert m["per_class"]["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    json.dumps(m)  # JSON-safe


def test_confusion_png_is_written(tmp_path):
    cm = np.eye(7, dtype=int) * 5
    plot_confusion(cm, tmp_path / "cm.png", "test")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
