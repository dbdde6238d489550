"""Confusion-matrix metrics against hand-computed values."""
import json

import numpy as np
import pytest

from utils.metrics import ConfusionMatrix, compute_metrics, confusion_matrix, format_metrics_table

# gt/pred pairs: (0,0) (0,1) (1,1) (1,1) (2,0) and one ignored pixel.
GT = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])


def test_confusion_matrix_counts_and_ignore():
    hist = confusion_matrix(PRED, GT, 3)
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])


def test_metrics_hand_computed():
    m = compute_metrics(confusion_matrix(PRED, GT, 3), ["a", "b", "c"])
    ious = [c["iou"] for c in m["per_class"]]
    np.testing.assert_allclose(ious, [100 / 3, 200 / 3, 0.0])
    np.testing.assert_allclose([c["acc"] for c in m["per_class"]], [50, 100, 0])
    np.testing.assert_allclose([c["f1"] for c in m["per_class"]], [50, 80, 0])
    assert m["miou"] == pytest.approx(100 / 3)
    assert m["miou_present"] == pytest.approx(100 / 3)
    assert m["macc"] == pytest.approx(50)
    assert m["mf1"] == pytest.approx(130 / 3)
    assert m["pixel_acc"] == pytest.approx(60)
    assert m["fwiou"] == pytest.approx(40)  # 0.4 * 1/3 + 0.4 * 2/3 + 0.2 * 0
    assert m["labelled_pixels"] == 5
    assert [c["class"] for c in m["per_class"]] == ["a", "b", "c"]


def test_class_absent_from_gt_and_pred():
    m = compute_metrics(confusion_matrix(PRED, GT, 4))
    assert m["per_class"][3]["iou"] is None and m["per_class"][3]["acc"] is None
    assert m["miou"] == pytest.approx(25)  # (1/3 + 2/3 + 0 + 0) / 4: absent counts as 0
    assert m["miou_present"] == pytest.approx(100 / 3)  # over the 3 present classes
    assert m["macc"] == pytest.approx(37.5)
    assert m["macc_present"] == pytest.approx(50)
    assert m["num_present"] == 3


def test_class_only_predicted():
    gt, pred = np.array([0, 0, 1]), np.array([0, 2, 1])
    m = compute_metrics(confusion_matrix(pred, gt, 3))
    c2 = m["per_class"][2]
    assert c2["iou"] == 0.0 and c2["acc"] is None and c2["pred_pixels"] == 1
    assert m["miou"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert m["macc_present"] == pytest.approx(75)


def test_empty_matrix():
    m = compute_metrics(np.zeros((3, 3), np.int64))
    assert m["miou"] is None and m["pixel_acc"] is None and m["labelled_pixels"] == 0
    assert all(c["iou"] is None for c in m["per_class"])
    # all pixels ignored gives the same
    assert confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 255), 3).sum() == 0


def test_accumulate_merge_and_json():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT).update(PRED[None], GT[None])
    other = ConfusionMatrix(3).update(PRED, GT)
    cm.merge(other).merge(other.hist)
    np.testing.assert_array_equal(cm.hist, 4 * confusion_matrix(PRED, GT, 3))
    m = cm.compute(["wall", "floor", "box"])
    json.dumps(m, allow_nan=False)
    table = format_metrics_table(m)
    for text in ("wall", "floor", "box", "mIoU (all classes", "33.33", "Pixel accuracy"):
        assert text in table
    cm.reset()
    assert cm.hist.sum() == 0


@pytest.mark.parametrize("pred, gt, match", [
    (np.array([0, 3]), np.array([0, 1]), "prediction"),
    (np.array([0, -1]), np.array([0, 1]), "prediction"),
    (np.array([0, 1]), np.array([0, 3]), "label"),
    (np.array([0, 1]), np.array([0, 254]), "label"),
    (np.array([0.0, 1.0]), np.array([0, 1]), "integer"),
    (np.zeros((2, 3, 4), int), np.zeros((2, 4), int), "shape"),
])
def test_bad_inputs_fail_loudly(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, gt, 3)
