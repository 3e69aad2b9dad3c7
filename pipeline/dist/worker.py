"""A lane worker: a Ray async actor running the same online lane as one process (same prompts,
validation, retries, packing) on packs the driver hands it, with the flow control leased from
the pools' brokers. Results and call records wait here until the driver drains them.

The driver owns the actor's life: `run()` is one long call that lasts until `close()` (no more
work) and the last pack is done; `drain()` returns what finished since the last drain.

A task that handed over an answer waits until the driver has it (its next `drain()` call) before
it sends again, so a worker's calls in flight and its answers not yet at the driver are
together at most its concurrency: all a dead worker can have had paid for and lost.

With a capped budget the worker spends from its share (`ShareBudget`): blocks the driver grants
with its answer to each drain, so the budget costs no call of its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import pyarrow as pa
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline.budget import Budget, ShareBudget
from pipeline.core.breaker import Breaker, BreakerConfig
from pipeline.core.budget import NO_ANSWER, ShareAnswer, ShareReport
from pipeline.core.records import Outcome, Row, StopDispatch
from pipeline.dist.rows import decode_packs
from pipeline.errors import FlashpipeError
from pipeline.lanes.online import Client, Gates, InFlightCounter, OnlineLane, Routing
from pipeline.poolflow import PoolClient, PooledAuth, PooledFlow, pool_headers
from pipeline.pools import Grant, PoolSpec, Report
from pipeline.spec import load_spec
from pipeline.tasks import build_task
from pipeline.transport import AiohttpTransport

DRAIN_WAIT = 0.2  # a drain with nothing to return waits this long for something


class LaneWorker:
    def __init__(
        self,
        doc: dict[str, Any],
        pools: Sequence[PoolSpec],
        brokers: Sequence[Any],
        run_no: int,
        concurrency: int,
        worker_no: int,
        capped: bool = False,
    ):
        self.spec = load_spec(document=doc)
        self.pools = list(pools)
        self.brokers = list(brokers)
        self.run_no = run_no
        self.concurrency = concurrency
        self.worker_no = worker_no
        self.outcomes: list[Outcome] = []
        self.stop: tuple[str, str] | None = None
        self.stopping = False
        self.done = False
        self._ready: anyio.Event | None = None
        # the driver holds the budget; a capped one is spent here in shares it grants
        self.budget: Budget = ShareBudget() if capped else Budget(None)
        self._unsent: anyio.Event | None = None  # set when answers wait to be drained
        self._handed: anyio.Event | None = None  # set when the driver has the last drain's
        self._next: anyio.Event | None = None  # ...and the answers since
        self._send: MemoryObjectSendStream[list[Row]] | None = None
        self._recv: MemoryObjectReceiveStream[list[Row]] | None = None
        self.flow: PooledFlow | None = None
        self.lane: OnlineLane | None = None
        # the keys come from this node's environment: a missing one is told to the driver
        self.error: str | None = None
        try:
            from pipeline.lanes.build import build_provider

            headers_for = build_provider(self.spec).headers
            for pool in self.pools:
                pool_headers(pool, headers_for)
        except FlashpipeError as exc:
            self.error = str(exc)

    def _build(self) -> None:
        from pipeline.lanes.build import build_provider, online_lane

        spec = self.spec
        provider = build_provider(spec, self.run_no)
        clients = [
            PoolClient(
                pool.name,
                _broker_lease(broker),
                pool_headers(pool, provider.headers),
                time.monotonic,
                _broker_push(broker),
                worker=self.worker_no,
            )
            for pool, broker in zip(self.pools, self.brokers, strict=True)
        ]
        self.flow = PooledFlow(clients)
        self.transport = AiohttpTransport(spec.provider.timeout, max_in_flight=self.concurrency)
        limit_s = spec.limits.outage_minutes * 60
        gates = Gates(
            self.flow,
            self.budget,  # a share of the job's budget, granted by the driver
            Breaker(BreakerConfig(limit_s=limit_s), time.monotonic),
        )
        client = Client(provider, self.transport, PooledAuth({}), InFlightCounter(self.concurrency))
        self.lane = online_lane(
            spec,
            build_task(spec),
            (client, gates, Routing()),
            lambda: self.stopping,
            self.run_no,
            call_prefix=str(self.run_no * 1000 + self.worker_no),  # unique across workers
            seed=self.worker_no,
        )
        send, recv = anyio.create_memory_object_stream[list[Row]](self.concurrency * 4)
        self._send, self._recv = send, recv
        self._unsent = anyio.Event()  # events of the actor's own loop
        self._handed = anyio.Event()
        self._next = anyio.Event()
        self._ready = anyio.Event()

    async def run(self) -> dict[str, Any]:
        """Process packs until closed and drained; the worker's counters at the end."""
        self._build()
        assert self._recv is not None and self._ready is not None
        recv = self._recv
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self.concurrency):
                    tg.start_soon(self._work, recv.clone())
                recv.close()
                self._ready.set()
        finally:
            assert self.flow is not None
            with anyio.CancelScope(shield=True):
                await self.flow.flush()  # what was leased and not sent goes back to the pools
                await self.transport.aclose()
            self.done = True
        return self.counters()

    async def _work(self, packs: ObjectReceiveStream[list[Row]]) -> None:
        lane = self.lane
        assert lane is not None

        async def emit(outcome: Outcome) -> None:
            # the task sends again only once the driver has this answer: if the worker dies,
            # its calls in flight and its answers not yet drained are at most `concurrency`
            handed, unsent = self._next, self._unsent
            assert handed is not None and unsent is not None
            self.outcomes.append(outcome)
            unsent.set()
            await handed.wait()

        async with packs:
            async for rows in packs:
                if self.stopping:
                    continue
                try:
                    await lane.process(rows, emit)
                except StopDispatch as stop:
                    self.stopping = True
                    if self.stop is None:
                        self.stop = (stop.reason, str(stop))

    async def submit(self, batch: pa.RecordBatch) -> int:
        """Queue the packs of a batch (waits while the queue is full); rows queued."""
        while self._ready is None:
            await anyio.sleep(0.01)
        await self._ready.wait()
        packs = decode_packs(batch)
        assert self._send is not None
        for pack in packs:
            await self._send.send(pack)
        return sum(len(p) for p in packs)

    async def close(self) -> None:
        """No more work: `run()` returns once every queued pack is done."""
        while self._ready is None:
            await anyio.sleep(0.01)
        await self._ready.wait()
        assert self._send is not None
        await self._send.aclose()

    def request_stop(self) -> None:
        self.stopping = True
        if isinstance(self.budget, ShareBudget):
            self.budget.stop()

    async def drain(
        self, answer: ShareAnswer = NO_ANSWER
    ) -> tuple[list[Outcome], tuple[str, str] | None, bool, ShareReport | None]:
        """(outcomes since the last drain, the stop this worker hit, whether it is done, its
        budget share). Each call also tells the worker that the driver has the last drain's
        outcomes, and brings the driver's answer to the last share report."""
        while self._ready is None:
            await anyio.sleep(0.01)
        await self._ready.wait()
        assert self._handed is not None
        self._handed.set()  # the tasks whose answers the driver has send again
        share = self.budget if isinstance(self.budget, ShareBudget) else None
        if share is not None:
            share.apply(answer)
        with anyio.move_on_after(DRAIN_WAIT):
            while not self.outcomes and not self.done:
                if share is not None and share.needs_answer():
                    break  # a call waits for budget: the driver answers at once
                self._unsent = anyio.Event()
                with anyio.move_on_after(0.01):  # `done` and the budget have no event
                    await self._unsent.wait()
        if self.flow is not None:
            self.flow.release_stale()
        out, self.outcomes = self.outcomes, []
        self._handed, self._next = self._next, anyio.Event()
        done = self.done and not self.outcomes
        report = share.report(reclaim=answer.reclaim or done) if share is not None else None
        return out, self.stop, done, report

    def counters(self) -> dict[str, Any]:
        flow = self.flow
        leases = sum(p.leases for p in flow.pools) if flow is not None else 0
        sent = sum(p.sent for p in flow.pools) if flow is not None else 0
        return {"worker": self.worker_no, "leases": leases, "sent": sent}

    def ping(self) -> tuple[str, str | None]:
        """(pid@host, the error that keeps this worker from running, if any)."""
        import os
        import socket

        return f"{os.getpid()}@{socket.gethostname()}", self.error


def _broker_push(broker: Any) -> Any:
    def push(report: Report) -> None:
        # no answer is awaited; Ray runs the call (and retries it on a restarted broker)
        broker.report.remote(report)

    return push


def _broker_lease(broker: Any) -> Any:
    async def lease(want: int, tokens_each: int, report: Report) -> Grant:
        grant: Grant = await broker.lease.remote(want, tokens_each, report)
        return grant

    return lease
