"""fit(): the training loop. Seed recipe by default; fast paths, checkpoints and resume built in.

The loop keeps the host out of the way: batches come from a uint8 cache already on the device,
metrics accumulate in a confusion matrix on the device, and the host reads them only when the
progress line is refreshed and at the end of an epoch.

It is built from parts, as torchvision's reference scripts are: ``train_one_epoch`` (the real step),
``validate`` (the one evaluation loop, also compare's), ``resume_run`` and ``TrainState`` (a run's
progress, saved in the checkpoint as one object); ``fit`` sets them up and runs the epochs.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import distributed, perf
from . import run as runio
from .card import write_card
from .config import RunConfig
from .data.augment import augment_batch, effective_ignore_index, pad_to_multiple
from .data.load import cheap_checks as _cheap_checks
from .data.load import load_data, with_normalization
from .data.source import SegmentationSource
from .device import autocast, precision_note, resolve_device, resolve_precision
from .ema import ModelEMA
from .errors import ConfigError, DataError, RunError, UnetkitError
from .finetune import init_from, set_encoder_frozen
from .fsio import atomic_write_text, remove_stale_temps
from .loggers import Loggers, check_available
from .losses import WEIGHT_METHODS, SegmentationLoss, class_weights, load_class_weights
from .metrics import BoundaryF1, ConfusionMatrix, SegmentationMetrics
from .plots import PER_CLASS_IOU, plot_curves
from .preprocess import to_float
from .run import CONFIG, CURVES, LAST, METRICS, WEIGHTS
from .timebudget import TimeBudget

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BatchTransform = Callable[..., tuple[torch.Tensor, torch.Tensor]]
TRAIN_COLUMNS = ("train_loss", "train_accuracy", "train_miou", "lr", "images_per_s")  # train_one_epoch's row part


class TrainingInterrupted(UnetkitError):
    """Ctrl-C during training: finished epochs are saved and the run can be resumed."""

    exit_code = 130  # 128 + SIGINT, as shells report a Ctrl-C


class NonFiniteLoss(UnetkitError):
    """The loss became NaN or Inf."""


@dataclass
class TrainResult:
    """What fit() returns: the run folder, the trained model (best weights loaded) and the history."""

    run_dir: Path | None
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_miou: float | None = None
    stopped_early: bool = False
    best_epoch: int | None = None  # 1-based epoch of the best weights


def _quiet(_msg: str) -> None:
    """A log that prints nothing."""


def resolve_compile(name: str, device: torch.device) -> bool:
    """Compile on CUDA by default, not on the CPU.

    On the CPU (oneDNN convolutions, bf16) inductor gained nothing measurable and its first step took
    minutes on 2 cores: training was slower compiled than eager, prediction the same (benchmarks/README.md).
    """
    if name == "off":
        return False
    if name == "on":
        return True
    return device.type == "cuda"


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    t = config.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    kwargs: dict[str, Any] = dict(lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    if next(model.parameters()).device.type in ("cuda", "cpu"):
        kwargs["fused"] = True  # one kernel over all tensors: on the CPU 3x faster than foreach (16 -> 5 ms a step)
    else:
        kwargs["foreach"] = True
    return cls(model.parameters(), **kwargs)


def lr_factor(config: RunConfig, epoch_progress: float) -> float:
    """Learning-rate multiplier at a fractional epoch for the constant and cosine schedules."""
    t = config.train
    if t.schedule != "cosine":
        return 1.0
    if t.warmup_epochs and epoch_progress < t.warmup_epochs:
        return max(epoch_progress / t.warmup_epochs, 1e-3)
    span = max(t.epochs - t.warmup_epochs, 1e-9)
    done = min((epoch_progress - t.warmup_epochs) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * done))


@dataclass
class Plateau:
    """Halve the learning rate (``factor``) when validation mIoU has not improved for 3 epochs."""

    best: float = -1.0
    bad: int = 0
    factor: float = 1.0

    def step(self, score: float) -> None:
        if score > self.best + 1e-4:
            self.best, self.bad = score, 0
        else:
            self.bad += 1
            if self.bad >= 3:
                self.factor, self.bad = max(self.factor * 0.5, 1e-3), 0


@dataclass
class TrainState:
    """A run's progress beside its tensors, saved in last.safetensors as one JSON object and restored on resume.

    ``epoch``: finished epochs. ``best``: the best score so far (validation mIoU, else training mIoU),
    reached at epoch ``best_epoch`` (1-based, 0: none yet); ``since_best``: epochs since (early stopping).
    ``history``: the metrics.csv rows (the checkpoint leaves them to metrics.csv, written beside it: their
    timings would make two identical runs' checkpoints differ). ``budget`` and ``ema_updates``: the time
    budget's and the weight average's accounting (None when the run uses neither).
    """

    epoch: int = 0
    best: float = -1.0
    best_epoch: int = 0
    since_best: int = 0
    plateau: Plateau = field(default_factory=Plateau)
    history: list[dict[str, Any]] = field(default_factory=list)
    budget: dict[str, Any] | None = None
    ema_updates: int | None = None

    def to_dict(self, *, history: bool = True) -> dict[str, Any]:
        """Plain JSON values, without the unused accounting; ``history=False``: as the checkpoint holds it."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if not history:
            del out["history"]
        return out

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> TrainState:
        """The state ``to_dict`` wrote (KeyError, TypeError or ValueError when ``meta`` holds none)."""
        plateau = meta.get("plateau") or {}
        return cls(
            epoch=int(meta["epoch"]),
            best=float(meta["best"]),
            best_epoch=int(meta.get("best_epoch", 0)),
            since_best=int(meta["since_best"]),
            plateau=Plateau(
                float(plateau.get("best", -1.0)), int(plateau.get("bad", 0)), float(plateau.get("factor", 1.0))
            ),
            history=[dict(row) for row in meta.get("history", [])],
            budget=meta.get("budget"),
            ema_updates=int(meta["ema_updates"]) if meta.get("ema_updates") is not None else None,
        )

    def record(self, row: dict[str, Any], score: float, validated: bool, schedule: str, skipped: bool = False) -> bool:
        """Add a finished epoch's row and score; True when its weights are the best (without validation: always).

        ``skipped``: the run validates, but not this epoch (the half-size phase of progressive resizing); its
        weights stand in as the best only until an epoch is validated, and its score counts for nothing."""
        self.history.append(row)
        self.epoch = int(row["epoch"])
        if skipped:
            is_best = self.best < 0
            self.best_epoch = self.epoch if is_best else self.best_epoch
            return is_best
        is_best = score > self.best or not validated
        if is_best:
            self.best, self.best_epoch, self.since_best = score, self.epoch, 0
        else:
            self.since_best += 1
        if schedule == "plateau":
            self.plateau.step(score)
        return is_best


def _loss_fn(config: RunConfig, data: SegmentationSource, device: torch.device) -> SegmentationLoss:
    t, n = config.train, config.model.n_classes
    weight = None
    if t.class_weights in WEIGHT_METHODS[1:]:
        weight = class_weights(data.class_counts(n), t.class_weights)
    elif t.class_weights != "none":
        weight = load_class_weights(t.class_weights, n, class_names=config.class_names)
    if weight is not None:
        weight = weight.to(device=device, dtype=torch.float32)
    return SegmentationLoss(
        t.loss,
        n_classes=n,
        weight=weight,
        ignore_index=_train_ignore_index(config),
        label_smoothing=t.label_smoothing,
        ohem_thresh=t.ohem_thresh,
        ohem_min_kept=t.ohem_min_kept,
        focal_gamma=t.focal_gamma,
    )


def _train_ignore_index(config: RunConfig) -> int | None:
    """The data's ignore index, or the one augmentation pads masks with when the data has none."""
    t = config.train
    return effective_ignore_index(config.data.ignore_index, t.augment, config.model.n_classes, t.crop is not None)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu()
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for param, slots in opt.state.items():  # the file holds them contiguous; the fused step needs the
        for name, value in slots.items():  # parameter's own layout (channels-last weights) or it mixes elements
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                slots[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


class _Checkpointer:
    """Writes the run folder after every epoch: last (resume), best weights, metrics, curves.

    curves.png is drawn after the first epoch, then at most every ``plot_interval_s`` and once more at
    the end: matplotlib takes a second or two per figure, as long as a whole short epoch on a small CPU.
    """

    plot_interval_s = 30.0
    ema: ModelEMA | None = None

    def __init__(self, run_dir: Path | None, config: RunConfig):
        self.run_dir = run_dir
        self.config = config
        self._plotted_at = -math.inf
        self._plotted_rows = 0

    def save(self, model: nn.Module, opt: torch.optim.Optimizer, state: TrainState, is_best: bool) -> None:
        if self.run_dir is None:
            return
        ema = self.ema
        weights = runio.model_state(model)
        opt_tensors, opt_meta = _optimizer_tensors(opt)
        tensors = {f"model.{k}": v for k, v in weights.items()} | opt_tensors
        if ema is not None:  # the average is what is validated, so it is what "best" means
            tensors |= {f"ema.{k}": v.detach().cpu() for k, v in ema.state_dict().items()}
            weights = runio.model_state(ema.module)
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        try:  # last.safetensors is the commit point: written last, so that it never gets ahead of the others
            if is_best:
                runio.save_tensors(self.run_dir / WEIGHTS, weights, {"kind": "weights", "epoch": state.epoch})
            runio.write_metrics(self.run_dir / METRICS, state.history)
            runio.save_tensors(self.run_dir / LAST, tensors, state.to_dict(history=False) | opt_meta)
        except OSError as e:
            raise RunError(
                f"could not write the checkpoint in {self.run_dir} ({e.strerror or e}); the previous "
                f"checkpoint is intact. Free space or fix permissions, then resume with "
                f"`unetkit train --resume {self.run_dir}`"
            ) from None
        if time.perf_counter() - self._plotted_at >= self.plot_interval_s:
            self.plot(state.history)

    def plot(self, history: list[dict[str, Any]]) -> None:
        """Draw curves.png unless it already shows every epoch in ``history``."""
        if self.run_dir is None or not history or self._plotted_rows == len(history):
            return
        try:
            plot_curves(history, self.run_dir / CURVES)
        except Exception:  # a plot must never cost a finished epoch
            pass
        self._plotted_at, self._plotted_rows = time.perf_counter(), len(history)


class _SigintGuard:
    """Turn the first Ctrl-C into a flag checked between steps; a second one stops at once."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self) -> _SigintGuard:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        _say_now(STOPPING)

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


STOPPING = "stopping after this step (finished epochs are kept); Ctrl-C again to abort now"


def _say_now(message: str) -> None:
    """Print on stderr at once (from a signal handler: no rich, no buffering)."""
    try:
        sys.stderr.write(f"\n{message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed stderr must not turn a Ctrl-C into a crash
        pass


@dataclass
class Validation:
    """What ``validate`` measured: the confusion matrix, the mean loss (with a loss) and boundary F1 (if asked)."""

    matrix: ConfusionMatrix
    loss: float | None = None
    boundary: BoundaryF1 | None = None

    def metrics(self) -> SegmentationMetrics:
        return self.matrix.compute()


def validate(
    model: nn.Module,
    data: SegmentationSource,
    config: RunConfig,
    *,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    loss_fn: LossFn | None = None,
    batch_size: int | None = None,
    boundary_tolerance: int | None = None,
) -> Validation:
    """Score ``model`` on cached (or streamed) data at the data's size: the one evaluation loop of fit and compare.

    That is the model's input size, except for crop training, where the data is kept at its native
    size: whole images are then padded to the network's size multiple (masks with the ignore index).
    ``dtype``: the autocast precision (None: fp32). ``boundary_tolerance``: also boundary F1 within that
    many pixels. The sums stay on ``device``; under several processes ``all_reduce`` them before reading.
    """
    device = torch.device(device)
    n = config.model.n_classes
    pad_ignore = _train_ignore_index(config) if config.train.crop is not None else None
    ignore = pad_ignore or config.data.ignore_index
    cm = ConfusionMatrix(n, ignore, device=device)
    bf = None if boundary_tolerance is None else BoundaryF1(n, boundary_tolerance, ignore_index=ignore, device=device)
    loss_sum = torch.zeros((), device=device)
    count = 0
    was_training = model.training
    model.eval()
    memory = torch.channels_last if config.train.channels_last else torch.contiguous_format
    with torch.no_grad():
        for x, y in data.batches(batch_size or config.train.batch_size, device=device):
            x = to_float(x, config.preprocess)
            if pad_ignore is not None:
                x, y = pad_to_multiple(x, y, config.model.size_multiple, pad_ignore)
            x = x.contiguous(memory_format=memory)
            with autocast(device, dtype):
                logits = model(x)
            if loss_fn is not None:
                loss_sum += loss_fn(logits, y).detach() * x.shape[0]
                count += x.shape[0]
            pred = logits.argmax(1)
            cm.update(pred, y)
            if bf is not None:
                bf.update(pred, y)
    model.train(was_training)
    return Validation(cm, loss_sum.item() / count if count else None, bf)


def steps_per_epoch(n_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch of ``n_samples`` (each of ``world_size`` processes takes its share)."""
    return math.ceil(math.ceil(n_samples / world_size) / batch_size)


class _EpochSums:
    """An epoch's loss sum, sample count and confusion matrix, kept on the device (no host read per step)."""

    def __init__(self, config: RunConfig, device: torch.device):
        self.cm = ConfusionMatrix(config.model.n_classes, _train_ignore_index(config), device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a NaN/Inf loss
        self.seen = 0

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * logits.shape[0]
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()), step, self.first_bad)
        self.seen += logits.shape[0]
        self.cm.update(logits.detach().argmax(1), y)

    def line(self, epoch: int, step: int, run_dir: Path | None, seconds: float) -> str:
        """The progress line so far (reads the device; NonFiniteLoss once the loss is not finite)."""
        mean_loss = self.loss_sum.item() / max(self.seen, 1)
        _check_finite(mean_loss, epoch, step, run_dir, self.first_bad)
        m = self.cm.compute()
        return f"loss {mean_loss:.4f} acc {m.pixel_accuracy:.4f} mIoU {m.mean_iou:.4f} {self.seen / seconds:.1f} img/s"


def _forward(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    config: RunConfig,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    augment: BatchTransform | None,
    generator: torch.Generator | None,
    half: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, (augmented) masks and loss of a uint8 training batch: scaled, augmented, forward under autocast;
    ``half``: at half size (images averaged over 2x2 pixels, masks by nearest neighbour)."""
    t = config.train
    x = to_float(x, config.preprocess)
    if augment is not None:
        ignore = _train_ignore_index(config)
        x, y = augment(x, y, t.augment, ignore_index=ignore if ignore is not None else 255, generator=generator)
    if half:
        x, y = F.avg_pool2d(x, 2), y[:, ::2, ::2]
    x = x.contiguous(memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
    with autocast(device, dtype):
        logits = model(x)
    return logits, y, loss_fn(logits, y)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: SegmentationSource,
    loss_fn: LossFn,
    config: RunConfig,
    *,
    epoch: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    batch_size: int | None = None,
    augment: BatchTransform | None = None,
    ema: ModelEMA | None = None,
    budget: TimeBudget | None = None,
    reserve: float = 0.0,
    lr_scale: float = 1.0,
    max_steps: int | None = None,
    progress: Callable[[int, str], None] | None = None,
    interrupted: Callable[[], bool] | None = None,
    run_dir: Path | None = None,
    log: Callable[[str], None] = _quiet,
) -> dict[str, Any]:
    """One pass over ``data`` (this process's share under DDP): the step fit() takes and bench_speed times.

    Each step sets the learning rate (the schedule at the fractional epoch, times ``lr_scale``), scales
    and ``augment``s the batch, runs the forward under ``dtype`` autocast, backward, the optimizer step and
    the ``ema`` update. ``model`` is the module to step (maybe compiled or DDP-wrapped). Sums stay on the
    device; the host reads them when ``progress(steps_done, line)`` is due (about twice a second) and at
    the end. A non-finite loss raises NonFiniteLoss (or skips the step with ``nan_policy: skip``);
    ``interrupted()`` true before a step raises TrainingInterrupted; ``max_steps``, or the ``budget``
    with less than ``reserve`` seconds left, ends the epoch early. ``run_dir`` is named in the errors.
    Returns the metrics.csv columns TRAIN_COLUMNS, plus ``images`` and ``seconds``.
    """
    t, env, device = config.train, distributed.info(), torch.device(device)
    batch_size = batch_size or t.batch_size
    steps = steps_per_epoch(len(data), batch_size, env.world_size)
    model.train()
    _freeze_for_epoch(runio.unwrap(model), t.freeze_encoder_epochs, epoch, log)
    distributed.seed_rank(t.seed, epoch)
    gen = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
    aug_gen = None  # per rank: ranks must not draw the same augmentations for their samples
    if augment is not None:
        aug_gen = torch.Generator(device=device).manual_seed(t.seed * 100_019 + epoch + 7_919 * env.rank)
    sums = _EpochSums(config, device)
    batches = data.batches(
        batch_size, device=device, shuffle=True, generator=gen, rank=env.rank, world_size=env.world_size
    )
    t0 = last_refresh = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        if interrupted is not None and interrupted():
            raise TrainingInterrupted(_interrupt_message(run_dir, epoch))
        if step == max_steps or (budget is not None and step and budget.exhausted(reserve)):
            break  # the budget is spent: the caller validates and saves this (partial) epoch
        lr = t.lr * (_factor(config, epoch + step / steps, budget) * lr_scale)
        for group in optimizer.param_groups:
            group["lr"] = lr
        half = at_half_size(config, epoch + step / steps, budget)
        logits, y, loss = _forward(
            model, loss_fn, x, y, config, device=device, dtype=dtype, augment=augment, generator=aug_gen, half=half
        )
        if t.nan_policy == "skip" and not distributed.all_finite(loss):
            log(f"skipped step {step + 1} of epoch {epoch + 1}: loss is {loss.item()}")
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(runio.unwrap(model))
        sums.add(step, loss, logits, y)
        now = time.perf_counter()
        if progress is not None and (now - last_refresh > 0.5 or step == steps - 1):
            last_refresh = now
            progress(step + 1, sums.line(epoch, step, run_dir, now - t0))
    return _epoch_result(sums, optimizer, epoch, steps, run_dir, time.perf_counter() - t0)


def _epoch_result(
    sums: _EpochSums, optimizer: torch.optim.Optimizer, epoch: int, steps: int, run_dir: Path | None, seconds: float
) -> dict[str, Any]:
    """The epoch's sums over all processes, checked finite, as train_one_epoch returns them."""
    seen = distributed.reduce_train_sums(sums.loss_sum, sums.cm, sums.seen)  # over ranks, in place
    if seen == 0:
        raise NonFiniteLoss(
            f"every step of epoch {epoch + 1} had a non-finite loss; lower the learning rate or check the data"
        )
    train_loss = sums.loss_sum.item() / seen
    _check_finite(train_loss, epoch, steps - 1, run_dir, sums.first_bad)
    m = sums.cm.compute()
    return {
        "train_loss": train_loss,
        "train_accuracy": m.pixel_accuracy,
        "train_miou": m.mean_iou,
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": seen / seconds,
        "images": seen,
        "seconds": seconds,
    }


def resume_run(
    run_dir: Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: RunConfig,
    *,
    log: Callable[[str], None] = _quiet,
) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Continue ``run_dir`` from its last.safetensors: the weights into ``model``, the optimizer state,
    the RNG states; returns the TrainState and the checkpoint's tensors (the weight average's among them).

    RunError when nothing usable can be resumed; ConfigError when the run already has more epochs than
    ``config.train.epochs`` (config.json must keep describing the run).
    """
    if run_dir is None or not (run_dir / LAST).exists():
        raise RunError(_nothing_to_resume(run_dir))
    tensors, meta = runio.load_tensors(run_dir / LAST)
    if not isinstance(meta, dict) or "epoch" not in meta:
        raise RunError(f"{run_dir / LAST} holds no training state; it cannot be resumed")
    try:
        runio.unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        _load_optimizer(optimizer, tensors, meta)
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        state = TrainState.from_dict(meta)
        if "history" not in meta:  # as the checkpointer writes it: the rows are in metrics.csv
            state.history = runio.read_metrics(run_dir / METRICS)[: state.epoch]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        detail = (str(e).splitlines() or [""])[0]
        raise RunError(
            f"{run_dir / LAST} does not hold a usable training state for {run_dir / CONFIG} "
            f"({type(e).__name__}: {detail}); restore an intact copy of the run folder, or train "
            "again"
        ) from None
    epochs = config.train.epochs
    if state.epoch > epochs:
        raise ConfigError(
            f"{run_dir} already has {state.epoch} finished epochs, more than the {epochs} asked for; "
            f"give --epochs above {state.epoch} to train more"
        )
    if state.epoch == epochs:
        log(f"{run_dir} already has {state.epoch} epochs; ask for more with --epochs")
    return state, tensors


@dataclass
class _Run:
    """The live parts of one fit() call, built once by ``_assemble`` and used by every epoch."""

    config: RunConfig
    run_dir: Path | None
    log: Callable[[str], None]
    device: torch.device
    dtype: torch.dtype | None
    batch_size: int  # per process; config.train.batch_size stays the global batch
    model: nn.Module  # the plain model
    step_model: nn.Module  # what the step runs: maybe compiled, DDP-wrapped
    eval_model: nn.Module  # what validation runs (each process on its shard, outside DDP)
    opt: torch.optim.Optimizer
    loss_fn: LossFn
    train_data: SegmentationSource
    val_data: SegmentationSource | None
    val_part: SegmentationSource | None  # this process's validation samples
    augment: BatchTransform | None
    ema: ModelEMA | None
    budget: TimeBudget | None
    checkpointer: _Checkpointer
    loggers: Loggers
    steps: int
    val_seconds: float = 0.0  # the last validation's duration: what the budget keeps in reserve

    @property
    def validates(self) -> bool:
        return self.val_data is not None and len(self.val_data) > 0


@distributed.with_process_group
def fit(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    train_data: SegmentationSource | None = None,
    val_data: SegmentationSource | None = None,
    resume: bool = False,
    overwrite: bool = False,
    model: nn.Module | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    epoch_callback: Callable[[dict[str, Any]], None] | None = None,
    loggers: Sequence[str] = (),
    log_images_every: int = 5,
    command: str | None = None,
) -> TrainResult:
    """Train the model described by ``config`` and write the run folder ``out`` (None: nothing written).

    Data comes from ``train_data``/``val_data`` when given, else from the folders in ``config.data``.
    ``resume=True`` continues the run in ``out`` from its last finished epoch, up to
    ``config.train.epochs`` epochs in total, with the optimizer and RNG state it stopped with.
    Under torchrun (RANK/WORLD_SIZE set) it trains data-parallel with DDP: ``config.train.batch_size``
    is the global batch, rank 0 alone logs and writes ``out``; see ``unetkit.distributed``.
    An ``out`` that already holds a run is refused unless ``resume`` or ``overwrite`` (which deletes it).
    ``model`` trains that network (e.g. a ``unet_model(...)``) instead of a fresh one built from
    ``config.model``; it must be the network ``config.model`` describes, so that the run folder loads.
    Without validation data the "best" weights are the last epoch's.
    ``loggers`` names extra loggers ("tensorboard", "mlflow"; see ``unetkit.loggers``), with a panel of
    validation images every ``log_images_every`` epochs; ``command`` goes into the model card.
    """
    is_main = distributed.info().is_main
    if not is_main:  # only rank 0 prints and writes the run folder
        log, progress, epoch_callback = None, False, None
    log = log or _quiet
    device, dtype = _devices(config)
    run_dir = Path(out) if out is not None else None
    main_dir = run_dir if is_main else None
    check_available(loggers)  # a missing package is reported before any data is read
    if main_dir is not None and not resume and not overwrite:
        runio.claim_run_folder(main_dir, create=False)  # refuses an existing run before any data is read
    _tune(device)
    config, train_data, val_data = _prepare_data(config, train_data, val_data, resume=resume, log=log)
    model, opt = _prepare_model(config, model, device, resume=resume, log=log)
    state, saved = resume_run(run_dir, model, opt, config, log=log) if resume else (TrainState(), {})
    _start_run_folder(main_dir, config, resume=resume, overwrite=overwrite)
    run_loggers = Loggers.create(loggers if is_main else (), run_dir, config, panel_every=log_images_every)
    counts = {"train": len(train_data)} | ({"val": len(val_data)} if val_data is not None else {})
    _write_card(main_dir, config, state.history, counts, command)
    run = _assemble(config, model, opt, (train_data, val_data), state, saved, run_loggers, run_dir, device, dtype, log)
    stopped_early = False
    with _SigintGuard() as sigint, _progress(progress) as bar, run_loggers:
        for epoch in range(state.epoch, config.train.epochs):
            stop = _run_epoch(run, state, epoch, sigint, bar, epoch_callback)
            if stop is not None:
                stopped_early = stop == "early"
                break
        run.checkpointer.plot(state.history)  # the epochs since the last throttled plot
    _write_card(main_dir, config, state.history, counts, command)
    return _finish(run_dir, model, state, stopped_early)


def _devices(config: RunConfig) -> tuple[torch.device, torch.dtype | None]:
    """This process's device and the autocast precision; a batch that does not divide over the processes is refused."""
    t = config.train
    device = distributed.local_device(resolve_device(t.device))
    distributed.local_batch_size(t.batch_size)  # a ConfigError before any data is read
    dtype = resolve_precision(t.precision, device)
    if t.precision == "auto" and device.type == "cpu":  # measured per process: every rank takes rank 0's
        dtype = torch.bfloat16 if distributed.rank0_choice(dtype is not None, device) else None
    return device, dtype


def _tune(device: torch.device) -> None:
    if device.type == "cpu":
        perf.tune_cpu()  # keep large freed blocks in the heap; one thread per physical core
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once


def _prepare_data(
    config: RunConfig,
    train_data: SegmentationSource | None,
    val_data: SegmentationSource | None,
    *,
    resume: bool,
    log: Callable[[str], None],
) -> tuple[RunConfig, SegmentationSource, SegmentationSource | None]:
    """The data (read from the config's folders unless given), checked, and the config completed by it."""
    if train_data is None:
        train_data, val_data, mask_mode = load_data(config, log=log)
        _cheap_checks(config, train_data, val_data, log)
        config = replace(config, data=replace(config.data, mask_mode=mask_mode))
    elif val_data is None and config.data.val_fraction:
        train_data, val_data = train_data.split(config.data.val_fraction, config.data.split_seed)
    if not resume:
        config = with_normalization(config, train_data, log)
    if len(train_data) == 0:
        raise ConfigError("the training set is empty")
    for data in (train_data, val_data):
        _check_class_ids(data, config)
    if config.train.crop is not None and config.preprocess.predict_mode == "resize":
        # resizing a whole image to the crop size would predict at a scale the model never saw
        config = replace(config, preprocess=replace(config.preprocess, predict_mode="sliding"))
    return config, train_data, val_data


def _prepare_model(
    config: RunConfig, model: nn.Module | None, device: torch.device, *, resume: bool, log: Callable[[str], None]
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The network (given or fresh, seeded; ``--init-from`` weights for a new run) on ``device``, and its optimizer."""
    t = config.train
    torch.manual_seed(t.seed)
    model = (_check_given_model(model, config) if model is not None else runio.build_model(config.model)).to(device)
    if t.freeze_encoder_epochs and distributed.info().enabled:  # DDP expects a gradient for every parameter
        raise ConfigError("--freeze-encoder is not supported with several processes yet; train it in one process")
    if t.init_from and not resume:  # weights only: a new run, with its own fresh optimizer
        init_from(model, t.init_from, log=log)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model, build_optimizer(model, config)


def _start_run_folder(run_dir: Path | None, config: RunConfig, *, resume: bool, overwrite: bool) -> None:
    """Claim ``run_dir`` for a new run (or keep it on resume) and write config.json into it."""
    if run_dir is None:
        return
    try:
        if not resume:
            runio.claim_run_folder(run_dir, overwrite=overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)  # left by a killed run
        atomic_write_text(run_dir / CONFIG, config.to_json())
    except OSError as e:
        raise RunError(
            f"could not write {run_dir / CONFIG} ({e.strerror or e}); free space or fix "
            "permissions, or choose another --out"
        ) from None


def _assemble(
    config: RunConfig,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple[SegmentationSource, SegmentationSource | None],
    state: TrainState,
    saved: dict[str, torch.Tensor],
    loggers: Loggers,
    run_dir: Path | None,
    device: torch.device,
    dtype: torch.dtype | None,
    log: Callable[[str], None],
) -> _Run:
    """The weight average, time budget, compiled/DDP step model, loss and device-resident data of a run."""
    t, dist_info = config.train, distributed.info()
    (train_data, val_data), batch_size = data, distributed.local_batch_size(t.batch_size)
    ema, budget = _averaging_and_budget(config, model, saved, state)
    step_model, compiled = _compiled(model, t.compile, device, log)
    eval_model = step_model  # evaluation runs on each rank's shard outside DDP: no collectives per batch
    step_model = distributed.wrap_model(step_model, model, device)  # DDP under several ranks
    loss_fn = _loss_fn(config, train_data, device)
    if device.type == "cuda" and train_data.nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]:
        train_data = train_data.to(device)
        val_data = val_data.to(device) if val_data is not None else None
    checkpointer = _Checkpointer(run_dir if dist_info.is_main else None, config)
    checkpointer.ema = ema  # its average is saved as the best weights, and beside the raw ones
    if dist_info.enabled:
        log(f"{dist_info.world_size} processes: global batch {t.batch_size} = {batch_size} per process")
    log(
        f"training {config.model.name} on {len(train_data)} images"
        + (f", validating on {len(val_data)}" if val_data is not None else "")
        + f" | device {device}, precision {'bf16' if dtype else 'fp32'}{precision_note(t.precision, device)}"
        + f", compile {'on' if compiled else 'off'}"
    )
    augment = _crop_fn(config, train_data) if t.crop is not None else augment_batch if t.augment.enabled else None
    panel_data = val_data if val_data is not None and len(val_data) else train_data
    loggers.set_panel_data(panel_data, config.palette or [], config.preprocess)  # normalised as training is
    return _Run(
        config,
        run_dir,
        log,
        device,
        dtype,
        batch_size,
        model,
        step_model,
        eval_model,
        opt,
        loss_fn,
        train_data,
        val_data,
        distributed.shard(val_data),  # this rank's validation samples, none repeated
        augment,
        ema,
        budget,
        checkpointer,
        loggers,
        steps_per_epoch(len(train_data), batch_size, dist_info.world_size),
    )


def _compiled(model: nn.Module, name: str, device: torch.device, log: Callable[[str], None]) -> tuple[nn.Module, bool]:
    """``torch.compile(model)`` when ``name`` (--compile) asks for it here, and whether it was asked."""
    if not resolve_compile(name, device):
        return model, False
    try:
        # compilation happens at the first step; a failure there (no C compiler, unsupported op) runs
        # that code eagerly with a warning instead of stopping the run
        torch._dynamo.config.suppress_errors = True
        if device.type == "cpu":
            _check_cpp_compiler()  # the backward graph compiles lazily, outside suppress_errors' reach
        return torch.compile(model), True  # type: ignore[return-value]  # an nn.Module wrapper at run time
    except Exception as e:  # no compiler toolchain, unsupported platform ...
        log(f"torch.compile unavailable ({type(e).__name__}: {e}); running eagerly")
        return model, True


def _check_cpp_compiler() -> None:
    """Raise when inductor finds no working C++ compiler (it needs one for CPU code); a no-op where this
    torch's private helper moved."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:
        return
    get_cpp_compiler()


def _run_epoch(
    run: _Run,
    state: TrainState,
    epoch: int,
    sigint: _SigintGuard,
    bar: Any,
    epoch_callback: Callable[[dict[str, Any]], None] | None,
) -> str | None:
    """Train, validate, checkpoint and report one epoch; why the run ends after it ("budget", "early"), or None."""
    t, budget = run.config.train, run.budget
    if budget is not None and state.history and budget.exhausted(run.val_seconds):
        return "budget"  # a run's first epoch always takes a step, so that it ends with weights
    of = f"/{t.epochs}" if budget is None else f" ({max(budget.left, 0):.0f} s of the budget left)"
    task = bar.add_task(f"epoch {epoch + 1}{of}", total=run.steps, info="") if bar else None
    t0 = time.perf_counter()
    stats = train_one_epoch(
        run.step_model,
        run.opt,
        run.train_data,
        run.loss_fn,
        run.config,
        epoch=epoch,
        device=run.device,
        dtype=run.dtype,
        batch_size=run.batch_size,
        augment=run.augment,
        ema=run.ema,
        budget=budget,
        reserve=run.val_seconds,
        lr_scale=state.plateau.factor,
        progress=(lambda done, info: bar.update(task, completed=done, info=info)) if bar else None,
        interrupted=lambda: sigint.hit,
        run_dir=run.run_dir,
        log=run.log,
    )
    row: dict[str, Any] = {"epoch": epoch + 1} | {k: stats[k] for k in TRAIN_COLUMNS}
    score, val_iou = row["train_miou"], None
    # still at half size next epoch: validating at full size now would only measure the switch, and cost time
    skip = run.validates and at_half_size(run.config, epoch + 1, budget)
    if run.validates and not skip:
        vm = _validate_epoch(run, row)
        score, val_iou = vm.mean_iou, vm.iou
    row["seconds"] = time.perf_counter() - t0
    is_best = state.record(row, score, run.validates, t.schedule, skipped=skip)
    state.budget = budget.state() if budget is not None else None
    state.ema_updates = run.ema.updates if run.ema is not None else None
    run.checkpointer.save(run.model, run.opt, state, is_best)
    run.loggers.epoch_end(row, val_iou, run.eval_model, run.device)
    if bar:
        bar.update(task, completed=run.steps)
    run.log(_epoch_line(row, t.epochs if budget is None else None))
    if epoch_callback is not None:
        epoch_callback(row)
    return _stop_reason(run, state)


def _validate_epoch(run: _Run, row: dict[str, Any]) -> SegmentationMetrics:
    """Validate the epoch's weights (the average's, with EMA) over all processes; its columns go into ``row``."""
    v0 = time.perf_counter()
    result = validate(
        run.ema.module if run.ema is not None else run.eval_model,
        run.val_part,  # type: ignore[arg-type]
        run.config,
        device=run.device,
        dtype=run.dtype,
        loss_fn=run.loss_fn,
        batch_size=run.batch_size,
    )
    run.val_seconds = time.perf_counter() - v0
    result.matrix.all_reduce()
    loss = distributed.weighted_mean(result.loss, len(run.val_part), run.device)  # type: ignore[arg-type]
    vm = result.metrics()
    row |= {"val_loss": loss, "val_accuracy": vm.pixel_accuracy, "val_miou": vm.mean_iou}
    row |= validation_columns(vm, run.config.class_names or [])
    return vm


def _stop_reason(run: _Run, state: TrainState) -> str | None:
    """ "budget" when the time budget is spent, "early" when early stopping ends the run, else None."""
    budget, t = run.budget, run.config.train
    if budget is not None and budget.exhausted(run.val_seconds):
        run.log(f"time budget of {budget.seconds:.0f} s spent ({budget.elapsed:.0f} s); best mIoU {state.best:.4f}")
        return "budget"
    if t.early_stopping and state.since_best >= t.early_stopping:
        run.log(
            f"early stopping: validation mIoU has not improved for {state.since_best} epochs (best {state.best:.4f})"
        )
        return "early"
    return None


def _finish(run_dir: Path | None, model: nn.Module, state: TrainState, stopped_early: bool) -> TrainResult:
    """The result, with the best weights loaded into ``model`` (once rank 0 has written them)."""
    distributed.barrier()  # rank 0 has written its last checkpoint before the others read the best weights
    if run_dir is not None and (run_dir / WEIGHTS).exists():
        best_weights, _ = runio.load_tensors(run_dir / WEIGHTS)
        runio.unwrap(model).load_state_dict(best_weights)
    model.eval()
    best = state.best if state.best >= 0 else None
    return TrainResult(run_dir, model, state.history, best, stopped_early, state.best_epoch or None)


def validation_columns(vm: SegmentationMetrics, class_names: list[str]) -> dict[str, float | None]:
    """The extra metrics.csv columns of a validation pass: mAcc, fwIoU and each class's IoU."""
    row: dict[str, float | None] = {"val_mean_accuracy": vm.mean_accuracy, "val_fw_iou": vm.fw_iou}
    for name, iou in zip(class_names, vm.iou):
        row[f"{PER_CLASS_IOU}{name}"] = None if math.isnan(iou) else iou
    return row


def _averaging_and_budget(
    config: RunConfig, model: nn.Module, saved: dict[str, torch.Tensor], state: TrainState
) -> tuple[ModelEMA | None, TimeBudget | None]:
    """The weight average and the time budget the config asks for, restored from a resumed checkpoint."""
    t = config.train
    ema = budget = None
    if t.ema is not None:
        ema = ModelEMA(runio.unwrap(model), t.ema)
        average = {k[4:]: v for k, v in saved.items() if k.startswith("ema.")}
        if average:
            ema.load_state_dict(average, state.ema_updates or 0)
    if t.time_budget is not None:
        budget = TimeBudget(t.time_budget, state.budget).start()
    return ema, budget


def _factor(config: RunConfig, epoch_progress: float, budget: TimeBudget | None) -> float:
    """The schedule's learning-rate factor: by epochs, or (cosine under a time budget) by the clock."""
    t = config.train
    if budget is None or t.schedule != "cosine":
        return lr_factor(config, epoch_progress)
    in_warmup = bool(t.warmup_epochs) and epoch_progress < t.warmup_epochs
    warm = max(epoch_progress / t.warmup_epochs, 1e-3) if in_warmup else 1.0
    return budget.lr_factor(in_warmup, warm)


def at_half_size(config: RunConfig, epoch_progress: float, budget: TimeBudget | None = None) -> bool:
    """Whether a step at this fractional epoch trains at half size (progressive resizing): during the
    first ``train.progressive`` share of the epochs, or of the time budget when there is one."""
    share = config.train.progressive
    if not share:
        return False
    done = budget.elapsed / budget.seconds if budget is not None else epoch_progress / config.train.epochs
    return done < share


def _crop_fn(config: RunConfig, train_data: SegmentationSource) -> BatchTransform:
    """The batch transform of crop training: random crops (see ``data.augment.random_crops``)."""
    from .data.augment import copy_paste, random_crops

    t = config.train
    weight = None
    if t.class_aware_crop > 0:  # inverse pixel frequency: the rarer the class, the likelier its crops
        counts = train_data.class_counts(config.model.n_classes).double()
        weight = torch.where(counts > 0, counts.sum() / counts.clamp_min(1), 0).float()

    def crop(x: torch.Tensor, y: torch.Tensor, cfg: Any, *, ignore_index: int, generator: torch.Generator):
        w = weight.to(x.device) if weight is not None else None
        x, y = random_crops(
            x,
            y,
            t.crop,  # type: ignore[arg-type]
            cfg,
            ignore_index=ignore_index,
            generator=generator,
            class_aware=t.class_aware_crop,
            class_weight=w,
        )
        return copy_paste(x, y, cfg, generator=generator)

    return crop


def _write_card(
    run_dir: Path | None, config: RunConfig, history: list[dict[str, Any]], counts: dict[str, int], command: str | None
) -> None:
    """RUN/README.md, the model card; a card that cannot be written never costs the run."""
    if run_dir is None:
        return
    try:
        write_card(run_dir, config, history, counts=counts, command=command)
    except OSError:
        pass


def _freeze_for_epoch(model: nn.Module, epochs: int, epoch: int, log: Callable[[str], None]) -> None:
    """Keep the encoder fixed during the first ``epochs`` epochs (after ``model.train()``)."""
    if not epochs:
        return
    set_encoder_frozen(model, epoch < epochs)
    if epoch == 0:
        log(f"encoder frozen for the first {epochs} epoch(s)")
    elif epoch == epochs:
        log(f"encoder unfrozen from epoch {epoch + 1}")


def _check_finite(
    value: float, epoch: int, step: int, run_dir: Path | None, first_bad: torch.Tensor | None = None
) -> None:
    """Raise NonFiniteLoss naming the epoch and the first bad step (``first_bad``, else ``step``)."""
    if not math.isfinite(value):
        if first_bad is not None and int(first_bad) >= 0:
            step = int(first_bad)
        where = f"epoch {epoch + 1}, step {step + 1}"
        keep = f"; the last good checkpoint in {run_dir} is kept" if run_dir else ""
        raise NonFiniteLoss(
            f"the loss became {value} at {where}{keep}. Lower the learning rate (--lr), "
            "use --precision fp32, or pass --nan-policy skip to skip such steps"
        )


def _check_class_ids(data: Any, config: RunConfig) -> None:
    """A DataError when cached masks hold ids that are neither a class nor the ignore index (the loss would
    fail deep inside PyTorch otherwise)."""
    masks = getattr(data, "masks", None)
    if masks is None:  # streaming data: each mask is checked as it is decoded
        return
    n, ignore = config.model.n_classes, config.data.ignore_index
    m = masks.reshape(-1).long()
    bad = (m >= n) | (m < 0)
    if ignore is not None:
        bad &= m != ignore
    if bool(bad.any()):
        values = torch.unique(m[bad])[:10].tolist()
        raise DataError(
            f"the masks hold class ids {', '.join(map(str, values))}, not below n_classes={n}; raise n_classes "
            "(--n-classes) to cover them, or set ignore_index (--ignore-index) for a 'void' value"
        )


def _nothing_to_resume(run_dir: Path | None) -> str:
    """Why ``run_dir`` cannot be resumed, and what to do instead."""
    if run_dir is not None and (run_dir / WEIGHTS).exists():
        return (
            f"{run_dir} holds weights but no training state ({LAST}), as an imported Keras model does; "
            f"to fine-tune it, start a new run from its weights: `unetkit train --init-from {run_dir} "
            "--images DIR --masks DIR --out NEW_RUN`"
        )
    if run_dir is not None and (run_dir / CONFIG).exists():
        return f"nothing to resume: no epoch of {run_dir} had finished; run the training command again"
    return f"nothing to resume: {run_dir} has no {LAST} (is it a run folder?)"


def _check_given_model(model: nn.Module, config: RunConfig) -> nn.Module:
    """``model`` when it has the layers ``config.model`` describes (else its run folder would not load)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in runio.build_model(config.model).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in runio.unwrap(model).state_dict().items()}
    if expected != found:
        raise ConfigError(
            f"the model given to fit() is not the network config.model describes ({config.model}); build the "
            "config with the same input_size, n_filters, n_classes and depth as the model"
        )
    return model


def _interrupt_message(run_dir: Path | None, epoch: int) -> str:
    if run_dir is None:
        return f"interrupted during epoch {epoch + 1}: nothing was saved (no --out)"
    if not epoch:
        return (
            f"interrupted during epoch 1: no epoch had finished, so {run_dir} holds nothing to resume; "
            "run the same command again to start over"
        )
    done = f"{epoch} finished epoch(s) are saved in {run_dir}"
    hint = f"; continue with `unetkit train --resume {run_dir}`"
    return f"interrupted during epoch {epoch + 1}: {done}{hint}"


def _epoch_line(row: dict[str, Any], epochs: int | None) -> str:
    parts = [
        f"epoch {row['epoch']}" + (f"/{epochs}" if epochs is not None else ""),
        f"loss {row['train_loss']:.4f}",
        f"acc {row['train_accuracy']:.4f}",
        f"mIoU {row['train_miou']:.4f}",
    ]
    if row.get("val_miou") is not None:
        parts += [
            f"val_loss {row['val_loss']:.4f}",
            f"val_acc {row['val_accuracy']:.4f}",
            f"val_mIoU {row['val_miou']:.4f}",
        ]
    parts += [f"{row['images_per_s']:.1f} img/s", f"{row['seconds']:.1f}s"]
    return " | ".join(parts)


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        transient=True,
    )


RESUME_TRAIN = (
    "epochs",
    "lr",
    "batch_size",
    "early_stopping",
    "device",
    "precision",
    "compile",
    "nan_policy",
    "time_budget",
)
RESUME_DATA = ("images", "masks", "val_images", "val_masks", "cache", "num_workers", "recursive", "skip_bad")


def resume_config(run_dir: str | Path, epochs: int | None = None, **changes: Any) -> RunConfig:
    """The config of a run to resume, with the total epoch count set to ``epochs`` and the settings that
    may change on resume (RESUME_TRAIN, RESUME_DATA: data paths become absolute) set to ``changes``.

    Settings that define the model or the recipe cannot change: the checkpoint was trained with them.
    """
    unknown = sorted(set(changes) - set(RESUME_TRAIN) - set(RESUME_DATA))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} cannot change on resume; start a new run instead")
    config = RunConfig.load(Path(run_dir) / CONFIG)
    if epochs is not None:
        changes["epochs"] = epochs
    t = {k: v for k, v in changes.items() if k in RESUME_TRAIN and v is not None}
    d: dict[str, Any] = {
        k: _abspath(v) if k in RESUME_DATA[:4] else v for k, v in changes.items() if k in RESUME_DATA and v is not None
    }
    return replace(config, train=replace(config.train, **t), data=replace(config.data, **d))


def _abspath(path: Any) -> str:
    import os

    return os.path.abspath(os.path.expanduser(str(path)))
