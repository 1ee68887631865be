"""Label maps: merge, ignore, reduce_zero_label, rename; applied to ids and to an import."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unetkit.data.classes import ClassList, read_classes, write_classes
from unetkit.data.labelmap import apply_label_map, load_label_map, parse_label_map
from unetkit.errors import DataError

SOURCE = ClassList(["background", "car", "truck", "bus", "sky", "person"])


def test_merge_ignore_rename():
    lm = parse_label_map({"vehicle": ["car", "truck", "bus"], "ignore": ["sky"], "rename": {"person": "pedestrian"}})
    mapped = apply_label_map(lm, SOURCE)
    assert mapped.classes.names == ["background", "vehicle", "pedestrian"]
    assert mapped.classes.ignore_index == 255
    assert mapped.lut == [0, 1, 1, 1, 255, 2]
    ids = np.array([[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(mapped.map_ids(ids), [[0, 1, 1], [1, 255, 2]])
    assert mapped.classes.colors == [SOURCE.colors[0], SOURCE.colors[1], SOURCE.colors[5]]


def test_reduce_zero_label_and_ids():
    mapped = apply_label_map(parse_label_map({"reduce_zero_label": True, "ignore": [4]}), SOURCE)
    assert mapped.classes.names == ["car", "truck", "bus", "person"]
    assert mapped.lut == [255, 0, 1, 2, 255, 3]
    src = ClassList(["a", "b"], ignore_index=200)
    mapped = apply_label_map(parse_label_map({"merge": {"ab": ["a", "b"]}}), src)
    np.testing.assert_array_equal(mapped.map_ids(np.array([0, 1, 200]), 200), [0, 0, 200])


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"vehicle": ["car", "plane"]}))
    with pytest.raises(DataError, match=r"map.json: no class named 'plane'"):
        apply_label_map(load_label_map(path), SOURCE)
    path.write_text("{nope")
    with pytest.raises(DataError, match="map.json is not readable JSON"):
        load_label_map(path)
    with pytest.raises(DataError, match="unknown key 'colour'"):
        parse_label_map({"colour": "red"})
    with pytest.raises(DataError, match="does not cover"):
        apply_label_map(parse_label_map({}), SOURCE).map_ids(np.array([9]))


def test_classes_file_roundtrip_and_errors(tmp_path):
    path = tmp_path / "classes.json"
    write_classes(path, ClassList(["bg", "cell"], [[0, 0, 0], [255, 0, 0]], 255))
    back = read_classes(path)
    assert back.names == ["bg", "cell"] and back.colors[1] == [255, 0, 0] and back.ignore_index == 255
    path.write_text(json.dumps({"classes": [{"id": 1, "name": "x"}]}))
    with pytest.raises(DataError, match="classes.json is not a classes file"):
        read_classes(path)


def test_import_with_label_map(tmp_path):
    from test_importers import _coco

    from unetkit.data.importers import import_dataset
    from unetkit.data.io import read_mask

    lm = parse_label_map({"thing": ["car", "person"], "ignore": ["tree"]})
    import_dataset("coco", [_coco(tmp_path)], tmp_path / "out", label_map=lm)
    classes = read_classes(tmp_path / "out" / "classes.json")
    assert classes.names == ["background", "thing"] and classes.ignore_index == 255
    m = read_mask(tmp_path / "out" / "masks" / "000000000139.png")
    assert m[3, 3] == 255 and m[4, 4] == 1 and m[12, 1] == 1 and m[0, 0] == 0


def test_cli_import_train_with_label_map_and_predict_mapped(tmp_path):
    """datasets import -> check-data -> train --classes --label-map: the run predicts the mapped ids and names."""
    from test_importers import _coco
    from typer.testing import CliRunner

    from unetkit import Predictor
    from unetkit.cli import app
    from unetkit.config import RunConfig
    from unetkit.evaluate import evaluate

    run = CliRunner().invoke
    out = tmp_path / "data"
    r = run(app, ["datasets", "import", "coco", str(_coco(tmp_path)), "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = run(app, ["check-data", "--images", str(out / "images"), "--masks", str(out / "masks"),
                  "--classes", str(out / "classes.json"), "--no-progress"])  # fmt: skip
    assert "car" in r.output and "mask encoding: index" in r.output
    lm = tmp_path / "map.json"
    lm.write_text(json.dumps({"thing": ["car", "person"], "rename": {"tree": "plant"}}))
    args = ["train", "--images", out / "images", "--masks", out / "masks", "--out", tmp_path / "run",
            "--classes", out / "classes.json", "--label-map", lm, "--input-size", "16", "16", "--n-filters", "2",
            "--depth", "3", "--epochs", "1", "--batch-size", "2", "--precision", "fp32", "--no-compile",
            "--no-progress", "--device", "cpu", "--normalize", "mean-std"]  # fmt: skip
    r = run(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    config = RunConfig.load(tmp_path / "run" / "config.json")
    assert config.class_names == ["background", "thing", "plant"] and config.model.n_classes == 3
    assert config.data.label_map == [0, 1, 1, 2] and config.data.label_map_file == str(lm)
    assert config.preprocess.normalize == "mean-std" and len(config.preprocess.mean) == 3
    predictor = Predictor.from_run(tmp_path / "run", device="cpu")
    assert predictor.class_names == ["background", "thing", "plant"]
    mask = predictor.predict(out / "images" / "000000000139.png")
    assert mask.max() <= 2
    report = evaluate(tmp_path / "run", out / "images", out / "masks", device="cpu")  # source ids mapped
    assert report.n_images == 2
    # --classes on predict: the names and colours of a classes file (same count) are used; another count is refused
    from unetkit.data.classes import use_classes

    names = tmp_path / "names.json"
    write_classes(names, ClassList(["sea", "boat", "buoy"], [[0, 0, 255], [255, 0, 0], [255, 255, 0]]))
    r = run(app, ["predict", str(tmp_path / "run"), str(out / "images"), "--out", str(tmp_path / "pred"),
                  "--classes", str(names), "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    colour = next(p for p in (tmp_path / "pred").iterdir() if "colo" in p.name)
    used = {tuple(c) for c in np.asarray(Image.open(colour).convert("RGB")).reshape(-1, 3).tolist()}
    assert used <= {(0, 0, 255), (255, 0, 0), (255, 255, 0)}
    config = RunConfig.load(tmp_path / "run" / "config.json")
    assert use_classes(config, names).class_names == ["sea", "boat", "buoy"]
    write_classes(names, ClassList(["a", "b"]))
    with pytest.raises(DataError, match="lists 2 classes but the model predicts 3"):
        use_classes(config, names)
