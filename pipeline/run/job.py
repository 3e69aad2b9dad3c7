"""One run's shared state (JobRun): its spec, lanes, store thread, stats and stop; the workers
and the ticker are its methods. Opening a job in the store (open_job) and the run's summary
live here too."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import orjson
import pyarrow as pa
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.auth import Auth
from pipeline.budget import Budget
from pipeline.cache import lane_for_saving
from pipeline.catalog import channel_of, model_limits
from pipeline.core.breaker import Breaker, BreakerConfig, BreakerState
from pipeline.core.records import (
    Outcome,
    ResultRecord,
    Row,
    StopDispatch,
    StopReason,
    now_utc,
    runner_id,
)
from pipeline.dedupe import Dedupe, fingerprint
from pipeline.fingerprint import check_unchanged, input_fingerprint
from pipeline.lanes.build import build_batch_api, build_provider, online_lane
from pipeline.lanes.online import Client, Gates, InFlightCounter, OnlineLane, Routing
from pipeline.lanes.runner import BatchRunner, JobControl
from pipeline.limits import Flow, FlowControl
from pipeline.pricing import resolve_prices
from pipeline.progress import ProgressReporter, RunStats
from pipeline.run.journal import CallJournal, journal_files, read_journal
from pipeline.spec import JobSpec, parse_deadline
from pipeline.store import StoredBatches, StoreThread
from pipeline.tasks import build_task
from pipeline.tasks.base import Task
from pipeline.transport import Transport

log = logging.getLogger("flashpipe")
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

    # -- workers -----------------------------------------------------------------------------
    async def work(
        self, items: ObjectReceiveStream[list[Row]], out: ObjectSendStream[Outcome | ResultRecord]
    ) -> None:
        async with items, out:
            async for rows in items:
                if self.stopping():
                    continue
                try:
                    await self.online.process(rows, out.send)
                except StopDispatch as stop:
                    self.request_stop(stop.reason, str(stop))

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
