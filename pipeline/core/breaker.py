"""The outage breaker: a pure policy over an injected clock, no I/O.

A row's attempts are for faults of that row. When the provider does not answer at all
(refused connection, unknown host, TLS failure, timeouts on everything) or answers nearly every
call with a 5xx, the fault is the provider's or the network's: the job pauses every worker,
sends one probe request on a growing interval and resumes when the provider answers. Calls
that fail inside an outage are not charged to their rows. Past `limit_s` the job stops,
resumable, every unfinished row still pending.

Thresholds, and why (recorded behaviour in the shared reference):
- Gemini's overload is a 503 `UNAVAILABLE` ("The model is overloaded", "experiencing high
  demand... Spikes in demand are usually temporary") with no Retry-After and no details, so
  nothing in one answer says "outage": only the share of recent answers does.
- Scattered 5xx are normal: the simulator's realistic profile injects 1.5 % (500 + 503), the
  hostile one 7.5 % of 5xx, drops and hangs together. The breaker trips when at least
  `trip_share` (90 %) of the last `window` (20) finished calls were provider faults, with at
  least `min_calls` (10) seen. At a 7.5 % scattered fault rate the chance that 18 of 20
  independent calls fail is about 1e-16, so scattered faults never trip it and stay per-row,
  exactly as before; an abrupt outage trips it within the first 18-20 failed calls (well under
  one second of traffic at 16 in flight).
- A false trip costs one probe interval. The first probe goes out after `first_probe_s` (2 s:
  the openai SDK's own backoff starts at 0.5 s and caps at 8 s, google-genai's retry options
  start at 1 s and cap at 60 s), then the interval grows by `growth` (1.6x) up to `max_probe_s`
  (180 s: a few minutes, as the issue asks; a probe is one request, cheap at any interval).
- A run that never got an answer and cannot even connect (DNS, refused port, TLS) is most
  likely a wrong `base_url`, not an outage: it stops after `start_limit_s` (30 s) so the user
  learns it within a minute. Any answer during the run lifts this to `limit_s`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum

SPELL_BREAK = 5  # answers in a row that end a spell of faults


class Signal(Enum):
    """What one finished call says about the provider (not about the row)."""

    ANSWERED = "answered"  # any HTTP answer that is not a 5xx: 2xx, 4xx, 429
    NO_CONNECTION = "no_connection"  # refused, unknown host, TLS failure
    NO_ANSWER = "no_answer"  # connected, then timed out or dropped
    SERVER_ERROR = "server_error"  # 500, 502, 503, 504

    @property
    def is_fault(self) -> bool:
        return self is not Signal.ANSWERED


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls flow, faults are per row
    OPEN = "open"  # paused: nothing is sent until the next probe is due
    PROBING = "probing"  # paused, one probe request in flight
    EXPIRED = "expired"  # the outage outlasted the limit: the job stops


@dataclass(frozen=True)
class BreakerConfig:
    window: int = 20
    min_calls: int = 10
    trip_share: float = 0.9
    suspect_share: float = 0.5  # from here on, a row's last attempt does not fail it yet
    first_probe_s: float = 2.0
    growth: float = 1.6
    max_probe_s: float = 180.0
    limit_s: float = 900.0
    start_limit_s: float = 30.0


@dataclass(frozen=True)
class Outage:
    since: float  # clock time of the first failed call of the outage
    cause: str  # the last fault seen, one line
    signal: Signal
    next_probe_at: float
    probes: int


class Breaker:
    """Feed it every finished call (`record`) and every probe (`probe_done`)."""

    def __init__(self, cfg: BreakerConfig, clock: Callable[[], float]):
        self.cfg = cfg
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.answered_ever = False
        self._recent: deque[tuple[float, bool]] = deque(maxlen=cfg.window)
        self._faults = 0  # faults in _recent
        # the first fault after the last SPELL_BREAK answers in a row: where an outage began
        # (answers to calls sent before it can still arrive among its first faults)
        self._spell_start: float | None = None
        self._answered_run = 0
        self._since = 0.0
        self._cause = ""
        self._signal = Signal.ANSWERED
        self._interval = cfg.first_probe_s
        self._next_probe = 0.0
        self._probes = 0
        # [start, end] of every outage of the run; end None while it lasts
        self.intervals: list[tuple[float, float | None]] = []

    # -- observations ------------------------------------------------------------------------
    def record(self, signal: Signal, cause: str = "") -> None:
        """A regular call finished (not the probe)."""
        now = self.clock()
        if signal is Signal.ANSWERED:
            self.answered_ever = True
            self._answered_run += 1
            if self._answered_run >= SPELL_BREAK:
                self._spell_start = None
            if self.state in (BreakerState.OPEN, BreakerState.PROBING):
                self._close(now)  # a call sent before the pause got an answer: it is back
            elif self._faults == 0 and self.state is BreakerState.CLOSED:
                # the common case, once per call: no fault in the window, nothing can trip
                self._recent.append((now, False))
                return
        if self.state is not BreakerState.CLOSED:
            return
        if len(self._recent) == self._recent.maxlen and self._recent[0][1]:
            self._faults -= 1
        self._recent.append((now, signal.is_fault))
        if signal.is_fault:
            self._faults += 1
            self._cause, self._signal = cause, signal
            self._answered_run = 0
            if self._spell_start is None:
                self._spell_start = now
        n = len(self._recent)
        if n >= self.cfg.min_calls and self._faults >= self.cfg.trip_share * n:
            first_fault = next(t for t, fault in self._recent if fault)
            start = first_fault if self._spell_start is None else self._spell_start
            self._open(min(start, first_fault), now)

    def claim_probe(self) -> bool:
        """True for the one caller that may send the probe now."""
        if self.state is BreakerState.OPEN and self.clock() >= self._next_probe:
            self.state = BreakerState.PROBING
            return True
        return False

    def probe_done(self, signal: Signal, cause: str = "") -> None:
        now = self.clock()
        if signal is Signal.ANSWERED:
            self.answered_ever = True
            self._close(now)
            return
        if self.state is not BreakerState.PROBING:
            return
        self._probes += 1
        self._cause, self._signal = cause or self._cause, signal
        deadline = self._since + self.limit_s
        if now >= deadline:
            self.state = BreakerState.EXPIRED
            return
        self._interval = min(self.cfg.max_probe_s, self._interval * self.cfg.growth)
        # the last probe goes out at the limit, so the stop comes on time
        self._next_probe = min(now + self._interval, deadline)
        self.state = BreakerState.OPEN

    def abandon_probe(self) -> None:
        """The probe was never sent (the job is stopping): the next caller may probe."""
        if self.state is BreakerState.PROBING:
            self.state = BreakerState.OPEN

    # -- questions ---------------------------------------------------------------------------
    @property
    def limit_s(self) -> float:
        if not self.answered_ever and self._signal is Signal.NO_CONNECTION:
            return min(self.cfg.limit_s, self.cfg.start_limit_s)
        return self.cfg.limit_s

    @property
    def paused(self) -> bool:
        return self.state is not BreakerState.CLOSED

    def outage(self) -> Outage | None:
        if self.state is BreakerState.CLOSED:
            return None
        return Outage(self._since, self._cause, self._signal, self._next_probe, self._probes)

    def suspect(self) -> bool:
        """Most recent calls failed: a row's last attempt may be an outage's, not the row's."""
        n = len(self._recent)
        return self.paused or (n >= 4 and self._faults >= self.cfg.suspect_share * n)

    def covers(self, t: float) -> bool:
        """Whether a call that failed at clock time t failed inside an outage."""
        return any(start <= t and (end is None or t <= end) for start, end in self.intervals)

    # -- transitions -------------------------------------------------------------------------
    def _open(self, since: float, now: float) -> None:
        self.state = BreakerState.OPEN
        self._since = since
        self._interval = self.cfg.first_probe_s
        self._next_probe = now + self._interval
        self._probes = 0
        self.intervals.append((since, None))

    def _close(self, now: float) -> None:
        self.state = BreakerState.CLOSED
        self._recent.clear()
        self._faults = 0
        self._spell_start = None
        self._answered_run = 0
        if self.intervals and self.intervals[-1][1] is None:
            self.intervals[-1] = (self.intervals[-1][0], now)
