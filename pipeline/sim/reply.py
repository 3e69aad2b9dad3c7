"""JSON answers in each API's dress: Google's content type, OpenAI's, and the list Gemini's
OpenAI-compatible endpoint wraps its errors in."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

GOOGLE_JSON = {"Content-Type": "application/json; charset=UTF-8"}
OPENAI_JSON = {"Content-Type": "application/json"}


def json(api: str, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """`api` is "gemini", "openai" or "openai-compat"."""
    if api == "openai-compat" and status >= 400:
        body = [body]  # Gemini's OpenAI-compatible endpoint wraps errors in a list
    base = OPENAI_JSON if api == "openai" else GOOGLE_JSON
    return web.Response(body=orjson.dumps(body), status=status, headers={**base, **(headers or {})})
