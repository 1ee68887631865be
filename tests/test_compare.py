"""U-Net vs FCN: `unetkit compare` trains both with one recipe and writes the table and the picture;
full-resolution prediction by sliding window segments images larger than (and not sized like) the crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs, write_folder
from PIL import Image
from typer.testing import CliRunner

from unetkit import Predictor, RunConfig, load_run
from unetkit.cli import app
from unetkit.compare import Comparison, ModelScore
from unetkit.tiling import sliding_window_logits

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    images, masks = write_folder(root / "data", *make_blobs(16, seed=2))
    result = invoke(
        "compare",
        "--images",
        images,
        "--masks",
        masks,
        "--n-classes",
        3,
        "--val-fraction",
        0.25,
        "--input-size",
        32,
        32,
        "--n-filters",
        4,
        "--epochs",
        2,
        "--batch-size",
        8,
        "--lr",
        3e-3,
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--no-progress",
        "--examples",
        2,
        "--out",
        root / "study",
    )
    assert result.exit_code == 0, result.output
    return root / "study", images, masks


def test_compare_writes_table_json_and_picture(study):
    out, _, _ = study
    table = (out / "compare.md").read_text()
    assert "| metric | FCN | U-Net |" in table and "boundary F1 (2 px)" in table and "IoU class_2" in table
    report = json.loads((out / "compare.json").read_text())
    assert [m["model"] for m in report["models"]] == ["fcn", "unet"]
    for m in report["models"]:
        assert 0 <= m["mean_iou"] <= 1 and 0 <= m["pixel_accuracy"] <= 1 and 0 <= m["boundary_f1"] <= 1
        assert 0 < m["mean_accuracy"] <= 1 and 0 < m["fw_iou"] <= 1
        assert set(m["per_class_iou"]) == {"class_0", "class_1", "class_2"}
        assert m["epochs"] == 2
    assert report["settings"]["train_images"] == 12 and report["settings"]["val_images"] == 4
    picture = Image.open(out / "compare.png")
    assert picture.size[0] > picture.size[1]  # 4 columns, 2 rows


def test_compare_trained_both_models_with_the_same_recipe(study):
    out, _, _ = study
    params = {}
    for name in ("fcn", "unet"):
        run = load_run(out / name)
        assert run.config.model.name == name
        assert run.config.train.epochs == 2 and run.config.train.lr == 3e-3
        assert len((out / name / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
        params[name] = sum(p.numel() for p in run.model.parameters())
    assert params["unet"] > params["fcn"]


def test_compare_needs_validation_data(tmp_path):
    images, masks = write_folder(tmp_path / "data", *make_blobs(4))
    result = invoke(
        "compare",
        "--images",
        images,
        "--masks",
        masks,
        "--n-classes",
        3,
        "--input-size",
        32,
        32,
        "--n-filters",
        4,
        "--epochs",
        1,
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        tmp_path / "o",
    )
    assert result.exit_code != 0 and "validation" in result.output


def test_markdown_lists_absent_classes_as_dash():
    scores = [
        ModelScore("fcn", 0.9, 0.5, [0.5, None], 0.4, 10, 1, 1.0, 1),
        ModelScore("unet", 0.95, 0.7, [0.7, None], 0.6, 20, 1, 2.0, 1, mean_accuracy=0.8, fw_iou=0.75),
    ]
    table = Comparison(scores, ["a", "b"], 2).markdown()
    assert "| IoU b | - | - |" in table and "| mean IoU | 0.5000 | 0.7000 |" in table
    assert "| mAcc (class average) | 0.0000 | 0.8000 |" in table and "| fwIoU | 0.0000 | 0.7500 |" in table


def test_info_and_train_accept_the_fcn_model(study):
    out, _, _ = study
    result = invoke("info", "--model", "fcn", "--input-size", 32, 32, 3, "--n-filters", 4, "--n-classes", 3)
    assert result.exit_code == 0, result.output
    assert '"fcn"' in result.output and "Total params" in result.output
    assert RunConfig.load(out / "fcn" / "config.json").model.name == "fcn"


# --- full-resolution prediction -------------------------------------------------------------------------


def test_sliding_window_matches_a_pixelwise_model_exactly():
    """With a per-pixel model, windows, padding and blending must reproduce the whole-image result."""
    weight = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.3, 2.0]])

    def forward(x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (32, 48)
        return torch.einsum("kc,nchw->nkhw", weight, x.float() / 255)

    image = torch.randint(0, 256, (1, 3, 75, 101), dtype=torch.uint8)
    logits = sliding_window_logits(forward, image, (32, 48), overlap=0.25)
    assert logits.shape == (2, 75, 101)
    expected = torch.einsum("kc,chw->khw", weight, image[0].float() / 255)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_sliding_window_pads_an_image_smaller_than_the_window():
    image = torch.randint(0, 256, (1, 1, 20, 27), dtype=torch.uint8)
    sizes = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        sizes.append(tuple(x.shape[-2:]))
        return x.float().repeat(1, 2, 1, 1)

    logits = sliding_window_logits(forward, image, (32, 32))
    assert logits.shape == (2, 20, 27) and sizes == [(32, 32)]
    assert torch.allclose(logits[0], image[0, 0].float())


def test_model_trained_on_crops_segments_a_larger_odd_sized_image(tmp_path):
    """Train at 32x32, predict 75x101 (not divisible by 16) by sliding window at full resolution.

    A small batch-norm U-Net (depth 3) learns the blobs in a few seconds; the seed's network needs
    many more epochs, which would only make this test slow.
    """
    from dataclasses import replace

    from conftest import tiny_config

    from unetkit import SegmentationData, fit
    from unetkit.metrics import ConfusionMatrix

    images, masks = make_blobs(32, seed=3)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    config = tiny_config(epochs=3, batch_size=4, lr=1e-2)
    config = replace(
        config,
        model=replace(config.model, depth=3, n_filters=8, batch_norm=True),
        preprocess=replace(config.preprocess, predict_mode="sliding"),
    )
    result = fit(config, tmp_path / "run", train_data=data, progress=False, log=None)
    big_images, big_masks = make_blobs(3, size=(75, 101), seed=9)
    predictor = Predictor(result.model, config, device="cpu", precision="fp32")
    preds = predictor.predict_batch(list(big_images))
    assert all(p.shape == (75, 101) for p in preds)
    cm = ConfusionMatrix(3)
    for pred, truth in zip(preds, big_masks):
        cm.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    assert cm.compute().mean_iou > 0.6  # all-background would score about 0.31
    # The CLI's --mode sliding on a run folder writes masks at the image's own size.
    Image.fromarray(big_images[0]).save(tmp_path / "big.png")
    cli = invoke(
        "predict",
        tmp_path / "run",
        tmp_path / "big.png",
        "--out",
        tmp_path / "pred",
        "--mode",
        "sliding",
        "--device",
        "cpu",
    )
    assert cli.exit_code == 0, cli.output
    written = np.asarray(Image.open(tmp_path / "pred" / "big.png"))
    assert written.shape == (75, 101)
    assert (written == preds[0]).mean() > 0.99


def test_train_with_the_strong_recipe_from_the_cli(tmp_path):
    """The strong recipe end to end: batch norm, augmentation with padding, CE+Dice; the run loads back."""
    images, masks = write_folder(tmp_path / "data", *make_blobs(8, seed=4))
    result = invoke(
        "train",
        "--images",
        images,
        "--masks",
        masks,
        "--n-classes",
        3,
        "--recipe",
        "strong",
        "--input-size",
        32,
        32,
        "--n-filters",
        4,
        "--epochs",
        1,
        "--val-fraction",
        0.25,
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "run")
    assert run.config.train.recipe == "strong" and run.config.model.batch_norm
    assert run.config.train.augment.enabled and run.config.data.ignore_index is None
    assert Predictor(run.model, run.config, device="cpu").predict(make_blobs(1, size=(40, 56))[0][0]).shape == (40, 56)
