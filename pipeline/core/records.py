"""The records of a row's life: the input row, its state while in flight, and what is stored.

Plain data with no I/O: the lanes build them, the store writes them, the journal replays them.
The allowed values of a status, a call outcome, a lane and a stop reason are types here, not
strings scattered through the code (they are `StrEnum`s, so they compare equal to the strings
the store holds).

The records built per row or per call (Row, ResultRecord, CallRecord, Outcome, and Usage,
Prompt, Reply beside them) are not frozen: a frozen dataclass's `__init__` sets every field
through `object.__setattr__`, four times the cost (15 fields: 4.3 against 1.1 µs, measured),
and they are built for every row. They are still treated as values: nothing changes one after
it has left the stage that built it, except the writer, which labels a result it owns with its
request's address.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pipeline.core.usage import ZERO, Usage


class Status(StrEnum):
    """A row's stored result."""

    OK = "ok"
    BLOCKED = "blocked"  # the provider's safety filter refused it: final
    FAILED = "failed"  # no valid answer within the attempts: final for this run
    INVALID = "invalid"  # the input row itself is unusable (no text, bad id): never sent


class CallOutcome(StrEnum):
    """What one call (one request, or one line of a provider batch) came to."""

    OK = "ok"
    INVALID_OUTPUT = "invalid_output"  # answered, but the answer failed the task's checks
    BLOCKED = "blocked"
    TRUNCATED = "truncated"  # cut off at the output budget: retried with a larger one
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    RETRIED = "retried"  # a transient fault: the rows go again
    FAILED = "failed"
    STOPPED = "stopped"  # the provider refused the job (key, billing, per-day quota)
    SHED = "shed"  # Flex refused it for capacity: not billed, not an attempt
    OUTAGE = "outage"  # failed inside an outage: charged to no row
    PAID_TWICE = "paid_twice"  # a stalled batch's late answer: its rows were answered online
    CONTEXT_CACHE = "context_cache"  # a run's context cache: written once, stored; no rows


class Lane(StrEnum):
    """How a call was sold: the online tiers and the provider's batch API."""

    STANDARD = "standard"
    FLEX = "flex"
    BATCH = "batch"


class StopReason(StrEnum):
    """Why a job stopped before every row had a result."""

    INTERRUPTED = "interrupted"
    BUDGET = "budget"
    PROVIDER = "provider"
    OUTAGE = "outage"


@dataclass(slots=True)
class Row:
    """One input row, as read."""

    id: str
    pos: str  # where the row sits in the input; doubles as id when there is no id column
    text: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class RowState:
    """A row in flight: what it has cost and tried so far. Owned by one lane at a time."""

    row: Row
    max_tokens: int
    calls: int = 0  # every call that carried this row
    burned: int = 0  # attempts that count against max_attempts (429s excluded)
    rate_limited: int = 0
    usage: Usage = ZERO
    cost: Decimal = Decimal(0)
    last_error: str | None = None
    flex: bool = False  # the row goes through the Flex tier
    shed: int = 0  # Flex refusals: not billed, not an attempt burned
    feedback: str | None = None  # why the last answer was rejected, told on the next attempt
    invalid: bool = False  # the last attempt got an answer the checks refused
    # clock times of provider faults charged to the row; refunded if an outage covers them
    fault_times: list[float] = field(default_factory=list)
    held: int = 0  # last attempts not failed because most calls around them failed too

    def fresh_attempts(self, max_tokens: int) -> None:
        """A second model takes the row over: new attempts, the bill so far carried on."""
        self.burned = self.rate_limited = 0
        self.feedback, self.invalid, self.last_error = None, False, None
        self.max_tokens = max_tokens


@dataclass(slots=True)
class ResultRecord:
    """A row's final result: exactly one per row and job in the store."""

    row_id: str
    pos: str
    status: str  # a Status
    output: dict[str, Any] | None
    error: str | None
    attempts: int
    usage: Usage
    cost_usd: Decimal
    kept: dict[str, Any] | None
    finished_at: float  # seconds since the epoch; the store writes a TIMESTAMPTZ
    answered_by: str | None = None  # the row whose request answered this one (dedupe)
    request_key: str | None = None  # the request's content address
    input_hash: str | None = None  # the hash of what the row sent
    from_cache: bool = False  # answered from the store's answers, nothing sent
    saved_usd: Decimal = Decimal(0)  # what a cached answer would have cost to ask again
    model: str | None = None  # the model whose answer this is


@dataclass(slots=True)
class CallRecord:
    """One billed (or refused) call: the ledger the cost reports add up."""

    call_id: str
    row_ids: tuple[str, ...]
    attempt: int
    started_at: float  # seconds since the epoch; the store writes a TIMESTAMPTZ
    latency_ms: float
    http_status: int | None
    outcome: str  # a CallOutcome
    error: str | None
    usage: Usage
    cost_usd: Decimal
    model: str
    model_version: str | None
    response_id: str | None
    lane: str = Lane.STANDARD
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One row of a batch, kept in the store while the batch is open (resume rebuilds it)."""

    req: int  # the batch request (its key) that carries the row
    row_id: str
    pos: str
    text: str | None
    fields: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class BatchClose:
    """A finished batch, closed in the same transaction that stores its answers."""

    batch_id: str
    state: str
    ok_rows: int
    retry_rows: int
    error: str | None


def now_utc() -> datetime:
    return datetime.now(UTC)


def runner_id() -> str:
    """Who runs a job: the process and host, shown when a second runner is refused."""
    return f"{os.getpid()}@{socket.gethostname()}"


@dataclass(slots=True)
class Outcome:
    """One online call and the results it made final: committed together by the writer."""

    call: CallRecord
    results: list[ResultRecord]


class StopDispatch(Exception):
    """Raised inside a lane when the job as a whole must stop (provider stop, outage, budget)."""

    def __init__(self, reason: StopReason, message: str):
        super().__init__(message)
        self.reason = reason
