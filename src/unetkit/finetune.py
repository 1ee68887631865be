"""Building on a run: start a new run from another run's weights (or a Keras file), freeze the encoder.

Different from ``--resume``, which continues the same run with its optimizer and RNG state: here
only the weights travel; the new run has its own folder, a fresh optimizer and its own recipe.
When the number of classes differs, the last layer (the classifier) keeps its fresh initialisation
and the message says so; any other difference in shape is an error naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .ensemble import MEMBERS, is_ensemble
from .errors import RunError
from .keras_io import import_keras
from .model import FCN
from .run import load_run, unwrap

KERAS_SUFFIXES = (".h5", ".keras", ".hdf5")


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The state-dict prefixes of the layers that depend on the number of classes."""
    return ("classifier.", "upsample.") if isinstance(model, FCN) else ("conv10.",)


def source_state(source: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a run folder (its best weights) or of a Keras file of the seed's U-Net, and a label."""
    path = Path(source)
    if is_ensemble(path):
        raise RunError(
            f"--init-from {path} is an ensemble, which has no single set of weights; start from one of its "
            f"members ({path / MEMBERS}/...)"
        )
    if path.is_dir():
        run = load_run(path)
        return {k: v.detach().cpu() for k, v in run.model.state_dict().items()}, f"run {path}"
    if path.suffix.lower() in KERAS_SUFFIXES or path.name.endswith(".weights.h5"):
        model, _ = import_keras(path)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}, f"Keras file {path}"
    if not path.exists():
        raise RunError(f"--init-from {path} does not exist; give a run folder or a Keras .h5/.keras file")
    raise RunError(f"--init-from {path} is neither a run folder (with config.json) nor a Keras .h5/.keras file")


def init_from(model: nn.Module, source: str | Path, *, log: Callable[[str], None] = print) -> list[str]:
    """Copy ``source``'s weights into ``model`` where they fit; returns the keys left freshly initialised.

    Only the class-dependent head may differ in shape (it is re-initialised); a missing layer or any
    other shape difference raises RunError, as the two networks are then not the same architecture.
    """
    target = unwrap(model)
    state, label = source_state(source)
    own = target.state_dict()
    head = head_prefixes(target)
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        detail = (
            f"{missing[0]} is in the new model but not in {label}"
            if missing
            else f"{extra[0]} is in {label} but not in the new model"
        )
        raise RunError(
            f"--init-from {source}: the architectures differ ({detail}); start from a run with the same "
            "model, depth and batch-norm setting"
        )
    reinit = []
    for key, value in state.items():
        if tuple(value.shape) == tuple(own[key].shape):
            continue
        if key.startswith(head):
            reinit.append(key)
            continue
        raise RunError(
            f"--init-from {source}: {key} has shape {tuple(value.shape)} there but {tuple(own[key].shape)} in "
            "the new model; the input channels, n_filters and depth must match (only n_classes may differ)"
        )
    load = {k: v for k, v in state.items() if k not in reinit}
    target.load_state_dict(load, strict=False)
    if reinit:
        old = state[reinit[0]].shape[0 if not reinit[0].startswith("upsample.") else 1]
        new = own[reinit[0]].shape[0 if not reinit[0].startswith("upsample.") else 1]
        layers = sorted({k.rsplit(".", 1)[0] for k in reinit})
        log(
            f"initialised from {label}; the last layer ({', '.join(layers)}) is re-initialised: "
            f"{old} classes there, {new} here"
        )
    else:
        log(f"initialised from {label} (all layers)")
    return reinit


def encoder_modules(model: nn.Module) -> nn.Module:
    """The contracting path (the seed's conv_block stack) of a U-Net or FCN."""
    return unwrap(model).encoder  # type: ignore[return-value]


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) the encoder: no gradients, and batch-norm statistics held (eval mode).

    Call after ``model.train()``: that call puts every module, the encoder's too, back in train mode.
    """
    encoder = encoder_modules(model)
    for p in encoder.parameters():
        p.requires_grad_(not frozen)
        if frozen:
            p.grad = None
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(not frozen and model.training)
