"""The HTTP API and the web page: ``create_app(run folder | .onnx | predictor)`` -> a FastAPI app.

Endpoints: ``POST /predict`` (an image -> a mask as PNG, colour PNG, overlay PNG or JSON),
``GET /info``, ``GET /health``, ``GET /`` (the page), ``GET /docs`` (API reference rendered on the
server from ``/openapi.json``: FastAPI's own docs page loads Swagger UI from a CDN, and nothing here
loads anything from outside the app). The model is loaded once; concurrent requests share forward
passes through a ``MicroBatcher``; every refusal is a 4xx JSON ``{"detail": message}``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import ConfigError
from ..plots import colorize, overlay, png_bytes
from ..predict import PredictorBase
from ..predict_files import load_predictor
from .auth import BearerAuth
from .batcher import MicroBatcher, Overloaded
from .budget import BudgetTimeout, PixelBudget
from .uploads import (
    FORMATS,
    IMAGE_TYPES,
    MULTIPART_SLACK,
    UploadError,
    decode_image,
    extract_image_bytes,
    image_size,
    read_body,
)

log = logging.getLogger("unetkit.serve")

Format = Literal["png", "colour", "overlay", "json", "confidence"]
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
        b"script-src 'self'; connect-src 'self'; object-src 'none'; "
        b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


@dataclass
class Limits:
    """What one request may cost; every limit answers a clear 4xx (or 503 when merely busy)."""

    max_upload_bytes: int = 20_000_000  # the file itself; the body may add MULTIPART_SLACK of form overhead
    max_pixels: int = 25_000_000  # per image, from its header before decoding (decompression bombs)
    max_inflight_pixels: int = 50_000_000  # all images being decoded/predicted/encoded at once (memory)
    batch_window_ms: float = 5.0  # how long the first request of a batch waits for company
    max_batch: int = 8
    max_queue: int = 256  # requests waiting for the model; beyond: 503
    wait_timeout_s: float = 30.0  # waiting for the pixel budget; beyond: 503


class _SecurityHeaders:
    """Pure ASGI middleware adding CSP and friends to every response (the page loads only from the app)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _load_static() -> dict[str, bytes]:
    folder = resources.files("unetkit.serve").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC}


# Uploads this small are parsed, decoded and encoded on the event loop: for a 96x128 image each step
# takes well under a millisecond, less than handing it to a worker thread and back costs.
SMALL_UPLOAD_BYTES = 256 * 1024
SMALL_IMAGE_PIXELS = 256 * 256

_R = TypeVar("_R")


async def _call(inline: bool, fn: Callable[..., _R], *args: Any) -> _R:
    """``fn(*args)`` here when ``inline``, else on Starlette's worker threads (off the event loop)."""
    return fn(*args) if inline else await run_in_threadpool(fn, *args)


def _png(array: np.ndarray) -> bytes:
    return png_bytes(array, compress_level=3)  # faster than the default 6, for a response sent at once


def class_table(mask: np.ndarray, names: list[str], palette: list[list[int]]) -> list[dict[str, Any]]:
    """Per class: id, name, colour, pixel count and fraction of the image."""
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=len(names))
    total = max(int(mask.size), 1)
    return [
        {
            "id": i,
            "name": name,
            "colour": list(palette[i]) if i < len(palette) else [0, 0, 0],
            "pixels": int(counts[i]),
            "fraction": int(counts[i]) / total,
        }
        for i, name in enumerate(names)
    ]


def render(
    image: np.ndarray, mask: np.ndarray, fmt: str, alpha: float, names: list[str], palette: list[list[int]]
) -> tuple[bytes, str]:
    """The response body and media type for one predicted mask."""
    if fmt == "png":
        return _png(mask), "image/png"
    if fmt == "colour":
        return _png(colorize(mask, palette)), "image/png"
    if fmt == "overlay":
        return _png(overlay(image, mask, palette, alpha)), "image/png"
    body = {
        "width": int(mask.shape[1]),
        "height": int(mask.shape[0]),
        "n_classes": len(names),
        "classes": class_table(mask, names, palette),
        "mask_png_base64": base64.b64encode(_png(mask)).decode("ascii"),
        "mask_encoding": "PNG, one channel, pixel value = class id (16-bit when over 256 classes)",
    }
    return json.dumps(body).encode(), "application/json"


def confidence_png(predictor: PredictorBase, image: np.ndarray) -> bytes:
    """Grey PNG of each pixel's largest class probability (0-255), at the image's original size."""
    from ..uncertainty import confidence, to_gray8

    return _png(to_gray8(confidence(predictor.probabilities(image))))


_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        },
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
_ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}}
_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the mask at the image's original size: PNG (png, colour, overlay) or JSON (json)",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object"}},
        },
    },
    400: {"description": "malformed request (multipart without boundary, bad Content-Length)", **_ERROR},
    413: {"description": "upload over the byte limit, or image over the pixel limit", **_ERROR},
    415: {"description": "not an image content type", **_ERROR},
    422: {"description": "undecodable image, empty upload, no 'file' field or bad query value", **_ERROR},
    503: {"description": "too many requests waiting; retry", **_ERROR},
}


@dataclass
class _Served:
    """What the routes of one app share: the model, its batcher and pixel budget, limits and counters."""

    predictor: PredictorBase
    batcher: MicroBatcher[np.ndarray, np.ndarray]
    budget: PixelBudget
    limits: Limits
    info: dict[str, Any]
    static: dict[str, bytes] = field(default_factory=_load_static)
    statuses: Counter[int] = field(default_factory=Counter)
    started: float = field(default_factory=time.time)

    def error(self, status: int, message: str) -> JSONResponse:
        """The one shape of every refusal, counted by status: ``{"detail": message}``."""
        self.statuses[status] += 1
        return JSONResponse({"detail": message}, status_code=status)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "backend": self.predictor.backend,
            "uptime_s": round(time.time() - self.started, 1),
            "responses": {str(k): v for k, v in sorted(self.statuses.items())},
            "batcher": self.batcher.stats.to_dict(),
            "pixels_in_flight": self.budget.used,
            "peak_pixels_in_flight": self.budget.peak,
        }

    async def segment(self, request: Request, format: str, alpha: float) -> Response:
        """The body of ``POST /predict``: read, check, decode, predict (batched) and encode one upload."""
        limits, predictor = self.limits, self.predictor
        try:
            body = await read_limited(request, limits.max_upload_bytes + MULTIPART_SLACK)
            small = len(body) <= SMALL_UPLOAD_BYTES
            data = await _call(
                small, extract_image_bytes, body, request.headers.get("content-type", ""), limits.max_upload_bytes
            )
            del body
            width, height = await _call(small, image_size, data, limits.max_pixels)
            pixels = width * height
            small = small and pixels <= SMALL_IMAGE_PIXELS
            await self.budget.acquire(pixels, limits.wait_timeout_s)
            try:
                image = await _call(small, decode_image, data, limits.max_pixels)
                del data
                if format == "confidence":  # needs the probabilities, not the batched masks
                    content, media = await run_in_threadpool(confidence_png, predictor, image), "image/png"
                else:
                    mask = await self.batcher.run(image)
                    names, palette = predictor.class_names, predictor.palette
                    content, media = await _call(small, render, image, mask, format, alpha, names, palette)
            finally:
                self.budget.release(pixels)
        except UploadError as e:
            return self.error(e.status, e.message)
        except (Overloaded, BudgetTimeout) as e:
            return self.error(503, str(e))
        self.statuses[200] += 1
        return Response(content, media_type=media, headers={"cache-control": "no-store"})


def create_app(
    model_path_or_predictor: str | Path | PredictorBase,
    *,
    max_upload_bytes: int = Limits.max_upload_bytes,
    max_pixels: int = Limits.max_pixels,
    batch_window_ms: float = Limits.batch_window_ms,
    max_batch: int = Limits.max_batch,
    max_inflight_pixels: int | None = None,
    max_queue: int = Limits.max_queue,
    wait_timeout_s: float = Limits.wait_timeout_s,
    device: str = "auto",
    precision: str | None = None,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    tta: str | None = None,
) -> FastAPI:
    """A FastAPI app serving one model: a run folder, an exported .onnx file, or a ready predictor.

    ``tta`` (e.g. "flip", see ``unetkit.tta``) averages the logits over augmented views for every request.
    ``max_inflight_pixels`` defaults to twice ``max_pixels``; the other limits are ``Limits``'s.

    ``precision``: fp32 (default), bf16 or int8 (``open_predictor``). ``api_key``: every API route then
    needs ``Authorization: Bearer <key>`` (401 without). ``cors_origins``: origins allowed to call the
    API from their pages (none by default: the API answers its own page only).
    """
    predictor, source = _open_model(model_path_or_predictor, device, precision, postprocess, tta)
    limits = Limits(
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        max_inflight_pixels=max_inflight_pixels or 2 * max_pixels,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        max_queue=max_queue,
        wait_timeout_s=wait_timeout_s,
    )
    batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
        lambda images: predictor.predict_batch(images, batch_size=max_batch),
        window_ms=batch_window_ms,
        max_batch=max_batch,
        max_queue=max_queue,
    )
    served = _Served(
        predictor, batcher, PixelBudget(limits.max_inflight_pixels), limits, _info(predictor, source, limits, api_key)
    )
    app = _new_app(served, api_key, cors_origins)
    _add_error_handlers(app, served)
    _add_page_routes(app, served)
    _add_api_routes(app, served)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> Response:
        return HTMLResponse(render_docs(app.openapi()))

    return app


def _open_model(
    model: str | Path | PredictorBase,
    device: str,
    precision: str | None,
    postprocess: Callable[[np.ndarray], np.ndarray] | None,
    tta: str | None,
) -> tuple[PredictorBase, str]:
    """The predictor to serve and what to call its source; warmed up, so a broken model fails now."""
    if isinstance(model, (str, Path)):
        predictor = load_predictor(model, device=device, precision=precision)
        source = Path(model).name
    else:
        predictor, source = model, type(model).__name__
    if postprocess is not None:
        predictor.postprocess = postprocess
    if tta is not None:
        predictor.set_tta(tta)
    h, w, c = predictor.input_size
    predictor.predict(np.zeros((h, w, c), dtype=np.uint8))  # warm up, and fail now rather than on a request
    return predictor, source


def _info(predictor: PredictorBase, source: str, limits: Limits, api_key: str | None) -> dict[str, Any]:
    """The body of ``GET /info``: fixed for the app's lifetime, so computed once."""
    names, palette = predictor.class_names, predictor.palette
    return {
        "model": {
            "source": source,
            "backend": predictor.backend,
            "precision": predictor.precision,
            **asdict(predictor.config.model),
        },
        "postprocess": getattr(predictor.postprocess, "describe", lambda: "none")(),
        "access_control": bool(api_key),
        "input_size": list(predictor.input_size),
        "n_classes": predictor.config.model.n_classes,
        "classes": [{"id": i, "name": n, "colour": list(palette[i])} for i, n in enumerate(names)],
        "preprocess": asdict(predictor.config.preprocess),
        "formats": ["png", "colour", "overlay", "json"],
        "accepted_images": list(FORMATS),
        "limits": asdict(limits),
    }


def _new_app(served: _Served, api_key: str | None, cors_origins: Sequence[str]) -> FastAPI:
    """The FastAPI app with its middleware (access control, CORS, security headers) and shared state."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        served.batcher.close()

    app = FastAPI(
        title="unetkit",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Semantic segmentation with the seed's U-Net: upload an image, get its mask.",
    )
    if api_key:
        app.add_middleware(BearerAuth, key=api_key, on_refusal=lambda: served.statuses.update([401]))
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
            max_age=600,
        )
    app.add_middleware(_SecurityHeaders)  # added last: outermost, so refusals carry the headers too
    app.state.predictor, app.state.batcher, app.state.budget = served.predictor, served.batcher, served.budget
    app.state.limits = served.limits
    app.state.statuses = served.statuses
    return app


def _add_error_handlers(app: FastAPI, served: _Served) -> None:
    """Bad query values and unexpected failures answer JSON like every other refusal, never a traceback."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        messages = [f"{'.'.join(str(x) for x in err.get('loc', ())[1:])}: {err.get('msg', '')}" for err in exc.errors()]
        return served.error(422, "; ".join(messages) or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return served.error(500, f"internal error ({type(exc).__name__}); the server keeps running")


def _add_page_routes(app: FastAPI, served: _Served) -> None:
    """The web page and its files, served from memory (public even with access control: it asks for the key)."""
    static = served.static

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Response:
        return Response(static["index.html"], media_type=STATIC["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static:  # a fixed set held in memory: no path ever reaches the file system
            return served.error(404, f"no static file {name[:80]!r}")
        return Response(static[name], media_type=STATIC[name], headers={"cache-control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)


def _add_api_routes(app: FastAPI, served: _Served) -> None:
    """``GET /health``, ``GET /info`` and ``POST /predict``, the routes in the OpenAPI schema."""

    @app.get("/health", summary="Liveness and counters")
    async def health() -> dict[str, Any]:
        """status "ok" while the model answers; response, batching and memory-budget counters."""
        return served.health()

    @app.get("/info", summary="The model, its input size, classes and colours")
    async def get_info() -> dict[str, Any]:
        """The model's architecture, input size, class names with their colours, preprocessing and limits."""
        return served.info

    @app.post(
        "/predict",
        summary="Segment an image",
        openapi_extra={"requestBody": _UPLOAD_BODY},
        responses=_PREDICT_RESPONSES,
        response_class=Response,
    )
    async def predict(
        request: Request,
        format: Format = Query(
            "png",
            description="png: class-id mask; colour: palette colours; overlay: "
            "colours blended over the image; json: mask as base64 PNG "
            "plus per-class pixel fractions; confidence: grey PNG of each "
            "pixel's largest class probability (255 = certain)",
        ),
        alpha: float = Query(0.5, ge=0.0, le=1.0, description="overlay opacity (format=overlay)"),
    ) -> Response:
        """Upload an image as the multipart form field "file" (or as the raw body with an image Content-Type).

        The answer has the image's original size. Limits: upload bytes (413), pixels from the header
        (413), content type (415), undecodable data (422).
        """
        return await served.segment(request, format, alpha)


async def read_limited(request: Request, limit: int) -> bytes:
    return await read_body(request.stream(), request.headers.get("content-length"), limit)


def render_docs(spec: dict[str, Any]) -> str:
    """A plain HTML API reference from an OpenAPI document (no scripts, no external assets)."""
    e = html.escape
    out = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(spec['info']['title'])} API"
        "</title><link rel='icon' href='data:,'><link rel='stylesheet' href='/static/style.css'></head>"
        f"<body class='docs'><main><h1>{e(spec['info']['title'])} API "
        f"{e(spec['info'].get('version', ''))}</h1>",
        f"<p>{e(spec['info'].get('description', ''))}</p><p>Machine-readable: <a href='/openapi.json'>"
        "/openapi.json</a> (OpenAPI). Try it in the browser: <a href='/'>the page</a>.</p>",
        f"<p>Example: <code>curl -F file=@image.png 'http://HOST:PORT/predict?format=json'</code>. "
        f"Accepted images: {e(IMAGE_TYPES)}.</p>",
    ]
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            out.append(
                f"<section><h2><span class='method'>{e(method.upper())}</span> <code>{e(path)}</code> "
                f"&mdash; {e(op.get('summary', ''))}</h2>"
            )
            if op.get("description"):
                out.append(f"<p>{e(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                out.append(
                    "<table><tr><th>parameter</th><th>in</th><th>values</th><th>default</th><th>description</th></tr>"
                )
                for p in params:
                    schema = p.get("schema", {})
                    values = (
                        ", ".join(map(str, schema["enum"]))
                        if "enum" in schema
                        else _bounds(schema) or schema.get("type", "")
                    )
                    out.append(
                        f"<tr><td><code>{e(p['name'])}</code></td><td>{e(p['in'])}</td>"
                        f"<td>{e(str(values))}</td><td>{e(str(schema.get('default', '')))}</td>"
                        f"<td>{e(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            if "requestBody" in op:
                kinds = ", ".join(op["requestBody"].get("content", {}))
                out.append(f"<p>Request body: {e(kinds)}</p>")
            out.append(
                "<ul>"
                + "".join(
                    f"<li><b>{e(str(code))}</b>: {e(r.get('description', ''))}</li>"
                    for code, r in op.get("responses", {}).items()
                )
                + "</ul></section>"
            )
    out.append("</main></body></html>")
    return "".join(out)


def _bounds(schema: dict[str, Any]) -> str:
    parts = []
    if "minimum" in schema:
        parts.append(f">= {schema['minimum']}")
    if "maximum" in schema:
        parts.append(f"<= {schema['maximum']}")
    return f"{schema.get('type', '')} {' and '.join(parts)}".strip() if parts else ""


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def check_server_options(port: int, log_level: str) -> str:
    """Refuse a port or log level uvicorn would choke on, before the model is loaded; the level, lowercased."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535 (0: any free port), got {port}")
    level = str(log_level).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    return level


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    uvicorn_options: dict[str, Any] | None = None,
    **limits: Any,
) -> None:
    """Load the model once and serve it with uvicorn until interrupted.

    ``uvicorn_options`` go to ``uvicorn.run`` as they are (e.g. ``ssl_keyfile``/``ssl_certfile`` for TLS,
    ``forwarded_allow_ips`` behind a reverse proxy); see docs/serving.md.
    """
    import uvicorn

    level = check_server_options(port, log_level)
    app = create_app(model, **limits)
    options: dict[str, Any] = {"server_header": False, "timeout_keep_alive": 5, "limit_concurrency": 1024}
    options.update(uvicorn_options or {})
    uvicorn.run(app, host=host, port=port, log_level=level, **options)
