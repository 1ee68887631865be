"""Where and in which precision to run: one rule for training, evaluation and prediction."""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

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
    """True where the CPU has bf16 matrix instructions (AVX512-BF16 or AMX); whether they are faster than
    fp32 is another matter (``cpu_bf16_speedup``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# bf16 autocast is taken by ``auto`` on the CPU only when it is at least this much faster: it costs
# precision, so a tie goes to fp32.
BF16_MIN_SPEEDUP = 1.1


@lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16-autocast time of a 3x3 convolution's forward and backward (batch 4, 64 channels,
    48x64, channels-last: a U-Net layer at the demo's sizes), measured once per process in ~0.3 s.

    Measured because the CPU flags do not tell: with AVX512-BF16 on both, bf16 trained the seed's U-Net
    1.8x faster than fp32 on a 2-core AMD EPYC Zen 5 and 1.6x slower on a 2-core Intel Xeon whose AMX
    was not exposed (benchmarks/README.md). The best of 5 interleaved rounds each, after a warm-up.
    """
    with torch.random.fork_rng(devices=[]):  # the probe's random tensors leave the caller's RNG as it was
        torch.manual_seed(0)
        conv = nn.Conv2d(64, 64, 3, padding=1)
        conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
        x = torch.randn(4, 64, 48, 64).contiguous(memory_format=torch.channels_last).requires_grad_()

    def step(dtype: torch.dtype | None) -> float:
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            y = conv(x)
        y.float().sum().backward()
        return time.perf_counter() - t0

    times: dict[torch.dtype | None, list[float]] = {None: [], torch.bfloat16: []}
    for round_ in range(7):
        for dtype, seen in times.items():
            elapsed = step(dtype)
            if round_ >= 2:  # two warm-up rounds: oneDNN builds its kernels on the first calls
                seen.append(elapsed)
    return min(times[None]) / max(min(times[torch.bfloat16]), 1e-9)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto`` is bf16 where it is faster: on a GPU that
    supports it; on a CPU with bf16 instructions where a short measurement (``cpu_bf16_speedup``) finds
    it at least ``BF16_MIN_SPEEDUP`` times faster than fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    fast = cpu_has_fast_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
    return torch.bfloat16 if fast else None


def precision_note(name: str, device: torch.device) -> str:
    """Why ``auto`` chose what it chose on this CPU, for the training log ("" where nothing was measured)."""
    if name != "auto" or device.type != "cpu" or not cpu_has_fast_bf16():
        return ""
    return f" (bf16 measured {cpu_bf16_speedup():.2f}x fp32's speed here)"


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
