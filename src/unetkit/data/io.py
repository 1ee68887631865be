"""Decode image and mask files into numpy arrays, turning every failure into one clear ``DataError``.

Images become uint8 (H, W, C) with C in 1/3/4, ready for ``preprocess.to_channels``. Masks keep their
raw values (palette PNGs keep their indices, 16-bit masks their 16-bit values): turning them into
class ids is ``masks.decode_mask``'s job, so that no conversion silently changes a label.

Conversions that change values, for images only:

- 16-bit integer images (``I;16*``): ``value >> 8``. The same scale for every file, so an intensity
  means the same in every image of a data set (data using only 12 of the 16 bits look dark:
  rescale them beforehand if that matters).
- 32-bit integer and float images (``I``, ``F``, e.g. TIFFs from scientific tools): finite values
  are stretched per image from their min..max to 0..255 (a constant image becomes 0); NaN and
  -inf become 0, +inf 255. There is no common scale for such data, so this is the pragmatic choice.
- palette (``P``) -> RGB, or RGBA when the palette has transparency; ``LA``/``PA`` -> RGBA;
  ``CMYK``/``YCbCr``/``LAB``/``HSV``/``RGBX`` -> RGB; 1-bit -> 0/255.

EXIF orientation is applied to images and masks alike, so that they stay aligned.
"""

from __future__ import annotations

from pathlib import Path

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


def _scale_16bit(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint16) >> 8).astype(np.uint8)


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
        a = _scale_16bit(np.asarray(im))
    elif mode in ("I", "F"):
        a = _scale_wide(np.asarray(im))
    else:  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        a = np.asarray(im.convert("RGB"))
    if a.ndim == 2:
        a = a[:, :, None]
    return np.require(a, dtype=np.uint8, requirements=["C", "W"])  # writable, for torch.from_numpy


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 (H, W, C) with C = 1 (gray), 3 (RGB) or 4 (RGBA); DataError on failure."""
    path = Path(path)
    im = _open(path, "image")
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
