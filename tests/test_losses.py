"""Cross-entropy, Dice, the loss module and class weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetkit.errors import ConfigError
from unetkit.losses import (
    SegmentationLoss,
    class_weights,
    cross_entropy,
    dice_loss,
    load_class_weights,
    pixel_counts,
)

N_CLASSES = 4


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, N_CLASSES, 6, 5, generator=g) * 2
    target = torch.randint(0, N_CLASSES, (2, 6, 5), generator=g)
    return logits, target


def _onehot(target: torch.Tensor) -> torch.Tensor:
    return F.one_hot(target, N_CLASSES).movedim(-1, 1).float()


def test_ce_equals_torch_and_onehot_form(batch) -> None:
    logits, target = batch
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0])
    for kw in ({}, {"weight": weight}, {"label_smoothing": 0.1}, {"weight": weight, "label_smoothing": 0.2}):
        ref = F.cross_entropy(logits, target, **kw)
        assert cross_entropy(logits, target, **kw) == pytest.approx(ref.item(), rel=1e-5)
        assert cross_entropy(logits, _onehot(target), **kw) == pytest.approx(ref.item(), rel=1e-5)
    # Keras-style (N, 1, H, W) masks are accepted
    assert cross_entropy(logits, target.unsqueeze(1)) == pytest.approx(F.cross_entropy(logits, target).item())
    with pytest.raises(ValueError):
        cross_entropy(logits, target[:, :5])


def test_ce_matches_keras_formula_by_hand(batch) -> None:
    logits, target = batch
    # SparseCategoricalCrossentropy(from_logits=True): mean over all pixels of -log softmax[target].
    x = logits.double().numpy()
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    t = target.numpy()
    picked = np.take_along_axis(p, t[:, None], axis=1)[:, 0]
    assert cross_entropy(logits, target).item() == pytest.approx(float(-np.log(picked).mean()), rel=1e-6)


def test_ce_ignore_index(batch) -> None:
    logits, target = batch
    target = target.clone()
    target[0, :3] = 255
    ref = F.cross_entropy(logits, target, ignore_index=255)
    assert cross_entropy(logits, target, ignore_index=255).item() == pytest.approx(ref.item(), rel=1e-6)
    keep = target != 255
    by_hand = -F.log_softmax(logits, 1).movedim(1, -1)[keep].gather(1, target[keep][:, None]).mean()
    assert cross_entropy(logits, target, ignore_index=255).item() == pytest.approx(by_hand.item(), rel=1e-6)
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0])
    for kw in ({"weight": weight}, {"label_smoothing": 0.1}, {"weight": weight, "label_smoothing": 0.2}):
        ref_kw = F.cross_entropy(logits, target, ignore_index=255, **kw)
        got_kw = cross_entropy(logits, target, ignore_index=255, **kw)
        assert got_kw.item() == pytest.approx(ref_kw.item(), rel=1e-5)
    # the one-hot form ignores all-zero rows the same way
    onehot = _onehot(torch.where(keep, target, 0)) * keep.unsqueeze(1)
    assert cross_entropy(logits, onehot).item() == pytest.approx(ref.item(), rel=1e-5)
    # everything ignored: 0, not NaN
    assert cross_entropy(logits, torch.full_like(target, 255), ignore_index=255).item() == 0.0


def test_ce_of_bf16_logits_is_fp32(batch) -> None:
    logits, target = batch
    low = logits.bfloat16().requires_grad_()
    loss = cross_entropy(low, target)
    assert loss.dtype == torch.float32
    exact = F.cross_entropy(low.detach().double(), target).item()
    assert loss.item() == pytest.approx(exact, rel=1e-6)
    # the check has teeth: a loss computed in bf16 is off by far more
    assert abs(F.cross_entropy(low.detach(), target).item() - exact) > 1e-4
    loss.backward()
    assert low.grad is not None and low.grad.dtype == torch.bfloat16


def test_dice_loss_perfect_and_wrong(batch) -> None:
    _, target = batch
    perfect = _onehot(target) * 40 - 20
    assert dice_loss(perfect, target).item() < 1e-3
    wrong = _onehot((target + 1) % N_CLASSES) * 40 - 20
    assert dice_loss(wrong, target).item() > 0.95
    assert dice_loss(perfect, _onehot(target)).item() < 1e-3
    assert dice_loss(wrong, _onehot(target)).item() == pytest.approx(dice_loss(wrong, target).item())


def test_dice_loss_present_classes_and_ignore() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[..., 2:] = 1  # classes 2 and 3 absent
    logits = _onehot(target) * 40 - 20
    assert dice_loss(logits, target).item() < 1e-3
    # leaving absent classes in the mean changes nothing here (they score ~1 with smooth), ...
    assert dice_loss(logits, target, classes_present_only=False).item() < 1e-3
    # ... but a wrong prediction is diluted by them
    wrong = _onehot(1 - target) * 40 - 20
    assert dice_loss(wrong, target).item() > dice_loss(wrong, target, classes_present_only=False).item() + 0.3
    # ignored pixels do not count, even if predicted wrongly
    ignored = target.clone()
    ignored[..., 0] = 255
    half_wrong = logits.clone()
    half_wrong[..., 0] = _onehot(torch.full_like(target[..., 0:1], 3))[..., 0] * 40 - 20
    assert dice_loss(half_wrong, ignored, ignore_index=255).item() < 1e-3
    assert dice_loss(half_wrong, target).item() > 0.05
    assert dice_loss(logits, torch.full_like(target, 255), ignore_index=255).item() == 0.0


@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice"])
def test_segmentation_loss_kinds_and_gradients(batch, kind: str) -> None:
    logits, target = batch
    logits = logits.clone().requires_grad_()
    weight = torch.tensor([1.0, 2.0, 1.0, 0.5])
    loss_fn = SegmentationLoss(kind, n_classes=N_CLASSES, weight=weight, ignore_index=255, dice_weight=0.5)
    loss = loss_fn(logits, target)
    ce = cross_entropy(logits, target, weight=weight).item()
    dice = dice_loss(logits, target).item()
    expected = {"ce": ce, "dice": dice, "ce+dice": ce + 0.5 * dice}[kind]
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert "weight" in dict(loss_fn.named_buffers())


def test_segmentation_loss_rejects_bad_settings(batch) -> None:
    logits, target = batch
    with pytest.raises(ConfigError):
        SegmentationLoss("focal", n_classes=N_CLASSES)
    with pytest.raises(ConfigError):
        SegmentationLoss("ce", n_classes=N_CLASSES, weight=torch.ones(3))
    with pytest.raises(ValueError):
        SegmentationLoss("ce", n_classes=3)(logits, target)


def test_pixel_counts() -> None:
    masks = torch.tensor([[0, 0, 1, 255], [3, 3, 3, 9]])
    assert pixel_counts(masks, 4, ignore_index=255).tolist() == [2, 1, 0, 3]


def test_class_weight_methods() -> None:
    counts = np.array([600, 300, 100, 0])
    inv = class_weights(counts, "inverse")
    assert inv.dtype == torch.float32
    assert inv.tolist() == pytest.approx([1000 / (3 * 600), 1000 / (3 * 300), 1000 / (3 * 100), 0.0])
    assert float((torch.as_tensor(counts) * inv).sum() / counts.sum()) == pytest.approx(1.0)
    med = class_weights(torch.tensor(counts), "median-frequency")
    # frequencies of present classes 0.6, 0.3, 0.1 -> median 0.3
    assert med.tolist() == pytest.approx([0.5, 1.0, 3.0, 0.0])
    even = class_weights([100, 200, 300, 400], "median-frequency")  # median of 0.1..0.4 is 0.25
    assert even.tolist() == pytest.approx([2.5, 1.25, 0.25 / 0.3, 0.625])
    assert class_weights(counts, "none").tolist() == [1.0] * 4
    with pytest.raises(ConfigError):
        class_weights(counts, "sqrt")
    with pytest.raises(ValueError):
        class_weights([0, 0], "inverse")


def _write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "weights.json"
    path.write_text(content)
    return path


def test_load_class_weights(tmp_path: Path) -> None:
    assert load_class_weights(_write(tmp_path, "[1, 2.5, 0]"), 3).tolist() == [1.0, 2.5, 0.0]
    names = ["sky", "road", "car"]
    got = load_class_weights(_write(tmp_path, json.dumps({"car": 4, "sky": 0.5})), 3, names)
    assert got.tolist() == [0.5, 1.0, 4.0]


@pytest.mark.parametrize(
    ("content", "names", "message"),
    [
        ("[1, 2]", None, "2 weights for 3 classes"),
        ("[1, 2, -1]", None, ">= 0"),
        ('[1, 2, "x"]', None, "finite number"),
        ("[1, 2, true]", None, "finite number"),
        ("[0, 0, 0]", None, "every class weight is 0"),
        ("{not json", None, "not valid JSON"),
        ('"heavy"', None, "must hold a list"),
        ('{"sky": 2}', None, "class names are unknown"),
        ('{"boat": 2}', ["sky", "road", "car"], "unknown class"),
    ],
)
def test_load_class_weights_errors(tmp_path: Path, content: str, names, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_class_weights(_write(tmp_path, content), 3, names)
    assert "weights.json" in str(info.value)


def test_load_class_weights_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_class_weights(tmp_path / "nope.json", 3)
