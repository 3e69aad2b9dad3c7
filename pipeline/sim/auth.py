"""Who is calling: the one check of credentials, for every endpoint that has any.

Each route is registered with its scheme (`Gate.add`), and one middleware checks it before the
handler runs and leaves the caller on the request (`caller(request)`):

- "google": `x-goog-api-key` or `?key=`; none is a 403, an unknown one a 400 (Google's bodies);
- "bearer": `Authorization: Bearer KEY`; an unknown key is OpenAI's 401;
- "compat": Gemini's OpenAI-compatible surface: a bearer key or `x-goog-api-key`, Google's
  errors wrapped in a list;
- "vertex": a bearer token the simulator's /token endpoint issued (Vertex's 401), the calls are
  the main key's;
- "either": the paths Gemini and OpenAI share (/v1/batches): a bearer key is OpenAI's, else
  Google's;
- "upload": Google's resumable upload: the start carries the key, the chunks only the session.

The Gemini generate routes check after the method is known (an unknown method is a 404 before a
missing key), so they call `Gate.check` themselves instead of being registered with a scheme.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from pipeline.sim import envelopes, reply, vertex

Scheme = Literal["google", "bearer", "compat", "vertex", "either", "upload"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CALLER = "flashpipe-sim.caller"


@dataclass(frozen=True, slots=True)
class Caller:
    api: str  # whose dialect the answers speak: "gemini", "openai" or "openai-compat"
    key: str  # the API key the call is counted against ("" for an upload's chunks)
    token: str | None = None  # a fingerprint of a Vertex token (never the token)


def caller(request: web.Request) -> Caller:
    found = request.get(CALLER)
    assert isinstance(found, Caller), "a route without an auth scheme asked for its caller"
    return found


def bearer(request: web.Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def google_key(request: web.Request) -> str:
    return request.headers.get("x-goog-api-key") or request.query.get("key") or ""


class Gate:
    """Owns the route -> scheme table and the keys and tokens the simulator accepts."""

    def __init__(self, projects: dict[str, str], tokens: vertex.Tokens, main_key: str):
        self.projects = projects
        self.tokens = tokens
        self.main_key = main_key
        self.schemes: dict[web.AbstractRoute, Scheme] = {}

    def add(
        self, router: web.UrlDispatcher, method: str, path: str, handler: Handler, scheme: Scheme
    ) -> None:
        self.schemes[router.add_route(method, path, handler)] = scheme

    def check(self, request: web.Request, scheme: Scheme) -> Caller | web.Response:
        """The caller, or the refusal the API answers with."""
        if scheme == "either":
            scheme = "bearer" if bearer(request) else "google"
        if scheme == "upload":
            if "upload_id" in request.query:
                return Caller("gemini", "")
            scheme = "google"
        if scheme == "bearer":
            key = bearer(request)
            if key not in self.projects:
                return reply.json("openai", 401, envelopes.openai_bad_key(key))
            return Caller("openai", key)
        if scheme == "vertex":
            token = self.tokens.check(request.headers.get("authorization", ""))
            if token is None:
                return reply.json("gemini", 401, vertex.unauthenticated())
            return Caller("gemini", self.main_key, token)
        api = "openai-compat" if scheme == "compat" else "gemini"
        key = (
            (bearer(request) or google_key(request)) if scheme == "compat" else google_key(request)
        )
        if not key:
            return reply.json(api, 403, envelopes.unregistered())
        if key not in self.projects:
            return reply.json(api, 400, envelopes.api_key_invalid())
        return Caller(api, key)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme = self.schemes.get(request.match_info.route)
        if scheme is None:
            return await handler(request)
        found = self.check(request, scheme)
        if isinstance(found, web.Response):
            return found
        request[CALLER] = found
        return await handler(request)
