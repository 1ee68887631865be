"""Video in ``predict`` (extra ``video``: PyAV, which brings its own ffmpeg).

A video is decoded on one thread, its frames are predicted in batches on the caller's thread and
the outputs are encoded on another thread, so that decoding, the model and encoding overlap. It
writes a colour-mask video (``{stem}_mask.mp4``), an overlay video (``{stem}_overlay.mp4``) and, with
``frames``, one index-mask PNG per frame (``{stem}_frames/000000.png``: exact class ids, which a lossy
video cannot hold). The frame rate is kept; audio and subtitles are dropped.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, first_line, needs_extra
from .loggers import advance, progress_bar
from .plots import colorize, overlay, save_png
from .predict import PredictorBase

_END = object()
CODECS = ("libx264", "h264", "mpeg4")  # the first the bundled ffmpeg can encode with


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise needs_extra("video prediction", "PyAV", "video") from None
    return av


def video_outputs(video: Path, out: Path, kinds: Sequence[str], frames: bool) -> dict[str, Path]:
    """The files (and the frames folder) a video's prediction writes, by kind."""
    paths: dict[str, Path] = {}
    if "mask" in kinds or "colour" in kinds:
        paths["mask_video"] = out / f"{video.stem}_mask.mp4"
    if "overlay" in kinds:
        paths["overlay_video"] = out / f"{video.stem}_overlay.mp4"
    if frames:
        paths["frames"] = out / f"{video.stem}_frames"
    return paths


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even width and height (yuv420p needs them) by repeating the last row/column."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    pad = ((0, h % 2), (0, w % 2)) + ((0, 0),) * (frame.ndim - 2)
    return np.pad(frame, pad, mode="edge")


class _Encoder:
    """One output video, H.264 (or MPEG-4) in MP4 at the source's frame rate, written to a temporary file."""

    def __init__(self, path: Path, rate: Fraction, width: int, height: int):
        av = _av()
        self.path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".mp4")
        os.close(fd)
        self.tmp = Path(tmp)
        self.container = av.open(str(self.tmp), "w", format="mp4")
        codec = next(c for c in CODECS if _can_encode(av, c))
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        self.frame_class = av.VideoFrame

    def write(self, rgb: np.ndarray) -> None:
        frame = self.frame_class.from_ndarray(np.ascontiguousarray(_even(rgb)), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self, keep: bool) -> None:
        try:
            if keep:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
        if keep:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _can_encode(av: Any, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


def _decode(path: Path, batch: int, sink: queue.Queue) -> None:
    """Decode the first video stream into RGB batches on ``sink``; an error travels as the last item."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            chunk: list[np.ndarray] = []
            for frame in container.decode(stream):
                chunk.append(frame.to_ndarray(format="rgb24"))
                if len(chunk) == batch:
                    sink.put(chunk)
                    chunk = []
            if chunk:
                sink.put(chunk)
        sink.put(_END)
    except Exception as e:  # noqa: BLE001 - reported to the caller as a DataError
        sink.put(e)


def probe(path: Path) -> tuple[Fraction, int, int, int]:
    """Frame rate, width, height and frame count (0 when the container does not say) of a video."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path} holds no video stream")
            s = container.streams.video[0]
            rate = s.average_rate or s.base_rate or s.guessed_rate or Fraction(25)
            return Fraction(rate), s.codec_context.width, s.codec_context.height, int(s.frames or 0)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path} is not a video PyAV can read ({first_line(e)})") from None


def _batches(path: Path, batch: int) -> Iterator[list[np.ndarray]]:
    frames: queue.Queue = queue.Queue(maxsize=3)
    threading.Thread(target=_decode, args=(path, batch, frames), name="unetkit-video-decode", daemon=True).start()
    while True:
        item = frames.get()
        if item is _END:
            return
        if isinstance(item, Exception):
            raise DataError(f"decoding {path} failed: {first_line(item)}") from None
        yield item


def predict_video(
    predictor: PredictorBase,
    path: str | Path,
    out: str | Path,
    *,
    outputs: Sequence[str] = ("mask", "overlay"),
    frames: bool = False,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Path]:
    """Predict every frame of a video; write the mask and overlay videos (and index PNGs with ``frames``)."""
    path, out = Path(path), Path(out)
    rate, width, height, count = probe(path)
    paths = video_outputs(path, out, outputs, frames)
    encoders = {k: _Encoder(p, rate, width, height) for k, p in paths.items() if k != "frames"}
    if frames:
        paths["frames"].mkdir(parents=True, exist_ok=True)
    work: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    writer = threading.Thread(
        target=_encode_loop, args=(work, encoders, paths, predictor.palette, errors), name="unetkit-video-encode"
    )
    writer.start()
    ok = False
    try:
        with progress_bar(progress, count or None, path.name) as bar:
            for chunk in _batches(path, batch_size):
                masks = predictor.predict_batch(chunk, batch_size=batch_size)
                if errors:
                    break
                work.put((chunk, masks))
                if bar is not None:
                    advance(bar, len(chunk), "frames")
        ok = not errors
    finally:
        work.put(_END)
        writer.join()
        for enc in encoders.values():
            enc.close(keep=ok and not errors)
    if errors:
        raise DataError(f"encoding the predictions of {path} failed: {errors[0]}")
    return paths


def _encode_loop(
    work: queue.Queue, encoders: dict[str, _Encoder], paths: dict[str, Path], palette: list, errors: list
) -> None:
    index = 0
    while True:
        item = work.get()
        if item is _END:
            return
        if errors:
            continue
        try:
            for image, mask in zip(*item):
                if "mask_video" in encoders:
                    encoders["mask_video"].write(colorize(mask, palette))
                if "overlay_video" in encoders:
                    encoders["overlay_video"].write(overlay(image, mask, palette))
                if "frames" in paths:
                    save_png(paths["frames"] / f"{index:06d}.png", mask)  # 16-bit over 255 ids
                index += 1
        except Exception as e:  # noqa: BLE001 - reported by predict_video
            errors.append(e)
