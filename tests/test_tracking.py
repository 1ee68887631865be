"""Watching runs: TensorBoard events and the MLflow store read back; missing packages named up front."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import make_blobs, tiny_config

from unetkit import SegmentationData, fit
from unetkit.errors import ConfigError, UnetkitError
from unetkit.loggers import check_available, epoch_scalars

NAMES = ["background", "square", "disc"]


@pytest.fixture(scope="module")
def blobs() -> tuple[SegmentationData, SegmentationData]:
    images, masks = make_blobs(24, seed=2)
    return SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3).split(0.25, seed=0)


def _config(epochs: int = 2):
    from dataclasses import replace

    return replace(tiny_config(epochs=epochs), class_names=NAMES)


def test_tensorboard_events_read_back(tmp_path, blobs) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train, val = blobs
    run = tmp_path / "run"
    result = fit(
        _config(3), run, train_data=train, val_data=val, progress=False, log=None, loggers=["tensorboard"],
        log_images_every=2,
    )  # fmt: skip
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("loss/train", "loss/val", "accuracy/val", "miou/train", "miou/val", "lr", "images_per_s"):
        assert tag in tags["scalars"], tag
    assert {f"iou/val/{n}" for n in NAMES if n != "disc"} <= set(tags["scalars"])
    val_miou = acc.Scalars("miou/val")
    assert [e.step for e in val_miou] == [1, 2, 3]
    assert [round(e.value, 5) for e in val_miou] == [round(r["val_miou"], 5) for r in result.history]
    panels = acc.Images("val/panel")
    assert [p.step for p in panels] == [1, 2]  # the first epoch, then every 2nd
    assert (panels[0].height, panels[0].width) == (4 * 32, 3 * 32)  # 4 images, input | truth | prediction
    assert "config/text_summary" in tags["tensors"]  # the config, as text
    assert (run / "metrics.csv").exists() and (run / "curves.png").exists()  # the default stays


def test_mlflow_file_store_read_back(tmp_path, blobs, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    train, val = blobs
    run = tmp_path / "exp" / "run"
    result = fit(_config(2), run, train_data=train, val_data=val, progress=False, log=None, loggers=["mlflow"])
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("exp")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.params["train.epochs"] == "2" and found.data.params["model.n_filters"] == "4"
    history = client.get_metric_history(found.info.run_id, "miou/val")
    assert [m.step for m in history] == [1, 2]
    assert [round(m.value, 5) for m in history] == [round(r["val_miou"], 5) for r in result.history]
    for key in ("loss/train", "lr", "images_per_s", "iou/val/background"):
        assert client.get_metric_history(found.info.run_id, key), key
    artifacts = [a.path for a in client.list_artifacts(found.info.run_id, "panels")]
    assert artifacts == ["panels/val_epoch_0001.png"]


def test_mlflow_tracking_uri_is_honoured(tmp_path, blobs, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "central").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    train, _ = blobs
    fit(_config(1), tmp_path / "r" / "one", train_data=train, progress=False, log=None, loggers=["mlflow"])
    assert not (tmp_path / "r" / "one" / "mlruns").exists()
    client = MlflowClient(tracking_uri=store)
    (found,) = client.search_runs([client.get_experiment_by_name("r").experiment_id])
    assert client.get_metric_history(found.info.run_id, "loss/train")


def test_unreachable_tracking_store_is_one_error(tmp_path, blobs, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (blocker / "store").as_uri())
    train, _ = blobs
    with pytest.raises(UnetkitError, match="--log mlflow could not start"):
        fit(_config(1), tmp_path / "run", train_data=train, progress=False, log=None, loggers=["mlflow"])


def test_missing_package_named_before_training(tmp_path, blobs, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    train, _ = blobs
    with pytest.raises(UnetkitError, match=r"unetkit\[mlflow\]"):
        fit(_config(1), tmp_path / "run", train_data=train, progress=False, log=None, loggers=["mlflow"])
    assert not (tmp_path / "run").exists()  # nothing was started
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(UnetkitError, match=r"unetkit\[tensorboard\]"):
        check_available(["tensorboard"])
    with pytest.raises(ConfigError, match="--log must be one of"):
        check_available(["wandb"])
    monkeypatch.delitem(sys.modules, "tensorboard")
    monkeypatch.delitem(sys.modules, "mlflow")
    assert check_available(["tensorboard,mlflow", "csv", "mlflow"]) == ["tensorboard", "mlflow"]


def test_cli_log_missing_package_is_one_line(tmp_path, blob_folders, monkeypatch) -> None:
    from typer.testing import CliRunner

    from unetkit.cli import app

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    images, masks = blob_folders
    args = ["train", "--images", str(images), "--masks", str(masks), "--n-classes", "3", "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(app, args + ["--log", "tensorboard", "--no-progress"])
    assert r.exit_code != 0
    assert "pip install 'unetkit[tensorboard]'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()


def test_epoch_scalars_tags_and_per_class_iou() -> None:
    row = {"epoch": 3, "train_loss": 0.5, "val_miou": 0.25, "lr": 1e-3, "val_loss": None, "note": "x"}
    got = epoch_scalars(row, ["a", "b", "c"], [0.5, float("nan"), 0.0])
    assert got == {"loss/train": 0.5, "miou/val": 0.25, "lr": 1e-3, "iou/val/a": 0.5, "iou/val/c": 0.0}
    assert np.isfinite(list(got.values())).all()
