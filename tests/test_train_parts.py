"""The parts fit() is built from: TrainState, train_one_epoch, validate, resume_run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, tiny_config, write_folder

from unetkit import SegmentationData, fit
from unetkit.compare import score_model
from unetkit.errors import ConfigError, RunError
from unetkit.evaluate import evaluate
from unetkit.run import LAST, WEIGHTS, build_model, load_tensors
from unetkit.train import (
    TRAIN_COLUMNS,
    NonFiniteLoss,
    Plateau,
    TrainingInterrupted,
    TrainState,
    _loss_fn,
    build_optimizer,
    resume_run,
    train_one_epoch,
    validate,
)


@pytest.fixture(scope="module")
def blobs() -> tuple[SegmentationData, SegmentationData]:
    images, masks = make_blobs(24, seed=4)
    return SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3).split(0.25, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, blobs):
    train, val = blobs
    run = tmp_path_factory.mktemp("parts") / "run"
    result = fit(tiny_config(epochs=3, lr=3e-3), run, train_data=train, val_data=val, progress=False, log=None)
    return run, result


def _parts(config, data):
    torch.manual_seed(0)
    model = build_model(config.model)
    return model, build_optimizer(model, config), _loss_fn(config, data, torch.device("cpu"))


def test_train_state_round_trips_through_json() -> None:
    state = TrainState(
        epoch=3,
        best=0.5,
        best_epoch=2,
        since_best=1,
        plateau=Plateau(0.5, 1, 0.5),
        history=[{"epoch": 1, "train_loss": 0.7, "val_miou": None}],
        budget={"spent": 12.5, "warmup_ended_at": None, "seconds": 60.0},
        ema_updates=6,
    )
    assert TrainState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    checkpoint = state.to_dict(history=False)  # what last.safetensors holds: the rows live in metrics.csv
    assert "history" not in checkpoint and TrainState.from_dict(checkpoint).history == []
    plain = TrainState(epoch=1).to_dict()
    assert "budget" not in plain and "ema_updates" not in plain  # accounting of what the run does not use
    old = {"epoch": 2, "best": 0.25, "since_best": 0, "plateau": {"best": 0.25, "bad": 0, "factor": 1.0}}
    assert TrainState.from_dict(old) == TrainState(epoch=2, best=0.25, plateau=Plateau(0.25, 0, 1.0))


def test_train_state_records_the_best_epoch_and_the_plateau() -> None:
    state = TrainState()
    scores = [0.3, 0.5, 0.4, 0.45, 0.5]
    best = [state.record({"epoch": i + 1}, s, True, "plateau") for i, s in enumerate(scores)]
    assert best == [True, True, False, False, False]
    assert (state.epoch, state.best, state.best_epoch, state.since_best) == (5, 0.5, 2, 3)
    assert state.plateau.factor == 0.5 and len(state.history) == 5  # three epochs without progress
    unvalidated = TrainState()
    assert all(unvalidated.record({"epoch": i + 1}, s, False, "constant") for i, s in enumerate(scores))
    assert unvalidated.best_epoch == 5 and unvalidated.plateau.factor == 1.0


def test_train_one_epoch_returns_the_losses_and_moves_the_weights(blobs) -> None:
    train, _ = blobs
    config = tiny_config(batch_size=6)
    model, opt, loss_fn = _parts(config, train)
    before = [p.detach().clone() for p in model.parameters()]
    lines: list[tuple[int, str]] = []
    stats = train_one_epoch(
        model, opt, train, loss_fn, config, lr_scale=0.5, progress=lambda done, line: lines.append((done, line))
    )
    assert set(TRAIN_COLUMNS) <= set(stats) and stats["images"] == len(train) == 18
    assert 0 < stats["train_loss"] < 5 and 0 <= stats["train_miou"] <= 1 and stats["images_per_s"] > 0
    assert stats["lr"] == pytest.approx(0.5 * config.train.lr)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert lines[-1][0] == 3 and lines[-1][1].startswith("loss ")  # 18 images, batch 6: the last step reported
    assert train_one_epoch(model, opt, train, loss_fn, config, epoch=1, max_steps=1)["images"] == 6


def test_train_one_epoch_stops_on_interrupt_and_on_a_non_finite_loss(blobs) -> None:
    train, _ = blobs
    config = tiny_config()
    model, opt, loss_fn = _parts(config, train)
    with pytest.raises(TrainingInterrupted, match="during epoch 3"):
        train_one_epoch(model, opt, train, loss_fn, config, epoch=2, interrupted=lambda: True, run_dir=Path("r"))

    def nan_loss(logits, target):
        return loss_fn(logits, target) * float("nan")

    with pytest.raises(NonFiniteLoss, match="epoch 1, step 1"):
        train_one_epoch(model, opt, train, nan_loss, config)
    skipping = tiny_config(nan_policy="skip")
    with pytest.raises(NonFiniteLoss, match="every step of epoch 1"):
        train_one_epoch(model, opt, train, nan_loss, skipping)


def test_fit_validation_is_validate_on_the_best_weights(trained, blobs) -> None:
    run, result = trained
    _, val = blobs
    row = result.history[result.best_epoch - 1]
    assert row["val_miou"] == max(r["val_miou"] for r in result.history) == result.best_miou
    assert load_tensors(run / WEIGHTS)[1]["epoch"] == result.best_epoch == load_tensors(run / LAST)[1]["best_epoch"]
    config = tiny_config(epochs=3, lr=3e-3)
    scored = validate(result.model, val, config, device="cpu", loss_fn=_loss_fn(config, val, torch.device("cpu")))
    m = scored.metrics()
    assert m.mean_iou == pytest.approx(row["val_miou"]) and m.pixel_accuracy == pytest.approx(row["val_accuracy"])
    assert scored.loss == pytest.approx(row["val_loss"], rel=1e-5)
    cm, bf = score_model(result.model, val, config, tolerance=1)  # compare's scoring is the same loop
    assert torch.equal(cm.matrix, scored.matrix.matrix) and 0 <= bf.compute() <= 1


def test_validate_agrees_with_evaluate_on_the_same_images(trained, tmp_path) -> None:
    run, result = trained
    images, masks = make_blobs(6, seed=9)
    folder = write_folder(tmp_path / "data", images, masks)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    scored = validate(result.model, data, tiny_config(), device="cpu")
    report = evaluate(run, *folder, device="cpu")
    assert scored.loss is None and scored.boundary is None
    assert (report.metrics.matrix == scored.matrix.matrix.cpu().numpy()).all()
    assert report.mean_iou == pytest.approx(scored.metrics().mean_iou)


def test_resume_run_restores_the_state_and_the_weights(trained, blobs) -> None:
    run, result = trained
    train, _ = blobs
    config = tiny_config(epochs=5)
    model, opt, _ = _parts(config, train)
    state, tensors = resume_run(run, model, opt, config)
    assert state.epoch == 3 and len(state.history) == 3 and state.best_epoch == result.best_epoch
    assert state.history[-1]["train_loss"] == pytest.approx(result.history[-1]["train_loss"], rel=1e-5)
    assert all(torch.equal(v, tensors[f"model.{k}"]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="already has 3 finished epochs"):
        resume_run(run, model, opt, tiny_config(epochs=2))
    with pytest.raises(RunError, match="nothing to resume"):
        resume_run(run.parent / "none", model, opt, config)


@pytest.mark.parametrize("method", ["median-frequency", "sqrt-median-frequency"])
def test_named_class_weights_come_from_the_training_pixels(blobs, method: str) -> None:
    from unetkit.losses import class_weights

    train, _ = blobs
    config = tiny_config(epochs=1, class_weights=method)
    loss = _loss_fn(config, train, torch.device("cpu"))
    expected = class_weights(train.class_counts(config.model.n_classes), method)
    assert loss.weight is not None and torch.equal(loss.weight, expected)
    assert method == "median-frequency" or torch.allclose(
        expected**2, class_weights(train.class_counts(config.model.n_classes), "median-frequency")
    )
