"""The HTTP API in-process: every endpoint, every format, every limit, and batching under concurrency."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import struct
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

with warnings.catch_warnings():  # starlette's notice about httpx, at import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from unetkit.config import ModelConfig, RunConfig  # noqa: E402
from unetkit.model import unet_model  # noqa: E402
from unetkit.plots import colorize, overlay  # noqa: E402
from unetkit.predict import Predictor  # noqa: E402
from unetkit.run import save_run  # noqa: E402
from unetkit.serve import MicroBatcher, create_app  # noqa: E402
from unetkit.serve import app as app_module  # noqa: E402
from unetkit.serve.batcher import Overloaded  # noqa: E402
from unetkit.serve.budget import BudgetTimeout, PixelBudget  # noqa: E402

NAMES = ["background", "square", "disc"]
PALETTE = [[10, 20, 30], [200, 40, 40], [40, 200, 90]]
MAX_UPLOAD = 300_000
MAX_PIXELS = 1_000_000


def png_bytes(array: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def picture(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth picture (compresses well), different for each seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = rng.uniform(0, 255, 3)
    phase = xx[..., None] / rng.uniform(3, 9) + yy[..., None] / rng.uniform(3, 9) + rng.uniform(0, 6, 3)
    img = base + 60 * np.sin(phase)
    return np.clip(img, 0, 255).astype(np.uint8)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = RunConfig(
        model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3), class_names=NAMES, palette=PALETTE
    )
    model = unet_model((32, 32, 3), n_filters=4, n_classes=3)
    return save_run(tmp_path_factory.mktemp("serve") / "run", model, config)


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.from_run(run_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def client(predictor: Predictor):
    app = create_app(predictor, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, batch_window_ms=40, max_batch=8)
    with TestClient(app) as c:
        yield c


def post(client: TestClient, data: bytes, fmt: str = "png", content_type: str = "image/png", **params: object):
    files = {"file": ("x.png", data, content_type)}
    return client.post("/predict", params={"format": fmt, **params}, files=files)


def test_health_info_and_openapi(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == "pytorch"
    info = client.get("/info").json()
    assert info["input_size"] == [32, 32, 3] and info["n_classes"] == 3
    classes = [{"id": i, "name": n, "colour": c} for i, (n, c) in enumerate(zip(NAMES, PALETTE))]
    assert info["classes"] == classes
    assert info["model"]["name"] == "unet" and info["limits"]["max_pixels"] == MAX_PIXELS
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert set(spec["paths"]) >= {"/predict", "/info", "/health"}


def test_page_docs_and_static_are_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/predict" in docs.text and "/openapi.json" in docs.text
    for text in (page.text, docs.text):  # every resource the pages refer to comes from this server
        links = re.findall(r"""(?:src|href)=["']([^"']*)["']""", text)
        assert links and all(link.startswith(("/", "data:")) for link in links), links
    script, css = client.get("/static/app.js").text, client.get("/static/style.css").text
    assert "http" not in script and "import" not in script and "url(" not in css and "@import" not in css
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    for name in ("../app.py", "..%2Fapp.py", "%2e%2e/uploads.py", "nothing.js"):
        assert client.get(f"/static/{name}").status_code == 404
    assert client.get("/redoc").status_code == 404


def test_every_format_keeps_the_original_size(client: TestClient, predictor: Predictor) -> None:
    image = picture(45, 70, 0)
    expected = predictor.predict(image)
    r = post(client, png_bytes(image))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    assert mask.shape == (45, 70) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected)
    colour = np.asarray(Image.open(io.BytesIO(post(client, png_bytes(image), "colour").content)))
    np.testing.assert_array_equal(colour, colorize(expected, PALETTE))
    over = post(client, png_bytes(image), "overlay", alpha=0.3)
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(over.content))), overlay(image, expected, PALETTE, 0.3)
    )
    body = post(client, png_bytes(image), "json").json()
    assert (body["width"], body["height"], body["n_classes"]) == (70, 45, 3)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
    np.testing.assert_array_equal(decoded, expected)
    counts = np.bincount(expected.ravel(), minlength=3)
    assert [c["pixels"] for c in body["classes"]] == counts.tolist()
    assert [c["name"] for c in body["classes"]] == NAMES and [c["colour"] for c in body["classes"]] == PALETTE
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)
    raw = client.post("/predict", content=png_bytes(image), headers={"content-type": "image/png"})
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(raw.content))), expected)


@pytest.mark.parametrize("small_upload_bytes", [0, 10**9])
def test_small_uploads_inline_and_others_on_worker_threads_agree(
    client: TestClient, predictor: Predictor, monkeypatch: pytest.MonkeyPatch, small_upload_bytes: int
) -> None:
    """Small uploads are parsed, decoded and encoded on the event loop, others on worker threads: same answer."""
    calls: list[str] = []
    real = app_module.run_in_threadpool

    async def spy(fn, *args):  # type: ignore[no-untyped-def]
        calls.append(fn.__name__)
        return await real(fn, *args)

    monkeypatch.setattr(app_module, "run_in_threadpool", spy)
    monkeypatch.setattr(app_module, "SMALL_UPLOAD_BYTES", small_upload_bytes)
    image = picture(45, 70, 0)
    r = post(client, png_bytes(image), "overlay", alpha=0.3)
    assert r.status_code == 200
    expected = overlay(image, predictor.predict(image), PALETTE, 0.3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected)
    on_workers = ["extract_image_bytes", "image_size", "decode_image", "render"]
    assert calls == ([] if small_upload_bytes else on_workers)


def test_other_image_kinds(client: TestClient, predictor: Predictor) -> None:
    gray = picture(40, 33, 1)[:, :, 0]
    r = post(client, png_bytes(gray))
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (33, 40)
    rgba = np.dstack([picture(20, 24, 2), np.full((20, 24), 128, np.uint8)])
    assert post(client, png_bytes(rgba)).status_code == 200
    wide = Image.fromarray(picture(16, 16, 3)[:, :, 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    wide.save(buf, format="PNG")
    assert post(client, buf.getvalue()).status_code == 200
    jpeg = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: the answer follows the displayed orientation
    Image.fromarray(picture(30, 50, 4)).save(jpeg, format="JPEG", exif=exif)
    r = post(client, jpeg.getvalue(), "json", content_type="image/jpeg")
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (30, 50)
    tiny = post(client, png_bytes(picture(1, 1, 5)))
    assert tiny.status_code == 200 and Image.open(io.BytesIO(tiny.content)).size == (1, 1)


def test_limits_answer_clear_4xx(client: TestClient) -> None:
    big = np.random.default_rng(0).integers(0, 256, size=(400, 400, 3), dtype=np.uint8)  # ~480 kB, noisy
    r = post(client, png_bytes(big))
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = client.post("/predict", content=b"\0" * (MAX_UPLOAD + 100_000), headers={"content-type": "image/png"})
    assert r.status_code == 413
    r = post(client, bomb_png(50_000, 50_000))
    assert r.status_code == 413 and "2500000000 pixels" in r.json()["detail"]
    r = post(client, bomb_png(5000, 5000))  # under PIL's guard, over ours
    assert r.status_code == 413 and "5000x5000" in r.json()["detail"]
    flat = png_bytes(np.zeros((1100, 1000), np.uint8))  # a few kB that decode to 1.1 megapixels
    assert len(flat) < 10_000 and post(client, flat).status_code == 413
    r = client.post("/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "Content-Type" in r.json()["detail"]
    r = client.post("/predict", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415
    assert post(client, png_bytes(picture(8, 8, 0)), content_type="text/html").status_code == 415
    truncated = png_bytes(picture(40, 40, 0))[:200]
    for junk in (b"garbage bytes", truncated, b"\x89PNG\r\n\x1a\n" + b"\0" * 50, b"GIF89a"):
        r = post(client, junk)
        assert r.status_code == 422, junk[:20]
        assert isinstance(r.json()["detail"], str)
    assert post(client, b"").status_code == 422
    r = client.post("/predict", files={"other": (None, b"abc"), "more": (None, b"1")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = client.post("/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400
    assert post(client, png_bytes(picture(8, 8, 0)), "gif").status_code == 422
    assert post(client, png_bytes(picture(8, 8, 0)), "overlay", alpha=2).status_code == 422
    health = client.get("/health").json()  # still alive, and counted every refusal
    assert health["status"] == "ok" and health["responses"]["413"] >= 4 and health["pixels_in_flight"] == 0


def test_concurrent_requests_are_batched_and_independent(client: TestClient, predictor: Predictor) -> None:
    images = [picture(24 + 3 * i, 40 - 2 * i, 10 + i) for i in range(8)]
    expected = [predictor.predict(im) for im in images]
    stats = client.app.state.batcher.stats
    before = stats.multi_item_batches
    barrier = threading.Barrier(len(images))

    def one(i: int) -> np.ndarray:
        data = png_bytes(images[i])
        barrier.wait()
        r = post(client, data)
        assert r.status_code == 200
        return np.asarray(Image.open(io.BytesIO(r.content)))

    for _ in range(3):  # the window is 40 ms; one round practically always batches, retry for slow machines
        with ThreadPoolExecutor(len(images)) as pool:
            results = list(pool.map(one, range(len(images))))
        for got, want in zip(results, expected):
            assert got.shape == want.shape
            assert (got == want).mean() > 0.999  # batch composition may move a logit by an ulp at a tie
        if stats.multi_item_batches > before:
            break
    assert stats.multi_item_batches > before and stats.max_batch_seen >= 2
    print("batch sizes:", dict(stats.sizes))


def test_batcher_isolates_failures_and_bounds_its_queue() -> None:
    def double(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return [2 * x for x in items]

    batcher = MicroBatcher(double, window_ms=30, max_batch=4)
    futures = [batcher.submit(x) for x in (1, 13, 3)]
    assert futures[0].result(5) == 2 and futures[2].result(5) == 6
    with pytest.raises(ValueError, match="unlucky"):
        futures[1].result(5)
    assert batcher.stats.failed == 1
    batcher.close()

    gate = threading.Event()
    slow = MicroBatcher(lambda items: (gate.wait(5), items)[1], window_ms=0, max_batch=1, max_queue=1)
    first = slow.submit(1)
    time.sleep(0.05)  # the worker holds item 1; the queue has room for one more
    second = slow.submit(2)
    with pytest.raises(Overloaded):
        slow.submit(3)
    gate.set()
    assert first.result(5) == 1 and second.result(5) == 2
    slow.close()


def test_pixel_budget_waits_in_order_and_times_out() -> None:
    async def scenario() -> list[str]:
        budget, order = PixelBudget(10), []
        await budget.acquire(8)

        async def later(name: str, n: int) -> None:
            await budget.acquire(n)
            order.append(name)

        waiting = [asyncio.create_task(later("a", 5)), asyncio.create_task(later("b", 2))]
        await asyncio.sleep(0.01)
        assert order == [] and budget.used == 8
        with pytest.raises(BudgetTimeout):
            await budget.acquire(9, timeout=0.01)
        budget.release(8)
        await asyncio.gather(*waiting)
        assert budget.used == 7
        budget.release(5)
        budget.release(2)
        await budget.acquire(100, timeout=1)  # larger than the whole budget: runs once it is alone
        return order

    assert asyncio.run(scenario()) == ["a", "b"]


def test_serves_an_onnx_file(tmp_path: Path, run_dir: Path, predictor: Predictor) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from unetkit.export import export_onnx

    report = export_onnx(run_dir, tmp_path / "m.onnx", dynamic=True, seed=0)
    with TestClient(create_app(report.path, batch_window_ms=1)) as c:
        assert c.get("/info").json()["model"]["backend"] == "onnxruntime"
        image = picture(33, 21, 7)
        r = post(c, png_bytes(image))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), predictor.predict(image))
