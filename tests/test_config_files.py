"""Config files in (issue 15 part 2) and config building in the API (issue 11): `train --config FILE`,
`--set KEY=VALUE`, `--print-config`, `RunConfig.from_file`, `build_config`, and their order:
defaults < recipe < config file < --set < explicit options."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, write_folder
from safetensors.torch import load_file
from typer.testing import CliRunner

from unetkit import RunConfig, build_config, cli
from unetkit.cli import app
from unetkit.config import Optimizer, Schedule, TrainConfig, choices_of
from unetkit.configure import OPTIONS
from unetkit.errors import ConfigError
from unetkit.recipes import STRONG, STRONG_AUGMENT

runner = CliRunner()
TINY = ["--input-size", "32", "32", "--n-filters", "4", "--batch-size", "4", "--precision", "fp32"]
TINY += ["--no-compile", "--no-progress", "--device", "cpu"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _user_error(result) -> str:
    """The output of a command that failed with a user error: exit 2, one message, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    return " ".join(result.output.split())  # rich may wrap a long message


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    return write_folder(tmp_path / "data", *make_blobs(6))


YAML = """
# a YAML file in the shape of config.json, partial: what it leaves out comes from the recipe and the defaults
model:
  n_filters: 8
  input_size: [32, 32, 3]
  n_classes: 3
train:
  lr: 3e-3          # YAML 1.2: a number (PyYAML's YAML 1.1 would read text)
  compile: off      # text: off is one of auto/on/off, not false
  augment: {hflip: true}
"""


def test_yaml_and_json_files_read_the_same(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(YAML)
    as_json = {
        "model": {"n_filters": 8, "input_size": [32, 32, 3], "n_classes": 3},
        "train": {"lr": 3e-3, "compile": "off", "augment": {"hflip": True}},
    }
    (tmp_path / "c.json").write_text(json.dumps(as_json))
    for name in ("c.yaml", "c.json"):
        c = RunConfig.from_file(tmp_path / name)
        assert (c.train.lr, c.train.compile, c.train.augment.hflip, c.model.n_filters) == (3e-3, "off", True, 8)
        assert c.model.input_size == (32, 32, 3) and c.train.optimizer == "adam"  # left out: the default
        assert build_config(config_file=tmp_path / name) == build_config(config_file=tmp_path / "c.yaml")
    empty = tmp_path / "empty.yml"
    empty.write_text("# nothing set\n")
    assert RunConfig.from_file(empty) == RunConfig()


def test_a_run_config_json_reads_back_as_that_config(tmp_path: Path) -> None:
    config = build_config(n_classes=4, channels=1, recipe="strong", lr=2e-3, crop=(32, 48), ema=0.99)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(config.to_json())
    assert RunConfig.from_file(tmp_path / "run" / "config.json") == config
    assert RunConfig.from_file(tmp_path / "run") == config  # a run folder stands for its config.json
    # every setting comes from the file: build_config under it, with any recipe, gives the same
    assert build_config(config_file=tmp_path / "run" / "config.json") == config


def test_order_defaults_recipe_file_set_options(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  batch_size: 5\n  epochs: 3\nmodel:\n  n_classes: 3\n")
    assert build_config(n_classes=3).train.batch_size == 32  # the default
    assert build_config(n_classes=3, recipe="strong").train.batch_size == STRONG["batch_size"]  # recipe > default
    c = build_config(config_file=file, recipe="strong")
    assert c.train.batch_size == 5 and c.train.epochs == 3  # the file > the recipe
    assert c.train.optimizer == "adamw" and c.train.augment == STRONG_AUGMENT and c.model.batch_norm  # the rest
    assert build_config(config_file=file, overrides=["train.batch_size=4"]).train.batch_size == 4  # --set > file
    c = build_config(config_file=file, overrides=["train.batch_size=4"], batch_size=3, recipe="strong")
    assert c.train.batch_size == 3 and c.train.epochs == 3  # an explicit option > --set > the file

    # the file's train.recipe is the recipe under it, unless recipe= names another
    file.write_text("train:\n  recipe: strong\n  lr: 1e-2\nmodel:\n  n_classes: 3\n")
    c = build_config(config_file=file)
    assert (c.train.recipe, c.train.lr, c.train.optimizer, c.model.batch_norm) == ("strong", 1e-2, "adamw", True)
    c = build_config(config_file=file, recipe="seed")
    assert (c.train.recipe, c.train.lr, c.train.optimizer, c.model.batch_norm) == ("seed", 1e-2, "adam", False)


def test_file_classes_and_sizes_follow_the_file(tmp_path: Path) -> None:
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"class_names": ["sky", "road"], "model": {"input_size": [64, 64, 1]}}))
    c = build_config(config_file=file)
    assert c.model.n_classes == 2 and c.class_names == ["sky", "road"] and c.model.input_size == (64, 64, 1)
    assert build_config(config_file=file, input_size=(32, 48)).model.input_size == (32, 48, 1)
    file.write_text(
        json.dumps({"model": {"n_classes": 2, "input_size": [32, 32, 3]}, "data": {"images": "rel/images"}})
    )
    c = build_config(config_file=file, n_classes=5)
    assert c.model.n_classes == 5 and len(c.class_names) == 5  # automatic names follow n_classes
    assert c.data.images == str(Path("rel/images").resolve())  # relative to the working directory, made absolute


def test_cli_builds_what_build_config_builds(data, tmp_path: Path) -> None:
    images, masks = data
    file = tmp_path / "c.yaml"
    file.write_text(YAML)
    args = ["--images", images, "--masks", masks, "--recipe", "strong", "--lr", "2e-3", "--epochs", "2"]
    result = invoke("train", *args, "--config", file, "--set", "train.seed=7", "--print-config")
    assert result.exit_code == 0, result.output
    printed = RunConfig.from_dict(json.loads(result.stdout))
    expected = build_config(
        images=images, masks=masks, recipe="strong", lr=2e-3, epochs=2, config_file=file, overrides=["train.seed=7"]
    )
    assert printed == expected
    assert (printed.train.lr, printed.train.seed, printed.model.n_filters) == (2e-3, 7, 8)
    # and without a file: exactly what the options give
    result = invoke("train", *args, "--n-classes", 3, *TINY, "--print-config")
    assert RunConfig.from_dict(json.loads(result.stdout)) == build_config(
        images=images, masks=masks, recipe="strong", lr=2e-3, epochs=2, n_classes=3, input_size=(32, 32),
        n_filters=4, batch_size=4, precision="fp32", compile=False, device="cpu",
    )  # fmt: skip


def test_print_config_touches_no_run_folder_and_keeps_warnings_off_stdout(data, tmp_path: Path) -> None:
    images, masks = data
    out = tmp_path / "run"
    # 32x32 images at the default 96x128: a distortion warning, on stderr
    result = invoke("train", "--images", images, "--masks", masks, "--n-classes", 3, "--out", out, "--print-config")
    assert result.exit_code == 0, result.output
    assert not out.exists()
    assert "warning" in result.stderr and "warning" not in result.stdout
    assert json.loads(result.stdout)["model"]["n_classes"] == 3
    # no --out needed to look
    result = invoke("train", "--n-classes", 3, "--print-config")
    assert result.exit_code == 0 and json.loads(result.stdout)["train"]["recipe"] == "seed"


def test_set_errors_name_the_key_or_the_option(tmp_path: Path) -> None:
    base = ["train", "--n-classes", 3, "--print-config", "--set"]
    text = _user_error(invoke(*base, "train.lrr=1"))
    assert "--set train.lrr=1" in text and "train has no key 'lrr'" in text and "lr, betas" in text
    text = _user_error(invoke(*base, "modl.n_filters=1"))
    assert "no key 'modl'" in text and "model, preprocess, data, train" in text
    text = _user_error(invoke(*base, "train.lr=abc"))
    assert "--set train.lr=abc" in text and "train.lr must be a number, got 'abc'" in text
    text = _user_error(invoke(*base, "train.lr=-1"))
    assert "--set train.lr=-1" in text and "lr must be > 0" in text and "--lr" not in text
    text = _user_error(invoke(*base, "train.optimizer=sgd"))
    assert "--set train.optimizer=sgd" in text and "adam, adamw" in text
    assert "KEY=VALUE" in _user_error(invoke(*base, "lr"))
    assert "is a section" in _user_error(invoke(*base, "train=1"))
    assert "not a section" in _user_error(invoke(*base, "train.lr.x=1"))
    with pytest.raises(ConfigError, match="model.n_filters must be an integer"):
        build_config(n_classes=3, overrides=["model.n_filters=1.5"])
    # values: YAML scalars and JSON; text stays text
    c = build_config(
        n_classes=3,
        overrides=["train.lr=3e-3", "model.input_size=[64, 64, 1]", "train.ema=null", "data.images=2024",
                   "train.compile=off", "train.augment.hflip=true", 'train.class_weights="inverse"'],
    )  # fmt: skip
    assert (c.train.lr, c.model.input_size, c.train.ema, c.train.compile) == (3e-3, (64, 64, 1), None, "off")
    assert c.data.images.endswith("2024") and c.train.augment.hflip and c.train.class_weights == "inverse"


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    base = ["train", "--n-classes", 3, "--print-config", "--config"]
    assert "does not exist" in _user_error(invoke(*base, tmp_path / "nope.yaml"))
    (tmp_path / "c.toml").write_text("")
    assert ".json, .yaml or .yml" in _user_error(invoke(*base, tmp_path / "c.toml"))
    (tmp_path / "bad.yaml").write_text("train:\n  lr: [1\n")
    text = _user_error(invoke(*base, tmp_path / "bad.yaml"))
    assert "bad.yaml is not valid YAML" in text and "line 3" in text
    (tmp_path / "bad.json").write_text("{")
    assert "bad.json is not valid JSON" in _user_error(invoke(*base, tmp_path / "bad.json"))
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert "must hold settings by section" in _user_error(invoke(*base, tmp_path / "list.yaml"))
    (tmp_path / "key.yaml").write_text("train:\n  lrr: 1\n")
    text = _user_error(invoke(*base, tmp_path / "key.yaml"))
    assert "key.yaml" in text and "unknown key(s) in config.train: lrr" in text
    (tmp_path / "value.yaml").write_text("train:\n  batch_size: 0\n")
    text = _user_error(invoke(*base, tmp_path / "value.yaml"))
    assert "value.yaml" in text and "batch_size must be >= 1" in text
    with pytest.raises(ConfigError, match="value.yaml: config.train: batch_size must be >= 1"):
        RunConfig.from_file(tmp_path / "value.yaml")
    # a file that names no class count still needs one
    (tmp_path / "lr.yaml").write_text("train: {lr: 1e-2}\n")
    assert "give --n-classes N" in _user_error(invoke("train", "--print-config", "--config", tmp_path / "lr.yaml"))


def test_a_run_reproduced_from_its_own_config_json_has_identical_weights(data, tmp_path: Path) -> None:
    images, masks = data
    first, second = tmp_path / "run", tmp_path / "again"
    args = ["--images", images, "--masks", masks, "--n-classes", 3, "--epochs", 2, "--val-fraction", 0.34, *TINY]
    result = invoke("train", *args, "--out", first)
    assert result.exit_code == 0, result.output
    result = invoke("train", "--config", first / "config.json", "--no-progress", "--out", second)
    assert result.exit_code == 0, result.output
    assert json.loads((second / "config.json").read_text()) == json.loads((first / "config.json").read_text())
    for name in ("weights.safetensors", "last.safetensors"):
        a, b = load_file(first / name), load_file(second / name)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(
                a[key].reshape(-1).view(torch.uint8), b[key].reshape(-1).view(torch.uint8)
            )


def test_resume_takes_no_config_file(data, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train: {lr: 1e-2}\n")
    text = _user_error(invoke("train", "--resume", tmp_path, "--config", tmp_path / "c.yaml"))
    assert "--config cannot change on --resume" in text


def test_build_config_takes_the_options_of_train_by_name() -> None:
    train_options = set(inspect.signature(cli.train).parameters)
    assert set(OPTIONS) <= train_options
    assert list(inspect.signature(build_config).parameters) == ["log", *OPTIONS]  # help() lists every keyword
    with pytest.raises(TypeError, match="lrr"):
        build_config(n_classes=3, lrr=1e-3)  # type: ignore[call-arg]
    assert build_config(n_classes=3, recipe="strong", lr=3e-3).train.lr == 3e-3


def test_configs_are_frozen_and_choices_come_from_their_literal_types() -> None:
    config = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model = config.model  # type: ignore[misc]
    choices = choices_of(TrainConfig)
    assert choices["optimizer"] == typing.get_args(Optimizer) and choices["schedule"] == typing.get_args(Schedule)
    with pytest.raises(ConfigError, match="optimizer must be one of adam, adamw; got 'sgd'"):
        TrainConfig(optimizer="sgd")  # type: ignore[arg-type]


def test_train_help_lists_the_choices_of_the_literal_types() -> None:
    text = " ".join(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "constant, cosine or plateau" in text and "adam or adamw" in text
