"""k-fold cross-validation: a seeded split that partitions the data, fold runs, the summary."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from unetkit.cli import app
from unetkit.config import RunConfig
from unetkit.errors import ConfigError, DataError
from unetkit.folds import fold_indices, load_splits, make_splits, save_splits

NAMES = [f"case_{i:02d}" for i in range(10)]


def test_three_fold_split_partitions_the_data() -> None:
    splits = make_splits(NAMES, 3, seed=7)
    assert len(splits) == 3
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == set(NAMES)  # every sample validated once ...
    assert sum(len(v) for v in vals) == len(NAMES)  # ... and only once
    assert sorted(len(v) for v in vals) == [3, 3, 4]
    for s in splits:
        assert set(s["train"]) == set(NAMES) - set(s["val"])
    assert make_splits(NAMES, 3, seed=7) == splits  # seeded
    assert make_splits(NAMES, 3, seed=8) != splits


def test_split_file_round_trip_and_checks(tmp_path) -> None:
    path = tmp_path / "splits.json"
    splits = make_splits(NAMES, 2)
    save_splits(path, splits)
    assert load_splits(path) == splits
    train, val = fold_indices(NAMES, path, 1)
    assert sorted(train + val) == list(range(10)) and [NAMES[i] for i in val] == splits[1]["val"]
    with pytest.raises(ConfigError, match="out of range"):
        fold_indices(NAMES, path, 2)
    with pytest.raises(DataError, match="not in the data"):
        fold_indices(NAMES[:-1], path, 0)
    path.write_text(json.dumps([{"train": ["a"], "val": ["a"]}]))
    with pytest.raises(ConfigError, match="disjoint"):
        load_splits(path)
    with pytest.raises(DataError, match="cannot make"):
        make_splits(NAMES[:2], 3)
    with pytest.raises(ConfigError, match="at least 2"):
        make_splits(NAMES, 1)


def test_cli_folds_trains_each_fold_and_summarises(tmp_path, blob_folders) -> None:
    images, masks = blob_folders
    out = tmp_path / "cv"
    args = ["train", "--images", str(images), "--masks", str(masks), "--n-classes", "3", "--out", str(out)]
    args += ["--input-size", "32", "32", "--n-filters", "4", "--epochs", "1", "--batch-size", "8"]
    args += ["--precision", "fp32", "--no-compile", "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(app, args + ["--folds", "3"])
    assert r.exit_code == 0, r.output
    splits = load_splits(out / "splits.json")
    stems = sorted(p.stem for p in images.iterdir())
    assert sorted(n for s in splits for n in s["val"]) == stems
    for i in range(3):
        config = RunConfig.load(out / f"fold_{i}" / "config.json")
        assert config.data.fold == i and config.data.split_file == str(out / "splits.json")
        card = (out / f"fold_{i}" / "README.md").read_text()
        assert f"fold {i} of" in card and f"({len(splits[i]['val'])} images)" in card
    summary = json.loads((out / "folds.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1, 2]
    mious = [f["val_miou"] for f in summary["folds"]]
    assert summary["val_miou"]["mean"] == pytest.approx(sum(mious) / 3)
    assert summary["val_miou"]["std"] >= 0 and "+-" in r.output
    maccs = [f["val_mean_accuracy"] for f in summary["folds"]]  # mAcc of each fold's best-mIoU epoch
    assert summary["val_mean_accuracy"]["mean"] == pytest.approx(sum(maccs) / 3)

    before = (out / "fold_0" / "weights.safetensors").stat().st_mtime_ns
    r = CliRunner().invoke(app, args + ["--fold", "1", "--seed", "3"])
    assert r.exit_code != 0 and "already holds a run" in r.output  # a finished fold is never replaced silently
    r = CliRunner().invoke(app, args + ["--fold", "1", "--seed", "3", "--overwrite"])  # K from splits.json; only fold 1
    assert r.exit_code == 0, r.output
    assert (out / "fold_0" / "weights.safetensors").stat().st_mtime_ns == before
    assert load_splits(out / "splits.json") == splits  # the saved split is reused, never remade

    r = CliRunner().invoke(app, args + ["--folds", "4"])
    assert r.exit_code != 0 and "has 3 folds" in r.output
    r = CliRunner().invoke(app, args + ["--folds", "3", "--val-fraction", "0.2"])
    assert r.exit_code != 0 and "own validation" in r.output
