"""One job run: reader -> bounded stream -> workers -> bounded stream -> one writer.

All stages live in one anyio task group (asyncio backend). The reader skips rows already
stored (one SQL lookup per input batch), the workers run the online lane, the writer commits
results and call rows in batched transactions every few hundred rows or 250 ms.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import orjson
import pyarrow as pa
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.auth import Auth
from pipeline.autopack import with_auto_packing
from pipeline.budget import Budget
from pipeline.cache import CachedAnswer, cached_result, lane_for_saving
from pipeline.catalog import channel_of, model_limits
from pipeline.channel import ChannelReceiver, channel
from pipeline.core.breaker import Breaker, BreakerConfig, BreakerState
from pipeline.core.records import (
    BatchClose,
    CallOutcome,
    CallRecord,
    Lane,
    Outcome,
    ResultRecord,
    Row,
    RowState,
    StopDispatch,
    StopReason,
    now_utc,
    runner_id,
)
from pipeline.core.usage import ZERO, Usage
from pipeline.dedupe import Dedupe, fingerprint, input_hash, request_key
from pipeline.errors import (
    BudgetExhausted,
    FlashpipeError,
    Interrupted,
    ProviderStop,
    ProviderUnreachable,
)
from pipeline.fingerprint import check_unchanged, input_fingerprint
from pipeline.journal import CallJournal, journal_files, read_journal
from pipeline.lanes.build import build_auth, build_batch_api, build_provider, online_lane
from pipeline.lanes.online import Client, Gates, InFlightCounter, OnlineLane, Routing
from pipeline.lanes.runner import BatchOutcome, BatchRunner, JobControl
from pipeline.limits import Flow, FlowControl
from pipeline.pricing import context_cache_cost, resolve_prices
from pipeline.progress import ProgressReporter, RunStats
from pipeline.providers import context_cache
from pipeline.sources import Frame, count_rows_fast, keep_types, read_frames
from pipeline.spec import JobSpec, parse_deadline
from pipeline.store import Store, StoredBatches, StoreThread, check_writable
from pipeline.tasks import build_task
from pipeline.tasks.base import Task, estimate_tokens
from pipeline.tasks.custom import CustomTask
from pipeline.tasks.packing import packed_shape
from pipeline.transport import AiohttpTransport, Transport

log = logging.getLogger("flashpipe")
LOOKUP_MIN = 1_000  # rows per resume lookup (the anti-join) while work is being found
LOOKUP_MAX = 131_072

FLUSH_ROWS = 500
FLUSH_SECONDS = 0.25
AUTO_CAP = 1024
GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class RunSummary:
    job: str
    state: str
    rows: dict[str, int]
    requests: int
    usd: Decimal
    elapsed_s: float
    view: str
    ray: dict[str, Any] | None = None  # workers, deaths, broker leases (engine.kind = "ray")


def stored_spec(spec: JobSpec, files: list[dict[str, Any]] | None = None) -> str:
    doc: dict[str, Any] = {"doc": orjson.loads(spec.raw), "_identity": spec.identity()}
    if files is not None:  # what the input files looked like (inputs without an id column)
        doc["_input"] = files
    return orjson.dumps(doc).decode()


def request_fingerprint(spec: JobSpec, task: Task) -> str:
    """Everything besides a row's text that decides what a request is and what it answers."""
    p = spec.provider
    return fingerprint(
        {
            "model": spec.model,
            "api": p.api,
            "channel": str(channel_of(p.api, p.base_url, p.channel)),
            "task": spec.task,
            "system": task.shape.system,
            "schema": task.shape.schema,
            "thinking": p.thinking,
            "temperature": p.temperature,
            "max_output_tokens": p.max_output_tokens,
            "rows_per_request": spec.limits.rows_per_request,
        }
    )


def status_path(db_path: str) -> Path:
    return Path(db_path + ".status.json")


@dataclass(frozen=True, slots=True)
class Opened:
    """A job as the store has it when a run begins."""

    run_no: int
    view: str
    spent_before: Decimal
    rows_before: int


async def open_job(
    spec: JobSpec,
    thread: StoreThread,
    view: tuple[Any, dict[str, pa.DataType]],
    restart: bool,
    db_path: str,
) -> Opened:
    """Begin the run in the store: refuse a changed input, create the typed view, and count
    the calls a killed run was billed for but never stored."""
    store = thread.store
    if restart:
        await thread.run(store.drop_job, spec.name)
    files = await anyio.to_thread.run_sync(input_fingerprint, spec.input)
    known = await thread.run(store.job_row, spec.name)
    if known is not None:
        check_unchanged(spec.name, orjson.loads(known["spec"]).get("_input"), files)
    run_no = await thread.run(
        store.begin_job,
        spec.name,
        stored_spec(spec, files),
        spec.spec_hash,
        spec.identity(),
        spec.task,
        spec.model,
    )
    columns, kept_types = view  # the task's typed columns, the kept input columns' types
    name = await thread.run(store.create_view, spec.name, columns, spec.input.keep, kept_types)
    leftovers = journal_files(db_path)
    lost = list(read_journal(leftovers))
    if lost:
        found = await thread.run(store.recover_calls, lost)
        log.warning("recovered %d billed calls a previous run lost before storing them", found)
    for path in leftovers:
        path.unlink(missing_ok=True)
    before = await thread.run(store.call_totals, spec.name)
    done_before = sum((await thread.run(store.status_counts, spec.name)).values())
    return Opened(run_no, name, before["usd"], done_before)


Message = Outcome | ResultRecord | BatchOutcome  # what the writer receives


@dataclass(slots=True)
class Pending:
    """What the writer holds until its next commit."""

    results: list[ResultRecord] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    closes: list[BatchClose] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.results or self.calls or self.closes)

    def add(
        self,
        msgs: list[Message],
        fan_out: Callable[[list[ResultRecord]], list[ResultRecord]],
        count: Callable[[CallRecord], None],
    ) -> list[CallRecord]:
        """Take the messages in; the online calls among them, which need the journal."""
        received: list[CallRecord] = []
        for msg in msgs:
            if isinstance(msg, Outcome):
                received.append(msg.call)
                self.results.extend(fan_out(msg.results))
                count(msg.call)
            elif isinstance(msg, BatchOutcome):
                # the provider keeps a batch's answers: no journal needed, and the batch
                # closes in the same commit as its results
                self.calls.extend(msg.calls)
                self.results.extend(fan_out(msg.results))
                self.closes.append(msg.close)
                for call in msg.calls:
                    count(call)
            else:
                self.results.append(msg)
        self.calls.extend(received)
        return received


async def _receive_some(
    inbox: ChannelReceiver[Message], most: int, wait: float
) -> tuple[list[Message], bool]:
    """What is queued (up to `most`), waiting at most `wait` for the first; and whether the
    stream has ended."""
    msgs: list[Message] = []
    with anyio.move_on_after(wait):
        try:
            msgs.append(await inbox.receive())
            while len(msgs) < most:  # take what is queued: one journal write
                msgs.append(inbox.receive_nowait())
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return msgs, True
    return msgs, False


class JobRun:
    """State of one run, shared by the reader, the workers, the writer and the ticker."""

    def __init__(
        self,
        spec: JobSpec,
        store: StoreThread,
        transport: Transport,
        auth: Auth,
        opened: Opened,
        progress: ProgressReporter,
        db_path: str,
        journal: CallJournal,
    ):
        self.spec = spec
        self.run_no = opened.run_no
        self.view = opened.view
        self.ray_stats: dict[str, Any] = {}  # workers, deaths, leases (engine.kind = "ray")
        self.ray_run: Any = None  # pipeline.dist.driver.RayRun, started before the stages
        self.journal = journal
        self._committed = anyio.Event()
        self._committed.set()
        self.store = store
        self.task: Task = build_task(spec)
        self.prices = resolve_prices(spec)
        self.flow: Flow = FlowControl(spec.limits.rpm, spec.limits.tpm, time.monotonic)
        if spec.provider.pools and spec.engine.kind == "local":
            from pipeline.poolflow import local_pools

            self.flow, auth = local_pools(spec.provider.pools, build_provider(spec).headers)
        self.budget = Budget(spec.max_usd, opened.spent_before)
        self.progress = progress
        self.db_path = db_path
        conc = spec.limits.concurrency
        self.auto = conc is None
        self.workers = conc if conc is not None else AUTO_CAP
        start = conc if conc is not None else self._auto_target(0.5)
        # with a fixed concurrency the workers already bound what is in flight: just count
        self.in_flight: anyio.CapacityLimiter | InFlightCounter = (
            anyio.CapacityLimiter(start) if self.auto else InFlightCounter(start)
        )
        self.stop_reason: StopReason | None = None
        self.stop_message: str | None = None
        self.hard_stop = False
        self.in_progress: dict[str, str] = {}  # row id -> input position, until stored
        self.stats = RunStats(spec.name, rpm_limit=spec.limits.rpm, lane=spec.provider.lane)
        self.lane = spec.provider.lane
        self.context_tokens = model_limits(spec.model).context
        self.dedupe = Dedupe(
            spec.input.keep, enabled=spec.dedupe, record_key=spec.cache, model=spec.model
        )
        self.fingerprint = request_fingerprint(spec, self.task)
        self.online, self.batches = self._lanes(transport, auth)
        self.saving_prices = self.online.prices[lane_for_saving(self.lane)]

    def _lanes(self, transport: Transport, auth: Auth) -> tuple[OnlineLane, BatchRunner | None]:
        """The online lane (with its escalation model) and, for batch and auto, the Batch lane."""
        spec, b = self.spec, self.spec.batch
        deadline = (
            parse_deadline(spec.provider.deadline, now_utc()) if spec.provider.deadline else None
        )
        provider = build_provider(spec, self.run_no)
        limit_s = spec.limits.outage_minutes * 60
        gates = Gates(
            self.flow, self.budget, Breaker(BreakerConfig(limit_s=limit_s), time.monotonic)
        )
        client = Client(provider, transport, auth, self.in_flight)
        routing = Routing(self.lane, b.flex_sheds, None, deadline, b.batch_hours)
        online = online_lane(spec, self.task, (client, gates, routing), self.stopping, self.run_no)
        if self.lane not in ("batch", "auto"):
            return online, None
        control = JobControl(spec.name, self.run_no, self.stopping, self.request_stop, deadline)
        api = build_batch_api(spec, transport, auth)
        batches = StoredBatches(self.store, spec.name)
        runner = BatchRunner(
            b, online.asking, api, provider, batches, self.budget, control, online.take
        )
        return online, runner

    def summary(self, elapsed_s: float) -> RunSummary:
        stats, batches = self.stats, self.batches
        return RunSummary(
            self.spec.name,
            stats.state,
            dict(stats.by_status),
            stats.requests + (batches.api.requests if batches is not None else 0),
            stats.usd,
            elapsed_s,
            self.view,
            self.ray_stats or None,
        )

    def stopping(self) -> bool:
        return self.stop_reason is not None

    def request_stop(self, reason: StopReason, message: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_message = message
            log.info("stopping dispatch: %s", message)

    def _auto_target(self, latency: float) -> int:
        """Little's law: requests in flight = request rate x latency, with headroom."""
        rpm = self.flow.current_rpm
        if rpm is None:
            return 256
        return max(4, min(AUTO_CAP, math.ceil(rpm / 60 * latency * 1.5) + 4))

    # -- reader ------------------------------------------------------------------------------
    async def read(
        self, work: ObjectSendStream[list[Row]], out: ObjectSendStream[Outcome | ResultRecord]
    ) -> None:
        spec = self.spec
        packer = Packer(spec.limits.rows_per_request, work)
        async with work, out:
            frames: Iterator[Frame] = read_frames(spec.input)
            # a resume far into a big job: every lookup scans the stored rows once, so start
            # with large groups instead of growing to them
            size = min(LOOKUP_MAX, max(LOOKUP_MIN, self.stats.rows_before // 8))
            group, exhausted = await anyio.to_thread.run_sync(_take_frames, frames, size)
            found = False
            while group and not self.stopping():
                # while DuckDB looks a group up, the next one is read, unless this group holds
                # parsed rows (JSONL): two groups of rows would then sit in memory at once
                ahead = not any(f.holds_rows for f in group)
                ids = pa.concat_arrays([f.ids() for f in group])
                positions = pa.concat_arrays([f.positions() for f in group])
                lookup = partial(self.store.run, self.store.store.to_do, spec.name, ids, positions)
                following: list[Frame] = []
                if ahead:
                    size = _next_size(size, found)
                    todo, (following, exhausted) = await _together(
                        lookup, partial(_read_ahead, frames, size, exhausted)
                    )
                else:
                    todo = await lookup()
                found = bool(todo)
                if not await self._feed(group, ids, todo, packer, out):
                    return
                if not ahead:
                    group = []  # its rows go before the next group is parsed
                    size = _next_size(size, found)
                    following, exhausted = await _read_ahead(frames, size, exhausted)
                group = following
            if not self.stopping():
                await packer.flush()

    async def _feed(
        self,
        group: list[Frame],
        ids: pa.Array,
        todo: dict[int, str | None],
        packer: Packer,
        out: ObjectSendStream[Outcome | ResultRecord],
    ) -> bool:
        """Pack the group's rows still to do (invalid ones go straight to the writer);
        False once the job is stopping."""
        keep = self.spec.input.keep
        stored = {ids[i].as_py(): p for i, p in todo.items() if p is not None}
        for frame, picked in _split(group, todo):
            rows = await anyio.to_thread.run_sync(frame.rows, picked)
            sendable: list[tuple[Row, str, str]] = []
            for row in rows:
                invalid = self._invalid_reason(row, stored)
                if invalid is not None:
                    rid = row.pos if invalid.startswith("duplicate") else row.id
                    await out.send(_invalid_result(rid, row, invalid, keep))
                    continue
                self.in_progress[row.id] = row.pos
                user = self.task.render(row)
                sendable.append((row, request_key(self.fingerprint, user), input_hash(user)))
            hits = await self._cached(sendable)
            for row, key, ihash in sendable:
                # a copy of a row of this job names that row; the cache answers the others
                copy = self.dedupe.answered(row, key)
                hit = hits.get(key)
                if copy is None and hit is not None and not self.dedupe.in_flight(key):
                    copy = cached_result(
                        row, key, ihash, hit, keep, self.saving_prices, self.spec.model
                    )
                if copy is not None:
                    await out.send(copy)
                elif self.dedupe.admit(row, key, ihash):
                    await packer.add(row)
                if self.stopping():
                    return False
        return True

    async def _cached(self, rows: list[tuple[Row, str, str]]) -> dict[str, CachedAnswer]:
        """The stored answers for these rows' requests (one lookup per input frame)."""
        if not self.spec.cache or not rows:
            return {}
        found = await self.store.run(self.store.store.cached_answers, [k for _, k, _ in rows])
        return {k: CachedAnswer(orjson.loads(out), usage) for k, (out, usage) in found.items()}

    def _invalid_reason(self, row: Row, stored: dict[str, str]) -> str | None:
        if row.id in stored:  # stored from another input position
            return f"duplicate id {row.id!r} (first at {stored[row.id]})"
        if row.id in self.in_progress:
            return f"duplicate id {row.id!r} (first at {self.in_progress[row.id]})"
        if row.error is not None:
            return row.error
        if isinstance(self.task, CustomTask):
            missing = self.task.missing_field(row)
            if missing is not None:
                return missing
        tokens = estimate_tokens(row.text or "")
        if tokens > self.context_tokens:
            return (
                f"{row.pos}: text is about {tokens:,} tokens, over {self.spec.model}'s "
                f"{self.context_tokens:,}-token context (not sent)"
            )
        return None

    # -- workers -----------------------------------------------------------------------------
    async def work(
        self, items: ObjectReceiveStream[list[Row]], out: ObjectSendStream[Outcome | ResultRecord]
    ) -> None:
        async def emit(outcome: Outcome) -> None:
            await out.send(outcome)

        async with items, out:
            async for rows in items:
                if self.stopping():
                    continue
                try:
                    await self.online.process(rows, emit)
                except StopDispatch as stop:
                    self.request_stop(stop.reason, str(stop))

    # -- writer ------------------------------------------------------------------------------
    async def write(self, inbox: ChannelReceiver[Message]) -> None:
        """Receive outcomes, journal each call at once, and hand batches to the committer.

        Receiving never waits for a commit: while one batch commits, the next one fills and
        its calls are already in the journal, so a kill -9 loses no received call unrecorded.
        Each journal generation holds exactly one batch and is deleted once that batch commits.
        """
        pending = Pending()
        last = time.monotonic()
        to_commit, committing = channel[tuple[Path, Pending]](1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._commit, committing)
            async with inbox, to_commit:
                closed = False
                while not closed:
                    msgs, closed = await _receive_some(inbox, 512, FLUSH_SECONDS)
                    received = pending.add(msgs, self._fan_out, self._count_call)
                    if received:
                        self.journal.append(self.spec.name, received)
                    now = time.monotonic()
                    due = len(pending.results) >= FLUSH_ROWS or now - last >= FLUSH_SECONDS
                    if pending and (closed or (due and self._committed.is_set())):
                        await self._committed.wait()  # only ever waits at the very end
                        self._committed = anyio.Event()
                        await to_commit.send((self.journal.rotate(), pending))
                        pending, last = Pending(), now

    def _fan_out(self, finals: list[ResultRecord]) -> list[ResultRecord]:
        """Each sent row's result, plus the results of the copies that waited for it."""
        out: list[ResultRecord] = []
        for r in finals:
            out.extend(self.dedupe.fan_out(r))
        return out

    async def _commit(self, batches: ChannelReceiver[tuple[Path, Pending]]) -> None:
        async with batches:
            async for generation, p in batches:
                await self._flush(p.results, p.calls, p.closes)
                generation.unlink(missing_ok=True)  # every call in it is stored now
                self._committed.set()

    def _count_call(self, call: CallRecord) -> None:
        s = self.stats
        if call.lane != Lane.BATCH:  # batch answers arrive in a few HTTP requests, counted apart
            s.requests += 1
        s.usage = s.usage + call.usage
        s.usd += call.cost_usd
        if call.outcome == "rate_limited":
            s.rate_limited += 1

    async def _flush(
        self,
        results: list[ResultRecord],
        calls: list[Any],
        closes: list[BatchClose] = (),  # type: ignore[assignment]
    ) -> None:
        await self.store.run(self.store.store.write, self.spec.name, results, calls, closes)
        for r in results:
            self.stats.count(r.status)
            if r.status == "failed":
                self.stats.failures += 1
            self.in_progress.pop(r.row_id, None)

    # -- ticker: progress, live status snapshot, auto concurrency ---------------------------
    async def tick(self) -> None:
        while True:
            await anyio.sleep(1.0)
            self.stats.in_flight = self.in_flight.borrowed_tokens
            self.stats.rpm_current = self.flow.current_rpm
            self.stats.shed = self.online.shed
            self.stats.outage = outage_snapshot(self.online)
            if self.batches is not None:
                lane = self.batches.stats
                self.stats.batches_open = lane.submitted - lane.finished
                self.stats.batches_done = lane.finished
                self.stats.batch_requests = self.batches.api.requests
            if self.auto:
                target = self._auto_target(self.online.latency_ewma)
                if isinstance(self.in_flight, anyio.CapacityLimiter) and (
                    target != self.in_flight.total_tokens
                ):
                    self.in_flight.total_tokens = target
            self.progress.update(self.stats)
            self.write_snapshot()

    def write_snapshot(self) -> None:
        snap = self.stats.snapshot(time.monotonic())
        snap["runner"] = runner_id()
        snap["updated_at"] = now_utc().isoformat()
        path = status_path(self.db_path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(orjson.dumps(snap))
            os.replace(tmp, path)
        except OSError:
            log.debug("cannot write the status snapshot %s", path)

    # -- signals -----------------------------------------------------------------------------
    async def watch_signals(self, workers: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if self.stop_reason is not StopReason.INTERRUPTED:
                    self.stop_reason = StopReason.INTERRUPTED
                    self.stop_message = "interrupted by a signal"
                    self.progress.update(self.stats, final=True)
                    # in-flight calls get a short grace period, then are cancelled
                    workers.deadline = min(workers.deadline, anyio.current_time() + GRACE_SECONDS)
                else:
                    self.hard_stop = True
                    workers.cancel()


def outage_snapshot(lane: OnlineLane) -> dict[str, Any] | None:
    """The outage as the progress line and `status` show it, or None while calls flow."""
    breaker = lane.gates.breaker
    outage = breaker.outage()
    if outage is None:
        return None
    now = time.monotonic()
    since = time.time() - (now - outage.since)
    probing = breaker.state is BreakerState.PROBING
    return {
        "since": time.strftime("%H:%M:%S", time.localtime(since)),
        "since_unix": round(since, 3),
        "next_probe_s": None if probing else max(0, round(outage.next_probe_at - now)),
        "probes": outage.probes,
        "cause": outage.cause,
        "url": lane.client.provider.url(),
    }


def _invalid_result(row_id: str, row: Row, reason: str, keep: tuple[str, ...]) -> ResultRecord:
    kept = {k: row.fields.get(k) for k in keep} if keep and row.fields else None
    return ResultRecord(
        row_id=row_id,
        pos=row.pos,
        status="invalid",
        output=None,
        error=reason,
        attempts=0,
        usage=ZERO,
        cost_usd=Decimal(0),
        kept=kept,
        finished_at=now_utc(),
    )


class Packer:
    """Groups rows into requests: `rows_per_request` at most, and about 8k tokens at most."""

    MAX_TOKENS = 8_000

    def __init__(self, per_request: int, work: ObjectSendStream[list[Row]]):
        self.per_request = per_request
        self.work = work
        self.pack: list[Row] = []
        self.tokens = 0

    async def add(self, row: Row) -> None:
        tokens = estimate_tokens(row.text or "")
        if self.pack and self.tokens + tokens > self.MAX_TOKENS:
            await self.flush()
        self.pack.append(row)
        self.tokens += tokens
        if len(self.pack) >= self.per_request:
            await self.flush()

    async def flush(self) -> None:
        if self.pack:
            await self.work.send(self.pack)
        self.pack, self.tokens = [], 0


def _take_frames(frames: Iterator[Frame], rows: int) -> tuple[list[Frame], bool]:
    """Frames holding at least `rows` rows (fewer at the end), and whether the input ended."""
    group: list[Frame] = []
    size = 0
    while size < rows:
        frame = next(frames, None)
        if frame is None:
            return group, True
        group.append(frame)
        size += len(frame)
    return group, False


def _next_size(size: int, found: bool) -> int:
    """Each lookup scans the stored rows once: while whole groups are done (a resume far into
    a big job), read ever larger groups to reach the work sooner."""
    return LOOKUP_MIN if found else min(LOOKUP_MAX, size * 2)


async def _read_ahead(
    frames: Iterator[Frame], rows: int, exhausted: bool
) -> tuple[list[Frame], bool]:
    if exhausted:
        return [], True
    return await anyio.to_thread.run_sync(_take_frames, frames, rows)


A = TypeVar("A")
B = TypeVar("B")


async def _together(
    first: Callable[[], Awaitable[A]], second: Callable[[], Awaitable[B]]
) -> tuple[A, B]:
    """Await two calls at once (both wait on native code that releases the GIL)."""
    out: dict[int, Any] = {}

    async def run(key: int, fn: Callable[[], Awaitable[Any]]) -> None:
        out[key] = await fn()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return out[0], out[1]


def _split(group: list[Frame], todo: dict[int, str | None]) -> list[tuple[Frame, list[int] | None]]:
    """Per frame of the group, the indices still to do (None: all of them)."""
    out: list[tuple[Frame, list[int] | None]] = []
    wanted = sorted(todo)
    k = start = 0
    for frame in group:
        end = start + len(frame)
        picked = []
        while k < len(wanted) and wanted[k] < end:
            picked.append(wanted[k] - start)
            k += 1
        if picked:
            out.append((frame, picked if len(picked) < len(frame) else None))
        start = end
    return out


@contextlib.contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Run the cyclic collector far less often while rows flow.

    Each row allocates a few dozen short-lived objects and almost none of them sit in a cycle
    (refcounting frees them), yet at the default gen-0 threshold of 700 the collector runs
    every dozen rows and walks everything young. A threshold of 100,000 allocations, with the
    start-up objects frozen out of every pass, gave +15 % rows/s at 64 in flight and ~+10 % at
    512 in flight / 200 ms (tests/bench). Cycles are still collected, just in larger batches.
    """
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


async def run_job(
    spec: JobSpec,
    db_path: str,
    *,
    api_key: str | None = None,
    restart: bool = False,
    progress: ProgressReporter | None = None,
    handle_signals: bool = True,
) -> RunSummary:
    """Run (or resume) a job to the end. Raises the FlashpipeError of a stop."""
    task = build_task(spec)  # validates the task config before anything opens
    resolve_prices(spec)  # an unknown model without [pricing] stops here, nothing sent
    if spec.limits.auto_pack:
        spec = await anyio.to_thread.run_sync(with_auto_packing, spec, task)
    auth = build_auth(spec, api_key)
    rows_total, exact = count_rows_fast(spec.input)
    kept_types = keep_types(spec.input)
    check_writable(db_path)  # a full or read-only disk stops here, before any request
    store = Store(db_path, for_run=True)
    thread = StoreThread(store)
    progress = progress or ProgressReporter(quiet=True)
    transport = AiohttpTransport(spec.provider.timeout, max_in_flight=AUTO_CAP)
    started = time.monotonic()
    run: JobRun | None = None
    cache: context_cache.RunCache | None = None
    journal: CallJournal | None = None
    failed: BaseException | None = None
    try:
        view = (task.view_columns(), kept_types)
        opened = await open_job(spec, thread, view, restart, db_path)
        journal = CallJournal(db_path)
        run = JobRun(spec, thread, transport, auth, opened, progress, db_path, journal)
        run.stats.rows_total = rows_total
        run.stats.rows_total_exact = exact
        run.stats.rows_before = opened.rows_before
        if spec.engine.kind == "ray":
            try:
                await _start_ray(run)
            except FlashpipeError:
                run = None  # nothing was sent: the job stopped, resumable
                raise
        cache = _context_cache(run, transport, auth)
        with fewer_gc_passes():
            try:
                async with cache:  # created before the first request, deleted after the last
                    await _run_stages(run, handle_signals)
            except BaseExceptionGroup as group:
                raise _one_error(group) from None
    except BaseException as exc:
        failed = exc
        raise
    finally:
        await transport.aclose()
        bill = cache.bill if cache is not None else None
        await _close(run, thread, journal, failed, (db_path, bill))
    assert run is not None
    return run.summary(time.monotonic() - started)


def _context_cache(run: JobRun, transport: Transport, auth: Auth) -> context_cache.RunCache:
    """The run's explicit context cache of the instructions (a no-op unless the job asks)."""
    spec, task = run.spec, run.task
    shape = packed_shape(task) if spec.limits.rows_per_request > 1 else task.shape
    provider = run.online.client.provider
    return context_cache.for_run(
        spec, shape.system, transport, auth.headers, provider, run.request_stop
    )


async def _start_ray(run: JobRun) -> None:
    from pipeline.dist.driver import start_on_ray

    try:
        run.ray_run = await start_on_ray(run)
    except FlashpipeError as exc:
        await run.store.run(run.store.store.set_state, run.spec.name, "stopped", str(exc), None)
        raise


async def _close(
    run: JobRun | None,
    thread: StoreThread,
    journal: CallJournal | None,
    failed: BaseException | None,
    ended: tuple[str, context_cache.CacheBill | None],
) -> None:
    """Record how the run ended (its context cache's bill, then its stop, raised), then
    release the store and the journal. `ended`: the store's path and the cache's bill."""
    db_path, bill = ended
    try:
        if run is not None and bill is not None:
            with contextlib.suppress(Exception) if failed else contextlib.nullcontext():
                await _record_context_cache(run, thread, bill)
        if run is not None and failed is None:
            await _finish(run, thread)  # raises the stop (budget, provider, interrupt)
        elif run is not None:
            # the run already failed (a full disk, most likely): record what can be
            # recorded, and let the first error be the one the user reads
            with contextlib.suppress(Exception):
                await _finish(run, thread)
    finally:
        thread.close()
        status_path(db_path).unlink(missing_ok=True)
        if journal is not None:
            journal.close()


async def _record_context_cache(
    run: JobRun, thread: StoreThread, bill: context_cache.CacheBill
) -> None:
    """The run's context cache as a call without rows (its tokens written once, its storage),
    so `cost` and the budget count it."""
    cost = context_cache_cost(bill.tokens, bill.seconds, run.prices)
    call = CallRecord(
        f"{run.run_no}-context-cache", (), 1, now_utc(), bill.seconds * 1000, 200,
        CallOutcome.CONTEXT_CACHE, None, Usage(input=bill.tokens), cost, run.spec.model, None,
        bill.name,
    )  # fmt: skip
    run.budget.settle(Decimal(0), cost)
    run.stats.usd += cost
    await thread.run(thread.store.write, run.spec.name, [], [call], [])


def _one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a user should read from a task group's failure: the first FlashpipeError
    (a store fault, say), else the group itself (a bug: reported as one)."""
    for exc in _leaves(group):
        if isinstance(exc, FlashpipeError):
            return exc
    return group


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


async def _run_stages(run: JobRun, handle_signals: bool) -> None:
    work_send, work_recv = channel[list[Row]](max(16, run.workers))
    out_send, out_recv = channel[Outcome | ResultRecord | BatchOutcome](4096)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.write, out_recv)
        ticker = anyio.CancelScope()

        async def tick() -> None:
            with ticker:
                await run.tick()

        tg.start_soon(tick)
        async with anyio.create_task_group() as stages:
            workers = stages.cancel_scope
            if handle_signals:
                signal_scope = anyio.CancelScope()

                async def signals() -> None:
                    with signal_scope:
                        await run.watch_signals(workers)

                tg.start_soon(signals)
            stages.start_soon(run.read, work_send, out_send.clone())
            batches = run.batches
            if run.lane == Lane.BATCH and batches is not None:
                stages.start_soon(batches.run, work_recv, out_send.clone())
                out_send.close()
            else:
                moved_send, moved_recv = channel[list[RowState]](64)
                if batches is not None:  # auto: rows Flex keeps refusing move to Batch
                    run.online.routing = replace(run.online.routing, to_batch=moved_send.send)
                    stages.start_soon(batches.run, moved_recv, out_send.clone())
                else:
                    moved_recv.close()
                async with moved_send, anyio.create_task_group() as pool:
                    if run.spec.engine.kind == "ray":  # the lane runs in Ray worker actors
                        from pipeline.dist.driver import run_on_ray

                        pool.start_soon(run_on_ray, run, work_recv.clone(), out_send.clone())
                    else:
                        for _ in range(run.workers):
                            pool.start_soon(run.work, work_recv.clone(), out_send.clone())
                    work_recv.close()
                    out_send.close()
        ticker.cancel()
        if handle_signals:
            signal_scope.cancel()


STOP_STATES = {  # the job's state in the store after a stop
    StopReason.INTERRUPTED: "interrupted",
    StopReason.BUDGET: "budget_exhausted",
    StopReason.PROVIDER: "stopped",
    StopReason.OUTAGE: "stopped",
}


async def _finish(run: JobRun, thread: StoreThread) -> None:
    """Record how the run ended; raise the stop as the error the user reads (and exits by)."""
    reason = run.stop_reason
    state = "done" if reason is None else STOP_STATES[reason]
    run.stats.state = state
    try:
        await thread.run(
            thread.store.set_state,
            run.spec.name,
            state,
            run.stop_message,
            run.stats.rows_before + run.stats.rows_done,
        )
    finally:
        run.progress.update(run.stats, final=True)
    if reason is not None:
        raise stop_error(reason, run)


def stop_error(reason: StopReason, run: JobRun) -> FlashpipeError:
    job, message = run.spec.name, run.stop_message
    if reason is StopReason.INTERRUPTED:
        return Interrupted(f"job {job!r} interrupted; run it again to resume")
    if reason is StopReason.BUDGET:
        spent = run.budget.spent.quantize(Decimal("0.000001"))
        return BudgetExhausted(
            f"job {job!r} stopped at its budget (max_usd {run.spec.max_usd}, spent ${spent});"
            " resume with a higher budget.max_usd"
        )
    if reason is StopReason.PROVIDER:
        return ProviderStop(f"job {job!r} stopped by the provider: {message}")
    return ProviderUnreachable(f"job {job!r} stopped: {message}")
