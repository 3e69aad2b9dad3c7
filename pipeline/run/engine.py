"""One job run: reader -> bounded channel -> workers -> bounded channel -> one writer.

All stages live in one anyio task group (asyncio backend): the reader (reader.py) skips rows
already stored and packs the rest, the workers run the online lane (or the Batch lane takes
the rows), the writer (writer.py) journals every call and commits in batches. This module
opens the run, wires the stages, and records how the run ended."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal

import anyio

from pipeline.auth import Auth
from pipeline.autopack import with_auto_packing
from pipeline.core.pricing import context_cache_cost
from pipeline.core.records import (
    CallOutcome,
    CallRecord,
    Lane,
    Outcome,
    ResultRecord,
    Row,
    RowState,
    StopReason,
)
from pipeline.core.usage import Usage
from pipeline.errors import (
    BudgetExhausted,
    FlashpipeError,
    Interrupted,
    ProviderStop,
    ProviderUnreachable,
)
from pipeline.lanes.build import build_auth
from pipeline.lanes.runner import BatchOutcome
from pipeline.pricing import resolve_prices
from pipeline.progress import ProgressReporter
from pipeline.providers import context_cache
from pipeline.run.channel import channel
from pipeline.run.job import AUTO_CAP, JobRun, RunSummary, open_job, status_path
from pipeline.run.journal import CallJournal
from pipeline.run.reader import LOOKUP_MIN, Reader
from pipeline.run.writer import Writer
from pipeline.sources import count_rows_fast, keep_types
from pipeline.spec import JobSpec
from pipeline.store import Store, StoreThread, check_writable
from pipeline.tasks import build_task
from pipeline.tasks.packing import packed_shape
from pipeline.transport import AiohttpTransport, Transport


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
        f"{run.run_no}-context-cache", (), 1, time.time(), bill.seconds * 1000, 200,
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
    # deep enough that the workers keep busy while the reader looks the next group of rows up
    # in the store and parses it (a 16-64 item channel ran dry every 1,000 rows: the requests
    # in flight fell to zero for 30-40 ms, 11 % of the run, at c64)
    ahead = -(-LOOKUP_MIN // run.spec.limits.rows_per_request)
    work_send, work_recv = channel[list[Row]](max(16, run.workers, ahead))
    out_send, out_recv = channel[Outcome | ResultRecord | BatchOutcome](4096)
    async with anyio.create_task_group() as tg:
        tg.start_soon(Writer(run).write, out_recv)
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
            stages.start_soon(Reader(run).read, work_send, out_send.clone())
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
