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
from unetkit.plots import png_bytes, save_png


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
