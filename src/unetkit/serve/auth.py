"""Access control for ``unetkit serve``: one bearer token on every API route, compared in constant time.

The page itself (``/``, ``/static/*``, ``/favicon.ico``) stays public so that it can ask for the key; it
then sends ``Authorization: Bearer KEY`` with every call. The key is read from a file or the
``UNETKIT_API_KEY`` environment variable, never from the command line (it would show in ``ps`` and the
shell history), and it is never logged: uvicorn logs the path and status only, and a refusal says
what is missing without echoing what was sent.
"""

from __future__ import annotations

import hmac
import json
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigError

ENV_KEY = "UNETKIT_API_KEY"
PUBLIC_PATHS = ("/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


def read_api_key(path: str | Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The key from ``path`` (first line, stripped) or ``$UNETKIT_API_KEY``; None when neither is given."""
    env = os.environ if environ is None else environ
    if path is None:
        key = env.get(ENV_KEY, "").strip()
        return key or None
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--api-key-file {p} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    key = (text.strip().splitlines() or [""])[0].strip()
    if len(key) < 16:
        raise ConfigError(
            f"--api-key-file {p} holds a key of {len(key)} characters; use at least 16 random characters, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE`"
        )
    return key


def key_file_warning(path: str | Path | None) -> str | None:
    """A note when the key file can be read by other users of this machine."""
    if path is None:
        return None
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"{path} can be read by other users of this machine; `chmod 600 {path}` keeps the key private"
    return None


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class BearerAuth:
    """Pure ASGI middleware: 401 on every non-public HTTP request without ``Authorization: Bearer <key>``."""

    def __init__(self, app: ASGIApp, key: str, on_refusal: Callable[[], None] | None = None):
        self.app = app
        self.key = key.encode("utf-8")
        self.on_refusal = on_refusal

    def allowed(self, scope: Scope) -> bool:
        if scope["type"] != "http" or is_public(scope.get("path", "")) or scope.get("method") == "OPTIONS":
            return True
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed(scope):
            await self.app(scope, receive, send)
            return
        if self.on_refusal is not None:
            self.on_refusal()
        body = json.dumps(
            {
                "detail": "this server needs an API key: send the header 'Authorization: Bearer KEY' "
                "(the key the server was started with, --api-key-file or UNETKIT_API_KEY)"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="unetkit"'),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
