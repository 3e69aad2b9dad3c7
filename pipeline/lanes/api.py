"""What a provider's batch client offers the batch runner, and the states it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.core.reply import Reply

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


@dataclass
class RemoteBatch:
    name: str
    state: str
    error: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


class BatchApi(Protocol):
    """A provider's batch endpoints, as the Batch lane uses them: find, submit, get, results."""

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
