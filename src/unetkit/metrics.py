"""Segmentation metrics accumulated on the device over a whole set, then computed once.

Everything region-based (pixel accuracy, per-class IoU and Dice, their means) derives from one
confusion matrix summed over all batches, so a set's mIoU is the IoU of its total counts, not a mean
of per-batch means. Updates run entirely on the tensors' device with no host synchronisation, so
they can be called every step without stalling the GPU; only ``compute()`` reads back to the host.

Absent-class rule (used by every mean here): a class that appears in neither the ground truth nor
the predictions has no defined IoU or Dice (NaN) and is left out of the means; a class that is
predicted but absent from the truth has IoU 0 and does count, since predicting it was an error.

The field's summary numbers, all from the same matrix ``m`` (rows truth, columns prediction):

- aAcc (``pixel_accuracy``): ``trace(m) / m.sum()``, the share of counted pixels that are right.
- per class ``recall`` = ``accuracy`` = ``m[c, c] / m[c].sum()`` (mmsegmentation's per-class "Acc";
  NaN where the class has no true pixels) and ``precision`` = ``m[c, c] / m[:, c].sum()`` (NaN for
  an absent class, 0 for a class in the truth that was never predicted).
- mAcc (``mean_accuracy``, the "class average" of CamVid tables): the mean of the per-class
  accuracies over the classes present in the truth.
- mIoU (``mean_iou``): the mean IoU under the absent-class rule above.
- fwIoU (``fw_iou``): ``sum_c freq_c * IoU_c`` with ``freq_c`` = the class's share of the true
  pixels; classes without true pixels weigh 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ConfusionMatrix", "SegmentationMetrics", "BoundaryF1", "boundary_f1", "metrics_from_matrix"]


def _bincount_fixed(index: Tensor, length: int) -> Tensor:
    """``torch.bincount(index, minlength=length)`` for ids known to lie in [0, length), without a sync.

    CUDA's bincount reads the input's min and max back to the host to size its output; a scatter-add
    into a buffer of known size does not.
    """
    index = index.reshape(-1).long()
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=length)
    return _scatter_count(index, length)


def _scatter_count(index: Tensor, length: int) -> Tensor:
    """Counts of 1-D int64 ``index`` in ``length`` bins by scatter-add (integer, so exact in any order)."""
    counts = torch.zeros(length, dtype=torch.int64, device=index.device)
    return counts.scatter_add_(0, index, torch.ones_like(index))


def _names(class_names: list[str] | None, n: int) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(n)]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} classes")
    return list(class_names)


def _all_reduce_sum(t: Tensor) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


@dataclass
class SegmentationMetrics:
    """Metrics of one evaluated set; see the module docstring for the absent-class rule.

    When no pixel was counted at all, ``pixel_accuracy``, ``mean_iou`` and ``mean_dice`` are 0.0
    (not NaN) so that logs and JSON stay numeric, and every class is listed in ``absent``.
    """

    pixel_accuracy: float
    iou: list[float]  # per class; NaN where the class is absent from truth and prediction
    dice: list[float]  # per class; same rule
    support: list[int]  # ground-truth pixels per class
    mean_iou: float  # over the classes not in ``absent``
    mean_dice: float
    absent: list[int]  # class ids left out of the means
    matrix: np.ndarray = field(repr=False, compare=False)  # rows = truth, columns = prediction
    precision: list[float] = field(default_factory=list)  # per class; NaN where absent
    recall: list[float] = field(default_factory=list)  # per class = class accuracy; NaN without true pixels
    mean_accuracy: float = 0.0  # mAcc: mean recall over the classes with true pixels
    fw_iou: float = 0.0  # frequency-weighted IoU

    @property
    def n_classes(self) -> int:
        return len(self.iou)

    @property
    def accuracy(self) -> list[float]:
        """Per-class accuracy, the term mAcc averages: the same as ``recall``."""
        return list(self.recall)

    @property
    def predicted(self) -> list[int]:
        """Predicted pixels per class (column sums of the confusion matrix)."""
        return [int(v) for v in self.matrix.sum(axis=0)]

    def to_dict(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """A JSON-ready summary; IoU/Dice of absent classes are None rather than NaN (invalid JSON)."""
        names = _names(class_names, self.n_classes)

        def num(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        per_class = []
        for c, name in enumerate(names):
            per_class.append(
                {
                    "name": name,
                    "iou": num(self.iou[c]),
                    "dice": num(self.dice[c]),
                    "precision": num(self.precision[c]),
                    "recall": num(self.recall[c]),
                    "accuracy": num(self.recall[c]),
                    "support": int(self.support[c]),
                    "predicted": int(self.matrix[:, c].sum()),
                }
            )
        return {
            "pixel_accuracy": float(self.pixel_accuracy),
            "mean_accuracy": float(self.mean_accuracy),
            "mean_iou": float(self.mean_iou),
            "fw_iou": float(self.fw_iou),
            "mean_dice": float(self.mean_dice),
            "per_class": per_class,
            "absent_classes": [names[c] for c in self.absent],
        }

    def format_table(self, class_names: list[str] | None = None) -> str:
        """An aligned per-class table followed by the summary, saying which classes the means leave out."""
        names = _names(class_names, self.n_classes)
        predicted = self.predicted
        width = max([len("class"), *(len(n) for n in names)])
        heads = "  ".join(f"{h:>6}" for h in ("IoU", "Dice", "Prec", "Recall"))
        lines = [f"{'class':<{width}}  {heads}  {'true px':>12}  {'predicted px':>12}"]
        for c in range(self.n_classes):
            values = "  ".join(f"{_cell(v):>6}" for v in (self.iou[c], self.dice[c], self.precision[c], self.recall[c]))
            counts = f"{self.support[c]:>12,}  {predicted[c]:>12,}"
            note = "  (absent)" if c in self.absent else ""
            lines.append(f"{names[c]:<{width}}  {values}  {counts}{note}")
        counted = self.n_classes - len(self.absent)
        with_truth = sum(1 for s in self.support if s > 0)
        lines += [
            "",
            f"aAcc (pixel accuracy)  {self.pixel_accuracy:.4f}",
            f"mAcc (class average)   {self.mean_accuracy:.4f}  (over {with_truth} classes with true pixels)",
            f"mIoU                   {self.mean_iou:.4f}  (over {counted} of {self.n_classes} classes)",
            f"fwIoU                  {self.fw_iou:.4f}",
            f"mean Dice              {self.mean_dice:.4f}",
        ]
        if int(self.matrix.sum()) == 0:
            lines.append("no pixels were counted (every target was ignored or out of range); the means are 0")
        elif self.absent:
            lines.append(
                "left out of the means, absent from both the ground truth and the predictions: "
                + ", ".join(names[c] for c in self.absent)
            )
        false_only = [names[c] for c in range(self.n_classes) if self.support[c] == 0 and predicted[c] > 0]
        if false_only:
            lines.append("counted with IoU 0, predicted but absent from the ground truth: " + ", ".join(false_only))
        return "\n".join(lines)


def _cell(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4f}"


def metrics_from_matrix(matrix: np.ndarray) -> SegmentationMetrics:
    """Every metric of an (n, n) confusion matrix (rows truth, columns prediction); see the module docstring."""
    m = np.asarray(matrix).astype(np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
    tp = np.diag(m).astype(np.float64)
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    union = support + predicted - tp
    present = union > 0
    has_truth = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / union, np.nan)
        dice = np.where(present, 2 * tp / (support + predicted), np.nan)
        recall = np.where(has_truth, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.where(present, 0.0, np.nan))
    total = int(m.sum())
    freq = support / total if total else np.zeros(len(support))
    return SegmentationMetrics(
        pixel_accuracy=float(tp.sum() / total) if total else 0.0,
        iou=[float(v) for v in iou],
        dice=[float(v) for v in dice],
        support=[int(v) for v in support],
        mean_iou=float(iou[present].mean()) if present.any() else 0.0,
        mean_dice=float(dice[present].mean()) if present.any() else 0.0,
        absent=[int(c) for c in np.flatnonzero(~present)],
        matrix=m,
        precision=[float(v) for v in precision],
        recall=[float(v) for v in recall],
        mean_accuracy=float(recall[has_truth].mean()) if has_truth.any() else 0.0,
        fw_iou=float((freq[has_truth] * iou[has_truth]).sum()) if has_truth.any() else 0.0,
    )


class ConfusionMatrix:
    """A confusion matrix accumulated on the device: ``matrix[t, p]`` counts pixels of truth t predicted p.

    Pixels whose target equals ``ignore_index`` are skipped and counted in ``ignored``. Other targets
    (or predictions) outside [0, n_classes) are a bug upstream; they are skipped too, without a crash
    or a host sync, and counted in ``invalid`` so the caller can check for them.
    """

    def __init__(self, n_classes: int, ignore_index: int | None = None, device: torch.device | str | None = None):
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        # n*n matrix cells, then one bin for ignored pixels and one for invalid ones.
        self._counts = torch.zeros(n_classes * n_classes + 2, dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self._counts.device

    @property
    def matrix(self) -> Tensor:
        """The (n, n) int64 counts (a view: rows = truth, columns = prediction)."""
        n = self.n_classes
        return self._counts[: n * n].view(n, n)

    @property
    def ignored(self) -> Tensor:
        """Pixels skipped because their target is ``ignore_index`` (0-d tensor on the device)."""
        return self._counts[-2]

    @property
    def invalid(self) -> Tensor:
        """Pixels skipped because their target or prediction is outside [0, n_classes) (0-d tensor)."""
        return self._counts[-1]

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and true class ids (same shape, any shape)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        n = self.n_classes
        pred = pred.to(self.device, torch.int64).reshape(-1)
        target = target.to(self.device, torch.int64).reshape(-1)
        in_range = (target >= 0) & (target < n) & (pred >= 0) & (pred < n)
        ignored = target == self.ignore_index if self.ignore_index is not None else torch.zeros_like(in_range)
        index = torch.where(in_range, target * n + pred, n * n + 1)
        index = torch.where(ignored, n * n, index)
        self._counts += _bincount_fixed(index, n * n + 2)

    def update_from_logits(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch of (N, C, ...) logits (argmax over dim 1) and (N, ...) true class ids."""
        self.update(logits.argmax(dim=1), target)

    def reset(self) -> None:
        self._counts.zero_()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another worker) into this one; returns self."""
        if other.n_classes != self.n_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a {other.n_classes}-class matrix (ignore_index {other.ignore_index}) into a "
                f"{self.n_classes}-class one (ignore_index {self.ignore_index})"
            )
        self._counts += other._counts.to(self.device)
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def all_reduce(self) -> None:
        """Sum the counts across torch.distributed ranks; a no-op when distributed is not initialised."""
        _all_reduce_sum(self._counts)

    def compute(self) -> SegmentationMetrics:
        """Read the counts back to the host and derive every metric from them."""
        return metrics_from_matrix(self.matrix.detach().cpu().numpy())


def _neighbour_offsets(connectivity: int) -> list[tuple[int, int]]:
    if connectivity == 4:
        return [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        return [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def _boundary_labels(labels: Tensor, valid: Tensor, connectivity: int) -> Tensor:
    """Each pixel's class where it touches a pixel of another (valid) class, else -1; (N, H, W)."""
    h, w = labels.shape[-2:]
    labels = torch.where(valid, labels, -1)
    padded = F.pad(labels, (1, 1, 1, 1), value=-1)
    differs = torch.zeros_like(valid)
    for dy, dx in _neighbour_offsets(connectivity):
        nb = padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        differs |= (nb >= 0) & (nb != labels)
    return torch.where(valid & differs, labels, -1)


def _matched(src: Tensor, dst: Tensor, tolerance: int) -> Tensor:
    """Boundary pixels of ``src`` with a ``dst`` boundary pixel of the same class within ``tolerance``.

    The window is the (2t+1)^2 square, i.e. a max-pool dilation of each class's boundary; shifting the
    label map instead of dilating a one-hot stack keeps memory at O(N*H*W) whatever the class count.
    """
    h, w = src.shape[-2:]
    t = tolerance
    padded = F.pad(dst, (t, t, t, t), value=-1)
    hit = torch.zeros_like(src, dtype=torch.bool)
    for dy in range(2 * t + 1):
        for dx in range(2 * t + 1):
            hit |= padded[:, dy : dy + h, dx : dx + w] == src
    return hit & (src >= 0)


def _f1(pred_matched: float, pred_total: float, true_matched: float, true_total: float) -> float:
    if pred_total == 0 and true_total == 0:
        return 1.0  # no boundary anywhere, and none predicted: perfect agreement
    if pred_total == 0 or true_total == 0:
        return 0.0
    precision, recall = pred_matched / pred_total, true_matched / true_total
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


class BoundaryF1:
    """Boundary F1 (BF score) accumulated over a whole set, on the device.

    A boundary pixel is one whose class differs from one of its 4- (or 8-) neighbours; it belongs to
    its own class. A predicted boundary pixel of class c is correct (precision) when a true boundary
    pixel of class c lies within ``tolerance`` pixels (Chebyshev distance); recall is the same with the
    roles swapped. Counts are summed over classes and images, so ``compute()`` is the F1 of the
    set-level precision and recall. Pixels whose target is ``ignore_index`` (or outside [0, n)) are
    neither boundaries nor neighbours. With no boundary in truth or prediction the score is 1.
    """

    def __init__(
        self,
        n_classes: int,
        tolerance: int = 2,
        ignore_index: int | None = None,
        connectivity: int = 4,
        device: torch.device | str | None = None,
    ):
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        _neighbour_offsets(connectivity)
        self.n_classes = n_classes
        self.tolerance = tolerance
        self.ignore_index = ignore_index
        self.connectivity = connectivity
        # rows: predicted boundary, predicted matched, true boundary, true matched; columns: class.
        self.counts = torch.zeros(4, n_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add predicted and true class ids of shape (N, H, W) or (H, W)."""
        if pred.shape != target.shape or pred.dim() not in (2, 3):
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (N, H, W) or (H, W)"
            )
        n = self.n_classes
        device = self.counts.device
        pred = pred.to(device, torch.int64).reshape(-1, *pred.shape[-2:])
        target = target.to(device, torch.int64).reshape(-1, *target.shape[-2:])
        valid = (target >= 0) & (target < n)
        if self.ignore_index is not None:
            valid &= target != self.ignore_index
        pred_b = _boundary_labels(pred, valid & (pred >= 0) & (pred < n), self.connectivity)
        true_b = _boundary_labels(target, valid, self.connectivity)
        for row, labels in enumerate(
            (
                pred_b,
                torch.where(_matched(pred_b, true_b, self.tolerance), pred_b, -1),
                true_b,
                torch.where(_matched(true_b, pred_b, self.tolerance), true_b, -1),
            )
        ):
            self.counts[row] += _bincount_fixed(torch.where(labels >= 0, labels, n), n + 1)[:n]

    def reset(self) -> None:
        self.counts.zero_()

    def merge(self, other: BoundaryF1) -> BoundaryF1:
        if other.counts.shape != self.counts.shape:
            raise ValueError("cannot merge BoundaryF1 accumulators with different class counts")
        self.counts += other.counts.to(self.counts.device)
        return self

    def all_reduce(self) -> None:
        """Sum the counts across torch.distributed ranks; a no-op when distributed is not initialised."""
        _all_reduce_sum(self.counts)

    def compute(self) -> float:
        """The set-level boundary F1 over all classes."""
        pb, pm, tb, tm = (float(v) for v in self.counts.sum(dim=1).cpu())
        return _f1(pm, pb, tm, tb)

    def per_class(self) -> list[float]:
        """Boundary F1 per class; NaN for a class with no boundary in truth or prediction."""
        rows = self.counts.cpu().tolist()
        pred_total, pred_matched, true_total, true_matched = rows
        return [
            math.nan if pt == 0 and tt == 0 else _f1(pm, pt, tm, tt)
            for pt, pm, tt, tm in zip(pred_total, pred_matched, true_total, true_matched, strict=True)
        ]


def boundary_f1(
    pred: Tensor,
    target: Tensor,
    n_classes: int,
    tolerance: int = 2,
    ignore_index: int | None = None,
    connectivity: int = 4,
) -> float:
    """Boundary F1 of one batch of (N, H, W) class ids; see ``BoundaryF1`` (use it to cover a whole set)."""
    acc = BoundaryF1(n_classes, tolerance, ignore_index, connectivity, device=pred.device)
    acc.update(pred, target)
    return acc.compute()
