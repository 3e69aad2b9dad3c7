"""The reader: streams the input, skips the rows the store already has (one anti-join
per group of frames), answers copies and cached requests, and packs the rest for the workers.
Invalid rows (a duplicate id, an unreadable row, a text over the context) go straight to the
writer."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import anyio
import orjson
import pyarrow as pa
from anyio.abc import ObjectSendStream

from pipeline.cache import CachedAnswer, cached_result
from pipeline.core.records import Outcome, ResultRecord, Row
from pipeline.core.usage import ZERO
from pipeline.dedupe import row_hashes
from pipeline.run.job import JobRun
from pipeline.sources import Frame, read_frames
from pipeline.tasks.base import estimate_tokens
from pipeline.tasks.custom import CustomTask

# rows per resume lookup (the anti-join) while work is being found. Each lookup is a trip to
# the store's thread, and each such trip costs the event loop (DuckDB's client takes the GIL
# back several times per call): 4,096-row groups ran c64 3 % faster than 1,000-row ones
LOOKUP_MIN = 4_096
# DuckDB builds each lookup's hash table from its group, so the group bounds the memory of a
# resume: skipping 1M stored CSV.gz rows peaked at 315-348 MiB with 131,072-row groups and
# 270-310 with 65,536 (200k rows: 255-275 either way), for 0.1 s more over the million
LOOKUP_MAX = 65_536


class Reader:
    """Feeds one run's workers from its input; owns the packer and the resume lookups."""

    def __init__(self, run: JobRun):
        self.spec = run.spec
        self.store = run.store
        self.stats = run.stats
        self.task = run.task
        self.dedupe = run.dedupe
        self.fingerprint = run.fingerprint
        self.saving_prices = run.saving_prices
        self.context_tokens = run.context_tokens
        self.in_progress = run.in_progress  # shared with the writer
        self.stopping = run.stopping

    async def read(
        self, work: ObjectSendStream[list[Row]], out: ObjectSendStream[Outcome | ResultRecord]
    ) -> None:
        spec = self.spec
        packer = Packer(spec.limits.rows_per_request, work)
        async with work, out:
            frames: Iterator[Frame] = read_frames(spec.input)
            # a resume far into a big job: every lookup scans the stored rows once, so start
            # with large groups instead of growing to them
            size = min(LOOKUP_MAX, max(LOOKUP_MIN, self.stats.rows_before // 8))
            group, exhausted = await anyio.to_thread.run_sync(_take_frames, frames, size)
            found = False
            while group and not self.stopping():
                # while DuckDB looks a group up, the next one is read, unless this group holds
                # parsed rows (JSONL): two groups of rows would then sit in memory at once
                ahead = not any(f.holds_rows for f in group)
                ids = pa.concat_arrays([f.ids() for f in group])
                positions = pa.concat_arrays([f.positions() for f in group])
                lookup = partial(self.store.run, self.store.store.to_do, spec.name, ids, positions)
                following: list[Frame] = []
                if ahead:
                    size = _next_size(size, found)
                    todo, (following, exhausted) = await _together(
                        lookup, partial(_read_ahead, frames, size, exhausted)
                    )
                else:
                    todo = await lookup()
                found = bool(todo)
                if not await self._feed(group, ids, todo, packer, out):
                    return
                if not ahead:
                    group = []  # its rows go before the next group is parsed
                    size = _next_size(size, found)
                    following, exhausted = await _read_ahead(frames, size, exhausted)
                group = following
            if not self.stopping():
                await packer.flush()

    async def _feed(
        self,
        group: list[Frame],
        ids: pa.Array,
        todo: dict[int, str | None],
        packer: Packer,
        out: ObjectSendStream[Outcome | ResultRecord],
    ) -> bool:
        """Pack the group's rows still to do (invalid ones go straight to the writer);
        False once the job is stopping."""
        keep = self.spec.input.keep
        stored = {ids[i].as_py(): p for i, p in todo.items() if p is not None}
        for frame, picked in _split(group, todo):
            rows = await anyio.to_thread.run_sync(frame.rows, picked)
            sendable: list[tuple[Row, str, str]] = []
            for row in rows:
                invalid = self._invalid_reason(row, stored)
                if invalid is not None:
                    rid = row.pos if invalid.startswith("duplicate") else row.id
                    await out.send(_invalid_result(rid, row, invalid, keep))
                    continue
                self.in_progress[row.id] = row.pos
                user = self.task.render(row)
                sendable.append((row, *row_hashes(self.fingerprint, user)))
            hits = await self._cached(sendable)
            for row, key, ihash in sendable:
                # a copy of a row of this job names that row; the cache answers the others
                copy = self.dedupe.answered(row, key)
                hit = hits.get(key)
                if copy is None and hit is not None and not self.dedupe.in_flight(key):
                    copy = cached_result(
                        row, key, ihash, hit, keep, self.saving_prices, self.spec.model
                    )
                if copy is not None:
                    await out.send(copy)
                elif self.dedupe.admit(row, key, ihash):
                    await packer.add(row)
                if self.stopping():
                    return False
        return True

    async def _cached(self, rows: list[tuple[Row, str, str]]) -> dict[str, CachedAnswer]:
        """The stored answers for these rows' requests (one lookup per input frame)."""
        if not self.spec.cache or not rows:
            return {}
        found = await self.store.run(self.store.store.cached_answers, [k for _, k, _ in rows])
        return {k: CachedAnswer(orjson.loads(out), usage) for k, (out, usage) in found.items()}

    def _invalid_reason(self, row: Row, stored: dict[str, str]) -> str | None:
        if row.id in stored:  # stored from another input position
            return f"duplicate id {row.id!r} (first at {stored[row.id]})"
        if row.id in self.in_progress:
            return f"duplicate id {row.id!r} (first at {self.in_progress[row.id]})"
        if row.error is not None:
            return row.error
        if isinstance(self.task, CustomTask):
            missing = self.task.missing_field(row)
            if missing is not None:
                return missing
        tokens = estimate_tokens(row.text or "")
        if tokens > self.context_tokens:
            return (
                f"{row.pos}: text is about {tokens:,} tokens, over {self.spec.model}'s "
                f"{self.context_tokens:,}-token context (not sent)"
            )
        return None


def _invalid_result(row_id: str, row: Row, reason: str, keep: tuple[str, ...]) -> ResultRecord:
    kept = {k: row.fields.get(k) for k in keep} if keep and row.fields else None
    return ResultRecord(
        row_id=row_id,
        pos=row.pos,
        status="invalid",
        output=None,
        error=reason,
        attempts=0,
        usage=ZERO,
        cost_usd=Decimal(0),
        kept=kept,
        finished_at=time.time(),
    )


class Packer:
    """Groups rows into requests: `rows_per_request` at most, and about 8k tokens at most."""

    MAX_TOKENS = 8_000

    def __init__(self, per_request: int, work: ObjectSendStream[list[Row]]):
        self.per_request = per_request
        self.work = work
        self.pack: list[Row] = []
        self.tokens = 0

    async def add(self, row: Row) -> None:
        if self.per_request == 1:  # nothing to pack
            await self.work.send([row])
            return
        tokens = estimate_tokens(row.text or "")
        if self.pack and self.tokens + tokens > self.MAX_TOKENS:
            await self.flush()
        self.pack.append(row)
        self.tokens += tokens
        if len(self.pack) >= self.per_request:
            await self.flush()

    async def flush(self) -> None:
        if self.pack:
            await self.work.send(self.pack)
        self.pack, self.tokens = [], 0


def _take_frames(frames: Iterator[Frame], rows: int) -> tuple[list[Frame], bool]:
    """Frames holding at least `rows` rows (fewer at the end), and whether the input ended."""
    group: list[Frame] = []
    size = 0
    while size < rows:
        frame = next(frames, None)
        if frame is None:
            return group, True
        group.append(frame)
        size += len(frame)
    return group, False


def _next_size(size: int, found: bool) -> int:
    """Each lookup scans the stored rows once: while whole groups are done (a resume far into
    a big job), read ever larger groups to reach the work sooner."""
    return LOOKUP_MIN if found else min(LOOKUP_MAX, size * 2)


async def _read_ahead(
    frames: Iterator[Frame], rows: int, exhausted: bool
) -> tuple[list[Frame], bool]:
    if exhausted:
        return [], True
    return await anyio.to_thread.run_sync(_take_frames, frames, rows)


A = TypeVar("A")
B = TypeVar("B")


async def _together(
    first: Callable[[], Awaitable[A]], second: Callable[[], Awaitable[B]]
) -> tuple[A, B]:
    """Await two calls at once (both wait on native code that releases the GIL)."""
    out: dict[int, Any] = {}

    async def run(key: int, fn: Callable[[], Awaitable[Any]]) -> None:
        out[key] = await fn()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return out[0], out[1]


def _split(group: list[Frame], todo: dict[int, str | None]) -> list[tuple[Frame, list[int] | None]]:
    """Per frame of the group, the indices still to do (None: all of them)."""
    out: list[tuple[Frame, list[int] | None]] = []
    wanted = sorted(todo)
    k = start = 0
    for frame in group:
        end = start + len(frame)
        picked = []
        while k < len(wanted) and wanted[k] < end:
            picked.append(wanted[k] - start)
            k += 1
        if picked:
            out.append((frame, picked if len(picked) < len(frame) else None))
        start = end
    return out
