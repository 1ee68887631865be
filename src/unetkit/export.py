"""ONNX export with a parity check, and an onnxruntime predictor that reads what the export stored.

The exported graph is the network only: ``image`` float32 (N, C, H, W) in [0, 1] (uint8 / 255, the
seed's scaling) -> ``logits`` float32 (N, K, H, W); the class id is the argmax over K. Everything
around it (channel handling, resize mode, scaling, class names, palette, input size and the whole
run config) is stored in the model's ``metadata_props`` under ``unetkit.*`` keys, so that the file
alone is enough to predict exactly as the run folder does (``OnnxPredictor``).

Static export (the default) fixes the shape to (1, C, H, W) at the run's input size. ``dynamic=True``
makes batch, height and width free; height and width must be multiples of ``2 ** (depth - 1)``
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
from .errors import ConfigError, RunError, UnetkitError
from .fsio import atomic_write_bytes
from .predict import PredictorBase
from .preprocess import to_float
from .run import load_run

DEFAULT_OPSET = 17
DEFAULT_RTOL = 1e-4
META_PREFIX = "unetkit."
METADATA_VERSION = "1"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(UnetkitError):
    """The export could not be made, or an ONNX file is not one unetkit can use."""


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

    def summary(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.checked_shapes)
        dims = "x".join(map(str, self.input_shape))
        return (
            f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, opset {self.opset}, input {dims}"
            f"{', dynamic' if self.dynamic else ''}) in {self.seconds:.1f} s\n"
            f"parity with PyTorch on random inputs {shapes} (seed {self.seed}): max abs difference "
            f"{self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}, largest logit "
            f"{self.max_abs_logit:.3g}), "
            f"argmax agreement {self.argmax_agreement:.4%}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"{module} is not installed; install the ONNX extra: pip install 'unetkit[onnx]'") from None


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
    shape = f"(N, {c}, H, W), H and W multiples of {multiple}" if dynamic else f"(1, {c}, {h}, {w})"
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
    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None,
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
    out: str | Path,
    *,
    dynamic: bool = False,
    opset: int | None = None,
    weights: str = "best",
    rtol: float = DEFAULT_RTOL,
    seed: int | None = None,
) -> ExportReport:
    """Export a run folder's network to ONNX with its settings in the metadata; verify it; write it.

    ``seed`` fixes the random check inputs (default: fresh ones each time, reported). Nothing is
    written when the export or the parity check fails.
    """
    onnx = _need("onnx")
    ort = _need("onnxruntime")
    start = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"--out {out} should end with .onnx (predict and serve recognise ONNX files by it)")
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name ending with .onnx")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    run = load_run(run_dir, weights=weights, device="cpu")
    model, config = run.model.eval(), run.config
    h, w, c = config.model.input_size
    example = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(0))
    try:
        raw = _torch_export(model, example, dynamic, opset)
    except Exception as e:  # unsupported opset, exporter limitations: one clear paragraph
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(
            f"exporting {run_dir} to ONNX with opset {opset} failed: {first}. Try another "
            f"--opset (default {DEFAULT_OPSET})"
        ) from None
    proto = onnx.load_from_string(raw)
    meta = _metadata(config, dynamic, opset, Path(run_dir).resolve().name)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"unetkit {config.model.name}: {meta[META_PREFIX + 'input']} -> {meta[META_PREFIX + 'output']}"
    proto.producer_name, proto.producer_version = "unetkit", __version__
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else int(seed)
    shapes = _check_shapes(config, dynamic)
    numbers = compare(model, session, shapes, seed, rtol)
    if numbers["max_abs_diff"] > numbers["tolerance"] or numbers["clear_flips"]:
        raise ParityError(
            f"onnxruntime and PyTorch disagree on {run_dir}: max abs logit difference "
            f"{numbers['max_abs_diff']:.3g} (tolerance {numbers['tolerance']:.3g} = {rtol:g} x max(1, "
            f"largest logit {numbers['max_abs_logit']:.3g})), "
            f"argmax agreement {numbers['argmax_agreement']:.4%} "
            f"({int(numbers['clear_flips'])} pixel(s) changed class away from a tie), check seed {seed}. "
            f"{out} was not written; try another --opset or report it"
        )
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
    )


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``unetkit.*`` metadata of an exported file, without the prefix (needs only onnxruntime)."""
    return {
        k[len(META_PREFIX) :]: v
        for k, v in _session(Path(path), ["CPUExecutionProvider"])[1].items()
        if k.startswith(META_PREFIX)
    }


def _session(path: Path, providers: list[str]) -> tuple[Any, dict[str, str]]:
    ort = _need("onnxruntime")
    if not path.is_file():
        raise RunError(f"ONNX file {path} does not exist (make one with `unetkit export RUN --out {path}`)")
    try:
        session = ort.InferenceSession(path.read_bytes(), providers=providers)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{path} is not a readable ONNX model ({first[:300]}); export it again") from None
    return session, dict(session.get_modelmeta().custom_metadata_map)


class OnnxPredictor(PredictorBase):
    """``Predictor`` on onnxruntime: same preprocessing, batching and argmax, only the forward differs."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, device: str = "auto", providers: list[str] | None = None):
        ort = _need("onnxruntime")
        self.path = Path(path)
        if providers is None:
            available = ort.get_available_providers()
            providers = ["CPUExecutionProvider"]
            if device != "cpu" and "CUDAExecutionProvider" in available:
                providers.insert(0, "CUDAExecutionProvider")
        self.session, meta = _session(self.path, providers)
        key = META_PREFIX + "config"
        if key not in meta:
            raise ExportError(
                f"{self.path} has no unetkit metadata (no '{key}'): it was not written by "
                "`unetkit export`; export the run folder with it"
            )
        try:
            self.config = RunConfig.from_dict(json.loads(meta[key]))
        except (json.JSONDecodeError, ConfigError) as e:
            raise ExportError(f"{self.path}: the stored config is invalid ({e}); export it again") from None
        self.metadata = {k[len(META_PREFIX) :]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        self._batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.dynamic = not all(isinstance(d, int) for d in inp.shape)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 -> (N, K, H, W) float32 logits, in chunks when the file's batch is fixed."""
        arr = to_float(x.cpu(), self.config.preprocess).numpy()
        step = self._batch or len(arr)
        outs = []
        for i in range(0, len(arr), step):
            chunk = arr[i : i + step]
            n = len(chunk)
            if n < step:  # pad the last chunk of a fixed-batch file
                chunk = np.concatenate([chunk, np.zeros((step - n,) + chunk.shape[1:], chunk.dtype)])
            outs.append(self.session.run(None, {self._input: chunk})[0][:n])
        return torch.from_numpy(np.concatenate(outs))
