"""The Batch lane: pending rows -> provider batch jobs -> the same judge and the same writer.

Each batch is written to the store (its rows included) *before* it is submitted, under a
display name that is its local id. A run killed between the two finds the batch `prepared`
on resume and asks the provider whether a batch of that name exists before submitting, so a
batch is never submitted twice. A submitted batch is polled with a growing interval; when it
finishes, its answers go through the online judge, and its calls, its results and the closing
of the batch are committed in one transaction. Rows without a valid answer go into the next
batch, up to `limits.max_attempts`.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

from pipeline.budget import Budget
from pipeline.core.pricing import cost_usd
from pipeline.core.records import (
    BatchClose,
    BatchRow,
    CallOutcome,
    CallRecord,
    Lane,
    Outcome,
    ResultRecord,
    Row,
    RowState,
    Status,
    StopDispatch,
    StopReason,
    now_utc,
)
from pipeline.core.reply import Prompt, Reply
from pipeline.core.usage import Usage
from pipeline.core.verdict import Verdict, charge
from pipeline.lanes.api import (
    CANCELLED,
    EXPIRED,
    FAILED,
    FINISHED,
    SUCCEEDED,
    BatchApi,
    BatchApiError,
    RemoteBatch,
)
from pipeline.lanes.online import Asking, Emit
from pipeline.providers.base import Provider
from pipeline.spec import BatchSpec

T = TypeVar("T")
log = logging.getLogger("flashpipe")
SUBMIT_TRIES = 6
MAX_COLLECT = 30.0  # seconds a buffered row waits at most for its batch to fill
DEADLINE_MARGIN = 600.0  # what Flex needs at least before the deadline; Standard below it
ToOnline = Callable[[list[RowState], Emit], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Everything a finished batch produced: stored, and the batch closed, in one commit."""

    calls: list[CallRecord]
    results: list[ResultRecord]
    close: BatchClose


@dataclass
class LocalBatch:
    batch_id: str
    groups: list[list[RowState]]
    reserved: Decimal
    provider_name: str | None = None
    moved: bool = False  # stalled: its rows went online; a late answer is paid twice


@dataclass
class LaneStats:
    submitted: int = 0
    finished: int = 0
    stalled: int = 0


class BatchBook(Protocol):
    """Where the Batch lane keeps a job's batches between runs (the store, in practice)."""

    async def open_batches(self) -> list[dict[str, Any]]: ...

    async def record(
        self, batch_id: str, rows: list[BatchRow], requests: int, reserved: Decimal
    ) -> None: ...

    async def rows(self, batch_id: str) -> list[BatchRow]: ...

    async def submitted(self, batch_id: str, provider_name: str) -> None: ...

    async def state(self, batch_id: str, state: str) -> None: ...


@dataclass(frozen=True, slots=True)
class JobControl:
    """A job as a lane sees it: its name and run, its deadline, and its stop switch."""

    job: str
    run_no: int
    stopping: Callable[[], bool]
    request_stop: Callable[[StopReason, str], None]
    deadline: datetime | None = None


class BatchRunner:
    """The Batch lane: owns the batches of a run from buffering to closing. Answers are judged
    by the same judge as online; stalled batches hand their rows to `to_online`."""

    def __init__(
        self,
        cfg: BatchSpec,
        asking: Asking,
        api: BatchApi,
        provider: Provider,
        book: BatchBook,
        budget: Budget,
        control: JobControl,
        to_online: ToOnline | None = None,
    ):
        self.cfg = cfg
        self.job = control.job
        self.run_no = control.run_no
        self.control = control
        self.api = api
        self.provider = provider
        self.requests = asking.requests
        self.judge = asking.judge
        self.to_online = to_online
        self.book = book
        self.budget = budget
        self.out: ObjectSendStream[BatchOutcome | Outcome] | None = None
        self.stopping = control.stopping
        self.request_stop = control.request_stop
        self.open_slots = anyio.Semaphore(cfg.max_open)
        self.prices = asking.lane_prices()[Lane.BATCH]
        self.stats = LaneStats()
        self._buffer: list[list[RowState]] = []
        self._buffered_rows = 0
        self._count = 0
        self._salt = secrets.token_hex(3)
        self._tg: TaskGroup | None = None
        self._requeued = anyio.Event()
        self._live = 0  # batches being submitted or polled by this run

    # -- the lane's task --------------------------------------------------------------------
    async def run(
        self,
        items: ObjectReceiveStream[list[Row]] | ObjectReceiveStream[list[RowState]],
        out: ObjectSendStream[BatchOutcome | Outcome],
    ) -> None:
        """Resume open batches, then batch what arrives until the stream ends and every
        batch of this run is finished (or the job stops). Outcomes go to the writer."""
        self.out = out
        async with out, anyio.create_task_group() as tg:
            self._tg = tg
            for info in await self.book.open_batches():
                await self._resume(info)
            async with items:
                await self._collect(items)
            # rows the finished batches send again, until none are left
            while not self.stopping() and (self._buffer or self._live):
                if self._buffer:
                    await self._launch()
                    continue
                self._requeued = anyio.Event()
                await self._requeued.wait()

    async def _collect(
        self, items: ObjectReceiveStream[list[Row]] | ObjectReceiveStream[list[RowState]]
    ) -> None:
        # a partial batch goes once no row has arrived for collect_seconds (the input has
        # dried up for now), and no row waits longer than MAX_COLLECT for its batch
        last = first = time.monotonic()
        while not self.stopping():
            timeout = None
            if self._buffer:
                wait = self.cfg.collect_seconds
                until = min(last + wait, first + max(MAX_COLLECT, wait))
                timeout = max(0.0, until - time.monotonic())
            group: list[RowState] | list[Row] | None = None
            if timeout is None or timeout > 0:  # a batch that is due goes before the next row
                with anyio.move_on_after(timeout):
                    try:
                        group = await items.receive()
                    except anyio.EndOfStream:
                        break
            if group is not None:
                group = [s if isinstance(s, RowState) else self.requests.state(s) for s in group]
                last = time.monotonic()
                if not self._buffer:
                    first = last
                self._buffer.append(group)
                self._buffered_rows += len(group)
            if self._buffered_rows >= self.cfg.rows_per_batch or (group is None and self._buffer):
                await self._launch()
                first = time.monotonic()

    async def _launch(self) -> None:
        """Start one batch from the buffer (at most rows_per_batch rows)."""
        groups: list[list[RowState]] = []
        rows = 0
        while self._buffer and rows + len(self._buffer[0]) <= max(
            self.cfg.rows_per_batch, len(self._buffer[0])
        ):
            g = self._buffer.pop(0)
            groups.append(g)
            rows += len(g)
        self._buffered_rows -= rows
        await self.open_slots.acquire()
        if self.stopping():
            self.open_slots.release()
            return
        self._count += 1
        batch_id = f"flashpipe-{self.run_no}-{self._count}-{self._salt}"
        reserved = Decimal(0)
        prompts = [self.requests.prompt_for(g) for g in groups]
        capped = self.budget.cap is not None
        for prompt, est in prompts:
            reserved += self.requests.reserve_for(prompt, est, self.prices, capped)
        if not await self.budget.reserve(reserved):
            self.open_slots.release()
            self.request_stop(StopReason.BUDGET, "budget.max_usd reached")
            return
        rows_to_store = [
            BatchRow(i, s.row.id, s.row.pos, s.row.text, s.row.fields, s.burned)
            for i, g in enumerate(groups)
            for s in g
        ]
        batch = LocalBatch(batch_id, groups, reserved)
        try:
            await self.book.record(batch_id, rows_to_store, len(groups), reserved)
        except BaseException:
            self.budget.settle(reserved, Decimal(0))
            self.open_slots.release()
            raise
        self._start(batch, [p for p, _ in prompts])

    def _start(self, batch: LocalBatch, prompts: list[Prompt]) -> None:
        assert self._tg is not None
        self._live += 1
        self._tg.start_soon(self._lifecycle, batch, prompts)

    async def _resume(self, info: dict[str, object]) -> None:
        """A batch a previous run stored: rebuild its rows from the store and go on."""
        batch_id = str(info["batch_id"])
        stored = await self.book.rows(batch_id)
        groups: dict[int, list[RowState]] = {}
        for r in stored:
            row = Row(r.row_id, r.pos, r.text, r.fields)
            state = self.requests.state(row, burned=r.attempts)
            groups.setdefault(r.req, []).append(state)
        ordered = [groups[k] for k in sorted(groups)]
        reserved = Decimal(str(info["reserved"]))
        await self.open_slots.acquire()
        self.budget.hold(reserved)  # submitted already: it will be billed whatever the cap says
        name = info["provider_name"]
        batch = LocalBatch(batch_id, ordered, reserved, str(name) if name else None)
        if batch.provider_name is not None:
            self.stats.submitted += 1
        log.info("resuming batch %s (%s)", batch_id, name or "not yet submitted")
        self._start(batch, [self.requests.prompt_for(g)[0] for g in ordered])

    # -- one batch ---------------------------------------------------------------------------
    async def _lifecycle(self, batch: LocalBatch, prompts: list[Prompt]) -> None:
        try:
            if batch.provider_name is None:
                await self._submit(batch, prompts)
            if batch.provider_name is None:
                return
            remote = await self._poll(batch)
            if remote is None:
                return  # stopping: the next run polls it again (or a stalled batch gave up)
            if batch.moved:
                await self._finish_late(batch, remote)
            else:
                await self._finish(batch, prompts, remote)
        except StopDispatch as stop:
            self.request_stop(stop.reason, str(stop))
        finally:
            self._live -= 1
            self.open_slots.release()
            self._requeued.set()

    async def _submit(self, batch: LocalBatch, prompts: list[Prompt]) -> None:
        # a batch a killed run may have submitted already: ask before submitting again
        found = await self._retrying(lambda: self.api.find(batch.batch_id), "find")
        if found is None:
            keys = [str(i) for i in range(len(batch.groups))]
            requests = [self.provider.encode(p) for p in prompts]
            size = sum(len(r) for r in requests) + 64 * len(requests)
            inline = size <= self.cfg.inline_max_bytes
            try:
                found = await self._retrying(
                    lambda: self._create(batch, keys, requests, inline), "submit"
                )
            except BatchApiError as exc:  # refused as a whole: its rows try again
                await self._close_failed(batch, prompts, str(exc))
                return
        batch.provider_name = found
        self.stats.submitted += 1
        await self.book.submitted(batch.batch_id, found)
        log.info("batch %s submitted as %s", batch.batch_id, found)

    async def _create(
        self, batch: LocalBatch, keys: list[str], requests: list[bytes], inline: bool
    ) -> str:
        try:
            return await self.api.submit(batch.batch_id, keys, requests, inline)
        except BatchApiError as exc:
            if exc.stop or exc.bad:
                raise
            # the create may have reached the provider before the connection failed
            found = await self.api.find(batch.batch_id)
            if found is not None:
                return found
            raise

    async def _retrying(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        delay = 1.0
        for attempt in range(1, SUBMIT_TRIES + 1):
            try:
                return await call()
            except BatchApiError as exc:
                if exc.stop:
                    raise StopDispatch(StopReason.PROVIDER, str(exc)) from None
                if exc.bad or attempt == SUBMIT_TRIES:
                    raise
                log.warning("batch %s failed (%s); trying again in %.0f s", what, exc, delay)
                await anyio.sleep(exc.retry_after or delay)
                delay = min(60.0, delay * 2)
        raise AssertionError("unreachable")

    async def _poll(self, batch: LocalBatch) -> RemoteBatch | None:
        assert batch.provider_name is not None
        interval = self.cfg.poll_seconds
        last_state = ""
        started = time.monotonic()
        grace = 0.0
        while not self.stopping():
            try:
                remote = await self.api.get(batch.provider_name)
            except BatchApiError as exc:
                if exc.stop:
                    raise StopDispatch(StopReason.PROVIDER, str(exc)) from None
                log.warning("polling batch %s: %s", batch.batch_id, exc)
            else:
                if remote.state != last_state:
                    last_state = remote.state
                    await self.book.state(batch.batch_id, remote.state)
                if remote.state in FINISHED:
                    return remote
            waited = time.monotonic() - started
            if not batch.moved and self._stalled(waited):
                await self._move_online(batch, waited)
                # watched as long again as it was pending (never past the deadline): a
                # later answer is not seen by this run
                grace = min(waited, self._deadline_left())
                started = time.monotonic()
            elif batch.moved and waited >= grace:
                self.budget.settle(batch.reserved, Decimal(0))
                log.warning("batch %s never answered; stopped watching it", batch.batch_id)
                return None
            await anyio.sleep(interval)
            interval = min(self.cfg.max_poll_seconds, interval * 1.5)
        return None

    async def _finish(self, batch: LocalBatch, prompts: list[Prompt], remote: RemoteBatch) -> None:
        answers = await self._answers(remote)
        calls: list[CallRecord] = []
        results: list[ResultRecord] = []
        again: list[list[RowState]] = []
        cost = Decimal(0)
        for i, (group, prompt) in enumerate(zip(batch.groups, prompts, strict=True)):
            reply = answers.get(str(i))
            if reply is None:
                verdict = self.judge.unanswered(group, _missing(remote))
            else:
                call_cost = cost_usd(reply.usage, self.prices)
                cost += call_cost
                charge(group, reply.usage, call_cost, self._share_cost)
                # a 429 line here is this batch's business: nothing online slows down for it
                verdict = self.judge.verdict(group, prompt.max_output_tokens, reply)
                calls.append(self._call(group, reply, verdict, call_cost, f"{batch.batch_id}:{i}"))
            results += verdict.finals
            again += verdict.again()
        self.budget.settle(batch.reserved, cost)
        ok_rows = sum(1 for r in results if r.status == Status.OK)
        retry_rows = sum(len(g) for g in again)
        self.stats.finished += 1
        close = BatchClose(batch.batch_id, remote.state, ok_rows, retry_rows, remote.error)
        assert self.out is not None
        await self.out.send(BatchOutcome(calls, results, close))
        log.info(
            "batch %s %s: %d rows ok, %d to send again",
            batch.batch_id,
            remote.state,
            ok_rows,
            retry_rows,
        )
        self._requeue(again)

    async def _answers(self, remote: RemoteBatch) -> dict[str, Reply]:
        if remote.state not in (SUCCEEDED, EXPIRED, CANCELLED):  # an ended batch may hold some
            return {}
        return await self._retrying(lambda: self.api.results(remote), "results")

    def _share_cost(self, usage: Usage) -> Decimal:
        return cost_usd(usage, self.prices)

    def _call(
        self, group: list[RowState], reply: Reply, verdict: Verdict, cost: Decimal, call_id: str
    ) -> CallRecord:
        when = (time.time(), 0.0)
        return self.requests.call_record(
            group, reply, verdict, when, Lane.BATCH, cost, call_id=call_id
        )

    def _deadline_left(self) -> float:
        deadline = self.control.deadline
        return math.inf if deadline is None else (deadline - now_utc()).total_seconds()

    def _stalled(self, waited: float) -> bool:
        """Pending too long, or too close to the job's deadline for the batch to finish (its
        rows then still have time for Flex)."""
        return waited >= self.cfg.stall_seconds or self._deadline_left() < 2 * DEADLINE_MARGIN

    async def _move_online(self, batch: LocalBatch, waited: float) -> None:
        """A stalled batch: close it in the store and run its rows on Flex (Standard when the
        deadline is under DEADLINE_MARGIN away). The batch is still watched for a while, so a
        late answer is counted."""
        batch.moved = True
        self.stats.stalled += 1
        rows = sum(len(g) for g in batch.groups)
        why = f"still unfinished after {waited:.0f} s; its {rows} rows moved online"
        log.warning("batch %s %s", batch.batch_id, why)
        assert self.out is not None
        # closed before the rows go online: a run killed from here on reads them as to do
        await self.out.send(
            BatchOutcome([], [], BatchClose(batch.batch_id, "stalled", 0, rows, why))
        )
        near = self._deadline_left() < DEADLINE_MARGIN
        out = self.out
        to_online = self.to_online
        assert to_online is not None  # a batch stalls only where rows can go online

        async def emit(outcome: Outcome) -> None:
            await out.send(outcome)

        limit = anyio.CapacityLimiter(64)

        async def one(group: list[RowState]) -> None:
            async with limit:
                for state in group:
                    state.flex = not near
                await to_online(group, emit)

        async with anyio.create_task_group() as tg:
            for group in batch.groups:
                tg.start_soon(one, group)

    async def _finish_late(self, batch: LocalBatch, remote: RemoteBatch) -> None:
        """A stalled batch answered after its rows were answered online: every billed answer
        is stored as a call paid twice, and no result changes."""
        answers = await self._answers(remote)
        calls: list[CallRecord] = []
        cost = Decimal(0)
        late = Verdict(CallOutcome.PAID_TWICE, error="answered after its rows were answered online")
        for i, group in enumerate(batch.groups):
            reply = answers.get(str(i))
            if reply is None:
                continue
            call_cost = cost_usd(reply.usage, self.prices)
            cost += call_cost
            calls.append(self._call(group, reply, late, call_cost, f"{batch.batch_id}:{i}"))
        self.budget.settle(batch.reserved, cost)
        why = f"answered late ({len(calls)} requests paid twice)"
        close = BatchClose(batch.batch_id, remote.state, 0, 0, why)
        assert self.out is not None
        await self.out.send(BatchOutcome(calls, [], close))
        log.warning("batch %s %s", batch.batch_id, why)

    async def _close_failed(self, batch: LocalBatch, prompts: list[Prompt], error: str) -> None:
        remote = RemoteBatch("", FAILED, error)
        results: list[ResultRecord] = []
        again: list[list[RowState]] = []
        for group in batch.groups:
            verdict = self.judge.unanswered(group, _missing(remote))
            results += verdict.finals
            again += verdict.again()
        self.budget.settle(batch.reserved, Decimal(0))
        retry_rows = sum(len(g) for g in again)
        close = BatchClose(batch.batch_id, FAILED, 0, retry_rows, error)
        assert self.out is not None
        await self.out.send(BatchOutcome([], results, close))
        self._requeue(again)

    def _requeue(self, groups: list[list[RowState]]) -> None:
        for g in groups:
            self._buffer.append(g)
            self._buffered_rows += len(g)
        self._requeued.set()


def _missing(remote: RemoteBatch) -> str:
    """Why a finished batch holds no answer for a request."""
    if remote.state == SUCCEEDED:
        return "no answer for it in the batch results"
    return f"batch {remote.state}" + (f": {remote.error}" if remote.error else "")
