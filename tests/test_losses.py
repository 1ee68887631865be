"""Cross-entropy, Dice, the loss module and class weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetkit.errors import ConfigError, DataError
from unetkit.losses import (
    LOSS_KINDS,
    SegmentationLoss,
    class_weights,
    cross_entropy,
    dice_loss,
    focal_loss,
    load_class_weights,
    lovasz_softmax,
    ohem_cross_entropy,
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
        SegmentationLoss("hinge", n_classes=N_CLASSES)
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
    root = class_weights(counts, "sqrt-median-frequency")
    assert root.tolist() == pytest.approx([0.5**0.5, 1.0, 3.0**0.5, 0.0])
    even = class_weights([100, 200, 300, 400], "median-frequency")  # median of 0.1..0.4 is 0.25
    assert even.tolist() == pytest.approx([2.5, 1.25, 0.25 / 0.3, 0.625])
    assert class_weights(counts, "none").tolist() == [1.0] * 4
    with pytest.raises(ConfigError):
        class_weights(counts, "sqrt")
    with pytest.raises(DataError, match="no pixel of any class.*--class-weights none"):
        class_weights([0, 0], "sqrt-median-frequency")  # the strong recipe's default on masks that are all ignored


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


def _two_class_logits(p1: list[float]) -> torch.Tensor:
    """(1, 2, 1, P) logits whose softmax gives class 1 probability ``p1`` per pixel."""
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))]).float().view(1, 2, 1, -1)


P_TRUE = [0.1, 0.2, 0.3, 0.4, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95]  # probability of the true class (1)


def test_ohem_keeps_the_hard_pixels_and_at_least_min_kept() -> None:
    logits, target = _two_class_logits(P_TRUE), torch.ones(1, 1, len(P_TRUE), dtype=torch.long)
    nll = -torch.log(torch.tensor(P_TRUE))
    # thresh 0.5, min_kept 3: the 4th smallest probability (0.4) < 0.5, so the threshold stays 0.5
    loss = ohem_cross_entropy(logits, target, thresh=0.5, min_kept=3)
    assert loss.item() == pytest.approx(nll[:4].mean().item(), rel=1e-5)
    # min_kept 7: the threshold rises to the 8th smallest probability (0.8): 7 pixels kept
    loss = ohem_cross_entropy(logits, target, thresh=0.5, min_kept=7)
    assert loss.item() == pytest.approx(nll[:7].mean().item(), rel=1e-5)
    # no threshold: the min_kept pixels of highest loss
    loss = ohem_cross_entropy(logits, target, thresh=None, min_kept=2)
    assert loss.item() == pytest.approx(nll[:2].mean().item(), rel=1e-5)
    # an ignored pixel is never kept, however hard
    ignored = target.clone()
    ignored[..., 0] = 255
    loss = ohem_cross_entropy(logits, ignored, thresh=0.5, min_kept=3, ignore_index=255)
    assert loss.item() == pytest.approx(nll[1:4].mean().item(), rel=1e-5)
    # min_kept is per image: two copies of the image keep 2 x 7 pixels
    two = ohem_cross_entropy(logits.repeat(2, 1, 1, 1), target.repeat(2, 1, 1), thresh=0.5, min_kept=7)
    assert two.item() == pytest.approx(nll[:7].mean().item(), rel=1e-5)
    # everything ignored: 0, not NaN
    assert ohem_cross_entropy(logits, torch.full_like(target, 255), ignore_index=255).item() == 0.0


def test_ohem_with_everything_kept_is_cross_entropy(batch) -> None:
    logits, target = batch
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0])
    got = ohem_cross_entropy(logits, target, thresh=1.01, min_kept=0, weight=weight, label_smoothing=0.1)
    want = cross_entropy(logits, target, weight=weight, label_smoothing=0.1)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_focal_loss_hand_computed(batch) -> None:
    logits, target = _two_class_logits(P_TRUE), torch.ones(1, 1, len(P_TRUE), dtype=torch.long)
    p = torch.tensor(P_TRUE)
    expected = (-((1 - p) ** 2) * torch.log(p)).mean()
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    logits, target = batch
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(cross_entropy(logits, target).item(), rel=1e-5)
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0])
    assert focal_loss(logits, target, gamma=0.0, weight=weight).item() == pytest.approx(
        cross_entropy(logits, target, weight=weight).item(), rel=1e-5
    )


def test_lovasz_softmax_hand_computed() -> None:
    # 3 pixels, labels [1, 0, 1], class-1 probabilities [0.8, 0.4, 0.3]. Class 1: errors sorted
    # [0.7, 0.4, 0.2] with labels [1, 0, 1]: Jaccard losses [1/2, 2/3, 1], gradient [1/2, 1/6, 1/3],
    # loss 0.35 + 0.4/6 + 0.2/3 = 29/60. Class 0: errors sorted [0.7, 0.4, 0.2] with labels [0, 1, 0]:
    # Jaccard losses [1/2, 1, 1], gradient [1/2, 1/2, 0], loss 0.35 + 0.2 = 33/60. Mean 31/60.
    logits = _two_class_logits([0.8, 0.4, 0.3])
    target = torch.tensor([[[1, 0, 1]]])
    assert lovasz_softmax(logits, target).item() == pytest.approx(31 / 60, rel=1e-5)
    # an ignored pixel drops out: pixels 0 and 2 (both class 1) alone; class 0 is then absent
    ignored = torch.tensor([[[1, 255, 1]]])
    # class 1 errors sorted [0.7, 0.2], labels [1, 1]: Jaccard losses [1/2, 1], gradient [1/2, 1/2]
    assert lovasz_softmax(logits, ignored, ignore_index=255).item() == pytest.approx(0.45, rel=1e-5)


def test_lovasz_of_hard_predictions_is_one_minus_iou() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)
    pred = torch.where(torch.rand(2, 5, 6, generator=g) < 0.7, target, torch.randint(0, 3, (2, 5, 6), generator=g))
    logits = F.one_hot(pred, 3).movedim(-1, 1).float() * 60  # probabilities 0 or 1
    ious = []
    for c in range(3):
        inter = ((pred == c) & (target == c)).sum().item()
        union = ((pred == c) | (target == c)).sum().item()
        ious.append(inter / union)
    assert lovasz_softmax(logits, target).item() == pytest.approx(1 - sum(ious) / 3, abs=1e-5)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_every_loss_kind_trains(batch, kind: str) -> None:
    logits, target = batch
    logits = logits.clone().requires_grad_()
    loss_fn = SegmentationLoss(kind, n_classes=N_CLASSES, ignore_index=255, label_smoothing=0.1, ohem_min_kept=5)
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and logits.grad.abs().sum() > 0


def test_label_smoothing_and_sum_of_terms(batch) -> None:
    logits, target = batch
    smooth = SegmentationLoss("ce", n_classes=N_CLASSES, label_smoothing=0.2)(logits, target)
    assert smooth.item() == pytest.approx(cross_entropy(logits, target, label_smoothing=0.2).item(), rel=1e-6)
    logp = F.log_softmax(logits, dim=1)  # smoothing: (1 - e) * CE + e * the mean over classes of -log p
    by_hand = 0.8 * cross_entropy(logits, target) + 0.2 * (-logp.mean(dim=1)).mean()
    assert smooth.item() == pytest.approx(by_hand.item(), rel=1e-5)
    both = SegmentationLoss("focal+lovasz", n_classes=N_CLASSES, dice_weight=0.5, focal_gamma=1.0)(logits, target)
    want = focal_loss(logits, target, gamma=1.0) + 0.5 * lovasz_softmax(logits, target)
    assert both.item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="smoothing"):
        SegmentationLoss("ce", n_classes=N_CLASSES, label_smoothing=1.0)
