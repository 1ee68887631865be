"""Predictor: load a run folder, preprocess exactly as in training, return class-id masks.

Never imports the training loop. Masks come back at the input's original size: logits are
resized bilinearly to that size before the argmax (the seed's "index of the largest channel").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import perf
from .config import RunConfig
from .data.io import read_image
from .device import resolve_device, resolve_precision
from .preprocess import image_to_tensor, resize_images, to_float
from .run import load_run
from .tiling import sliding_window_logits

ImageLike = np.ndarray | str | Path


def as_image(image: ImageLike | object) -> np.ndarray:
    """A path, PIL image or array -> (H, W, C) uint8 array."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if not isinstance(image, np.ndarray):  # PIL.Image
        image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype not in (np.uint8, np.uint16):  # 16-bit keeps its precision, as data.io reads it
        if np.issubdtype(image.dtype, np.floating) and np.nanmax(image) <= 1.0:
            image = np.round(np.nan_to_num(image) * 255)
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


class PredictorBase:
    """What every backend shares: the one preprocessing path, batching, resizing back, argmax.

    A backend (PyTorch here, onnxruntime in ``unetkit.export``) only supplies ``_forward``: (N, C, h, w)
    uint8 at the model's input size -> (N, K, h, w) float32 logits. Everything before and after it is
    this class, so that every backend gives the same masks for the same image.
    """

    config: RunConfig
    backend: str = "unknown"

    # Above this many output elements (K x H x W), argmax masks are upsampled in bands of rows so that a
    # large image never holds its full-size float logits in memory at once (serving large uploads).
    band_elements: int = 1 << 25

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or [])

    @property
    def palette(self) -> list[list[int]]:
        return list(self.config.palette or [])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.config.model.input_size)  # type: ignore[return-value]

    def _sliding(self, image: np.ndarray) -> torch.Tensor:
        h, w, c = self.input_size
        return sliding_window_logits(
            self._forward,
            image_to_tensor(image, c),
            (h, w),
            self.config.preprocess.overlap,
            self.config.model.size_multiple,
        )

    def _model_size_logits(self, images: list[np.ndarray]) -> torch.Tensor:
        """One forward pass over images of any sizes, each resized to the model's input size."""
        h, w, c = self.input_size
        mode = self.config.preprocess.resize
        x = torch.cat([resize_images(image_to_tensor(im, c), (h, w), mode) for im in images])
        return self._forward(x)

    def logits(self, image: ImageLike | object) -> torch.Tensor:
        """(K, H, W) float32 logits at the image's original size."""
        return self.logits_batch([as_image(image)])[0]

    def logits_batch(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Logits at original size for several (H, W, C) uint8 images, sharing one forward pass."""
        if self.config.preprocess.predict_mode == "sliding":
            return [self._sliding(im) for im in images]
        logits = self._model_size_logits(images)
        out = []
        for im, lg in zip(images, logits):
            if tuple(im.shape[:2]) != tuple(lg.shape[-2:]):
                lg = F.interpolate(lg[None], size=im.shape[:2], mode="bilinear", align_corners=False)[0]
            out.append(lg.cpu())
        return out

    def predict(self, image: ImageLike | object) -> np.ndarray:
        """(H, W) class ids (argmax over channels) at the image's original size."""
        return self.predict_batch([as_image(image)])[0]

    def predict_batch(self, images: list[ImageLike | object], batch_size: int = 16) -> list[np.ndarray]:
        """(H, W) class-id masks for several images (any mix of sizes), ``batch_size`` per forward pass."""
        arrays = [as_image(im) for im in images]
        masks = []
        for start in range(0, len(arrays), batch_size):
            chunk = arrays[start : start + batch_size]
            if self.config.preprocess.predict_mode == "sliding":
                masks += [self._ids(self._sliding(im).argmax(0)) for im in chunk]
                continue
            logits = self._model_size_logits(chunk)
            if all(tuple(im.shape[:2]) == tuple(logits.shape[-2:]) for im in chunk):
                masks += list(self._ids(logits.argmax(1)))  # one argmax and one copy back for the batch
                continue
            masks += [self._upsample_argmax(lg, tuple(im.shape[:2])) for im, lg in zip(chunk, logits)]
        return masks

    def predict_array(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, H, W) class ids for an (N, H, W[, C]) array of images, as a notebook holds a data set.

        Images at the model's input size go through in batches of ``batch_size`` without per-image work
        on the host: one copy to the device, one forward pass, the argmax on the device and one copy of
        the masks back, uint8 where the class ids fit. On a GPU the next batch is prepared and queued
        while the previous one computes (two in flight). Other sizes (or sliding-window prediction) take
        ``predict_batch``.
        """
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(f"expected an (N, H, W[, C]) array of images, got shape {images.shape}")
        h, w, c = self.input_size
        if (
            images.shape[1:3] != (h, w)
            or self.config.preprocess.predict_mode == "sliding"
            or images.shape[-1] != c
            or images.dtype != np.uint8
        ):
            return (
                np.stack(self.predict_batch(list(images), batch_size))
                if len(images)
                else np.zeros((0,) + images.shape[1:3], np.uint8)
            )
        out: list[np.ndarray] = []
        pending: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        for i in range(0, len(images), batch_size):
            ids = self._forward(torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2)).argmax(1)
            ids = ids.to(self._ids_dtype())
            if ids.is_cuda:  # copy back without waiting; wait only for the batch before this one
                host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
                host.copy_(ids, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
                pending.append((host, done))
            else:
                pending.append((ids.cpu(), None))
            while len(pending) > (1 if i + batch_size < len(images) else 0):
                host, event = pending.pop(0)
                if event is not None:
                    event.synchronize()
                out.append(host.numpy())
        return np.concatenate(out) if out else np.zeros((0, h, w), np.uint8)

    def _ids_dtype(self) -> torch.dtype:
        return torch.uint8 if self.config.model.n_classes <= 256 else torch.int32

    def _ids(self, ids: torch.Tensor) -> np.ndarray:
        return ids.to(self._ids_dtype()).cpu().numpy()  # narrowed on the device: 1 byte a pixel crosses back

    def _upsample_argmax(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Argmax of (K, h, w) logits bilinearly resized to ``size``; banded when that would be large."""
        k, h, w = logits.shape
        if (h, w) == size:
            return self._ids(logits.argmax(0))
        if k * size[0] * size[1] <= self.band_elements:
            return self._ids(F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0))
        # Separable bilinear (align_corners=False, as F.interpolate): widths first at the model's height,
        # then each band of output rows blends its two source rows.
        rows = F.interpolate(logits[None], size=(h, size[1]), mode="bilinear", align_corners=False)[0]
        src = ((torch.arange(size[0], dtype=torch.float64) + 0.5) * (h / size[0]) - 0.5).clamp_(min=0)
        y0 = src.floor().long().clamp_(max=h - 1)
        y1 = (y0 + 1).clamp_(max=h - 1)
        lam = (src - y0).float().to(rows.device)[None, :, None]
        y0, y1 = y0.to(rows.device), y1.to(rows.device)
        band = max(1, self.band_elements // (k * size[1]))
        out = torch.empty(size, dtype=torch.long, device=rows.device)
        for top in range(0, size[0], band):
            sl = slice(top, top + band)
            blended = rows[:, y0[sl]] * (1 - lam[:, sl]) + rows[:, y1[sl]] * lam[:, sl]
            out[sl] = blended.argmax(0)
        return self._ids(out)


class Predictor(PredictorBase):
    """Class-id masks from images with a trained PyTorch model and its preprocessing settings."""

    backend = "pytorch"

    def __init__(
        self, model: nn.Module, config: RunConfig, *, device: str | torch.device = "auto", precision: str = "auto"
    ):
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            perf.tune_cpu()
        self.model = model.to(self.device).eval()
        self.config = config
        self.dtype = resolve_precision(precision, self.device)

    @classmethod
    def from_run(
        cls, path: str | Path, *, device: str | torch.device = "auto", weights: str = "best", precision: str = "auto"
    ) -> Predictor:
        run = load_run(path, weights=weights)
        return cls(run.model, run.config, device=device, precision=precision)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 -> (N, K, H, W) float32 logits."""
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory()
        x = to_float(x.to(self.device, non_blocking=True), self.config.preprocess)
        if self.config.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None),
        ):
            return self.model(x).float()
