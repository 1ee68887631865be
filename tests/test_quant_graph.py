"""The int8 graph's shape: the float graph handed to the quantiser is the same function, and every
convolution of the result runs in onnxruntime's int8 kernels (what made int8 slower than fp32 was
convolutions left in float between a dequantise and a quantise, and the transposed convolutions)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from conftest import make_blobs, write_folder  # noqa: E402

from unetkit.export import export_onnx  # noqa: E402
from unetkit.quantize import (  # noqa: E402
    QuantSettings,
    align_conv_channels,
    prepare_float,
    quantize_bytes,
    subpixel_kernel,
    subpixel_transposed_convs,
)


def _run(tmp_path: Path) -> Path:
    import torch

    from unetkit.config import DataConfig, ModelConfig, RunConfig
    from unetkit.model import unet_model
    from unetkit.run import save_run

    images, masks = make_blobs(8)
    img_dir, _ = write_folder(tmp_path / "data", images, masks)
    torch.manual_seed(0)
    config = RunConfig(
        model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3), data=DataConfig(images=str(img_dir))
    )
    return save_run(tmp_path / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config)


def _ops(data: bytes) -> Counter:
    return Counter(n.op_type for n in onnx.load_from_string(data).graph.node)


def _logits(data: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


@pytest.mark.parametrize("dynamic", [False, True])
def test_prepared_float_graph_is_the_same_function_without_transposed_convs(tmp_path: Path, dynamic: bool) -> None:
    run = _run(tmp_path)
    data = export_onnx(run, tmp_path / "f.onnx", dynamic=dynamic, seed=0).path.read_bytes()
    assert _ops(data)["ConvTranspose"] == 4
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    ref = _logits(data, x)
    for channels_last in (True, False):
        prepared = prepare_float(data, QuantSettings(channels_last=channels_last))
        ops = _ops(prepared)
        # the crops went with the transposed convs; the one Slice left drops the logits' alignment channels
        assert ops["ConvTranspose"] == 0 and ops["Slice"] == 1 and ops["Identity"] == 0, ops
        # static sizes: the channels-last interleave; free sizes (or asked): DepthToSpace
        assert ops["DepthToSpace"] == (4 if dynamic or not channels_last else 0), ops
        np.testing.assert_allclose(_logits(prepared, x), ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    if dynamic:  # another size through the rewritten graph
        x2 = np.random.default_rng(1).random((1, 3, 48, 64), dtype=np.float32)
        np.testing.assert_allclose(_logits(prepare_float(data), x2), _logits(data, x2), atol=1e-4)


def test_subpixel_kernel_matches_torch_transposed_conv() -> None:
    import torch
    import torch.nn.functional as F

    w = torch.randn(5, 7, 3, 3)
    x = torch.randn(2, 5, 6, 8)
    ref = F.conv_transpose2d(x, w, stride=2)[..., :12, :16]
    k = torch.from_numpy(subpixel_kernel(w.numpy()))
    y = F.conv2d(F.pad(x, (1, 0, 1, 0)), k)  # phase-major: (phase * C_out + channel)
    got = y.reshape(2, 2, 2, 7, 6, 8).permute(0, 3, 4, 1, 5, 2).reshape(2, 7, 12, 16)  # DepthToSpace, DCR
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_rewrite_leaves_other_transposed_convs_alone() -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((2, 2, 3, 3), np.float32), "w")
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2], kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 9, 9])],
        [w],
    )
    proto = helper.make_model(graph)
    assert subpixel_transposed_convs(proto) == 0  # no crop after it: not the Keras 'same' layer
    assert [n.op_type for n in proto.graph.node] == ["ConvTranspose"]


def test_every_convolution_runs_in_int8(tmp_path: Path) -> None:
    import onnxruntime as ort

    from unetkit.predict import session_options

    run = _run(tmp_path)
    data = export_onnx(run, tmp_path / "f.onnx", seed=0).path.read_bytes()
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    prepared = prepare_float(data)
    convs = _ops(prepared)["Conv"]
    options = session_options(1)
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(quantize_bytes(prepared, x, []), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node)
    assert ops["QLinearConv"] == convs and ops["Conv"] == 0 and ops["ConvTranspose"] == 0, ops
    # one quantise at the input, one dequantise at the output: no float round trips in between
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops
    # the skip connections concatenate in uint8, not as DequantizeLinear -> Concat -> QuantizeLinear
    assert ops["QLinearConcat"] == 4 and ops["Concat"] == 0, ops
    # channels-last throughout: the input's and output's transposes and one interleave per decoder level
    assert ops["Transpose"] == 2 + 4 and ops["DepthToSpace"] == 0, ops
    # the channel alignment: a float Pad in front of the input's quantise, a uint8 Slice before the dequantise
    assert ops["Pad"] == 1 and ops["Slice"] == 1, ops


def _conv_channels(data: bytes) -> list[tuple[int, int]]:
    """(output, input) channel counts of each Conv, in graph order."""
    proto = onnx.load_from_string(data)
    init = {i.name: i.dims for i in proto.graph.initializer}
    return [tuple(init[n.input[1]][:2]) for n in proto.graph.node if n.op_type == "Conv"]


def test_channel_alignment_pads_the_first_and_logits_convs_only(tmp_path: Path) -> None:
    """3 colour channels and 3 classes miss onnxruntime's VNNI int8 kernel (inputs % 4, >= 16 outputs)."""
    run = _run(tmp_path)
    data = export_onnx(run, tmp_path / "f.onnx", seed=0).path.read_bytes()
    plain = _conv_channels(prepare_float(data, QuantSettings(align=False)))
    aligned_data = prepare_float(data)
    aligned = _conv_channels(aligned_data)
    assert plain[0] == (4, 3) and plain[-1] == (3, 4)
    assert aligned[0] == (4, 4) and aligned[-1] == (16, 4) and aligned[1:-1] == plain[1:-1]
    x = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    ref = _logits(data, x)
    got = _logits(aligned_data, x)
    assert got.shape == ref.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    proto = onnx.load_from_string(aligned_data)
    assert align_conv_channels(proto) == 0  # already aligned: nothing more to do


def _activation_ranges(data: bytes) -> list[tuple[float, int]]:
    """(scale, zero point) of every QuantizeLinear on an activation, in graph order: the calibration's result."""
    proto = onnx.load_from_string(data)
    init = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    quants = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init]
    return [(float(init[n.input[1]]), int(init[n.input[2]])) for n in quants]


def test_int8_masks_do_not_change_with_the_alignment(tmp_path: Path) -> None:
    """Zero channels and zero filters leave the calibration ranges, so the int8 arithmetic, as they were.

    The ranges must be identical everywhere. The logits are bit-identical where onnxruntime runs both graphs
    on its VNNI kernel; on an AVX2-only CPU the unaligned convolutions take a kernel whose 16-bit sums
    saturate, so there the masks are compared instead."""
    run = _run(tmp_path)
    data = export_onnx(run, tmp_path / "f.onnx", seed=0).path.read_bytes()
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    plain = QuantSettings(align=False)
    plain_int8, aligned_int8 = (
        quantize_bytes(prepare_float(data, plain), x, [], plain),
        quantize_bytes(prepare_float(data), x, []),
    )
    a_ranges, b_ranges = _activation_ranges(plain_int8), _activation_ranges(aligned_int8)
    assert len(a_ranges) > 10 and set(a_ranges) <= set(b_ranges)  # the alignment's Pad/Slice add none of their own
    a, b = _logits(plain_int8, x), _logits(aligned_int8, x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.98
    np.testing.assert_allclose(a, b, atol=0.5 * float(np.abs(a).max()))
