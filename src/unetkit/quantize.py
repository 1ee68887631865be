"""int8 for the CPU: static post-training quantisation of an exported float graph with onnxruntime's tooling.

The float32 ONNX graph (already checked against PyTorch by ``export_onnx``) is quantised to QDQ form
(uint8 activations, int8 weights per output channel), calibrated (MinMax) on the run's own training
images, preprocessed exactly as in training. The int8 graph is then compared with the float graph on
those images: when more than ``max_change`` of their pixels change class, the convolutions most
sensitive to rounding (the logits layer, then the first one, then the decoder) are kept in float and the
graph is quantised again; if that does not bring the change under the limit, nothing is written.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .data.folders import expand_inputs
from .data.io import read_image
from .errors import DataError
from .predict import session_options
from .preprocess import image_to_tensor, resize_images, to_float

DEFAULT_MAX_CHANGE = 0.01  # share of calibration pixels whose class int8 may change
INPUT_NAME = "image"


class QuantizationError(DataError):
    """int8 changes too many pixels, or there is nothing to calibrate on: nothing was written."""

    attempts: list[tuple[list[str], float]] = []  # (convolutions kept in float, share changed) per try


@dataclass
class QuantReport:
    """The int8 graph and how far it strays from float32 on the calibration images."""

    data: bytes
    changed: float  # share of calibration pixels whose argmax differs from the float graph's
    max_change: float
    images: int
    source: str
    kept_float: list[str] = field(default_factory=list)
    attempts: list[tuple[list[str], float]] = field(default_factory=list)

    @property
    def metadata(self) -> dict[str, str]:
        import json

        info = {
            "method": "onnxruntime static QDQ, uint8 activations, int8 per-channel weights, MinMax calibration",
            "calibration_images": self.images,
            "calibration_source": self.source,
            "changed_pixels": self.changed,
            "max_change": self.max_change,
            "kept_float": self.kept_float,
        }
        return {"unetkit.precision": "int8", "unetkit.int8": json.dumps(info)}

    def summary(self) -> str:
        kept = f"; kept in float: {', '.join(self.kept_float)}" if self.kept_float else "; every convolution in int8"
        return (
            f"static QDQ, per-channel weights, calibrated on {self.images} image(s) from {self.source}: "
            f"{self.changed:.3%} of their pixels change class against float32 (limit {self.max_change:.2%}){kept}"
        )


def calibration_images(run_dir: str | Path, config: RunConfig, calibrate: str | Path | None, count: int) -> np.ndarray:
    """(N, C, H, W) float32 inputs at the model's size from ``calibrate`` or the run's training images."""

    if count < 1:
        raise QuantizationError(f"--calibrate-count must be at least 1, got {count}")
    folder = _calibration_folder(run_dir, config, calibrate)
    files = expand_inputs([folder])
    step = max(1, len(files) // count)
    h, w, c = config.model.input_size
    batch = []
    for file in files[::step][:count]:  # spread over the whole set, deterministically
        try:
            image = read_image(file)
        except DataError:
            continue
        batch.append(resize_images(image_to_tensor(image, c), (h, w), config.preprocess.resize))
    if not batch:
        raise QuantizationError(f"no readable images in {folder} to calibrate int8 on; give --calibrate DIR")
    import torch

    return to_float(torch.cat(batch), config.preprocess).numpy()


def _calibration_folder(run_dir: str | Path, config: RunConfig, calibrate: str | Path | None) -> Path:
    if calibrate is not None:
        folder = Path(calibrate)
        if not folder.exists():
            raise QuantizationError(f"--calibrate {folder} does not exist; give a folder of training-like images")
        return folder
    stored = config.data.images
    if stored is None:
        raise QuantizationError(
            f"{run_dir} does not name its training images (an imported model?): give --calibrate DIR, a folder of "
            "images like the ones the model will see"
        )
    for folder in (Path(stored), Path(run_dir) / stored):
        if folder.exists():
            return folder
    raise QuantizationError(
        f"the run's training images {stored} (from {run_dir}/config.json) are not there from this directory; "
        "give --calibrate DIR"
    )


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, 8 images a call."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.it: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter([{INPUT_NAME: self.x[i : i + 8]} for i in range(0, len(self.x), 8)])


def quantize_bytes(float_data: bytes, x: np.ndarray, exclude: list[str]) -> bytes:
    """The QDQ int8 graph of ``float_data`` calibrated on ``x``, leaving the nodes in ``exclude`` in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="unetkit-int8-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(float_data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # its "consider pre-processing" notices on the root logger
            try:
                quantize_static(
                    str(src),
                    str(dst),
                    _Reader(x),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=exclude,
                )
            finally:
                logging.disable(logging.NOTSET)
        return dst.read_bytes()


def changed_share(float_session: Any, int8_session: Any, x: np.ndarray) -> float:
    """Share of pixels of ``x`` whose argmax class differs between the two sessions."""
    changed = total = 0
    for i in range(0, len(x), 16):
        chunk = x[i : i + 16]
        a = float_session.run(None, {INPUT_NAME: chunk})[0].argmax(1)
        b = int8_session.run(None, {INPUT_NAME: chunk})[0].argmax(1)
        changed += int((a != b).sum())
        total += a.size
    return changed / max(total, 1)


def _candidates(float_data: bytes) -> list[list[str]]:
    """Sets of convolutions to keep in float, tried in order: none, the logits layer, + the first, + the decoder."""
    import onnx

    convs = [n.name for n in onnx.load_from_string(float_data).graph.node if n.op_type in ("Conv", "ConvTranspose")]
    if not convs:
        return [[]]
    last, first = [convs[-1]], [convs[0]]
    decoder = convs[len(convs) // 2 :]
    sets = [[], last, first + last, list(dict.fromkeys(first + decoder))]
    return [s for i, s in enumerate(sets) if s not in sets[:i]]


def quantize_run(
    float_data: bytes,
    run_dir: str | Path,
    config: RunConfig,
    *,
    calibrate: str | Path | None = None,
    count: int = 64,
    max_change: float = DEFAULT_MAX_CHANGE,
    out: str | Path | None = None,
    log: Callable[[str], Any] | None = None,
) -> QuantReport:
    """Quantise a run's float graph to int8 within ``max_change``; raise QuantizationError otherwise."""
    import onnxruntime as ort

    if not 0.0 <= max_change <= 1.0:
        raise QuantizationError(f"--max-change must be a share between 0 and 1, got {max_change}")
    x = calibration_images(run_dir, config, calibrate, count)
    source = str(calibrate) if calibrate is not None else f"the run's training images ({config.data.images})"
    float_session = ort.InferenceSession(float_data, session_options(), providers=["CPUExecutionProvider"])
    attempts: list[tuple[list[str], float]] = []
    for exclude in _candidates(float_data):
        data = quantize_bytes(float_data, x, exclude)
        int8_session = ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
        changed = changed_share(float_session, int8_session, x)
        attempts.append((exclude, changed))
        if log is not None:
            kept = f"{len(exclude)} convolution(s) in float" if exclude else "all in int8"
            log(f"int8 ({kept}): {changed:.3%} of the calibration pixels change class")
        if changed <= max_change:
            report = QuantReport(data, changed, max_change, len(x), source, exclude, attempts)
            return QuantReport(_with_metadata(data, float_data, report, set_metadata), *_fields(report))
    tried = "; ".join(f"{len(e)} kept in float: {c:.3%}" for e, c in attempts)
    error = QuantizationError(
        f"int8 changes the class of more than {max_change:.2%} of the pixels of {len(x)} calibration image(s) from "
        f"{source} ({tried}); {out or 'the int8 file'} was not written. Use float32, calibrate on more "
        "representative images (--calibrate DIR, --calibrate-count N), or accept more with --max-change"
    )
    error.attempts = attempts
    raise error


def _fields(report: QuantReport) -> tuple[Any, ...]:
    return (report.changed, report.max_change, report.images, report.source, report.kept_float, report.attempts)


def _with_metadata(data: bytes, float_data: bytes, report: QuantReport, set_metadata: Callable) -> bytes:
    """The int8 graph carrying the float graph's unetkit metadata plus what the quantisation did."""
    import onnx

    proto = onnx.load_from_string(data)
    meta = {p.key: p.value for p in onnx.load_from_string(float_data).metadata_props}
    set_metadata(proto, {**meta, **report.metadata})
    return proto.SerializeToString()


def set_metadata(proto: Any, meta: dict[str, str]) -> None:
    """Replace a model's ``metadata_props`` with ``meta``."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
