"""Key pools: one quota per provider project, shared by every key of that project and by every
worker that sends with them (pure: an injected clock, no I/O, no sleeping).

Gemini's quota belongs to a project, not to a key, so keys of one project form one pool. A
pool's quota is held by one `QuotaPolicy` — in one process it is called directly, on Ray it
lives in the pool's broker actor. Workers lease capacity in small blocks (a fraction of a
second's worth) and report what they used and saw (429s, billed tokens) with their next lease,
so the policy is asked about once per block, not once per request. The policy is built from the
same parts as one process's `FlowControl`: FIFO-free token buckets with debt, the cool-down
gate, AIMD and the accepted-rate memory; only the 429-pressure rule is counted over a second
of time rather than the last 50 responses (see SharedPressure).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone, tzinfo
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.core.limits import PACING, AcceptedRate, Aimd, Clock, Cooldown, TokenBucket
from pipeline.errors import SpecError

BLOCK_SECONDS = 0.25  # a lease is at most this much of the pool's rate
STOCK_SECONDS = 0.5  # leased capacity not used within this long goes back (a gate may close)
BOOK_AHEAD = 1.0  # blocks are booked at most this far ahead of the pool's rate
DAY = 86_400.0


def quota_day(now: datetime) -> tuple[datetime, float]:
    """When the per-day quota's day began, and the seconds left in it. Gemini's per-day
    quotas turn at midnight Pacific time."""
    try:
        pacific: tzinfo = ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:  # no time-zone database: Pacific standard time
        pacific = timezone(timedelta(hours=-8))
    here = now.astimezone(pacific)
    start = datetime.combine(here.date(), dtime(0), tzinfo=pacific)
    end = datetime.combine(here.date() + timedelta(days=1), dtime(0), tzinfo=pacific)
    return start, (end - here).total_seconds()


class PoolState(enum.Enum):
    ACTIVE = "active"
    BENCHED = "benched"  # per-day quota, billing, bad key: its rows go to the other pools


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One project's quota and the environment variables of its keys (never the keys)."""

    name: str
    key_envs: tuple[str, ...]
    rpm: int = 0
    tpm: int = 0
    rpd: int = 0


def group_pools(entries: list[Any], default_rpm: int, default_tpm: int) -> tuple[PoolSpec, ...]:
    """`[[provider.pool]]` tables -> one PoolSpec per project (keys of a project share it)."""
    by_project: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        where = f"provider.pool[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: {entry!r} is invalid; expected a table")
        unknown = set(entry) - {"api_key_env", "project", "rpm", "tpm", "rpd"}
        if unknown:
            key = sorted(unknown)[0]
            raise SpecError(
                f"{where}.{key}: unknown key; expected api_key_env, project, rpm, tpm, rpd"
            )
        env = entry.get("api_key_env")
        if not isinstance(env, str) or not env:
            raise SpecError(f"{where}.api_key_env: missing; expected an environment variable name")
        project = entry.get("project", env)
        if not isinstance(project, str) or not project:
            raise SpecError(f"{where}.project: {project!r} is invalid; expected a project name")
        limits: dict[str, int] = {}
        for k, default in (("rpm", default_rpm), ("tpm", default_tpm), ("rpd", 0)):
            v = entry.get(k, default)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise SpecError(f"{where}.{k}: {v!r} is invalid; expected an integer >= 0")
            limits[k] = v
        seen = by_project.get(project)
        if seen is None:
            by_project[project] = {"envs": [env], **limits}
            continue
        for k, v in limits.items():
            if k in entry and v != seen[k]:
                raise SpecError(
                    f"{where}.{k}: {v} differs from {seen[k]} given for project {project!r}; "
                    "keys of one project share one quota"
                )
        if env not in seen["envs"]:
            seen["envs"].append(env)
    return tuple(
        PoolSpec(name, tuple(p["envs"]), p["rpm"], p["tpm"], p["rpd"])
        for name, p in by_project.items()
    )


@dataclass(frozen=True, slots=True)
class Report:
    """What a worker used and saw since its last lease of this pool."""

    unused_requests: int = 0  # leased, never sent: given back
    token_correction: int = 0  # leased estimate minus billed tokens (negative: under-estimated)
    sent: int = 0  # requests that left (count against the per-day quota)
    ok: int = 0  # responses that were not 429s
    limited: int = 0  # 429s
    retry_delay: float | None = None  # the longest server retry delay among those 429s
    limited_age: float = 0.0  # seconds since the last of those 429s (a report may come late)
    benched: str | None = None  # a stop (per-day quota, billing, bad key) seen with this pool
    # who reports, and every request it has sent with the pool so far: a broker restarted
    # mid-run learns the day's count again from its workers' next reports
    worker: int = 0
    sent_total: int = 0

    @property
    def empty(self) -> bool:
        return replace(self, worker=0, sent_total=0) == _NOTHING


_NOTHING = Report()


@dataclass(frozen=True, slots=True)
class Grant:
    requests: int  # may be sent now
    tokens: int  # of estimated tokens, leased with them
    wait: float  # nothing granted: ask again after this many seconds
    state: PoolState = PoolState.ACTIVE
    reason: str | None = None  # why the pool is benched
    rpm: float | None = None  # the pool's current (AIMD) rate
    start: float = 0.0  # the requests granted may be sent from this many seconds on


class SharedPressure:
    """Share of 429s among the responses of the last second, from every worker (pure).

    One process counts its last 50 responses in order (core.limits.Pressure); a pool's workers
    report in batches, and a batch of one worker's 200 OKs must not wipe out another worker's
    429s that came at the same time. So the same rule (at least 5 429s and 10 % of responses)
    is applied over a short span of time instead of a count."""

    def __init__(
        self, clock: Clock, *, span: float = 1.0, min_limited: int = 5, share: float = 0.1
    ):
        self._clock = clock
        self._span = span
        self._min_limited = min_limited
        self._share = share
        self._events: deque[tuple[float, int, int]] = deque()  # (time, ok, limited)
        self._ok = self._limited = 0

    def record(self, ok: int, limited: int, age: float = 0.0) -> None:
        self._expire()
        self._events.append((self._clock() - age, ok, limited))
        self._ok += ok
        self._limited += limited

    def _expire(self) -> None:
        edge = self._clock() - self._span
        while self._events and self._events[0][0] < edge:
            _, ok, limited = self._events.popleft()
            self._ok -= ok
            self._limited -= limited

    def high(self) -> bool:
        self._expire()
        total = self._ok + self._limited
        return self._limited >= self._min_limited and self._limited >= self._share * total


class QuotaPolicy:
    """One pool's RPM / TPM / RPD, cool-down gate and AIMD, leased out in blocks."""

    def __init__(
        self,
        spec: PoolSpec,
        clock: Clock,
        *,
        sent_today: int = 0,
        day_left: float = DAY,
        block_seconds: float = BLOCK_SECONDS,
    ):
        self.spec = spec
        self._clock = clock
        self._block_seconds = block_seconds
        # buckets start empty: a broker recreated mid-run cannot burst over what the one it
        # replaces already let through this minute
        self.requests = _bucket(spec.rpm, clock)
        self.tokens = _bucket(spec.tpm, clock)
        self.gate = Cooldown(clock)
        self.aimd = Aimd(float(spec.rpm)) if spec.rpm > 0 else None
        self.pressure = SharedPressure(clock)
        self.accepted = AcceptedRate()
        self.state = PoolState.ACTIVE
        self.reason: str | None = None
        # the day's requests: those sent before this policy began (the store's count), those
        # its reporters sent (each one's running total), those reported without one
        self._before = sent_today
        self._by_worker: dict[int, int] = {}
        self._untold = 0
        self._day_offset = 0  # what was counted before the quota day last turned
        self._day_end = clock() + day_left
        self._outstanding = 0  # leased and not yet reported sent or unused
        self._last_pressure = -math.inf
        self.leases = 0
        self.rate_limited = 0

    # -- reports -------------------------------------------------------------------------------
    def report(self, r: Report) -> None:
        now = self._clock()
        if r.unused_requests and self.requests is not None:
            self.requests.refund(r.unused_requests)
        if r.token_correction and self.tokens is not None:
            self.tokens.refund(r.token_correction)
        self._outstanding = max(0, self._outstanding - r.sent - r.unused_requests)
        if now >= self._day_end:
            self._day_offset += self.sent_today
            self._day_end = now + DAY
        if r.sent_total:
            total = max(self._by_worker.get(r.worker, 0), r.sent_total)
            self._by_worker[r.worker] = total
        else:
            self._untold += r.sent
        if r.ok or r.limited:
            self.pressure.record(r.ok, r.limited, r.limited_age if r.limited else 0.0)
        if self.aimd is not None:
            for _ in range(r.ok):
                self.accepted.record(now)
        if r.limited:
            self.rate_limited += r.limited
            self._on_rate_limited(now, r.retry_delay, r.limited_age)
        if r.benched is not None:
            self.bench(r.benched)

    def _on_rate_limited(self, now: float, delay: float | None, age: float = 0.0) -> None:
        """As one process: a stray 429 delays only its request; under pressure the gate closes
        for the server's delay and AIMD lowers the rate, for every worker of the pool. The delay
        counts from when the 429 came, not from when it was reported."""
        if not self.pressure.high():
            return
        self._last_pressure = now
        cooldown = delay if delay is not None else 2.0
        if cooldown > age:
            self.gate.close_for(cooldown - age)
        aimd = self.aimd
        if aimd is not None and aimd.on_rate_limited(
            now, cooldown, self.accepted.peak_per_minute()
        ):
            self._set_rpm(aimd.current)

    def bench(self, reason: str) -> None:
        if self.state is PoolState.ACTIVE:
            self.state = PoolState.BENCHED
            self.reason = reason

    # -- leases --------------------------------------------------------------------------------
    def lease(self, want_requests: int, tokens_each: int, report: Report = _NOTHING) -> Grant:
        """Up to `want_requests` requests (at most one block), each with `tokens_each` estimated
        tokens, or the seconds to wait before asking again."""
        self.leases += 1
        if report != _NOTHING:  # an empty report still says how many its worker sent today
            self.report(report)
        rpm = self.aimd.current if self.aimd is not None else None
        if self.state is PoolState.BENCHED:
            return Grant(0, 0, 0.0, self.state, self.reason, rpm)
        rpd = self.spec.rpd
        if rpd and self.sent_today + self._outstanding >= rpd:
            if self._outstanding == 0:
                self.bench(f"pool {self.spec.name!r}: its per-day quota of {rpd} requests is spent")
                return Grant(0, 0, 0.0, self.state, self.reason, rpm)
            return Grant(0, 0, 1.0, rpm=rpm)  # what is out may still come back unused
        closed = self.gate.remaining()
        if closed > 0:
            return Grant(0, 0, closed, rpm=rpm)
        n = max(1, want_requests)
        if rpd:
            n = min(n, rpd - self.sent_today - self._outstanding)
        start = 0.0
        bucket = self.requests
        if bucket is not None:
            n = min(n, max(1, int(bucket.rate * self._block_seconds)))
            level = bucket.tokens
            # a block is booked: taken now (the bucket goes into debt) and sent once the
            # bucket has earned it, exactly when one process would have been served it; so a
            # worker asks once per block instead of polling for every token
            if level - n < -bucket.rate * BOOK_AHEAD:
                return Grant(0, 0, (n - level) / bucket.rate - BOOK_AHEAD, rpm=rpm)
            start = max(0.0, (n - level) / bucket.rate)
        tokens = n * max(0, tokens_each)
        if self.tokens is not None and tokens:
            wait = self.tokens.take(tokens)
            if wait > 0:
                return Grant(0, 0, wait, rpm=rpm)
        if bucket is not None:
            bucket.refund(-n)
        self._outstanding += n
        self._climb(self._clock())
        rpm = self.aimd.current if self.aimd is not None else None
        return Grant(n, tokens, 0.0, start=start, rpm=rpm)

    def _climb(self, now: float) -> None:
        aimd = self.aimd
        quiet = aimd is not None and now - self._last_pressure >= aimd.quiet_interval
        if aimd is not None and quiet and aimd.on_quiet(now):
            self._set_rpm(aimd.current)

    def _set_rpm(self, rpm: float) -> None:
        if self.requests is not None:
            rate = rpm * PACING / 60.0
            self.requests.set_rate(rate, max(1.0, rate))

    @property
    def current_rpm(self) -> float | None:
        return self.aimd.current if self.aimd is not None else None

    @property
    def sent_today(self) -> int:
        return self._before + self._untold + sum(self._by_worker.values()) - self._day_offset


def _bucket(per_minute: int, clock: Clock) -> TokenBucket | None:
    if per_minute <= 0:
        return None
    rate = per_minute * PACING / 60.0
    # a bucket of about one second of capacity keeps every 10 s window near the quota / 6
    return TokenBucket(rate, max(1.0, rate), clock)
