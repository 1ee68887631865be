"""ONNX export with a parity check, and an onnxruntime predictor that reads what the export stored.

The exported graph is the network only: ``image`` float32 (N, C, H, W) in [0, 1] (uint8 / 255, the
seed's scaling) -> ``logits`` float32 (N, K, H, W); the class id is the argmax over K. Everything
around it (channel handling, resize mode, scaling, class names, palette, input size and the whole
run config) is stored in the model's ``metadata_props`` under ``unetkit.*`` keys, so that the file
alone is enough to predict exactly as the run folder does (``OnnxPredictor``).

Static export (the default) fixes height and width at the run's input size, (N, C, H, W) with the
batch free, so that a served batch is one call. ``dynamic=True`` makes height and width free too;
height and width must be multiples of ``2 ** (depth - 1)``
(16 for the seed's depth of 5), as the network halves them that many times. The legacy TorchScript
exporter (``torch.onnx.export(..., dynamo=False)``) is used: it needs nothing beyond torch and onnx,
and the model skips its Python-side size check while being traced (``model._tracing``).

Before anything is written, the file is run in onnxruntime on fresh random inputs and compared with
PyTorch in float32: the export fails with ``ParityError`` when the largest absolute logit difference
exceeds ``rtol * max(1, max |logit|)`` (``DEFAULT_RTOL`` = 1e-4, i.e. a relative error of 0.01 %),
or when a pixel's argmax differs where PyTorch's two best logits are more than twice that apart.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import RunConfig
from .ensemble import is_ensemble, load_ensemble
from .errors import ExportError, first_line
from .fsio import atomic_write_bytes
from .predict import (  # the onnxruntime side lives with the other predictors; re-exported here
    INT8_FILE,
    META_PREFIX,
    OnnxPredictor,
    need_onnx,
    read_metadata,
    session_options,
)
from .quantize import DEFAULT_MAX_CHANGE, quantize_run, set_metadata
from .run import load_run

__all__ = [
    "ExportError",
    "ExportReport",
    "OnnxPredictor",
    "ParityError",
    "compare",
    "export_onnx",
    "read_metadata",
    "session_options",
]

DEFAULT_OPSET = 17
DEFAULT_RTOL = 1e-4
METADATA_VERSION = "1"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ParityError(ExportError):
    """onnxruntime and PyTorch disagree beyond the stated tolerance: the file was not written."""


@dataclass
class ExportReport:
    """What was written and how closely onnxruntime matched PyTorch on it."""

    path: Path
    opset: int
    dynamic: bool
    input_shape: list[str | int]
    checked_shapes: list[tuple[int, ...]]
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    argmax_agreement: float  # fraction of pixels with the same argmax in both runtimes
    seed: int
    size_bytes: int
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)
    int8: str | None = None  # the quantisation's agreement summary, when int8

    def summary(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.checked_shapes)
        dims = "x".join(map(str, self.input_shape))
        return (
            f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, opset {self.opset}, input {dims}"
            f"{', dynamic' if self.dynamic else ''}) in {self.seconds:.1f} s\n"
            f"parity with PyTorch on random inputs {shapes} (seed {self.seed}): max abs difference "
            f"{self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}, largest logit "
            f"{self.max_abs_logit:.3g}), "
            f"argmax agreement {self.argmax_agreement:.4%}" + (f"\nint8: {self.int8}" if self.int8 else "")
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _scale_text(config: RunConfig) -> str:
    """How pixel values become the graph's input (preprocess.to_float), in words."""
    p = config.preprocess
    if p.normalize == "mean-std":
        return f"(x - mean) / std per channel, mean {p.mean}, std {p.std}"
    if p.normalize == "percentile":
        return f"clip((x - low) / (high - low), 0, 1) per channel, low {p.low}, high {p.high}"
    return f"x / {p.max_value:g}" if p.max_value else "x / 255 (8-bit) or x / 65535 (16-bit)"


def _metadata(config: RunConfig, dynamic: bool, opset: int, source: str) -> dict[str, str]:
    h, w, c = config.model.input_size
    multiple = config.model.size_multiple
    shape = f"(N, {c}, H, W), H and W multiples of {multiple}" if dynamic else f"(N, {c}, {h}, {w})"
    preprocess = {
        "layout": "NCHW",
        "dtype": "float32",
        "scale": _scale_text(config),
        "normalize": config.preprocess.normalize,
        "channels": c,
        "resize": config.preprocess.resize,
        "predict_mode": config.preprocess.predict_mode,
        "overlap": config.preprocess.overlap,
        "size_multiple": multiple,
    }
    meta = {
        "metadata_version": METADATA_VERSION,
        "unetkit_version": __version__,
        "config": config.to_json(),
        "class_names": json.dumps(config.class_names),
        "palette": json.dumps(config.palette),
        "input_size": json.dumps(list(config.model.input_size)),
        "preprocess": json.dumps(preprocess),
        "dynamic": json.dumps(dynamic),
        "opset": str(opset),
        "source": source,
        "input": f"{INPUT_NAME}: float32 {shape}, {'gray' if c == 1 else 'RGB' if c == 3 else 'RGBA'} "
        f"normalised as {_scale_text(config)}, resized {config.preprocess.resize} to the input size",
        "output": f"{OUTPUT_NAME}: float32 (N, {config.model.n_classes}, H, W); class = argmax over axis 1",
    }
    return {META_PREFIX + k: v for k, v in meta.items()}


def _torch_export(model: torch.nn.Module, example: torch.Tensor, dynamic: bool, opset: int) -> bytes:
    # The batch is always free (served batches run as one call); height and width only with ``dynamic``.
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices
        torch.onnx.export(
            model,
            (example,),
            buf,  # type: ignore[arg-type]  # the stub says a path; the legacy exporter writes to any file object
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
        )
    return buf.getvalue()


def _check_shapes(config: RunConfig, dynamic: bool) -> list[tuple[int, ...]]:
    """Fresh shapes to compare on: the input size, and with ``dynamic`` a batch of 2 at another size."""
    h, w, c = config.model.input_size
    if not dynamic:
        return [(1, c, h, w)]
    m = config.model.size_multiple
    return [(1, c, h, w), (2, c, h + m, w + 2 * m)]


def compare(
    model: torch.nn.Module, session: Any, shapes: list[tuple[int, ...]], seed: int, rtol: float = DEFAULT_RTOL
) -> dict[str, float]:
    """Run PyTorch (float32) and onnxruntime on the same random inputs; the parity numbers."""
    gen = torch.Generator().manual_seed(seed)
    max_diff = max_logit = 0.0
    agree = total = 0
    pairs = []
    for shape in shapes:
        x = torch.rand(shape, generator=gen)
        with torch.no_grad():
            ref = model(x).float().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ParityError(f"onnxruntime returned shape {got.shape} for input {shape}, PyTorch {ref.shape}")
        pairs.append((ref, got))
        max_diff = max(max_diff, float(np.abs(got.astype(np.float64) - ref).max()))
        max_logit = max(max_logit, float(np.abs(ref).max()))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    tolerance = rtol * max(1.0, max_logit)
    clear_flips = 0
    for ref, got in pairs:  # pixels far from a tie must never change class
        if ref.shape[1] > 1:
            top2 = np.sort(ref, axis=1)[:, -2:]
            margin = top2[:, 1] - top2[:, 0]
            clear_flips += int(((got.argmax(1) != ref.argmax(1)) & (margin > 2 * tolerance)).sum())
    if not np.isfinite(max_diff):
        max_diff = float("inf")
    return {
        "max_abs_diff": max_diff,
        "max_abs_logit": max_logit,
        "tolerance": tolerance,
        "argmax_agreement": agree / max(total, 1),
        "clear_flips": float(clear_flips),
    }


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    dynamic: bool = False,
    opset: int | None = None,
    weights: str = "best",
    rtol: float = DEFAULT_RTOL,
    seed: int | None = None,
    int8: bool = False,
    calibrate: str | Path | None = None,
    calibrate_count: int = 64,
    max_change: float | None = None,
    log: Any = None,
) -> ExportReport:
    """Export a run folder's network to ONNX with its settings in the metadata; verify it; write it.

    ``seed`` fixes the random check inputs (default: fresh ones each time, reported). Nothing is
    written when the export or the parity check fails. ``int8`` quantises the checked float graph
    (static, QDQ, per-channel weights) calibrated on ``calibrate`` (default: the run's training images)
    and refuses when more than ``max_change`` of the calibration pixels change class (``unetkit.quantize``);
    ``out`` then defaults to ``RUN/model.int8.onnx``, where ``--precision int8`` looks for it.
    """
    need_onnx("onnx")
    ort = need_onnx("onnxruntime")
    start = time.perf_counter()
    out = _out_path(run_dir, out, int8)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    model, config = _load_network(run_dir, weights)
    proto, meta = _float_proto(model, config, run_dir, dynamic, opset)
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else int(seed)
    shapes = _check_shapes(config, dynamic)
    numbers = compare(model, session, shapes, seed, rtol)
    _check_parity(numbers, run_dir, out, rtol, seed)
    quant = None
    if int8:
        quant = quantize_run(
            data,
            run_dir,
            config,
            calibrate=calibrate,
            count=calibrate_count,
            max_change=DEFAULT_MAX_CHANGE if max_change is None else max_change,
            out=out,
            log=log,
        )
        data = quant.data
        meta = {**meta, **quant.metadata}
    atomic_write_bytes(out, data)
    return ExportReport(
        path=out,
        opset=opset,
        dynamic=dynamic,
        input_shape=shape,
        checked_shapes=shapes,
        max_abs_diff=numbers["max_abs_diff"],
        max_abs_logit=numbers["max_abs_logit"],
        tolerance=numbers["tolerance"],
        argmax_agreement=numbers["argmax_agreement"],
        seed=seed,
        size_bytes=len(data),
        seconds=time.perf_counter() - start,
        metadata=meta,
        int8=quant.summary() if quant is not None else None,
    )


def _load_network(run_dir: str | Path, weights: str) -> tuple[torch.nn.Module, RunConfig]:
    """The network to export (in eval mode) and its config: one run's, or an ensemble's averaging graph."""
    if is_ensemble(run_dir):  # one graph averaging the members' probabilities
        return load_ensemble(run_dir)
    run = load_run(run_dir, weights=weights, device="cpu")
    return run.model.eval(), run.config


def _check_parity(numbers: dict[str, float], run_dir: str | Path, out: Path, rtol: float, seed: int) -> None:
    """A ParityError when onnxruntime's logits differ from PyTorch's past the tolerance, or a pixel flips."""
    if numbers["max_abs_diff"] > numbers["tolerance"] or numbers["clear_flips"]:
        raise ParityError(
            f"onnxruntime and PyTorch disagree on {run_dir}: max abs logit difference "
            f"{numbers['max_abs_diff']:.3g} (tolerance {numbers['tolerance']:.3g} = {rtol:g} x max(1, "
            f"largest logit {numbers['max_abs_logit']:.3g})), "
            f"argmax agreement {numbers['argmax_agreement']:.4%} "
            f"({int(numbers['clear_flips'])} pixel(s) changed class away from a tie), check seed {seed}. "
            f"{out} was not written; try another --opset or report it"
        )


def _out_path(run_dir: str | Path, out: str | Path | None, int8: bool) -> Path:
    if out is None:
        if not int8:
            raise ExportError("give --out FILE.onnx (where to write the model)")
        out = Path(run_dir) / INT8_FILE
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"--out {out} should end with .onnx (predict and serve recognise ONNX files by it)")
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name ending with .onnx")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another path")
    return out


def _float_proto(
    model: torch.nn.Module, config: RunConfig, run_dir: str | Path, dynamic: bool, opset: int
) -> tuple[Any, dict[str, str]]:
    """The float32 ONNX graph (free batch; free height and width with ``dynamic``) with unetkit metadata."""
    onnx = need_onnx("onnx")
    h, w, c = config.model.input_size
    example = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(0))
    try:
        raw = _torch_export(model, example, dynamic, opset)
    except Exception as e:  # unsupported opset, exporter limitations: one clear paragraph
        raise ExportError(
            f"exporting {run_dir} to ONNX with opset {opset} failed: {first_line(e)}. Try another "
            f"--opset (default {DEFAULT_OPSET})"
        ) from None
    proto = onnx.load_from_string(raw)
    meta = _metadata(config, dynamic, opset, Path(run_dir).resolve().name)
    set_metadata(proto, meta)
    proto.doc_string = f"unetkit {config.model.name}: {meta[META_PREFIX + 'input']} -> {meta[META_PREFIX + 'output']}"
    proto.producer_name, proto.producer_version = "unetkit", __version__
    onnx.checker.check_model(proto)
    return proto, meta
