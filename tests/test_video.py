"""Video round trip: a tiny MP4 made with PyAV (with an audio track) -> mask and overlay videos, frame masks."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from PIL import Image  # noqa: E402

from unetkit.config import ModelConfig, RunConfig  # noqa: E402
from unetkit.model import unet_model  # noqa: E402
from unetkit.predict import Predictor  # noqa: E402
from unetkit.run import save_run  # noqa: E402


def make_video(path: Path, frames: int = 7, rate: int = 12, size: tuple[int, int] = (30, 34)) -> list[np.ndarray]:
    """An MPEG-4 video with a silent AAC track; returns the frames as PyAV decodes them back."""
    h, w = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        video = c.add_stream("mpeg4", rate=rate)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        audio = c.add_stream("aac", rate=16000)
        for i in range(frames):
            img = np.clip(rng.integers(60, 200, (h, w, 3)) + i * 8, 0, 255).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        silence.sample_rate = 16000
        for packet in audio.encode(silence):
            c.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                c.mux(packet)
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 1
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def test_video_round_trip(tmp_path: Path) -> None:
    from unetkit.predict_files import predict_files

    config = RunConfig(model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3))
    run = save_run(tmp_path / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config)
    decoded = make_video(tmp_path / "clip.mp4")
    report = predict_files(run, [tmp_path / "clip.mp4"], tmp_path / "out", device="cpu", frames=True, batch_size=3)
    assert report.written == [tmp_path / "clip.mp4"]
    out = tmp_path / "out"
    predictor = Predictor.from_run(run, device="cpu")
    frames = sorted((out / "clip_frames").iterdir())
    assert len(frames) == len(decoded) == 7
    for f, image in zip(frames, decoded):
        np.testing.assert_array_equal(np.asarray(Image.open(f)), predictor.predict(image))
    for name in ("clip_mask.mp4", "clip_overlay.mp4"):
        with av.open(str(out / name)) as c:
            stream = c.streams.video[0]
            assert stream.average_rate == Fraction(12) and not c.streams.audio  # rate kept, audio dropped
            got = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        assert len(got) == 7 and got[0].shape == (30, 34, 3)
    with open(out / "manifest.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["mask_video"] == "clip_mask.mp4" and row["frames"] == "clip_frames"


def test_a_broken_video_is_skipped_and_reported(tmp_path: Path) -> None:
    from unetkit.predict_files import predict_files

    config = RunConfig(model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3))
    run = save_run(tmp_path / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config)
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    report = predict_files(run, [tmp_path / "bad.mp4"], tmp_path / "out", device="cpu")
    assert report.written == [] and report.skipped and "bad.mp4" in str(report.skipped[0][0])
    assert not any(p.suffix == ".mp4" for p in (tmp_path / "out").iterdir())  # no half-written video left
