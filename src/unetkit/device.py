"""Where and in which precision to run: one rule for training, evaluation and prediction."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from .errors import ConfigError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` is the GPU when one is visible, else the CPU."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU runs bf16 matrix work natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto`` is bf16 where the hardware runs it fast."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


PREDICT_PRECISIONS = ("fp32", "bf16", "int8")


def check_predict_precision(name: str | None) -> None:
    """Refuse a prediction precision other than None (the model's own) or one of ``PREDICT_PRECISIONS``."""
    if name is not None and name not in PREDICT_PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PREDICT_PRECISIONS)}, got {name!r}")


def resolve_predict_precision(name: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for prediction: float32 unless asked (``--precision``), so masks are the model's own.

    Training may use bf16 where the hardware runs it fast (``resolve_precision``); prediction, evaluation
    and serving default to fp32 because bf16 changes some pixels' class (imported Keras models would not
    agree with Keras). ``int8`` runs on onnxruntime and is chosen by ``open_predictor``, not here.
    """
    name = "fp32" if name is None else name
    if name == "auto":  # the training rule, kept for callers that want the fastest float path
        return resolve_precision(name, device)
    check_predict_precision(name)
    if name == "int8":
        raise ConfigError(
            "--precision int8 runs an int8 ONNX file on onnxruntime: make one with `unetkit export RUN --format "
            "onnx --int8` and open it with open_predictor(RUN, precision='int8') (or pass the .onnx file)"
        )
    return torch.bfloat16 if name == "bf16" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype``, or nothing for fp32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
