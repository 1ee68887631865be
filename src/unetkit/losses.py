"""Training losses: the seed's cross-entropy from logits, soft Dice, their sum, and class weights.

The seed compiles with ``SparseCategoricalCrossentropy(from_logits=True)``: the mean over pixels of
``-log softmax(logits)[target]``. ``cross_entropy`` reproduces it exactly when nothing is ignored or
weighted; with ``ignore_index`` it averages over the counted pixels only, and with class weights it
divides by the summed weights of those pixels (PyTorch's convention) so the loss scale does not
depend on how many pixels of rare classes a batch happens to hold. Losses are always computed in
fp32, whatever the logits' dtype, because a bf16 log-softmax loses about three significant digits.

For imbalance and thin classes there are three more terms: OHEM cross-entropy (only the hard
pixels, as mmsegmentation's OHEM sampler chooses them), focal loss (easy pixels down-weighted by
``(1 - p_t) ** gamma``) and Lovász-softmax (a convex surrogate of each class's IoU, so the loss
itself is what mIoU measures). A kind is one term or a sum, e.g. ``"ohem+dice"``, ``"ce+lovasz"``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, DataError
from .fsio import read_json
from .metrics import _bincount_fixed

__all__ = [
    "cross_entropy",
    "dice_loss",
    "ohem_cross_entropy",
    "focal_loss",
    "lovasz_softmax",
    "SegmentationLoss",
    "LOSS_KINDS",
    "class_weights",
    "load_class_weights",
    "pixel_counts",
]

# A pixel term (ce, ohem, focal), a region term (dice, lovasz), or one of each summed.
PIXEL_TERMS = ("ce", "ohem", "focal")
REGION_TERMS = ("dice", "lovasz")
LOSS_KINDS = (*PIXEL_TERMS, *REGION_TERMS, *(f"{a}+{b}" for a in PIXEL_TERMS for b in REGION_TERMS))
WEIGHT_METHODS = ("none", "inverse", "median-frequency", "sqrt-median-frequency")


def _int_target(logits: Tensor, target: Tensor) -> Tensor:
    """Check an integer target against (N, C, ...) logits; (N, 1, ...) is squeezed (Keras-style masks)."""
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target.squeeze(1)
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"integer target of shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}; "
            "expected (N, ...) class ids matching the logits without their class dimension"
        )
    return target.long()


def _float_target(logits: Tensor, target: Tensor) -> Tensor:
    if target.shape != logits.shape:
        raise ValueError(
            f"one-hot/probability target of shape {tuple(target.shape)} must match logits {tuple(logits.shape)}"
        )
    return target.float()


def _class_view(weight: Tensor, logits: Tensor) -> Tensor:
    """Reshape a (C,) per-class vector to broadcast along dim 1 of ``logits``."""
    if weight.shape != (logits.shape[1],):
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected ({logits.shape[1]},)")
    return weight.to(logits.device, torch.float32).view(1, -1, *([1] * (logits.dim() - 2)))


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Mean pixel cross-entropy of (N, C, ...) logits, in fp32.

    ``target`` is either integer class ids (N, ...) -- the seed's sparse form -- or float one-hot or
    probability maps (N, C, ...) -- the seed's ``CategoricalCrossentropy`` remark. For float targets a
    pixel whose row is all zeros is ignored (that is what one-hot encoding leaves for void pixels), so
    ``ignore_index`` is only consulted for integer targets. Both forms give the same value for the same
    labels, weights and smoothing. A batch with every pixel ignored gives 0, not NaN.
    """
    logits = logits.float()
    if target.is_floating_point():
        y = _float_target(logits, target)
        logp = F.log_softmax(logits, dim=1)
        w = _class_view(weight, logits) if weight is not None else None
        # Denominator: each counted pixel's weight (its class weight for one-hot rows), as for int targets.
        denom = (y * w).sum() if w is not None else y.sum()
        if label_smoothing > 0:
            y = (1 - label_smoothing) * y + label_smoothing / logits.shape[1] * y.sum(dim=1, keepdim=True)
        loss = -(y * logp * w).sum() if w is not None else -(y * logp).sum()
        return loss / denom.clamp_min(1e-12)
    target = _int_target(logits, target)
    if weight is not None:
        weight = weight.to(logits.device, torch.float32)
    per_pixel = F.cross_entropy(
        logits,
        target,
        weight=weight,
        reduction="none",
        label_smoothing=label_smoothing,
        ignore_index=-100 if ignore_index is None else ignore_index,
    )
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    if weight is not None:
        denom = (weight[torch.where(valid, target, 0)] * valid).sum()
    else:
        denom = valid.sum().float()
    # clamp_min instead of an if: no host sync, and an all-ignored batch gives 0 / eps = 0 rather than NaN.
    return per_pixel.sum() / denom.clamp_min(1e-12)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    smooth: float = 1.0,
    classes_present_only: bool = True,
) -> Tensor:
    """Soft multi-class Dice loss, ``1 - Dice`` of softmax probabilities against the labels, in fp32.

    Each class's Dice is taken over the whole batch (all images and pixels together), then averaged
    over classes. With ``classes_present_only`` (the default) only classes present in the batch's
    ground truth are averaged: an absent class predicted empty would score a free Dice of ~1 (thanks to
    ``smooth``) and dilute the loss, and leaked probability on it is already penalised by the other
    classes' terms. With no class present (everything ignored) the loss is 0. Targets are integer ids
    or one-hot/probability maps, as for ``cross_entropy``; ignored pixels count for nothing.
    """
    logits = logits.float()
    n_classes = logits.shape[1]
    if target.is_floating_point():
        onehot = _float_target(logits, target)
        valid = onehot.sum(dim=1, keepdim=True) > 0
    else:
        target = _int_target(logits, target)
        valid = (target >= 0) & (target < n_classes)
        if ignore_index is not None:
            valid &= target != ignore_index
        onehot = F.one_hot(torch.where(valid, target, 0), n_classes).movedim(-1, 1).float()
        valid = valid.unsqueeze(1)
        onehot = onehot * valid
    probs = F.softmax(logits, dim=1) * valid
    dims = [0, *range(2, logits.dim())]
    intersection = (probs * onehot).sum(dims)
    true_sum = onehot.sum(dims)
    cardinality = probs.sum(dims) + true_sum
    per_class = 1 - (2 * intersection + smooth) / (cardinality + smooth).clamp_min(1e-12)
    if not classes_present_only:
        return per_class.mean()
    present = (true_sum > 0).float()
    return (per_class * present).sum() / present.sum().clamp_min(1.0)


def _valid_pixels(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Integer target (N, ...) checked against the logits, and the mask of counted pixels."""
    target = _int_target(logits, target)
    valid = (target >= 0) & (target < logits.shape[1])
    if ignore_index is not None:
        valid &= target != ignore_index
    return target, valid


def _weighted_mean(per_pixel: Tensor, target: Tensor, keep: Tensor, weight: Tensor | None) -> Tensor:
    """Sum of ``per_pixel`` over ``keep`` divided by the kept pixels' class weights (or their count)."""
    keep_f = keep.float()
    if weight is None:
        denom = keep_f.sum()
    else:
        denom = (weight.to(per_pixel.device, torch.float32)[torch.where(keep, target, 0)] * keep_f).sum()
    return (per_pixel * keep_f).sum() / denom.clamp_min(1e-12)


def ohem_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    thresh: float | None = 0.7,
    min_kept: int = 10_000,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy over the hard pixels only (online hard example mining), in fp32.

    As mmsegmentation's ``OHEMPixelSampler``: with ``thresh``, a pixel is hard when the probability
    of its true class is below ``max(thresh, p_k)``, where ``p_k`` is the (k+1)-th smallest such
    probability in the batch and ``k = min_kept * batch size`` (so at least ``k`` pixels are kept,
    ties aside); without ``thresh``, the ``k`` pixels of highest loss are kept. Unlike mmsegmentation,
    the loss is the mean over the kept pixels (class-weighted as in ``cross_entropy``), so its scale
    does not shrink as the model gets better. Ignored pixels are never kept.
    """
    logits = logits.float()
    target, valid = _valid_pixels(logits, target, ignore_index)
    safe = torch.where(valid, target, 0)
    w = weight.to(logits.device, torch.float32) if weight is not None else None
    per_pixel = F.cross_entropy(logits, safe, weight=w, reduction="none", label_smoothing=label_smoothing)
    keep = ohem_keep(logits.detach(), safe, valid, thresh=thresh, min_kept=min_kept, per_pixel=per_pixel.detach())
    return _weighted_mean(per_pixel, safe, keep, w)


def ohem_keep(
    logits: Tensor, target: Tensor, valid: Tensor, *, thresh: float | None, min_kept: int, per_pixel: Tensor
) -> Tensor:
    """The mask of pixels OHEM keeps (see ``ohem_cross_entropy``); never one outside ``valid``."""
    if min_kept < 0:
        raise ConfigError(f"ohem min_kept must be >= 0, got {min_kept}")
    k = min_kept * target.shape[0]
    flat_valid = valid.reshape(-1)
    n_valid = flat_valid.sum()
    if thresh is None:
        loss = torch.where(valid, per_pixel, -torch.inf).reshape(-1)
        order = loss.argsort(descending=True)
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        return ((rank < k) & flat_valid).view_as(valid)
    prob = F.softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    prob = torch.where(valid, prob, torch.inf)
    ordered = prob.reshape(-1).sort().values
    at = torch.clamp(torch.minimum(torch.as_tensor(k, device=prob.device), n_valid - 1), min=0)
    threshold = torch.clamp(ordered[at], min=thresh)
    return (prob < threshold) & valid


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Focal loss ``-(1 - p_t)**gamma * log p_t`` (Lin et al.), mean over the counted pixels, in fp32.

    ``weight`` plays the role of the per-class alpha and normalises like ``cross_entropy``;
    ``gamma = 0`` is plain cross-entropy.
    """
    if gamma < 0:
        raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
    logits = logits.float()
    target, valid = _valid_pixels(logits, target, ignore_index)
    safe = torch.where(valid, target, 0)
    logp_t = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    per_pixel = -((1 - logp_t.exp()).clamp_min(0) ** gamma) * logp_t
    w = weight.to(logits.device, torch.float32) if weight is not None else None
    if w is not None:
        per_pixel = per_pixel * w[safe]
    return _weighted_mean(per_pixel, safe, valid, w)


def _lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order."""
    gts = fg_sorted.sum()
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1 - fg_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(
    logits: Tensor, target: Tensor, *, ignore_index: int | None = None, classes_present_only: bool = True
) -> Tensor:
    """Lovász-softmax loss (Berman et al. 2018) over the whole batch, in fp32.

    For each class, the pixel errors ``|[y == c] - p_c|`` are sorted in decreasing order and dotted
    with the Lovász gradient of the Jaccard index; the loss is the mean over classes (only those
    present in the batch's truth by default, as for ``dice_loss``). Ignored pixels count for nothing;
    with none counted the loss is 0.
    """
    logits = logits.float()
    target, valid = _valid_pixels(logits, target, ignore_index)
    n_classes = logits.shape[1]
    probs = F.softmax(logits, dim=1).movedim(1, -1)[valid]  # (P, C) counted pixels only
    labels = target[valid]
    losses, present = [], []
    for c in range(n_classes):
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = errors.sort(descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])) if fg.numel() else errors.sum())
        present.append(fg.sum() > 0)
    per_class = torch.stack(losses)
    if not classes_present_only:
        return per_class.mean() if labels.numel() else per_class.sum() * 0
    mask = torch.stack(present).float()
    return (per_class * mask).sum() / mask.sum().clamp_min(1.0)


class SegmentationLoss(nn.Module):
    """The training loss chosen by name (``LOSS_KINDS``): "ce" (the seed), "ohem", "focal", "dice",
    "lovasz", or a pixel term plus a region term, e.g. "ce+dice" = CE + dice_weight * Dice.

    Class weights apply to the pixel term only (ce, ohem, focal); label smoothing to ce and ohem.
    The weights are a buffer, so ``.to(device)`` moves them.
    """

    weight: Tensor | None

    def __init__(
        self,
        kind: str = "ce",
        *,
        n_classes: int,
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        dice_weight: float = 1.0,
        label_smoothing: float = 0.0,
        ohem_thresh: float | None = 0.7,
        ohem_min_kept: int = 10_000,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ConfigError(f"loss must be one of {', '.join(LOSS_KINDS)}; got {kind!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32)
            if weight.shape != (n_classes,):
                raise ConfigError(f"class weights have shape {tuple(weight.shape)}, expected ({n_classes},)")
        self.kind = kind
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.dice_weight = dice_weight
        self.label_smoothing = label_smoothing
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.focal_gamma = focal_gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[1] != self.n_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, the loss expects {self.n_classes}")
        terms = self.kind.split("+")
        loss = logits.new_zeros((), dtype=torch.float32)
        for term in terms:
            value = self._term(term, logits, target)
            loss = loss + (self.dice_weight * value if len(terms) > 1 and term in REGION_TERMS else value)
        return loss

    def _term(self, term: str, logits: Tensor, target: Tensor) -> Tensor:
        ignore, weight, smoothing = self.ignore_index, self.weight, self.label_smoothing
        if term == "ce":
            return cross_entropy(logits, target, weight=weight, ignore_index=ignore, label_smoothing=smoothing)
        if term == "ohem":
            return ohem_cross_entropy(
                logits,
                target,
                thresh=self.ohem_thresh,
                min_kept=self.ohem_min_kept,
                weight=weight,
                ignore_index=ignore,
                label_smoothing=smoothing,
            )
        if term == "focal":
            return focal_loss(logits, target, gamma=self.focal_gamma, weight=weight, ignore_index=ignore)
        if term == "lovasz":
            return lovasz_softmax(logits, target, ignore_index=ignore)
        return dice_loss(logits, target, ignore_index=ignore)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, n_classes={self.n_classes}, ignore_index={self.ignore_index}, " + (
            f"dice_weight={self.dice_weight}, weighted={self.weight is not None}"
        )


def pixel_counts(masks: Tensor, n_classes: int, ignore_index: int | None = None) -> Tensor:
    """Pixels per class in integer ``masks`` (any shape), int64 (n_classes,); ignored/invalid ids skipped."""
    ids = masks.reshape(-1).long()
    valid = (ids >= 0) & (ids < n_classes)
    if ignore_index is not None:
        valid &= ids != ignore_index
    return _bincount_fixed(torch.where(valid, ids, n_classes), n_classes + 1)[:n_classes]


def class_weights(counts: Tensor | np.ndarray, method: str) -> Tensor:
    """Per-class loss weights (float32) from training-set pixel counts.

    - "inverse": ``total / (n_present * count)``. Each present class then carries the same total weight,
      and the pixel-weighted mean weight, ``sum(count * w) / total``, is exactly 1, so the loss keeps the
      unweighted scale.
    - "median-frequency": ``median(freq) / freq`` with ``freq = count / total`` and the median over
      present classes (SegNet, Eigen & Fergus; computed from whole-set counts).
    - "sqrt-median-frequency": the square root of those: rare classes still count several times more
      than common ones, but not two orders of magnitude more, so the large classes keep their accuracy
      (the demo's study in docs/accuracy.md).
    - "none": all ones.

    Classes with a zero count get weight 0: they never occur in the ground truth, so the weight is unused.
    """
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64).reshape(-1)
    if method not in WEIGHT_METHODS:
        choices = ", ".join(WEIGHT_METHODS)
        raise ConfigError(f"class_weights must be one of {choices} or a JSON file; got {method!r}")
    if (counts < 0).any() or not torch.isfinite(counts).all():
        raise ValueError("pixel counts must be finite and >= 0")
    if method == "none":
        return torch.ones(counts.numel(), dtype=torch.float32)
    present = counts > 0
    if not present.any():
        raise DataError(
            "the training masks have no pixel of any class 0..n_classes-1 (all ignored or out of range), so no "
            "class weights can be derived: check --n-classes, --ignore-index and the masks, or --class-weights none"
        )
    total = counts.sum()
    weights = torch.zeros_like(counts)
    if method == "inverse":
        weights[present] = total / (int(present.sum()) * counts[present])
    else:
        freq = counts[present] / total
        weights[present] = torch.quantile(freq, 0.5) / freq  # quantile: the middle two averaged, as np.median
        if method == "sqrt-median-frequency":
            weights = weights.sqrt()
    return weights.float()


def load_class_weights(path: str | Path, n_classes: int, class_names: list[str] | None = None) -> Tensor:
    """Read class weights from JSON: a list of ``n_classes`` numbers, or ``{class name: weight}``.

    The object form needs ``class_names``; classes it does not mention get weight 1. Weights must be
    finite, >= 0 and not all zero. Any problem raises a ``ConfigError`` naming the file.
    """
    path = Path(path)
    data = read_json(path, ConfigError, "class weight file")

    def number(value: object, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{path}: the weight of {what} must be a finite number >= 0, got {value!r}")
        return float(value)

    if isinstance(data, list):
        if len(data) != n_classes:
            raise ConfigError(f"{path} lists {len(data)} weights for {n_classes} classes; give one per class")
        weights = [number(v, f"class {i}") for i, v in enumerate(data)]
    elif isinstance(data, dict):
        if class_names is None:
            raise ConfigError(
                f"{path} maps class names to weights, but the class names are unknown; "
                "give a list of one weight per class instead"
            )
        unknown = sorted(set(data) - set(class_names))
        if unknown:
            raise ConfigError(
                f"{path} names unknown class(es) {', '.join(map(repr, unknown))}; "
                f"the classes are {', '.join(class_names)}"
            )
        weights = [number(data[name], repr(name)) if name in data else 1.0 for name in class_names]
        if len(weights) != n_classes:
            raise ConfigError(f"{len(class_names)} class names for {n_classes} classes")
    else:
        raise ConfigError(
            f"{path} must hold a list of {n_classes} weights or an object of "
            f"class name -> weight, not a {type(data).__name__}"
        )
    if not any(weights):
        raise ConfigError(f"{path}: every class weight is 0; at least one must be positive")
    return torch.tensor(weights, dtype=torch.float32)
