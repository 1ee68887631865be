"""The int8 graph with the scaling and the argmax folded in (unetkit.onnx_fuse): the same masks as the host path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import make_blobs, write_folder  # noqa: E402

from unetkit.config import DataConfig, ModelConfig, PreprocessConfig, RunConfig  # noqa: E402
from unetkit.export import OnnxPredictor, export_onnx  # noqa: E402
from unetkit.model import unet_model  # noqa: E402
from unetkit.onnx_fuse import PIXELS, fused_graph, quantised_argmax  # noqa: E402
from unetkit.preprocess import to_float  # noqa: E402
from unetkit.run import save_run  # noqa: E402

NORMS = {
    "scale": PreprocessConfig(),
    "scale-200": PreprocessConfig(max_value=200.0),
    "mean-std": PreprocessConfig(normalize="mean-std", mean=[0.3, 0.5, 0.1], std=[0.2, 0.25, 0.3]),
    "percentile": PreprocessConfig(normalize="percentile", low=[10.0, 3.5, 0.0], high=[240.0, 200.0, 255.0]),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An int8 file (scale normalisation, 5 classes) and the float file of the same run."""
    root = tmp_path_factory.mktemp("fuse")
    images, masks = make_blobs(8)
    img_dir, _ = write_folder(root / "data", images, masks)
    torch.manual_seed(0)
    config = RunConfig(
        model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=5), data=DataConfig(images=str(img_dir))
    )
    run = save_run(root / "run", unet_model((32, 32, 3), n_filters=4, n_classes=5), config)
    return {
        "int8": export_onnx(run, root / "i.onnx", int8=True, calibrate_count=8, max_change=1.0, seed=0).path,
        "float": export_onnx(run, root / "f.onnx", seed=0).path,
    }


def _images(n: int, seed: int = 0, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _pair(path: Path, norm: PreprocessConfig | None = None) -> tuple[OnnxPredictor, OnnxPredictor]:
    fused, host = OnnxPredictor(path, device="cpu"), OnnxPredictor(path, device="cpu", fuse=False)
    if norm is not None:
        for p in (fused, host):
            p.config = replace(p.config, preprocess=norm)
    return fused, host


def test_fused_int8_gives_the_host_paths_masks(files: dict[str, Path], two_threads: None) -> None:
    fused, host = _pair(files["int8"])
    for n in (1, 2, 5, 7):  # one image (the multi-thread session), split batches, a last partial batch
        x = _images(n, seed=n)
        a, b = fused.predict_array(x, batch_size=4), host.predict_array(x, batch_size=4)
        assert a.dtype == b.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    assert fused._fused is not None and fused._fused[0] is not None and fused._fused[1] is not None
    assert host._fused is None  # fuse=False never derives the graph
    # predict_batch: images at the input size take the derived graph, other sizes the host path
    mixed = [*_images(3, seed=9), _images(1, seed=10, size=(40, 48))[0]]
    for a, b in zip(fused.predict_batch(mixed), host.predict_batch(mixed)):
        np.testing.assert_array_equal(a, b)
    assert fused.set_tta("flip") is fused  # TTA averages float logits: the host path, same masks
    np.testing.assert_array_equal(fused.predict_array(_images(3)), host.set_tta("flip").predict_array(_images(3)))


@pytest.mark.parametrize("name", list(NORMS))
def test_folded_normalisation_gives_the_same_quantised_logits(files: dict[str, Path], name: str) -> None:
    norm = NORMS[name]
    data = files["int8"].read_bytes()
    derived = fused_graph(data, norm, 3)
    assert derived is not None
    session = ort.InferenceSession(derived, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [PIXELS] and session.get_inputs()[0].type == "tensor(uint8)"
    proto = onnx.load_from_string(data)
    dq = next(n for n in proto.graph.node if n.output[0] == proto.graph.output[0].name)
    init = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    scale, zero = float(init[dq.input[1]]), int(init[dq.input[2]])
    ramp = (np.arange(32 * 32 * 3) % 256).astype(np.uint8).reshape(1, 32, 32, 3)  # every value, every channel
    x = np.concatenate([_images(3), ramp])
    float_in = to_float(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2), norm).contiguous().numpy()
    logits = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"image": float_in})[0]
    q = session.run(None, {PIXELS: x})[0]
    assert q.dtype == np.uint8 and q.shape == logits.shape
    np.testing.assert_array_equal((q.astype(np.float32) - zero) * np.float32(scale), logits)
    fused, host = _pair(files["int8"], norm)
    np.testing.assert_array_equal(fused.predict_array(x), host.predict_array(x))


def test_normalisation_matches_to_float_bit_for_bit_on_every_value() -> None:
    from onnx import TensorProto, helper

    from unetkit.onnx_fuse import normalisation

    pixels = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None, None], (1, 256, 1, 3)).copy()
    for name, norm in NORMS.items():
        steps = normalisation(norm, 3)
        assert steps is not None, name
        ops, clip = steps
        nodes, inits, last = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT)], [], "c"
        nodes.insert(0, helper.make_node("Transpose", [PIXELS], ["x"], perm=[0, 3, 1, 2]))
        for k, (op, value) in enumerate(ops):
            inits.append(onnx.numpy_helper.from_array(value, f"k{k}"))
            nodes.append(helper.make_node(op, [last, f"k{k}"], [f"o{k}"]))
            last = f"o{k}"
        if clip:
            inits += [onnx.numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 1.0))]
            nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["y"]))
        else:
            nodes.append(helper.make_node("Identity", [last], ["y"]))
        graph = helper.make_graph(
            nodes,
            "norm",
            [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, [1, 256, 1, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {PIXELS: pixels})
        want = to_float(torch.from_numpy(pixels).permute(0, 3, 1, 2), norm).numpy()
        np.testing.assert_array_equal(got[0].view(np.uint32), np.ascontiguousarray(want).view(np.uint32), err_msg=name)


@pytest.mark.parametrize("k", [2, 3, 5, 13, 16, 17, 64, 256, 300])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_quantised_argmax_is_argmax_with_the_first_of_equal_maxima(k: int, dtype: type) -> None:
    rng = np.random.default_rng(k)
    info = np.iinfo(dtype)
    q = rng.integers(info.min, int(info.max) + 1, (2, k, 5, 7)).astype(dtype)
    ties = (q // 64).astype(dtype)  # few values: most pixels have several equal maxima
    for x in (q, ties, np.full_like(q, info.max), np.full_like(q, info.min)):
        want = x.argmax(1)
        out_dtype = np.uint8 if k <= 256 else np.int32
        got = quantised_argmax(x, out_dtype)
        assert got.dtype == out_dtype
        np.testing.assert_array_equal(got, want)


def test_float_files_keep_the_host_path(files: dict[str, Path], two_threads: None) -> None:
    data = files["float"].read_bytes()
    assert fused_graph(data, PreprocessConfig(), 3) is None
    fused, host = _pair(files["float"])
    np.testing.assert_array_equal(fused.predict_array(_images(4)), host.predict_array(_images(4)))
    assert fused._fused == (None, None)  # tried once, not derived


def test_fixed_batch_int8_files_are_padded_as_before(files: dict[str, Path], tmp_path: Path, two_threads: None) -> None:
    proto = onnx.load(str(files["int8"]))
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 2
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, str(fixed))
    fused, host = _pair(fixed)
    assert fused._batch == 2
    x = _images(5, seed=3)  # chunks of 2, 2 and a padded 1
    np.testing.assert_array_equal(fused.predict_array(x), host.predict_array(x))
    assert fused._fused is not None and fused._fused[0] is not None
