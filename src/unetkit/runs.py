"""``unetkit runs DIR``: a table of the run folders under a folder, sortable, or as JSON.

A run folder is any folder with a config.json next to weights or metrics (or an ensemble.json);
folders inside a run (an ensemble's members) are not listed again.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .card import best_row, parameter_count
from .config import RunConfig
from .ensemble import MANIFEST, is_ensemble, read_manifest
from .errors import ConfigError, RunError
from .run import CONFIG, LAST, METRICS, WEIGHTS, read_metrics

SORT_KEYS = ("name", "model", "classes", "epochs", "miou", "time", "date")
MAX_DEPTH = 4


@dataclass
class RunSummary:
    name: str  # path relative to the listed folder
    model: str
    parameters: int
    classes: int
    epochs: int  # finished
    epochs_planned: int
    best_val_miou: float | None
    best_epoch: int | None
    seconds: float
    date: str  # ISO time of the last write
    kind: str  # "run" or "ensemble"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_run(path: Path) -> bool:
    if not (path / CONFIG).is_file():
        return False
    return any((path / f).exists() for f in (WEIGHTS, LAST, METRICS, MANIFEST))


def find_runs(root: str | Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Run folders at or under ``root`` (not looking inside a run folder), up to ``max_depth`` levels down."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"{root} is not a folder")
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if _is_run(folder):
            found.append(folder)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            walk(child, depth + 1)

    walk(root, 0)
    return found


def summarize_run(path: Path, root: Path) -> RunSummary:
    """One row of the table, from config.json, metrics.csv and the files' times."""
    config = RunConfig.load(path / CONFIG)
    kind = "ensemble" if is_ensemble(path) else "run"
    if kind == "ensemble":
        members = read_manifest(path)["members"]
        configs = [RunConfig.load(path / m / CONFIG).model for m in members]
        model = f"ensemble of {len(members)}"
        params = sum(parameter_count(c) for c in configs)
    else:
        m = config.model
        model = f"{m.name} f{m.n_filters} d{m.depth}" + (" bn" if m.batch_norm else "")
        params = parameter_count(m)
    history = read_metrics(path / METRICS) if kind == "run" else []
    best = best_row(history)
    has_val = best is not None and best.get("val_miou") is not None
    mtime = max((p.stat().st_mtime for p in path.iterdir() if p.is_file()), default=(path / CONFIG).stat().st_mtime)
    name = path.relative_to(root).as_posix() if path != root else path.name
    return RunSummary(
        name=name or ".",
        model=model,
        parameters=params,
        classes=config.model.n_classes,
        epochs=len(history),
        epochs_planned=config.train.epochs if kind == "run" else 0,
        best_val_miou=float(best["val_miou"]) if has_val else None,  # type: ignore[index]
        best_epoch=int(best["epoch"]) if has_val else None,  # type: ignore[index]
        seconds=sum(float(r.get("seconds") or 0) for r in history),
        date=dt.datetime.fromtimestamp(mtime).isoformat(timespec="seconds"),
        kind=kind,
    )


def _sort_key(key: str) -> Callable[[RunSummary], tuple[bool, Any]]:
    attr = {
        "name": "name",
        "model": "model",
        "classes": "classes",
        "epochs": "epochs",
        "miou": "best_val_miou",
        "time": "seconds",
        "date": "date",
    }[key]

    def get(s: RunSummary) -> tuple[bool, Any]:
        v = getattr(s, attr)
        return (v is None, v if v is not None else 0)  # runs without the value last

    return get


def list_runs(root: str | Path, *, sort: str = "date", reverse: bool | None = None) -> list[RunSummary]:
    """The runs under ``root``, sorted by ``sort`` (one of SORT_KEYS): mIoU, time and date best/latest first."""
    if sort not in SORT_KEYS:
        raise ConfigError(f"--sort must be one of {', '.join(SORT_KEYS)}; got {sort!r}")
    root = Path(root)
    rows = []
    for path in find_runs(root):
        try:
            rows.append(summarize_run(path, root))
        except (RunError, ConfigError, OSError, ValueError):  # one broken folder must not hide the others
            continue
    if reverse is None:
        reverse = sort in ("miou", "date", "time", "epochs")
    present = [r for r in rows if _sort_key(sort)(r)[0] is False]
    absent = [r for r in rows if _sort_key(sort)(r)[0] is True]
    return sorted(present, key=_sort_key(sort), reverse=reverse) + sorted(absent, key=lambda r: r.name)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_table(rows: list[RunSummary]) -> str:
    """An aligned text table: name, model, classes, epochs, best val mIoU (epoch), time, date."""
    header = ["name", "model", "classes", "epochs", "best val mIoU", "time", "date"]
    body = []
    for r in rows:
        miou = f"{r.best_val_miou:.4f} (ep {r.best_epoch})" if r.best_val_miou is not None else "-"
        epochs = f"{r.epochs}/{r.epochs_planned}" if r.kind == "run" else "-"
        time = _duration(r.seconds) if r.kind == "run" else "-"
        body.append([r.name, r.model, str(r.classes), epochs, miou, time, r.date.replace("T", " ")])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    right = {2, 3, 4, 5}
    lines = []
    for cells in [header, *body]:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(line.rstrip() for line in lines)


def runs_json(rows: list[RunSummary]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2, allow_nan=False)
