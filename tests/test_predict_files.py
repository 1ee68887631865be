"""Prediction to files: never over an input, one name per input, manifest, outputs, bad files, Ctrl-C; API errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from unetkit.cli import app
from unetkit.config import ModelConfig, RunConfig
from unetkit.errors import DataError
from unetkit.model import unet_model
from unetkit.predict import Predictor, open_predictor
from unetkit.predict_files import Interrupted, predict_files
from unetkit.run import save_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3))
    return save_run(tmp_path_factory.mktemp("pf") / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config)


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.from_run(run_dir, device="cpu")


def picture(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_out_equal_to_the_input_folder_is_refused_and_inputs_survive(tmp_path: Path, run_dir: Path) -> None:
    coll = tmp_path / "coll"
    coll.mkdir()
    Image.fromarray(picture(20, 24, 0)).save(coll / "a.png")
    Image.fromarray(picture(20, 24, 1)).save(coll / "same.png")
    before = {p.name: p.read_bytes() for p in coll.iterdir()}
    result = invoke("predict", run_dir, coll, "--out", coll, "--no-progress")
    assert result.exit_code != 0 and "also where the input images are" in result.output
    assert {p.name: p.read_bytes() for p in coll.iterdir()} == before


def test_same_stem_inputs_map_to_their_own_outputs(tmp_path: Path, run_dir: Path, predictor: Predictor) -> None:
    src = tmp_path / "src"
    src.mkdir()
    jpg, png = picture(30, 40, 2), picture(25, 35, 3)
    Image.fromarray(jpg).save(src / "a.jpg", quality=95)
    Image.fromarray(png).save(src / "a.png")
    Image.fromarray(picture(16, 16, 4)).save(src / "b.png")
    out = tmp_path / "out"
    report = predict_files(run_dir, [str(src)], out, device="cpu")
    assert len(report.written) == 3
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    assert rows["a.jpg"]["mask"] == "a_jpg.png" and rows["a.png"]["mask"] == "a_png.png"
    assert rows["b.png"]["mask"] == "b.png" and rows["b.png"]["overlay"] == "b_overlay.png"
    for name, row in rows.items():
        from unetkit.data.io import read_image

        expected = predictor.predict(read_image(src / name))
        np.testing.assert_array_equal(np.asarray(Image.open(out / row["mask"])), expected)
        assert (out / row["colour"]).exists() and (out / row["overlay"]).exists()
    # a second run into the same folder replaces its own earlier outputs
    assert len(predict_files(run_dir, [str(src)], out, device="cpu").written) == 3


def test_outputs_option_and_its_errors(tmp_path: Path, run_dir: Path) -> None:
    Image.fromarray(picture(20, 20, 5)).save(tmp_path / "x.png")
    out = tmp_path / "o"
    result = invoke("predict", run_dir, tmp_path / "x.png", "--out", out, "--outputs", "mask", "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "x.png"]
    result = invoke("predict", run_dir, tmp_path / "x.png", "--out", out, "--outputs", "mask,heatmap")
    assert result.exit_code != 0 and "--outputs" in result.output and "heatmap" in result.output


def test_unreadable_files_are_skipped_and_reported_or_stop_with_strict(tmp_path: Path, run_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(picture(20, 20, i)).save(src / f"ok{i}.png")
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(picture(18, 22, 7)).save(src / "w.webp", lossless=True)
    Image.fromarray(picture(18, 22, 8)).convert("P").save(src / "g.gif")
    out = tmp_path / "out"
    result = invoke("predict", run_dir, src, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable" in result.output and "broken.png" in result.output
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    assert rows["broken.png"]["note"].startswith("skipped") and not rows["broken.png"]["mask"]
    assert rows["w.webp"]["mask"] == "w.png" and rows["g.gif"]["mask"] == "g.png"  # WebP and GIF are read
    assert (out / "w.png").exists() and (out / "g.png").exists()
    strict = invoke("predict", run_dir, src, "--out", tmp_path / "strict", "--strict", "--no-progress")
    assert strict.exit_code != 0 and "broken.png" in strict.output and "--strict" in strict.output


def test_out_that_is_a_file_or_unwritable_gets_one_paragraph(tmp_path: Path, run_dir: Path) -> None:
    Image.fromarray(picture(20, 20, 0)).save(tmp_path / "x.png")
    (tmp_path / "file.txt").write_text("keep me")
    result = invoke("predict", run_dir, tmp_path / "x.png", "--out", tmp_path / "file.txt")
    assert result.exit_code != 0 and "is a file" in result.output
    assert (tmp_path / "file.txt").read_text() == "keep me"
    result = invoke("predict", run_dir, tmp_path / "x.png", "--out", "/proc/x")
    assert result.exit_code != 0 and "cannot be written" in result.output
    assert len(result.output.strip().splitlines()) <= 3


def test_files_unetkit_did_not_write_are_not_replaced(tmp_path: Path, run_dir: Path) -> None:
    Image.fromarray(picture(20, 20, 0)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_overlay.png").write_bytes(b"the user's own file")
    with pytest.raises(DataError, match="--overwrite"):
        predict_files(run_dir, [tmp_path / "x.png"], out, device="cpu")
    assert (out / "x_overlay.png").read_bytes() == b"the user's own file"
    predict_files(run_dir, [tmp_path / "x.png"], out, device="cpu", overwrite=True)
    assert (out / "x_overlay.png").read_bytes() != b"the user's own file"


def test_earlier_outputs_beside_the_inputs_are_not_read_as_images(tmp_path: Path, run_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(picture(20, 20, 0)).save(src / "a.png")
    predict_files(run_dir, [src / "a.png"], tmp_path / "pred", device="cpu")
    for p in (tmp_path / "pred").iterdir():  # the user moves the predictions next to the images
        p.rename(src / ("p_" + p.name) if p.name != "manifest.csv" else src / p.name)
    rows = manifest(src)
    for r in rows:
        for k in ("mask", "colour", "overlay"):
            r[k] = "p_" + r[k]
    with open(src / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report = predict_files(run_dir, [src], tmp_path / "again", device="cpu")
    assert [p.name for p in report.written] == ["a.png"]


def test_ctrl_c_keeps_what_was_written_and_says_so(tmp_path: Path, run_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        Image.fromarray(picture(20, 20, i)).save(src / f"i{i}.png")
    p = open_predictor(run_dir, device="cpu")
    real, calls = p.predict_batch, []

    def interrupted(images, batch_size=16):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(images, batch_size)

    p.predict_batch = interrupted  # type: ignore[method-assign]
    with pytest.raises(Interrupted, match=r"2 of 6 input\(s\) were predicted") as info:
        predict_files(p, [src], tmp_path / "out", batch_size=2)
    assert "manifest.csv" in str(info.value)
    rows = manifest(tmp_path / "out")
    assert [Path(r["input"]).name for r in rows] == ["i0.png", "i1.png"]
    assert all((tmp_path / "out" / r["overlay"]).exists() for r in rows)


def test_predict_api_errors_are_clear(predictor: Predictor) -> None:
    with pytest.raises(DataError, match="predict_batch"):
        predictor.predict(["a.png", "b.png"])
    with pytest.raises(DataError, match="predict_array"):
        predictor.predict(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="cannot predict on a int"):
        predictor.predict(42)
    with pytest.raises(DataError, match="7 bands but the model takes 3"):
        predictor.predict(np.zeros((32, 32, 7), np.uint8))
    with pytest.raises(DataError, match="list of images"):
        predictor.predict_batch(np.zeros((2, 32, 32, 3), np.uint8))
    stack = np.stack([picture(32, 32, i) for i in range(3)])
    masks = predictor.predict_array(stack)  # the right call for a stack
    np.testing.assert_array_equal(masks[1], predictor.predict(stack[1]))


def test_predictions_are_float32_by_default(run_dir: Path, predictor: Predictor) -> None:
    assert predictor.precision == "fp32" and predictor.dtype is None
    assert Predictor.from_run(run_dir, device="cpu", precision="bf16").precision == "bf16"
    with pytest.raises(Exception, match="--precision must be one of"):
        Predictor.from_run(run_dir, device="cpu", precision="fp16")


def test_batched_resize_back_equals_one_image_at_a_time(predictor: Predictor) -> None:
    images = [picture(40, 50, i) for i in range(3)] + [picture(32, 32, 9), picture(17, 23, 5)]
    together = predictor.predict_batch(images)
    for im, mask in zip(images, together):
        np.testing.assert_array_equal(mask, predictor.predict(im))


def test_resize_back_in_groups_that_fit_band_elements_equals_one_at_a_time(run_dir: Path) -> None:
    images = [picture(40, 50, i) for i in range(7)] + [picture(17, 23, 5)]
    one = Predictor.from_run(run_dir, device="cpu")
    alone = [one.predict(im) for im in images]
    for per in (1, 2, 3, 7):  # band_elements holding that many 40x50 logit maps: groups of 3, 3, 1 for 3
        p = Predictor.from_run(run_dir, device="cpu")
        p.band_elements = per * 3 * 40 * 50
        for a, b in zip(p.predict_batch(images, batch_size=8), alone):
            np.testing.assert_array_equal(a, b)


def test_written_files_decode_to_the_prediction(tmp_path: Path, run_dir: Path, predictor: Predictor) -> None:
    from unetkit.plots import colorize, overlay

    folder = tmp_path / "in"
    folder.mkdir()
    image = picture(40, 50, 3)
    Image.fromarray(image).save(folder / "a.png")
    predict_files(predictor, [folder], tmp_path / "out")
    pred = predictor.predict(image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), pred)
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "out" / "a_colour.png")), colorize(pred, predictor.palette)
    )
    np.testing.assert_array_equal(  # the overlay is written at a faster zlib level: still lossless
        np.asarray(Image.open(tmp_path / "out" / "a_overlay.png")), overlay(image, pred, predictor.palette)
    )


def test_imported_keras_model_agrees_with_keras_on_every_pixel_by_default(tmp_path: Path) -> None:
    import json
    import zipfile

    pytest.importorskip("h5py")
    from unetkit.keras_io import import_run

    fixtures = Path(__file__).parent / "fixtures" / "keras"
    spec = json.loads((fixtures / "manifest.json").read_text())
    with zipfile.ZipFile(fixtures / spec["archive"]) as z:
        z.extractall(tmp_path / "models")
    for variant, v in spec["variants"].items():
        data = np.load(fixtures / v["npz"])
        images = np.round(data["inputs"] * 255).astype(np.uint8)  # the fixture's inputs are uint8 / 255
        run = import_run(tmp_path / "models" / v["files"]["keras"], tmp_path / f"run-{variant}")
        masks = Predictor.from_run(run, device="cpu").predict_array(images)  # default precision
        np.testing.assert_array_equal(masks, data["logits"].argmax(-1))


def _logit_cases() -> list[torch.Tensor]:
    """(N, K, H, W) logits: random, with ties (integer values), NaN (one or several per pixel) and infinities."""
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(2, 7, 9, 11, generator=g)
    ties = torch.randint(0, 3, (2, 7, 9, 11), generator=g).float()
    nan = rand.clone()
    nan[0, 3, 2, 4] = nan[0, 5, 2, 4] = nan[1, 0, 0, 0] = float("nan")
    nan[1, 6, 8, 10] = float("nan")
    inf = ties.clone()
    inf[0, :, 1, 1] = float("-inf")  # every class -inf: the first
    inf[0, 2, 3, 3] = inf[0, 4, 3, 3] = float("inf")
    zeros = torch.zeros(2, 7, 9, 11)
    zeros[:, 1::2] = -0.0  # -0.0 equals 0.0: still the first
    return [rand, ties, nan, inf, zeros, torch.randn(1, 300, 3, 4, generator=g)]


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "one_image", "one_image_channels_last", "sliced"])
def test_channel_argmax_gives_the_ids_of_torch_argmax(case: int, layout: str) -> None:
    from unetkit.predict import channel_argmax

    x = _logit_cases()[case]
    dim = 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout.startswith("one_image"):
        x, dim = (x[0].permute(1, 2, 0).contiguous().permute(2, 0, 1) if layout.endswith("last") else x[0]), 0
    elif layout == "sliced":
        x = x[:, :, ::2]
    expected = torch.argmax(x, dim)
    assert torch.equal(channel_argmax(x, dim), expected)
    if x.shape[dim] <= 256:
        assert torch.equal(channel_argmax(x, dim, torch.uint8), expected.to(torch.uint8))


def test_resize_back_keeps_the_masks_of_the_plain_resize_and_argmax(predictor: Predictor) -> None:
    import torch.nn.functional as F

    images = [picture(40, 50, 1), picture(32, 32, 2), picture(70, 90, 3)]
    logits = predictor._model_size_logits(images)
    masks = predictor.predict_batch(images)
    for im, lg, mask in zip(images, logits, masks):
        up = F.interpolate(lg[None], size=im.shape[:2], mode="bilinear", align_corners=False)[0]
        np.testing.assert_array_equal(mask, up.argmax(0).numpy())


def test_a_failed_write_stops_the_folder_with_its_error(tmp_path: Path, predictor: Predictor, monkeypatch) -> None:
    import errno

    import unetkit.predict_files as pf

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(picture(20, 24, i)).save(folder / f"a{i}.png")
    real = pf.atomic_write_bytes

    def full(path: Path, data: bytes) -> None:
        if path.name == "a1_overlay.png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(pf, "atomic_write_bytes", full)
    with pytest.raises(OSError, match="No space left"):
        predict_files(predictor, [folder], tmp_path / "out")
    assert (tmp_path / "out" / "a0_overlay.png").exists() and not (tmp_path / "out" / "a1_overlay.png").exists()
