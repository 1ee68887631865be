"""The run-folder contract: a folder that describes itself and loads without unpickling.

```
RUN/
  config.json          RunConfig: everything to rebuild the model and its preprocessing
  weights.safetensors  the best weights (by validation mIoU; the last epoch without validation)
  last.safetensors     the last finished epoch: weights, optimizer state, RNG state (for --resume)
  metrics.csv          one row per finished epoch
  curves.png           loss, accuracy and mIoU per epoch
```
Every file is written to a temporary name, flushed and renamed (``unetkit.fsio``), so a crash never
leaves a half-written file under the real name.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import safe_open
from safetensors.torch import save as st_save
from torch import nn

from . import fsio
from .config import ModelConfig, RunConfig
from .errors import RunError, first_line
from .model import MODELS

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
LAST = "last.safetensors"
METRICS = "metrics.csv"
CURVES = "curves.png"

RUN_FILES = (LAST, WEIGHTS, METRICS, CURVES, CONFIG)  # removal order: the resume commit point first

METRIC_FIELDS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "train_miou",
    "val_loss",
    "val_accuracy",
    "val_miou",
    "lr",
    "seconds",
    "images_per_s",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under torch.compile and DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's wrapper
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Atomically write a safetensors file; ``metadata`` is stored as one JSON string."""
    meta = {"unetkit": json.dumps(metadata)} if metadata is not None else None
    fsio.atomic_write_bytes(path, st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a safetensors file (never a pickle) and its unetkit metadata."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, or a link to a device such as /dev/zero
        raise RunError(f"{path} is not a regular file; restore the run folder or retrain")
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        meta = _read_metadata(path)
    except FileNotFoundError:
        raise RunError(f"{path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise RunError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated or "
            "corrupt: retrain, or resume from an intact copy"
        ) from None
    return tensors, meta


def _read_metadata(path: Path) -> Any:
    """The unetkit metadata in a safetensors file's header (``save_tensors``), None when it has none."""
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("unetkit")
    return json.loads(raw) if raw else None


def build_model(config: ModelConfig) -> nn.Module:
    """The network a ModelConfig describes, freshly initialised."""
    return MODELS[config.name](
        config.input_size,
        config.n_filters,
        config.n_classes,
        depth=config.depth,
        dropout=config.dropout,
        batch_norm=config.batch_norm,
    )


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """metrics.csv: the ``METRIC_FIELDS`` columns, then any other numeric columns the rows carry
    (e.g. ``val_mean_accuracy``, ``val_iou_<class>``) in the order they first appear."""
    extra = [
        k
        for k in dict.fromkeys(k for row in rows for k in row)
        if k not in METRIC_FIELDS and all(isinstance(r.get(k), (int, float, type(None))) for r in rows)
    ]
    fields = METRIC_FIELDS + extra
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in fields})
    fsio.atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def read_metrics(path: str | Path) -> list[dict[str, float | int | None]]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, float | int | None] = {}
            for k, v in raw.items():
                if v in ("", None):
                    row[k] = None
                else:
                    row[k] = int(v) if k == "epoch" else float(v)
            rows.append(row)
    return rows


def existing_run_files(run_dir: str | Path) -> list[str]:
    """The run files (config, weights, checkpoint, metrics, curves) already in ``run_dir``."""
    run_dir = Path(run_dir)
    return [name for name in RUN_FILES if (run_dir / name).exists()] if run_dir.is_dir() else []


def claim_run_folder(run_dir: str | Path, *, overwrite: bool = False, create: bool = True) -> Path:
    """Make ``run_dir`` ready for a new run: refuse one that holds a run unless ``overwrite``.

    With ``overwrite`` the old run's files are deleted first (the resume checkpoint before anything
    else), so that the folder never holds parts of two runs, even if the new run is killed at once.
    A training run that never committed an epoch (no last.safetensors: stopped or killed before its first
    checkpoint was complete) is taken over, as "run the same command again" promises.
    ``create`` makes the folder when it is missing.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a run folder; choose another --out")
    found = existing_run_files(run_dir)
    if found and not overwrite and not _uncommitted(run_dir, found):
        resume = f", `unetkit train --resume {run_dir}` to continue it" if LAST in found else ""
        raise RunError(
            f"{run_dir} already holds a run ({', '.join(found)}); choose another --out{resume}, "
            "or pass --overwrite to replace it (its files are deleted)"
        )
    for name in found:
        try:
            (run_dir / name).unlink(missing_ok=True)
        except OSError as e:
            raise RunError(f"could not delete {run_dir / name} ({e.strerror or e}); fix permissions") from None
    try:
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"could not create the run folder {run_dir} ({e.strerror or e}); choose another --out") from None
    return run_dir


def _uncommitted(run_dir: Path, found: list[str]) -> bool:
    """True for what a training run leaves before its first epoch is committed: no last.safetensors, and
    weights (if any) written by training (they carry an epoch), not by an import or ``save_run``."""
    if LAST in found:
        return False
    if WEIGHTS not in found:
        return METRICS not in found
    try:
        meta = _read_metadata(run_dir / WEIGHTS)
    except Exception:  # unreadable: not ours to judge, so not taken over
        return False
    return isinstance(meta, dict) and "epoch" in meta


def save_run(
    run_dir: str | Path,
    model: nn.Module,
    config: RunConfig,
    *,
    metrics: list[dict[str, Any]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a loadable run folder from a model and its config (used by import and by notebooks).

    A folder that already holds a run is refused unless ``overwrite`` (which deletes its files first).
    """
    run_dir = claim_run_folder(run_dir, overwrite=overwrite)
    fsio.atomic_write_text(run_dir / CONFIG, config.to_json())
    save_tensors(run_dir / WEIGHTS, model_state(model), {"kind": "weights"})
    if metrics:
        write_metrics(run_dir / METRICS, metrics)
    return run_dir


@dataclass
class Run:
    """A loaded run folder: its config, model (eval mode) and per-epoch metrics."""

    path: Path
    config: RunConfig
    model: nn.Module
    metrics: list[dict[str, Any]] = field(default_factory=list)


def load_run(path: str | Path, *, weights: str = "best", device: str | torch.device = "cpu") -> Run:
    """Load a run folder: ``weights`` is "best" (weights.safetensors) or "last" (last.safetensors)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run folder {path} does not exist (train one with `unetkit train ... --out {path}`)")
    config = RunConfig.load(path / CONFIG)
    file = path / (WEIGHTS if weights == "best" else LAST)
    if weights == "best" and not file.exists() and (path / LAST).exists():
        file = path / LAST
    tensors, _ = load_tensors(file)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")} or tensors
    with torch.device("meta"):  # shapes only: a config.json edited to a huge model allocates nothing
        expected = {k: tuple(v.shape) for k, v in build_model(config.model).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        key = min(set(expected) ^ set(found), default=None) or min(k for k in expected if expected[k] != found[k])
        detail = (
            f"{key}: {found[key]} in the weights, {expected[key]} in the config"
            if key in expected and key in found
            else f"{key} only in the {'config' if key in expected else 'weights'}"
        )
        raise RunError(
            f"{file} does not match {path / CONFIG} ({detail}); the two files come from different runs"
        ) from None
    model = build_model(config.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RunError(
            f"{file} does not match {path / CONFIG} ({first_line(e)}); the two files come from different runs"
        ) from None
    model.to(device).eval()
    return Run(path, config, model, read_metrics(path / METRICS))
