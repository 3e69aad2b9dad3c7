"""Flow control shared by all workers of a job, waiting with anyio on the pure policies of
pipeline/core/limits.py: FifoLimiter (the RPM and TPM buckets' FIFO front, reserve/settle),
CooldownGate (closed by a 429 for the server's delay), FlowControl (one job's limiters, gate,
Aimd, Pressure and AcceptedRate) and Flow, what a lane asks of it.

aiolimiter was measured and replaced (README, "Flow control"): it lets a full minute's quota
through at once, serves small requests before large ones, cannot refund an over-estimate
and cannot change its rate. FifoLimiter serves in arrival order, settles each reservation to
what was used, can be re-rated, and takes a clock.
"""

from __future__ import annotations

import math
from typing import Protocol

import anyio

from pipeline.core.limits import (
    PACING,
    AcceptedRate,
    Aimd,
    Clock,
    Cooldown,
    Pressure,
    TokenBucket,
)


class FifoLimiter:
    """Async FIFO front of a TokenBucket: waiters are served strictly in arrival order."""

    def __init__(self, per_minute: float, clock: Clock, *, window: float = 1.0):
        self.limit = per_minute
        self._window = window
        rate = per_minute * PACING / 60.0
        # a bucket of about one second of capacity keeps every 10 s window near rpm/6
        self.bucket = TokenBucket(rate, max(1.0, rate * window), clock)
        self._lock = anyio.Lock()

    async def reserve(self, amount: float) -> None:
        async with self._lock:
            while True:
                wait = self.bucket.take(amount)
                if wait <= 0:
                    return
                await anyio.sleep(wait)

    def settle(self, reserved: float, actual: float) -> None:
        if reserved != actual:
            self.bucket.refund(reserved - actual)

    def set_per_minute(self, per_minute: float) -> None:
        rate = per_minute * PACING / 60.0
        self.bucket.set_rate(rate, max(1.0, rate * self._window))


class CooldownGate(Cooldown):
    """Closed by a 429 for the server's delay; every worker waits before its next send."""

    async def wait(self) -> None:
        while (left := self.remaining()) > 0:
            await anyio.sleep(left)


class FlowControl:
    """The RPM and TPM limiters, the gate and AIMD of one job, shared by all workers."""

    def __init__(self, rpm: int, tpm: int, clock: Clock):
        self._clock = clock
        self.requests = FifoLimiter(rpm, clock) if rpm > 0 else None
        self.tokens = FifoLimiter(tpm, clock) if tpm > 0 else None
        self.gate = CooldownGate(clock)
        self.aimd = Aimd(float(rpm)) if rpm > 0 else None
        self.pressure = Pressure()
        self.accepted = AcceptedRate()
        self._last_pressure = -math.inf

    async def acquire(self, est_tokens: int) -> None:
        if self.requests is None and self.tokens is None:  # nothing to pace: only the gate
            if self.gate.closed_until > self._clock():
                await self.gate.wait()
            return
        while True:
            await self.gate.wait()
            if self.requests is not None:
                await self.requests.reserve(1)
            if self.tokens is not None:
                await self.tokens.reserve(est_tokens)
            if self.gate.remaining() == 0 or (self.requests is None and self.tokens is None):
                break
            # the gate closed while this call queued for its slot: give the slot back and
            # queue again once the gate opens, so a backlog neither drains into a spent quota
            # nor bursts out together when the gate opens
            if self.requests is not None:
                self.requests.settle(1, 0)
            if self.tokens is not None:
                self.tokens.settle(est_tokens, 0)
        aimd, requests, now = self.aimd, self.requests, self._clock()
        # climb back only after a spell without pressure (stray 429s do not count)
        if (
            aimd is not None
            and requests is not None
            and now - self._last_pressure >= aimd.quiet_interval
            and aimd.on_quiet(now)
        ):
            requests.set_per_minute(aimd.current)

    def settle_tokens(self, est_tokens: int, actual_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.settle(est_tokens, actual_tokens)

    def on_response(self, rate_limited: bool) -> None:
        self.pressure.record(rate_limited)
        if not rate_limited and self.aimd is not None:
            self.accepted.record(self._clock())

    def on_rate_limited(self, delay: float | None) -> None:
        """A 429: the request itself waits `delay`; under pressure every worker waits too."""
        if not self.pressure.high():
            return
        self._last_pressure = self._clock()
        cooldown = delay if delay is not None else 2.0
        self.gate.close_for(cooldown)
        aimd, requests = self.aimd, self.requests
        if (
            aimd is not None
            and requests is not None
            and aimd.on_rate_limited(self._clock(), cooldown, self.accepted.peak_per_minute())
        ):
            requests.set_per_minute(aimd.current)

    @property
    def current_rpm(self) -> float | None:
        return self.aimd.current if self.aimd is not None else None

    def bench_current(self, reason: str) -> bool:
        """One key, one pool: a refusal of the key stops the job (see pipeline.poolflow)."""
        return False

    def pool_name(self) -> str | None:
        return None


class Flow(Protocol):
    """What the attempt loop asks of flow control: FlowControl here, or key pools
    (pipeline.poolflow.PooledFlow), in one process or leased from Ray's quota brokers."""

    async def acquire(self, est_tokens: int) -> None: ...

    def settle_tokens(self, est_tokens: int, actual_tokens: int) -> None: ...

    def on_response(self, rate_limited: bool) -> None: ...

    def on_rate_limited(self, delay: float | None) -> None: ...

    def bench_current(self, reason: str) -> bool: ...

    def pool_name(self) -> str | None: ...

    @property
    def current_rpm(self) -> float | None: ...
