"""What a provider's batch client offers the batch runner, and the states it reports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from pipeline.core.reply import Reply
from pipeline.core.retry import ErrorClass
from pipeline.providers.base import ErrorReader, classify_error
from pipeline.transport import HttpResponse, Transport, TransportError

# normalised states; the wire says BATCH_STATE_* (Gemini) or validating/in_progress/... (OpenAI)
PENDING, RUNNING, SUCCEEDED, FAILED, EXPIRED, CANCELLED = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "expired",
    "cancelled",
)
FINISHED = {SUCCEEDED, FAILED, EXPIRED, CANCELLED}


class BatchApiError(Exception):
    """A batch call got no usable answer.

    `stop`: credentials, disabled API, per-day quota (the job stops); `bad`: the provider refused
    this batch (it fails, its rows count an attempt); otherwise transient (call again).
    """

    def __init__(
        self,
        message: str,
        *,
        stop: bool = False,
        bad: bool = False,
        retry_after: float | None = None,
        status: int = 0,
    ):
        super().__init__(message)
        self.status = status
        self.stop = stop
        self.bad = bad
        self.retry_after = retry_after


async def send(
    transport: Transport,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    read_error: ErrorReader,
) -> HttpResponse:
    """One batch API call; anything but a 200 is a BatchApiError classified the way the
    provider's online calls are (`read_error` reads its error body)."""
    what = f"{method} {url.split('?')[0]}"
    try:
        resp = await transport.request(method, url, headers, body)
    except TransportError as exc:
        raise BatchApiError(f"{what}: {exc}") from None
    if resp.status == 200:
        return resp
    reply = classify_error(resp, read_error)
    cls = reply.error_class
    raise BatchApiError(
        f"{what}: {reply.error}",
        stop=cls is ErrorClass.STOP,
        bad=cls is ErrorClass.BAD_REQUEST,
        retry_after=reply.retry_after,
        status=resp.status,
    )


def jsonl_items(data: bytes) -> Iterator[dict[str, Any]]:
    """The objects of a results file; a torn or foreign line is an answer we did not get (its
    row goes again)."""
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(item, dict):
            yield item


@dataclass
class RemoteBatch:
    name: str
    state: str
    error: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


class BatchApi(Protocol):
    requests: int  # HTTP requests sent so far

    def line(self, key: str, request: bytes) -> bytes:
        """One JSONL line of a batch input file: the key and the encoded online request."""
        ...

    async def submit(
        self, display: str, keys: list[str], requests: list[bytes], inline: bool
    ) -> str:
        """Create the batch (uploading its input file unless inline); its provider name."""
        ...

    async def find(self, display: str) -> str | None:
        """The provider name of a batch created under this display name, if any."""
        ...

    async def get(self, name: str) -> RemoteBatch: ...

    async def results(self, batch: RemoteBatch) -> dict[str, Reply]:
        """Every answer of a finished batch by key (missing keys: no answer)."""
        ...
