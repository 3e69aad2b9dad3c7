"""Live progress on stderr: rich on a TTY, plain lines otherwise, nothing with --quiet."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any

from pipeline.core.usage import ZERO, Usage


@dataclass
class RunStats:
    """Counters of one run, updated by the engine on the event loop."""

    job: str
    rows_total: int = 0
    rows_total_exact: bool = True
    rows_before: int = 0  # results already stored when the run started
    rows_done: int = 0  # results stored by this run
    by_status: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    rate_limited: int = 0
    failures: int = 0
    usage: Usage = ZERO
    usd: Decimal = Decimal(0)
    rpm_limit: int = 0
    rpm_current: float | None = None
    in_flight: int = 0
    started: float = field(default_factory=time.monotonic)
    state: str = "running"
    lane: str = "standard"
    shed: int = 0  # Flex refusals (not billed)
    batches_open: int = 0
    batches_done: int = 0
    batch_requests: int = 0  # HTTP requests of the Batch lane (create, poll, upload, download)
    outage: dict[str, Any] | None = None  # while the provider is unreachable (pipeline.run.job)

    def count(self, statuses: Sequence[str]) -> None:
        """Results just stored, by their status."""
        for status, n in Counter(statuses).items():
            self.rows_done += n
            self.by_status[status] = self.by_status.get(status, 0) + n
            if status == "failed":
                self.failures += n

    def snapshot(self, now: float) -> dict[str, Any]:
        elapsed = max(1e-9, now - self.started)
        done = self.rows_before + self.rows_done
        rate = self.rows_done / elapsed
        left = max(0, self.rows_total - done)
        per_row = self.usd / self.rows_done if self.rows_done else Decimal(0)
        return {
            "job": self.job,
            "state": self.state,
            "rows_done": done,
            "rows_total": self.rows_total,
            "rows_total_exact": self.rows_total_exact,
            "by_status": dict(self.by_status),
            "rows_per_s": round(rate, 1),
            "requests": self.requests,
            "requests_per_min": round(self.requests / elapsed * 60, 1),
            "rpm_limit": self.rpm_limit,
            "rate_limited": self.rate_limited,
            "failures": self.failures,
            "tokens": {
                "input": self.usage.input,
                "cached": self.usage.cached,
                "output": self.usage.output,
                "thinking": self.usage.thinking,
            },
            "usd": str(self.usd.quantize(Decimal("0.000001"))),
            "usd_projected": str((self.usd + per_row * left).quantize(Decimal("0.000001"))),
            "eta_s": round(left / rate) if rate > 0 else None,
            "in_flight": self.in_flight,
            "elapsed_s": round(elapsed, 1),
            "lane": self.lane,
            "shed": self.shed,
            "batches": {
                "open": self.batches_open,
                "done": self.batches_done,
                "requests": self.batch_requests,
            },
            "outage": self.outage,
        }


def format_line(snap: dict[str, Any]) -> str:
    """One plain progress line (also the text of the rich display)."""
    total = snap["rows_total"]
    total_txt = f"{total:,}" if snap.get("rows_total_exact", True) else f"~{total:,}"
    limit = f"/{snap['rpm_limit']:,}" if snap["rpm_limit"] else ""
    eta = snap["eta_s"]
    eta_txt = f"{eta // 60}m{eta % 60:02d}s" if isinstance(eta, int) else "-"
    tokens = snap["tokens"]
    tok = tokens["input"] + tokens["cached"] + tokens["output"] + tokens["thinking"]
    lanes = ""
    if snap.get("shed"):
        lanes += f" | flex refused {snap['shed']:,}"
    if snap.get("lane") in ("batch", "auto"):
        b = snap["batches"]
        lanes += f" | batches {b['open']} open, {b['done']} done"
    paused = ""
    if snap.get("outage"):
        paused = f"{outage_text(snap['outage'])} | "
    return paused + (
        f"{snap['job']}: rows {snap['rows_done']:,}/{total_txt} | {snap['rows_per_s']:,.1f} rows/s"
        f" | {snap['requests_per_min']:,.0f}{limit} req/min | 429s {snap['rate_limited']}"
        f" | failed {snap['failures']}{lanes} | tokens {tok:,} | ${snap['usd']}"
        f" (projected ${snap['usd_projected']}) | ETA {eta_txt}"
    )


def outage_text(outage: dict[str, Any]) -> str:
    """'PAUSED: provider unreachable since 10:42:03, next probe in 40 s (503 ...)'"""
    nxt = outage.get("next_probe_s")
    probe = "probing now" if nxt is None else f"next probe in {nxt} s"
    return f"PAUSED: provider unreachable since {outage['since']}, {probe} ({outage['cause'][:80]})"


class ProgressReporter:
    """Owns the progress line on stderr: redrawn every `interval` seconds, and a final one."""

    def __init__(
        self, stream: IO[str] | None = None, *, quiet: bool = False, interval: float = 2.0
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.interval = interval
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._live: Any = None

    def update(self, stats: RunStats, *, final: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not final and now - self._last < (0.25 if self._tty else self.interval):
            return
        self._last = now
        line = format_line(stats.snapshot(now))
        if self._tty:
            self._rich(line, final)
        else:
            print(line, file=self.stream, flush=True)

    def _rich(self, line: str, final: bool) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        if self._live is None:
            self._live = Live(
                Text(line), console=Console(file=self.stream), refresh_per_second=4, transient=False
            )
            self._live.start()
        self._live.update(Text(line))
        if final:
            self._live.stop()
            self._live = None
