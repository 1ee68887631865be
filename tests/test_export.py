"""ONNX export: parity numbers, static and dynamic shapes, metadata, OnnxPredictor, CLI, failure paths."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from unetkit.cli import app  # noqa: E402
from unetkit.config import ModelConfig, RunConfig  # noqa: E402
from unetkit.export import ExportError, OnnxPredictor, ParityError, export_onnx, read_metadata  # noqa: E402
from unetkit.model import unet_model  # noqa: E402
from unetkit.predict import Predictor  # noqa: E402
from unetkit.run import save_run  # noqa: E402

NAMES = ["background", "square", "disc"]
PALETTE = [[10, 20, 30], [200, 40, 40], [40, 200, 90]]


def tiny_run(root: Path) -> Path:
    config = RunConfig(
        model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3), class_names=NAMES, palette=PALETTE
    )
    return save_run(root / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def static(run_dir: Path):
    return export_onnx(run_dir, run_dir.parent / "static.onnx", seed=1)


@pytest.fixture(scope="module")
def dynamic(run_dir: Path):
    return export_onnx(run_dir, run_dir.parent / "dynamic.onnx", dynamic=True, seed=2)


def images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = ((32, 32), (50, 70), (17, 9), (64, 48))
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_static_export_parity(static) -> None:
    print(static.summary())
    assert static.path.exists() and static.size_bytes == static.path.stat().st_size
    assert static.input_shape == ["batch", 3, 32, 32] and not static.dynamic
    assert static.checked_shapes == [(1, 3, 32, 32)]
    assert static.max_abs_diff <= static.tolerance and static.max_abs_diff < 1e-5
    assert static.argmax_agreement == 1.0
    onnx.checker.check_model(onnx.load(str(static.path)))


def test_dynamic_export_runs_any_multiple_of_16(dynamic, run_dir: Path) -> None:
    print(dynamic.summary())
    assert dynamic.dynamic and dynamic.input_shape == ["batch", 3, "height", "width"]
    assert dynamic.checked_shapes == [(1, 3, 32, 32), (2, 3, 48, 64)]
    assert dynamic.max_abs_diff <= dynamic.tolerance and dynamic.argmax_agreement == 1.0
    session = ort.InferenceSession(str(dynamic.path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": np.random.default_rng(0).random((3, 3, 80, 16), dtype=np.float32)})[0]
    assert out.shape == (3, 3, 80, 16)


def test_metadata_round_trip(static, run_dir: Path) -> None:
    meta = read_metadata(static.path)
    original = RunConfig.load(run_dir / "config.json")
    assert RunConfig.from_dict(json.loads(meta["config"])) == original
    assert json.loads(meta["class_names"]) == NAMES
    assert json.loads(meta["palette"]) == PALETTE
    assert json.loads(meta["input_size"]) == [32, 32, 3]
    assert json.loads(meta["preprocess"])["resize"] == "bilinear"
    assert json.loads(meta["dynamic"]) is False and meta["opset"] == "17"
    predictor = OnnxPredictor(static.path)
    assert predictor.class_names == NAMES and predictor.palette == PALETTE
    assert predictor.input_size == (32, 32, 3) and predictor.config.model.n_classes == 3
    assert predictor.config.data.ignore_index is None and predictor.backend == "onnxruntime"


@pytest.mark.parametrize("which", ["static", "dynamic"])
def test_onnx_predictor_gives_the_same_masks(
    which: str,
    request: pytest.FixtureRequest,
    run_dir: Path,
) -> None:
    report = request.getfixturevalue(which)
    # float32 on both sides (Predictor's "auto" precision is bfloat16 on CPUs that have it)
    onnx_pred = OnnxPredictor(report.path)
    torch_pred = Predictor.from_run(run_dir, device="cpu", precision="fp32")
    ims = images()
    for a, b, im in zip(onnx_pred.predict_batch(ims), torch_pred.predict_batch(ims), ims):
        assert a.shape == im.shape[:2] and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(onnx_pred.predict(ims[1]), torch_pred.predict(ims[1]))
    for p in (onnx_pred, torch_pred):
        p.config = replace(p.config, preprocess=replace(p.config.preprocess, predict_mode="sliding"))
    np.testing.assert_array_equal(onnx_pred.predict(ims[3]), torch_pred.predict(ims[3]))
    lo, lt = onnx_pred.logits(ims[1]), torch_pred.logits(ims[1])
    assert float((lo - lt).abs().max()) < 1e-4


def test_export_and_predict_cli(tmp_path: Path, run_dir: Path, dynamic) -> None:
    runner = CliRunner()
    out = tmp_path / "m.onnx"
    args = ["export", str(run_dir), "--format", "onnx", "--opset", "18", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "max abs difference" in result.output and "argmax agreement 100" in result.output and out.exists()
    assert read_metadata(out)["opset"] == "18"
    image = images()[1]
    Image.fromarray(image).save(tmp_path / "a.png")
    args = ["predict", str(dynamic.path), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = Predictor.from_run(run_dir, device="cpu", precision="fp32").predict(image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "a.png")), expected)
    assert (tmp_path / "o" / "a_colour.png").exists() and (tmp_path / "o" / "a_overlay.png").exists()
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "x.txt")])
    assert result.exit_code != 0 and ".onnx" in result.output


def test_parity_failure_is_loud_and_writes_nothing(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import unetkit.export as export

    real = export._torch_export

    def corrupted(model, example, dynamic, opset):  # export a network whose last layer was nudged
        with torch.no_grad():
            model.conv10.bias.add_(0.05)
        try:
            return real(model, example, dynamic, opset)
        finally:
            with torch.no_grad():
                model.conv10.bias.sub_(0.05)

    monkeypatch.setattr(export, "_torch_export", corrupted)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ParityError, match="disagree.*max abs logit difference .*tolerance") as info:
        export_onnx(run_dir, out, seed=3)
    assert "was not written" in str(info.value) and not out.exists()


def test_clear_errors(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(ExportError, match="opset"):
        export_onnx(run_dir, tmp_path / "a.onnx", opset=3)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not a readable ONNX"):
        OnnxPredictor(tmp_path / "junk.onnx")
    bare = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["image"], ["logits"])],
            "g",
            [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
            [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        )
    )
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(ExportError, match="no unetkit metadata"):
        OnnxPredictor(tmp_path / "bare.onnx")
    from unetkit.errors import RunError

    with pytest.raises(RunError, match="does not exist"):
        OnnxPredictor(tmp_path / "missing.onnx")


def test_onnx_predictor_takes_tta(static, dynamic, run_dir: Path) -> None:
    from unetkit.errors import ConfigError

    im = images()[1]
    torch_pred = Predictor.from_run(run_dir, device="cpu", precision="fp32").set_tta("flip,scales=1,1.5")
    with pytest.raises(ConfigError, match="--dynamic"):
        OnnxPredictor(static.path).set_tta("flip,scales=1,1.5")
    flip = OnnxPredictor(static.path).set_tta("flip").logits(im)
    torch_flip = Predictor.from_run(run_dir, device="cpu", precision="fp32").set_tta("flip").logits(im)
    assert float((flip - torch_flip).abs().max()) < 1e-4
    scaled = OnnxPredictor(dynamic.path).set_tta("flip,scales=1,1.5").logits(im)
    assert float((scaled - torch_pred.logits(im)).abs().max()) < 1e-4
