"""int8 for the CPU: static post-training quantisation of an exported float graph with onnxruntime's tooling.

The float32 ONNX graph (already checked against PyTorch by ``export_onnx``) is pre-processed
(``quant_pre_process``), its transposed convolutions rewritten in sub-pixel form (a 2x2 convolution and
an interleave, the same arithmetic, which onnxruntime runs in int8 where it has no int8
``ConvTranspose``), the first and logits convolutions' channels padded with zeros to what onnxruntime's
VNNI kernel takes (``align_conv_channels``), and quantised to QDQ form (uint8 activations, int8 weights
per output channel, what the x86 VNNI kernels take), calibrated (MinMax) on the run's own training
images, preprocessed exactly as in training (why each step: ``docs/inference.md``, int8;
``benchmarks/int8_study.py``). The int8 graph is then compared with the exported float graph on those
images: when more than ``max_change`` of their pixels change class, the convolutions most sensitive to
rounding (the logits layer, then the first one, then the decoder) are kept in float and the graph is
quantised again; if that does not bring the change under the limit, nothing is written.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
ALIGN_PAD = "_align_pad"  # suffix of the Pad nodes align_conv_channels adds


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
            "method": "onnxruntime static QDQ after quant_pre_process, a sub-pixel rewrite of the transposed convs "
            "and the first and logits convs' channels aligned, uint8 activations, int8 per-channel weights, "
            "MinMax calibration",
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


@dataclass(frozen=True)
class QuantSettings:
    """How the float graph is prepared and quantised; the defaults are what measured best (docs/inference.md).

    ``prepare`` runs onnxruntime's ``quant_pre_process`` (shape inference, folding; it removes the
    ``Identity`` nodes the exporter puts in front of shared biases, without which onnxruntime finds no
    int8 pattern and runs those convolutions in float between a dequantise and a quantise), and
    ``subpixel`` rewrites each Keras-style transposed convolution (3x3, stride 2, then the crop) as the
    same arithmetic in a form onnxruntime has int8 kernels for: a 2x2 convolution with four times the
    outputs and a ``DepthToSpace`` (onnxruntime's CPU provider has no int8 ``ConvTranspose``).
    """

    fmt: str = "QDQ"  # or "QOperator"
    prepare: bool = True
    subpixel: bool = True
    channels_last: bool = True  # the sub-pixel interleave as channels-last reshapes where sizes are static
    align: bool = True  # convolutions' channel counts padded to what onnxruntime's int8 direct kernel takes
    per_channel: bool = True
    reduce_range: bool = False
    activations: str = "QUInt8"  # onnxruntime QuantType names; uint8 x int8 is what VNNI multiplies
    weights: str = "QInt8"
    extra: tuple[tuple[str, Any], ...] = ()  # onnxruntime's extra_options, as pairs


def prepare_float(float_data: bytes, settings: QuantSettings = QuantSettings()) -> bytes:
    """The float graph as it is handed to the quantiser: pre-processed, transposed convs in sub-pixel form."""
    import onnx

    if not settings.prepare and not settings.subpixel and not settings.align:
        return float_data
    proto = onnx.load_from_string(float_data)
    if settings.prepare:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with tempfile.TemporaryDirectory(prefix="unetkit-int8-") as tmp:
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx"
            src.write_bytes(float_data)
            with _quiet():
                # onnx's shape inference only: the symbolic one fails on free sizes and leaves files in the cwd
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
            proto = onnx.load(str(dst))
    if settings.subpixel:
        subpixel_transposed_convs(proto, settings.channels_last)
    if settings.align:
        align_conv_channels(proto)
    return proto.SerializeToString()


def quantize_bytes(
    float_data: bytes, x: np.ndarray, exclude: list[str], settings: QuantSettings = QuantSettings()
) -> bytes:
    """The int8 graph of ``float_data`` (already ``prepare_float``-ed) calibrated on ``x``, ``exclude`` in float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # the alignment Pad stays float, in front of the input's quantise: onnxruntime has no uint8 Pad in QDQ form
    pads = [n.name for n in onnx.load_from_string(float_data).graph.node if n.name.endswith(ALIGN_PAD)]
    with tempfile.TemporaryDirectory(prefix="unetkit-int8-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(float_data)
        with _quiet():
            quantize_static(
                str(src),
                str(dst),
                _Reader(x),
                quant_format=getattr(QuantFormat, settings.fmt),
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=getattr(QuantType, settings.activations),
                weight_type=getattr(QuantType, settings.weights),
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=[*exclude, *pads],
                extra_options=dict(settings.extra),
            )
        return dst.read_bytes()


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantiser's warnings and its "consider pre-processing" notices on the root logger."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def subpixel_kernel(weight: np.ndarray) -> np.ndarray:
    """(C_in, C_out, 3, 3) transposed-conv weights -> (4 C_out, C_in, 2, 2) phase-major 2x2 conv weights.

    Output pixel (2m + a, 2n + b) sums input pixel (m - 1 + dy, n - 1 + dx) times tap
    (a + 2 - 2 dy, b + 2 - 2 dx) where that tap lies in the kernel (as ``model.subpixel_conv_transpose``).
    """
    cin, cout = weight.shape[:2]
    kernel = np.zeros((4, cout, cin, 2, 2), weight.dtype)
    for a, b, dy, dx in np.ndindex(2, 2, 2, 2):
        ky, kx = a + 2 - 2 * dy, b + 2 - 2 * dx
        if ky <= 2 and kx <= 2:
            kernel[a * 2 + b, :, :, dy, dx] = weight[:, :, ky, kx].T
    return kernel.reshape(4 * cout, cin, 2, 2)


def subpixel_transposed_convs(proto: Any, channels_last: bool = True) -> int:
    """Rewrite, in place, each ConvTranspose(3x3, stride 2) + crop to 2H x 2W as a 2x2 Conv + interleave.

    The crop is the exporter's two ``Slice`` nodes (starts 0, steps 1, axes 2 and 3) after the node;
    the convolution pads one pixel at the top and left, its outputs phase-major. Where height and width
    are static (the default export) the interleave is written channels-last (Transpose, Reshape,
    Transpose, Reshape, Transpose): onnxruntime's int8 convolutions run channels-last and its optimiser
    cancels the outer transposes against theirs, so the whole decoder stays channels-last; with free
    height and width (or ``channels_last=False``) it is ``DepthToSpace`` (DCR), which costs a layout
    round trip per level there. Needs constant crop bounds (``quant_pre_process`` folds them).
    Returns how many were rewritten; the shape nodes left unused go too.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    init = {i.name: i for i in graph.initializer}
    sizes = _static_sizes(proto) if channels_last else {}
    replaced: dict[str, list[Any]] = {}
    dropped: set[str] = set()
    for node in graph.node:
        crop = _crop_after(node, graph, init)
        if crop is None:
            continue
        weight = numpy_helper.to_array(init[node.input[1]])
        inputs = [node.input[0], _add_initializer(graph, init, node.input[1] + ".subpixel", subpixel_kernel(weight))]
        if len(node.input) > 2 and node.input[2]:
            bias = np.tile(numpy_helper.to_array(init[node.input[2]]), 4)
            inputs.append(_add_initializer(graph, init, node.input[2] + ".subpixel", bias))
        phases, out, name = node.output[0] + "_phases", crop[-1].output[0], node.name
        conv = helper.make_node(
            "Conv", inputs, [phases], name=name + "_subpixel", kernel_shape=[2, 2], pads=[1, 1, 0, 0]
        )
        hw = sizes.get(node.input[0])
        if hw is None:
            shuffle = [helper.make_node("DepthToSpace", [phases], [out], name=name + "_d2s", blocksize=2, mode="DCR")]
        else:
            shuffle = _interleave_nhwc(graph, init, phases, out, name, (*hw, weight.shape[1]))
        replaced[node.name] = [conv, *shuffle]
        dropped.update(s.name for s in crop)
    if replaced:
        nodes = [new for n in graph.node if n.name not in dropped for new in replaced.get(n.name, [n])]
        _set_live_nodes(graph, nodes)
    return len(replaced)


def align_conv_channels(proto: Any, in_align: int = 4, out_min: int = 16, out_align: int = 4) -> int:
    """Pad, in place, convolutions' channel counts to what onnxruntime's int8 direct kernel takes.

    onnxruntime's symmetric int8 convolution (``MlasConvSym``, the VNNI kernel) needs input channels in
    multiples of 4 and at least 16 output channels in multiples of 4; others fall back to an im2col GEMM
    several times slower per multiply: the first layer (3 colour channels) and the logits layer (the
    class count). Only those two kinds are changed: a graph input feeding a convolution gets zero
    channels (``Pad``) and the weights zero input channels; a convolution writing a graph output gets
    zero filters and a ``Slice`` keeps its real channels. The same function. Returns how many changed.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    init = {i.name: i for i in graph.initializer}
    inputs = {i.name for i in graph.input} - set(init)
    outputs = {o.name for o in graph.output}
    before: dict[int, Any] = {}  # node index -> the Pad in front of it
    after: dict[int, Any] = {}  # node index -> the Slice after it
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv" or node.input[1] not in init or _attr(node, "group", 1) != 1:
            continue
        w = numpy_helper.to_array(init[node.input[1]])
        cout, cin = w.shape[:2]
        pad_in = -cin % in_align if node.input[0] in inputs else 0
        pad_out = max(out_min, cout + -cout % out_align) - cout if node.output[0] in outputs else 0
        if not pad_in and not pad_out:
            continue
        name = node.name or node.output[0]
        if pad_in:
            pads = np.zeros(2 * w.ndim, np.int64)
            pads[w.ndim + 1] = pad_in  # the end of the channel axis
            padded = f"{name}_aligned_input"
            pad_shape = _add_initializer(graph, init, f"{name}_align_pads", pads)
            before[index] = helper.make_node("Pad", [node.input[0], pad_shape], [padded], name=name + ALIGN_PAD)
            node.input[0] = padded
            w = np.concatenate([w, np.zeros((cout, pad_in, *w.shape[2:]), w.dtype)], 1)
        if pad_out:
            w = np.concatenate([w, np.zeros((pad_out, *w.shape[1:]), w.dtype)], 0)
            if len(node.input) > 2 and node.input[2]:
                bias = numpy_helper.to_array(init[node.input[2]])
                node.input[2] = _add_initializer(
                    graph, init, node.input[2] + ".aligned", np.concatenate([bias, np.zeros(pad_out, bias.dtype)])
                )
            out, wide = node.output[0], f"{name}_aligned_output"
            node.output[0] = wide
            bounds = [
                _add_initializer(graph, init, f"{name}_align_{k}", np.array([v], np.int64))
                for k, v in (("start", 0), ("end", cout), ("axis", 1))
            ]
            after[index] = helper.make_node("Slice", [wide, *bounds], [out], name=f"{name}_align_slice")
        node.input[1] = _add_initializer(graph, init, node.input[1] + ".aligned", w)
    changed = set(before) | set(after)
    if changed:
        nodes = [new for i, n in enumerate(graph.node) for new in (before.get(i), n, after.get(i)) if new is not None]
        _set_live_nodes(graph, nodes)
    return len(changed)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _static_sizes(proto: Any) -> dict[str, tuple[int, int]]:
    """Tensor name -> (height, width) where shape inference (with shape-value propagation) knows both."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    sizes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            sizes[info.name] = (dims[2].dim_value, dims[3].dim_value)
    return sizes


def _interleave_nhwc(
    graph: Any, init: dict[str, Any], phases: str, out: str, name: str, hwc: tuple[int, int, int]
) -> list[Any]:
    """(N, 4C, H, W) phase-major -> (N, C, 2H, 2W), as channels-last reshapes around one 6-D transpose."""
    from onnx import helper

    h, w, c = hwc
    split = _add_initializer(graph, init, f"{name}_split_shape", np.array([0, h, w, 2, 2, c], np.int64))
    merge = _add_initializer(graph, init, f"{name}_merge_shape", np.array([0, 2 * h, 2 * w, c], np.int64))
    t = [f"{name}_{k}" for k in ("nhwc", "split", "interleaved", "merged")]
    return [
        helper.make_node("Transpose", [phases], [t[0]], name=name + "_to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [t[0], split], [t[1]], name=name + "_split"),
        helper.make_node("Transpose", [t[1]], [t[2]], name=name + "_interleave", perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", [t[2], merge], [t[3]], name=name + "_merge"),
        helper.make_node("Transpose", [t[3]], [out], name=name + "_to_nchw", perm=[0, 3, 1, 2]),
    ]


def _crop_after(node: Any, graph: Any, init: dict[str, Any]) -> list[Any] | None:
    """The two Slice nodes cropping a Keras-style ConvTranspose's output, when ``node`` is one; else None."""
    from onnx import helper, numpy_helper

    if node.op_type != "ConvTranspose" or node.input[1] not in init:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    plain = {"group": 1, "dilations": [1, 1], "pads": [0, 0, 0, 0], "output_padding": [0, 0], "auto_pad": b"NOTSET"}
    if attrs.get("kernel_shape") != [3, 3] or attrs.get("strides") != [2, 2]:
        return None
    if any(attrs.get(k, v) != v for k, v in plain.items()) or "output_shape" in attrs:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in init:
        return None

    def const(inputs: Any, i: int, default: list[int]) -> list[int] | None:
        if i >= len(inputs) or not inputs[i]:
            return default
        return numpy_helper.to_array(init[inputs[i]]).tolist() if inputs[i] in init else None

    chain, out, axes = [], node.output[0], []
    for _ in range(2):
        users = [n for n in graph.node if out in n.input]
        if len(users) != 1 or users[0].op_type != "Slice" or out in {o.name for o in graph.output}:
            return None
        s = users[0]
        if const(s.input, 1, [0]) != [0] or const(s.input, 4, [1]) != [1]:
            return None
        axes += const(s.input, 3, [-1]) or [-1]
        chain.append(s)
        out = s.output[0]
    return chain if sorted(axes) == [2, 3] else None


def _add_initializer(graph: Any, init: dict[str, Any], name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    if name not in init:
        init[name] = numpy_helper.from_array(value, name)
        graph.initializer.append(init[name])
    return name


def _set_live_nodes(graph: Any, nodes: list[Any]) -> None:
    """Replace the graph's nodes with ``nodes`` less those whose outputs nothing uses; unused weights go."""
    wanted = {o.name for o in graph.output}
    while True:
        used = wanted | {i for n in nodes for i in n.input}
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            break
        nodes = live
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    weights = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    del graph.value_info[:]  # shapes of removed tensors; onnxruntime infers them again


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
    settings: QuantSettings = QuantSettings(),
) -> QuantReport:
    """Quantise a run's float graph to int8 within ``max_change``; raise QuantizationError otherwise."""
    import onnxruntime as ort

    if not 0.0 <= max_change <= 1.0:
        raise QuantizationError(f"--max-change must be a share between 0 and 1, got {max_change}")
    x = calibration_images(run_dir, config, calibrate, count)
    source = str(calibrate) if calibrate is not None else f"the run's training images ({config.data.images})"
    float_session = ort.InferenceSession(float_data, session_options(), providers=["CPUExecutionProvider"])
    prepared = prepare_float(float_data, settings)  # compared below with the exported graph, not with itself
    attempts: list[tuple[list[str], float]] = []
    for exclude in _candidates(prepared):
        data = quantize_bytes(prepared, x, exclude, settings)
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
