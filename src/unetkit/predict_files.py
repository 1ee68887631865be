"""Batch prediction to files: index mask, colour mask, overlay and (with truth) a side-by-side."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .data.folders import expand_inputs
from .data.io import IMAGE_EXTENSIONS, read_image, read_mask
from .data.masks import decode_mask
from .errors import DataError
from .fsio import atomic_write_bytes
from .plots import colorize, overlay, side_by_side
from .predict import Predictor


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Atomically write a uint8 (H, W[, 3]) array, or a 16-bit index mask when ids exceed 255."""
    if array.ndim == 2 and array.dtype != np.uint8:
        image = Image.fromarray(array.astype(np.uint16))
    else:
        image = Image.fromarray(array.squeeze() if array.ndim == 3 and array.shape[2] == 1 else array)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _find_mask(folder: Path, stem: str) -> Path | None:
    for ext in sorted(IMAGE_EXTENSIONS):
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.exists():
                return candidate
    return None


def load_predictor(model: str | Path, device: str = "auto") -> Predictor:
    """A run folder, or an .onnx file exported by `unetkit export`."""
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        from .export import OnnxPredictor

        return OnnxPredictor(path)  # type: ignore[return-value]
    return Predictor.from_run(path, device=device)


def predict_files(
    model: str | Path,
    inputs: list[str],
    out: str | Path,
    *,
    masks: str | Path | None = None,
    mode: str | None = None,
    device: str = "auto",
) -> int:
    """Predict every image named by ``inputs`` (files, folders, globs) into ``out``; returns the count."""
    predictor = load_predictor(model, device)
    if mode is not None:
        if mode not in ("resize", "sliding"):
            raise DataError(f"--mode must be resize or sliding, got {mode!r}")
        predictor.config.preprocess.predict_mode = mode
    files = expand_inputs(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    palette, n = predictor.palette, predictor.config.model.n_classes
    used: set[str] = set()
    for file in files:
        stem = file.stem
        while stem in used:
            stem += "_1"
        used.add(stem)
        image = read_image(file)
        pred = predictor.predict(image)
        save_png(out / f"{stem}.png", pred)
        save_png(out / f"{stem}_colour.png", colorize(pred, palette))
        save_png(out / f"{stem}_overlay.png", overlay(image, pred, palette))
        if masks is not None:
            mask_file = _find_mask(Path(masks), file.stem)
            if mask_file is None:
                raise DataError(f"no mask named {file.stem}.* in {masks} for {file}; masks pair with images by stem")
            mode_used = predictor.config.data.mask_mode
            truth = decode_mask(
                read_mask(mask_file),
                "index" if mode_used == "auto" else mode_used,
                n,
                palette=palette,
                ignore_index=predictor.config.data.ignore_index,
                path=mask_file,
            )
            side_by_side(
                [(image, truth, pred)],
                ["Input Image", "True Mask", "Predicted Mask"],
                palette,
                out / f"{stem}_compare.png",
            )
    return len(files)
