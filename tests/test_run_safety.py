"""Untrusted run folders: edited config.json files are refused with a message, weights come only from
safetensors, a pickle placed in a run folder never runs, and damaged weights are a RunError."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, tiny_config

import unetkit.run as runio
from unetkit import Predictor, SegmentationData, fit, load_run
from unetkit.errors import ConfigError, RunError, UnetkitError
from unetkit.run import CONFIG, LAST, WEIGHTS, build_model, save_run


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run folder (one epoch on tiny data): config, weights, last checkpoint, metrics."""
    images, masks = make_blobs(8, seed=4)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("trained") / "run"
    fit(tiny_config(epochs=1), out, train_data=data, progress=False, log=None)
    torch.set_num_threads(threads)
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A fresh copy of the trained run folder, for a test to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _edit(run: Path, change) -> None:
    data = json.loads((run / CONFIG).read_text())
    change(data)
    (run / CONFIG).write_text(json.dumps(data))


def _set(section: str, key: str, value):
    def change(data: dict) -> None:
        data[section][key] = value

    return change


EDITS = {
    "n_filters a string": (_set("model", "n_filters", "four"), "config.model.n_filters must be an integer"),
    "n_filters a float": (_set("model", "n_filters", 4.5), "n_filters must be an integer"),
    "n_classes zero": (_set("model", "n_classes", 0), "n_classes must be >= 1"),
    "input size not divisible": (_set("model", "input_size", [32, 30, 3]), "not divisible by 16"),
    "input size of two items": (_set("model", "input_size", [32, 32]), "input_size must have 3 items"),
    "zero channels": (_set("model", "input_size", [32, 32, 0]), "channels must be >= 1"),
    "unknown model": (_set("model", "name", "resnet"), "model must be one of unet, fcn"),
    "dropout 1.5": (_set("model", "dropout", 1.5), "dropout must be in [0, 1)"),
    "dropout NaN": (_set("model", "dropout", float("nan")), "dropout must be in [0, 1)"),
    "batch_norm a string": (_set("model", "batch_norm", "yes"), "batch_norm must be true or false"),
    "unknown key": (_set("model", "layers", 7), "unknown key(s) in config.model: layers"),
    "resize bicubic": (_set("preprocess", "resize", "bicubic"), "resize must be one of bilinear, nearest"),
    "overlap 1": (_set("preprocess", "overlap", 1.0), "overlap must be in [0, 1)"),
    "mask mode rgb": (_set("data", "mask_mode", "rgb"), "mask_mode must be one of"),
    "ignore index a class": (_set("data", "ignore_index", 1), "ignore_index 1 is a real class id"),
    "epochs zero": (_set("train", "epochs", 0), "epochs must be >= 1"),
    "lr a string": (_set("train", "lr", "fast"), "config.train.lr must be a number"),
    "lr negative": (_set("train", "lr", -1), "lr must be > 0"),
    "betas of three": (_set("train", "betas", [0.9, 0.9, 0.9]), "betas must have 2 items"),
    "nan policy": (_set("train", "nan_policy", "ignore"), "nan_policy must be one of stop, skip"),
    "model null": (lambda d: d.update(model=None), "config.model must be an object"),
    "model a list": (lambda d: d.update(model=[1, 2]), "config.model must be an object"),
    "class names short": (lambda d: d.update(class_names=["a"]), "1 class names for 3 classes"),
    "palette out of range": (lambda d: d.update(palette=[[300, 0, 0]] * 3), "palette must hold one [r, g, b]"),
    "palette ragged": (lambda d: d.update(palette=[[1, 2], [3], []]), "palette must hold one [r, g, b]"),
}


@pytest.mark.parametrize("what", sorted(EDITS))
def test_edited_config_is_refused_with_a_message(run, what):
    change, message = EDITS[what]
    _edit(run, change)
    for load in (lambda: load_run(run), lambda: Predictor.from_run(run, device="cpu")):
        with pytest.raises(ConfigError) as e:
            load()
        assert message in str(e.value) and str(run / CONFIG) in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00garbage", "is not valid JSON"),
        (b"[]", "config must be an object"),
        (b"", "is not valid JSON"),
    ],
)
def test_unparsable_config_is_refused(run, content, message):
    (run / CONFIG).write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_run(run)


def test_config_claiming_a_huge_model_is_refused_before_allocating_it(run):
    """n_filters 100000 would be a 300 TB model: the weights' shapes refuse it, checked on the meta device."""
    _edit(run, _set("model", "n_filters", 100_000))
    with pytest.raises(RunError, match=r"does not match .*config\.json .*different runs"):
        load_run(run)


def test_cli_names_the_problem_in_one_paragraph(run):
    from typer.testing import CliRunner

    from unetkit.cli import app

    _edit(run, _set("model", "n_filters", "four"))
    result = CliRunner().invoke(app, ["info", "--run", str(run)])
    assert result.exit_code == 2 and "n_filters must be an integer" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------ pickles never run


class _Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unpickling during the test fails it (torch.load included)."""

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_a_pickle_in_the_run_folder_is_never_executed(run, tmp_path, no_unpickling):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(marker))
    for name in ("weights.pt", "last.pt", "model.pkl", "model.pth", "checkpoint.ckpt", "weights.bin"):
        (run / name).write_bytes(payload)
    torch.save({"state_dict": _Payload(marker)}, run / "model.torch.pt")  # torch's zip format, same trick
    loaded = load_run(run)
    load_run(run, weights="last")
    Predictor.from_run(run, device="cpu")
    images, masks = make_blobs(8, seed=4)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    fit(tiny_config(epochs=2), run, train_data=data, resume=True, progress=False, log=None)
    from typer.testing import CliRunner

    from unetkit.cli import app

    assert CliRunner().invoke(app, ["info", "--run", str(run)]).exit_code == 0
    assert not marker.exists()
    assert loaded.model is not None


@pytest.mark.parametrize("name", [WEIGHTS, LAST])
def test_a_pickle_under_the_safetensors_name_is_refused_not_run(run, tmp_path, name):
    marker = tmp_path / "PWNED"
    (run / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(RunError, match="not a readable safetensors file"):
        load_run(run, weights="best" if name == WEIGHTS else "last")
    if name == LAST:
        images, masks = make_blobs(8, seed=4)
        data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
        with pytest.raises(RunError, match="not a readable safetensors file"):
            fit(tiny_config(epochs=2), run, train_data=data, resume=True, progress=False, log=None)
    torch_zip = run / "zip.pt"
    torch.save({"x": _Payload(marker)}, torch_zip)
    (run / name).write_bytes(torch_zip.read_bytes())
    with pytest.raises(RunError, match="not a readable safetensors file"):
        load_run(run, weights="best" if name == WEIGHTS else "last")
    assert not marker.exists()


def test_the_payload_used_above_really_runs_when_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()  # so the tests above would notice an unpickling


# ---------------------------------------------------------------------------------- damaged weights


def _header(obj: dict) -> bytes:
    raw = json.dumps(obj).encode()
    return struct.pack("<Q", len(raw)) + raw


def _damaged(good: bytes) -> dict[str, bytes]:
    return {
        "empty": b"",
        "truncated half": good[: len(good) // 2],
        "truncated header": good[:12],
        "one byte short": good[:-1],
        "random bytes": os.urandom(4096),
        "header length 2^63": struct.pack("<Q", 2**63) + b"{}",
        "header length past the end": struct.pack("<Q", 10**6) + b"{}",
        "header not json": struct.pack("<Q", 8) + b"notjson!",
        "offsets past the end": _header({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}}),
        "shape and size disagree": _header({"w": {"dtype": "F32", "shape": [10], "data_offsets": [0, 8]}}) + b"\0" * 8,
        "unknown dtype": _header({"w": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}) + b"\0" * 4,
        "bit flip in header": good[:20] + bytes([good[20] ^ 0xFF]) + good[21:],
    }


def test_damaged_weights_are_a_run_error_not_a_traceback(run):
    good = (run / WEIGHTS).read_bytes()
    tried = 0
    for what, data in _damaged(good).items():
        (run / WEIGHTS).write_bytes(data)
        with pytest.raises(UnetkitError) as e:
            load_run(run)
        assert isinstance(e.value, RunError), (what, e.value)
        assert str(run / WEIGHTS) in str(e.value), (what, str(e.value))
        tried += 1
    print(f"{tried} damaged weight files -> RunError")


def test_weights_of_another_model_are_a_run_error(run, tmp_path):
    other = tiny_config()
    other = replace(other, model=replace(other.model, n_filters=8))
    save_run(tmp_path / "other", build_model(other.model), other)
    (run / WEIGHTS).write_bytes((tmp_path / "other" / WEIGHTS).read_bytes())
    with pytest.raises(RunError, match=r"does not match .*config\.json"):
        load_run(run)
    runio.save_tensors(run / WEIGHTS, {"conv.weight": torch.zeros(3)}, {})
    with pytest.raises(RunError, match=r"only in the"):
        Predictor.from_run(run, device="cpu")


@pytest.mark.skipif(sys.platform != "linux", reason="/dev/zero")
def test_weights_linked_to_an_endless_device_are_refused(run):
    (run / WEIGHTS).unlink()
    (run / WEIGHTS).symlink_to("/dev/zero")
    with pytest.raises(RunError, match="not a regular file"):
        load_run(run)
    (run / WEIGHTS).unlink()
    (run / WEIGHTS).mkdir()
    with pytest.raises(RunError, match="not a regular file"):
        load_run(run)
