"""Watching a run: TensorBoard and MLflow loggers behind one small interface that ``fit`` calls.

``metrics.csv`` and ``curves.png`` (written by the checkpointer) stay the no-dependency default;
the loggers here are extra views of the same numbers. Each epoch they receive the epoch's row
(losses, accuracy, mIoU, learning rate, images/s, ...) and the validation metrics (for per-class
IoU), and every ``panel_every`` epochs a fixed panel of validation images: input | truth | prediction,
one image per row, always the same images so that the panels compare across epochs.

Packages are checked when the loggers are created, before any data is read or any epoch runs: a
missing one is a one-line error naming the extra to install. ``progress_bar`` is the console bar
that prediction to files (images and videos) shows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .config import RunConfig
from .errors import ConfigError, UnetkitError, first_line, needs_extra
from .plots import colorize
from .preprocess import to_channels, to_float

LOGGERS = ("tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
PANEL_IMAGES = 4

# Row keys -> the tag they are logged under (other numeric keys keep their own name).
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "train_miou": "miou/train",
    "val_miou": "miou/val",
    "lr": "lr",
    "images_per_s": "images_per_s",
    "seconds": "epoch_seconds",
}


class RunLogger(Protocol):
    """What one logger does; ``fit`` talks to them all through ``Loggers``."""

    def log_scalars(self, epoch: int, scalars: dict[str, float]) -> None: ...

    def log_panel(self, epoch: int, panel: np.ndarray) -> None: ...

    def close(self, status: str) -> None: ...


def _missing(package: str, extra: str) -> UnetkitError:
    return needs_extra(f"--log {extra}", package, extra)


def check_available(names: Sequence[str]) -> list[str]:
    """Validate logger names and that their packages import; returns the names, de-duplicated in order."""
    out: list[str] = []
    for name in names:
        for part in str(name).split(","):
            part = part.strip().lower()
            if not part or part in ("none", "csv"):  # csv is always written
                continue
            if part not in LOGGERS:
                raise ConfigError(f"--log must be one of {', '.join(LOGGERS)} (several allowed); got {part!r}")
            if part not in out:
                out.append(part)
    for name in out:
        try:
            if name == "tensorboard":
                import tensorboard  # type: ignore[import-untyped]  # noqa: F401
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            else:
                import mlflow  # noqa: F401
        except ImportError:
            raise _missing("tensorboard" if name == "tensorboard" else "mlflow-skinny", name) from None
    return out


class TensorBoardLogger:
    """Event files in RUN/tensorboard (``tensorboard --logdir RUN``)."""

    def __init__(self, run_dir: Path, config: RunConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.path))
        self.writer.add_text("config", "```\n" + config.to_json() + "\n```", 0)

    def log_scalars(self, epoch: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def log_panel(self, epoch: int, panel: np.ndarray) -> None:
        self.writer.add_image("val/panel", panel, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


def mlflow_uri(run_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a local file store in RUN/mlruns."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.resolve() / MLFLOW_DIR).as_uri()


def _metric_name(tag: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", tag)


class MlflowLogger:
    """One MLflow run per unetkit run: the config as parameters, metrics per epoch, panels as artifacts.

    The experiment is named after the run folder's parent; the MLflow run after the run folder.
    """

    def __init__(self, run_dir: Path, config: RunConfig):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = mlflow_uri(run_dir)
        if self.uri.startswith("file:"):  # recent MLflow refuses file stores unless asked; sqlite needs sqlalchemy
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        name = run_dir.resolve().parent.name or "unetkit"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"unetkit.run_dir": str(run_dir)})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:500]) for k, v in _flatten(config.to_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_scalars(self, epoch: int, scalars: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_metric_name(k), float(v), now, epoch) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_panel(self, epoch: int, panel: np.ndarray) -> None:
        self.client.log_image(self.run_id, panel, artifact_file=f"panels/val_epoch_{epoch:04d}.png")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        elif k not in ("class_names", "palette"):
            out[f"{prefix}{k}"] = v
    return out


def epoch_scalars(row: dict[str, Any], class_names: list[str], val_iou: Sequence[float] | None) -> dict[str, float]:
    """The numbers of one epoch under their logger tags, per-class IoU as ``iou/val/<class>``."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not np.isfinite(value):
            continue
        out[TAGS.get(key, key)] = float(value)
    for name, iou in zip(class_names, val_iou or []):
        if np.isfinite(iou):  # NaN: the class is absent from truth and prediction
            out[f"iou/val/{name}"] = float(iou)
    return out


class ValidationPanel:
    """A fixed set of validation images drawn as rows of input | truth | prediction."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, palette: list[list[int]], preprocess: Any = None):
        self.images = images.detach().cpu()  # (N, C, H, W) integer images, as the data holds them
        self.masks = masks.detach().cpu()
        self.palette = palette
        self.preprocess = preprocess  # the run's normalisation (a PreprocessConfig), as training uses it

    @classmethod
    def from_data(
        cls, data: Any, palette: list[list[int]], preprocess: Any = None, count: int = PANEL_IMAGES
    ) -> ValidationPanel | None:
        """The first ``count`` samples of a data set (cached or streamed), or None when it is empty."""
        if data is None or not len(data):
            return None
        x, y = next(iter(data.batches(min(count, len(data)), device="cpu")))
        return cls(x, y, palette, preprocess)

    @torch.no_grad()
    def render(self, model: torch.nn.Module, device: torch.device) -> np.ndarray:
        """(N * H, 3 * W, 3) uint8: the model's predictions now, next to the inputs and the truth."""
        was_training = model.training
        model.eval()
        try:
            logits = model(to_float(self.images.to(device), self.preprocess))
        finally:
            model.train(was_training)
        pred = logits.argmax(1).cpu().numpy()
        shown = self.images
        if shown.dtype != torch.uint8:  # 16-bit data: shown scaled to 8 bits
            shown = (shown.float() * (255.0 / max(float(shown.max()), 1.0))).round().to(torch.uint8)
        rows = []
        for image, truth, p in zip(shown.permute(0, 2, 3, 1).numpy(), self.masks.numpy(), pred):
            rgb = to_channels(image, 3)
            rows.append(np.concatenate([rgb, colorize(truth, self.palette), colorize(p, self.palette)], axis=1))
        return np.ascontiguousarray(np.concatenate(rows, axis=0))


class Loggers:
    """All the loggers of one run; what ``fit`` calls once per epoch and once at the end."""

    def __init__(self, loggers: list[RunLogger], config: RunConfig, panel_every: int = 5):
        self.loggers = loggers
        self.class_names = list(config.class_names or [])
        self.panel_every = panel_every
        self.panel: ValidationPanel | None = None

    @classmethod
    def create(
        cls, names: Sequence[str], run_dir: str | Path | None, config: RunConfig, *, panel_every: int = 5
    ) -> Loggers:
        """Check packages, then open every logger named (none: an empty group that does nothing)."""
        names = check_available(names)
        if names and run_dir is None:
            raise ConfigError("--log needs a run folder (--out) to write to")
        if panel_every < 0:
            raise ConfigError(f"--log-images-every must be >= 0 (0: no image panels), got {panel_every}")
        makers: dict[str, Callable[[Path, RunConfig], RunLogger]] = {
            "tensorboard": TensorBoardLogger,
            "mlflow": MlflowLogger,
        }
        opened: list[RunLogger] = []
        for name in names:
            try:
                opened.append(makers[name](Path(run_dir), config))  # type: ignore[arg-type]
            except Exception as e:  # an unreachable tracking server, a read-only folder ...
                for logger in opened:
                    logger.close("FAILED")
                first = first_line(e, 300)
                where = f" at {mlflow_uri(Path(run_dir))}" if name == "mlflow" else ""  # type: ignore[arg-type]
                raise UnetkitError(
                    f"--log {name} could not start{where} ({first}); fix the logger's target (for MLflow, "
                    "MLFLOW_TRACKING_URI) or train without it"
                ) from None
        return cls(opened, config, panel_every)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def set_panel_data(self, data: Any, palette: list[list[int]], preprocess: Any = None) -> None:
        """Choose the fixed panel images from the validation data (the first few samples)."""
        if self.loggers and self.panel_every:
            self.panel = ValidationPanel.from_data(data, palette, preprocess)

    def epoch_end(
        self, row: dict[str, Any], val_iou: Sequence[float] | None, model: torch.nn.Module, device: torch.device
    ) -> None:
        """Log one finished epoch; draw the panel on the first epoch and every ``panel_every`` epochs."""
        if not self.loggers:
            return
        epoch = int(row["epoch"])
        scalars = epoch_scalars(row, self.class_names, val_iou)
        panel = None
        if self.panel is not None and (epoch == 1 or epoch % self.panel_every == 0):
            panel = self.panel.render(model, device)
        for logger in self.loggers:
            logger.log_scalars(epoch, scalars)
            if panel is not None:
                logger.log_panel(epoch, panel)

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """Close every logger: FINISHED, KILLED after Ctrl-C, FAILED after an error."""
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close(
                "KILLED" if issubclass(exc_type, KeyboardInterrupt) or "Interrupt" in exc_type.__name__ else "FAILED"
            )

    def close(self, status: str = "FINISHED") -> None:
        for logger in self.loggers:
            try:
                logger.close(status)
            except Exception:  # closing a logger must never cost a finished run
                pass
        self.loggers = []


def progress_bar(enabled: bool, total: int | None, what: str) -> AbstractContextManager[Any]:
    """A transient bar on stderr (``what``, done of ``total``, rate, time left); None inside when not ``enabled``.

    ``total`` None: not known (a video whose container does not say). Move it on with ``advance``.
    """
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    bar.add_task(what, total=total, rate="")
    return bar


def advance(bar: Any, n: int, unit: str) -> None:
    """Move a ``progress_bar`` on by ``n`` items and show its rate in ``unit``/s."""
    task = bar.tasks[0]
    speed = task.finished_speed or task.speed
    bar.update(task.id, advance=n, rate=f"{speed:.1f} {unit}/s" if speed else "")
