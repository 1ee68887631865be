"""fit(): the training loop. Seed recipe by default; fast paths, checkpoints and resume built in.

The loop keeps the host out of the way: batches come from a uint8 cache already on the device,
metrics accumulate in a confusion matrix on the device, and the host reads them only when the
progress line is refreshed and at the end of an epoch.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed, perf
from . import run as runio
from .card import write_card
from .config import RunConfig
from .data.augment import augment_batch, effective_ignore_index
from .data.load import cheap_checks as _cheap_checks
from .data.load import load_data, with_normalization
from .data.loader import SegmentationData
from .device import autocast, resolve_device, resolve_precision
from .ema import ModelEMA
from .errors import ConfigError, DataError, RunError, UnetkitError
from .finetune import init_from, set_encoder_frozen
from .fsio import atomic_write_text, remove_stale_temps
from .loggers import Loggers, check_available
from .losses import SegmentationLoss, class_weights, load_class_weights
from .metrics import ConfusionMatrix, SegmentationMetrics
from .plots import plot_curves
from .preprocess import to_float
from .run import CONFIG, CURVES, LAST, METRICS, WEIGHTS
from .timebudget import TimeBudget


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
    if next(model.parameters()).device.type == "cuda":
        kwargs["fused"] = True
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


class _Plateau:
    """Halve the learning rate when validation mIoU has not improved for 3 epochs."""

    def __init__(self, state: dict[str, Any] | None = None):
        self.best, self.bad, self.factor = -1.0, 0, 1.0
        if state:
            self.best, self.bad, self.factor = state["best"], state["bad"], state["factor"]

    def step(self, score: float) -> None:
        if score > self.best + 1e-4:
            self.best, self.bad = score, 0
        else:
            self.bad += 1
            if self.bad >= 3:
                self.factor, self.bad = max(self.factor * 0.5, 1e-3), 0

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "factor": self.factor}


def _loss_fn(config: RunConfig, data: SegmentationData, device: torch.device) -> SegmentationLoss:
    t, n = config.train, config.model.n_classes
    weight = None
    if t.class_weights in ("inverse", "median-frequency"):
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

    def save(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        history: list[dict[str, Any]],
        state: dict[str, Any],
        is_best: bool,
    ) -> None:
        if self.run_dir is None:
            return
        ema = self.ema
        weights = runio.model_state(model)
        opt_tensors, opt_meta = _optimizer_tensors(opt)
        tensors = {f"model.{k}": v for k, v in weights.items()} | opt_tensors
        if ema is not None:  # the average is what is validated, so it is what "best" means
            tensors |= {f"ema.{k}": v.detach().cpu() for k, v in ema.state_dict().items()}
            state = state | {"ema_updates": ema.updates}
            weights = runio.model_state(ema.module)
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        try:  # last.safetensors is the commit point: written last, so that it never gets ahead of the others
            if is_best:
                runio.save_tensors(self.run_dir / WEIGHTS, weights, {"kind": "weights", "epoch": state["epoch"]})
            runio.write_metrics(self.run_dir / METRICS, history)
            runio.save_tensors(self.run_dir / LAST, tensors, state | opt_meta)
        except OSError as e:
            raise RunError(
                f"could not write the checkpoint in {self.run_dir} ({e.strerror or e}); the previous "
                f"checkpoint is intact. Free space or fix permissions, then resume with "
                f"`unetkit train --resume {self.run_dir}`"
            ) from None
        if time.perf_counter() - self._plotted_at >= self.plot_interval_s:
            self.plot(history)

    def plot(self, history: list[dict[str, Any]]) -> None:
        """Draw curves.png unless it already shows every epoch in ``history``."""
        if self.run_dir is None or not history or self._plotted_rows == len(history):
            return
        try:
            plot_curves(history, self.run_dir / CURVES)
        except Exception:  # a plot must never cost a finished epoch
            pass
        self._plotted_at, self._plotted_rows = time.perf_counter(), len(history)


def _step_counts(pred: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, ...]:
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    return ((pred == target) & valid).sum(), valid.sum()


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


def evaluate_data(
    model: nn.Module,
    data: SegmentationData,
    config: RunConfig,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    loss_fn: SegmentationLoss | None = None,
    batch_size: int | None = None,
) -> tuple[ConfusionMatrix, float | None]:
    """Confusion matrix (and mean loss) of ``model`` on cached data, at the data's size.

    That is the model's input size, except for crop training, where the data is kept at its native
    size: whole images are then padded to the network's size multiple (masks with the ignore index).
    """
    pad_ignore = _train_ignore_index(config) if config.train.crop is not None else None
    cm = ConfusionMatrix(config.model.n_classes, pad_ignore or config.data.ignore_index, device=device)
    loss_sum = torch.zeros((), device=device)
    count = 0
    was_training = model.training
    model.eval()
    memory = torch.channels_last if config.train.channels_last else torch.contiguous_format
    with torch.no_grad():
        for x, y in data.batches(batch_size or config.train.batch_size, device=device):
            x = to_float(x, config.preprocess)
            if pad_ignore is not None:
                from .data.augment import pad_to_multiple

                x, y = pad_to_multiple(x, y, config.model.size_multiple, pad_ignore)
            x = x.contiguous(memory_format=memory)
            with autocast(device, dtype):
                logits = model(x)
            if loss_fn is not None:
                loss_sum += loss_fn(logits, y).detach() * x.shape[0]
                count += x.shape[0]
            cm.update(logits.argmax(1), y)
    model.train(was_training)
    return cm, (loss_sum.item() / count if count else None)


@distributed.with_process_group
def fit(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    train_data: SegmentationData | None = None,
    val_data: SegmentationData | None = None,
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
    dist_info = distributed.info()  # rank 0 of 1 without torchrun
    if not dist_info.is_main:  # only rank 0 prints and writes the run folder
        log, progress, epoch_callback = None, False, None
    log = log or (lambda _msg: None)
    t = config.train
    device = distributed.local_device(resolve_device(t.device))
    batch_size = distributed.local_batch_size(t.batch_size)  # per rank; t.batch_size stays the global batch
    dtype = resolve_precision(t.precision, device)
    run_dir = Path(out) if out is not None else None
    check_available(loggers)  # a missing package is reported before any data is read
    if run_dir is not None and not resume and not overwrite and dist_info.is_main:
        runio.claim_run_folder(run_dir, create=False)  # refuses an existing run before any data is read
    if device.type == "cpu":
        perf.tune_cpu()  # keep large freed blocks in the heap; one thread per physical core
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once

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
    if t.crop is not None and config.preprocess.predict_mode == "resize":
        # resizing a whole image to the crop size would predict at a scale the model never saw
        config = replace(config, preprocess=replace(config.preprocess, predict_mode="sliding"))

    torch.manual_seed(t.seed)
    model = (_check_given_model(model, config) if model is not None else runio.build_model(config.model)).to(device)
    if t.freeze_encoder_epochs and dist_info.enabled:  # DDP expects a gradient for every parameter it was given
        raise ConfigError("--freeze-encoder is not supported with several processes yet; train it in one process")
    if t.init_from and not resume:  # weights only: a new run, with its own fresh optimizer
        init_from(model, t.init_from, log=log)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, config)
    plateau = _Plateau()
    resumed: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
    history: list[dict[str, Any]] = []
    start_epoch, best, since_best = 0, -1.0, 0

    if resume:
        if run_dir is None or not (run_dir / LAST).exists():
            raise RunError(_nothing_to_resume(run_dir))
        tensors, meta = runio.load_tensors(run_dir / LAST)
        if not isinstance(meta, dict) or "epoch" not in meta:
            raise RunError(f"{run_dir / LAST} holds no training state; it cannot be resumed")
        try:
            runio.unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            _load_optimizer(opt, tensors, meta)
            torch.set_rng_state(tensors["rng.cpu"])
            if "rng.cuda" in tensors and torch.cuda.is_available():
                torch.cuda.set_rng_state(tensors["rng.cuda"])
            start_epoch, best, since_best = int(meta["epoch"]), float(meta["best"]), int(meta["since_best"])
            plateau = _Plateau(meta.get("plateau"))
            resumed = (tensors, meta)
            history = runio.read_metrics(run_dir / METRICS)[:start_epoch]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            detail = (str(e).splitlines() or [""])[0]
            raise RunError(
                f"{run_dir / LAST} does not hold a usable training state for {run_dir / CONFIG} "
                f"({type(e).__name__}: {detail}); restore an intact copy of the run folder, or train "
                "again"
            ) from None
        if start_epoch > t.epochs:  # config.json must keep describing the run: never fewer epochs than it has
            raise ConfigError(
                f"{run_dir} already has {start_epoch} finished epochs, more than the {t.epochs} asked for; "
                f"give --epochs above {start_epoch} to train more"
            )
        if start_epoch == t.epochs:
            log(f"{run_dir} already has {start_epoch} epochs; ask for more with --epochs")
    if run_dir is not None and dist_info.is_main:
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
    run_loggers = Loggers.create(loggers if dist_info.is_main else (), run_dir, config, panel_every=log_images_every)
    counts = {"train": len(train_data)} | ({"val": len(val_data)} if val_data is not None else {})
    _write_card(run_dir if dist_info.is_main else None, config, history, counts, command)

    ema, budget = _averaging_and_budget(config, model, resumed)
    compiled = resolve_compile(t.compile, device)
    step_model = model
    if compiled:
        try:
            # compilation happens at the first step; a failure there (no C compiler, unsupported op) runs
            # that code eagerly with a warning instead of stopping the run
            torch._dynamo.config.suppress_errors = True
            step_model = torch.compile(model)
        except Exception as e:  # no compiler toolchain, unsupported platform ...
            log(f"torch.compile unavailable ({type(e).__name__}: {e}); running eagerly")
            step_model = model
    eval_model = step_model  # evaluation runs on each rank's shard outside DDP: no collectives per batch
    step_model = distributed.wrap_model(step_model, model, device)  # DDP under several ranks
    loss_fn = _loss_fn(config, train_data, device)
    if device.type == "cuda" and train_data.nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]:
        train_data = train_data.to(device)
        val_data = val_data.to(device) if val_data is not None else None
    val_part = distributed.shard(val_data)  # this rank's validation samples, none repeated

    memory = torch.channels_last if t.channels_last else torch.contiguous_format
    ignore = _train_ignore_index(config)
    checkpointer = _Checkpointer(run_dir if dist_info.is_main else None, config)
    checkpointer.ema = ema  # its average is saved as the best weights, and beside the raw ones
    steps_per_epoch = math.ceil(math.ceil(len(train_data) / dist_info.world_size) / batch_size)
    if dist_info.enabled:
        log(f"{dist_info.world_size} processes: global batch {t.batch_size} = {batch_size} per process")
    log(
        f"training {config.model.name} on {len(train_data)} images"
        + (f", validating on {len(val_data)}" if val_data is not None else "")
        + f" | device {device}, precision {'bf16' if dtype else 'fp32'}, compile {'on' if compiled else 'off'}"
    )

    augment = None
    if t.augment.enabled:
        augment = augment_batch
    if t.crop is not None:
        augment = _crop_fn(config, train_data)
    val_seconds = 0.0  # the last validation's duration: what the budget keeps in reserve

    stopped_early = False
    panel_data = val_data if val_data is not None and len(val_data) else train_data
    run_loggers.set_panel_data(panel_data, config.palette, config.preprocess)  # normalised as training is
    with _SigintGuard() as sigint, _progress(progress) as bar, run_loggers:
        for epoch in range(start_epoch, t.epochs):
            if budget is not None and budget.exhausted(val_seconds):
                break
            model.train()
            _freeze_for_epoch(model, t.freeze_encoder_epochs, epoch, log)
            distributed.seed_rank(t.seed, epoch)
            gen = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
            aug_gen = (
                torch.Generator(device=device).manual_seed(t.seed * 100_019 + epoch + 7_919 * dist_info.rank)
                if augment
                else None
            )  # per rank: ranks must not draw the same augmentations for their samples
            cm = ConfusionMatrix(config.model.n_classes, ignore, device=device)
            loss_sum = torch.zeros((), device=device)
            first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a NaN/Inf loss
            seen = 0
            of = f"/{t.epochs}" if budget is None else f" ({max(budget.left, 0):.0f} s of the budget left)"
            task = bar.add_task(f"epoch {epoch + 1}{of}", total=steps_per_epoch, info="") if bar else None
            t0 = last_refresh = time.perf_counter()
            for step, (x, y) in enumerate(
                train_data.batches(
                    batch_size,
                    device=device,
                    shuffle=True,
                    generator=gen,
                    rank=dist_info.rank,
                    world_size=dist_info.world_size,
                )
            ):
                if sigint.hit:
                    raise TrainingInterrupted(_interrupt_message(run_dir, epoch))
                if budget is not None and step and budget.exhausted(val_seconds):
                    break  # the budget is spent: validate and save this (partial) epoch
                factor = _factor(config, epoch + step / steps_per_epoch, budget) * plateau.factor
                for group in opt.param_groups:
                    group["lr"] = t.lr * factor
                x = to_float(x, config.preprocess)
                if augment is not None:
                    x, y = augment(
                        x, y, t.augment, ignore_index=ignore if ignore is not None else 255, generator=aug_gen
                    )
                x = x.contiguous(memory_format=memory)
                with autocast(device, dtype):
                    logits = step_model(x)
                loss = loss_fn(logits, y)
                if t.nan_policy == "skip" and not distributed.all_finite(loss):
                    log(f"skipped step {step + 1} of epoch {epoch + 1}: loss is {loss.item()}")
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    ema.update(runio.unwrap(model))
                loss_sum += loss.detach() * x.shape[0]
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)  # no sync
                seen += x.shape[0]
                cm.update(logits.detach().argmax(1), y)
                now = time.perf_counter()
                if bar and (now - last_refresh > 0.5 or step == steps_per_epoch - 1):
                    last_refresh = now
                    mean_loss = loss_sum.item() / max(seen, 1)
                    _check_finite(mean_loss, epoch, step, run_dir, first_bad)
                    m = cm.compute()
                    bar.update(
                        task,
                        completed=step + 1,
                        info=f"loss {mean_loss:.4f} acc {m.pixel_accuracy:.4f} "
                        f"mIoU {m.mean_iou:.4f} {seen / (now - t0):.1f} img/s",
                    )
            seen = distributed.reduce_train_sums(loss_sum, cm, seen)  # over ranks, in place
            if seen == 0:
                raise NonFiniteLoss(
                    f"every step of epoch {epoch + 1} had a non-finite loss; lower the learning rate or check the data"
                )
            train_seconds = time.perf_counter() - t0
            train_loss = loss_sum.item() / seen
            _check_finite(train_loss, epoch, steps_per_epoch - 1, run_dir, first_bad)
            tm = cm.compute()
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_accuracy": tm.pixel_accuracy,
                "train_miou": tm.mean_iou,
                "lr": opt.param_groups[0]["lr"],
                "images_per_s": seen / train_seconds,
            }
            score = tm.mean_iou
            if val_data is not None and len(val_data):
                v0 = time.perf_counter()
                vcm, vloss = evaluate_data(
                    ema.module if ema is not None else eval_model,
                    val_part,
                    config,
                    device=device,
                    dtype=dtype,
                    loss_fn=loss_fn,
                    batch_size=batch_size,
                )
                val_seconds = time.perf_counter() - v0
                vcm.all_reduce()
                vloss = distributed.weighted_mean(vloss, len(val_part), device)
                vm = vcm.compute()
                row |= {"val_loss": vloss, "val_accuracy": vm.pixel_accuracy, "val_miou": vm.mean_iou}
                row |= validation_columns(vm, config.class_names or [])
                score = vm.mean_iou
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            is_best = score > best or not (val_data is not None and len(val_data))  # no validation: the last
            if is_best:
                best, since_best = score, 0
            else:
                since_best += 1
            if t.schedule == "plateau":
                plateau.step(score)
            state = {"epoch": epoch + 1, "best": best, "since_best": since_best, "plateau": plateau.state()}
            if budget is not None:
                state["budget"] = budget.state()
            checkpointer.save(model, opt, history, state, is_best)
            run_loggers.epoch_end(row, vm.iou if val_data is not None and len(val_data) else None, eval_model, device)
            if bar:
                bar.update(task, completed=steps_per_epoch)
            log(_epoch_line(row, t.epochs if budget is None else None))
            if epoch_callback is not None:
                epoch_callback(row)
            if budget is not None and budget.exhausted(val_seconds):
                log(f"time budget of {budget.seconds:.0f} s spent ({budget.elapsed:.0f} s); best mIoU {best:.4f}")
                break
            if t.early_stopping and since_best >= t.early_stopping:
                log(f"early stopping: validation mIoU has not improved for {since_best} epochs (best {best:.4f})")
                stopped_early = True
                break
        checkpointer.plot(history)  # the epochs since the last throttled plot
    _write_card(run_dir if dist_info.is_main else None, config, history, counts, command)

    distributed.barrier()  # rank 0 has written its last checkpoint before the others read the best weights
    if run_dir is not None and (run_dir / WEIGHTS).exists():
        best_weights, _ = runio.load_tensors(run_dir / WEIGHTS)
        runio.unwrap(model).load_state_dict(best_weights)
    model.eval()
    return TrainResult(run_dir, model, history, best if best >= 0 else None, stopped_early)


def validation_columns(vm: SegmentationMetrics, class_names: list[str]) -> dict[str, float | None]:
    """The extra metrics.csv columns of a validation pass: mAcc, fwIoU and each class's IoU."""
    from .plots import PER_CLASS_IOU

    row: dict[str, float | None] = {"val_mean_accuracy": vm.mean_accuracy, "val_fw_iou": vm.fw_iou}
    for name, iou in zip(class_names, vm.iou):
        row[f"{PER_CLASS_IOU}{name}"] = None if math.isnan(iou) else iou
    return row


def _averaging_and_budget(
    config: RunConfig, model: nn.Module, resumed: tuple[dict[str, torch.Tensor], dict[str, Any]] | None
) -> tuple[ModelEMA | None, TimeBudget | None]:
    """The weight average and the time budget the config asks for, restored from a resumed checkpoint."""
    t = config.train
    ema = budget = None
    if t.ema is not None:
        ema = ModelEMA(runio.unwrap(model), t.ema)
        saved = {k[4:]: v for k, v in resumed[0].items() if k.startswith("ema.")} if resumed else {}
        if saved:
            ema.load_state_dict(saved, resumed[1].get("ema_updates", 0))  # type: ignore[index]
    if t.time_budget is not None:
        budget = TimeBudget(t.time_budget, resumed[1].get("budget") if resumed else None).start()
    return ema, budget


def _factor(config: RunConfig, epoch_progress: float, budget: TimeBudget | None) -> float:
    """The schedule's learning-rate factor: by epochs, or (cosine under a time budget) by the clock."""
    t = config.train
    if budget is None or t.schedule != "cosine":
        return lr_factor(config, epoch_progress)
    in_warmup = bool(t.warmup_epochs) and epoch_progress < t.warmup_epochs
    warm = max(epoch_progress / t.warmup_epochs, 1e-3) if in_warmup else 1.0
    return budget.lr_factor(in_warmup, warm)


def _crop_fn(config: RunConfig, train_data: SegmentationData) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The batch transform of crop training: random crops (see ``data.augment.random_crops``)."""
    from .data.augment import random_crops

    t = config.train
    weight = None
    if t.class_aware_crop > 0:  # inverse pixel frequency: the rarer the class, the likelier its crops
        counts = train_data.class_counts(config.model.n_classes).double()
        weight = torch.where(counts > 0, counts.sum() / counts.clamp_min(1), 0).float()

    def crop(x: torch.Tensor, y: torch.Tensor, cfg: Any, *, ignore_index: int, generator: torch.Generator):
        w = weight.to(x.device) if weight is not None else None
        return random_crops(
            x,
            y,
            t.crop,  # type: ignore[arg-type]
            cfg,
            ignore_index=ignore_index,
            generator=generator,
            class_aware=t.class_aware_crop,
            class_weight=w,
        )

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
    d = {
        k: _abspath(v) if k in RESUME_DATA[:4] else v for k, v in changes.items() if k in RESUME_DATA and v is not None
    }
    return replace(config, train=replace(config.train, **t), data=replace(config.data, **d))


def _abspath(path: Any) -> str:
    import os

    return os.path.abspath(os.path.expanduser(str(path)))
