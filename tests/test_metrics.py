"""Confusion-matrix metrics and boundary F1 against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from unetkit.metrics import (
    BoundaryF1,
    ConfusionMatrix,
    _bincount_fixed,
    _scatter_count,
    boundary_f1,
    metrics_from_matrix,
)

# 3 classes, 8 pixels. Truth row / prediction column:
TARGET = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 2]])
PRED = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 0]])
EXPECTED = np.array(
    [
        [2, 1, 0],  # truth 0: two right, one called 1
        [0, 2, 1],  # truth 1: two right, one called 2
        [1, 0, 1],  # truth 2: one right, one called 0
    ]
)


def _cm(pred: torch.Tensor, target: torch.Tensor, n: int = 3, **kw) -> ConfusionMatrix:
    cm = ConfusionMatrix(n, **kw)
    cm.update(pred, target)
    return cm


def test_confusion_matrix_hand_computed() -> None:
    cm = _cm(PRED, TARGET)
    assert cm.matrix.dtype == torch.int64 and cm.matrix.shape == (3, 3)
    np.testing.assert_array_equal(cm.matrix.numpy(), EXPECTED)
    m = cm.compute()
    assert m.pixel_accuracy == pytest.approx(5 / 8)
    # IoU = tp / (support + predicted - tp): class 0: 2/(3+3-2), class 1: 2/(3+3-2), class 2: 1/(2+2-1)
    assert m.iou == pytest.approx([0.5, 0.5, 1 / 3])
    assert m.dice == pytest.approx([2 * 2 / 6, 2 * 2 / 6, 2 * 1 / 4])
    assert m.support == [3, 3, 2]
    assert m.mean_iou == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert m.absent == []


def test_update_from_logits_takes_argmax() -> None:
    logits = torch.nn.functional.one_hot(PRED, 3).permute(2, 0, 1).unsqueeze(0).float() * 5
    cm = ConfusionMatrix(3)
    cm.update_from_logits(logits, TARGET.unsqueeze(0))
    np.testing.assert_array_equal(cm.matrix.numpy(), EXPECTED)


def test_ignore_index_is_excluded() -> None:
    target = TARGET.clone()
    target[0, 0] = 255  # was a correct class-0 pixel
    cm = _cm(PRED, target, ignore_index=255)
    expected = EXPECTED.copy()
    expected[0, 0] -= 1
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    assert int(cm.ignored) == 1 and int(cm.invalid) == 0
    assert cm.compute().pixel_accuracy == pytest.approx(4 / 7)


def test_out_of_range_targets_are_excluded_not_fatal() -> None:
    target = TARGET.clone()
    target[0, 0], target[1, 3] = 7, -1
    cm = _cm(PRED, target, ignore_index=255)
    expected = EXPECTED.copy()
    expected[0, 0] -= 1
    expected[2, 0] -= 1
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    assert int(cm.invalid) == 2 and int(cm.ignored) == 0


def test_accumulating_batches_equals_one_shot() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 9, 11), generator=g)
    pred = torch.randint(0, 5, (6, 9, 11), generator=g)
    target[target == 4] = 255
    one = _cm(pred, target, 5, ignore_index=255)
    acc = ConfusionMatrix(5, ignore_index=255)
    for i in range(0, 6, 2):
        acc.update(pred[i : i + 2], target[i : i + 2])
    assert torch.equal(acc.matrix, one.matrix)
    merged = _cm(pred[:3], target[:3], 5, ignore_index=255)
    merged += _cm(pred[3:], target[3:], 5, ignore_index=255)
    assert torch.equal(merged.matrix, one.matrix)
    merged.all_reduce()  # not distributed: a no-op
    assert torch.equal(merged.matrix, one.matrix)
    # numpy reference for the whole thing
    keep = target != 255
    ref = np.zeros((5, 5), dtype=np.int64)
    np.add.at(ref, (target[keep].numpy(), pred[keep].numpy()), 1)
    np.testing.assert_array_equal(one.matrix.numpy(), ref)
    one.reset()
    assert int(one.matrix.sum()) == 0


def test_merge_rejects_mismatch() -> None:
    with pytest.raises(ValueError):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))
    with pytest.raises(ValueError):
        ConfusionMatrix(3).update(PRED, TARGET.reshape(-1))


def test_scatter_counting_path_matches_bincount() -> None:
    ids = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(1))
    # The GPU path (a sync-free scatter-add) must give bincount's answer; run it on CPU to check.
    assert torch.equal(_scatter_count(ids, 12), torch.bincount(ids, minlength=12))
    assert torch.equal(_bincount_fixed(ids, 12), torch.bincount(ids, minlength=12))


def test_absent_class_rule() -> None:
    # 4 classes: class 2 absent everywhere, class 3 predicted but never true.
    target = torch.tensor([0, 0, 1, 1, 1])
    pred = torch.tensor([0, 0, 1, 1, 3])
    m = _cm(pred, target, 4).compute()
    assert math.isnan(m.iou[2]) and math.isnan(m.dice[2])
    assert m.iou[3] == 0.0 and m.dice[3] == 0.0
    assert m.absent == [2]
    assert m.mean_iou == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert m.mean_dice == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    table = m.format_table(["sky", "road", "car", "bike"])
    assert "car" in table.splitlines()[-2] and "absent from both" in table
    assert "bike" in table.splitlines()[-1] and "IoU 0" in table
    assert "over 3 of 4 classes" in table


def test_nothing_counted_gives_zeros_not_nan() -> None:
    m = _cm(torch.tensor([0, 1]), torch.tensor([255, 255]), 2, ignore_index=255).compute()
    assert m.pixel_accuracy == 0.0 and m.mean_iou == 0.0 and m.mean_dice == 0.0
    assert m.absent == [0, 1]
    json.dumps(m.to_dict(), allow_nan=False)
    assert "no pixels were counted" in m.format_table()


def test_to_dict_keys_and_strict_json() -> None:
    m = _cm(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), 3).compute()
    d = m.to_dict(["a", "b", "c"])
    assert set(d) == {
        "pixel_accuracy",
        "mean_accuracy",
        "mean_iou",
        "fw_iou",
        "mean_dice",
        "per_class",
        "absent_classes",
    }
    row_keys = {"name", "iou", "dice", "precision", "recall", "accuracy", "support", "predicted"}
    assert [set(row) for row in d["per_class"]] == [row_keys] * 3
    assert d["per_class"][2] == {
        "name": "c",
        "iou": None,
        "dice": None,
        "precision": None,
        "recall": None,
        "accuracy": None,
        "support": 0,
        "predicted": 0,
    }
    assert d["absent_classes"] == ["c"]
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert m.to_dict()["per_class"][0]["name"] == "class_0"
    with pytest.raises(ValueError):
        m.to_dict(["a"])


def test_dice_iou_relation_per_class() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 6, (4, 16, 16), generator=g)
    noise = torch.randint(0, 6, (4, 16, 16), generator=g)
    pred = torch.where(torch.rand(4, 16, 16, generator=g) < 0.6, target, noise)
    m = _cm(pred, target, 6).compute()
    for iou, dice in zip(m.iou, m.dice, strict=True):
        assert dice == pytest.approx(2 * iou / (1 + iou))
    table = m.format_table()
    assert len(table.splitlines()) >= 6 + 4 and "class_5" in table


def _halves(edge: int, h: int = 12, w: int = 20) -> torch.Tensor:
    """Class 0 left of column ``edge``, class 1 from it on; shape (1, h, w)."""
    mask = torch.zeros(1, h, w, dtype=torch.long)
    mask[..., edge:] = 1
    return mask


def test_boundary_f1_identical_is_one() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 4, (2, 10, 10), generator=g)
    assert boundary_f1(mask, mask, 4) == 1.0
    assert boundary_f1(_halves(10), _halves(10), 2, tolerance=0) == 1.0


@pytest.mark.parametrize("shift", [1, 2])
def test_boundary_f1_within_tolerance_is_one(shift: int) -> None:
    assert boundary_f1(_halves(10 + shift), _halves(10), 2, tolerance=2) == 1.0
    assert boundary_f1(_halves(10 - shift), _halves(10), 2, tolerance=2, connectivity=8) == 1.0


def test_boundary_f1_beyond_tolerance_drops() -> None:
    assert boundary_f1(_halves(13), _halves(10), 2, tolerance=2) == 0.0
    assert boundary_f1(_halves(13), _halves(10), 2, tolerance=3) == 1.0
    # a second, correctly placed edge keeps the score between 0 and 1
    target = torch.cat([_halves(10), _halves(4)], dim=0)
    pred = torch.cat([_halves(15), _halves(4)], dim=0)
    assert 0.0 < boundary_f1(pred, target, 2) < 1.0


def test_boundary_f1_matches_same_class_only() -> None:
    # Truth: 0|1 edge at column 10; prediction: 2|1 edge at the same place. The class-1 side matches,
    # the left side does not (class 2 predicted where the true boundary is class 0).
    target = _halves(10)
    pred = target.clone()
    pred[pred == 0] = 2
    f1 = boundary_f1(pred, target, 3)
    assert f1 == pytest.approx(0.5)


def test_boundary_f1_ignores_void_pixels_and_accumulates() -> None:
    target = _halves(10)
    target[..., 8:12] = 255  # a void band over the edge: no true boundary left
    pred = _halves(10)  # its edge lies inside the void band
    assert boundary_f1(pred, target, 2, ignore_index=255) == 1.0
    acc = BoundaryF1(2, tolerance=2)
    acc.update(_halves(10)[0], _halves(10)[0])
    acc.update(_halves(16), _halves(10))
    assert acc.compute() == pytest.approx(0.5)
    assert acc.per_class() == pytest.approx([0.5, 0.5])
    acc.reset()
    assert acc.compute() == 1.0 and all(math.isnan(v) for v in acc.per_class())


# 5 classes, 12 pixels: class 1 predicted once but never true, class 3 absent everywhere, class 4 true
# twice but never predicted.
FIELD = np.array(
    [
        [3, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [2, 0, 4, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0],
    ]
)


def _pairs_of(matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and target pixels that produce ``matrix``."""
    truth, pred = [], []
    for t, p in np.argwhere(matrix > 0):
        truth += [t] * int(matrix[t, p])
        pred += [p] * int(matrix[t, p])
    return torch.tensor(pred), torch.tensor(truth)


def test_field_metrics_hand_computed_with_absent_classes() -> None:
    pred, target = _pairs_of(FIELD)
    m = _cm(pred, target, 5).compute()
    np.testing.assert_array_equal(m.matrix, FIELD)
    nan = math.nan
    # support [4, 0, 6, 0, 2], predicted [6, 1, 5, 0, 0], tp [3, 0, 4, 0, 0], 12 pixels
    assert m.pixel_accuracy == pytest.approx(7 / 12)
    assert m.iou == pytest.approx([3 / 7, 0.0, 4 / 7, nan, 0.0], nan_ok=True)
    assert m.dice == pytest.approx([6 / 10, 0.0, 8 / 11, nan, 0.0], nan_ok=True)
    assert m.recall == pytest.approx([3 / 4, nan, 4 / 6, nan, 0.0], nan_ok=True)
    assert m.accuracy == pytest.approx(m.recall, nan_ok=True)
    # class 1: predicted once, wrong (0); class 4: in the truth, never predicted (0); class 3: absent (NaN)
    assert m.precision == pytest.approx([3 / 6, 0.0, 4 / 5, nan, 0.0], nan_ok=True)
    assert m.mean_accuracy == pytest.approx((3 / 4 + 4 / 6 + 0.0) / 3)  # over classes with true pixels
    assert m.mean_iou == pytest.approx((3 / 7 + 0 + 4 / 7 + 0) / 4)  # class 1 counts, class 3 does not
    assert m.fw_iou == pytest.approx(4 / 12 * 3 / 7 + 6 / 12 * 4 / 7 + 2 / 12 * 0.0)
    assert m.absent == [3]
    assert metrics_from_matrix(FIELD).to_dict() == m.to_dict()  # the same formulas from a matrix alone


def test_field_metrics_in_json_and_table() -> None:
    m = metrics_from_matrix(FIELD)
    names = ["road", "sky", "car", "pole", "sign"]
    d = m.to_dict(names)
    assert d["mean_accuracy"] == pytest.approx(m.mean_accuracy) and d["fw_iou"] == pytest.approx(m.fw_iou)
    assert d["per_class"][4]["recall"] == 0.0 and d["per_class"][4]["precision"] == 0.0
    assert d["per_class"][1]["recall"] is None and d["per_class"][1]["predicted"] == 1
    assert d["per_class"][0]["accuracy"] == pytest.approx(0.75)
    json.dumps(d, allow_nan=False)
    table = m.format_table(names)
    assert "Prec" in table and "Recall" in table
    assert f"mAcc (class average)   {m.mean_accuracy:.4f}" in table
    assert f"fwIoU                  {m.fw_iou:.4f}" in table
    with pytest.raises(ValueError, match="square"):
        metrics_from_matrix(np.zeros((2, 3)))
