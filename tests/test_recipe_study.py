"""benchmarks/recipe_study.py --folds: every variant cross-validated on one saved split, one JSON line each."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest

from unetkit.folds import load_splits

REPO = Path(__file__).resolve().parents[1]


def _study() -> ModuleType:
    spec = importlib.util.spec_from_file_location("recipe_study", REPO / "benchmarks" / "recipe_study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folds_option_cross_validates_each_variant_on_one_split(tmp_path: Path, blob_folders) -> None:
    images, masks = blob_folders
    out, work = tmp_path / "study.jsonl", tmp_path / "work"
    argv = ["folders", "--images", str(images), "--masks", str(masks), "--n-classes", "3", "--mask-mode", "index"]
    argv += ["--folds", "2", "--epochs", "1", "--size", "32", "32", "--n-filters", "4", "--threads", "1"]
    argv += ["--variants", "seed", "strong:augment=none,epochs=2"]
    argv += ["--work", str(work), "--out", str(out), "--seed", "3"]
    _study().main(argv)

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["seed", "strong:augment=none,epochs=2"]
    splits = load_splits(work / "splits.json")
    for r in rows:
        epochs = 2 if r["variant"].endswith("epochs=2") else 1  # an override wins over --epochs
        assert r["k"] == 2 and r["epochs"] == epochs and r["split_seed"] == 3
        assert r["train"] == [len(s["train"]) for s in splits] and sum(r["val"]) == 24
        folder = "".join(c if c.isalnum() else "_" for c in r["variant"])
        assert load_splits(work / folder / "splits.json") == splits  # every variant on the same split
        assert [f["fold"] for f in r["folds"]] == [0, 1]
        for f in r["folds"]:
            assert len(f["curve"]) == epochs and f["val_miou"] == pytest.approx(max(f["curve"]), abs=1e-4)
            assert 0 <= f["val_accuracy"] <= 1 and 0 <= f["val_mean_accuracy"] <= 1
        for key, label in (("val_miou", "miou"), ("val_accuracy", "aacc"), ("val_mean_accuracy", "macc")):
            values = [f[key] for f in r["folds"]]
            assert r[f"mean_{label}"] == pytest.approx(statistics.fmean(values), abs=1e-4)
            assert r[f"std_{label}"] == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert r["cpu_seconds"] > 0 and r["seconds"] > 0


def test_folds_option_needs_folders(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--folds trains on folders"):
        _study().main(["folders", "--folds", "2", "--out", str(tmp_path / "x.jsonl")])
