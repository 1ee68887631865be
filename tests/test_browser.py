"""The web page in a real headless Chromium: upload an image, see the overlay and the legend.

Starts `unetkit serve` on a loopback port with a tiny run, drives Debian's chromium through
selenium and /usr/bin/chromedriver, and saves a screenshot into the test's temporary folder.
Skips with the reason when selenium, chromium or chromedriver is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = next(
    (
        p
        for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"))
        if p and os.path.exists(p)
    ),
    None,
)
DRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


API_KEY = "browser-test-key-0123456789"


@pytest.fixture
def server(tmp_path: Path):
    yield from _serve(tmp_path, {})


@pytest.fixture
def keyed_server(tmp_path: Path):
    yield from _serve(tmp_path, {"UNETKIT_API_KEY": API_KEY})


def _serve(tmp_path: Path, env: dict[str, str]):
    pytest.importorskip("fastapi")
    import torch

    from unetkit.config import ModelConfig, RunConfig
    from unetkit.model import unet_model
    from unetkit.run import save_run

    torch.manual_seed(0)
    config = RunConfig(
        model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3),
        class_names=["background", "square", "disc"],
        palette=[[30, 30, 30], [230, 60, 50], [40, 170, 240]],
    )
    run = save_run(tmp_path / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config)
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    command = [
        sys.executable,
        "-c",
        "from unetkit.cli import main; main()",
        "serve",
        str(run),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"unetkit serve did not start:\n{(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    webdriver = pytest.importorskip("selenium.webdriver", reason="no selenium (pip install selenium)")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let selenium-manager download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    except Exception as e:  # a browser that cannot start here (sandboxing, missing libraries)
        pytest.skip(f"chromium could not start: {str(e).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    try:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    except Exception:  # older drivers: the prefs above apply
        pass
    try:
        yield driver
    finally:
        driver.quit()


def scene(h: int = 96, w: int = 128) -> np.ndarray:
    """A bright square and a dark disc on a textured background, like the training blobs."""
    rng = np.random.default_rng(0)
    img = rng.integers(90, 160, size=(h, w, 3), dtype=np.uint8)
    img[15:55, 20:60] = 230
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 60) ** 2 + (xx - 95) ** 2 < 20**2] = 20
    return img


def wait_for(driver, condition: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {condition};")
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script("return document.body.dataset.state")
    raise AssertionError(f"timed out waiting for {condition}; page state {state}")


def test_page_shows_overlay_and_legend(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    image_path = tmp_path / "scene.png"
    Image.fromarray(scene()).save(image_path)
    browser.get(server + "/")
    wait_for(browser, "document.body.dataset.state === 'ready'")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#legend li")) == 3
    browser.find_element(By.ID, "file").send_keys(str(image_path))
    wait_for(browser, "document.body.dataset.state === 'done'")

    size = browser.execute_script("const c = document.getElementById('overlay'); return [c.width, c.height];")
    assert size == [128, 96]
    painted = browser.execute_script(
        "const c = document.getElementById('overlay');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
    )
    assert painted == 128 * 96  # every pixel has a class colour
    items = browser.find_elements(By.CSS_SELECTOR, "#legend li")
    assert [i.find_element(By.CLASS_NAME, "name").text for i in items] == ["background", "square", "disc"]
    shares = [float(i.find_element(By.CLASS_NAME, "share").text.replace("<", "").rstrip(" %")) for i in items]
    assert sum(shares) == pytest.approx(100, abs=0.3)
    swatch = items[1].find_element(By.CLASS_NAME, "swatch").value_of_css_property("background-color")
    assert swatch.replace(" ", "") in ("rgba(230,60,50,1)", "rgb(230,60,50)")

    slider = browser.find_element(By.ID, "opacity")
    browser.execute_script("arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'));", slider)
    assert browser.execute_script("return document.getElementById('overlay').style.opacity") == "0.8"
    browser.execute_script("arguments[0].value = 55; arguments[0].dispatchEvent(new Event('input'));", slider)
    assert not browser.find_element(By.ID, "error").is_displayed()
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000

    # everything the page loaded came from the server itself
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert resources and all(r.startswith(server) for r in resources), resources
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    # a refused upload shows the server's message in the page
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait_for(browser, "document.body.dataset.state === 'error'")
    message = browser.find_element(By.ID, "error").text
    assert "422" in message and "not an image" in message
    # ... and no longer shows the previous image's result under the refusal, as if it were this file's
    assert not browser.find_element(By.ID, "viewer").is_displayed()
    assert browser.execute_script("return document.getElementById('download-mask').disabled")
    browser.save_screenshot(str(tmp_path / "error.png"))


def wait_file(path: Path, timeout: float = 20.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return path
        time.sleep(0.1)
    raise AssertionError(f"{path} was not downloaded; folder holds {sorted(p.name for p in path.parent.iterdir())}")


def test_page_asks_for_the_key_once_and_downloads(keyed_server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from unetkit.predict import Predictor

    image_path = tmp_path / "street scene.png"
    Image.fromarray(scene()).save(image_path)
    browser.get(keyed_server + "/")
    wait_for(browser, "!document.getElementById('keyform').hidden")
    assert browser.execute_script("return document.body.dataset.state") == "key"
    browser.find_element(By.ID, "key").send_keys("wrong-key-wrong-key")
    browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
    wait_for(browser, "document.getElementById('key-message').textContent.includes('refused')")
    browser.find_element(By.ID, "key").send_keys(API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
    wait_for(browser, "document.body.dataset.state === 'ready'")
    browser.find_element(By.ID, "file").send_keys(str(image_path))
    wait_for(browser, "document.body.dataset.state === 'done'")  # the key was kept: not asked again

    browser.find_element(By.ID, "download-mask").click()
    mask = np.asarray(Image.open(wait_file(tmp_path / "downloads" / "street_scene_mask.png")))
    expected = Predictor.from_run(tmp_path / "run", device="cpu").predict(scene())
    np.testing.assert_array_equal(mask, expected)
    browser.find_element(By.ID, "download-overlay").click()
    shown = Image.open(wait_file(tmp_path / "downloads" / "street_scene_overlay.png"))
    assert shown.size == (128, 96)
