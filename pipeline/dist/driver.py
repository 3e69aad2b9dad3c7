"""The driver's side of a Ray run: start the brokers and workers, hand them packs of pending rows
in Arrow batches, stream their outcomes to the one writer, and re-send the rows of a worker
that dies.

Each worker slot has a feeder (packs in, at most `2 x concurrency` rows outstanding) and a
drainer (outcomes out). A row stays outstanding until a final result for it has been drained;
when a worker dies, its outstanding rows go back to the queue and another worker sends them.
Its calls in flight and the answers it had not yet handed back are the only unknowns: together
at most its concurrency (a worker's task sends again only once the driver has its answer), and
reported as rows that may have been paid twice.

A capped budget stays the driver's: a `BudgetHolder` grants each worker blocks of it with the
answer to its drains, and a worker's calls spend only what it was granted, so the workers
together cannot be billed past `budget.max_usd` (see pipeline/core/budget.py).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.auth import KeyAuth
from pipeline.core.budget import NO_ANSWER, BudgetHolder
from pipeline.core.records import Outcome, ResultRecord, Row, StopReason
from pipeline.dist import require_ray
from pipeline.dist.broker import QuotaBroker
from pipeline.dist.rows import encode_packs
from pipeline.dist.worker import LaneWorker
from pipeline.errors import SpecError, UsageError
from pipeline.pools import DAY, PoolSpec, quota_day

if TYPE_CHECKING:
    from pipeline.run.job import JobRun

log = logging.getLogger("flashpipe")

DEFAULT_CONCURRENCY = 64  # per worker, with limits.concurrency = "auto"
DEFAULT_POOL = "default"  # the job's one key, when it lists no [[provider.pool]]
MAX_REPLACEMENTS = 8  # dead workers replaced per run; past that the others carry on
SPAWN_SECONDS = 60.0  # a replacement not running by then is given up (no room in the cluster)


def default_pool(run: JobRun) -> PoolSpec:
    spec = run.spec
    lim = spec.limits
    return PoolSpec(DEFAULT_POOL, (spec.provider.api_key_env,), lim.rpm, lim.tpm, lim.rpd)


@dataclass
class Slot:
    no: int
    actor: Any = None
    run_ref: Any = None
    outstanding: dict[str, Row] = field(default_factory=dict)
    generation: int = 0
    alive: bool = False
    worker_no: int = 0  # the live actor's number: unique across the run's replacements


class RayRun:
    """One run's Ray side: brokers, worker slots and the shared queue of packs to re-send."""

    def __init__(self, run: JobRun, ray: Any):
        self.run = run
        self.ray = ray
        spec = run.spec
        self.pools = spec.provider.pools or (default_pool(run),)
        self.concurrency = spec.limits.concurrency or DEFAULT_CONCURRENCY
        self.per_request = spec.limits.rows_per_request
        self.requeue: deque[list[Row]] = deque()
        self.exhausted = False
        self.slots: list[Slot] = []
        self.brokers: list[Any] = []
        self.replacements = 0
        self.deaths = 0
        self.unknown_bound = 0  # rows in calls dead workers may have had answered
        self.stats: list[dict[str, Any]] = []
        self.doc: dict[str, Any] = {}
        self.ours = False  # this run started (or joined) Ray, and disconnects at the end
        self.sent_today: dict[str, int] = {}  # per pool: calls stored since the quota day began
        self.day_left = DAY
        # a worker asks for a block of budget worth about its concurrency of calls
        self.holder = (
            BudgetHolder(run.budget, self.concurrency) if run.budget.cap is not None else None
        )

    # -- set-up --------------------------------------------------------------------------------
    def start(self, run_no: int) -> int:
        import orjson

        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.doc = orjson.loads(self.run.spec.raw)
        here = ray.get_runtime_context().get_node_id()
        # brokers live on the driver's node: a lost worker node must not take a quota with it
        broker_cls = ray.remote(QuotaBroker)
        self.brokers = [
            broker_cls.options(
                name=f"flashpipe-broker-{self.run.spec.name}-{pool.name}",
                num_cpus=0,
                max_restarts=-1,
                max_task_retries=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
            ).remote(pool, self.sent_today.get(pool.name, 0), self.day_left)
            for pool in self.pools
        ]
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        n = self.run.spec.engine.workers or max(1, int(cpus))
        # half a worker's share of the cluster's CPUs is reserved for it (one core at most):
        # enough for Ray to spread the workers, and room left on the surviving nodes to
        # restart the workers of a node that is lost
        self.cpus_each = max(0.01, min(1.0, int(cpus / n * 50) / 100))
        self.worker_cls = ray.remote(LaneWorker)
        self.run_no = run_no
        self.slots = [Slot(i) for i in range(n)]
        for slot in self.slots:
            self._spawn(slot)
        # every worker up, and able to run (its node has the keys), before rows are handed out
        for where, error in ray.get([s.actor.ping.remote() for s in self.slots]):
            if error is not None:
                raise SpecError(f"Ray worker {where}: {error}")
        return n

    def _spawn(self, slot: Slot) -> None:
        slot.generation += 1
        no = slot.no + 100 * (slot.generation - 1)
        slot.worker_no = no
        slot.actor = self.worker_cls.options(
            num_cpus=self.cpus_each, max_restarts=0, scheduling_strategy="SPREAD"
        ).remote(
            self.doc,
            self.pools,
            self.brokers,
            self.run_no,
            self.concurrency,
            no,
            capped=self.holder is not None,
        )
        slot.run_ref = slot.actor.run.remote()
        slot.alive = True

    # -- the queue -----------------------------------------------------------------------------
    def outstanding(self) -> int:
        return sum(len(s.outstanding) for s in self.slots)

    def finished(self) -> bool:
        return self.exhausted and not self.requeue and self.outstanding() == 0

    def _lost(self, slot: Slot, why: str) -> None:
        """The worker of a slot died: its outstanding rows go back to the queue."""
        if not slot.alive:
            return
        slot.alive = False
        self.deaths += 1
        if self.holder is not None:
            self.holder.lost(slot.worker_no)
        rows = list(slot.outstanding.values())
        slot.outstanding.clear()
        for pack in _chunks(rows, self.per_request):
            self.requeue.append(pack)
        # its calls in flight and its answers not yet drained, together at most `concurrency`
        # calls: the only calls that can have been paid for and lost
        bound = min(len(rows), self.concurrency * self.per_request)
        self.unknown_bound += bound
        log.warning(
            "worker %d lost (%s): %d rows sent again; at most %d may have been paid twice",
            slot.no,
            why,
            len(rows),
            bound,
        )

    # -- per slot ------------------------------------------------------------------------------
    async def drive(
        self,
        slot: Slot,
        work: ObjectReceiveStream[list[Row]],
        out: ObjectSendStream[Outcome | ResultRecord],
    ) -> None:
        while True:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._drain, slot, out, tg.cancel_scope)
                await self._feed(slot, work)
            if slot.alive or self.finished() or self.run.stopping():
                return
            if self.replacements >= MAX_REPLACEMENTS:
                if not any(s.alive for s in self.slots):
                    self.run.request_stop(StopReason.PROVIDER, "every Ray worker was lost")
                return
            self.replacements += 1
            await anyio.to_thread.run_sync(self._spawn, slot)
            try:
                with anyio.fail_after(SPAWN_SECONDS):
                    _, error = await slot.actor.ping.remote()
                if error is not None:
                    raise TimeoutError(error)
            except (TimeoutError, self.ray.exceptions.RayError):
                log.warning("worker %d could not be restarted; the others carry on", slot.no)
                self.ray.kill(slot.actor, no_restart=True)
                slot.alive = False
                return

    async def _feed(self, slot: Slot, work: ObjectReceiveStream[list[Row]]) -> None:
        cap = self.concurrency * 2 * self.per_request
        want = max(1, self.concurrency // 2)
        while slot.alive:
            if self.run.stopping():
                await _discard(work)
                self.exhausted = True
                break
            if len(slot.outstanding) >= cap:
                await anyio.sleep(0.01)
                continue
            packs = [self.requeue.popleft() for _ in range(min(want, len(self.requeue)))]
            if not packs and not self.exhausted:
                packs = await self._receive(work, want)
            if packs:
                for pack in packs:
                    for row in pack:
                        slot.outstanding[row.id] = row
                try:
                    await slot.actor.submit.remote(encode_packs(packs))
                except self.ray.exceptions.RayActorError as exc:
                    self._lost(slot, type(exc).__name__)
                    return
                continue
            if self.finished():
                break
            await anyio.sleep(0.02)  # a lost worker's rows may still come back to the queue
        if slot.alive:
            try:
                await slot.actor.close.remote()
            except self.ray.exceptions.RayActorError as exc:
                self._lost(slot, type(exc).__name__)

    async def _receive(self, work: ObjectReceiveStream[list[Row]], want: int) -> list[list[Row]]:
        packs: list[list[Row]] = []
        with anyio.move_on_after(0.05):
            while len(packs) < want:
                try:
                    packs.append(await work.receive())
                except anyio.EndOfStream:
                    self.exhausted = True
                    break
        return packs

    async def _drain(
        self, slot: Slot, out: ObjectSendStream[Outcome | ResultRecord], scope: anyio.CancelScope
    ) -> None:
        ray = self.ray
        holder = self.holder
        pending = slot.actor.drain.remote(NO_ANSWER)
        while True:
            try:
                outcomes, stop, done, share = await pending
            except ray.exceptions.RayActorError as exc:
                self._lost(slot, type(exc).__name__)
                scope.cancel()
                return
            # before anything can yield: a death noticed meanwhile must not re-send these rows
            for outcome in outcomes:
                for result in outcome.results:
                    slot.outstanding.pop(result.row_id, None)
            answer = NO_ANSWER
            if holder is not None and share is not None:
                if done:
                    holder.finished(slot.worker_no, share)
                else:
                    answer = holder.answer(slot.worker_no, share)
            if not done:
                # the next drain tells the worker the driver has these answers: its tasks
                # send again while the answers go on to the writer
                pending = slot.actor.drain.remote(answer)
            for outcome in outcomes:
                self._charge(outcome)
                await out.send(outcome)
            if stop is not None:
                self.run.request_stop(StopReason(stop[0]), stop[1])
            if self.run.stopping():
                for s in self.slots:
                    if s.alive:
                        s.actor.request_stop.remote()
            if done:
                try:
                    self.stats.append(await slot.run_ref)
                except ray.exceptions.RayError as exc:
                    self._lost(slot, type(exc).__name__)
                    scope.cancel()
                    return
                # rows a stop left unanswered stay pending for the next run
                slot.outstanding.clear()
                return

    def _charge(self, outcome: Outcome) -> None:
        """What the job has spent, as the driver learns it (progress and the stop message);
        the cap is held by the holder's grants, not here."""
        self.run.budget.spent += outcome.call.cost_usd

    def shutdown(self) -> None:
        for actor in [s.actor for s in self.slots if s.actor is not None] + self.brokers:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone with its node
                log.debug("actor already gone")


def _chunks(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for i in range(0, len(rows), max(1, size)):
        yield rows[i : i + size]


async def _discard(work: ObjectReceiveStream[list[Row]]) -> None:
    """A stopping job: the reader may still be sending; take its packs until it has finished."""
    async for _ in work:
        pass


def connect(ray: Any, address: str, run: JobRun) -> bool:
    """Join the cluster at `address`, or start Ray on this machine; True when this call
    connected (and so disconnects at the end)."""
    if ray.is_initialized():
        return False
    if not address:
        auth = run.online.client.auth
        env = run.spec.provider.api_key_env
        # a key given to this process (--sim, the Python API) reaches the local workers the
        # way a cluster's do: through their environment, never through Ray's object store
        if isinstance(auth, KeyAuth) and env and not os.environ.get(env):
            os.environ[env] = auth.key
    try:
        ray.init(
            address=address or None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = repr(address) if address else "this machine"
        raise UsageError(f"engine.address: cannot start or join Ray at {where} ({first})") from None
    return True


async def start_on_ray(run: JobRun) -> RayRun:
    """Join or start Ray, start the brokers and the workers and check them, before any stage
    runs: an error here (no Ray, no cluster, a key missing on a node) is one line, nothing sent."""
    ray = require_ray()
    ray_run = RayRun(run, ray)
    ray_run.sent_today, ray_run.day_left = await sent_today(run, ray_run.pools)
    ray_run.ours = await anyio.to_thread.run_sync(connect, ray, run.spec.engine.address, run)
    try:
        n = await anyio.to_thread.run_sync(ray_run.start, run.run_no)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _shutdown(ray_run)
        raise
    log.info("running on %d Ray workers", n)
    return ray_run


async def sent_today(run: JobRun, pools: Sequence[PoolSpec]) -> tuple[dict[str, int], float]:
    """Requests stored since the per-day quota's day began, per pool with a per-day quota, and
    the seconds left in that day. A pool named for its project counts every job's calls in
    this store (the quota is the project's); the default pool counts this job's."""
    start, left = quota_day(datetime.now(UTC))
    counted = [p.name for p in pools if p.rpd > 0]
    if not counted:
        return {}, left
    job = run.spec.name
    wanted = " OR ".join(
        f"(pool = {_quoted(name)}"
        + (f" AND job = {_quoted(job)})" if name == DEFAULT_POOL else ")")
        for name in counted
    )
    sql = (
        "SELECT pool, count(*) AS n FROM calls WHERE started_at >= "
        f"TIMESTAMPTZ '{start.isoformat()}' AND ({wanted}) GROUP BY pool"
    )
    table = await run.store.run(run.store.store.query_arrow, sql)
    rows = table.to_pylist()
    return {str(r["pool"]): int(r["n"]) for r in rows}, left


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _shutdown(ray_run: RayRun) -> None:
    await anyio.to_thread.run_sync(ray_run.shutdown)
    if ray_run.ours:
        await anyio.to_thread.run_sync(ray_run.ray.shutdown)


async def run_on_ray(
    run: JobRun,
    work: ObjectReceiveStream[list[Row]],
    out: ObjectSendStream[Outcome | ResultRecord],
) -> None:
    """The worker stage of a run, on Ray: returns when every pack has a final result (or the
    job stops)."""
    ray_run = run.ray_run
    assert isinstance(ray_run, RayRun)
    try:
        async with work, out:
            async with anyio.create_task_group() as tg:
                for slot in ray_run.slots:
                    tg.start_soon(ray_run.drive, slot, work, out)
            if not ray_run.finished() and not run.stopping():
                # no worker left to send the rest: stop resumable, the rows stay pending
                run.request_stop(
                    StopReason.PROVIDER, "every Ray worker was lost; run the job again"
                )
                await _discard(work)
        if ray_run.unknown_bound and run.stop_message is None:
            run.stop_message = (
                f"{ray_run.deaths} Ray worker(s) lost; their rows were sent again, and at most "
                f"{ray_run.unknown_bound} of them may have been paid twice"
            )
        run.ray_stats = {
            "workers": len(ray_run.slots),
            "deaths": ray_run.deaths,
            "unknown_bound": ray_run.unknown_bound,
            "leases": sum(s.get("leases", 0) for s in ray_run.stats),
            "sent": sum(s.get("sent", 0) for s in ray_run.stats),
        }
    finally:
        with anyio.CancelScope(shield=True):
            await _shutdown(ray_run)
