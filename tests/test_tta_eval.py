"""Evaluation report (confusion picture, per-image CSV), test-time augmentation and probabilities."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs, tiny_config, write_folder
from PIL import Image
from torch import nn

from unetkit.errors import ConfigError
from unetkit.evaluate import evaluate
from unetkit.metrics import metrics_from_matrix
from unetkit.predict import Predictor, PredictorBase
from unetkit.run import build_model, save_run
from unetkit.tta import TTA, parse_tta, tta_forward, view_size
from unetkit.uncertainty import confidence, entropy


class Threshold(PredictorBase):
    """A fixed 'model': class 1 where the red channel is bright, 2 where dark, else 0 (logits one-hot x 5)."""

    backend = "test"

    def __init__(self) -> None:
        self.config = tiny_config()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0].float()
        ids = torch.where(red > 200, 1, torch.where(red < 50, 2, 0))
        return torch.nn.functional.one_hot(ids, 3).permute(0, 3, 1, 2).float() * 5


def test_parse_tta() -> None:
    assert parse_tta("flip") == TTA(flip=True)
    assert parse_tta("flip,scales=0.75,1,1.25") == TTA(flip=True, scales=(0.75, 1.0, 1.25))
    assert parse_tta("scales=0.5, 1") == TTA(scales=(0.5, 1.0))
    assert parse_tta("none") is None and parse_tta(None) is None and parse_tta("scales=1") is None
    assert parse_tta("flip,scales=0.75,1,1.25").cost == pytest.approx(2 * (0.5625 + 1 + 1.5625))
    assert parse_tta("flip,scales=0.75,1").describe() == "flip,scales=0.75,1"
    for bad in ("rotate", "scales=big", "scales=0"):
        with pytest.raises(ConfigError, match="--tta"):
            parse_tta(bad)


def test_tta_flip_of_flip_equivariant_model_equals_plain() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():  # a left-right symmetric kernel makes the model flip-equivariant
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return conv(x.float() / 255)

    x = torch.randint(0, 256, (2, 3, 16, 20), dtype=torch.uint8)
    with torch.no_grad():
        plain = forward(x)
        tta = tta_forward(forward, x, TTA(flip=True), multiple=16)
    torch.testing.assert_close(tta, plain, atol=1e-6, rtol=1e-5)


def test_tta_averages_the_views_logits() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 2, 3, padding=1)  # not symmetric: the flipped view differs

    def forward(x: torch.Tensor) -> torch.Tensor:
        return conv(x.float() / 255)

    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        flipped = forward(x.flip(-1)).flip(-1)
        assert not torch.allclose(flipped, forward(x))
        torch.testing.assert_close(tta_forward(forward, x, TTA(flip=True), multiple=16), (forward(x) + flipped) / 2)
        assert view_size(32, 32, 1.5, 16) == (48, 48)
        big = torch.nn.functional.interpolate(x.float(), size=(48, 48), mode="bilinear", align_corners=False)
        up = forward(big.round().clamp(0, 255).to(torch.uint8))
        back = torch.nn.functional.interpolate(up, size=(32, 32), mode="bilinear", align_corners=False)
        torch.testing.assert_close(
            tta_forward(forward, x, TTA(scales=(1.0, 1.5)), multiple=16), (forward(x) + back) / 2, atol=1e-5, rtol=1e-4
        )


def test_predictor_tta_hook_and_probabilities(tmp_path: Path) -> None:
    config = tiny_config()
    torch.manual_seed(0)
    run = save_run(tmp_path / "run", build_model(config.model), config)
    predictor = Predictor.from_run(run, device="cpu", precision="fp32")
    at_size = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # no resize: exact
    plain = predictor.logits(at_size)
    assert predictor.set_tta("flip") is predictor
    flipped = predictor.logits(at_size)
    mirrored = Predictor.from_run(run, device="cpu", precision="fp32").logits(at_size[:, ::-1].copy()).flip(-1)
    assert not torch.allclose(plain, mirrored)
    torch.testing.assert_close(flipped, (plain + mirrored) / 2, atol=1e-5, rtol=1e-4)
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    probs = predictor.probabilities(image)
    assert probs.shape == (3, 40, 52)
    torch.testing.assert_close(probs.sum(0), torch.ones(40, 52))
    assert np.array_equal(predictor.predict(image), probs.argmax(0).numpy())
    predictor.config = replace(
        predictor.config, preprocess=replace(predictor.config.preprocess, predict_mode="sliding")
    )  # the hook wraps the sliding window's forward too
    assert predictor.logits(image).shape == (3, 40, 52)


def test_confidence_and_entropy() -> None:
    certain = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(4, 1, 1)
    uniform = torch.full((4, 1, 1), 0.25)
    half = torch.tensor([0.5, 0.5, 0.0, 0.0]).view(4, 1, 1)
    probs = torch.cat([certain, uniform, half], dim=2)
    torch.testing.assert_close(confidence(probs), torch.tensor([[1.0, 0.25, 0.5]]))
    torch.testing.assert_close(entropy(probs), torch.tensor([[0.0, 1.0, 0.5]]))  # log 2 / log 4 = 0.5


@pytest.fixture
def scored(tmp_path: Path) -> tuple[Path, Path, Path]:
    images, masks = make_blobs(5, seed=3)
    images[2][masks[2] == 1] = 120  # image 2: its square is missed by the threshold model
    return (tmp_path, *write_folder(tmp_path / "data", images, masks))


def test_evaluate_per_image_worst_first_and_confusion(scored) -> None:
    tmp, images, masks = scored
    report = evaluate(Threshold(), images, masks)
    assert report.n_images == 5 and len(report.per_image) == 5
    total = np.zeros((3, 3), np.int64)
    for score in report.per_image:  # each image's score is that of its own confusion matrix
        truth = np.asarray(Image.open(masks / score.name)).astype(np.int64)
        pred = Threshold().predict(np.array(Image.open(images / score.name)))
        m = np.bincount(truth.ravel() * 3 + pred.ravel(), minlength=9).reshape(3, 3)
        total += m
        assert score.mean_iou == pytest.approx(metrics_from_matrix(m).mean_iou)
        assert score.pixel_accuracy == pytest.approx(metrics_from_matrix(m).pixel_accuracy)
    np.testing.assert_array_equal(report.metrics.matrix, total)
    assert report.worst_first()[0].name == "img2.png"
    report.save_per_image(tmp / "per_image.csv")
    rows = list(csv.DictReader((tmp / "per_image.csv").open()))
    assert rows[0]["image"] == "img2.png" and len(rows) == 5
    assert [float(r["mean_iou"]) for r in rows] == sorted(float(r["mean_iou"]) for r in rows)
    csv_path = report.save_confusion(tmp / "confusion.png")
    assert csv_path == tmp / "confusion.csv" and Image.open(tmp / "confusion.png").size[0] > 100
    lines = list(csv.reader(csv_path.open()))
    assert lines[0][1:] == report.class_names
    np.testing.assert_array_equal(np.array([r[1:] for r in lines[1:]], dtype=np.int64), total)


def test_cli_evaluate_and_predict_options(scored, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from unetkit.cli import app

    tmp, images, masks = scored
    config = tiny_config()
    run = save_run(tmp / "run", build_model(config.model), config)
    out = tmp / "eval"
    out.mkdir()
    args = ["evaluate", run, "--images", images, "--masks", masks, "--device", "cpu", "--tta", "flip"]
    args += ["--json", out / "m.json", "--confusion", out / "c.png", "--per-image", out / "p.csv"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "mAcc" in result.output and "fwIoU" in result.output
    data = json.loads((out / "m.json").read_text())
    assert data["tta"] == "flip" and {"mean_accuracy", "fw_iou"} <= set(data)
    assert (out / "c.png").exists() and (out / "c.csv").exists() and (out / "p.csv").exists()
    bad = CliRunner().invoke(app, [str(a) for a in args[:-6] + ["--tta", "spin"]])
    assert bad.exit_code != 0 and "--tta" in bad.output
    pred_out = tmp / "pred"
    args = ["predict", run, str(images / "img0.png"), "--out", pred_out, "--device", "cpu", "--save-probs", "npz"]
    result = CliRunner().invoke(app, [str(a) for a in args + ["--tta", "flip,scales=1,1.5"]])
    assert result.exit_code == 0, result.output
    with np.load(pred_out / "img0_probs.npz") as z:
        probs, names = z["probabilities"], list(z["class_names"])
    assert probs.dtype == np.float16 and probs.shape == (3, 32, 32) and names == config.class_names
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-3)
    mask = np.asarray(Image.open(pred_out / "img0.png")).astype(np.int64)
    np.testing.assert_array_equal(np.take_along_axis(probs, mask[None], 0)[0], probs.max(0))  # float16 ties aside
    conf = np.asarray(Image.open(pred_out / "img0_confidence.png"))
    np.testing.assert_allclose(conf, np.round(probs.astype(np.float32).max(0) * 255), atol=1)
    assert np.asarray(Image.open(pred_out / "img0_entropy.png")).shape == (32, 32)


def test_serve_confidence_map_and_tta(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from unetkit.serve import create_app

    config = tiny_config()
    run = save_run(tmp_path / "run", build_model(config.model), config)
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    with TestClient(create_app(run, device="cpu", tta="flip")) as client:
        response = client.post("/predict?format=confidence", files={"file": ("a.png", buf.getvalue(), "image/png")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(response.content)))
    expected = Predictor.from_run(run, device="cpu").set_tta("flip").probabilities(image).max(0).values
    assert got.shape == (24, 40)
    np.testing.assert_allclose(got, np.round(expected.numpy() * 255), atol=1)
