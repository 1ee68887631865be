"""One data path: the cached and the streamed source share one interface and give the same samples
(label maps, validation splits and k-fold subsets included)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs, tiny_config, write_folder

from unetkit.config import DataConfig, RunConfig
from unetkit.data.load import load_data
from unetkit.data.loader import SegmentationData
from unetkit.data.source import SegmentationSource
from unetkit.data.splits import make_splits, pair_names, save_splits, split_indices
from unetkit.data.stream import StreamingData
from unetkit.errors import ConfigError

LUT = [0, 255, 1]  # source 0 -> 0, source 1 (squares) -> ignored, source 2 (discs) -> 1


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    images, masks = make_blobs(10, seed=5)
    img_dir, mask_dir = write_folder(tmp_path_factory.mktemp("blobs"), images, masks)
    return img_dir, mask_dir, masks


def _config(img_dir: Path, mask_dir: Path, cache: str, n_classes: int = 3, **data) -> RunConfig:
    cfg = tiny_config()
    settings = dict(images=str(img_dir), masks=str(mask_dir), cache=cache, num_workers=0) | data
    model = replace(cfg.model, n_classes=n_classes)
    return RunConfig(model=model, train=cfg.train, data=DataConfig(**settings))  # type: ignore[arg-type]


def _all(source: SegmentationSource) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(source.batches(3, device="cpu", shuffle=True, generator=torch.Generator().manual_seed(1)))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_both_sources_are_segmentation_sources(folders):
    img_dir, mask_dir, _ = folders
    cached, _ = SegmentationData.from_folders(img_dir, mask_dir, (32, 32, 3), n_classes=3)
    streamed, _ = StreamingData.from_folders(img_dir, mask_dir, (32, 32, 3), n_classes=3, num_workers=0)
    assert isinstance(cached, SegmentationSource) and isinstance(streamed, SegmentationSource)
    assert not isinstance(object(), SegmentationSource)
    assert torch.equal(cached.class_counts(3), streamed.class_counts(3))
    assert cached.nbytes == streamed.nbytes


def test_a_label_mapped_run_reads_the_same_masks_streamed_and_cached(folders):
    img_dir, mask_dir, source_masks = folders
    configs = [
        _config(img_dir, mask_dir, cache, 2, label_map=LUT, ignore_index=255, val_fraction=0.3)
        for cache in ("memory", "stream")
    ]
    (cached, cached_val, mode), (streamed, streamed_val, stream_mode) = (
        load_data(c, log=lambda _: None) for c in configs
    )
    assert isinstance(cached, SegmentationData) and isinstance(streamed, StreamingData)
    assert mode == stream_mode == "index" and len(cached) == len(streamed) == 7
    for a, b in ((cached, streamed), (cached_val, streamed_val)):
        (xa, ya), (xb, yb) = _all(a), _all(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    expected = torch.from_numpy(np.asarray(LUT)[source_masks])  # the map applied to the source ids
    train_index, _ = split_indices(10, 0.3, 0)
    assert torch.equal(cached.masks.long(), expected[train_index])
    assert sorted(torch.unique(cached.masks).tolist()) == [0, 1, 255]
    got = torch.cat([y for _, y in streamed.batches(4, device="cpu")])
    assert torch.equal(got, cached.masks.long())


def test_a_fold_of_a_split_file_applies_to_both_sources(folders, tmp_path):
    img_dir, mask_dir, _ = folders
    names = pair_names(img_dir, mask_dir)
    splits = make_splits(names, 3, seed=0)
    save_splits(tmp_path / "splits.json", splits)
    loaded = [
        load_data(_config(img_dir, mask_dir, cache, split_file=str(tmp_path / "splits.json"), fold=1), log=print)
        for cache in ("memory", "stream")
    ]
    for train, val, _ in loaded:
        assert len(train) == len(splits[1]["train"]) and val is not None and len(val) == len(splits[1]["val"])
    (cached, cached_val, _), (streamed, streamed_val, _) = loaded
    assert [p[0].stem for p in streamed_val.pairs] == splits[1]["val"]  # type: ignore[union-attr]
    assert torch.equal(_all(cached_val)[1], _all(streamed_val)[1])  # type: ignore[arg-type]


def test_a_label_map_on_colour_masks_is_refused_for_both_caches(folders, tmp_path):
    img_dir, mask_dir, _ = folders
    palette = tmp_path / "palette.json"
    palette.write_text('{"a": [0, 0, 0], "b": [255, 0, 0], "c": [0, 255, 0]}')
    for cache in ("memory", "stream"):
        config = _config(img_dir, mask_dir, cache, label_map=LUT, mask_mode="palette", palette_file=str(palette))
        with pytest.raises(ConfigError, match="--label-map works on class ids"):
            load_data(config, log=print)


def test_train_keeps_load_data_importable():
    from unetkit import train

    assert train.load_data is load_data


def test_json_files_of_the_data_package_share_one_reader_and_its_messages(tmp_path):
    from unetkit.data.classes import read_classes
    from unetkit.data.importers._common import read_json as read_export
    from unetkit.data.labelmap import load_label_map
    from unetkit.data.masks import load_class_names
    from unetkit.errors import DataError

    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    readers = [
        (read_classes, "classes file", "as `unetkit datasets import` writes it"),
        (load_label_map, "label map", "see docs/labels.md"),
        (load_class_names, "class-names file", "expected ["),
        (lambda p: read_export(p, "COCO"), "COCO file", "export it again"),
    ]
    for read, what, hint in readers:
        with pytest.raises(DataError) as e:
            read(broken)
        assert str(e.value).startswith(f"{what} {broken} is not readable JSON (") and hint in str(e.value)
        with pytest.raises(DataError, match=f"{what} .*missing.json does not exist; check the path"):
            read(tmp_path / "missing.json")
