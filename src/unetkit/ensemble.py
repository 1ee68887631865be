"""Ensembles: several runs that predict as one by averaging their class probabilities.

```
ENS/
  ensemble.json        {"kind": "ensemble", "members": ["members/0_fold_0", ...], "sources": [...]}
  config.json          the members' shared settings (classes, palette, input size, preprocessing)
  members/<i>_<name>/  a copy of each member run (config.json, weights.safetensors, metrics.csv)
  README.md            the model card
```
The folder holds copies, so it stays usable when the member runs move or are deleted. evaluate,
predict, export and serve accept it wherever they accept a run folder. The ensemble's "logits" are
the log of the mean of the members' softmax probabilities: their argmax is the class with the
highest averaged probability, and an ONNX export is one graph that computes exactly that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .card import CARD, write_card
from .config import RunConfig
from .errors import RunError
from .fsio import atomic_write_text
from .predict import Predictor
from .run import CONFIG, load_run, save_run

MANIFEST = "ensemble.json"
MEMBERS = "members"


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class EnsembleModule(nn.Module):
    """(N, C, H, W) floats -> (N, K, H, W) log of the members' mean softmax probabilities."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(m(x).float(), dim=1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


def _check_members(configs: list[tuple[str, RunConfig]]) -> None:
    """Members must predict the same classes from the same input; raise RunError naming the odd one."""
    first_name, first = configs[0]
    for name, c in configs[1:]:
        if c.model.n_classes != first.model.n_classes or list(c.class_names or []) != list(first.class_names or []):
            raise RunError(
                f"{name} predicts {c.model.n_classes} classes ({', '.join(c.class_names or [])}) but {first_name} "
                f"predicts {first.model.n_classes} ({', '.join(first.class_names or [])}); ensemble members must "
                "share their classes"
            )
        if c.model.input_size[2] != first.model.input_size[2]:
            raise RunError(
                f"{name} takes {c.model.input_size[2]} input channels but {first_name} takes "
                f"{first.model.input_size[2]}; ensemble members must share their input channels"
            )
        if tuple(c.model.input_size) != tuple(first.model.input_size) or c.preprocess != first.preprocess:
            raise RunError(
                f"{name} reads images at {c.model.input_size[0]}x{c.model.input_size[1]} "
                f"(resize {c.preprocess.resize}, {c.preprocess.predict_mode}) but {first_name} at "
                f"{first.model.input_size[0]}x{first.model.input_size[1]} (resize {first.preprocess.resize}, "
                f"{first.preprocess.predict_mode}); ensemble members must share the input size and preprocessing"
            )


def make_ensemble(runs: list[str | Path], out: str | Path, *, weights: str = "best") -> Path:
    """Write an ensemble folder ``out`` from run folders (their ``weights``: best or last)."""
    out = Path(out)
    if len(runs) < 2:
        raise RunError("an ensemble needs at least two run folders")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out} already exists and is not empty; choose a new folder for the ensemble")
    loaded = []
    for r in runs:
        if is_ensemble(r):
            raise RunError(f"{r} is an ensemble itself; list its member runs instead")
        loaded.append(load_run(r, weights=weights))
    _check_members([(str(run.path), run.config) for run in loaded])
    names = []
    for i, run in enumerate(loaded):
        name = f"{MEMBERS}/{i}_{Path(run.path).resolve().name}"
        save_run(out / name, run.model, run.config, metrics=run.metrics)
        card = Path(run.path) / CARD
        if card.is_file():  # the member's model card travels with it
            atomic_write_text(out / name / CARD, card.read_text(errors="replace"))
        names.append(name)
    manifest = {"kind": "ensemble", "members": names, "sources": [str(Path(r).resolve()) for r in runs]}
    config = loaded[0].config
    atomic_write_text(out / CONFIG, config.to_json())
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    write_card(out, config, [], ensemble=manifest)
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        members = manifest["members"]
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ValueError("members must be a list of folder names")
    except FileNotFoundError:
        raise RunError(f"{path} is not an ensemble folder (no {MANIFEST}); make one with `unetkit ensemble`") from None
    except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise RunError(f"{path / MANIFEST} is not a valid ensemble manifest ({e}); make the ensemble again") from None
    for m in members:
        if Path(m).is_absolute() or ".." in Path(m).parts:
            raise RunError(f"{path / MANIFEST}: member {m!r} must be a folder inside the ensemble")
    return manifest


def load_ensemble(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[EnsembleModule, RunConfig]:
    """The ensemble's network (eval mode) and its shared config."""
    path = Path(path)
    manifest = read_manifest(path)
    runs = [load_run(path / m, device=device) for m in manifest["members"]]
    _check_members([(str(run.path), run.config) for run in runs])
    return EnsembleModule([run.model for run in runs]).to(device).eval(), RunConfig.load(path / CONFIG)


class EnsemblePredictor(Predictor):
    """A Predictor whose network is the ensemble: the same preprocessing, batching and argmax as one run."""

    backend = "pytorch-ensemble"
    members: int = 0  # how many runs the ensemble averages

    @classmethod
    def from_run(
        cls, path: str | Path, *, device: str | torch.device = "auto", weights: str = "best", precision: str = "fp32"
    ) -> EnsemblePredictor:
        module, config = load_ensemble(path)
        predictor = cls(module, config, device=device, precision=precision)
        predictor.members = len(module.members)
        return predictor
