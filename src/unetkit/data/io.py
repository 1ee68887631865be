"""Decode image and mask files into numpy arrays, turning every failure into one clear ``DataError``.

Images become (H, W, C) arrays: uint8 for 8-bit files, uint16 for 16-bit ones, with C = 1/3/4 from
Pillow, or any number of bands for TIFFs read through tifffile (extra ``tiff``) when Pillow cannot read
them (more than 4 samples per pixel, planar layouts, ...). Masks keep their raw values (palette PNGs
keep their indices, 16-bit masks their 16-bit values): turning them into class ids is
``masks.decode_mask``'s job, so that no conversion silently changes a label.

Conversions that change values, for images only:

- 16-bit integer images (``I;16*``) keep their full 16-bit values (uint16); ``preprocess.to_float``
  divides by 65535, or normalises with the training set's statistics (``--normalize``), so data using
  only 12 of the 16 bits can use their whole range. (Earlier unetkit versions kept ``value >> 8``.)
- 32-bit integer and float images (``I``, ``F``, e.g. TIFFs from scientific tools): finite values
  are stretched per image from their min..max to 0..255 (a constant image becomes 0); NaN and
  -inf become 0, +inf 255. There is no common scale for such data, so this is the pragmatic choice.
- palette (``P``) -> RGB, or RGBA when the palette has transparency; ``LA``/``PA`` -> RGBA;
  ``CMYK``/``YCbCr``/``LAB``/``HSV``/``RGBX`` -> RGB; 1-bit -> 0/255.

EXIF orientation is applied to images and masks alike, so that they stay aligned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Largest image accepted, in pixels, checked from the header before decoding. The default is PIL's
# own warning threshold (about 89 megapixels, e.g. 9459 x 9459), so accepted images never trigger
# PIL's DecompressionBombWarning. PIL refuses images over twice its MAX_IMAGE_PIXELS by itself:
# raising MAX_PIXELS beyond that also needs PIL.Image.MAX_IMAGE_PIXELS raised (unetkit never changes it).
MAX_PIXELS: int = 89_478_485

# PIL decoders tried on a file, whatever its name: the formats of IMAGE_EXTENSIONS plus WebP and GIF (as the
# server accepts). Leaving the others out keeps rarely used decoders (and EPS, which runs Ghostscript) away
# from untrusted files. "JPEG" covers MPO, the JPEG variant many phone cameras write.
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")

_FIX_REEXPORT = "re-export the file (e.g. save it again as PNG) or remove it from the folder"


def read_json(path: str | Path, what: str, hint: str) -> Any:
    """The parsed content of a JSON file; a DataError naming it as ``what`` ("label map", "classes file")
    when it is missing or not readable JSON, ending with ``hint`` (the format expected, or the fix)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{what} {path} is not readable JSON ({e}); {hint}") from None


def is_image_file(path: str | Path) -> bool:
    """True when the file name ends with one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _open(path: Path, what: str) -> Image.Image:
    """Open, check the header size against MAX_PIXELS, fully decode and apply EXIF orientation."""
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not an image file; give an image file")
    try:
        # From a file object, not a path: PIL memory-maps uncompressed files opened by path, and that path
        # scrambles the pixels of a TIFF whose orientation tag is 5-8 (Pillow 13; found by tests/test_fuzz.py).
        with open(path, "rb") as f, Image.open(f, formats=FORMATS) as im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise DataError(f"{what} {path} has zero size ({w}x{h} pixels); {_FIX_REEXPORT}")
            if w * h > MAX_PIXELS:
                raise DataError(
                    f"{what} {path} is {w}x{h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,} "
                    "(a guard against decompression bombs); downscale or tile it, or raise "
                    "unetkit.data.io.MAX_PIXELS if you trust the file"
                )
            im.load()  # decode now, so that a truncated or corrupt file fails here
            out = ImageOps.exif_transpose(im)
            if out is im:  # detach from the file before it is closed
                out = im.copy()
            return out
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{what} {path} is too large to decode safely ({e}); downscale or tile it") from None
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist; check the path") from None
    except PermissionError:
        raise DataError(f"{what} {path} cannot be read (permission denied); fix its permissions") from None
    except Image.UnidentifiedImageError:
        raise DataError(
            f"{what} {path} is not an image unetkit reads ({', '.join(FORMATS)}) or its header is corrupt; "
            f"{_FIX_REEXPORT}"
        ) from None
    except Exception as e:  # OSError (truncated), ValueError, SyntaxError, struct errors, ... from PIL
        detail = str(e) or type(e).__name__
        raise DataError(f"{what} {path} is unreadable or truncated ({detail}); {_FIX_REEXPORT}") from None


def _scale_wide(a: np.ndarray) -> np.ndarray:
    """Stretch finite values of a 32-bit int or float array to 0..255; NaN/-inf -> 0, +inf -> 255."""
    with np.errstate(invalid="ignore"):  # signalling NaNs in damaged files warn on the cast
        a = a.astype(np.float64)
    finite = np.isfinite(a)
    out = np.zeros(a.shape, dtype=np.uint8)
    out[np.isposinf(a)] = 255
    if finite.any():
        lo, hi = a[finite].min(), a[finite].max()
        if hi > lo:
            out[finite] = np.rint((a[finite] - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return out


def _image_array(im: Image.Image) -> np.ndarray:
    """A decoded PIL image -> uint8 (H, W, C), C in 1/3/4 (see the module docstring)."""
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode in ("L", "RGB", "RGBA"):
        a = np.asarray(im)
    elif mode == "P":
        has_alpha = "transparency" in im.info
        a = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    elif mode in ("LA", "La", "PA", "RGBa"):
        a = np.asarray(im.convert("RGBA"))
    elif mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint16)
    elif mode in ("I", "F"):
        a = _scale_wide(np.asarray(im))
    else:  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        a = np.asarray(im.convert("RGB"))
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint16:
        a = a.astype(np.uint8, copy=False)
    return np.require(a, requirements=["C", "W"])  # writable, for torch.from_numpy


def _check_tiff_claim(path: Path, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse, before decoding, a TIFF whose header claims more than the limit or far more than its file holds.

    tifffile fills strips a damaged file lacks, so a flipped header byte would otherwise allocate gigabytes.
    """
    values = int(np.prod(shape))
    if values > 4 * MAX_PIXELS:
        raise DataError(f"image {path} claims {shape} values, over the limit; downscale or tile it")
    claimed, size = values * itemsize, path.stat().st_size
    if claimed > max(64 * 2**20, 256 * size):  # no real image compresses 256-fold past 64 MiB
        raise DataError(
            f"image {path} claims {shape} values ({claimed:,} bytes) from a file of {size:,} bytes: it is damaged "
            f"or a decompression bomb; {_FIX_REEXPORT}"
        )


def _tiff_array(path: Path) -> np.ndarray:
    """A TIFF through tifffile -> (H, W, bands) uint8/uint16 (other types stretched to uint8 per image)."""
    try:
        import tifffile
    except ImportError:
        raise DataError(
            f"image {path} is a TIFF that Pillow cannot read (e.g. more than 4 bands); reading it needs "
            "tifffile: pip install 'unetkit[tiff]'"
        ) from None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            _check_tiff_claim(path, series.shape, np.dtype(series.dtype).itemsize)
            a, axes = series.asarray(), series.axes
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"image {path} is not a TIFF tifffile reads ({e}); {_FIX_REEXPORT}") from None
    if a.ndim == 3 and axes[0] in "SC" and axes[-1] not in "SC":  # planar: bands first
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or 0 in a.shape:
        raise DataError(f"image {path} has axes {axes} (shape {a.shape}); give a single 2D image with bands")
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise DataError(f"image {path} is {a.shape[1]}x{a.shape[0]} pixels, over the limit of {MAX_PIXELS:,}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype not in (np.uint8, np.uint16):
        a = _scale_wide(a)
    return np.require(a, requirements=["C", "W"])


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, C): uint8 for 8-bit files, uint16 for 16-bit ones; C = 1 (gray),
    3 (RGB), 4 (RGBA), or the band count of a multi-band TIFF; DataError on failure."""
    path = Path(path)
    try:
        im = _open(path, "image")
    except DataError:
        if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
            return _tiff_array(path)
        raise
    try:
        return _image_array(im)
    except Exception as e:
        raise DataError(f"image {path} (mode {im.mode}) could not be converted ({e}); {_FIX_REEXPORT}") from None


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file with its raw values: (H, W) for one channel, (H, W, C) for RGB(A).

    Palette PNGs keep their indices (class ids, as in Pascal VOC), 16-bit masks keep uint16 values,
    32-bit masks int32, 1-bit masks become 0/1. ``LA`` drops the alpha channel; ``CMYK`` etc. become RGB.
    Float masks must hold whole numbers (they become int32).
    """
    path = Path(path)
    im = _open(path, "mask")
    mode = im.mode
    try:
        if mode == "1":
            a = np.asarray(im).astype(np.uint8)
        elif mode in ("L", "P", "RGB", "RGBA"):
            a = np.asarray(im)
        elif mode in ("LA", "La", "PA"):
            a = np.asarray(im)[:, :, 0]
        elif mode.startswith("I;16"):
            a = np.asarray(im).astype(np.uint16)
        elif mode == "I":
            a = np.asarray(im).astype(np.int32)
        elif mode == "F":
            f = np.asarray(im)
            if not np.isfinite(f).all() or (f != np.round(f)).any():
                raise DataError(
                    f"mask {path} holds floating-point values that are not whole numbers (or NaN); "
                    "masks must hold integer class ids: re-export it as an 8-bit PNG"
                )
            a = f.astype(np.int32)
        else:
            a = np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"mask {path} (mode {mode}) could not be converted ({e}); {_FIX_REEXPORT}") from None
    return np.require(a, requirements=["C", "W"])


def header_info(path: str | Path) -> tuple[int, int, int] | None:
    """(width, height, channels as ``read_image`` returns them) from the file's header alone, or None
    when Pillow cannot tell (unreadable files are reported when they are loaded)."""
    try:
        with open(path, "rb") as f, Image.open(f, formats=FORMATS) as im:
            mode, size = im.mode, im.size
            alpha = "transparency" in im.info
    except Exception:
        return None
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        bands = 1
    elif mode == "P":
        bands = 4 if alpha else 3
    elif mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        bands = 4
    else:
        bands = 3
    w, h = size
    return w, h, bands
