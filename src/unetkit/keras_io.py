"""Bring your Keras model: the seed's trained Keras U-Net in, unetkit's weights out, with h5py only.

Reads what Keras writes for the seed's ``unet_model``, without TensorFlow or Keras:

- Keras 3 ``.keras`` archives (a zip holding ``config.json`` and ``model.weights.h5``),
- Keras 3 ``.weights.h5`` (``layers/<class>_<n>/vars/0, 1``; ``<n>`` counts per class in model order),
- legacy full-model or weights-only ``.h5`` from TF2 tf.keras or Keras 3
  (``model_weights/<layer>/<layer>/kernel:0``, the layer order in the ``layer_names`` attribute).

Keras keeps channels last: a Conv2D kernel is (h, w, in, out), a Conv2DTranspose kernel (h, w, out, in);
PyTorch wants (out, in, h, w) and (in, out, h, w). Both are ``transpose(3, 2, 0, 1)``. Keras's
'same' transposed convolution places input pixel i at output 2i + tap with the extra pixel cut at
the end, which is what :class:`unetkit.model.ConvTranspose2dSame` does.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ModelConfig, RunConfig
from .data.masks import load_class_names, load_palette_file
from .errors import UnetkitError
from .model import UNet, unet_model
from .run import claim_run_folder, existing_run_files, save_run

__all__ = ["KerasImportError", "KerasExportError", "read_keras_weights", "import_keras", "export_keras_weights"]

SEED_HW = (96, 128)
_CONV, _UP = "Conv2D", "Conv2DTranspose"
# Keras 3 stores variables by position; these are their names for the layer types we may meet.
_VAR_NAMES = {
    _CONV: ("kernel", "bias"),
    _UP: ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}
_CLASS_OF_KEY = {
    "conv2d": _CONV,
    "conv2d_transpose": _UP,
    "dense": "Dense",
    "batch_normalization": "BatchNormalization",
}
# Layers without weights that the seed's model contains (anything else would change its outputs).
_PASSIVE = {"InputLayer", "MaxPooling2D", "Dropout", "Concatenate"}


class KerasImportError(UnetkitError, ValueError):
    """A file that is not (or not readable as) the seed's Keras U-Net."""


class KerasExportError(UnetkitError, ValueError):
    """A unetkit model that the seed's Keras code cannot hold."""


@dataclass
class _Layer:
    name: str  # the Keras layer name
    class_name: str | None  # "Conv2D", ... where the file says (config, or a default name)
    weights: dict[str, np.ndarray]
    config: dict[str, Any] | None = None  # the layer's config entry, where the file has one


@dataclass
class _Contents:
    source: str
    layers: list[_Layer]  # layers with weights, in model order
    config_layers: list[dict[str, Any]] | None  # every layer of the model config, in order
    input_shape: tuple[int | None, ...] | None  # (H, W, C) from the config's InputLayer


# --------------------------------------------------------------------------------------- reading


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is in the dev and keras extras
        raise KerasImportError("reading Keras files needs h5py: pip install h5py") from e
    return h5py


def _snake(class_name: str) -> str:
    """Keras's ``to_snake_case``: Conv2DTranspose -> conv2d_transpose, MaxPooling2D -> max_pooling2d."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _split_key(key: str) -> tuple[str, int]:
    """'conv2d_10' -> ('conv2d', 10), 'conv2d' -> ('conv2d', 0), 'conv2d_transpose' -> (..., 0)."""
    m = re.fullmatch(r"(.*?)_(\d+)", key)
    return (m.group(1), int(m.group(2))) if m else (key, 0)


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _attr_list(group: Any, name: str) -> list[str]:
    """A Keras list attribute, which Keras splits into ``name0``, ``name1``, ... when it is large."""
    if name in group.attrs:
        return [_text(v) for v in np.atleast_1d(group.attrs[name])]
    out: list[str] = []
    i = 0
    while f"{name}{i}" in group.attrs:
        out += [_text(v) for v in np.atleast_1d(group.attrs[f"{name}{i}"])]
        i += 1
    return out


def _config_layers(config: dict[str, Any], source: str) -> list[dict[str, Any]]:
    layers = config.get("config", {}).get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        kind = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise KerasImportError(
            f"{source}: the model config ({kind}) has no list of layers; the seed's U-Net is a functional Keras model"
        )
    return layers


def _entry_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("config", {}).get("name"))


def _input_shape(entries: list[dict[str, Any]]) -> tuple[int | None, ...] | None:
    for entry in entries:
        if entry.get("class_name") == "InputLayer":
            cfg = entry.get("config", {})
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            return tuple(shape[1:]) if shape else None
    return None


def _vars(group: Any) -> list[np.ndarray]:
    if "vars" not in group:
        return []
    v = group["vars"]
    return [np.asarray(v[k]) for k in sorted(v.keys(), key=lambda s: int(s) if s.isdigit() else 1 << 30)]


def _named(class_name: str | None, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    names = _VAR_NAMES.get(class_name or "", ())
    if len(arrays) > len(names):
        names = tuple(str(i) for i in range(len(arrays)))
    return dict(zip(names, arrays))


def _seed_order(layers: list[_Layer], source: str) -> list[_Layer]:
    """Order a bare Keras 3 .weights.h5 by the seed's topology (names alone give no cross-class order)."""
    others = [layer for layer in layers if layer.class_name not in (_CONV, _UP)]
    if others:
        what = others[0].class_name or "layer of unknown type"
        raise KerasImportError(
            f"{source}: layer {others[0].name}: a {what} with weights, which the "
            "seed's U-Net does not have (it has only Conv2D and Conv2DTranspose)"
        )
    convs = [layer for layer in layers if layer.class_name == _CONV]
    ups = [layer for layer in layers if layer.class_name == _UP]
    d = len(ups) + 1
    if len(convs) != 4 * d:
        raise KerasImportError(
            f"{source}: {len(convs)} Conv2D and {len(ups)} Conv2DTranspose layers, but the seed's U-Net "
            f"with {len(ups)} upsampling blocks (depth {d}) has {4 * d} Conv2D layers"
        )
    order = convs[: 2 * d]
    for i in range(d - 1):
        order += [ups[i], convs[2 * d + 2 * i], convs[2 * d + 2 * i + 1]]
    return order + convs[4 * d - 2 :]


def _read_keras3(f: Any, source: str, config: dict[str, Any] | None) -> _Contents:
    """Keras 3 weights (``layers/<key>/vars/<i>``), ordered by ``config`` when there is one."""
    by_key = "layers" in f  # Keras 3 keys by class and position; Keras 2.13's format by layer name
    root = f["layers"] if by_key else f["_layer_checkpoint_dependencies"]
    if config is not None:
        entries = _config_layers(config, source)
        counters: dict[str, int] = {}
        layers = []
        for entry in entries:
            cls, name = entry.get("class_name"), _entry_name(entry)
            base = _snake(str(cls))
            n = counters.get(base, 0)
            counters[base] = n + 1
            key = base if n == 0 else f"{base}_{n}"
            first, second = (key, name) if by_key else (name, key)
            group = root[first] if first in root else root[second] if second in root else None
            arrays = _vars(group) if group is not None else []
            if arrays or cls in (_CONV, _UP):
                layers.append(_Layer(name, cls, _named(cls, arrays), entry))
        return _Contents(source, layers, entries, _input_shape(entries))
    found: list[tuple[int, _Layer]] = []
    for key in root:
        arrays = _vars(root[key])
        if not arrays:
            continue
        base, index = _split_key(key)
        cls = _CLASS_OF_KEY.get(base)
        name = _text(root[key]["vars"].attrs.get("name", key))
        found.append((index, _Layer(name, cls, _named(cls, arrays))))
    # h5py lists conv2d, conv2d_1, conv2d_10, conv2d_11, ...: sort by the number Keras counted with
    found.sort(key=lambda item: item[0])
    return _Contents(source, _seed_order([layer for _, layer in found], source), None, None)


def _read_legacy(group: Any, source: str, config: dict[str, Any] | None) -> _Contents:
    """Legacy HDF5 (TF2 tf.keras / Keras 3 ``save("x.h5")``): order from the ``layer_names`` attribute."""
    entries = _config_layers(config, source) if config is not None else None
    by_name = {_entry_name(e): e for e in entries or []}
    layers = []
    for name in _attr_list(group, "layer_names"):
        if name not in group:
            raise KerasImportError(f"{source}: layer {name} is listed in layer_names but has no group")
        g = group[name]
        weights: dict[str, np.ndarray] = {}
        for wname in _attr_list(g, "weight_names"):
            if wname not in g:
                raise KerasImportError(f"{source}: layer {name}: weight {wname} is listed but not stored")
            weights[wname.rsplit("/", 1)[-1].split(":", 1)[0]] = np.asarray(g[wname])
        entry = by_name.get(name)
        cls = entry.get("class_name") if entry else _CLASS_OF_KEY.get(_split_key(name)[0])
        if weights or cls in (_CONV, _UP):
            layers.append(_Layer(name, cls, weights, entry))
    return _Contents(source, layers, entries, _input_shape(entries) if entries else None)


def _read_h5(f: Any, source: str) -> _Contents:
    if "model_weights" in f:
        raw = f.attrs.get("model_config")
        config = json.loads(_text(raw)) if raw is not None else None
        return _read_legacy(f["model_weights"], source, config)
    if "layer_names" in f.attrs or "layer_names0" in f.attrs:
        return _read_legacy(f, source, None)
    if "layers" in f or "_layer_checkpoint_dependencies" in f:
        return _read_keras3(f, source, None)
    raise KerasImportError(
        f"{source}: an HDF5 file, but without Keras weights (no 'layers' or "
        "'model_weights' group, no 'layer_names' attribute)"
    )


def _read(path: str | os.PathLike[str]) -> _Contents:
    p = Path(path)
    source = str(p)
    if p.is_dir():
        raise KerasImportError(
            f"{source} is a directory (a TensorFlow SavedModel?); save the Keras model "
            "with model.save('model.keras') or model.save_weights('model.weights.h5')"
        )
    if not p.is_file():
        raise KerasImportError(f"{source}: no such file")
    h5py = _h5py()
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                names = set(z.namelist())
                if not {"config.json", "model.weights.h5"} <= names:
                    raise KerasImportError(
                        f"{source}: a zip archive, but not a Keras 3 .keras file (it "
                        "needs config.json and model.weights.h5; found "
                        f"{', '.join(sorted(names)[:5]) or 'nothing'})"
                    )
                config = json.loads(z.read("config.json"))
                data = z.read("model.weights.h5")
            with h5py.File(io.BytesIO(data), "r") as f:
                return _read_keras3(f, source, config)
        if h5py.is_hdf5(p):
            with h5py.File(p, "r") as f:
                return _read_h5(f, source)
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, zipfile.BadZipFile) as e:
        raise KerasImportError(f"{source}: not readable as a Keras model ({type(e).__name__}: {e})") from e
    raise KerasImportError(
        f"{source} is neither an HDF5 file nor a zip archive, so not a Keras model: "
        "expected a .keras archive, a .weights.h5 or a legacy .h5 file"
    )


def read_keras_weights(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The layers with weights in model order: (Keras layer name, {"kernel": ..., "bias": ...})."""
    return [(layer.name, layer.weights) for layer in _read(path).layers]


# ------------------------------------------------------------------------------------ checking


@dataclass(frozen=True)
class _Expect:
    class_name: str
    kernel: tuple[int, ...]
    role: str
    activation: str


def _seed_layers(channels: int, n_filters: int, n_classes: int, depth: int) -> list[_Expect]:
    """The seed's layers with weights, in Keras's model order, with the kernel shape each must have."""
    f = [n_filters * 2**level for level in range(depth)]
    out, cin = [], channels
    for level in range(depth):
        out += [
            _Expect(_CONV, (3, 3, cin, f[level]), f"cblock{level + 1}'s first conv", "relu"),
            _Expect(_CONV, (3, 3, f[level], f[level]), f"cblock{level + 1}'s second conv", "relu"),
        ]
        cin = f[level]
    for i, level in enumerate(reversed(range(depth - 1))):
        block = f"ublock{depth + 1 + i}"
        out += [
            _Expect(_UP, (3, 3, f[level], f[level + 1]), f"{block}'s transposed conv", "linear"),
            _Expect(_CONV, (3, 3, 2 * f[level], f[level]), f"{block}'s first conv", "relu"),
            _Expect(_CONV, (3, 3, f[level], f[level]), f"{block}'s second conv", "relu"),
        ]
    return out + [
        _Expect(_CONV, (3, 3, n_filters, n_filters), "conv9", "relu"),
        _Expect(_CONV, (1, 1, n_filters, n_classes), "conv10 (the 1x1 classifier)", "linear"),
    ]


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(map(str, shape)) + ")"


def _activation(cfg: dict[str, Any]) -> str:
    act = cfg.get("activation", "linear")
    if isinstance(act, dict):
        act = act.get("config", {}).get("name") or act.get("class_name", "")
    return str(act or "linear").lower()


def _pair(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _check_config(layer: _Layer, exp: _Expect, where: str) -> None:
    """What the weights cannot show: strides, padding, activation, layout of a layer with a config."""
    cfg = (layer.config or {}).get("config")
    if not cfg:
        return
    stride = (2, 2) if exp.class_name == _UP else (1, 1)
    problems = []
    if _pair(cfg.get("strides", 1)) != stride:
        problems.append(f"strides {_pair(cfg.get('strides'))} (expected {stride})")
    if cfg.get("padding", "valid") != "same" and exp.kernel[:2] != (1, 1):
        problems.append(f"padding '{cfg.get('padding')}' (expected 'same')")
    if _pair(cfg.get("dilation_rate", 1)) != (1, 1):
        problems.append(f"dilation_rate {cfg.get('dilation_rate')} (expected 1)")
    if cfg.get("data_format") not in (None, "channels_last"):
        problems.append(f"data_format '{cfg.get('data_format')}' (expected 'channels_last')")
    if _activation(cfg) != exp.activation:
        problems.append(f"activation '{_activation(cfg)}' (expected '{exp.activation}')")
    if exp.class_name == _UP and cfg.get("output_padding") is not None:
        problems.append(f"output_padding {cfg.get('output_padding')} (expected None)")
    if problems:
        raise KerasImportError(f"{where}: {', '.join(problems)} for {exp.role} of the seed's U-Net")


def _check_passive(contents: _Contents) -> None:
    """Layers without weights must be the seed's, and each concatenation must put the upsampling first."""
    if contents.config_layers is None:
        return
    classes = {_entry_name(e): e.get("class_name") for e in contents.config_layers}
    weighted = {layer.name for layer in contents.layers}
    for entry in contents.config_layers:
        cls, name = entry.get("class_name"), _entry_name(entry)
        where = f"{contents.source}: layer {name} ({cls})"
        if cls in (_CONV, _UP) or name in weighted:
            continue  # checked by _validate
        if cls not in _PASSIVE:
            raise KerasImportError(
                f"{where}: the seed's U-Net has no such layer (only Conv2D, "
                "Conv2DTranspose, MaxPooling2D, Dropout and Concatenate)"
            )
        cfg = entry.get("config", {})
        if cls == "MaxPooling2D" and _pair(cfg.get("pool_size", 2)) != (2, 2):
            raise KerasImportError(f"{where}: pool_size {cfg.get('pool_size')}; the seed pools 2x2")
        if cls == "Concatenate":
            if cfg.get("axis", -1) not in (-1, 3):
                raise KerasImportError(f"{where}: axis {cfg.get('axis')}; the seed concatenates channels")
            inputs = _inbound(entry)
            if inputs and classes.get(inputs[0]) != _UP:
                raise KerasImportError(
                    f"{where}: concatenates [{', '.join(inputs)}]; the seed's "
                    "U-Net concatenates [transposed conv output, skip connection]"
                )


def _inbound(entry: dict[str, Any]) -> list[str]:
    """Names of the layers feeding ``entry`` (Keras 3 ``keras_history`` or TF2 nested lists)."""
    names: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            if "keras_history" in obj:
                names.append(str(obj["keras_history"][0]))
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
                names.append(obj[0])
                return
            for v in obj:
                walk(v)

    walk(entry.get("inbound_nodes", []))
    return names


def _infer(contents: _Contents) -> tuple[int, int, int, int]:
    """(input channels, n_filters, n_classes, depth) from the first and last kernels and the layer count."""
    layers, source = contents.layers, contents.source
    if not layers:
        raise KerasImportError(f"{source}: no layers with weights")
    for layer in (layers[0], layers[-1]):
        kernel = layer.weights.get("kernel")
        if kernel is None or kernel.ndim != 4:
            got = "no kernel" if kernel is None else f"a kernel of shape {_fmt(kernel.shape)}"
            raise KerasImportError(
                f"{source}: layer {layer.name}: {got}, but the seed's U-Net starts and ends with a Conv2D (4-d kernel)"
            )
    channels, n_filters = layers[0].weights["kernel"].shape[2:]
    n_classes = layers[-1].weights["kernel"].shape[3]
    if all(layer.class_name is not None for layer in layers):
        depth = 1 + sum(layer.class_name == _UP for layer in layers)
    else:
        depth = max(2, round((len(layers) + 1) / 5))  # 4 * depth Conv2D + (depth - 1) Conv2DTranspose
    if depth < 2:
        raise KerasImportError(f"{source}: no Conv2DTranspose layers, so not the seed's U-Net")
    return int(channels), int(n_filters), int(n_classes), depth


def _validate(contents: _Contents, expected: list[_Expect], settings: str) -> None:
    source = contents.source
    for layer, exp in zip(contents.layers, expected):
        where = f"{source}: layer {layer.name}"
        if layer.class_name is not None and layer.class_name != exp.class_name:
            raise KerasImportError(
                f"{where}: a {layer.class_name} where the seed's U-Net has a {exp.class_name} ({exp.role}; {settings})"
            )
        kernel, bias = layer.weights.get("kernel"), layer.weights.get("bias")
        extra = sorted(set(layer.weights) - {"kernel", "bias"})
        n_out = exp.kernel[3] if exp.class_name == _CONV else exp.kernel[2]
        if kernel is None or bias is None or extra:
            have = ", ".join(f"{k} {_fmt(v.shape)}" for k, v in layer.weights.items()) or "no weights"
            raise KerasImportError(
                f"{where}: {have}, but the seed's U-Net expects exactly a kernel "
                f"{_fmt(exp.kernel)} and a bias ({n_out},) for {exp.role}"
            )
        if kernel.shape != exp.kernel:
            raise KerasImportError(
                f"{where}: kernel {_fmt(kernel.shape)} but the seed's U-Net expects "
                f"{_fmt(exp.kernel)} for {exp.role} ({settings})"
            )
        if bias.shape != (n_out,):
            raise KerasImportError(
                f"{where}: bias {_fmt(bias.shape)} but the seed's U-Net expects ({n_out},) for {exp.role}"
            )
        for name, arr in (("kernel", kernel), ("bias", bias)):
            if not np.issubdtype(arr.dtype, np.floating):
                raise KerasImportError(f"{where}: {name} has dtype {arr.dtype}, expected floats")
        _check_config(layer, exp, where)
    n_have, n_want = len(contents.layers), len(expected)
    if n_have > n_want:
        raise KerasImportError(
            f"{source}: layer {contents.layers[n_want].name}: one layer with weights more "
            f"than the seed's U-Net has ({n_want}; {settings})"
        )
    if n_have < n_want:
        exp = expected[n_have]
        raise KerasImportError(
            f"{source}: the file ends after layer {contents.layers[-1].name}; the seed's "
            f"U-Net goes on with {exp.role}, a {exp.class_name} with kernel "
            f"{_fmt(exp.kernel)} ({settings})"
        )


def _torch_layers(model: UNet) -> list[nn.Module]:
    """unetkit's convolutions in the order of the Keras model's layers with weights."""
    mods: list[nn.Module] = []
    for block in model.encoder_blocks:
        mods += [block.conv1, block.conv2]
    for up in model.decoder_blocks:
        mods += [up.up, up.conv1, up.conv2]
    return mods + [model.conv9, model.conv10]


# ------------------------------------------------------------------------------- import / export


def import_keras(
    path: str | os.PathLike[str], *, input_size: tuple[int, int] | None = None
) -> tuple[UNet, dict[str, Any]]:
    """Build unetkit's U-Net from a Keras file of the seed's model; returns (model in eval mode, settings).

    n_filters, n_classes, input channels and depth come from the kernel shapes. Height and width come
    from the file's config when it has one, else from ``input_size`` (H, W), else the seed's 96x128.
    Raises :class:`KerasImportError` naming the first layer that does not fit the seed's U-Net.
    """
    contents = _read(path)
    channels, n_filters, n_classes, depth = _infer(contents)
    settings = f"inferred n_filters={n_filters}, {channels} input channels, {n_classes} classes, depth {depth}"
    _validate(contents, _seed_layers(channels, n_filters, n_classes, depth), settings)
    _check_passive(contents)

    h, w = tuple(input_size)[:2] if input_size is not None else SEED_HW
    if contents.input_shape is not None and len(contents.input_shape) == 3:
        ch, cw, cc = contents.input_shape
        if cc is not None and cc != channels:
            raise KerasImportError(
                f"{contents.source}: the input layer has {cc} channels but the first kernel expects {channels}"
            )
        if ch is not None and cw is not None:
            h, w = int(ch), int(cw)
    try:
        model = unet_model((h, w, channels), n_filters, n_classes, depth=depth)
    except ValueError as e:
        raise KerasImportError(f"{contents.source}: {e}") from e

    with torch.no_grad():
        for layer, module in zip(contents.layers, _torch_layers(model)):
            assert isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
            kernel = np.ascontiguousarray(layer.weights["kernel"].transpose(3, 2, 0, 1))
            module.weight.copy_(torch.from_numpy(kernel).to(module.weight.dtype))
            assert module.bias is not None
            module.bias.copy_(torch.from_numpy(np.asarray(layer.weights["bias"])).to(module.bias.dtype))
    return model.eval(), {
        "n_filters": n_filters,
        "n_classes": n_classes,
        "input_size": (h, w, channels),
        "depth": depth,
    }


def export_keras_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights as a Keras 3 ``.weights.h5`` for the seed's Keras ``unet_model``.

    Load it with ``keras_model.load_weights(path)`` into a freshly built seed model of the same size.
    """
    if not isinstance(model, UNet):
        raise KerasExportError(
            f"only unetkit's U-Net can be exported for the seed's Keras code, not {type(model).__name__}"
        )
    if model.arch.batch_norm:
        raise KerasExportError(
            "this U-Net uses batch normalisation, which the seed's Keras U-Net does "
            "not have; train without --batch-norm to export it for Keras"
        )
    h5py = _h5py()
    depth = model.arch.depth
    counters: dict[str, int] = {}

    def key(base: str) -> str:
        n = counters.get(base, 0)
        counters[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    groups: list[tuple[str, list[np.ndarray]]] = []
    for module in _torch_layers(model):
        assert isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.bias is not None
        base = "conv2d_transpose" if isinstance(module, nn.ConvTranspose2d) else "conv2d"
        kernel = module.weight.detach().cpu().float().numpy().transpose(2, 3, 1, 0)
        groups.append((key(base), [np.ascontiguousarray(kernel), module.bias.detach().cpu().float().numpy()]))
    # The seed's layers without weights, so that the file looks like Keras's own.
    passive = ["input_layer"] + ["max_pooling2d", "concatenate"] * (depth - 1) + ["dropout"] * 2
    groups += [(key(base), []) for base in passive]

    out = Path(path)
    with h5py.File(out, "w") as f:
        layers = f.create_group("layers")
        for name, arrays in sorted(groups):
            v = layers.create_group(name).create_group("vars")
            v.attrs["name"] = name
            for i, arr in enumerate(arrays):
                v.create_dataset(str(i), data=arr)
        f.create_group("vars").attrs["name"] = "functional"
    return out


def import_run(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    class_names: str | os.PathLike[str] | None = None,
    input_size: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Import a Keras file and write a normal run folder (predict, evaluate, export and resume use it).

    An ``out`` folder that already holds a run is refused unless ``overwrite``.

    ``class_names`` is a JSON list of names or a palette file ({name: [r, g, b]}), whose colours are
    kept. The run's training settings are the seed's recipe, so fine-tuning continues as the
    tutorial trained.
    """
    out = Path(out)
    if existing_run_files(out) and not overwrite:
        claim_run_folder(out, create=False)  # refuses before the (slow) import, with the message
    model, settings = import_keras(path, input_size=input_size)
    names = palette = None
    if class_names is not None:
        class_names = Path(class_names)
        names = load_class_names(class_names)
        if json.loads(Path(class_names).read_text()).__class__ is dict:
            names, palette = load_palette_file(class_names)
        if len(names) != settings["n_classes"]:
            raise KerasImportError(
                f"{class_names} lists {len(names)} classes but {path} predicts "
                f"{settings['n_classes']}; give one name per class"
            )
    config = RunConfig(
        model=ModelConfig(
            input_size=settings["input_size"],
            n_filters=settings["n_filters"],
            n_classes=settings["n_classes"],
            depth=settings["depth"],
        ),
        class_names=names,
        palette=palette,
    )
    config = replace(config, data=replace(config.data, mask_mode="index"))
    return save_run(out, model, config, overwrite=overwrite)
