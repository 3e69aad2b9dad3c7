"""Sliding-window limits per project: requests and input tokens per minute, requests per day.

A Gemini quota belongs to a project: every key of a project counts against the same windows.
Each project may have limits of its own; the rest share the server-wide ones."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MINUTE = 60.0
DAY = 86400.0


@dataclass(slots=True)
class Window:
    span: float
    events: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0

    def expire(self, now: float) -> None:
        events = self.events
        while events and events[0][0] <= now - self.span:
            self.total -= events.popleft()[1]

    def wait_for(self, now: float, room: int) -> float:
        """Seconds until the total drops to `room` or less."""
        total = self.total
        for t, n in self.events:
            total -= n
            if total <= room:
                return max(0.0, t + self.span - now)
        return self.span

    def add(self, now: float, n: int) -> None:
        self.events.append((now, n))
        self.total += n


@dataclass(frozen=True, slots=True)
class Verdict:
    per: str  # "minute", "tokens" or "day"
    limit: int
    used: int
    retry_s: float


Limits = tuple[int | None, int | None, int | None]  # rpm, tpm, rpd


class Quota:
    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        rpd: int | None,
        per_project: dict[str, Limits] | None = None,
    ):
        self.rpm, self.tpm, self.rpd = rpm, tpm, rpd
        self.per_project = per_project or {}
        self.keys: dict[str, tuple[Window, Window, Window]] = {}

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm or self.rpd or self.per_project)

    def limits(self, project: str) -> Limits:
        return self.per_project.get(project, (self.rpm, self.tpm, self.rpd))

    def admit(self, key: str, tokens: int, now: float) -> Verdict | None:
        """Count the request against `key`'s windows (a project) and None, or a Verdict when a
        limit is reached (not counted)."""
        if not self.active:
            return None
        rpm, tpm, rpd = self.limits(key)
        windows = self.keys.get(key)
        if windows is None:
            windows = (Window(MINUTE), Window(MINUTE), Window(DAY))
            self.keys[key] = windows
        rpm_w, tpm_w, rpd_w = windows
        for w in windows:
            w.expire(now)
        if rpd and rpd_w.total + 1 > rpd:
            return Verdict("day", rpd, rpd_w.total, rpd_w.wait_for(now, rpd - 1))
        if rpm and rpm_w.total + 1 > rpm:
            return Verdict("minute", rpm, rpm_w.total, rpm_w.wait_for(now, rpm - 1))
        if tpm and tpm_w.total + tokens > tpm:
            room = max(0, tpm - tokens)
            return Verdict("tokens", tpm, tpm_w.total, tpm_w.wait_for(now, room))
        rpm_w.add(now, 1)
        tpm_w.add(now, tokens)
        rpd_w.add(now, 1)
        return None

    def remaining(self, key: str) -> tuple[int, int]:
        """(requests, tokens) left in the current minute (for x-ratelimit-* headers)."""
        windows = self.keys.get(key)
        used_r = windows[0].total if windows else 0
        used_t = windows[1].total if windows else 0
        rpm, tpm, _ = self.limits(key)
        return max(0, (rpm or 5000) - used_r), max(0, (tpm or 4_000_000) - used_t)
