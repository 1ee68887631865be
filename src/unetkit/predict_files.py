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
from .plots import colorize, overlay, side_by_side
from .predict import Predictor
from .run import atomic_write_bytes


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
    tta: str | None = None,
    save_probs: str | None = None,
) -> int:
    """Predict every image named by ``inputs`` (files, folders, globs) into ``out``; returns the count.

    ``tta``: test-time augmentation (``unetkit.tta``). ``save_probs``: also write each image's confidence
    and entropy PNGs, "npz" with its float16 probabilities too (``unetkit.uncertainty``).
    """
    predictor = load_predictor(model, device)
    if tta is not None:
        predictor.set_tta(tta)
    if save_probs is not None:
        from .uncertainty import PROB_FORMATS

        if save_probs not in PROB_FORMATS:
            raise DataError(f"--save-probs must be one of {', '.join(PROB_FORMATS)}, got {save_probs!r}")
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
        if save_probs is not None:
            from .uncertainty import save_probabilities

            probs = predictor.probabilities(image)
            save_probabilities(out, stem, probs, predictor.class_names, save_probs)
            pred = probs.argmax(0).numpy().astype(np.uint8 if n <= 256 else np.int32)
        else:
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
