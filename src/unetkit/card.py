"""The model card: README.md in each run folder, written with the run, so that the folder explains itself.

It says what the model is and how big, what data it saw (folders, counts, classes with their
colours), the recipe and the command, the best scores with their epoch, how to load it from the
command line and from Python, and the software versions it was trained with.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import numpy
import torch

from . import __version__
from .config import ModelConfig, RunConfig
from .fsio import atomic_write_text
from .run import CONFIG, build_model

CARD = "README.md"
FALLBACK = "MODEL_CARD.md"  # used when the folder already holds a README.md that unetkit did not write
MARKER = "<!-- model card written by unetkit; rewritten with the run -->"


def parameter_count(model: ModelConfig) -> int:
    """Parameters of the network a ModelConfig describes (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(model).parameters())


def best_row(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch with the best validation mIoU (training mIoU when nothing was validated)."""
    key = "val_miou" if any(r.get("val_miou") is not None for r in history) else "train_miou"
    rows = [r for r in history if r.get(key) is not None]
    return max(rows, key=lambda r: float(r[key])) if rows else None


def _fmt(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def _model_section(config: RunConfig, ensemble: dict[str, Any] | None, run_dir: Path) -> list[str]:
    m = config.model
    h, w, c = m.input_size
    if ensemble is not None:
        members = [RunConfig.load(run_dir / name / CONFIG).model for name in ensemble["members"]]
        total = sum(parameter_count(mc) for mc in members)
        lines = [f"- ensemble of {len(members)} runs averaging their class probabilities, {total:,} parameters"]
        lines += [
            f"  - `{name}`: {mc.name}, n_filters {mc.n_filters}" for name, mc in zip(ensemble["members"], members)
        ]
        lines += [f"- sources: {', '.join(f'`{s}`' for s in ensemble.get('sources', []))}"]
        return lines + [f"- input {h}x{w}, {c} channel(s); {m.n_classes} classes"]
    n = parameter_count(m)
    kind = "U-Net (the seed's unet_model)" if m.name == "unet" else "FCN baseline"
    return [
        f"- {kind}: n_filters {m.n_filters}, depth {m.depth}, dropout {m.dropout}, "
        f"batch norm {'on' if m.batch_norm else 'off'}",
        f"- input {h}x{w}, {c} channel(s) (images resized {config.preprocess.resize}, prediction by "
        f"{config.preprocess.predict_mode}); output {m.n_classes} classes",
        f"- {n:,} parameters ({n * 4 / 1e6:.1f} MB as float32)",
    ]


def _classes_table(config: RunConfig) -> list[str]:
    lines = ["| id | class | colour |", "|---:|---|---|"]
    for i, (name, rgb) in enumerate(zip(config.class_names or [], config.palette or [])):
        hexa = "#{:02x}{:02x}{:02x}".format(*rgb)
        lines.append(f"| {i} | {name} | `{hexa}` rgb({rgb[0]}, {rgb[1]}, {rgb[2]}) |")
    return lines


def _data_section(config: RunConfig, counts: dict[str, int] | None, ensemble: bool = False) -> list[str]:
    if ensemble:
        return ["- each member's own README.md (under `members/`) describes the data it saw; the classes:", ""] + (
            _classes_table(config)
        )
    d = config.data
    counts = counts or {}

    def n(key: str) -> str:
        return f" ({counts[key]} images)" if key in counts else ""

    if d.images:
        lines = [f"- training: images `{d.images}`, masks `{d.masks}`{n('train')}"]
    else:
        lines = [f"- training: data given in memory (Python API){n('train')}"]
    if d.val_images:
        lines.append(f"- validation: images `{d.val_images}`, masks `{d.val_masks}`{n('val')}")
    elif getattr(d, "fold", None) is not None:
        lines.append(f"- validation: fold {d.fold} of `{d.split_file}`{n('val')}")
    elif d.val_fraction:
        lines.append(f"- validation: {d.val_fraction:.0%} held out (split seed {d.split_seed}){n('val')}")
    elif "val" in counts:
        lines.append(f"- validation: data given in memory{n('val')}")
    else:
        lines.append("- no validation set: the saved weights are the last epoch's")
    lines.append(f"- masks read as {d.mask_mode}" + (f", ignore index {d.ignore_index}" if d.ignore_index else ""))
    return lines + [""] + _classes_table(config)


def _recipe_section(config: RunConfig, run_dir: Path, command: str | None) -> list[str]:
    t = config.train
    lines = [
        f"- recipe {t.recipe}: {t.epochs} epochs, batch {t.batch_size}, {t.optimizer} lr {t.lr:g} "
        f"(weight decay {t.weight_decay:g}), {t.schedule} schedule, loss {t.loss}, class weights {t.class_weights}, "
        f"augmentation {'on' if t.augment.enabled else 'off'}, seed {t.seed}",
    ]
    init = getattr(t, "init_from", None)
    if init:
        frozen = getattr(t, "freeze_encoder_epochs", 0)
        lines.append(
            f"- started from `{init}`" + (f", encoder frozen for the first {frozen} epoch(s)" if frozen else "")
        )
    if command:
        lines += ["- command:", "", "```", command, "```"]
    lines += ["- every setting is in `config.json` (the input of `unetkit train --config` where that option exists)"]
    return lines


def _results_section(history: list[dict[str, Any]]) -> list[str]:
    best = best_row(history)
    if best is None:
        return ["- no finished epoch yet"]
    total = sum(float(r.get("seconds") or 0) for r in history)
    where = "validation" if best.get("val_miou") is not None else "training (no validation set)"
    lines = [
        f"- best {where} mIoU **{_fmt(best.get('val_miou', best.get('train_miou')))}** at epoch {best['epoch']} "
        f"of {len(history)}",
        f"- at that epoch: val accuracy {_fmt(best.get('val_accuracy'))}, val loss {_fmt(best.get('val_loss'))}, "
        f"train mIoU {_fmt(best.get('train_miou'))}, train loss {_fmt(best.get('train_loss'))}",
        f"- last epoch: val mIoU {_fmt(history[-1].get('val_miou'))}, train mIoU {_fmt(history[-1].get('train_miou'))}",
        f"- training time {total / 60:.1f} min ({total:.0f} s); per-epoch numbers in `metrics.csv`, curves in "
        "`curves.png`",
    ]
    return lines


def _usage_section(run_dir: Path) -> list[str]:
    r = run_dir.as_posix()
    return [
        "```",
        f"unetkit predict {r} IMAGES... --out predictions",
        f"unetkit evaluate {r} --images DIR --masks DIR",
        f"unetkit export {r} --out model.onnx",
        f"unetkit serve {r}",
        "```",
        "",
        "```python",
        "from unetkit.predict_files import load_predictor",
        f'predictor = load_predictor("{r}")',
        'mask = predictor.predict("image.png")  # (H, W) class ids at the image\'s size',
        "```",
    ]


def _software() -> list[str]:
    return [
        f"- unetkit {__version__}, PyTorch {torch.__version__}, NumPy {numpy.__version__}, "
        f"Python {sys.version.split()[0]}",
        f"- {platform.system()} {platform.machine()}"
        + (f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""),
    ]


def render_card(
    run_dir: str | Path,
    config: RunConfig,
    history: list[dict[str, Any]],
    *,
    counts: dict[str, int] | None = None,
    command: str | None = None,
    ensemble: dict[str, Any] | None = None,
) -> str:
    """The Markdown text of a run's model card."""
    run_dir = Path(run_dir)
    sections = [
        ("Model", _model_section(config, ensemble, run_dir)),
        ("Data", _data_section(config, counts, ensemble is not None)),
        ("Recipe", _recipe_section(config, run_dir, command)),
        ("Results", _results_section(history)),
        ("Use it", _usage_section(run_dir)),
        ("Software", _software()),
    ]
    if ensemble is not None:
        sections = [s for s in sections if s[0] not in ("Recipe", "Results")]
    title = f"# {run_dir.resolve().name}: {'ensemble' if ensemble else config.model.name} model card"
    out = [MARKER, title, ""]
    for name, lines in sections:
        out += [f"## {name}", "", *lines, ""]
    return "\n".join(out)


def write_card(run_dir: str | Path, config: RunConfig, history: list[dict[str, Any]], **kwargs: Any) -> Path:
    """Write RUN/README.md (atomically); see ``render_card`` for the arguments."""
    path = Path(run_dir) / CARD
    if path.exists() and not path.read_text(errors="replace").startswith(MARKER):
        path = path.with_name(FALLBACK)  # never overwrite someone's own README
    atomic_write_text(path, render_card(run_dir, config, history, **kwargs))
    return path
