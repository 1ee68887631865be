"""unetkit: the classic U-Net segmentation tutorial as a toolkit.

The Python API mirrors the command line::

    from unetkit import unet_model, fit, evaluate, Predictor, load_run, RunConfig, build_config

Names are loaded on first use (PEP 562), so that ``import unetkit.predict`` or ``unetkit serve``
never loads the training loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "AugmentConfig": "config",
    "DataConfig": "config",
    "ModelConfig": "config",
    "PreprocessConfig": "config",
    "RunConfig": "config",
    "TrainConfig": "config",
    "build_config": "configure",
    "SegmentationData": "data.loader",
    "ConfigError": "errors",
    "DataError": "errors",
    "RunError": "errors",
    "UnetkitError": "errors",
    "evaluate": "evaluate",
    "conv_block": "model",
    "fcn_model": "model",
    "unet_model": "model",
    "upsampling_block": "model",
    "Predictor": "predict",
    "load_run": "run",
    "save_run": "run",
    "fit": "train",
}

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DataError",
    "ModelConfig",
    "Predictor",
    "PreprocessConfig",
    "RunConfig",
    "RunError",
    "SegmentationData",
    "TrainConfig",
    "UnetkitError",
    "__version__",
    "build_config",
    "conv_block",
    "evaluate",
    "fcn_model",
    "fit",
    "load_run",
    "save_run",
    "unet_model",
    "upsampling_block",
]

if TYPE_CHECKING:
    from .config import AugmentConfig, DataConfig, ModelConfig, PreprocessConfig, RunConfig, TrainConfig
    from .configure import build_config
    from .data.loader import SegmentationData
    from .errors import ConfigError, DataError, RunError, UnetkitError
    from .evaluate import evaluate
    from .model import conv_block, fcn_model, unet_model, upsampling_block
    from .predict import Predictor
    from .run import load_run, save_run
    from .train import fit


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'unetkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
