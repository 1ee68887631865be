"""unetkit: the classic U-Net segmentation tutorial as a toolkit."""

from __future__ import annotations

__version__ = "0.1.0"

from .model import fcn_model, unet_model  # noqa: E402

__all__ = ["unet_model", "fcn_model", "__version__"]
