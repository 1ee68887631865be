"""Post-processing on hand-made masks: small components, holes, largest component; and in evaluate/predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from unetkit.errors import ConfigError  # noqa: E402
from unetkit.postprocess import PostProcess, from_options  # noqa: E402


def test_small_components_take_the_class_around_them() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[1:3, 1:3] = 1  # 4 pixels of class 1: removed below 5
    mask[5:10, 5:10] = 2  # 25 pixels: kept
    mask[7, 7] = 0  # a 1-pixel speck of background inside class 2: becomes 2
    out = PostProcess(min_size=5)(mask)
    expected = np.zeros((10, 10), np.uint8)
    expected[5:10, 5:10] = 2
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == mask.dtype and mask[1, 1] == 1  # the input is untouched


def test_fill_holes_only_in_the_class_asked() -> None:
    mask = np.zeros((9, 9), np.uint8)
    mask[1:8, 1:8] = 1
    mask[3:6, 3:6] = 2  # a hole of class 2 inside class 1
    mask[4, 4] = 0
    filled = PostProcess(fill_holes=(1,))(mask)
    assert (filled[1:8, 1:8] == 1).all()
    np.testing.assert_array_equal(PostProcess(fill_holes=(2,))(mask)[4, 4], 2)  # class 2's own hole
    assert (PostProcess(fill_holes=(2,))(mask)[1:8, 1:8] != 0).all()


def test_keep_largest_component() -> None:
    mask = np.zeros((8, 12), np.uint8)
    mask[1:4, 1:4] = 1  # 9 pixels
    mask[1:7, 6:11] = 1  # 30 pixels: the largest
    out = PostProcess(keep_largest=(1,))(mask)
    assert (out[1:4, 1:4] == 0).all() and (out[1:7, 6:11] == 1).all()
    np.testing.assert_array_equal(PostProcess(keep_largest=(2,))(mask), mask)  # absent class: no change


def test_options_by_name_or_id_and_their_errors() -> None:
    names = ["background", "road", "car"]
    post = from_options(3, ["road"], ["2"], names, 3)
    assert post == PostProcess(min_size=3, fill_holes=(1,), keep_largest=(2,))
    assert post.describe() == "--min-size 3, --keep-largest 2, --fill-holes 1"
    assert from_options(None, None, None, names, 3) is None
    with pytest.raises(ConfigError, match="not a class id or name"):
        from_options(0, ["bus"], None, names, 3)
    with pytest.raises(ConfigError, match="outside the model's classes"):
        from_options(0, None, ["7"], names, 3)
    with pytest.raises(ConfigError, match="--min-size"):
        PostProcess(min_size=-1)


def test_evaluate_shows_what_each_option_changes(tmp_path: Path) -> None:
    import torch
    from conftest import make_blobs, write_folder

    from unetkit.config import ModelConfig, RunConfig
    from unetkit.evaluate import evaluate
    from unetkit.model import unet_model
    from unetkit.predict import Predictor
    from unetkit.run import save_run

    images, masks = make_blobs(4)
    img_dir, mask_dir = write_folder(tmp_path / "data", images, masks)
    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3))
    run = save_run(tmp_path / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config)
    post = PostProcess(min_size=20, keep_largest=(1,))
    report = evaluate(run, img_dir, mask_dir, device="cpu", postprocess=post)
    names = [r["name"] for r in report.postprocess]
    assert names == ["raw", "--min-size 20", "--keep-largest 1", "all together"]
    raw = evaluate(run, img_dir, mask_dir, device="cpu")
    assert report.metrics.mean_iou == raw.metrics.mean_iou  # the headline stays the raw model's
    p = Predictor.from_run(run, device="cpu")
    preds = p.predict_batch(list(images))
    changed = sum(int((post(m) != m).sum()) for m in preds) / sum(m.size for m in preds)
    assert report.postprocess[-1]["pixels_changed"] == pytest.approx(changed)
    assert "post-processing" in report.table() and "--min-size 20" in report.table()
    assert report.to_dict()["postprocess"][1]["name"] == "--min-size 20"
