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

from .config import RunConfig
from .preprocess import image_to_tensor, resize_images, to_float
from .run import load_run

ImageLike = np.ndarray | str | Path


def _resolve_device(name: str | torch.device) -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None


def as_image(image: ImageLike | object) -> np.ndarray:
    """A path, PIL image or array -> (H, W, C) uint8 array."""
    if isinstance(image, (str, Path)):
        from .data.io import read_image

        return read_image(image)
    if not isinstance(image, np.ndarray):  # PIL.Image
        image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and np.nanmax(image) <= 1.0:
            image = np.round(np.nan_to_num(image) * 255)
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


class Predictor:
    """Class-id masks from images with a trained model and its preprocessing settings."""

    def __init__(self, model: nn.Module, config: RunConfig, *, device: str | torch.device = "auto",
                 precision: str = "auto"):
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.dtype = _resolve_dtype(precision, self.device)

    @classmethod
    def from_run(cls, path: str | Path, *, device: str | torch.device = "auto", weights: str = "best",
                 precision: str = "auto") -> Predictor:
        run = load_run(path, weights=weights)
        return cls(run.model, run.config, device=device, precision=precision)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or [])

    @property
    def palette(self) -> list[list[int]]:
        return list(self.config.palette or [])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.config.model.input_size)  # type: ignore[return-value]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 -> (N, K, H, W) float32 logits."""
        x = to_float(x.to(self.device))
        if self.config.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                             enabled=self.dtype is not None):
            return self.model(x).float()

    def logits(self, image: ImageLike | object) -> torch.Tensor:
        """(K, H, W) float32 logits at the image's original size."""
        return self.logits_batch([as_image(image)])[0]

    def logits_batch(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Logits for several (H, W, C) uint8 images; same-size images share one forward pass."""
        h, w, c = self.input_size
        out: list[torch.Tensor | None] = [None] * len(images)
        if self.config.preprocess.predict_mode == "sliding":
            from .tiling import sliding_window_logits

            for i, im in enumerate(images):
                out[i] = sliding_window_logits(self._forward, image_to_tensor(im, c), (h, w),
                                               self.config.preprocess.overlap, self.config.model.size_multiple)
            return out  # type: ignore[return-value]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape[:2], []).append(i)
        for size, idx in groups.items():
            x = torch.cat([image_to_tensor(images[i], c) for i in idx])
            logits = self._forward(resize_images(x, (h, w), self.config.preprocess.resize))
            if tuple(size) != (h, w):
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            for j, i in enumerate(idx):
                out[i] = logits[j].cpu()
        return out  # type: ignore[return-value]

    def predict(self, image: ImageLike | object) -> np.ndarray:
        """(H, W) class ids (argmax over channels) at the image's original size."""
        return self.predict_batch([as_image(image)])[0]

    def predict_batch(self, images: list[ImageLike | object], batch_size: int = 16) -> list[np.ndarray]:
        arrays = [as_image(im) for im in images]
        dtype = np.uint8 if self.config.model.n_classes <= 256 else np.int32
        masks = []
        for start in range(0, len(arrays), batch_size):
            for logits in self.logits_batch(arrays[start:start + batch_size]):
                masks.append(logits.argmax(0).numpy().astype(dtype))
        return masks
