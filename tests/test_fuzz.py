"""Fuzzing the image and mask readers: every input is decoded or rejected with a DataError naming the file.

Hypothesis writes files of many kinds (random bytes, valid images of every mode and format, truncated
or bit-flipped ones, headers claiming zero or enormous sizes, zlib bombs, 16-bit and palette PNGs,
alpha channels, EXIF rotations, float TIFFs with NaN) and feeds each to ``read_image``, ``read_mask``,
``decode_mask`` and ``load_pairs``. Any other exception fails the test, as does a case that runs over
its time budget or grows the peak memory by more than the image it claims could need. The number of
cases run is printed at the end (``-s`` not needed); UNETKIT_FUZZ_BYTES, _VALID, _HEADERS and _ARRAYS
set the number of cases of each kind (about 20 s in all by default).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import resource
import signal
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from unetkit.data import io as dio
from unetkit.data.folders import load_pairs
from unetkit.data.io import IMAGE_EXTENSIONS, read_image, read_mask
from unetkit.data.masks import MASK_MODES, decode_mask
from unetkit.errors import DataError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses SIGALRM and /proc")

CASE_SECONDS = 10.0  # hard budget per case (a busy CI machine); typical cases take milliseconds
SLACK_BYTES = 96 * 2**20  # peak-memory growth allowed on top of what the claimed pixels could need
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)

# DataErrors about the settings rather than the file (decode_mask's mode and palette arguments)
SETTING_ERRORS = ("unknown mask mode", "mask mode 'palette' needs a palette", "the palette ")

COUNTS: Counter[str] = Counter()  # cases per kind of input
CALLS: Counter[str] = Counter()  # reader calls per reader and outcome
SLOWEST: dict[str, float] = {}


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_now() -> int:
    """Resident memory now, after handing freed heap pages back to the system (glibc keeps them otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the number of cases run and check that memory did not grow across them."""
    start_now, start_peak = _rss_now(), _rss_peak()
    yield
    grown = (_rss_now() - start_now) / 2**20
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    lines = [
        f"fuzz: {sum(COUNTS.values())} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())),
        f"fuzz: {sum(CALLS.values())} reader calls: " + ", ".join(f"{k} {v}" for k, v in sorted(CALLS.items())),
        f"fuzz: slowest call {max(SLOWEST.values(), default=0):.2f}s; RSS now {grown:+.0f} MiB, "
        f"peak {(_rss_peak() - start_peak) / 2**20:+.0f} MiB over the module",
    ]
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n" + "\n".join(lines))
    assert grown < 256, f"resident memory grew by {grown:.0f} MiB across the fuzz cases"


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout(f"a case ran over {CASE_SECONDS}s")


def checked(
    kind: str, path: Path, call: Callable[[], object], claimed_pixels: int = 0, bytes_per_pixel: int = 16
) -> object | None:
    """Run one reader call: its result, or None when it raised a DataError naming ``path``.

    Any other exception, a run over CASE_SECONDS or a peak-memory jump beyond what ``claimed_pixels``
    (capped at MAX_PIXELS: larger claims must be refused before decoding) could need, fails the test.
    """
    allowed = bytes_per_pixel * min(claimed_pixels, dio.MAX_PIXELS) + SLACK_BYTES
    old = signal.signal(signal.SIGALRM, _alarm)
    peak, t0 = _rss_peak(), time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        result = call()
        CALLS[f"{kind} accepted"] += 1
    except DataError as e:
        assert str(path) in str(e) or str(e).startswith(SETTING_ERRORS), f"the message does not name the file: {e}"
        assert "\n" not in str(e) or kind == "load_pairs"
        result = None
        CALLS[f"{kind} rejected"] += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    took = time.perf_counter() - t0
    SLOWEST[kind] = max(SLOWEST.get(kind, 0.0), took)
    jump = _rss_peak() - peak
    assert jump <= allowed, f"{kind} of {path.name} raised the peak memory by {jump / 2**20:.0f} MiB"
    return result


def exercise(path: Path, claimed_pixels: int = 0) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Every reader on one file; checks the shape and type contracts of what they return."""
    image = checked("read_image", path, lambda: read_image(path), claimed_pixels)
    if image is not None:
        assert isinstance(image, np.ndarray) and image.dtype in (np.uint8, np.uint16) and image.ndim == 3
        tiff_bands = path.suffix.lower() in (".tif", ".tiff")  # tifffile reads what Pillow cannot: any bands
        assert (image.shape[2] >= 1 if tiff_bands else image.shape[2] in (1, 3, 4)) and min(image.shape[:2]) > 0
        assert image.flags.writeable and image.flags.c_contiguous
    mask = checked("read_mask", path, lambda: read_mask(path), claimed_pixels)
    if mask is not None:
        assert mask.ndim in (2, 3) and np.issubdtype(mask.dtype, np.integer)
        if image is not None:
            assert mask.shape[:2] == image.shape[:2]  # EXIF rotation applies to both
        for mode in MASK_MODES:
            ids = checked(
                "decode_mask",
                path,
                lambda m=mode: decode_mask(
                    mask, m, 256, palette=[[0, 0, 0], [255, 255, 255]], ignore_index=None, path=path
                ),
                claimed_pixels=mask.shape[0] * mask.shape[1],
                bytes_per_pixel=64,
            )  # int64 working copies
            if ids is not None:
                assert ids.shape == mask.shape[:2] and int(ids.max()) < 256
    pairs = [(path, path)]
    loaded = checked(
        "load_pairs", path, lambda: load_pairs(pairs, (16, 16, 3), n_classes=256, workers=1), claimed_pixels
    )
    if loaded is not None:
        images, masks, mode = loaded
        assert tuple(images.shape) == (1, 3, 16, 16) and tuple(masks.shape) == (1, 16, 16)
    return image, mask


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_serial = iter(range(10**9))


def _write(workdir: Path, data: bytes, ext: str) -> Path:
    path = workdir / f"case{next(_serial)}{ext}"
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------- strategies

MODES_BY_FORMAT = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "BMP": ["1", "L", "P", "RGB", "RGBA"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"],
    "WEBP": ["RGB", "RGBA"],
    "GIF": ["L", "P"],
}
EXT = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".png", "GIF": ".png"}


def make_image(fmt: str, mode: str, w: int, h: int, seed: int, special: str, orientation: int) -> bytes:
    """A small valid image file; ``special`` adds NaN/Inf (float) or transparency (palette)."""
    rng = np.random.default_rng(seed)
    if mode == "F":
        a = rng.normal(0, 100, (h, w)).astype(np.float32)
        if special == "nan":
            a[rng.random((h, w)) < 0.3] = np.nan
        elif special == "inf":
            a[0, 0], a[-1, -1] = np.inf, -np.inf
        elif special == "whole":
            a = np.round(np.abs(a) % 7).astype(np.float32)
        im = Image.fromarray(a, mode="F")
    elif mode in ("I;16", "I"):
        top = 65535 if mode == "I;16" else 2**31 - 1
        a = rng.integers(0, top, (h, w), dtype=np.int64)
        im = Image.fromarray(a.astype(np.uint16 if mode == "I;16" else np.int32))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA").convert(mode)
    kwargs: dict = {}
    if mode == "P" and special == "transparency":
        kwargs["transparency"] = 0
    if orientation > 1 and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@st.composite
def valid_images(draw: st.DrawFn) -> tuple[bytes, str, str, int, int, int]:
    fmt = draw(st.sampled_from(sorted(MODES_BY_FORMAT)))
    mode = draw(st.sampled_from(MODES_BY_FORMAT[fmt]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    special = draw(st.sampled_from(["", "nan", "inf", "whole", "transparency"]))
    orientation = draw(st.integers(1, 8))
    data = make_image(fmt, mode, w, h, draw(st.integers(0, 2**16)), special, orientation)
    return data, fmt, mode, w, h, orientation


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def crafted_png(w: int, h: int, depth: int, colour: int, payload: bytes, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", payload) + _chunk(b"IEND", b"")


def crafted_bmp(w: int, h: int, bpp: int, payload: bytes) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, bpp, 0, len(payload), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(payload), 0, 0, 14 + len(info)) + info + payload


def crafted_tiff(w: int, h: int, bits: int, sample_format: int, payload: bytes) -> bytes:
    tags = [
        (256, 4, w),
        (257, 4, h),
        (258, 3, bits),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 4, h),
        (279, 4, len(payload)),
        (339, 3, sample_format),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    data_at = 8 + ifd_size
    entries = b"".join(struct.pack("<HHII", tag, typ, 1, data_at if tag == 273 else value) for tag, typ, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + b"\0\0\0\0" + payload


ZLIB_BOMBS = {n: zlib.compress(b"\0" * n, 9) for n in (0, 1000, 2**20, 16 * 2**20)}  # 16 MiB -> 16 KiB
ZTXT_BOMB = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * 4 * 2**20, 9))  # a text-chunk bomb

SIZES = st.one_of(
    st.integers(0, 64),
    st.integers(65, 3000),
    st.integers(3001, 2**31 - 1),
    st.sampled_from([100_000, 65_535, 2**31 - 1, 2**32 - 1]),
)


@st.composite
def crafted_headers(draw: st.DrawFn) -> tuple[bytes, str, int]:
    """Headers claiming any size (zero to 2^32-1 per side) over a little (maybe zlib-bomb) pixel data."""
    w, h = draw(SIZES), draw(SIZES)
    kind = draw(st.sampled_from(["png", "bmp", "tiff"]))
    raw = draw(st.binary(max_size=512)) + b"\0" * draw(st.sampled_from([0, 0, 4096, 65536]))
    if kind == "png":
        depth = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0]))
        colour = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
        payload = ZLIB_BOMBS[draw(st.sampled_from(sorted(ZLIB_BOMBS)))] if draw(st.booleans()) else zlib.compress(raw)
        extra = ZTXT_BOMB if draw(st.booleans()) else b""
        return crafted_png(w, h, depth, colour, payload, extra), ".png", w * h
    if kind == "bmp":
        w, h = w % 2**31, h % 2**31
        bpp = draw(st.sampled_from([1, 4, 8, 16, 24, 32, 7]))
        return crafted_bmp(w, h, bpp, raw), ".bmp", w * h
    bits, fmt = draw(st.sampled_from([(8, 1), (16, 1), (32, 1), (32, 3), (64, 3), (12, 1)]))
    return crafted_tiff(w, h, bits, fmt, raw), ".tif", w * h


def mutate(data: bytes, how: str, where: float, noise: bytes) -> bytes:
    cut = int(len(data) * where)
    if how == "truncate":
        return data[:cut]
    if how == "flip":
        out = bytearray(data)
        for i, b in enumerate(noise):
            out[(cut + 97 * i) % len(out)] ^= b or 1
        return bytes(out)
    if how == "splice":
        return data[:cut] + noise + data[cut:]
    return data


# -------------------------------------------------------------------------------------------------- tests


@settings(FUZZ, max_examples=int(os.environ.get("UNETKIT_FUZZ_BYTES", "800")))
@given(
    data=st.one_of(
        st.binary(max_size=2048),
        st.sampled_from(
            [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"GIF89a", b"RIFF\0\0\0\0WEBP"]
        ).flatmap(lambda magic: st.binary(max_size=1024).map(lambda rest: magic + rest)),
    ),
    ext=st.sampled_from(IMAGE_EXTENSIONS),
)
def test_random_bytes_are_rejected_with_the_file_named(workdir, data, ext):
    COUNTS["random bytes"] += 1
    exercise(_write(workdir, data, ext))


@settings(FUZZ, max_examples=int(os.environ.get("UNETKIT_FUZZ_VALID", "800")))
@given(
    case=valid_images(),
    how=st.sampled_from(["none", "none", "truncate", "flip", "splice"]),
    where=st.floats(0, 1),
    noise=st.binary(min_size=1, max_size=16),
)
def test_valid_and_damaged_images_of_every_mode(workdir, case, how, where, noise):
    data, fmt, mode, w, h, orientation = case
    COUNTS["valid or damaged images"] += 1
    path = _write(workdir, mutate(data, how, where, noise), EXT[fmt])
    image, mask = exercise(path, claimed_pixels=w * h if how == "none" else 3000 * 3000)
    if how != "none":
        return
    assert image is not None, f"a valid {fmt} {mode} image was rejected"
    expected = (w, h) if orientation in (5, 6, 7, 8) and fmt in ("JPEG", "PNG", "WEBP", "TIFF") else (h, w)
    assert image.shape[:2] == expected, (fmt, mode, orientation, image.shape)
    with Image.open(io.BytesIO(data)) as im:
        pixels = np.asarray(im) if orientation == 1 or fmt in ("BMP", "GIF") else None
    if pixels is not None and mode == "I;16":
        assert image.dtype == np.uint16 and np.array_equal(image[:, :, 0], pixels.astype(np.uint16))
        if mask is not None:
            assert mask.dtype == np.uint16 and np.array_equal(mask, pixels)
    if pixels is not None and mode == "F":
        finite = np.isfinite(pixels)
        assert (image[:, :, 0][np.isnan(pixels)] == 0).all()
        if finite.any() and pixels[finite].max() > pixels[finite].min():  # stretched: min -> 0, max -> 255
            assert image[:, :, 0].ravel()[np.where(finite, pixels, np.inf).argmin()] == 0
            assert image[:, :, 0].ravel()[np.where(finite, pixels, -np.inf).argmax()] == 255
        if not finite.all() or (pixels != np.round(pixels)).any():
            assert mask is None  # NaN or fractions are never class ids
    if pixels is not None and mode == "P":
        assert mask is not None and np.array_equal(mask, pixels)  # palette masks keep their indices
        assert image.shape[2] == (4 if "transparency" in Image.open(io.BytesIO(data)).info else 3)
    if mode in ("LA", "PA", "RGBA") and fmt != "BMP":
        assert image.shape[2] == 4


@settings(FUZZ, max_examples=int(os.environ.get("UNETKIT_FUZZ_HEADERS", "500")))
@given(case=crafted_headers())
def test_crafted_headers_zero_huge_sizes_and_bombs(workdir, case):
    data, ext, claimed = case
    COUNTS["crafted headers and bombs"] += 1
    path = _write(workdir, data, ext)
    image, _ = exercise(path, claimed_pixels=claimed)
    if claimed > dio.MAX_PIXELS:
        assert image is None


@settings(FUZZ, max_examples=int(os.environ.get("UNETKIT_FUZZ_ARRAYS", "800")))
@given(
    raw=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.bool_]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
    ),
    mode=st.sampled_from([*MASK_MODES, "nonsense"]),
    n_classes=st.integers(1, 300),
    ignore=st.one_of(st.none(), st.integers(0, 70000)),
    palette=st.one_of(st.none(), st.lists(st.lists(st.integers(-5, 300), min_size=0, max_size=4), max_size=5)),
)
def test_decode_mask_on_arbitrary_arrays(workdir, raw, mode, n_classes, ignore, palette):
    COUNTS["mask arrays"] += 1
    path = workdir / "arbitrary_mask.png"
    ids = checked(
        "decode_mask", path, lambda: decode_mask(raw, mode, n_classes, palette=palette, ignore_index=ignore, path=path)
    )
    if ids is not None:
        assert ids.ndim == 2 and ids.shape == raw.shape[:2]
        valid = ids < n_classes if ignore is None else (ids < n_classes) | (ids == ignore)
        assert valid.all()


@pytest.mark.parametrize("side", [100_000, 2**31 - 1])
def test_decompression_bomb_is_refused_from_its_header(workdir, side):
    """A 100000 x 100000 PNG of ~20 KiB (zeros compress 1000:1) is refused before any pixel is decoded."""
    data = crafted_png(side, side, 8, 0, zlib.compress(b"\0" * 2**20))
    path = _write(workdir, data, ".png")
    peak, t0 = _rss_peak(), time.perf_counter()
    with pytest.raises(DataError, match=str(path).replace(".", r"\.")):
        read_image(path)
    with pytest.raises(DataError, match="too large|over the limit"):
        read_mask(path)
    assert time.perf_counter() - t0 < 2 and _rss_peak() - peak < 32 * 2**20
    COUNTS["bombs"] += 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_an_uncompressed_tiff(workdir, orientation):
    """Regression: PIL scrambled memory-mapped TIFFs with orientation 5-8; image and mask must match a PNG's."""
    a = np.arange(15, dtype=np.uint8).reshape(3, 5) * 10
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = {}
    for fmt, ext in (("TIFF", ".tif"), ("PNG", ".png")):
        path = workdir / f"oriented{orientation}{ext}"
        Image.fromarray(a).save(path, format=fmt, exif=exif.tobytes())
        out[fmt] = read_image(path)[:, :, 0], read_mask(path)
    assert np.array_equal(out["TIFF"][0], out["PNG"][0]) and np.array_equal(out["TIFF"][1], out["PNG"][1])
    assert np.array_equal(out["PNG"][0], out["PNG"][1])
    assert out["PNG"][0].shape == ((5, 3) if orientation >= 5 else (3, 5))


def test_reading_damaged_files_again_and_again_does_not_grow_memory(workdir):
    """The same 120 damaged files read in rounds: resident memory after round 1 stays flat (no leak)."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(120):
        fmt = sorted(MODES_BY_FORMAT)[i % len(MODES_BY_FORMAT)]
        mode = MODES_BY_FORMAT[fmt][i % len(MODES_BY_FORMAT[fmt])]
        data = make_image(fmt, mode, 1 + i % 40, 1 + (7 * i) % 40, i, ["", "nan", "transparency"][i % 3], 1 + i % 8)
        how = ["none", "truncate", "flip", "splice"][i % 4]
        files.append(_write(workdir, mutate(data, how, float(rng.random()), bytes(rng.integers(0, 256, 8))), EXT[fmt]))
    after = []
    for _ in range(4):
        for path in files * 2:
            for read in (read_image, read_mask):
                with contextlib.suppress(DataError):
                    read(path)
            with contextlib.suppress(DataError):
                load_pairs([(path, path)], (16, 16, 3), n_classes=256, workers=1)
        after.append(_rss_now() / 2**20)
    CALLS["repeated reads (leak check)"] += 4 * len(files) * 2 * 3
    assert after[-1] - after[0] < 8, f"RSS per round (MiB): {[round(a, 1) for a in after]}"
