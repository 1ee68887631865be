"""Issue 12: never overwrite or mix a user's work, never ignore what they asked, one paragraph and no traceback.

Each test reproduces one case of the issue as a user meets it (files laid out as the tool writes them).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs, tiny_config, write_folder
from PIL import Image
from typer.testing import CliRunner

from unetkit import SegmentationData, fit, save_run, unet_model
from unetkit.cli import app
from unetkit.errors import ConfigError, DataError, RunError
from unetkit.fsio import atomic_write_text
from unetkit.run import CONFIG, LAST, METRICS, WEIGHTS, claim_run_folder, load_tensors

runner = CliRunner()
TINY = ["--input-size", "32", "32", "--n-filters", "4", "--batch-size", "4", "--precision", "fp32"]
TINY += ["--no-compile", "--no-progress", "--device", "cpu"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _one_paragraph(result) -> str:
    """The output of a command that failed with a user error: non-zero, a message, no traceback."""
    assert result.exit_code not in (0, 1), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    return write_folder(tmp_path / "data", *make_blobs(6))


def _train(data: tuple[Path, Path], out: Path, *extra: object):
    images, masks = data
    return invoke(
        "train", "--images", images, "--masks", masks, "--n-classes", 3, "--epochs", 1, *TINY, "--out", out, *extra
    )


def _blobs(n: int = 6) -> SegmentationData:
    return SegmentationData.from_arrays(*make_blobs(n), (32, 32, 3), n_classes=3)


# 1. never overwrite or mix work


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_writes_respect_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_train_onto_an_existing_run_is_refused_then_overwritten_whole(data, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(data, run).exit_code == 0
    before = (run / WEIGHTS).read_bytes()
    text = _one_paragraph(_train(data, run))
    assert "already holds a run" in text and "--overwrite" in text and "--resume" in text
    assert (run / WEIGHTS).read_bytes() == before  # untouched
    result = _train(data, run, "--overwrite", "--seed", 3)
    assert result.exit_code == 0, result.output
    assert (run / WEIGHTS).read_bytes() != before


def test_overwrite_deletes_the_old_run_before_the_new_one_writes(tmp_path: Path) -> None:
    """A double Ctrl-C just after the new config.json must not leave it beside the old weights."""
    run = tmp_path / "run"
    fit(tiny_config(epochs=1), run, train_data=_blobs(), progress=False, log=None)
    with pytest.raises(RunError, match="already holds a run"):
        fit(tiny_config(epochs=1), run, train_data=_blobs(), progress=False, log=None)
    claim_run_folder(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == []


def test_import_keras_into_an_existing_run_is_refused(tmp_path: Path) -> None:
    from test_keras_io import CASES, FIXTURES, MANIFEST, model_file

    from unetkit.keras_io import import_run

    keras_dir = tmp_path / "keras"
    with zipfile.ZipFile(FIXTURES / MANIFEST["archive"]) as z:
        z.extractall(keras_dir)
    run = tmp_path / "run"
    fit(tiny_config(epochs=1), run, train_data=_blobs(), progress=False, log=None)
    metrics = (run / METRICS).read_text()
    with pytest.raises(RunError, match="already holds a run"):
        import_run(model_file(keras_dir, "rgb", CASES[0][1]), run)
    assert (run / METRICS).read_text() == metrics
    import_run(model_file(keras_dir, "rgb", CASES[0][1]), run, overwrite=True)
    assert not (run / METRICS).exists() and not (run / LAST).exists()  # nothing of the old run is left


# 2. never ignore or misread what the user asked


def test_resume_applies_and_records_what_may_change_and_refuses_the_rest(data, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(data, run).exit_code == 0
    text = _one_paragraph(invoke("train", "--resume", run, "--epochs", 2, "--n-filters", 16, "--recipe", "strong"))
    assert "--n-filters" in text and "--recipe" in text and "cannot change on --resume" in text
    result = invoke("train", "--resume", run, "--epochs", 2, "--lr", 0.01, "--batch-size", 2, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "--lr 0.001 -> 0.01" in result.output
    saved = json.loads((run / CONFIG).read_text())["train"]
    assert (saved["epochs"], saved["lr"], saved["batch_size"]) == (2, 0.01, 2)
    text = _one_paragraph(invoke("train", "--resume", run, "--epochs", 1, "--no-progress"))
    assert "already has 2 finished epochs" in text
    assert json.loads((run / CONFIG).read_text())["train"]["epochs"] == 2  # still describes the run


def test_data_paths_are_absolute_and_can_be_given_again_on_resume(data, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _train((Path("data/images"), Path("data/masks")), Path("run")).exit_code == 0
    assert Path(json.loads(Path("run/config.json").read_text())["data"]["images"]).is_absolute()
    (tmp_path / "data").rename(tmp_path / "moved")
    text = _one_paragraph(invoke("train", "--resume", "run", "--epochs", 2, "--no-progress"))
    assert "comes from run/config.json" in text and "--images" in text
    result = invoke(
        "train", "--resume", "run", "--epochs", 2, "--images", "moved/images", "--masks", "moved/masks", "--no-progress"
    )
    assert result.exit_code == 0, result.output


def test_resuming_an_imported_run_points_to_init_from(tmp_path: Path) -> None:
    run = save_run(tmp_path / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), tiny_config())
    text = _one_paragraph(invoke("train", "--resume", run, "--images", "x", "--masks", "y", "--no-progress"))
    assert "--init-from" in text


def test_without_validation_the_last_epoch_is_kept(tmp_path: Path) -> None:
    result = fit(tiny_config(epochs=3, lr=0.05), tmp_path / "run", train_data=_blobs(), progress=False, log=None)
    best, _ = load_tensors(tmp_path / "run" / WEIGHTS)
    last, _ = load_tensors(tmp_path / "run" / LAST)
    assert all(torch.equal(v, last[f"model.{k}"]) for k, v in best.items())
    assert result.best_miou == pytest.approx(result.history[-1]["train_miou"])


def test_ignored_foreground_is_reported_with_the_fix(tmp_path: Path) -> None:
    images, masks = make_blobs(4, n_classes=2)
    data = write_folder(tmp_path / "data", images, masks, mask_scale=255)
    images_dir, masks_dir = data
    result = invoke(
        "train", "--images", images_dir, "--masks", masks_dir, "--n-classes", 2, "--ignore-index", 255,
        "--epochs", 1, *TINY, "--out", tmp_path / "run",
    )  # fmt: skip
    assert "class pixels: class_0 " in result.output
    assert "only ever sees class 0" in result.output and "leave out --ignore-index 255" in result.output
    assert "--mask-mode binary" in result.output


def test_presence_report_warns_of_missing_classes() -> None:
    from unetkit.data.loader import class_presence, presence_report

    masks = torch.tensor([[[0, 1], [1, 2]]])
    lines = presence_report(*class_presence(masks, 5, None), mask_mode="index")
    assert lines[0].startswith("class pixels: class_0 25.0%, class_1 50.0%")
    assert "class_3, class_4" in lines[1] and "--n-classes 3" in lines[1]


def test_channels_are_decided_from_every_image(tmp_path: Path) -> None:
    from unetkit.data.folders import guess_channels, list_images
    from unetkit.data.io import header_info

    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(6):
        mode = "L" if i < 4 else "RGB"
        Image.new(mode, (8, 8)).save(folder / f"{i}.png")
    channels, note = guess_channels([header_info(f) for f in list_images(folder)])
    assert channels == 3 and "4 of 6" in note and "--channels 1" in note


def test_detection_advice_names_the_real_mistake(tmp_path: Path) -> None:
    from unetkit.data.masks import detect_mask_mode

    with pytest.raises(DataError, match="save the masks as PNG"):
        detect_mask_mode([np.array([[0, 1, 2, 3, 200]], np.uint8)], 3, paths=["a.jpg"])
    with pytest.raises(DataError, match="--ignore-index 255"):
        detect_mask_mode([np.array([[0, 5, 20, 255]], np.uint8)], 21, paths=["voc.png"])
    photo = np.arange(256 * 8, dtype=np.int64).reshape(32, 64) % 256
    with pytest.raises(DataError, match="swapped"):
        detect_mask_mode([photo.astype(np.uint8)], 3, paths=["a.png"])
    with pytest.raises(DataError, match=r"of which 10, 11 are not class ids") as info:
        detect_mask_mode([np.arange(12, dtype=np.uint8)[None]], 10)
    with pytest.raises(DataError) as info:
        detect_mask_mode([np.array([[0, 7, 40]], np.uint8)], 5, evaluating=True)
    assert "--ignore-index" not in str(info.value) and "--n-classes" not in str(info.value)


def test_one_mistake_in_many_files_is_listed_once(tmp_path: Path) -> None:
    from unetkit.data.folders import load_pairs, pair_files

    images, masks = make_blobs(6)
    write_folder(tmp_path / "d", images, masks + 3)  # ids 3..5 for n_classes=3: one mistake, every file
    pairs = pair_files(tmp_path / "d" / "images", tmp_path / "d" / "masks")
    with pytest.raises(DataError) as info:
        load_pairs(pairs, (32, 32, 3), n_classes=3, mask_mode="index")
    text = str(info.value)
    assert text.count("holds values") == 1 and "the same in 5 more" in text and "--skip-bad" in text


# 3. one paragraph, never a traceback


def test_user_text_is_shown_literally(tmp_path: Path) -> None:
    text = _one_paragraph(
        invoke("train", "--images", "data/br[red]ack", "--masks", "m[/b]", "--n-classes", 2, "--out", tmp_path / "r")
    )
    assert "data/br[red]ack" in text
    assert "[r, g, b]" in runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output


def test_log_lines_stay_whole_when_redirected(data, tmp_path: Path) -> None:
    result = _train(data, tmp_path / "run")
    line = next(x for x in result.output.splitlines() if x.startswith("train: epochs="))
    assert "recipe=" in line  # one line, not wrapped at 80 columns


def test_ctrl_c_is_acknowledged_at_once(capsys) -> None:
    from unetkit.train import _SigintGuard

    with _SigintGuard() as guard:
        guard._handle(2, None)
        assert guard.hit
    assert "Ctrl-C again to abort now" in capsys.readouterr().err


def test_fit_with_too_few_classes_names_the_ids() -> None:
    images, masks = make_blobs(4)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    config = tiny_config(epochs=1)
    config = config.__class__(
        model=config.model.__class__(input_size=(32, 32, 3), n_filters=4, n_classes=2), train=config.train
    )
    with pytest.raises(DataError, match="class ids 2.*n_classes=2"):
        fit(config, None, train_data=data, progress=False, log=None)


def test_nproc_batch_size_is_one_message_before_torchrun(data, tmp_path: Path, monkeypatch) -> None:
    import unetkit.distributed as distributed

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("torchrun was started"))
    text = _one_paragraph(_train(data, tmp_path / "run", "--nproc", 2, "--batch-size", 7))
    assert "does not divide evenly over 2 processes" in text


# 4. long jobs


def test_recursive_pairs_by_the_path_inside_the_folders(tmp_path: Path) -> None:
    from unetkit.data.folders import pair_files

    for city in ("c1", "c2"):
        for side in ("images", "masks"):
            (tmp_path / side / city).mkdir(parents=True)
            Image.new("L", (4, 4)).save(tmp_path / side / city / "0001.png")
    with pytest.raises(DataError, match="--recursive"):
        pair_files(tmp_path / "images", tmp_path / "masks")
    pairs = pair_files(tmp_path / "images", tmp_path / "masks", recursive=True)
    assert [(i.parent.name, m.parent.name) for i, m in pairs] == [("c1", "c1"), ("c2", "c2")]


def test_skip_bad_trains_without_the_bad_pair_and_says_so(data, tmp_path: Path) -> None:
    images, masks = data
    (images / "img2.png").write_bytes(b"not a png")
    text = _one_paragraph(_train(data, tmp_path / "r1"))
    assert "img2.png" in text and "--skip-bad" in text
    result = _train(data, tmp_path / "r2", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped (--skip-bad): 1 of 6" in result.output and "img2.png" in result.output
    assert "training unet on 5 images" in result.output


def test_webp_and_gif_are_training_images(tmp_path: Path) -> None:
    from unetkit.data.folders import list_images

    Image.new("RGB", (4, 4)).save(tmp_path / "a.webp")
    Image.new("P", (4, 4)).save(tmp_path / "b.gif")
    assert [p.name for p in list_images(tmp_path)] == ["a.webp", "b.gif"]


# 5. help, defaults and the Python API


def test_bad_sizes_and_option_names(data, tmp_path: Path) -> None:
    assert "--n-filters must be >= 1" in _one_paragraph(_train(data, tmp_path / "r", "--n-filters", 0))
    assert "--channels must be >= 1" in _one_paragraph(_train(data, tmp_path / "r", "--channels", 0))
    text = _one_paragraph(_train(data, tmp_path / "r", "--input-size", 0, 0))
    assert "must be positive" in text and "divisible" not in text
    text = _one_paragraph(_train(data, tmp_path / "r", "--val-images", data[0]))
    assert "--val-images and --val-masks" in text and "val_images" not in text


def test_train_help_groups_options_and_shows_defaults() -> None:
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    panels = [text.index(f"─ {name} ") for name in ("Data", "Model", "Optimisation", "Runtime")]
    assert panels == sorted(panels)
    assert "--input-size" in text and "H W" in text and "<int,int>" not in text.replace(" ", "")
    for default in ("[default: (40)]", "[default: (32; strong: 8)]", "[default: (32)]", "[default: (96 128)]"):
        assert default in text, default


def test_version() -> None:
    from unetkit import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_python_api_repr_colour_masks_mean_iou_and_given_model(tmp_path: Path) -> None:
    from unetkit.config import ModelConfig, RunConfig, TrainConfig
    from unetkit.evaluate import evaluate

    data = _blobs(4)
    assert repr(data) == "SegmentationData(4 images, 3x32x32 uint8, masks torch.uint8, on cpu)"
    images, masks = make_blobs(4)
    carla = np.zeros((*masks.shape, 3), np.uint8)
    carla[..., 0] = masks  # the tutorial's masks: the id in the red channel
    coloured = SegmentationData.from_arrays(images, carla, (32, 32, 3), n_classes=23, mask_mode="channels")
    assert torch.equal(coloured.masks, data.masks)
    model = unet_model((32, 32, 3), n_filters=4, n_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = RunConfig(
        model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3),
        train=TrainConfig(epochs=1, batch_size=4, precision="fp32", compile="off", device="cpu"),
    )
    result = fit(config, tmp_path / "run", train_data=data, model=model, progress=False, log=None)
    assert result.model is model and any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="config.model describes"):
        fit(config, None, train_data=data, model=unet_model((32, 32, 3), n_filters=8, n_classes=3), log=None)
    folder = write_folder(tmp_path / "d", images, masks)
    report = evaluate(tmp_path / "run", *folder)
    assert report.mean_iou == report.metrics.mean_iou


def test_no_command_answers_bad_input_with_a_traceback(tmp_path: Path, data) -> None:
    """The README's promise: non-zero with a one-paragraph message on a user error, for every command."""
    (tmp_path / "x.onnx").write_bytes(b"onnx")
    (tmp_path / "afile").write_text("")
    run = tmp_path / "run"
    assert _train(data, run).exit_code == 0
    images, masks = data
    cases = [
        ["info", "--run", tmp_path / "x.onnx"],
        ["datasets", "synthetic", "--out", tmp_path / "afile", "--count", 1],
        ["evaluate", run, "--images", images, "--masks", masks, "--json", tmp_path / "afile" / "m.json"],
        ["evaluate", run, "--images", masks, "--masks", images],
        ["train", "--images", images, "--masks", masks, "--n-classes", 3, *TINY, "--out", run],
        ["train", "--images", images, "--masks", masks, "--n-classes", 3, *TINY, "--out", tmp_path / "afile"],
        ["train", "--images", "no[/b]dir", "--masks", masks, "--n-classes", 3, "--out", tmp_path / "r"],
        ["train", "--resume", tmp_path / "afile"],
        ["train", "--resume", run, "--epochs", 0],
        ["import-keras", tmp_path / "afile", "--out", run],
        ["export", run, "--out", tmp_path / "afile" / "m.onnx", "--format", "keras"],
        ["compare", "--images", images, "--masks", masks, "--n-classes", 3, *TINY, "--out", tmp_path / "c"],
        ["demo", "--out", run, "--train-count", 2, "--val-count", 1, "--epochs", 1],
    ]
    for args in cases:
        result = invoke(*args)
        assert result.exit_code not in (0, 1), (args, result.output)
        assert isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert "Traceback" not in result.output, args
