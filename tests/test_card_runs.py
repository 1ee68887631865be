"""The model card in each run folder, and `unetkit runs`: the table, sorting and JSON."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import make_blobs, tiny_config
from typer.testing import CliRunner

from unetkit import SegmentationData, fit
from unetkit.card import MARKER, parameter_count, write_card
from unetkit.cli import app
from unetkit.errors import ConfigError
from unetkit.runs import format_table, list_runs

NAMES = ["background", "square", "disc"]
PALETTE = [[0, 0, 0], [255, 0, 128], [0, 200, 100]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("runs")
    images, masks = make_blobs(24, seed=6)
    train, val = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3).split(0.25, seed=0)
    results = {}
    for name, epochs, lr in (("a", 1, 1e-3), ("nested/b", 3, 3e-3)):
        config = replace(tiny_config(epochs=epochs, lr=lr), class_names=NAMES, palette=PALETTE)
        results[name] = fit(
            config,
            root / name,
            train_data=train,
            val_data=val,
            progress=False,
            log=None,
            command=f"unetkit train {name}",
        )
    (root / "empty").mkdir()
    return root, results


def test_model_card_contents(runs) -> None:
    root, results = runs
    card = (root / "nested/b" / "README.md").read_text()
    history = results["nested/b"].history
    best = max(history, key=lambda r: r["val_miou"])
    n = parameter_count(tiny_config().model)
    assert card.startswith(MARKER)
    assert "U-Net (the seed's unet_model): n_filters 4, depth 5" in card
    assert f"{n:,} parameters" in card
    assert "(18 images)" in card and "(6 images)" in card  # training and validation counts
    assert "| 1 | square | `#ff0080` rgb(255, 0, 128) |" in card  # classes with colours
    assert "recipe seed: 3 epochs, batch 8, adam lr 0.003" in card
    assert "unetkit train nested/b" in card  # the command
    assert f"**{best['val_miou']:.4f}** at epoch {best['epoch']} of 3" in card
    assert f"unetkit predict {(root / 'nested/b').as_posix()}" in card and "load_predictor(" in card
    assert "PyTorch " in card and "Python " in card


def test_card_never_overwrites_a_users_readme(tmp_path) -> None:
    (tmp_path / "README.md").write_text("my notes")
    path = write_card(tmp_path, tiny_config(), [])
    assert path.name == "MODEL_CARD.md" and (tmp_path / "README.md").read_text() == "my notes"


def test_runs_table_sort_and_json(runs) -> None:
    root, results = runs
    rows = list_runs(root, sort="miou")
    assert [r.name for r in rows] == sorted(["a", "nested/b"], key=lambda n: -results[n].best_miou)
    b = next(r for r in rows if r.name == "nested/b")
    assert (b.epochs, b.epochs_planned, b.classes) == (3, 3, 3)
    assert b.best_val_miou == pytest.approx(results["nested/b"].best_miou, abs=1e-5)
    assert b.model == "unet f4 d5" and b.parameters == parameter_count(tiny_config().model)
    assert [r.name for r in list_runs(root, sort="name")] == ["a", "nested/b"]
    assert [r.name for r in list_runs(root, sort="epochs")] == ["nested/b", "a"]
    assert [r.name for r in list_runs(root, sort="epochs", reverse=False)] == ["a", "nested/b"]
    table = format_table(rows)
    assert table.splitlines()[0].split()[:4] == ["name", "model", "classes", "epochs"]
    assert "3/3" in table and f"{b.best_val_miou:.4f} (ep {b.best_epoch})" in table
    with pytest.raises(ConfigError, match="--sort"):
        list_runs(root, sort="colour")

    r = CliRunner().invoke(app, ["runs", str(root), "--json", "--sort", "name"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [d["name"] for d in data] == ["a", "nested/b"] and data[0]["epochs"] == 1
    assert set(data[0]) >= {"name", "model", "classes", "epochs", "best_val_miou", "seconds", "date"}
    r = CliRunner().invoke(app, ["runs", str(root), "--sort", "time"])
    assert r.exit_code == 0 and "nested/b" in r.output and "best val mIoU" in r.output


def test_runs_lists_an_ensemble_once(runs, tmp_path) -> None:
    from unetkit.ensemble import make_ensemble

    root, _ = runs
    make_ensemble([root / "a", root / "nested/b"], tmp_path / "ENS")
    (row,) = list_runs(tmp_path)
    assert row.name == "ENS" and row.kind == "ensemble" and row.model == "ensemble of 2"
    assert (tmp_path / "ENS/members/1_b/README.md").read_text() == (root / "nested/b/README.md").read_text()
    card = (tmp_path / "ENS/README.md").read_text()
    assert "ensemble of 2 runs averaging their class probabilities" in card and "| 2 | disc |" in card
