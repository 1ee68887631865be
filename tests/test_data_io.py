"""The data-reading layer: decoding files, mask encodings, pairing, splitting and loading folders."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetkit.data import io as dio
from unetkit.data.folders import expand_inputs, list_images, load_pairs, natural_key, pair_files
from unetkit.data.io import IMAGE_EXTENSIONS, is_image_file, read_image, read_mask
from unetkit.data.masks import MASK_MODES, decode_mask, detect_mask_mode, load_palette_file, mask_dtype
from unetkit.data.splits import split_indices
from unetkit.errors import DataError

MEMBRANE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "membrane"


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    im.save(path, **kwargs)
    return path


def palette_png(path: Path, indices: np.ndarray, colours: list[tuple[int, int, int]], **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(indices.astype(np.uint8))
    im = Image.frombytes("P", im.size, im.tobytes())
    flat = [v for c in colours for v in c]
    im.putpalette(flat + [0] * (768 - len(flat)))
    im.save(path, **kwargs)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is empty)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (6, 5), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- io


def test_extensions_case_insensitive():
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
    assert is_image_file("A.PNG") and is_image_file("x.TiFf") and not is_image_file("notes.txt")


@pytest.mark.parametrize("ext", ["png", "bmp", "tif", "tiff"])
def test_lossless_formats_roundtrip(tmp_path, ext):
    assert np.array_equal(read_image(save(tmp_path / f"a.{ext}", RGB)), RGB)
    gray = read_image(save(tmp_path / f"g.{ext}", GRAY))
    assert gray.shape == (6, 5, 1) and gray.dtype == np.uint8 and np.array_equal(gray[:, :, 0], GRAY)


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "JPG"])
def test_jpeg(tmp_path, ext):
    flat = np.full((16, 16, 3), (200, 100, 50), dtype=np.uint8)
    out = read_image(save(tmp_path / f"a.{ext}", flat, quality=95))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - flat).max() <= 3


def test_rgba_la_one_bit(tmp_path):
    rgba = np.dstack([RGB, np.full((6, 5), 7, np.uint8)])
    assert np.array_equal(read_image(save(tmp_path / "rgba.png", rgba)), rgba)
    la = read_image(save(tmp_path / "la.png", np.dstack([GRAY, GRAY]), "LA"))
    assert la.shape == (6, 5, 4) and np.array_equal(la[:, :, 0], GRAY) and np.array_equal(la[:, :, 2], GRAY)
    bits = read_image(save(tmp_path / "b.png", (GRAY > 128).astype(np.uint8) * 255, "1"))
    assert bits.shape == (6, 5, 1) and set(np.unique(bits)) <= {0, 255}


def test_palette_image_becomes_rgb_or_rgba(tmp_path):
    idx = np.array([[0, 1], [2, 1]])
    colours = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
    rgb = read_image(palette_png(tmp_path / "p.png", idx, colours))
    assert rgb.shape == (2, 2, 3) and tuple(rgb[1, 0]) == (70, 80, 90)
    rgba = read_image(palette_png(tmp_path / "pt.png", idx, colours, transparency=0))
    assert rgba.shape == (2, 2, 4) and rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 255


def test_cmyk_becomes_rgb(tmp_path):
    path = tmp_path / "c.tif"
    Image.fromarray(RGB).convert("CMYK").save(path)
    out = read_image(path)
    assert out.shape == (6, 5, 3)
    assert np.array_equal(out, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_images_keep_full_precision(tmp_path, ext):
    a = np.array([[0, 0x1234], [0xFF00, 65535]], dtype=np.uint16)
    out = read_image(save(tmp_path / f"a.{ext}", a))
    assert out.dtype == np.uint16 and out[:, :, 0].tolist() == [[0, 0x1234], [0xFF00, 65535]]


def test_float_tiff_stretched_nan_zero(tmp_path):
    a = np.array([[np.nan, 0.0, 0.5], [1.0, np.inf, -np.inf]], dtype=np.float32)
    out = read_image(save(tmp_path / "f.tif", a))[:, :, 0]
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 128], [255, 255, 0]]
    flat = read_image(save(tmp_path / "flat.tif", np.full((2, 2), 3.0, np.float32)))
    assert (flat == 0).all()


def test_int32_tiff_stretched(tmp_path):
    a = np.array([[-100, 0], [100, 300]], dtype=np.int32)
    out = read_image(save(tmp_path / "i.tif", a))[:, :, 0]
    assert out[0, 0] == 0 and out[1, 1] == 255 and out[0, 0] < out[0, 1] < out[1, 0] < out[1, 1]


def test_exif_orientation_applied_to_image_and_mask(tmp_path):
    a = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(a).save(tmp_path / "r.png", exif=exif)
    expected = np.rot90(a, k=-1)
    assert np.array_equal(read_image(tmp_path / "r.png")[:, :, 0], expected)
    assert np.array_equal(read_mask(tmp_path / "r.png"), expected)


def test_missing_folder_random_and_truncated_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="folder"):
        read_image(tmp_path)
    junk = tmp_path / "junk.png"
    junk.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(500)))
    with pytest.raises(DataError, match="junk.png.*re-export"):
        read_image(junk)
    with pytest.raises(DataError, match="junk.png"):
        read_mask(junk)
    noise = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for ext in ("png", "jpg"):
        path = save(tmp_path / f"t.{ext}", noise)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(DataError, match=rf"t\.{ext}.*(truncated|unreadable).*re-export"):
            read_image(path)
        with pytest.raises(DataError, match=rf"t\.{ext}"):
            read_mask(path)


def test_zero_size_and_decompression_bombs(tmp_path, monkeypatch):
    zero = tmp_path / "zero.png"
    zero.write_bytes(png_header(0, 5))
    with pytest.raises(DataError, match="zero.png"):
        read_image(zero)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(100_000, 100_000))
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="bomb.png.*(too large|over the limit)"):
        read_image(bomb)
    big = tmp_path / "big.png"
    big.write_bytes(png_header(5000, 5000))  # 25 Mpx: under PIL's limits, over ours once lowered
    monkeypatch.setattr(dio, "MAX_PIXELS", 1000)
    with pytest.raises(DataError, match="big.png.*25,000,000 pixels.*MAX_PIXELS"):
        read_image(big)
    with pytest.raises(DataError, match="over the limit"):
        read_mask(save(tmp_path / "ok.png", np.zeros((40, 40), np.uint8)))
    assert Image.MAX_IMAGE_PIXELS == before  # no global PIL state changed


def test_read_mask_keeps_raw_values(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]])
    pal = read_mask(palette_png(tmp_path / "p.png", idx, [(0, 0, 0), (128, 64, 128), (255, 0, 0)]))
    assert pal.shape == (2, 3) and pal.tolist() == idx.tolist()  # indices, not colours
    wide = np.array([[0, 300], [1000, 65535]], dtype=np.uint16)
    out = read_mask(save(tmp_path / "w.png", wide))
    assert out.dtype == np.uint16 and out.tolist() == wide.tolist()
    rgb = read_mask(save(tmp_path / "rgb.png", RGB))
    assert rgb.shape == (6, 5, 3) and np.array_equal(rgb, RGB)
    rgba = np.dstack([RGB, np.full((6, 5), 255, np.uint8)])
    assert read_mask(save(tmp_path / "rgba.png", rgba)).shape == (6, 5, 4)
    bits = read_mask(save(tmp_path / "b.png", np.array([[0, 255]], np.uint8), "1"))
    assert bits.dtype == np.uint8 and bits.tolist() == [[0, 1]]
    la = read_mask(save(tmp_path / "la.png", np.dstack([GRAY, GRAY * 0]), "LA"))
    assert np.array_equal(la, GRAY)
    i32 = read_mask(save(tmp_path / "i.tif", np.array([[0, 70000]], np.int32)))
    assert i32.dtype == np.int32 and i32.tolist() == [[0, 70000]]
    f = read_mask(save(tmp_path / "f.tif", np.array([[0.0, 3.0]], np.float32)))
    assert f.dtype == np.int32 and f.tolist() == [[0, 3]]
    with pytest.raises(DataError, match="f2.tif.*whole numbers"):
        read_mask(save(tmp_path / "f2.tif", np.array([[0.5, np.nan]], np.float32)))
    assert out.flags.writeable and pal.flags.writeable


# -------------------------------------------------------------------------------------------- masks


def test_mask_modes_and_dtype():
    assert MASK_MODES == ("index", "binary", "channels", "palette")
    assert mask_dtype(23) == np.uint8 and mask_dtype(256) == np.uint8 and mask_dtype(2, 255) == np.uint8
    assert mask_dtype(257) == np.int32 and mask_dtype(2, 256) == np.int32
    assert decode_mask(np.zeros((2, 2), np.uint16), "index", 300).dtype == np.int32
    with pytest.raises(DataError, match="unknown mask mode"):
        decode_mask(np.zeros((2, 2), np.uint8), "rgb", 2)


def test_index_mode():
    m = np.array([[0, 1], [2, 255]], np.uint8)
    out = decode_mask(m, "index", 3, ignore_index=255)
    assert out.dtype == np.uint8 and out.tolist() == m.tolist()
    rgb = np.repeat(m[:, :, None], 3, axis=2)
    assert decode_mask(rgb, "index", 3, ignore_index=255).tolist() == m.tolist()
    assert decode_mask(m[:, :, None], "index", 256).tolist() == m.tolist()
    with pytest.raises(DataError, match=r"m\.png.*255 \(1 px\).*--n-classes.*--ignore-index.*--mask-mode"):
        decode_mask(m, "index", 3, path="m.png")
    colourful = np.zeros((2, 2, 3), np.uint8)
    colourful[0, 0] = (128, 64, 128)
    with pytest.raises(DataError, match=r"c\.png.*colour mask.*\(128, 64, 128\).*palette"):
        decode_mask(colourful, "index", 3, path="c.png")


def test_out_of_range_lists_values_and_jpeg_hint():
    m = np.arange(30, dtype=np.uint8).reshape(5, 6)
    with pytest.raises(DataError) as info:
        decode_mask(m, "index", 5, path="dir/x.jpg")
    text = str(info.value)
    assert "dir/x.jpg" in text and "5 (1 px)" in text and "14 (1 px)" in text and "15 more" in text
    assert "n_classes=5" in text and "JPEG" in text
    with pytest.raises(DataError, match="-1"):
        decode_mask(np.array([[-1, 0]], np.int32), "index", 2)


def test_binary_mode():
    assert decode_mask(np.array([[0, 255]], np.uint8), "binary", 2).tolist() == [[0, 1]]
    assert decode_mask(np.array([[0, 1]], np.uint8), "binary", 2).tolist() == [[0, 1]]
    assert decode_mask(np.array([[0, 65535]], np.uint16), "binary", 2).tolist() == [[0, 1]]
    rgb = np.repeat(np.array([[0, 255]], np.uint8)[:, :, None], 3, axis=2)
    assert decode_mask(rgb, "binary", 2).tolist() == [[0, 1]]
    m = np.array([[0, 128, 255, 255]], np.uint8)
    with pytest.raises(DataError, match=r"b\.png.*not a binary.*128 \(1 px\)"):
        decode_mask(m, "binary", 2, path="b.png")
    assert decode_mask(m, "binary", 2, ignore_index=128).tolist() == [[0, 128, 1, 1]]
    # ignore_index wins over the 0/255 reading: 255 stays "void"
    mixed = np.array([[0, 1, 255]], np.uint8)
    assert decode_mask(mixed, "binary", 2, ignore_index=255).tolist() == [[0, 1, 255]]
    with pytest.raises(DataError, match="0, 1, 255"):
        decode_mask(np.array([[0, 1, 255]], np.uint8), "binary", 2)


def test_channels_mode_is_the_tutorials_reduce_max():
    carla = np.zeros((3, 4, 3), np.uint8)
    carla[..., 0] = np.arange(12).reshape(3, 4) % 7  # class id in red, as in the CARLA data
    out = decode_mask(carla, "channels", 23)
    assert np.array_equal(out, carla.max(axis=-1))
    rgba = np.dstack([carla, np.full((3, 4), 255, np.uint8)])
    assert np.array_equal(decode_mask(rgba, "channels", 23), out)  # alpha dropped, as decode_png(channels=3)
    assert decode_mask(np.array([[1, 2]], np.uint8), "channels", 3).tolist() == [[1, 2]]
    with pytest.raises(DataError, match="k.png.*6"):
        decode_mask(carla, "channels", 6, path="k.png")


def test_palette_mode():
    palette = [[0, 0, 0], [128, 64, 128], [255, 0, 0]]
    m = np.zeros((2, 3, 3), np.uint8)
    m[0, 1] = (128, 64, 128)
    m[1, 2] = (255, 0, 0)
    out = decode_mask(m, "palette", 3, palette=palette)
    assert out.tolist() == [[0, 1, 0], [0, 0, 2]]
    rgba = np.dstack([m, np.full((2, 3), 255, np.uint8)])
    assert decode_mask(rgba, "palette", 3, palette=palette).tolist() == out.tolist()
    m[0, 0] = m[1, 0] = (1, 2, 3)
    m[1, 1] = (9, 9, 9)
    unknown = r"p\.png.*not in the palette: \(1, 2, 3\) x 2 px, \(9, 9, 9\) x 1 px"
    with pytest.raises(DataError, match=unknown):
        decode_mask(m, "palette", 3, palette=palette, path="p.png")
    with pytest.raises(DataError, match="--palette"):
        decode_mask(m, "palette", 3)
    with pytest.raises(DataError, match="same colour"):
        decode_mask(m, "palette", 3, palette=[[0, 0, 0], [0, 0, 0]])
    with pytest.raises(DataError, match="--mask-mode index"):  # single channel: hint at palette-PNG indices
        decode_mask(np.array([[0, 1]], np.uint8), "palette", 3, palette=palette)


def test_detect_mask_mode():
    binary = np.array([[0, 255], [255, 0]], np.uint8)
    assert detect_mask_mode([binary, binary], 2) == "binary"
    assert detect_mask_mode([np.repeat(binary[:, :, None], 3, axis=2)], 2) == "binary"
    assert detect_mask_mode([np.array([[0, 1]], np.uint8)], 2) == "index"
    assert detect_mask_mode([np.array([[0, 2], [5, 1]], np.uint8)], 23) == "index"
    assert detect_mask_mode([binary], 256) == "index"
    assert detect_mask_mode([np.array([[0, 1, 255]], np.uint8)], 2, ignore_index=255) == "index"
    assert detect_mask_mode([np.array([[0, 128, 255]], np.uint8)], 2, ignore_index=128) == "binary"
    with pytest.raises(DataError, match="--n-classes 2"):
        detect_mask_mode([binary], 3)
    with pytest.raises(DataError, match=r"0, 7, 40.*--n-classes 41"):
        detect_mask_mode([np.array([[0, 7, 40]], np.uint8)], 5, paths=["a.png"])
    carla = np.zeros((2, 2, 3), np.uint8)
    carla[..., 0] = [[1, 7], [22, 0]]
    assert detect_mask_mode([carla, np.array([[3, 4]], np.uint8)], 23) == "channels"
    colours = np.zeros((2, 2, 3), np.uint8)
    colours[0, 0] = (128, 64, 128)
    colour_msg = r"colour images.*\(128, 64, 128\).*a\.png.*--mask-mode palette.*--palette"
    with pytest.raises(DataError, match=colour_msg):
        detect_mask_mode([colours], 23, paths=["a.png"])
    with pytest.raises(DataError):
        detect_mask_mode([], 2)


def test_load_palette_file(tmp_path):
    path = tmp_path / "pal.json"
    path.write_text('{"sky": [0, 0, 255], "road": [128, 64, 128], "car": [255, 0, 0]}')
    assert load_palette_file(path) == (["sky", "road", "car"], [[0, 0, 255], [128, 64, 128], [255, 0, 0]])
    bad = {
        "[1, 2": "not valid JSON",
        "[[0, 0, 0]]": "JSON object",
        "{}": "non-empty",
        '{"a": [0, 0]}': "'a' has colour",
        '{"a": [0, 0, 256]}': "integers 0-255",
        '{"a": [0, true, 0]}': "integers 0-255",
        '{"a": [0, 0, 0.5]}': "integers 0-255",
        '{"a": [1, 2, 3], "b": [1, 2, 3]}': "share the colour",
        '{"a": [1, 2, 3], "a": [4, 5, 6]}': "twice",
    }
    for text, message in bad.items():
        path.write_text(text)
        with pytest.raises(DataError, match=message) as info:
            load_palette_file(path)
        assert "pal.json" in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        load_palette_file(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------ folders


def touch_images(folder: Path, names: list[str], size: tuple[int, int] = (4, 4)) -> None:
    for name in names:
        save(folder / name, np.zeros(size, np.uint8))


def test_list_images_natural_sort_and_filters(tmp_path):
    touch_images(tmp_path, ["10.png", "2.png", "1.PNG", "b.jpg", "a.tif", ".hidden.png"])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["1.PNG", "2.png", "10.png", "a.tif", "b.jpg"]
    assert sorted(["img10", "img2", "Img1", "img"], key=natural_key) == ["img", "Img1", "img2", "img10"]


def test_list_images_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "missing")
    save(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match="not a folder"):
        list_images(tmp_path / "a.png")
    empty = tmp_path / "empty"
    (empty / "image").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty has no images.*\.png .*\.tiff.*image/.*\.txt"):
        list_images(empty)


def test_pair_files(tmp_path):
    touch_images(tmp_path / "img", ["10.jpg", "2.jpg", "1.jpg", "x.png"])
    touch_images(tmp_path / "msk", ["1.png", "2_mask.png", "10.png", "x_label.png"])
    pairs = pair_files(tmp_path / "img", tmp_path / "msk")
    assert [(a.name, b.name) for a, b in pairs] == [
        ("1.jpg", "1.png"),
        ("2.jpg", "2_mask.png"),
        ("10.jpg", "10.png"),
        ("x.png", "x_label.png"),
    ]


def test_pair_files_unpaired_listed(tmp_path):
    touch_images(tmp_path / "img", ["a.png", "b.png"] + [f"only{i}.png" for i in range(12)])
    touch_images(tmp_path / "msk", ["a.png", "b.png", "stray.png"])
    with pytest.raises(DataError) as info:
        pair_files(tmp_path / "img", tmp_path / "msk")
    text = str(info.value)
    assert "12 image(s)" in text and "only0.png, only1.png" in text and "and 2 more" in text
    assert "1 mask(s)" in text and "stray.png" in text and "rename or remove" in text


def test_pair_files_duplicates_and_shared_folder(tmp_path):
    touch_images(tmp_path / "img", ["a.png", "a.jpg"])
    touch_images(tmp_path / "msk", ["a.png"])
    with pytest.raises(DataError, match="a.png and a.jpg|a.jpg and a.png"):
        pair_files(tmp_path / "img", tmp_path / "msk")
    touch_images(tmp_path / "img2", ["a.png"])
    touch_images(tmp_path / "msk2", ["a.png", "a_mask.png"])  # a.png pairs exactly; a_mask.png is unpaired
    with pytest.raises(DataError, match="a_mask.png"):
        pair_files(tmp_path / "img2", tmp_path / "msk2")
    touch_images(tmp_path / "both", ["a.jpg", "a_mask.png", "b.jpg", "b_mask.png"])
    pairs = pair_files(tmp_path / "both", tmp_path / "both")
    assert [(a.name, b.name) for a, b in pairs] == [("a.jpg", "a_mask.png"), ("b.jpg", "b_mask.png")]


def test_split_indices_deterministic_disjoint_and_sorted():
    train, val = split_indices(50, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert set(train.tolist()).isdisjoint(val.tolist()) and set(train.tolist()) | set(val.tolist()) == set(range(50))
    assert all(torch.equal(a, b) for a, b in zip(split_indices(50, 0.2, seed=3), (train, val)))
    assert not torch.equal(split_indices(50, 0.2, seed=4)[1], val)
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())


def test_split_indices_edge_cases():
    assert len(split_indices(3, 0.01, 0)[1]) == 1  # at least one validation sample
    assert len(split_indices(3, 0.5, 0)[0]) == 1  # and one for training
    with pytest.raises(DataError, match="cannot hold out 99% of 3 samples"):
        split_indices(3, 0.99, 0)
    with pytest.raises(DataError, match="cannot hold out"):
        split_indices(1, 0.5, 0)


def test_expand_inputs(tmp_path, monkeypatch):
    touch_images(tmp_path / "d", ["10.png", "2.png"])
    touch_images(tmp_path / "e", ["x.jpg", "y.bmp"])
    (tmp_path / "e" / "z.txt").write_text("x")
    single = tmp_path / "e" / "x.jpg"
    got = expand_inputs([str(tmp_path / "d"), str(tmp_path / "e" / "*"), str(single)])
    assert [p.name for p in got] == ["2.png", "10.png", "x.jpg", "y.bmp"]  # x.jpg not repeated
    monkeypatch.chdir(tmp_path)
    assert [p.name for p in expand_inputs(["**/*.png"])] == ["2.png", "10.png"]
    with pytest.raises(DataError, match="matches no image files.*1 non-image"):
        expand_inputs(["e/*.txt"])
    with pytest.raises(DataError, match="matches no image"):
        expand_inputs(["nothing/*.png"])
    with pytest.raises(DataError, match="does not exist"):
        expand_inputs(["missing.png"])
    with pytest.raises(DataError, match="no input"):
        expand_inputs([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        expand_inputs(["empty"])


# -------------------------------------------------------------------------------------- load_pairs


def make_set(root: Path, n: int = 5, size: tuple[int, int] = (12, 16), binary: bool = False) -> list:
    h, w = size
    for i in range(n):
        save(root / "img" / f"{i}.jpg", np.full((h, w, 3), 20 * i, np.uint8), quality=95)
        mask = np.zeros((h, w), np.uint8)
        mask[:, w // 2 :] = 255 if binary else i % 3  # left half 0, right half the class
        save(root / "msk" / f"{i}.png", mask)
    return pair_files(root / "img", root / "msk")


@pytest.mark.parametrize("workers", [1, 4])
def test_load_pairs_end_to_end(tmp_path, workers):
    pairs = make_set(tmp_path)
    seen = []
    images, masks, mode = load_pairs(pairs, (6, 8, 3), n_classes=3, progress=seen.append, workers=workers)
    assert mode == "index" and sum(seen) == 5
    assert images.shape == (5, 3, 6, 8) and images.dtype == torch.uint8
    assert masks.shape == (5, 6, 8) and masks.dtype == torch.uint8
    for i in range(5):
        assert masks[i, :, :4].eq(0).all() and masks[i, :, 4:].eq(i % 3).all()
        assert (images[i].int() - 20 * i).abs().max() <= 3
    gray, _, _ = load_pairs(pairs, (6, 8, 1), n_classes=3, mask_mode="index")
    assert gray.shape == (5, 1, 6, 8)
    _, wide, _ = load_pairs(pairs, (6, 8, 3), n_classes=300)
    assert wide.dtype == torch.int32 and wide[:, :, 4:].amax() == 2


def test_load_pairs_auto_binary_and_explicit_modes(tmp_path):
    pairs = make_set(tmp_path, binary=True)
    _, masks, mode = load_pairs(pairs, (12, 16, 3), n_classes=2)
    assert mode == "binary" and set(masks.unique().tolist()) == {0, 1}
    with pytest.raises(DataError, match="(?s)5 of 5.*not class ids"):
        load_pairs(pairs, (12, 16, 3), n_classes=2, mask_mode="index")  # 255 is not a class id
    with pytest.raises(DataError, match="--palette"):
        load_pairs(pairs, (12, 16, 3), n_classes=2, mask_mode="palette")
    with pytest.raises(DataError, match="unknown mask mode"):
        load_pairs(pairs, (12, 16, 3), n_classes=2, mask_mode="colours")
    with pytest.raises(DataError, match="no image/mask pairs"):
        load_pairs([], (12, 16, 3), n_classes=2)


def test_load_pairs_size_mismatch_names_both_files(tmp_path):
    pairs = make_set(tmp_path, n=3)
    save(tmp_path / "msk" / "1.png", np.zeros((10, 16), np.uint8))
    with pytest.raises(DataError) as info:
        load_pairs(pairs, (6, 8, 3), n_classes=3)
    text = str(info.value)
    assert "1 of 3" in text and "img/1.jpg is 16x12" in text and "msk/1.png is 16x10" in text
    assert "re-export the mask" in text


def test_load_pairs_collects_all_problems(tmp_path):
    pairs = make_set(tmp_path, n=6)
    (tmp_path / "img" / "1.jpg").write_bytes(b"not an image at all")
    (tmp_path / "msk" / "1.png").write_bytes(b"nor a mask")
    save(tmp_path / "msk" / "3.png", np.full((12, 16), 9, np.uint8))
    (tmp_path / "img" / "5.jpg").unlink()
    with pytest.raises(DataError) as info:
        load_pairs(pairs, (6, 8, 3), n_classes=3, mask_mode="index")
    text = str(info.value)
    assert text.startswith("3 of 6 image/mask pairs could not be loaded")
    assert "img/1.jpg" in text and "msk/1.png" in text and "msk/3.png" in text and "9 (192 px)" in text
    assert "img/5.jpg does not exist" in text
    assert "Traceback" not in text


def test_load_pairs_palette_mode(tmp_path):
    palette = [[0, 0, 0], [128, 64, 128]]
    for i in range(2):
        save(tmp_path / "img" / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
        mask = np.zeros((4, 4, 3), np.uint8)
        mask[:2] = (128, 64, 128)
        save(tmp_path / "msk" / f"{i}.png", mask)
    pairs = pair_files(tmp_path / "img", tmp_path / "msk")
    with pytest.raises(DataError, match="colour images"):
        load_pairs(pairs, (4, 4, 3), n_classes=2)
    _, masks, mode = load_pairs(pairs, (4, 4, 3), n_classes=2, mask_mode="palette", palette=palette)
    assert mode == "palette" and masks[:, :2].eq(1).all() and masks[:, 2:].eq(0).all()


def test_load_pairs_index_masks_in_palette_pngs(tmp_path):
    for i in range(2):
        save(tmp_path / "img" / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
        colours = [(0, 0, 0), (9, 9, 9), (200, 0, 0)]
        palette_png(tmp_path / "msk" / f"{i}.png", np.eye(4, dtype=np.uint8) * 2, colours)
    _, masks, mode = load_pairs(pair_files(tmp_path / "img", tmp_path / "msk"), (4, 4, 3), n_classes=3)
    assert mode == "index" and masks[0].tolist() == (np.eye(4, dtype=int) * 2).tolist()


@pytest.mark.membrane
def test_membrane_train_loads_as_binary():
    root = MEMBRANE / "train"
    if not (root / "image").is_dir() or not (root / "label").is_dir():
        pytest.skip(f"{MEMBRANE} is absent")
    pairs = pair_files(root / "image", root / "label")
    assert len(pairs) == 30 and pairs[2][0].name == "2.png"
    images, masks, mode = load_pairs(pairs, (128, 128, 1), n_classes=2)
    assert mode == "binary"
    assert images.shape == (30, 1, 128, 128) and masks.shape == (30, 128, 128)
    assert set(masks.unique().tolist()) == {0, 1}
