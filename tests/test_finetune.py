"""Building on a run: --init-from copies weights (the head re-initialised when classes change), freezing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import make_blobs, tiny_config

from unetkit import SegmentationData, fit
from unetkit.config import ModelConfig
from unetkit.errors import RunError
from unetkit.finetune import init_from, set_encoder_frozen
from unetkit.run import build_model, load_run, load_tensors


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ft")
    images, masks = make_blobs(16, seed=3)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    fit(tiny_config(epochs=1), root / "src", train_data=data, progress=False, log=None)
    return root / "src"


def _two_class_data() -> SegmentationData:
    images, masks = make_blobs(16, n_classes=2, seed=4)
    return SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=2)


def test_fine_tuned_run_with_a_new_head(tmp_path, source) -> None:
    base = tiny_config(epochs=1, init_from=str(source), freeze_encoder_epochs=1)
    config = replace(base, model=replace(base.model, n_classes=2), class_names=None, palette=None)
    config = type(config).from_dict(config.to_dict())  # names and palette for 2 classes
    lines: list[str] = []
    fit(config, tmp_path / "ft", train_data=_two_class_data(), progress=False, log=lines.append)
    said = "\n".join(lines)
    assert "re-initialised" in said and "3 classes there, 2 here" in said and "encoder frozen" in said
    old, new = load_run(source).model.state_dict(), load_run(tmp_path / "ft").model.state_dict()
    assert new["conv10.weight"].shape[0] == 2 and old["conv10.weight"].shape[0] == 3
    # the encoder was frozen for the one epoch: exactly the source's weights
    for key in (k for k in old if k.startswith("encoder.")):
        assert torch.equal(old[key], new[key]), key
    # the decoder trained from the source's weights
    assert not torch.equal(old["conv9.weight"], new["conv9.weight"])
    # a new run: its own folder and a fresh optimizer, nothing carried over from the source's state
    _, meta = load_tensors(tmp_path / "ft" / "last.safetensors")
    assert meta["epoch"] == 1
    assert load_run(tmp_path / "ft").config.train.init_from == str(source)


def test_encoder_trains_after_the_frozen_epochs(tmp_path, source) -> None:
    images, masks = make_blobs(16, seed=3)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    lines: list[str] = []
    config = tiny_config(epochs=2, init_from=str(source), freeze_encoder_epochs=1)
    result = fit(config, None, train_data=data, progress=False, log=lines.append)
    assert "encoder unfrozen from epoch 2" in lines
    old = load_run(source).model.state_dict()
    assert not torch.equal(old["encoder.0.conv1.weight"], result.model.state_dict()["encoder.0.conv1.weight"])


def test_same_classes_copies_every_layer(source) -> None:
    model = build_model(tiny_config().model)
    lines: list[str] = []
    assert init_from(model, source, log=lines.append) == []
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), load_run(source).model.state_dict().values())
    )
    assert "all layers" in lines[0]


def test_other_architecture_is_a_clear_error(source, tmp_path) -> None:
    wider = build_model(ModelConfig(input_size=(32, 32, 3), n_filters=8, n_classes=3))
    with pytest.raises(RunError, match="n_filters"):
        init_from(wider, source)
    bn = build_model(ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3, batch_norm=True))
    with pytest.raises(RunError, match="architectures differ"):
        init_from(bn, source)
    with pytest.raises(RunError, match="does not exist"):
        init_from(wider, tmp_path / "nowhere")
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text("{}")
    with pytest.raises(RunError, match="is an ensemble"):
        init_from(wider, tmp_path / "ens")


def test_init_from_keras_file(tmp_path) -> None:
    pytest.importorskip("h5py")
    from unetkit.keras_io import export_keras_weights

    torch.manual_seed(5)
    keras_model = build_model(ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3))
    path = export_keras_weights(keras_model, tmp_path / "seed.weights.h5")
    target = build_model(ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=5))
    reinit = init_from(target, path, log=lambda _m: None)
    assert sorted(reinit) == ["conv10.bias", "conv10.weight"]
    assert torch.equal(target.encoder[0].conv1.weight, keras_model.encoder[0].conv1.weight)


def test_freeze_encoder_stops_gradients_and_batch_norm_statistics() -> None:
    model = build_model(ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3, batch_norm=True)).train()
    set_encoder_frozen(model, True)
    bn = model.encoder[0].bn1
    before = bn.running_mean.clone()
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.conv10.weight.grad is not None
    assert torch.equal(bn.running_mean, before) and not bn.training
    set_encoder_frozen(model, False)
    assert bn.training and all(p.requires_grad for p in model.encoder.parameters())


def test_cli_freeze_needs_init_from(tmp_path, blob_folders) -> None:
    from typer.testing import CliRunner

    from unetkit.cli import app

    images, masks = blob_folders
    args = ["train", "--images", str(images), "--masks", str(masks), "--n-classes", "3", "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(app, args + ["--freeze-encoder"])
    assert r.exit_code != 0 and "--init-from" in r.output
