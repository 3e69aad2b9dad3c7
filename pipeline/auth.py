"""What proves who is calling: an API key in fixed headers, or Vertex AI's OAuth2 bearer token.

A lane asks `stale()` before each request (a plain attribute read for a key) and awaits
`refresh()` when it says so. The bearer token lives only in this object and in the header it
sends: it is never stored, logged, printed or put in a repr or an error message.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio

from pipeline.errors import ProviderStop, SpecError

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# refresh this long before the token expires: google-auth's own margin (3 min 45 s), so no
# request leaves with a token that could expire on the way
REFRESH_MARGIN = 225.0


class Auth(Protocol):
    headers: dict[str, str]

    def stale(self) -> bool: ...

    async def refresh(self) -> None: ...


class KeyAuth:
    """An API key: the same headers for every request of the run (the Batch lane's
    endpoints put the key in headers of their own)."""

    def __init__(self, headers: dict[str, str], key: str):
        self.headers = headers
        self.key = key

    def stale(self) -> bool:
        return False

    async def refresh(self) -> None:
        return None

    def __repr__(self) -> str:
        return "KeyAuth(<key hidden>)"


class GoogleAuth:
    """Application Default Credentials through google-auth (a service-account file, the
    metadata server, gcloud user credentials), scope cloud-platform.

    A token is refreshed 3 min 45 s before it expires (google-auth's margin), so every request
    goes out with a token that has minutes left; one refresh runs at a time, in a worker thread
    (the library's HTTP client is blocking), while the other requests wait for it.
    """

    def __init__(self, credentials: Any, base_headers: dict[str, str]):
        self._credentials = credentials
        self._base = base_headers
        self.headers = dict(base_headers)
        self.refreshes = 0
        self._fresh_until = 0.0  # time.monotonic() after which the token is refreshed
        self._lock: anyio.Lock | None = None

    @classmethod
    def from_environment(
        cls, credentials_file: str | None, base_headers: dict[str, str]
    ) -> GoogleAuth:
        """Load the credentials (a file, or the ADC search); nothing is fetched yet."""
        try:
            import google.auth
            import google.auth.exceptions
        except ImportError:
            raise SpecError(
                'provider.api: "vertex" needs google-auth: pip install "flashpipe[vertex]"'
            ) from None
        try:
            if credentials_file:
                creds = _from_file(credentials_file)
            else:
                creds, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
        except (google.auth.exceptions.DefaultCredentialsError, OSError, ValueError) as exc:
            where = (
                repr(credentials_file) if credentials_file else "Application Default Credentials"
            )
            raise SpecError(
                f"provider.credentials_file: no usable Google credentials in {where} "
                f"({_first_line(exc)}); set GOOGLE_APPLICATION_CREDENTIALS or run "
                "`gcloud auth application-default login`"
            ) from None
        return cls(creds, base_headers)

    def stale(self) -> bool:
        # our own clock, not `credentials.valid`: while a refresh runs in its thread the
        # credentials hold the new token beside the old expiry for a moment
        return time.monotonic() >= self._fresh_until

    async def refresh(self) -> None:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self.stale():  # another request may have refreshed it while this one waited
                token, lifetime = await anyio.to_thread.run_sync(self._fetch)
                self.headers = {**self._base, "authorization": f"Bearer {token}"}
                self._fresh_until = time.monotonic() + max(0.0, lifetime - REFRESH_MARGIN)
                self.refreshes += 1

    def _fetch(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds (in a worker thread: google-auth blocks)."""
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        creds = self._credentials
        try:
            creds.refresh(Request())
        except (google.auth.exceptions.RefreshError, google.auth.exceptions.TransportError) as exc:
            where = getattr(creds, "_token_uri", None) or "the token endpoint"
            raise ProviderStop(
                f"Vertex AI credentials: no access token from {where} ({_first_line(exc)})"
            ) from None
        expiry = creds.expiry  # naive UTC, as google-auth keeps it
        if expiry is None:
            return str(creds.token), 3600.0
        now = datetime.now(UTC).replace(tzinfo=None)
        return str(creds.token), (expiry - now).total_seconds()

    def __repr__(self) -> str:
        return f"GoogleAuth({type(self._credentials).__name__}, refreshes={self.refreshes})"


def _from_file(path: str) -> Any:
    """A service-account key or gcloud user credentials, loaded by their own type's loader
    (google-auth warns against its generic loader for files of unknown origin)."""
    import json

    from google.oauth2 import credentials, service_account

    with open(path, encoding="utf-8") as fh:
        info = json.load(fh)
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[CLOUD_PLATFORM]
        )
    if kind == "authorized_user":
        return credentials.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
            info, scopes=[CLOUD_PLATFORM]
        )
    raise ValueError(f"type {kind!r}; expected service_account or authorized_user")


def _first_line(exc: BaseException) -> str:
    """The reason of an auth error, short: google-auth puts the server's JSON after it."""
    first = exc.args[0] if exc.args else exc
    return str(first).splitlines()[0][:200] if str(first) else type(exc).__name__
