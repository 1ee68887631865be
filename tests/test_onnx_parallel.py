"""OnnxPredictor's data-parallel CPU path: whole images per thread, the same logits as one session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from unetkit.config import ModelConfig, RunConfig  # noqa: E402
from unetkit.export import OnnxPredictor, export_onnx  # noqa: E402
from unetkit.model import unet_model  # noqa: E402
from unetkit.run import save_run  # noqa: E402


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parallel")
    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3))
    run = save_run(root / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config)
    return export_onnx(run, root / "m.onnx", seed=0).path


def _batch(n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(n).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))


def test_batches_split_between_threads_give_the_same_logits(onnx_file: Path, two_threads: None) -> None:
    serial = OnnxPredictor(onnx_file, device="cpu", data_parallel=False)
    parallel = OnnxPredictor(onnx_file, device="cpu")
    assert parallel.data_parallel and parallel.workers == 2 and not serial.data_parallel
    one = _batch(1)
    np.testing.assert_array_equal(parallel._forward(one).numpy(), serial._forward(one).numpy())
    assert parallel._parallel is None  # one image: the multi-thread session, no one-thread one made
    for n in (2, 5):
        x = _batch(n)
        np.testing.assert_array_equal(parallel._forward(x).numpy(), serial._forward(x).numpy())
    assert parallel._parallel is not None and parallel._parallel[0].get_session_options().intra_op_num_threads == 1


def test_fixed_batch_files_run_their_chunks_in_parallel(onnx_file: Path, tmp_path: Path, two_threads: None) -> None:
    proto = onnx.load(str(onnx_file))
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 2
    for out in proto.graph.output:
        out.type.tensor_type.shape.dim[0].ClearField("dim_param")
        out.type.tensor_type.shape.dim[0].dim_value = 2
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, str(fixed))
    serial = OnnxPredictor(fixed, device="cpu", data_parallel=False)
    parallel = OnnxPredictor(fixed, device="cpu")
    assert parallel._batch == 2
    x = _batch(5)  # chunks of 2, 2 and a padded 1
    a, b = parallel._forward(x).numpy(), serial._forward(x).numpy()
    assert a.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(a, b)
    assert parallel._parallel is not None


def test_one_thread_does_not_split(onnx_file: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert not OnnxPredictor(onnx_file, device="cpu").data_parallel
    finally:
        torch.set_num_threads(before)
