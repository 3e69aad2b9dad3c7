"""Rate-limit policies, pure over an injected clock: the token bucket (with debt and refunds,
re-ratable), AIMD, the accepted rate, the 429 pressure and the cool-down. Nothing here sleeps:
pipeline/limits.py waits on them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


_EPSILON = 1e-9
# pace 2 % under the quota: a retry or clock skew must not push a 60 s window over it
PACING = 0.98


class TokenBucket:
    """A token bucket with debt: pure arithmetic over an injected clock (no sleeping here)."""

    def __init__(self, rate: float, burst: float, clock: Clock, *, start_full: bool = False):
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst if start_full else 0.0
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, amount: float) -> float:
        """Take `amount` if available and return 0, else return the seconds until it will be.

        An amount larger than the burst goes through once the bucket is full, leaving debt.
        """
        self._refill()
        need = min(amount, self.burst)
        if self._tokens >= need - _EPSILON:  # float rounding must not leave a 1e-16 s wait
            self._tokens -= amount
            return 0.0
        return (need - self._tokens) / self.rate

    def refund(self, amount: float) -> None:
        """Give back an over-estimate (or charge an under-estimate when negative)."""
        self._refill()
        self._tokens = min(self.burst, self._tokens + amount)

    def set_rate(self, rate: float, burst: float) -> None:
        self._refill()
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, burst)

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens


@dataclass
class Aimd:
    """Multiplicative decrease on 429, additive increase while quiet; never above the limit."""

    limit: float
    floor_fraction: float = 0.05
    decrease: float = 0.7
    increase_fraction: float = 0.05  # of the current rate (at least 1 % of the limit)
    quiet_interval: float = 5.0
    current: float = 0.0
    # where the 429s began (the rate before the last decrease, or the accepted rate if lower):
    # climbing back, the rate creeps near it for 5 minutes after the last 429s, so a key whose
    # real quota is below the configured limit spends little time above that quota
    ceiling_memory: float = 300.0
    _last_change: float = -math.inf
    _ceiling: float = math.inf
    _ceiling_at: float = -math.inf

    def __post_init__(self) -> None:
        self.current = self.limit

    def on_rate_limited(self, now: float, cooldown: float, accepted: int | None = None) -> bool:
        """Lower the rate once per cool-down, and at least every 5 s under pressure; True when it
        changed. A key whose real quota is a tenth of the configured one gets there in ~30 s.

        `accepted`: the most requests the service accepted in any minute lately. The quota is at
        least that, so the rate drops at once to just under it, and never below 90 % of it
        (429s that go on until the provider's minute turns over say nothing new)."""
        if now - self._last_change < min(5.0, max(1.0, cooldown)):
            return False
        self._ceiling_at = now  # 429s still come: keep the memory of where they began
        target = self.current * self.decrease
        if accepted:
            target = max(min(target, accepted * 0.98), accepted * 0.9)
        target = min(self.current, max(self.limit * self.floor_fraction, target))
        if target >= self.current:
            return False
        self._ceiling = min(self.current, accepted) if accepted else self.current
        self.current = target
        self._last_change = now
        return True

    def on_quiet(self, now: float) -> bool:
        if self.current >= self.limit or now - self._last_change < self.quiet_interval:
            return False
        # a step relative to where we are: a key whose real quota is a tenth of the configured
        # one climbs back in small steps instead of jumping past its quota each time
        step = max(self.limit * 0.01, self.current * self.increase_fraction)
        near = now - self._ceiling_at < self.ceiling_memory and (
            self.current + step > 0.9 * self._ceiling
        )
        if near:  # where the last 429s began: creep, 1 % of the current rate per step
            step = self.current * 0.01
        self.current = min(self.limit, self.current + step)
        self._last_change = now
        return True


class AcceptedRate:
    """The most responses accepted (not 429) in any 60 s window of the last few minutes (pure).

    Counted per second; asked only when the rate is about to be lowered."""

    def __init__(self, horizon: float = 300.0):
        self._seconds: deque[list[int]] = deque()  # [second, count]
        self._horizon = horizon

    def record(self, now: float) -> None:
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
        else:
            self._seconds.append([second, 1])
        while self._seconds and self._seconds[0][0] < second - self._horizon:
            self._seconds.popleft()

    def peak_per_minute(self) -> int:
        best = run = 0
        window: deque[list[int]] = deque()
        for item in self._seconds:
            window.append(item)
            run += item[1]
            while window[0][0] <= item[0] - 60:
                run -= window.popleft()[1]
            best = max(best, run)
        return best


class Pressure:
    """Share of 429s among the last responses (pure).

    A stray 429 (1 % of calls on a busy service) only delays its own request; a real quota
    overrun makes a steady share of responses 429s and then the whole job slows down together.
    Counting responses rather than seconds makes it as sensitive at 5 requests/s as at 500.
    """

    def __init__(self, *, size: int = 50, min_limited: int = 5, share: float = 0.1):
        self._last: deque[bool] = deque(maxlen=size)
        self._limited = 0
        self._min_limited = min_limited
        self._share = share

    def record(self, limited: bool) -> None:
        if len(self._last) == self._last.maxlen:
            self._limited -= self._last[0]
        self._last.append(limited)
        self._limited += limited

    def high(self) -> bool:
        return self._limited >= self._min_limited and self._limited >= self._share * len(self._last)


class Cooldown:
    """Closed by a 429 for the server's delay (pure: when it opens again, how often it closed)."""

    def __init__(self, clock: Clock):
        self._clock = clock
        self.closed_until = 0.0
        self.closures = 0

    def close_for(self, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self.closed_until:
            self.closed_until = until
            self.closures += 1

    def remaining(self) -> float:
        return max(0.0, self.closed_until - self._clock())
