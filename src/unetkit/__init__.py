"""unetkit: the classic U-Net segmentation tutorial as a toolkit.

The Python API mirrors the command line::

    from unetkit import unet_model, fit, evaluate, Predictor, load_run, RunConfig
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import AugmentConfig, DataConfig, ModelConfig, PreprocessConfig, RunConfig, TrainConfig
from .data.loader import SegmentationData
from .errors import ConfigError, DataError, RunError, UnetkitError
from .evaluate import evaluate
from .model import conv_block, fcn_model, unet_model, upsampling_block
from .predict import Predictor
from .run import load_run, save_run
from .train import fit

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
    "conv_block",
    "evaluate",
    "fcn_model",
    "fit",
    "load_run",
    "save_run",
    "unet_model",
    "upsampling_block",
]
