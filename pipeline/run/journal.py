"""The call journal: each received call, appended before the writer stores it.

A kill -9 loses what the writer had buffered (at most one flush interval of answers). Those calls
were billed all the same. The journal is an append-only file beside the store, written with
`os.write` (no user-space buffer, so the data is in the OS when the process dies) and cleared after
each commit. The next run moves what it finds into `calls` marked `recovered`: the bill stays
true, and `status` counts exactly the rows that were paid for and then lost.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.records import CallRecord
from pipeline.core.usage import Usage
from pipeline.errors import StoreError, fault_cause


def journal_files(db_path: str) -> list[Path]:
    """Journal generations left beside the store, oldest first."""
    base = Path(db_path)
    found = base.parent.glob(f"{glob.escape(base.name)}.journal.*")
    gens = [p for p in found if p.suffix[1:].isdigit()]
    return sorted(gens, key=lambda p: int(p.suffix[1:]))


def encode(job: str, c: CallRecord) -> bytes:
    """One line of JSON: the call's fields in order, its start as seconds since the epoch."""
    u = c.usage
    return orjson.dumps(
        (
            job,
            c.call_id,
            c.row_ids,
            c.attempt,
            c.started_at,
            c.latency_ms,
            c.http_status,
            c.outcome,
            c.error,
            (u.input, u.cached, u.output, u.thinking),
            str(c.cost_usd),
            c.model,
            c.model_version,
            c.response_id,
            c.lane,
            c.pool,
        ),
        option=orjson.OPT_APPEND_NEWLINE,
    )


def decode(line: bytes) -> tuple[str, CallRecord]:
    f: list[Any] = orjson.loads(line)
    return f[0], CallRecord(
        call_id=f[1],
        row_ids=tuple(f[2]),
        attempt=f[3],
        started_at=_epoch(f[4]),
        latency_ms=f[5],
        http_status=f[6],
        outcome=f[7],
        error=f[8],
        usage=Usage(*f[9]),
        cost_usd=Decimal(f[10]),
        model=f[11],
        model_version=f[12],
        response_id=f[13],
        lane=f[14] if len(f) > 14 else "standard",
        pool=f[15] if len(f) > 15 else None,
    )


def read_journal(paths: Iterable[Path]) -> Iterator[tuple[str, CallRecord]]:
    """Every complete line; a line torn by the kill is skipped (the call was not received)."""
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        for line in data.splitlines():
            try:
                yield decode(line)
            except (orjson.JSONDecodeError, IndexError, KeyError, TypeError, ValueError):
                continue


def _epoch(value: float | str) -> float:
    """A journal line's start: seconds since the epoch, or the ISO text older versions wrote."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return float(value)


class CallJournal:
    """Owned by the writer task: one file per batch ("generation"), deleted once committed."""

    def __init__(self, db_path: str):
        self._base = db_path + ".journal"
        self._gen = 0
        self._fd = -1
        self.current = Path(self._base)
        self._open_next()

    def _fault(self, exc: OSError) -> StoreError:
        return StoreError(
            f"journal {str(self.current)!r}: cannot write: {fault_cause(exc)}; the store and"
            " the journal written so far are intact: fix it and run the job again to resume"
        )

    def _open_next(self) -> None:
        self._gen += 1
        self.current = Path(f"{self._base}.{self._gen}")
        try:
            self._fd = os.open(
                self.current, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600
            )
        except OSError as exc:
            self._fd = -1
            raise self._fault(exc) from None

    def append(self, job: str, calls: list[CallRecord]) -> None:
        data = b"".join(encode(job, c) for c in calls)
        try:
            written = os.write(self._fd, data)
            if written < len(data):  # a short write: the disk filled up in the middle
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise self._fault(exc) from None

    def rotate(self) -> Path:
        """Close the current generation (it holds exactly the batch being handed off)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        done = self.current
        self._open_next()
        return done

    def close(self) -> None:
        """Close; the open generation goes if empty (a failed commit leaves its file behind)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            if self.current.stat().st_size == 0:
                self.current.unlink(missing_ok=True)
