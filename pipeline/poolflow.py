"""A worker's side of key pools: leased capacity per pool, the pool each call goes through, and
the headers of that pool's keys.

`PooledFlow` is what the online lane calls as its flow control (acquire, settle, on_response,
on_rate_limited): it takes capacity from whichever pool has some, leases more in blocks when
its stock runs out, and reports what it used and saw with the next lease. The pool chosen for a
call is kept in a context variable of the calling task, so the call's headers, its settlement
and its 429s all go to that pool, with no change to the attempt loop.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import anyio

from pipeline.core.limits import Clock
from pipeline.core.records import StopDispatch, StopReason
from pipeline.errors import SpecError
from pipeline.pools import STOCK_SECONDS, Grant, PoolSpec, PoolState, QuotaPolicy, Report

Lease = Callable[[int, int, Report], Awaitable[Grant]]
# tells the pool at once, without waiting for an answer: a 429 or a refusal must reach every
# worker now, not with this worker's next lease (its tasks may all be sleeping a retry delay)
Push = Callable[[Report], None]
WANT = 256  # requests asked per lease; the policy cuts it to a block of its rate


@dataclass
class _Chosen:
    pool: PoolClient
    headers: dict[str, str]


_CURRENT: contextvars.ContextVar[_Chosen | None] = contextvars.ContextVar(
    "flashpipe_pool", default=None
)


class PoolClient:
    """One pool as one worker sees it: leased stock and what to report next."""

    def __init__(
        self,
        name: str,
        lease: Lease,
        headers: Sequence[dict[str, str]],
        clock: Clock,
        push: Push | None = None,
        worker: int = 0,
    ) -> None:
        self.name = name
        self.worker = worker
        self._lease = lease
        self._push = push
        self._headers = itertools.cycle(list(headers))
        self._clock = clock
        self._lock = anyio.Lock()
        self.state = PoolState.ACTIVE
        self.reason: str | None = None
        self.rpm: float | None = None
        self.stock = 0
        self._stock_from = 0.0  # a booked block may be sent from then...
        self._stock_until = 0.0  # ...until then; what is left goes back
        self._tokens_each = 0
        self._not_before = 0.0
        self.leases = 0  # calls to the pool's policy (leases and pushed reports)
        self.sent = 0  # requests this worker sent with the pool
        self._r = _Pending()

    def next_headers(self) -> dict[str, str]:
        return next(self._headers)

    def _usable(self, now: float) -> bool:
        return self.stock > 0 and self._stock_from <= now < self._stock_until

    def take(self, est_tokens: int) -> bool:
        now = self._clock()
        if self._usable(now):
            self.stock -= 1
            self.sent += 1
            self._r.sent += 1
            self._r.correction += self._tokens_each - est_tokens
            return True
        if now >= self._stock_until:
            self._expire()
        return False

    def _expire(self) -> None:
        if self.stock:
            self._r.unused += self.stock
            self._r.correction += self.stock * self._tokens_each
            self.stock = 0

    async def refill(self, est_tokens: int) -> float:
        """Lease a block unless stock is left; 0 when there is stock, else the wait."""
        async with self._lock:
            now = self._clock()
            if self._usable(now):
                return 0.0
            if self.stock > 0 and now < self._stock_from:
                return self._stock_from - now  # a booked block, not due yet
            self._expire()
            left = self._not_before - now
            if left > 0:
                return left
            return await self._call(WANT, est_tokens)

    def release_stale(self) -> None:
        """Stock past its time goes back now, not with a next lease that may never come: an
        idle worker's stock would otherwise hold the pool's per-day count from the others."""
        if self.stock and self._clock() >= self._stock_until:
            self._expire()
            self._push_now()

    async def flush(self) -> None:
        """Report what is pending without leasing (at the end of a work item, on a 429)."""
        async with self._lock:
            self._expire()
            if not self._r.empty:
                await self._call(0, 0)

    def _report(self) -> Report:
        report = replace(self._r.report(self._clock()), worker=self.worker, sent_total=self.sent)
        self._r = _Pending()
        return report

    async def _call(self, want: int, est_tokens: int) -> float:
        report = self._report()
        self.leases += 1
        grant = await self._lease(want, est_tokens, report)
        self.rpm = grant.rpm
        if grant.state is PoolState.BENCHED:
            self.state, self.reason = grant.state, grant.reason
            return 0.0
        now = self._clock()
        if grant.requests:
            self.stock = grant.requests
            self._tokens_each = est_tokens
            self._stock_from = now + grant.start
            self._stock_until = self._stock_from + STOCK_SECONDS
            return grant.start
        if want:
            self._not_before = now + grant.wait
        return grant.wait

    def settled(self, est_tokens: int, actual_tokens: int) -> None:
        self._r.correction += est_tokens - actual_tokens

    def responded(self, rate_limited: bool) -> None:
        if not rate_limited:
            self._r.ok += 1

    def rate_limited(self, delay: float | None) -> None:
        self._r.limited += 1
        self._r.limited_at = self._clock()
        if delay is not None:
            self._r.delay = max(self._r.delay or 0.0, delay)
        self._expire()  # the stock may be void now: the next call leases again
        self._not_before = 0.0
        self._push_now()

    def benched(self, reason: str) -> None:
        self._r.benched = reason
        self._expire()
        self._not_before = 0.0
        self._push_now()

    def _push_now(self) -> None:
        if self._push is not None:
            report = self._report()
            self.leases += 1  # a call to the pool all the same
            self._push(report)


@dataclass
class _Pending:
    unused: int = 0
    correction: int = 0
    sent: int = 0
    ok: int = 0
    limited: int = 0
    delay: float | None = None
    limited_at: float = 0.0  # when the last 429 came (this worker's clock)
    benched: str | None = None

    @property
    def empty(self) -> bool:
        return self.report(0.0).empty

    def report(self, now: float) -> Report:
        return Report(
            self.unused,
            self.correction,
            self.sent,
            self.ok,
            self.limited,
            self.delay,
            max(0.0, now - self.limited_at) if self.limited else 0.0,
            self.benched,
        )


class PooledFlow:
    """The online lane's flow control over several pools."""

    def __init__(self, pools: Sequence[PoolClient], clock: Clock = time.monotonic) -> None:
        if not pools:
            raise ValueError("at least one pool")
        self.pools = list(pools)
        self._clock = clock
        self._turn = 0

    def active(self) -> list[PoolClient]:
        return [p for p in self.pools if p.state is PoolState.ACTIVE]

    def _choose(self, pool: PoolClient) -> None:
        _CURRENT.set(_Chosen(pool, pool.next_headers()))

    async def acquire(self, est_tokens: int) -> None:
        while True:
            active = self.active()
            if not active:
                reasons = "; ".join(p.reason or p.name for p in self.pools)
                raise StopDispatch(StopReason.PROVIDER, f"every key pool is out: {reasons}")
            self._turn = (self._turn + 1) % len(active)
            order = active[self._turn :] + active[: self._turn]
            for pool in order:
                if pool.take(est_tokens):
                    self._choose(pool)
                    return
            waits = []
            for pool in order:
                wait = await pool.refill(est_tokens)
                if wait <= 0 and pool.state is PoolState.ACTIVE and pool.take(est_tokens):
                    self._choose(pool)
                    return
                if pool.state is PoolState.ACTIVE:
                    waits.append(wait)
            if waits:
                await anyio.sleep(max(0.001, min(waits)))

    @staticmethod
    def current() -> PoolClient | None:
        chosen = _CURRENT.get()
        return chosen.pool if chosen is not None else None

    def settle_tokens(self, est_tokens: int, actual_tokens: int) -> None:
        pool = self.current()
        if pool is not None:
            pool.settled(est_tokens, actual_tokens)

    def on_response(self, rate_limited: bool) -> None:
        pool = self.current()
        if pool is not None:
            pool.responded(rate_limited)

    def on_rate_limited(self, delay: float | None) -> None:
        pool = self.current()
        if pool is not None:
            pool.rate_limited(delay)

    def bench_current(self, reason: str) -> bool:
        """The provider refused this pool as a whole: bench it; True while another is left."""
        pool = self.current()
        if pool is None:
            return False
        # the next lease of this pool carries the bench to the broker: every worker learns it
        pool.benched(f"pool {pool.name!r}: {reason}")
        return any(p is not pool for p in self.active())

    def pool_name(self) -> str | None:
        pool = self.current()
        return pool.name if pool is not None else None

    async def flush(self) -> None:
        for pool in self.pools:
            await pool.flush()

    def release_stale(self) -> None:
        for pool in self.pools:
            pool.release_stale()

    @property
    def current_rpm(self) -> float | None:
        rates = [p.rpm for p in self.active() if p.rpm is not None]
        return sum(rates) if rates else None


class PooledAuth:
    """The headers of the key chosen for the calling task's current call."""

    def __init__(self, fallback: dict[str, str]) -> None:
        self._fallback = fallback

    @property
    def headers(self) -> dict[str, str]:
        chosen = _CURRENT.get()
        return chosen.headers if chosen is not None else self._fallback

    @headers.setter
    def headers(self, value: dict[str, str]) -> None:
        self._fallback = value

    def stale(self) -> bool:
        return False

    async def refresh(self) -> None:
        return None

    def __repr__(self) -> str:
        return "PooledAuth(<keys hidden>)"


def local_lease(policy_lease: Callable[[int, int, Report], Grant]) -> Lease:
    """A lease answered in this process (local mode: the policy object itself)."""

    async def lease(want: int, est_tokens: int, report: Report) -> Grant:
        return policy_lease(want, est_tokens, report)

    return lease


def pool_headers(
    pool: PoolSpec, headers_for: Callable[[str], dict[str, str]]
) -> list[dict[str, str]]:
    """The request headers of each key of a pool, read from the environment at the last moment."""
    out = []
    for env in pool.key_envs:
        key = os.environ.get(env)
        if not key:
            raise SpecError(
                f"provider.pool: the environment variable {env} (project {pool.name!r}) is not set"
            )
        out.append(headers_for(key))
    return out


def local_pools(
    pools: Sequence[PoolSpec],
    headers_for: Callable[[str], dict[str, str]],
    clock: Clock = time.monotonic,
) -> tuple[PooledFlow, PooledAuth]:
    """Key pools in one process: each pool's policy is called directly."""
    clients = []
    for spec in pools:
        policy = QuotaPolicy(spec, clock)
        headers = pool_headers(spec, headers_for)
        clients.append(
            PoolClient(spec.name, local_lease(policy.lease), headers, clock, policy.report)
        )
    return PooledFlow(clients, clock), PooledAuth({})
