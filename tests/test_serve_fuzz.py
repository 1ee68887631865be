"""Property-based tests of the HTTP API: no input ever gets a 5xx; oversized bodies and pixel bombs get a 4xx.

Two generators: schemathesis derives requests (valid and invalid) for every operation from the app's
own ``/openapi.json``; hypothesis builds hostile uploads (random bytes, damaged images, crafted
headers claiming billions of pixels, zlib bombs, oversized bodies, lying Content-Length and
Content-Type headers) and checks each answer's status. The number of requests is printed at the end.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from test_fuzz import crafted_headers, mutate, valid_images  # noqa: E402  (tests/ is on sys.path)

from unetkit.config import ModelConfig, RunConfig  # noqa: E402
from unetkit.model import unet_model  # noqa: E402
from unetkit.run import save_run  # noqa: E402
from unetkit.serve import create_app  # noqa: E402

MAX_UPLOAD = 200_000
MAX_PIXELS = 250_000
SETTINGS = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)
STATUSES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    line = f"\nserve fuzz: {sum(STATUSES.values())} requests: " + ", ".join(
        f"{k} {v}" for k, v in sorted(STATUSES.items())
    )
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(line)


API_KEY = "fuzz-test-key-0123456789abcdef"  # access control on: the fuzzing goes through it
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    config = RunConfig(model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3))
    run = save_run(
        tmp_path_factory.mktemp("serve-fuzz") / "run", unet_model((32, 32, 3), n_filters=4, n_classes=3), config
    )
    return create_app(
        run, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, batch_window_ms=0, device="cpu", api_key=API_KEY
    )


@pytest.fixture(scope="module")
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as c:
        yield c


def _record(kind: str, status: int) -> None:
    STATUSES[f"{kind} {status}"] += 1


# ------------------------------------------------------------------------------------- from the schema

try:
    import schemathesis
except ImportError:  # an optional dev dependency
    schemathesis = None

if schemathesis is not None:

    @pytest.fixture(scope="module")
    def api_schema(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
        schema.config.generation.update(
            max_examples=int(os.environ.get("UNETKIT_SERVE_FUZZ_SCHEMA", "150")), database="none"
        )
        return schema

    schema = schemathesis.pytest.from_fixture("api_schema")

    @schema.parametrize()
    def test_no_server_error_for_any_request_the_schema_allows_or_forbids(case):
        response = case.call(headers=AUTH)
        _record("schema", response.status_code)
        assert response.status_code < 500, (case.method, case.path, case.query, response.text[:300])
        if response.status_code >= 400:
            assert "detail" in response.json()  # every refusal explains itself

else:

    def test_no_server_error_for_any_request_the_schema_allows_or_forbids():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")


# ------------------------------------------------------------------------------------- hostile uploads


def _png(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bytes, str, int]:
    """(bytes, kind, claimed pixels) of an image-ish payload."""
    kind = draw(st.sampled_from(["random", "valid", "damaged", "header", "oversized"]))
    if kind == "random":
        return draw(st.binary(max_size=4096)), kind, 0
    if kind == "oversized":  # over the byte limit: 413 before anything is decoded
        return b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD + draw(st.integers(1, 100_000))), kind, 0
    if kind == "header":  # claims any size, up to 2^32-1 per side, with zlib and text-chunk bombs
        data, _, claimed = draw(crafted_headers())
        return data, kind, claimed
    data, fmt, mode, w, h, _ = draw(valid_images())
    if kind == "damaged":
        data = mutate(
            data,
            draw(st.sampled_from(["truncate", "flip", "splice"])),
            draw(st.floats(0, 1)),
            draw(st.binary(min_size=1, max_size=16)),
        )
        return data, kind, 0
    return data, kind, w * h


CONTENT_TYPES = ["image/png"] * 3 + [
    "image/jpeg",
    "image/tiff",
    "application/octet-stream",
    "text/plain",
    "",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "image/png; charset=binary",
    "application/json",
]


@settings(SETTINGS, max_examples=int(os.environ.get("UNETKIT_SERVE_FUZZ_UPLOADS", "300")))
@given(
    payload=payloads(),
    envelope=st.sampled_from(["multipart", "multipart-other-field", "raw"]),
    content_type=st.sampled_from(CONTENT_TYPES),
    fmt=st.sampled_from(["png", "colour", "overlay", "json"] * 3 + ["x"]),
    alpha=st.one_of(
        st.floats(0, 1),
        st.floats(0, 1),
        st.floats(0, 1),
        st.floats(allow_nan=True),
        st.sampled_from(["", "a", "1e999"]),
    ),
    lie=st.sampled_from([None] * 6 + ["0", "-1", "abc", "99999999999999999999"]),
)
def test_hostile_uploads_get_a_4xx_never_a_5xx(client, payload, envelope, content_type, fmt, alpha, lie):
    data, kind, claimed = payload
    params = {"format": fmt, "alpha": str(alpha)}
    headers = {}
    if envelope == "raw":
        headers["content-type"] = content_type
        request = client.build_request("POST", "/predict", params=params, content=data, headers=headers)
    else:
        field = "file" if envelope == "multipart" else "upload"
        request = client.build_request(
            "POST", "/predict", params=params, files={field: ("x.png", data, content_type or "image/png")}
        )
    if lie is not None:
        request.headers["content-length"] = lie
    try:
        response = client.send(request)
    except Exception as e:  # the client itself may refuse a lying Content-Length; the server never saw it
        if lie is None:
            raise
        _record(f"{kind} client-refused", 0)
        assert type(e).__name__ in ("LocalProtocolError", "ValueError", "RemoteProtocolError", "h11"), e
        return
    status = response.status_code
    _record(kind, status)
    assert status < 500, (kind, envelope, content_type, status, response.text[:300])
    assert status in (200, 400, 404, 405, 411, 413, 415, 422), status
    if status != 200:
        assert response.json()["detail"]
    if lie is not None:
        return
    if fmt == "x" or not 0 <= _num(alpha) <= 1:  # the query is checked first
        assert status == 422, status
        return
    image_type = content_type.startswith(("image/", "application/octet-stream"))
    if kind == "oversized":
        assert status == 413 if envelope != "raw" or image_type else status in (413, 415, 400), status
    if kind == "header" and claimed > MAX_PIXELS:
        assert status in (400, 413, 415, 422), status  # refused from the header, never decoded
    if kind == "valid" and claimed <= MAX_PIXELS and envelope == "multipart" and image_type:
        assert status == 200, (status, response.text[:200])


def _num(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


@pytest.mark.parametrize("side", [5_000, 100_000, 2**31 - 1])
def test_pixel_bomb_uploads_are_413(client, side):
    from test_fuzz import ZLIB_BOMBS, crafted_png

    data = crafted_png(side, side, 8, 0, ZLIB_BOMBS[16 * 2**20])  # 16 MiB of zeros in 16 KiB
    assert len(data) < MAX_UPLOAD
    response = client.post("/predict", files={"file": ("bomb.png", data, "image/png")})
    _record("bomb", response.status_code)
    assert response.status_code == 413 and "pixels" in response.json()["detail"]


def test_server_still_answers_after_the_fuzzing(client):
    response = client.post("/predict", files={"file": ("ok.png", _png(40, 30, 0), "image/png")})
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (30, 40)
    health = client.get("/health").json()
    assert not any(k.startswith("5") for k in health["responses"]), health["responses"]
