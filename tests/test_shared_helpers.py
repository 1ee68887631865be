"""The helpers that several modules share instead of each writing its own: errors, JSON, PNGs, progress."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetkit.device import check_predict_precision
from unetkit.errors import ConfigError, DataError, ExportError, UnetkitError, first_line, needs_extra
from unetkit.fsio import read_json
from unetkit.loggers import advance, progress_bar
from unetkit.plots import colorize, colour_png, encode_png, mask_png, overlay, overlay_png, png_bytes, save_png


def test_first_line_of_a_message_or_the_type_name() -> None:
    assert first_line(ValueError("\n  bad header\nmore detail")) == "bad header"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("x" * 50), 10) == "x" * 10


def test_needs_extra_names_the_package_and_the_install_command() -> None:
    e = needs_extra("video prediction", "PyAV", "video")
    assert type(e) is UnetkitError and str(e) == "video prediction needs PyAV: pip install 'unetkit[video]'"
    assert isinstance(needs_extra("export", "onnx", "onnx", ExportError), ExportError)


def test_read_json_names_the_file_and_the_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"a": [1, 2]}))
    assert read_json(good, DataError, "classes file") == {"a": [1, 2]}
    with pytest.raises(DataError, match=r"^classes file .*missing.json does not exist$"):
        read_json(tmp_path / "missing.json", DataError, "classes file")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{not json")
    with pytest.raises(ConfigError, match=r"bad.json is not valid JSON \(.*\); restore it$"):
        read_json(bad, ConfigError, fix="restore it")
    with pytest.raises(ConfigError, match="cannot be read"):  # a folder where the file should be
        read_json(tmp_path, ConfigError, "config")


def test_check_predict_precision() -> None:
    for ok in (None, "fp32", "bf16", "int8"):
        check_predict_precision(ok)
    with pytest.raises(ConfigError, match="--precision must be one of fp32, bf16, int8, got 'fp16'"):
        check_predict_precision("fp16")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.arange(12, dtype=np.int64).reshape(3, 4) * 100,  # class ids over 255: a 16-bit PNG
        np.arange(36, dtype=np.uint8).reshape(3, 4, 3),
        np.arange(12, dtype=np.uint8).reshape(3, 4, 1),  # one channel: a grey PNG
    ],
)
def test_png_bytes_round_trip(array: np.ndarray, tmp_path: Path) -> None:
    expected = array.squeeze(-1) if array.ndim == 3 and array.shape[2] == 1 else array
    for data in (png_bytes(array), png_bytes(array, compress_level=1)):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), expected)
    save_png(tmp_path / "out" / "a.png", array)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), expected)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize("row_filter", ["none", "sub", "up"])
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 3), (5, 7, 4), (1, 9, 3), (6, 1, 3), (1, 1)])
def test_encode_png_decodes_to_the_array(row_filter: str, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    array[..., :2] = 255  # wrap-around of the filters' byte differences
    expected = array.squeeze(-1) if len(shape) == 3 and shape[2] == 1 else array
    for strategy in (0, 1, 2, 3):  # zlib's default, filtered, Huffman only, run-length
        image = Image.open(io.BytesIO(encode_png(array, row_filter, strategy=strategy)))
        assert image.mode == {2: "L", 1: "L", 3: "RGB", 4: "RGBA"}[shape[2] if len(shape) == 3 else 2]
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_png_outputs_decode_to_the_same_arrays_with_zlib_ng_and_zlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optional zlib-ng deflate (extra ``png``) changes the bytes, never the pixels."""
    import zlib

    import unetkit.plots as plots

    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")
    rng = np.random.default_rng(0)
    mask = np.kron(rng.integers(0, 5, (6, 8)), np.ones((9, 9), np.int64)).astype(np.uint8)  # regions, as predicted
    noisy = rng.integers(0, 5, (54, 72)).astype(np.uint8)
    image = rng.integers(0, 256, (54, 72, 3), dtype=np.uint8)
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]
    decoded = {}
    for lib in (zlib, zlib_ng):
        monkeypatch.setattr(plots, "_deflate_lib", lib)
        decoded[lib] = [decode(f(m)) for m in (mask, noisy) for f in (mask_png, lambda m: colour_png(m, palette))] + [
            decode(overlay_png(image, m, palette)) for m in (mask, noisy)
        ]
    for a, b in zip(decoded[zlib], decoded[zlib_ng], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(decoded[zlib][0], mask)
    np.testing.assert_array_equal(decoded[zlib_ng][-1], overlay(image, noisy, palette))


def test_encode_png_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2), np.uint16))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="row_filter"):
        encode_png(np.zeros((2, 2), np.uint8), "paeth")


def _old_colorize(mask: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """colorize and overlay as they were written before the table lookups: the reference."""
    table = np.zeros((256 if mask.max(initial=0) < 256 else int(mask.max()) + 1, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table[mask.astype(np.int64)]


def _old_overlay(image: np.ndarray, mask: np.ndarray, palette: list[list[int]], alpha: float = 0.5) -> np.ndarray:
    from unetkit.preprocess import display_rgb

    rgb = display_rgb(image).astype(np.float32)
    colours = _old_colorize(mask, palette).astype(np.float32)
    return np.clip(rgb * (1 - alpha) + colours * alpha, 0, 255).astype(np.uint8)


PALETTE = [[0, 0, 0], [255, 0, 0], [10, 200, 30], [255, 255, 255], [7, 8, 9]]


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.bool_])
def test_colorize_and_its_png_give_the_colours_of_the_palette(dtype: type) -> None:
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 2 if dtype is np.bool_ else 9, (12, 15)).astype(dtype)  # ids past the palette: black
    np.testing.assert_array_equal(colorize(mask, PALETTE), _old_colorize(mask, PALETTE))
    np.testing.assert_array_equal(decode(colour_png(mask, PALETTE)), _old_colorize(mask, PALETTE))
    wide = rng.integers(0, 600, (4, 5)).astype(np.int32)  # over 255 ids: a bigger table
    np.testing.assert_array_equal(colorize(wide, PALETTE), _old_colorize(wide, PALETTE))


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.0, 1.0, 0.7, 1.5, np.float64(0.3), np.float32(0.45)])
def test_overlay_equals_the_float32_blend(alpha: float) -> None:
    rng = np.random.default_rng(2)
    mask = rng.integers(0, 6, (16, 20)).astype(np.uint8)
    images = [
        rng.integers(0, 256, (16, 20, 3), dtype=np.uint8),
        rng.integers(0, 256, (16, 20, 4), dtype=np.uint8),  # alpha dropped
        rng.integers(0, 256, (16, 20, 1), dtype=np.uint8),  # grey
        rng.integers(0, 65536, (16, 20, 3), dtype=np.uint16),  # stretched for display
        rng.integers(0, 256, (16, 20, 6), dtype=np.uint8),  # multi-band: the first three
    ]
    for image in images:
        expected = _old_overlay(image, mask, PALETTE, alpha)
        np.testing.assert_array_equal(overlay(image, mask, PALETTE, alpha), expected)
        np.testing.assert_array_equal(decode(overlay_png(image, mask, PALETTE, alpha)), expected)


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.7, 0.123])
def test_overlay_equals_the_float32_blend_for_every_pair_of_values(alpha: float) -> None:
    values = np.arange(256, dtype=np.uint8)
    image = np.repeat(np.repeat(values[:, None, None], 256, axis=1), 3, axis=2)  # pixel (i, j) holds i
    mask = np.repeat(values[None, :], 256, axis=0)  # ... and class j, coloured (j, j, j)
    grey = [[v, v, v] for v in range(256)]
    np.testing.assert_array_equal(overlay(image, mask, grey, alpha), _old_overlay(image, mask, grey, alpha))


def test_mask_png_keeps_the_class_ids() -> None:
    mask = np.random.default_rng(3).integers(0, 256, (9, 13)).astype(np.uint8)
    image = Image.open(io.BytesIO(mask_png(mask)))
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), mask)
    wide = np.arange(12, dtype=np.int32).reshape(3, 4) * 100  # over 255: a 16-bit PNG, as png_bytes writes
    np.testing.assert_array_equal(decode(mask_png(wide)), wide)


def test_progress_bar_counts_and_shows_a_rate() -> None:
    with progress_bar(False, 3, "off") as bar:
        assert bar is None
    with progress_bar(True, None, "frames") as bar:  # unknown total (a video that does not say)
        advance(bar, 2, "frames")
        advance(bar, 3, "frames")
        task = bar.tasks[0]
        assert task.completed == 5 and task.total is None
        assert task.fields["rate"] == "" or task.fields["rate"].endswith(" frames/s")


def test_network_builders_share_one_signature_with_the_seed_defaults() -> None:
    import inspect

    from unetkit.model import FCN, UNet, count_parameters, fcn_model, unet_model

    sig = inspect.signature(unet_model)
    assert list(sig.parameters) == ["input_size", "n_filters", "n_classes", "depth", "dropout", "batch_norm"]
    assert sig.parameters["depth"].kind is inspect.Parameter.KEYWORD_ONLY and sig.parameters["n_classes"].default == 23
    assert inspect.signature(fcn_model).parameters == sig.parameters
    assert unet_model.__name__ == "unet_model" and "seed" in (unet_model.__doc__ or "")
    net = unet_model([32, 32, 1], 4, 3, depth=3)  # a list, as JSON gives it
    assert isinstance(net, UNet) and net.arch.input_size == (32, 32, 1)
    assert isinstance(fcn_model((32, 32, 3), n_classes=2), FCN)
    assert count_parameters(unet_model()) == 8_640_471


def test_typed_blocks_of_a_network() -> None:
    from torch import nn

    from unetkit.model import ConvBlock, UpsamplingBlock, unet_model

    net = unet_model((32, 32, 1), 4, 3, depth=3)
    assert [type(b) for b in net.encoder_blocks] == [ConvBlock] * 3
    assert [type(b) for b in net.decoder_blocks] == [UpsamplingBlock] * 2
    net.decoder.append(nn.Identity())
    with pytest.raises(TypeError, match="UpsamplingBlock"):
        _ = net.decoder_blocks
