"""datasets import: each format's export, laid out as the tool writes it, gives the expected masks exactly."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from unetkit.data.classes import read_classes
from unetkit.data.importers import FORMATS, import_dataset
from unetkit.data.io import read_mask
from unetkit.errors import DataError

H, W = 16, 20


def _png(path: Path, a: np.ndarray, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(a)
    if palette is not None:
        im = im.convert("P")
        im = Image.fromarray(a, mode="L").convert("P")
        im.putpalette(palette)
    im.save(path)
    return path


def _image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return _png(path, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))


def _mask(out: Path, stem: str) -> np.ndarray:
    return read_mask(out / "masks" / f"{stem}.png")


# ---------------------------------------------------------------- COCO


def _rle_counts(m: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE: column-major run lengths, starting with a run of zeros."""
    flat = m.flatten(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return counts


def _coco(tmp_path: Path, **over) -> Path:
    from pycocotools import mask as mask_utils

    root = tmp_path / "coco"
    _image(root / "val2017" / "000000000139.jpg".replace(".jpg", ".png"))
    _image(root / "val2017" / "000000000285.png", 1)
    crowd = np.zeros((H, W), np.uint8)
    crowd[10:14, 0:5] = 1
    stuff = np.zeros((H, W), np.uint8, order="F")
    stuff[:, 15:] = 1
    compressed = mask_utils.encode(np.asfortranarray(stuff))
    data = {
        "info": {"description": "test"},
        "licenses": [],
        "images": [
            {"id": 139, "file_name": "000000000139.png", "height": H, "width": W},
            {"id": 285, "file_name": "000000000285.png", "height": H, "width": W},
        ],
        "annotations": [
            # a large box of category 7 with a small box of category 3 on top of it (painted after: smaller)
            {"id": 1, "image_id": 139, "category_id": 3, "iscrowd": 0, "area": 4, "bbox": [4, 4, 2, 2],
             "segmentation": [[4, 4, 6, 4, 6, 6, 4, 6]]},
            {"id": 2, "image_id": 139, "category_id": 7, "iscrowd": 0, "area": 64, "bbox": [2, 2, 8, 8],
             "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]},
            {"id": 3, "image_id": 139, "category_id": 1, "iscrowd": 1, "area": 20, "bbox": [0, 10, 5, 4],
             "segmentation": {"counts": _rle_counts(crowd), "size": [H, W]}},
            {"id": 4, "image_id": 285, "category_id": 7, "iscrowd": 0, "area": 80, "bbox": [15, 0, 5, 16],
             "segmentation": {"counts": compressed["counts"].decode(), "size": [H, W]}},
        ],
        "categories": [
            {"supercategory": "x", "id": 7, "name": "tree"},
            {"supercategory": "x", "id": 1, "name": "person"},
            {"supercategory": "x", "id": 3, "name": "car"},
        ],
    }  # fmt: skip
    data.update(over)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(data))
    return path


def _box(y0: int, y1: int, x0: int, x1: int, value: int, base: np.ndarray) -> np.ndarray:
    base = base.copy()
    base[y0:y1, x0:x1] = value
    return base


def test_coco_polygons_rle_crowd_and_category_order(tmp_path):
    result = import_dataset("coco", [_coco(tmp_path)], tmp_path / "out")
    assert result.count == 2
    classes = read_classes(tmp_path / "out" / "classes.json")
    assert classes.names == ["background", "person", "car", "tree"]  # COCO ids 1, 3, 7 -> 1, 2, 3
    assert classes.ignore_index is None
    m = _mask(tmp_path / "out", "000000000139")
    expected = np.zeros((H, W), np.uint8)
    expected = _box(2, 10, 2, 10, 3, expected)  # tree, the larger, painted first
    expected = _box(4, 6, 4, 6, 2, expected)  # car on top
    expected = _box(10, 14, 0, 5, 1, expected)  # crowd person
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(_mask(tmp_path / "out", "000000000285"), _box(0, H, 15, W, 3, np.zeros((H, W))))
    assert (tmp_path / "out" / "images" / "000000000139.png").is_file()


def test_coco_no_background_leaves_unlabelled_pixels_ignored(tmp_path):
    import_dataset("coco", [_coco(tmp_path)], tmp_path / "out", background=False)
    classes = read_classes(tmp_path / "out" / "classes.json")
    assert classes.names == ["person", "car", "tree"] and classes.ignore_index == 255
    expected = _box(0, H, 15, W, 2, np.full((H, W), 255))
    np.testing.assert_array_equal(_mask(tmp_path / "out", "000000000285"), expected)


def test_coco_errors_name_the_file(tmp_path):
    bad_poly = [{"id": 9, "image_id": 139, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 40, 0, 40, 5]]}]
    path = _coco(tmp_path, annotations=bad_poly)
    with pytest.raises(DataError, match=r"instances_val2017.json.*outside the 20x16 image"):
        import_dataset("coco", [path], tmp_path / "o1")
    path = _coco(tmp_path, images=[{"id": 1, "file_name": "gone.jpg", "height": H, "width": W}], annotations=[])
    with pytest.raises(DataError, match=r"instances_val2017.json: the image 'gone.jpg'.*missing"):
        import_dataset("coco", [path], tmp_path / "o2")
    path = _coco(tmp_path, images=[], annotations=[])
    with pytest.raises(DataError, match="empty"):
        import_dataset("coco", [path], tmp_path / "o3")
    other = tmp_path / "labelme.json"
    other.write_text(json.dumps({"shapes": [], "imagePath": "a.png"}))
    with pytest.raises(DataError, match=r"labelme.json is not a COCO export"):
        import_dataset("coco", [other], tmp_path / "o4")


# ---------------------------------------------------------------- LabelMe


def _labelme(folder: Path, stem: str, shapes: list[dict], embed: bool) -> Path:
    img = _image(folder / f"{stem}.png")
    data = {
        "version": "5.2.1",
        "flags": {},
        "shapes": [{"group_id": None, "description": "", "flags": {}, **s} for s in shapes],
        "imagePath": f"{stem}.png",
        "imageData": base64.b64encode(img.read_bytes()).decode() if embed else None,
        "imageHeight": H,
        "imageWidth": W,
    }
    if embed:
        img.unlink()
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def test_labelme_shapes_embedded_and_beside(tmp_path):
    folder = tmp_path / "lm"
    shapes = [
        {"label": "road", "points": [[0, 12], [19, 12], [19, 15], [0, 15]], "shape_type": "polygon"},
        {"label": "car", "points": [[2, 2], [5, 5]], "shape_type": "rectangle"},
        {"label": "sign", "points": [[14, 4], [14, 6]], "shape_type": "circle"},
        {"label": "lane", "points": [[0, 9], [19, 9]], "shape_type": "line"},
        {"label": "car", "points": [[8, 8]], "shape_type": "point"},
    ]
    _labelme(folder, "a", shapes, embed=True)
    _labelme(folder, "b", shapes[1:2], embed=False)
    import_dataset("labelme", [folder], tmp_path / "out", line_width=3)
    names = read_classes(tmp_path / "out" / "classes.json").names
    assert names == ["_background_", "car", "lane", "road", "sign"]
    expected = np.zeros((H, W), np.uint8)
    expected[12:16, :] = 3  # polygon rows 12..15, outline included
    expected[2:6, 2:6] = 1  # rectangle 2..5 inclusive
    circle = Image.new("L", (W, H))
    ImageDraw.Draw(circle).ellipse([12, 2, 16, 6], outline=1, fill=1)  # LabelMe draws circles with PIL
    expected[np.asarray(circle, bool)] = 4
    expected[8:11, :] = 2  # a 3-pixel line on row 9
    np.testing.assert_array_equal(_mask(tmp_path / "out", "a"), expected)
    np.testing.assert_array_equal(_mask(tmp_path / "out", "b"), _box(2, 6, 2, 6, 1, np.zeros((H, W))))
    # the embedded image was decoded, the other copied
    assert {p.name for p in (tmp_path / "out" / "images").iterdir()} == {"a.png", "b.png"}


def test_labelme_errors(tmp_path):
    folder = tmp_path / "lm"
    _labelme(folder, "a", [{"label": "x", "points": [[0, 0], [30, 3], [2, 9]], "shape_type": "polygon"}], True)
    with pytest.raises(DataError, match=r"a.json: shape 'x' \(polygon\) has a point \(30, 3\) outside"):
        import_dataset("labelme", [folder], tmp_path / "o1")
    path = _labelme(folder, "a", [], embed=False)
    (folder / "a.png").unlink()
    with pytest.raises(DataError, match=r"a.json: the image 'a.png'.*missing"):
        import_dataset("labelme", [path], tmp_path / "o2")
    with pytest.raises(DataError, match="empty"):
        (tmp_path / "empty").mkdir()
        import_dataset("labelme", [tmp_path / "empty"], tmp_path / "o3")


# ---------------------------------------------------------------- CVAT / VOC


def test_cvat_segmentation_mask_and_unknown_colour(tmp_path):
    root = tmp_path / "cvat"
    root.mkdir()
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\ntree:51,221,255::\n"
    )
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[3:7, 1:4] = (250, 50, 83)
    rgb[10:, 10:] = (51, 221, 255)
    _png(root / "SegmentationClass" / "frame_000000.png", rgb)
    _png(root / "SegmentationObject" / "frame_000000.png", rgb)
    _image(root / "JPEGImages" / "frame_000000.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("frame_000000\n")
    import_dataset("cvat-mask", [root], tmp_path / "out")
    expected = _box(10, H, 10, W, 2, _box(3, 7, 1, 4, 1, np.zeros((H, W))))
    np.testing.assert_array_equal(_mask(tmp_path / "out", "frame_000000"), expected)
    assert read_classes(tmp_path / "out" / "classes.json").colors[1] == [250, 50, 83]
    rgb[0, 0] = (1, 2, 3)
    _png(root / "SegmentationClass" / "frame_000000.png", rgb)
    with pytest.raises(DataError, match=r"frame_000000.png holds colours that are not .*\(1, 2, 3\)"):
        import_dataset("cvat-mask", [root], tmp_path / "o2")


def test_voc_palette_pngs(tmp_path):
    from unetkit.data.importers.voc import voc_colormap

    root = tmp_path / "VOC2012"
    ids = np.zeros((H, W), np.uint8)
    ids[2:8, 2:8] = 15  # person
    ids[2:8, 8] = 255  # border
    _png(root / "SegmentationClass" / "2007_000032.png", ids, [v for c in voc_colormap() for v in c])
    _image(root / "JPEGImages" / "2007_000032.jpg".replace("jpg", "png"))
    (root / "JPEGImages" / "2007_000032.png").rename(root / "JPEGImages" / "2007_000032.jpg")
    import_dataset("voc", [root], tmp_path / "out")
    np.testing.assert_array_equal(_mask(tmp_path / "out", "2007_000032"), ids)
    classes = read_classes(tmp_path / "out" / "classes.json")
    assert len(classes) == 21 and classes.names[15] == "person" and classes.ignore_index == 255
    assert classes.colors[15] == [192, 128, 128]  # VOC's person colour
    _png(root / "SegmentationClass" / "2007_000032.png", np.full((H, W, 3), 9, np.uint8))
    with pytest.raises(DataError, match=r"2007_000032.png is not a Pascal VOC export"):
        import_dataset("voc", [root], tmp_path / "o2")


# ---------------------------------------------------------------- Cityscapes / CamVid


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    ids = np.zeros((H, W), np.uint8)
    ids[:, :5] = 7  # road -> 0
    ids[:, 5:10] = 26  # car -> 13
    ids[:, 10:15] = 4  # static -> 255
    ids[:, 15:] = 33  # bicycle -> 18
    _png(root / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", ids)
    _image(root / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png")
    import_dataset("cityscapes", [root], tmp_path / "out")
    expected = np.repeat(np.repeat(np.array([[0, 13, 255, 18]], np.uint8), 5, axis=1), H, axis=0)
    np.testing.assert_array_equal(_mask(tmp_path / "out", "aachen_000000_000019"), expected)
    classes = read_classes(tmp_path / "out" / "classes.json")
    assert len(classes) == 19 and classes.names[13] == "car" and classes.ignore_index == 255
    (root / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png").unlink()
    with pytest.raises(DataError, match=r"aachen_000000_000019_gtFine_labelIds.png: its image .* is missing"):
        import_dataset("cityscapes", [root], tmp_path / "o2")


def test_camvid_colours_and_void(tmp_path):
    root = tmp_path / "camvid"
    root.mkdir()
    (root / "label_colors.txt").write_text("64 128 64\tAnimal\n192 0 128\tArchway\n0 0 0\tVoid\n128 128 0\tTree\n")
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:4] = (64, 128, 64)
    rgb[4:8] = (128, 128, 0)
    rgb[8:9] = (192, 0, 128)
    _png(root / "LabeledApproved_full" / "0001TP_006690_L.png", rgb)
    _image(root / "701_StillsRaw_full" / "0001TP_006690.png")
    import_dataset("camvid", [root / "label_colors.txt", root], tmp_path / "out")
    expected = np.full((H, W), 255, np.uint8)
    expected[:4], expected[4:8], expected[8:9] = 0, 2, 1
    np.testing.assert_array_equal(_mask(tmp_path / "out", "0001TP_006690"), expected)
    classes = read_classes(tmp_path / "out" / "classes.json")
    assert classes.names == ["Animal", "Archway", "Tree"] and classes.ignore_index == 255


# ---------------------------------------------------------------- Label Studio


class _BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def write(self, value: int, n: int) -> None:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]

    def to_bytes(self) -> list[int]:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return [int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8)]


def ls_encode(words: np.ndarray) -> list[int]:
    """Label Studio's brush RLE (thi.ng rle-pack), as its front end writes it: repeats and literal runs."""
    out = _BitWriter()
    sizes = [3, 6, 10, 16]
    out.write(len(words), 32)
    out.write(7, 5)  # 8-bit words
    for s in sizes:
        out.write(s - 1, 4)
    i, n = 0, len(words)
    while i < n:
        j = i
        while j + 1 < n and words[j + 1] == words[i] and j + 1 - i < 2**16:
            j += 1
        run = j - i + 1
        idx = next(k for k, s in enumerate(sizes) if run - 1 < 2**s)
        if run > 1:
            out.write(1, 1), out.write(idx, 2), out.write(run - 1, sizes[idx]), out.write(int(words[i]), 8)
        else:  # a literal chunk of one word
            out.write(0, 1), out.write(0, 2), out.write(0, sizes[0]), out.write(int(words[i]), 8)
        i = j + 1
    return out.to_bytes()


def test_label_studio_rle_roundtrip():
    from unetkit.data.importers.label_studio import decode_rle

    words = np.repeat(np.array([0, 255, 7, 7, 0, 3], np.int64), [50, 3, 1, 1, 400, 1])
    np.testing.assert_array_equal(decode_rle(ls_encode(words)), words)


def test_label_studio_brush_and_polygon(tmp_path):
    uploads = tmp_path / "media" / "upload" / "1"
    _image(uploads / "3f2a9c1e-street.png")
    brush = np.zeros((H, W), np.uint8)
    brush[1:5, 1:9] = 255
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = brush
    rgba[..., 0] = brush
    poly = [[50.0, 50.0], [100.0, 50.0], [100.0, 100.0], [50.0, 100.0]]  # percent: x 10..20, y 8..16
    task = {
        "id": 1,
        "data": {"image": "/data/upload/1/3f2a9c1e-street.png"},
        "annotations": [
            {"id": 1, "was_cancelled": False, "result": [
                {"id": "a", "type": "brushlabels", "from_name": "tag", "to_name": "image",
                 "original_width": W, "original_height": H, "image_rotation": 0,
                 "value": {"format": "rle", "rle": ls_encode(rgba.reshape(-1)), "brushlabels": ["road"]}},
                {"id": "b", "type": "polygonlabels", "from_name": "poly", "to_name": "image",
                 "original_width": W, "original_height": H, "image_rotation": 0,
                 "value": {"points": poly, "closed": True, "polygonlabels": ["car"]}},
            ]}
        ],
        "file_upload": "3f2a9c1e-street.png",
    }  # fmt: skip
    export = tmp_path / "project-1-at-2024.json"
    export.write_text(json.dumps([task, {"id": 2, "data": {"image": "x.png"}, "annotations": []}]))
    import_dataset("label-studio", [export, uploads], tmp_path / "out")
    assert read_classes(tmp_path / "out" / "classes.json").names == ["background", "car", "road"]
    expected = _box(8, H, 10, W, 1, _box(1, 5, 1, 9, 2, np.zeros((H, W))))
    np.testing.assert_array_equal(_mask(tmp_path / "out", "street"), expected)
    export.write_text(json.dumps([]))
    with pytest.raises(DataError, match="project-1-at-2024.json has no task .* empty"):
        import_dataset("label-studio", [export, uploads], tmp_path / "o2")


# ---------------------------------------------------------------- shared behaviour


def test_unknown_format_and_existing_output(tmp_path):
    with pytest.raises(DataError, match="unknown import format 'yolo'"):
        import_dataset("yolo", [tmp_path], tmp_path / "out")
    path = _coco(tmp_path)
    import_dataset("coco", [path], tmp_path / "out")
    with pytest.raises(DataError, match="already holds files"):
        import_dataset("coco", [path], tmp_path / "out")
    import_dataset("coco", [path], tmp_path / "out", overwrite=True)
    assert len(FORMATS) == 7


def test_many_classes_write_16_bit_masks(tmp_path):
    cats = [{"id": i + 1, "name": f"c{i}"} for i in range(300)]
    ann = [{"id": 1, "image_id": 139, "category_id": 300, "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}]
    path = _coco(tmp_path, categories=cats, annotations=ann)
    path.parent.joinpath("..", "val2017", "000000000285.png").resolve().unlink()
    data = json.loads(path.read_text())
    data["images"] = data["images"][:1]
    path.write_text(json.dumps(data))
    import_dataset("coco", [path], tmp_path / "out")
    with Image.open(tmp_path / "out" / "masks" / "000000000139.png") as im:
        assert im.mode.startswith("I;16")
    m = _mask(tmp_path / "out", "000000000139")
    assert m.dtype == np.uint16 and m[1, 1] == 300 and m[8, 8] == 0


def test_train_runs_on_an_import(tmp_path):
    from conftest import tiny_config

    from unetkit import fit

    path = _coco(tmp_path)
    out = tmp_path / "out"
    import_dataset("coco", [path], out)
    config = tiny_config(epochs=1, batch_size=2)
    config = replace(
        config,
        model=replace(config.model, input_size=(16, 16, 3), n_classes=4, depth=3),
        data=replace(config.data, images=str(out / "images"), masks=str(out / "masks"), mask_mode="index"),
        class_names=read_classes(out / "classes.json").names,
        palette=None,
    )
    result = fit(config, tmp_path / "run", progress=False, log=None)
    assert (tmp_path / "run" / "weights.safetensors").is_file() and result is not None
