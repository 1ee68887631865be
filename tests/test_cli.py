"""The CLI contract: commands, files written, exit codes and one-paragraph errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MEMBRANE, make_blobs, write_folder
from PIL import Image
from typer.testing import CliRunner

from unetkit.cli import app

runner = CliRunner()
TINY = [
    "--input-size",
    "32",
    "32",
    "--n-filters",
    "4",
    "--batch-size",
    "8",
    "--precision",
    "fp32",
    "--no-compile",
    "--no-progress",
    "--device",
    "cpu",
]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    images, masks = write_folder(root / "data", *make_blobs(20))
    result = invoke(
        "train",
        "--images",
        images,
        "--masks",
        masks,
        "--n-classes",
        "3",
        "--epochs",
        "2",
        "--val-fraction",
        "0.2",
        *TINY,
        "--out",
        root / "run",
    )
    assert result.exit_code == 0, result.output
    return root / "run", images, masks


def test_info_prints_the_keras_summary():
    result = invoke("info")
    assert result.exit_code == 0
    assert "Total params: 8,640,471" in result.output and "conv2d_transpose_3" in result.output


def test_train_writes_a_run_folder(trained):
    run, _, _ = trained
    assert (run / "weights.safetensors").exists() and (run / "curves.png").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["n_classes"] == 3 and config["data"]["val_fraction"] == 0.2


def test_resume_to_more_epochs(trained, tmp_path):
    run, _, _ = trained
    result = invoke("train", "--resume", run, "--epochs", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 3


def test_evaluate_json(trained, tmp_path):
    run, images, masks = trained
    out = tmp_path / "m.json"
    result = invoke("evaluate", run, "--images", images, "--masks", masks, "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert {"pixel_accuracy", "mean_iou", "per_class"} <= set(data)
    assert {"name", "iou", "dice", "support"} <= set(data["per_class"][0])
    assert sum(c["support"] for c in data["per_class"]) == 20 * 32 * 32


def test_predict_writes_masks_at_original_size(trained, tmp_path):
    run, images, masks = trained
    big = tmp_path / "in"
    big.mkdir()
    Image.fromarray(np.zeros((45, 61, 3), np.uint8)).save(big / "odd.png")
    result = invoke("predict", run, big / "odd.png", str(images / "img0.png"), "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "out" / "odd.png"))
    assert mask.shape == (45, 61) and mask.max() < 3
    assert (tmp_path / "out" / "img0_colour.png").exists() and (tmp_path / "out" / "img0_overlay.png").exists()
    result = invoke("predict", run, images, "--out", tmp_path / "out2", "--masks", masks)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out2").glob("*_compare.png"))) == 20


def test_unpaired_files_are_listed(tmp_path):
    images, masks = write_folder(tmp_path / "d", *make_blobs(4))
    (masks / "img3.png").unlink()
    result = invoke("train", "--images", images, "--masks", masks, "--n-classes", "3", *TINY, "--out", tmp_path / "r")
    assert result.exit_code != 0
    assert "img3" in result.output and "Traceback" not in result.output


def test_bad_input_size_names_valid_sizes(blob_folders, tmp_path):
    images, masks = blob_folders
    result = invoke(
        "train",
        "--images",
        images,
        "--masks",
        masks,
        "--n-classes",
        "3",
        "--input-size",
        "100",
        "64",
        "--out",
        tmp_path / "r",
    )
    assert result.exit_code != 0 and "96" in result.output and "112" in result.output


def test_wrong_mask_values_name_the_file(tmp_path):
    imgs, masks = make_blobs(4)
    masks[2, 0, 0] = 9
    images_dir, masks_dir = write_folder(tmp_path / "d", imgs, masks)
    result = invoke(
        "train",
        "--images",
        images_dir,
        "--masks",
        masks_dir,
        "--n-classes",
        "3",
        "--mask-mode",
        "index",
        *TINY,
        "--out",
        tmp_path / "r",
    )
    assert result.exit_code != 0
    assert "img2" in result.output and "9" in result.output


def test_missing_folder_and_missing_run(tmp_path):
    result = invoke(
        "train",
        "--images",
        tmp_path / "nope",
        "--masks",
        tmp_path / "nope2",
        "--n-classes",
        "2",
        "--out",
        tmp_path / "r",
    )
    assert result.exit_code != 0 and "nope" in result.output
    result = invoke("predict", tmp_path / "norun", tmp_path, "--out", tmp_path / "o")
    assert result.exit_code != 0 and "norun" in result.output


def test_binary_masks_detected(tmp_path):
    imgs, masks = make_blobs(8, n_classes=2)
    images, mask_dir = write_folder(tmp_path / "d", imgs, masks, mask_scale=255)
    result = invoke(
        "train",
        "--images",
        images,
        "--masks",
        mask_dir,
        "--n-classes",
        "2",
        "--epochs",
        "1",
        *TINY,
        "--out",
        tmp_path / "r",
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["data"]["mask_mode"] == "binary"


@pytest.mark.membrane
def test_train_on_membrane_from_the_cli(tmp_path):
    if not MEMBRANE.exists():
        pytest.skip("../shared/data/membrane is absent")
    result = invoke(
        "train",
        "--images",
        MEMBRANE / "train" / "image",
        "--masks",
        MEMBRANE / "train" / "label",
        "--n-classes",
        "2",
        "--input-size",
        "64",
        "64",
        "--n-filters",
        "4",
        "--epochs",
        "1",
        "--val-fraction",
        "0.2",
        "--no-progress",
        "--precision",
        "fp32",
        "--out",
        tmp_path / "m",
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"]["input_size"] == [64, 64, 1] and config["data"]["mask_mode"] == "binary"


def test_demo_end_to_end_small(tmp_path):
    result = invoke(
        "demo", "--out", tmp_path / "demo", "--train-count", "24", "--val-count", "8", "--epochs", "1", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    for name in (
        "weights.safetensors",
        "config.json",
        "metrics.csv",
        "curves.png",
        "examples.png",
        "test_metrics.json",
    ):
        assert (out / name).exists(), name
    assert len(list((out / "test-scenes" / "image").glob("*.png"))) == 8
    assert "test mIoU" in result.output and "next:" in result.output
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and len(metrics["per_class"]) == 13
