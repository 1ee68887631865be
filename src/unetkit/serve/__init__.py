"""Serving a model over HTTP: the API, the micro-batcher and the web page (extra ``unetkit[serve]``)."""

from __future__ import annotations

from .app import Limits, create_app, serve
from .batcher import MicroBatcher

__all__ = ["Limits", "MicroBatcher", "create_app", "serve"]
