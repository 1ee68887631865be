"""Serving for a deployment: API key on every API route (401 without), key never logged, CORS off unless asked,
option checks in one paragraph, precision and post-processing on the server."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from unetkit.cli import app as cli  # noqa: E402
from unetkit.config import ModelConfig, RunConfig  # noqa: E402
from unetkit.errors import ConfigError  # noqa: E402
from unetkit.model import unet_model  # noqa: E402
from unetkit.predict import Predictor  # noqa: E402
from unetkit.run import save_run  # noqa: E402
from unetkit.serve import create_app  # noqa: E402
from unetkit.serve.auth import read_api_key  # noqa: E402

KEY = "s3cret-key-for-tests-0123456789"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = RunConfig(model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3))
    return save_run(
        tmp_path_factory.mktemp("access") / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config
    )


def png(h: int = 24, w: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_every_api_route_needs_the_key_and_the_page_does_not(run_dir: Path) -> None:
    with TestClient(create_app(run_dir, device="cpu", api_key=KEY, batch_window_ms=0)) as client:
        for path in ("/info", "/health", "/docs", "/openapi.json"):
            r = client.get(path)
            assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"], path
            assert r.headers["www-authenticate"].startswith("Bearer") and KEY not in r.text
        files = {"file": ("a.png", png(), "image/png")}
        assert client.post("/predict", files=files).status_code == 401
        wrong = {"Authorization": "Bearer not-the-key"}
        assert client.post("/predict", files=files, headers=wrong).status_code == 401
        assert client.get("/info", headers={"Authorization": KEY}).status_code == 401  # no scheme
        for path in ("/", "/static/app.js", "/static/style.css"):
            assert client.get(path).status_code == 200, path
        ok = {"Authorization": f"Bearer {KEY}"}
        r = client.post("/predict", files=files, headers=ok)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (20, 24)
        info = client.get("/info", headers=ok).json()
        assert info["access_control"] is True and info["model"]["precision"] == "fp32"
        assert client.get("/health", headers=ok).json()["responses"]["401"] >= 7


def test_cors_is_off_unless_an_origin_is_given(run_dir: Path) -> None:
    origin = {"Origin": "https://app.example.com"}
    with TestClient(create_app(run_dir, device="cpu")) as client:
        assert "access-control-allow-origin" not in client.get("/info", headers=origin).headers
    with TestClient(create_app(run_dir, device="cpu", cors_origins=["https://app.example.com"], api_key=KEY)) as c:
        pre = c.options(
            "/predict",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example.com"
        r = c.get("/info", headers={**origin, "Authorization": f"Bearer {KEY}"})
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        other = c.get("/info", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"})
        assert "access-control-allow-origin" not in other.headers


def test_key_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    assert read_api_key(tmp_path / "key", {}) == KEY
    assert read_api_key(None, {"UNETKIT_API_KEY": KEY}) == KEY and read_api_key(None, {}) is None
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ConfigError, match="at least 16"):
        read_api_key(tmp_path / "short", {})
    with pytest.raises(ConfigError, match="cannot be read"):
        read_api_key(tmp_path / "missing", {})


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "80000"], "--port must be between"),
        (["--log-level", "banana"], "--log-level must be one of"),
        (["--api-key-file", "/nonexistent/key"], "--api-key-file"),
        (["--ssl-keyfile", "k.pem"], "--ssl-certfile"),
        (["--precision", "fp16"], "--precision must be one of"),
    ],
)
def test_bad_server_options_get_one_paragraph(run_dir: Path, args: list[str], words: str) -> None:
    result = CliRunner().invoke(cli, ["serve", str(run_dir), *args])
    assert result.exit_code != 0 and words in result.output and "Traceback" not in result.output, result.output


def test_the_key_is_never_logged(run_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "wb")
    env = {**os.environ, "UNETKIT_API_KEY": KEY}
    command = [sys.executable, "-c", "from unetkit.cli import main; main()", "serve", str(run_dir)]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "debug"], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((tmp_path / "server.log").read_text())
                time.sleep(0.2)
        for key in (KEY, "wrong-" + KEY):
            req = urllib.request.Request(
                url + "/predict?format=json",
                data=png(),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "image/png"},
            )
            try:
                urllib.request.urlopen(req, timeout=30).close()
                status = 200
            except urllib.error.HTTPError as e:
                status = e.code
            assert status == (200 if key == KEY else 401)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "API key required" in text and "POST /predict" in text  # it did log the requests
    assert KEY not in text


def test_server_precision_and_postprocessing(run_dir: Path) -> None:
    pytest.importorskip("scipy")
    from unetkit.postprocess import PostProcess

    post = PostProcess(min_size=30)
    with TestClient(create_app(run_dir, device="cpu", precision="bf16", postprocess=post)) as client:
        info = client.get("/info").json()
        assert info["model"]["precision"] == "bf16" and info["postprocess"] == "--min-size 30"
        r = client.post("/predict", files={"file": ("a.png", png(40, 44), "image/png")})
        got = np.asarray(Image.open(io.BytesIO(r.content)))
    p = Predictor.from_run(run_dir, device="cpu", precision="bf16")
    np.testing.assert_array_equal(got, post(p.predict(np.asarray(Image.open(io.BytesIO(png(40, 44)))))))
