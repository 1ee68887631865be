"""check-data: every planted problem is found, a clean folder passes, the outputs are what train takes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import MEMBRANE, make_blobs, write_folder
from PIL import Image

from unetkit.data.check import check_data, format_report, plot_classes, write_class_weights
from unetkit.data.classes import ClassList


def _clean(tmp_path):
    images, masks = make_blobs(8, size=(32, 32), seed=3)
    train = write_folder(tmp_path / "train", images[:6], masks[:6])
    val = write_folder(tmp_path / "val", images[6:], masks[6:])
    return train, val


def _problems(report, needle):
    return [p for p in report.problems if needle in p.problem]


def test_clean_folder_passes_with_statistics(tmp_path):
    (ti, tm), (vi, vm) = _clean(tmp_path)
    report = check_data(ti, tm, n_classes=3, val_images=vi, val_masks=vm)
    assert report.ok, report.problems
    assert report.pairs == 6 and report.val_pairs == 2 and report.mask_mode == "index"
    _, masks = make_blobs(8, size=(32, 32), seed=3)
    expected = np.bincount(masks[:6].reshape(-1), minlength=3)
    assert [c["pixels"] for c in report.classes] == expected.tolist()
    assert [c["images"] for c in report.classes] == [6, 6, 6]
    assert report.sizes["min"] == [32, 32] and report.sizes["not_multiple_of_16"] == 0
    images, _ = make_blobs(8, size=(32, 32), seed=3)
    np.testing.assert_allclose(report.mean, images[:6].reshape(-1, 3).mean(0) / 255, atol=1e-5)
    np.testing.assert_allclose(report.std, images[:6].reshape(-1, 3).std(0) / 255, atol=1e-5)
    assert len(report.class_weights["median-frequency"]) == 3
    text = format_report(report)
    assert "OK" in text and "mask encoding: index" in text


def test_planted_problems_are_all_found(tmp_path):
    (ti, tm), (vi, vm) = _clean(tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(ti / "lonely.png")  # unpaired image
    bad = np.zeros((32, 32), np.uint8)
    bad[0, 0] = 7
    Image.fromarray(bad).save(tm / "img1.png")  # value out of range
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(tm / "img2.png")  # size mismatch
    shutil.copy(ti / "img3.png", vi / "img3.png")  # duplicate across train and val
    shutil.copy(tm / "img3.png", vm / "img3.png")
    m = np.asarray(Image.open(tm / "img0.png")).copy()
    for f in tm.glob("*.png"):  # class 2 absent from training, kept in validation
        a = np.asarray(Image.open(f)).copy()
        if a.shape == (32, 32):
            a[a == 2] = 0
            Image.fromarray(a).save(f)
    assert m.max() == 2
    report = check_data(ti, tm, n_classes=3, val_images=vi, val_masks=vm)
    assert not report.ok
    found = {p.file: p.problem for p in report.problems if p.severity == "error"}
    assert found[str(ti / "lonely.png")] == "image without a mask"
    assert "7" in found[str(tm / "img1.png")]
    assert "16" in found[str(tm / "img2.png")] and "img2.png" in found[str(tm / "img2.png")]
    assert _problems(report, "in training and validation") and report.duplicates[0]["across_train_val"]
    assert _problems(report, "class 2 (class_2) is in validation but absent from training")
    data = report.to_dict()
    assert set(data) >= {"pairs", "problems", "classes", "sizes", "mean", "std", "duplicates"}
    assert all(set(p) >= {"file", "problem"} for p in data["problems"])
    assert set(data["classes"][0]) >= {"id", "name", "pixels", "images"}


def test_binary_detection_reason_weights_file_and_plot(tmp_path):
    images, masks = make_blobs(4, n_classes=2)
    ti, tm = write_folder(tmp_path / "d", images, masks, mask_scale=255)
    report = check_data(ti, tm, classes=ClassList(["bg", "cell"]))
    assert report.mask_mode == "binary" and "0, 255" in report.mask_mode_reason
    assert [c["name"] for c in report.classes] == ["bg", "cell"]
    write_class_weights(report, tmp_path / "w.json")
    from unetkit.losses import load_class_weights

    w = load_class_weights(tmp_path / "w.json", 2)
    assert w.tolist() == pytest.approx(report.class_weights["median-frequency"])
    plot_classes(report, tmp_path / "classes.png")
    assert Image.open(tmp_path / "classes.png").size[0] > 100


def test_sizes_suggest_input_size(tmp_path):
    d = tmp_path / "d"
    for i, (h, w) in enumerate([(30, 50), (34, 50), (40, 60)]):
        write_folder(d, np.zeros((1, h, w, 3), np.uint8), np.zeros((1, h, w), np.uint8))
        (d / "images" / "img0.png").rename(d / "images" / f"s{i}.png")
        (d / "masks" / "img0.png").rename(d / "masks" / f"s{i}.png")
    report = check_data(d / "images", d / "masks", n_classes=2)
    assert report.sizes["min"] == [30, 50] and report.sizes["max"] == [40, 60]
    assert report.sizes["not_multiple_of_16"] == 3
    assert report.sizes["suggested_input_size"] == [32, 48] and report.sizes["suggested_crop"] == [16, 48]
    assert report.ok  # sizes are a warning: train resizes


def test_cli_exit_code_json_and_progress(tmp_path):
    from typer.testing import CliRunner

    from unetkit.cli import app

    (ti, tm), _ = _clean(tmp_path)
    out = tmp_path / "report.json"
    args = ["check-data", "--images", str(ti), "--masks", str(tm), "--n-classes", "3", "--json", str(out)]
    result = CliRunner().invoke(app, [*args, "--plot", str(tmp_path / "p.png"), "--weights", str(tmp_path / "w.json")])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["ok"] is True and (tmp_path / "p.png").is_file()
    assert len(json.loads((tmp_path / "w.json").read_text())) == 3
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(tm / "img0.png")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "FAILED" in result.output


@pytest.mark.skipif(not MEMBRANE.exists(), reason="../shared/data/membrane is absent")
def test_membrane(tmp_path):
    report = check_data(MEMBRANE / "train" / "image", MEMBRANE / "train" / "label", n_classes=2)
    assert report.ok and report.mask_mode == "binary" and report.pairs > 0
