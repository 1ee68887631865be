"""Reading an uploaded image safely: bounded body, in-memory multipart, header-checked decoding.

Nothing here touches the disk: the body is read into memory up to a byte limit (Starlette's own form
parser would spool large files to a temporary file), multipart is parsed with python-multipart's
streaming parser, and PIL decodes from a ``BytesIO`` restricted to a few formats. The image's size is
read from its header and checked against a pixel limit before any pixel is decoded, which stops
decompression bombs. Every failure is an ``UploadError`` carrying its HTTP status and a message.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from ..data.io import _image_array  # the one conversion path for 16-bit, float, palette, CMYK, ...

# PIL formats accepted from clients (a small decoder surface): what unetkit reads from folders, plus WebP/GIF.
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
IMAGE_TYPES = "image/png, image/jpeg, image/bmp, image/tiff, image/webp, image/gif"
MULTIPART_SLACK = 64 * 1024  # multipart headers and boundaries on top of the file itself
MAX_PARTS = 8


class UploadError(Exception):
    """A request the server refuses, with the HTTP status to answer and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _mb(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


def _type_ok(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base.startswith("image/") or base in ("application/octet-stream", "")


async def read_body(stream: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(400, f"invalid Content-Length header {content_length[:40]!r}") from None
        if declared > limit:
            raise UploadError(413, f"upload of {_mb(declared)} is over the limit of {_mb(limit)}")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"upload is over the limit of {_mb(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Part:
    headers: dict[str, str]
    data: bytearray


def _multipart_file(body: bytes, content_type: str, limit: int) -> tuple[bytes, str]:
    """The file part of a multipart/form-data body (the field ``file``, else the first with a file name)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary; send the image as a form field named 'file'")
    parts: list[_Part] = []
    field, value = bytearray(), bytearray()

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise UploadError(400, f"more than {MAX_PARTS} form fields; send one image as the field 'file'")
        parts.append(_Part({}, bytearray()))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.data += data[start:end]
        if len(part.data) > limit:
            raise UploadError(413, f"uploaded file is over the limit of {_mb(limit)}")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers[field.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        field.clear()
        value.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except UploadError:
        raise
    except (FormParserError, ValueError, IndexError) as e:
        detail = str(e)[:200] or type(e).__name__
        raise UploadError(400, f"malformed multipart/form-data body ({detail})") from None
    chosen = None
    for part in parts:
        _, disp = parse_options_header(part.headers.get("content-disposition", ""))
        if disp.get(b"name") == b"file":
            chosen = part
            break
        if chosen is None and b"filename" in disp:
            chosen = part
    if chosen is None:
        raise UploadError(422, "no file in the form; send the image as a form field named 'file'")
    return bytes(chosen.data), chosen.headers.get("content-type", "")


def extract_image_bytes(body: bytes, content_type: str, limit: int) -> bytes:
    """The image bytes of a request: a multipart form (field ``file``) or a raw ``image/*`` body."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base == "multipart/form-data":
        data, part_type = _multipart_file(body, content_type, limit)
        if not _type_ok(part_type):
            raise UploadError(
                415, f"the uploaded file is {part_type.split(';')[0]!r}, not an image; accepted: {IMAGE_TYPES}"
            )
    elif base.startswith("image/") or base == "application/octet-stream":
        data = body
    else:
        shown = base or "no Content-Type"
        raise UploadError(
            415,
            f"unsupported Content-Type {shown[:80]!r}: send multipart/form-data with the "
            f"image in the field 'file', or the raw image as {IMAGE_TYPES}",
        )
    if len(data) > limit:
        raise UploadError(413, f"uploaded file of {_mb(len(data))} is over the limit of {_mb(limit)}")
    if not data:
        raise UploadError(422, "the uploaded file is empty")
    return data


def image_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image header; 413 over ``max_pixels``, 422 when not a readable image."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:  # PIL's own guard, far above max_pixels
        raise UploadError(
            413, f"image is too large to decode safely ({e}); the limit here is {max_pixels:,} pixels"
        ) from None
    except Image.UnidentifiedImageError:
        raise UploadError(
            422, f"the file is not an image this server reads ({', '.join(FORMATS)}) or its header is corrupt"
        ) from None
    except Exception as e:  # struct errors, SyntaxError, ValueError from malformed headers
        raise UploadError(422, f"unreadable image header ({str(e)[:200] or type(e).__name__})") from None
    if w <= 0 or h <= 0:
        raise UploadError(422, f"image has zero size ({w}x{h})")
    if w * h > max_pixels:
        raise UploadError(
            413,
            f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(a guard against decompression bombs); downscale it",
        )
    return w, h


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode to uint8 (H, W, C), C in 1/3/4, with the same conversions as reading files (data.io)."""
    image_size(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            im.load()
            out = ImageOps.exif_transpose(im)
            if out is im:
                out = im.copy()
        return _image_array(out)
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError(413, f"image is too large to decode safely (limit {max_pixels:,} pixels)") from None
    except Exception as e:  # truncated data, corrupt chunks, bad EXIF, ...
        raise UploadError(
            422, f"the image could not be decoded ({str(e)[:200] or type(e).__name__}); it may be truncated or corrupt"
        ) from None
