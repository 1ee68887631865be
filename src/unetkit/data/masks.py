"""Mask encodings -> class-id maps, with errors that name the file, the values found and the fix.

Modes:

- ``index``: the pixel value is the class id (gray or palette-PNG masks; RGB with equal channels).
- ``binary``: 0/255 (or 0/1, or 0/65535 for 16-bit) -> 0/1.
- ``channels``: the tutorial's CARLA masks: the class id sits in the channels and is recovered as
  their maximum, exactly as the tutorial's ``tf.math.reduce_max(mask, axis=-1, keepdims=True)``
  (an alpha channel is dropped first, as the tutorial's ``decode_png(channels=3)`` does).
- ``palette``: RGB colours mapped to class ids through a palette (one [r, g, b] per class).

``ignore_index`` (e.g. 255 for a "void" label) passes through unchanged in every mode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .io import read_json

MASK_MODES: tuple[str, ...] = ("index", "binary", "channels", "palette")

_MAX_LISTED = 10
RANGE_FIX = "set --n-classes to cover them, set --ignore-index for a 'void' value, or choose another --mask-mode"


def mask_dtype(n_classes: int, ignore_index: int | None = None) -> np.dtype:
    """uint8 when every class id and ignore_index fit in a byte, else int32."""
    fits = n_classes <= 256 and (ignore_index is None or ignore_index <= 255)
    return np.dtype(np.uint8 if fits else np.int32)


def mask_tensor_dtype(n_classes: int, ignore_index: int | None = None) -> torch.dtype:
    """``mask_dtype`` for the mask tensors of the caches and batches: torch.uint8 or torch.int32."""
    return torch.uint8 if mask_dtype(n_classes, ignore_index) == np.uint8 else torch.int32


def _name(path: str | Path | None) -> str:
    return f"mask {path}" if path is not None else "mask"


def _jpeg_hint(path: str | Path | None) -> str:
    if path is not None and Path(path).suffix.lower() in (".jpg", ".jpeg"):
        return " (JPEG compression changes mask values: save masks as PNG)"
    return ""


def _list_values(values: np.ndarray, counts: np.ndarray | None = None, limit: int = _MAX_LISTED) -> str:
    if counts is None:
        items = [str(int(v)) for v in values[:limit]]
    else:
        items = [f"{int(v)} ({int(c)} px)" for v, c in zip(values[:limit], counts[:limit], strict=True)]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(items) + more


def _drop_alpha(raw: np.ndarray) -> np.ndarray:
    """(H, W) stays; (H, W, 1) -> (H, W); (H, W, 4) -> (H, W, 3); (H, W, 2) (gray + alpha) -> (H, W)."""
    if raw.ndim == 3:
        if raw.shape[2] in (1, 2):
            return raw[:, :, 0]
        if raw.shape[2] == 4:
            return raw[:, :, :3]
    return raw


def _gray(raw: np.ndarray) -> np.ndarray | None:
    """The single channel of a gray mask (RGB with equal channels included), else None."""
    a = _drop_alpha(raw)
    if a.ndim == 2:
        return a
    if (a == a[:, :, :1]).all():
        return a[:, :, 0]
    return None


def _check_shape(raw: np.ndarray, path: str | Path | None) -> None:
    if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[2] not in (1, 2, 3, 4)) or 0 in raw.shape:
        raise DataError(
            f"{_name(path)} has an unsupported shape {tuple(raw.shape)}; "
            "expected (H, W) or (H, W, 1/3/4): re-export it as a PNG"
        )


def _colour_summary(rgb: np.ndarray, limit: int = 5) -> str:
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    values, counts = np.unique(codes.ravel(), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    parts = [
        f"({v >> 16}, {(v >> 8) & 255}, {v & 255}) x {c} px"
        for v, c in zip(values[order][:limit].tolist(), counts[order][:limit].tolist(), strict=True)
    ]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(parts) + more


def _check_range(ids: np.ndarray, n_classes: int, ignore_index: int | None, path: str | Path | None, mode: str) -> None:
    bad = (ids < 0) | (ids >= n_classes)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bad.any():
        values, counts = np.unique(ids[bad], return_counts=True)
        ignore = f", ignore_index {ignore_index}" if ignore_index is not None else ""
        raise DataError(
            f"{_name(path)} ({mode} mode) holds values that are not class ids for n_classes={n_classes} "
            f"(valid 0-{n_classes - 1}{ignore}): {_list_values(values, counts)}{_jpeg_hint(path)}; {RANGE_FIX}"
        )


def decode_mask(
    raw: np.ndarray,
    mode: str,
    n_classes: int,
    *,
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = None,
    path: str | Path | None = None,
) -> np.ndarray:
    """Turn a raw mask from ``io.read_mask`` into an (H, W) class-id map (dtype from ``mask_dtype``).

    ``path`` only names the file in error messages.
    """
    if mode not in MASK_MODES:
        raise DataError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}")
    raw = np.asarray(raw)
    _check_shape(raw, path)
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    if not np.issubdtype(raw.dtype, np.integer):
        raise DataError(f"{_name(path)} holds {raw.dtype} values, not integers; re-export it as an 8-bit PNG")
    dtype = mask_dtype(n_classes, ignore_index)

    if mode in ("index", "binary"):
        ids = _gray(raw)
        if ids is None:
            raise DataError(
                f"{_name(path)} is a colour mask (its channels differ; most common colours: "
                f"{_colour_summary(_drop_alpha(raw))}), but mask mode is {mode!r}: use --mask-mode palette "
                "with --palette colours.json, or --mask-mode channels for CARLA-style masks "
                "(class id in a channel)"
            )
        if mode == "binary":
            ids = _binary(ids, ignore_index, path)
    elif mode == "channels":
        a = _drop_alpha(raw)
        ids = a if a.ndim == 2 else a.max(axis=2)
    else:
        ids = _palette(raw, palette, path)
    ids = ids.astype(np.int64, copy=False)
    _check_range(ids, n_classes, ignore_index, path, mode)
    return ids.astype(dtype)


def _binary(gray: np.ndarray, ignore_index: int | None, path: str | Path | None) -> np.ndarray:
    """0/255, 0/1 (or 0/65535 for 16-bit masks) -> 0/1; ignore_index passes through."""
    values = np.unique(gray)
    real = values[values != ignore_index] if ignore_index is not None else values
    high = [1, 255] + ([65535] if gray.dtype == np.uint16 else [])
    for hi in high:
        if np.isin(real, (0, hi)).all():
            if hi == 1:
                return gray
            out = gray.astype(np.int64)
            out[gray == hi] = 1
            return out
    other = real[~np.isin(real, (0, 1, 255))] if len(real) else real
    if len(other) == 0:  # e.g. 0, 1 and 255 mixed
        other = real
    counts = np.array([(gray == v).sum() for v in other[:_MAX_LISTED]])
    raise DataError(
        f"{_name(path)} is not a binary 0/255 (or 0/1) mask: it holds {_list_values(other, counts)} "
        f"(all values: {_list_values(values)}){_jpeg_hint(path)}; use --mask-mode index with --n-classes for "
        "class-id masks, or --ignore-index for a 'void' value"
    )


def _palette(raw: np.ndarray, palette: Sequence[Sequence[int]] | None, path: str | Path | None) -> np.ndarray:
    """Map [r, g, b] colours to their index in ``palette``; unknown colours are an error."""
    if palette is None or len(palette) == 0:
        raise DataError(
            "mask mode 'palette' needs a palette: pass --palette colours.json (JSON of class name -> [r, g, b])"
        )
    try:
        colours = np.asarray(palette, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):  # ragged or non-numeric lists
        colours = np.empty((0, 0), dtype=np.int64)
    if colours.ndim != 2 or colours.shape[1] != 3 or (colours < 0).any() or (colours > 255).any():
        raise DataError("the palette must hold one [r, g, b] (0-255) per class")
    codes_p = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
    if len(np.unique(codes_p)) != len(codes_p):
        raise DataError("the palette lists the same colour for two classes; give each class its own colour")
    a = _drop_alpha(raw)
    single = a.ndim == 2
    if single:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.max() > 255:
        raise DataError(
            f"{_name(path)} holds values over 255, which are not RGB colours; "
            "use --mask-mode index for 16-bit class-id masks"
        )
    codes = (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]
    order = np.argsort(codes_p)
    sorted_codes = codes_p[order]
    pos = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)
    known = sorted_codes[pos] == codes
    if not known.all():
        hint = (
            " This mask has a single channel (a palette PNG keeps its indices, which are class ids): "
            "try --mask-mode index."
            if single
            else ""
        )
        raise DataError(
            f"{_name(path)} holds colours that are not in the palette: {_colour_summary(a[~known][:, None])}"
            f"{_jpeg_hint(path)}; add them to the --palette file (one [r, g, b] per class), or fix the mask." + hint
        )
    return order[pos]


def detect_mask_mode(
    raw_samples: list[np.ndarray],
    n_classes: int,
    *,
    ignore_index: int | None = None,
    paths: Sequence[str | Path] | None = None,
    evaluating: bool = False,
) -> str:
    """Choose "binary", "index" or "channels" from a few raw masks, where that is unambiguous.

    - all masks gray (or RGB with equal channels) with values in {0, 255} and n_classes == 2: "binary";
    - all masks gray with every value < n_classes: "index";
    - colour masks whose channel maximum is < n_classes everywhere (the tutorial's CARLA masks): "channels";
    - anything else is ambiguous (palette colours, wrong n_classes): DataError asking for --mask-mode.
    ``ignore_index`` values are left out of these rules; ``paths`` name the files in messages (and tell
    JPEG masks apart); ``evaluating`` words the advice for ``evaluate``, whose classes come from the run.
    """
    if not raw_samples:
        raise DataError("no masks to detect the mask mode from")
    grays: list[np.ndarray] = []
    colour_max: list[int] = []
    colour_example: np.ndarray | None = None
    for raw in raw_samples:
        raw = np.asarray(raw)
        _check_shape(raw, None)
        g = _gray(raw)
        if g is not None:
            grays.append(g)
        else:
            a = _drop_alpha(raw).max(axis=2)
            real = a[a != ignore_index] if ignore_index is not None else a
            colour_max.append(int(real.max()) if real.size else 0)
            colour_example = raw if colour_example is None else colour_example
    values = (
        np.unique(np.concatenate([np.unique(g).astype(np.int64) for g in grays]))
        if grays
        else np.array([], dtype=np.int64)
    )
    if ignore_index is not None:
        values = values[values != ignore_index]
    named = ""
    if paths:
        shown = ", ".join(str(p) for p in list(paths)[:3])
        named = f" (looked at {len(paths)} masks, e.g. {shown})"

    if colour_example is None:
        vmax = int(values.max()) if len(values) else 0
        if n_classes == 2 and len(values) and np.isin(values, (0, 255)).all() and 255 in values:
            return "binary"
        if vmax < n_classes and (not len(values) or int(values.min()) >= 0):
            return "index"
        bad = values[(values < 0) | (values >= n_classes)]
        raise DataError(
            f"cannot tell the mask mode: the masks hold values {_list_values(values, limit=6)}, of which "
            f"{_list_values(bad, limit=6)} {'is' if len(bad) == 1 else 'are'} not class ids for "
            f"n_classes={n_classes}{named}; {_gray_advice(values, bad, n_classes, paths, evaluating)}"
        )
    vmax = max(colour_max + ([int(values.max())] if len(values) else []))
    if vmax < n_classes:
        return "channels"
    rgb = _drop_alpha(colour_example)
    n_colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    if n_colours > _PHOTO_VALUES:
        raise DataError(
            f"cannot tell the mask mode: the masks look like photos ({n_colours} different colours in one "
            f"of them){named}; are --images and --masks swapped? Masks hold a few class ids or colours"
        )
    if _all_jpeg(paths):
        raise DataError(f"cannot tell the mask mode: the masks are JPEG files{named}; {_JPEG_ADVICE}")
    raise DataError(
        "cannot tell the mask mode: the masks are colour images "
        f"(e.g. {_colour_summary(rgb)}){named}; for colour-coded classes use "
        "--mask-mode palette with --palette colours.json (JSON of class name -> [r, g, b]); "
        "for class ids stored in a channel use --mask-mode channels "
        "with a matching --n-classes"
    )


_PHOTO_VALUES = 1000  # more different values (or colours) than this in masks: they look like photos
_JPEG_ADVICE = (
    "JPEG compression changes mask values (class ids bleed into their neighbours), so they cannot be read "
    "as labels: save the masks as PNG"
)


def _all_jpeg(paths: Sequence[str | Path] | None) -> bool:
    return bool(paths) and all(Path(p).suffix.lower() in (".jpg", ".jpeg") for p in paths or ())


def _gray_advice(
    values: np.ndarray, bad: np.ndarray, n_classes: int, paths: Sequence[str | Path] | None, evaluating: bool
) -> str:
    """The likely fix for gray masks that do not fit ``n_classes``: JPEG, a void border, swapped folders, ..."""
    if _all_jpeg(paths):
        return _JPEG_ADVICE
    if len(values) > _PHOTO_VALUES or (len(values) > 200 and n_classes < 100):
        return "they look like photos, not labels: are --images and --masks swapped?"
    if evaluating:
        return (
            "the run was trained for these classes, so check that --masks is the right folder, or give "
            "the run's --mask-mode"
        )
    if np.isin(values, (0, 255)).all():
        return "for binary 0/255 masks use --n-classes 2 (or --mask-mode binary)"
    if list(bad) == [255]:
        return "255 is usually a 'void' label (as the border in Pascal VOC): add --ignore-index 255"
    return (
        f"use --n-classes {int(values.max()) + 1} or more if these are class ids, --ignore-index for a "
        "'void' value, or --mask-mode binary/palette"
    )


def load_palette_file(path: str | Path) -> tuple[list[str], list[list[int]]]:
    """Read a palette JSON ``{class name: [r, g, b], ...}`` -> (class names, colours), in file order."""
    path = Path(path)
    fix = 'expected a JSON object like {"background": [0, 0, 0], "road": [128, 64, 128]}'
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"palette file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"palette file {path} cannot be read ({e}); {fix}") from None

    def pairs_hook(items: list[tuple[str, object]]) -> dict[str, object]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise DataError(f"palette file {path} lists class {key!r} twice; give each class once")
            seen.add(key)
        return dict(items)

    try:
        data = json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as e:
        raise DataError(f"palette file {path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"palette file {path} must be a non-empty JSON object; {fix}")
    names: list[str] = []
    colours: list[list[int]] = []
    seen: dict[tuple[int, ...], str] = {}
    for name, colour in data.items():
        ok = (
            isinstance(colour, list)
            and len(colour) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour)
        )
        if not ok:
            raise DataError(
                f"palette file {path}: class {name!r} has colour {colour!r}, not [r, g, b] with integers 0-255; {fix}"
            )
        key = tuple(colour)
        if key in seen:
            raise DataError(
                f"palette file {path}: classes {seen[key]!r} and {name!r} share the colour "
                f"{colour}; give each class its own colour"
            )
        seen[key] = name
        names.append(str(name))
        colours.append([int(v) for v in colour])
    return names, colours


def load_class_names(path: str | Path) -> list[str]:
    """Read a JSON list of class names (or a palette file, whose keys are the names)."""
    path = Path(path)
    data = read_json(path, "class-names file", 'expected ["road", "car", ...]')
    if isinstance(data, dict):
        return load_palette_file(path)[0]
    if not isinstance(data, list) or not data or not all(isinstance(n, str) and n for n in data):
        raise DataError(f'class-names file {path} must be a non-empty JSON list of strings, e.g. ["road", "car"]')
    if len(set(data)) != len(data):
        raise DataError(f"class-names file {path} lists a name twice; give each class once")
    return list(data)
