"""Ensembles: probability averaging, member checks, and the folder accepted like a run everywhere."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs, write_folder
from PIL import Image
from typer.testing import CliRunner

from unetkit.cli import app
from unetkit.config import ModelConfig, RunConfig
from unetkit.ensemble import EnsemblePredictor, is_ensemble, load_ensemble, make_ensemble
from unetkit.errors import RunError
from unetkit.model import fcn_model, unet_model
from unetkit.predict import Predictor
from unetkit.predict_files import load_predictor
from unetkit.run import save_run

NAMES = ["background", "square", "disc"]


def member(root: Path, name: str, seed: int, *, n_classes: int = 3, channels: int = 3, fcn: bool = False) -> Path:
    torch.manual_seed(seed)
    config = RunConfig(
        model=ModelConfig(
            name="fcn" if fcn else "unet", input_size=(32, 32, channels), n_filters=4, n_classes=n_classes
        ),
        class_names=NAMES[:n_classes] if n_classes <= 3 else None,
    )
    build = fcn_model if fcn else unet_model
    return save_run(root / name, build((32, 32, channels), n_filters=4, n_classes=n_classes), config)


@pytest.fixture(scope="module")
def ens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ens")
    runs = [member(root, "a", 1), member(root, "b", 2), member(root, "c", 3, fcn=True)]
    return make_ensemble(runs, root / "ENS")


def test_ensemble_averages_member_probabilities(ens: Path) -> None:
    module, config = load_ensemble(ens)
    assert len(module.members) == 3 and config.class_names == NAMES
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x), 1) for m in module.members]).mean(0)
        got = module(x)
    assert torch.allclose(got.exp(), probs, atol=1e-6)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    predictor = load_predictor(ens, device="cpu")
    assert isinstance(predictor, EnsemblePredictor) and predictor.members == 3
    predictor.dtype = None  # float32, as the members below
    members = [Predictor.from_run(ens / m, device="cpu", precision="fp32") for m in ("members/0_a", "members/1_b")]
    members.append(Predictor.from_run(ens / "members/2_c", device="cpu", precision="fp32"))
    mean = torch.stack([torch.softmax(m.logits(image), 0) for m in members]).mean(0)
    assert (predictor.predict(image) == mean.argmax(0).numpy()).all()
    assert predictor.predict(np.zeros((40, 50, 3), np.uint8)).shape == (40, 50)


def test_ensemble_folder_is_self_contained_and_listed(ens: Path) -> None:
    assert is_ensemble(ens)
    assert sorted(p.name for p in (ens / "members").iterdir()) == ["0_a", "1_b", "2_c"]
    assert (ens / "README.md").read_text().count("members/") >= 3


def test_members_must_share_classes_and_channels(tmp_path: Path) -> None:
    a = member(tmp_path, "a", 1)
    with pytest.raises(RunError, match="share their classes"):
        make_ensemble([a, member(tmp_path, "two", 2, n_classes=2)], tmp_path / "E1")
    with pytest.raises(RunError, match="share their input channels"):
        make_ensemble([a, member(tmp_path, "gray", 2, channels=1)], tmp_path / "E2")
    with pytest.raises(RunError, match="at least two"):
        make_ensemble([a], tmp_path / "E3")
    (tmp_path / "E4").mkdir()
    (tmp_path / "E4" / "mine.txt").write_text("keep")
    with pytest.raises(RunError, match="not empty"):
        make_ensemble([a, member(tmp_path, "b", 2)], tmp_path / "E4")
    assert (tmp_path / "E4" / "mine.txt").read_text() == "keep"


def test_ensemble_onnx_export_matches_pytorch(ens: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from unetkit.export import OnnxPredictor, export_onnx

    report = export_onnx(ens, tmp_path / "ens.onnx", seed=0)
    assert report.max_abs_diff <= report.tolerance
    onnx_pred = OnnxPredictor(tmp_path / "ens.onnx")
    torch_pred = EnsemblePredictor.from_run(ens, device="cpu", precision="fp32")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    for im in images:
        a, b = onnx_pred.logits(im).numpy(), torch_pred.logits(im).numpy()
        assert np.abs(a - b).max() < 1e-4
        assert (onnx_pred.predict(im) == torch_pred.predict(im)).all()


def test_ensemble_cli_evaluate_predict(ens: Path, tmp_path: Path) -> None:
    images, masks = make_blobs(4, seed=5)
    img_dir, mask_dir = write_folder(tmp_path / "data", images, masks)
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", str(ens), "--images", str(img_dir), "--masks", str(mask_dir)])
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output and "(over 3 of 3 classes)" in r.output
    r = runner.invoke(app, ["predict", str(ens), str(img_dir), "--out", str(tmp_path / "pred"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "pred").glob("img*_colour.png"))) == 4


def test_ensemble_cli_builds_and_rejects(tmp_path: Path) -> None:
    a, b = member(tmp_path, "a", 1), member(tmp_path, "b", 2)
    runner = CliRunner()
    r = runner.invoke(app, ["ensemble", str(a), str(b), "--out", str(tmp_path / "E")])
    assert r.exit_code == 0, r.output
    assert is_ensemble(tmp_path / "E")
    r = runner.invoke(
        app, ["ensemble", str(a), str(member(tmp_path, "c", 3, n_classes=2)), "--out", str(tmp_path / "F")]
    )
    assert r.exit_code != 0 and "share their classes" in r.output
    assert not (tmp_path / "F").exists()


def test_ensemble_serves(ens: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from unetkit.serve.app import create_app

    with TestClient(create_app(ens, device="cpu")) as client:
        info = client.get("/info").json()
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="PNG")
        r = client.post("/predict", files={"file": ("x.png", buf.getvalue(), "image/png")})
    assert info["model"]["backend"] == "pytorch-ensemble"
    assert [c["name"] for c in info["classes"]] == NAMES
    assert r.status_code == 200, r.text
