"""Importing the seed's trained Keras U-Net: numerically equal to Keras, with clear errors otherwise.

The fixtures (tests/fixtures/keras/, written by tests/fixtures/make_keras_fixtures.py) hold the
seed's Keras model at a tiny size in every format Keras writes, with Keras's own logits. Only the
last test needs Keras itself and is skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from unetkit.errors import UnetkitError
from unetkit.keras_io import (
    KerasExportError,
    KerasImportError,
    export_keras_weights,
    import_keras,
    read_keras_weights,
)
from unetkit.model import fcn_model, layer_summary, unet_model

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
VARIANTS = MANIFEST["variants"]
CASES = [(variant, fmt) for variant, spec in VARIANTS.items() for fmt in spec["files"]]
REL_TOL = 1e-4


@pytest.fixture(scope="session")
def keras_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model files, unpacked from models.zip (kept zipped: HDF5 group headers are mostly padding)."""
    out = tmp_path_factory.mktemp("keras_models")
    with zipfile.ZipFile(FIXTURES / MANIFEST["archive"]) as z:
        z.extractall(out)
    return out


def model_file(keras_dir: Path, variant: str, fmt: str) -> Path:
    return keras_dir / VARIANTS[variant]["files"][fmt]


def reference(variant: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(FIXTURES / VARIANTS[variant]["npz"])
    return data["inputs"], data["logits"]


def torch_logits(model: torch.nn.Module, inputs_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(inputs_nhwc).permute(0, 3, 1, 2))
    return out.permute(0, 2, 3, 1).numpy()


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


# ----------------------------------------------------------------------------- numerical equality


@pytest.mark.parametrize(("variant", "fmt"), CASES)
def test_logits_match_keras(keras_dir: Path, variant: str, fmt: str) -> None:
    spec = VARIANTS[variant]
    model, settings = import_keras(model_file(keras_dir, variant, fmt))
    h, w, c = spec["input_size"]
    has_config = fmt != "weights.h5"  # a bare .weights.h5 does not know the input size
    assert settings == {
        "n_filters": spec["n_filters"],
        "n_classes": spec["n_classes"],
        "depth": 5,
        "input_size": (h, w, c) if has_config else (96, 128, c),
    }
    assert not model.training
    inputs, logits = reference(variant)
    got = torch_logits(model, inputs)
    assert got.shape == logits.shape
    assert rel_error(got, logits) < REL_TOL
    np.testing.assert_array_equal(got.argmax(-1), logits.argmax(-1))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_format_reads_the_same_tensors_in_the_same_order(keras_dir: Path, variant: str) -> None:
    files = VARIANTS[variant]["files"]
    reads = {fmt: read_keras_weights(model_file(keras_dir, variant, fmt)) for fmt in files}
    first = reads["keras"]
    assert len(first) == 24  # 20 Conv2D + 4 Conv2DTranspose
    assert all(set(weights) == {"kernel", "bias"} for _, weights in first)
    assert all(np.abs(weights["bias"]).min() > 0 for _, weights in first)  # biases really are trained
    for fmt, layers in reads.items():
        assert len(layers) == len(first), fmt
        for (_, a), (_, b) in zip(layers, first):
            for key in ("kernel", "bias"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=fmt)


def test_bare_weights_h5_uses_natural_order(keras_dir: Path) -> None:
    """h5py lists conv2d, conv2d_1, conv2d_10, ...; the reader must order conv2d_2 before conv2d_10."""
    names = [name for name, _ in read_keras_weights(model_file(keras_dir, "rgb", "weights.h5"))]
    convs = [int(n.rsplit("_", 1)[1]) for n in names if n.startswith("conv2d_") and "transpose" not in n]
    assert convs == sorted(convs)
    kernels = [w["kernel"].shape for _, w in read_keras_weights(model_file(keras_dir, "rgb", "weights.h5"))]
    assert kernels[:3] == [(3, 3, 3, 2), (3, 3, 2, 2), (3, 3, 2, 4)]
    assert kernels[10] == (3, 3, 16, 32)  # the first Conv2DTranspose: (h, w, out, in)


def test_input_size_argument_and_config(keras_dir: Path) -> None:
    _, settings = import_keras(model_file(keras_dir, "gray", "weights.h5"), input_size=(32, 48))
    assert settings["input_size"] == (32, 48, 1)
    _, settings = import_keras(model_file(keras_dir, "gray", "keras"), input_size=(64, 64))
    assert settings["input_size"] == (32, 32, 1)  # the file's own config wins
    with pytest.raises(KerasImportError, match="divisible by 16"):
        import_keras(model_file(keras_dir, "gray", "weights.h5"), input_size=(30, 32))


def test_legacy_weights_only_h5(keras_dir: Path, tmp_path: Path) -> None:
    """TF2's ``save_weights('x.h5')``: the model_weights group at the root, no config."""
    path = tmp_path / "weights_only.h5"
    with h5py.File(model_file(keras_dir, "rgb", "tf2-h5"), "r") as src, h5py.File(path, "w") as dst:
        for key, value in src["model_weights"].attrs.items():
            dst.attrs[key] = value
        for name in src["model_weights"]:
            src.copy(src["model_weights"][name], dst, name)
    model, settings = import_keras(path)
    assert settings["input_size"] == (96, 128, 3)
    inputs, logits = reference("rgb")
    assert rel_error(torch_logits(model, inputs), logits) < REL_TOL


def test_layer_summary_matches_keras_seed_summary() -> None:
    keras_rows = json.loads((FIXTURES / "seed_summary.json").read_text())
    ours = layer_summary(unet_model())
    assert len(ours) == len(keras_rows)
    for row, k in zip(ours, keras_rows):
        assert (row.name, row.kind, list(row.output_shape), row.params) == (
            k["name"],
            k["class_name"],
            k["output_shape"],
            k["params"],
        )
    assert sum(k["params"] for k in keras_rows) == 8_640_471


# ------------------------------------------------------------------------------------------ errors


def seed_kernels(c: int = 3, f: int = 4, k: int = 5, depth: int = 5) -> list[tuple[str, tuple[int, ...]]]:
    """(Keras 3 key, kernel shape) of the seed's layers with weights, written out independently."""
    fs = [f * 2**i for i in range(depth)]
    convs, ups, cin = [], [], c
    for ch in fs:
        convs += [(3, 3, cin, ch), (3, 3, ch, ch)]
        cin = ch
    for level in reversed(range(depth - 1)):
        ups.append((3, 3, fs[level], fs[level + 1]))
        convs += [(3, 3, 2 * fs[level], fs[level]), (3, 3, fs[level], fs[level])]
    convs += [(3, 3, f, f), (1, 1, f, k)]
    return [(f"conv2d_{i}" if i else "conv2d", s) for i, s in enumerate(convs)] + [
        (f"conv2d_transpose_{i}" if i else "conv2d_transpose", s) for i, s in enumerate(ups)
    ]


def write_keras3_weights(path: Path, layers: list[tuple[str, tuple[int, ...]]]) -> Path:
    with h5py.File(path, "w") as f:
        for key, shape in layers:
            v = f.create_group(f"layers/{key}/vars")
            v.attrs["name"] = key
            out = shape[2] if key.startswith("conv2d_transpose") else shape[-1]
            v.create_dataset("0", data=np.zeros(shape, np.float32))
            v.create_dataset("1", data=np.zeros(out, np.float32))
    return path


def test_bogus_weights_file_of_the_right_shape_imports(tmp_path: Path) -> None:
    model, settings = import_keras(write_keras3_weights(tmp_path / "ok.weights.h5", seed_kernels()))
    assert settings == {"n_filters": 4, "n_classes": 5, "input_size": (96, 128, 3), "depth": 5}


def test_wrong_kernel_shape_names_the_layer(tmp_path: Path) -> None:
    layers = dict(seed_kernels())
    layers["conv2d_3"] = (3, 3, 8, 16)
    path = write_keras3_weights(tmp_path / "bad.weights.h5", list(layers.items()))
    with pytest.raises(
        KerasImportError,
        match=r"layer conv2d_3: kernel \(3,3,8,16\) but the seed's "
        r"U-Net expects \(3,3,8,8\)",
    ) as info:
        import_keras(path)
    assert isinstance(info.value, UnetkitError)
    assert "cblock2's second conv" in str(info.value)


def test_missing_and_extra_layers(tmp_path: Path) -> None:
    layers = seed_kernels()
    short = [(key, s) for key, s in layers if key != "conv2d_19"]
    with pytest.raises(KerasImportError, match="19 Conv2D and 4 Conv2DTranspose"):
        import_keras(write_keras3_weights(tmp_path / "short.weights.h5", short))
    extra = layers + [("batch_normalization", (3, 3, 4, 4))]
    with pytest.raises(KerasImportError, match="layer batch_normalization: a BatchNormalization"):
        import_keras(write_keras3_weights(tmp_path / "extra.weights.h5", extra))


def test_legacy_file_ending_early_names_what_is_missing(keras_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "short.h5"
    shutil.copy(model_file(keras_dir, "gray", "tf2-h5"), path)
    with h5py.File(path, "r+") as f:
        names = [n for n in f["model_weights"].attrs["layer_names"] if n not in (b"conv2d_19", "conv2d_19")]
        f["model_weights"].attrs["layer_names"] = np.array(names, dtype="S")
    with pytest.raises(KerasImportError, match="ends after layer conv2d_18; .* conv10"):
        import_keras(path)


def edit_archive_config(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    return dst


def test_config_mismatches_are_caught(keras_dir: Path, tmp_path: Path) -> None:
    src = model_file(keras_dir, "rgb", "keras")

    def softmax_head(config: dict) -> None:
        config["config"]["layers"][-1]["config"]["activation"] = "softmax"

    def swapped_concat(config: dict) -> None:
        concat = next(e for e in config["config"]["layers"] if e["class_name"] == "Concatenate")
        args = concat["inbound_nodes"][0]["args"][0]
        args.reverse()

    with pytest.raises(KerasImportError, match="activation 'softmax' \\(expected 'linear'\\)"):
        import_keras(edit_archive_config(src, tmp_path / "a.keras", softmax_head))
    with pytest.raises(KerasImportError, match=r"concatenates \[dropout_\d+, conv2d_transpose_4\]"):
        import_keras(edit_archive_config(src, tmp_path / "b.keras", swapped_concat))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"definitely not a model\n", "neither an HDF5 file nor a zip archive"),
        (None, "not a Keras 3 .keras file"),
        ("hdf5", "without Keras weights"),
    ],
)
def test_files_that_are_not_keras(tmp_path: Path, content: bytes | str | None, match: str) -> None:
    path = tmp_path / "model.keras"
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hi")
    elif content == "hdf5":
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.arange(3))
    else:
        path.write_bytes(content)
    with pytest.raises(KerasImportError, match=match):
        import_keras(path)
    with pytest.raises(KerasImportError):
        read_keras_weights(path)


def test_damaged_files(keras_dir: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(model_file(keras_dir, "gray", "tf2-h5").read_bytes()[:4096])
    with pytest.raises(KerasImportError, match="truncated.h5"):
        import_keras(truncated)

    def garbage(config: dict) -> None:
        config.clear()

    emptied = edit_archive_config(model_file(keras_dir, "gray", "keras"), tmp_path / "g.keras", garbage)
    with pytest.raises(KerasImportError, match="has no list of layers"):
        import_keras(emptied)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KerasImportError, match="no such file"):
        import_keras(tmp_path / "nope.h5")
    with pytest.raises(KerasImportError, match="SavedModel"):
        import_keras(tmp_path)


# ------------------------------------------------------------------------------------------ export


def test_export_round_trip(keras_dir: Path, tmp_path: Path) -> None:
    original = model_file(keras_dir, "rgb", "keras")
    model, _ = import_keras(original)
    out = export_keras_weights(model, tmp_path / "exported.weights.h5")
    for (_, a), (_, b) in zip(read_keras_weights(out), read_keras_weights(original), strict=True):
        for key in ("kernel", "bias"):
            np.testing.assert_array_equal(a[key], b[key])
    again, settings = import_keras(out, input_size=(32, 32))
    assert settings["input_size"] == (32, 32, 3)
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_export_of_a_fresh_model_round_trips(tmp_path: Path) -> None:
    model = unet_model((32, 32, 1), 3, 4).eval()
    path = export_keras_weights(model, tmp_path / "w.weights.h5")
    again, settings = import_keras(path, input_size=(32, 32))
    assert settings == {"n_filters": 3, "n_classes": 4, "input_size": (32, 32, 1), "depth": 5}
    for p, q in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_export_refuses_what_keras_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(KerasExportError, match="batch normalisation"):
        export_keras_weights(unet_model((32, 32, 3), 2, 3, batch_norm=True), tmp_path / "x.weights.h5")
    with pytest.raises(KerasExportError, match="FCN"):
        export_keras_weights(fcn_model((32, 32, 3), 2, 3), tmp_path / "x.weights.h5")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_keras_loads_exported_weights(keras_dir: Path, tmp_path: Path) -> None:
    """The seed's own Keras code loads the export with load_weights and gives unetkit's logits."""
    keras = pytest.importorskip("keras")
    spec = importlib.util.spec_from_file_location(
        "keras_reference", Path(__file__).parents[1] / "benchmarks" / "keras_reference.py"
    )
    assert spec is not None and spec.loader is not None
    kr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kr)

    model, _ = import_keras(model_file(keras_dir, "rgb", "keras"))
    path = export_keras_weights(model, tmp_path / "unetkit.weights.h5")
    keras_model = kr.compile_seed(kr.unet_model((32, 32, 3), 2, 5))
    keras_model.load_weights(path)
    inputs, logits = reference("rgb")
    got = keras.ops.convert_to_numpy(keras_model(inputs, training=False))
    original = kr.compile_seed(kr.unet_model((32, 32, 3), 2, 5))
    original.load_weights(model_file(keras_dir, "rgb", "keras"))
    for exported, saved in zip(keras_model.weights, original.weights):  # the very weights Keras saved
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(exported), keras.ops.convert_to_numpy(saved))
    # the fixture's logits were recorded on another CPU, whose kernels round differently
    assert rel_error(got, logits) < REL_TOL
    want = torch_logits(model, inputs)
    assert rel_error(got, want) < REL_TOL


# ----------------------------------------------------------------------------- the CLI


def test_import_keras_cli_writes_a_run_that_predicts(keras_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from unetkit.cli import app
    from unetkit.run import load_run

    names = tmp_path / "names.json"
    names.write_text(json.dumps([f"c{i}" for i in range(5)]))
    src = model_file(keras_dir, "rgb", CASES[0][1])
    result = CliRunner().invoke(
        app, ["import-keras", str(src), "--out", str(tmp_path / "run"), "--class-names", str(names)]
    )
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "run")
    assert run.config.class_names == [f"c{i}" for i in range(5)]
    inputs, logits = reference("rgb")
    assert rel_error(torch_logits(run.model, inputs), logits) < REL_TOL
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((inputs[0] * 255).clip(0, 255).astype(np.uint8)).save(image)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(image), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "x.png").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["a", "b"]))
    result = CliRunner().invoke(
        app, ["import-keras", str(src), "--out", str(tmp_path / "r2"), "--class-names", str(bad)]
    )
    assert result.exit_code != 0 and "5" in result.output
