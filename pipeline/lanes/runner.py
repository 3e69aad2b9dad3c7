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
from decimal import Decimal
from typing import TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

from pipeline.budget import Budget
from pipeline.dispatch import Dispatcher, Outcome, RowState, StopDispatch
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
from pipeline.pricing import cost_usd
from pipeline.providers.base import Prompt, Provider, Reply
from pipeline.sources import Row
from pipeline.store import (
    BatchClose,
    BatchRow,
    CallRecord,
    ResultRecord,
    StoreThread,
    now_utc,
)

T = TypeVar("T")
log = logging.getLogger("flashpipe")
SUBMIT_TRIES = 6
MAX_COLLECT = 30.0  # seconds a buffered row waits at most for its batch to fill
DEADLINE_MARGIN = 600.0  # what Flex needs at least before the deadline; Standard below it
PAID_TWICE = "paid_twice"  # a call outcome: billed, its rows already answered another way


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
    open: int = 0
    expired: int = 0
    failed: int = 0
    rows_sent: int = 0
    stalled: int = 0


class BatchRunner:
    def __init__(
        self,
        *,
        job: str,
        run_no: int,
        api: BatchApi,
        provider: Provider,
        dispatcher: Dispatcher,
        store: StoreThread,
        budget: Budget,
        stopping: Callable[[], bool],
        request_stop: Callable[[str, str], None],
        rows_per_batch: int,
        inline_max_bytes: int,
        max_open: int,
        poll_seconds: float,
        max_poll_seconds: float,
        collect_seconds: float,
        max_attempts: int,
        stall_seconds: float = 86_400.0,
    ):
        self.job = job
        self.stall_seconds = stall_seconds
        self.run_no = run_no
        self.api = api
        self.provider = provider
        self.d = dispatcher
        self.store = store
        self.budget = budget
        self.out: ObjectSendStream[BatchOutcome | Outcome] | None = None
        self.stopping = stopping
        self.request_stop = request_stop
        self.rows_per_batch = rows_per_batch
        self.inline_max_bytes = inline_max_bytes
        self.open_slots = anyio.Semaphore(max_open)
        self.poll_seconds = poll_seconds
        self.max_poll_seconds = max_poll_seconds
        self.collect_seconds = collect_seconds
        self.max_attempts = max_attempts
        self.prices = dispatcher.lane_prices["batch"]
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
            for info in await self.store.run(self.store.store.open_batches, self.job):
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
                until = min(
                    last + self.collect_seconds, first + max(MAX_COLLECT, self.collect_seconds)
                )
                timeout = max(0.0, until - time.monotonic())
            group: list[RowState] | list[Row] | None = None
            if timeout is None or timeout > 0:  # a batch that is due goes before the next row
                with anyio.move_on_after(timeout):
                    try:
                        group = await items.receive()
                    except anyio.EndOfStream:
                        break
            if group is not None:
                group = [
                    s if isinstance(s, RowState) else RowState(s, self.d.max_output_tokens)
                    for s in group
                ]
                last = time.monotonic()
                if not self._buffer:
                    first = last
                self._buffer.append(group)
                self._buffered_rows += len(group)
            if self._buffered_rows >= self.rows_per_batch or (group is None and self._buffer):
                await self._launch()
                first = time.monotonic()

    async def _launch(self) -> None:
        """Start one batch from the buffer (at most rows_per_batch rows)."""
        groups: list[list[RowState]] = []
        rows = 0
        while self._buffer and rows + len(self._buffer[0]) <= max(
            self.rows_per_batch, len(self._buffer[0])
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
        prompts = [self.d.prompt_for(g) for g in groups]
        for prompt, est in prompts:
            reserved += self.d.reserve_for(prompt, est, self.prices)
        if not await self.budget.reserve(reserved):
            self.open_slots.release()
            self.request_stop("budget", "budget.max_usd reached")
            return
        rows_to_store = [
            BatchRow(i, s.row.id, s.row.pos, s.row.text, s.row.fields, s.burned)
            for i, g in enumerate(groups)
            for s in g
        ]
        batch = LocalBatch(batch_id, groups, reserved)
        try:
            await self.store.run(
                self.store.store.record_batch,
                self.job,
                batch_id,
                rows_to_store,
                len(groups),
                reserved,
            )
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
        stored = await self.store.run(self.store.store.batch_rows, self.job, batch_id)
        groups: dict[int, list[RowState]] = {}
        for r in stored:
            row = Row(r.row_id, r.pos, r.text, r.fields)
            state = RowState(row, self.d.max_output_tokens, burned=r.attempts)
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
        self._start(batch, [self.d.prompt_for(g)[0] for g in ordered])

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
            inline = size <= self.inline_max_bytes
            try:
                found = await self._retrying(
                    lambda: self._create(batch, keys, requests, inline), "submit"
                )
            except BatchApiError as exc:  # refused as a whole: its rows try again
                await self._close_failed(batch, prompts, str(exc))
                return
        batch.provider_name = found
        self.stats.submitted += 1
        self.stats.rows_sent += sum(len(g) for g in batch.groups)
        await self.store.run(self.store.store.batch_submitted, self.job, batch.batch_id, found)
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
                    raise StopDispatch("provider", str(exc)) from None
                if exc.bad or attempt == SUBMIT_TRIES:
                    raise
                log.warning("batch %s failed (%s); trying again in %.0f s", what, exc, delay)
                await anyio.sleep(exc.retry_after or delay)
                delay = min(60.0, delay * 2)
        raise AssertionError("unreachable")

    async def _poll(self, batch: LocalBatch) -> RemoteBatch | None:
        assert batch.provider_name is not None
        interval = self.poll_seconds
        last_state = ""
        started = time.monotonic()
        grace = 0.0
        while not self.stopping():
            try:
                remote = await self.api.get(batch.provider_name)
            except BatchApiError as exc:
                if exc.stop:
                    raise StopDispatch("provider", str(exc)) from None
                log.warning("polling batch %s: %s", batch.batch_id, exc)
            else:
                if remote.state != last_state:
                    last_state = remote.state
                    await self.store.run(
                        self.store.store.batch_state, self.job, batch.batch_id, remote.state
                    )
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
            interval = min(self.max_poll_seconds, interval * 1.5)
        return None

    async def _finish(self, batch: LocalBatch, prompts: list[Prompt], remote: RemoteBatch) -> None:
        answers: dict[str, Reply] = {}
        if remote.state in (SUCCEEDED, EXPIRED, CANCELLED):  # an ended batch may hold some
            answers = await self._retrying(lambda: self.api.results(remote), "results")
        calls: list[CallRecord] = []
        results: list[ResultRecord] = []
        again: list[list[RowState]] = []
        cost = Decimal(0)
        ok_rows = 0
        started = now_utc()
        for i, (group, prompt) in enumerate(zip(batch.groups, prompts, strict=True)):
            reply = answers.get(str(i))
            if reply is None:
                again += self._unanswered(group, remote, results)
                continue
            call_cost = self._charge(group, reply)
            cost += call_cost
            outcome, finals, retry, error = self.d.judge(group, prompt, reply)
            calls.append(
                self.d.call_record(
                    group,
                    reply,
                    outcome,
                    error,
                    started,
                    0.0,
                    "batch",
                    call_cost,
                    call_id=f"{batch.batch_id}:{i}",
                )
            )
            results += finals
            ok_rows += sum(1 for r in finals if r.status == "ok")
            again += [g for g, _ in retry]
        self.budget.settle(batch.reserved, cost)
        retry_rows = sum(len(g) for g in again)
        self.stats.finished += 1
        if remote.state == EXPIRED:
            self.stats.expired += 1
        elif remote.state == FAILED:
            self.stats.failed += 1
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

    def _deadline_left(self) -> float:
        deadline = self.d.deadline
        return math.inf if deadline is None else (deadline - now_utc()).total_seconds()

    def _stalled(self, waited: float) -> bool:
        """Pending too long, or too close to the job's deadline for the batch to finish (its
        rows then still have time for Flex)."""
        return waited >= self.stall_seconds or self._deadline_left() < 2 * DEADLINE_MARGIN

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

        async def emit(outcome: Outcome) -> None:
            await out.send(outcome)

        limit = anyio.CapacityLimiter(64)

        async def one(group: list[RowState]) -> None:
            async with limit:
                for state in group:
                    state.tier = None if near else "flex"
                await self.d.take(group, emit)

        async with anyio.create_task_group() as tg:
            for group in batch.groups:
                tg.start_soon(one, group)

    async def _finish_late(self, batch: LocalBatch, remote: RemoteBatch) -> None:
        """A stalled batch answered after its rows were answered online: every billed answer
        is stored as a call paid twice, and no result changes."""
        answers: dict[str, Reply] = {}
        if remote.state in (SUCCEEDED, EXPIRED, CANCELLED):
            answers = await self._retrying(lambda: self.api.results(remote), "results")
        calls: list[CallRecord] = []
        cost = Decimal(0)
        started = now_utc()
        for i, group in enumerate(batch.groups):
            reply = answers.get(str(i))
            if reply is None:
                continue
            call_cost = cost_usd(reply.usage, self.prices)
            cost += call_cost
            calls.append(
                self.d.call_record(
                    group,
                    reply,
                    PAID_TWICE,
                    "answered after its rows were answered online",
                    started,
                    0.0,
                    "batch",
                    call_cost,
                    call_id=f"{batch.batch_id}:{i}",
                )
            )
        self.budget.settle(batch.reserved, cost)
        why = f"answered late ({len(calls)} requests paid twice)"
        close = BatchClose(batch.batch_id, remote.state, 0, 0, why)
        assert self.out is not None
        await self.out.send(BatchOutcome(calls, [], close))
        log.warning("batch %s %s", batch.batch_id, why)

    def _charge(self, group: list[RowState], reply: Reply) -> Decimal:
        cost = cost_usd(reply.usage, self.prices)
        self.d.charge(group, reply, self.prices, cost)
        return cost

    def _unanswered(
        self, group: list[RowState], remote: RemoteBatch, results: list[ResultRecord]
    ) -> list[list[RowState]]:
        """Rows a finished batch holds no answer for: they go again, up to max_attempts."""
        why = f"batch {remote.state}" + (f": {remote.error}" if remote.error else "")
        if remote.state == SUCCEEDED:
            why = "no answer for it in the batch results"
        back: list[RowState] = []
        for state in group:
            state.burned += 1
            state.last_error = why
            if state.burned >= self.max_attempts:
                results.append(
                    self.d.final(state, "failed", None, f"after {state.burned} batches: {why}")
                )
                self.d.failures += 1
            else:
                back.append(state)
        return [back] if back else []

    async def _close_failed(self, batch: LocalBatch, prompts: list[Prompt], error: str) -> None:
        remote = RemoteBatch("", FAILED, error)
        results: list[ResultRecord] = []
        again: list[list[RowState]] = []
        for group in batch.groups:
            again += self._unanswered(group, remote, results)
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
