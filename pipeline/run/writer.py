"""The writer: journals each call the moment it arrives and commits results and calls to the
store in batched transactions, every 250 ms (or 4,000 rows)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from pipeline.core.records import BatchClose, CallRecord, Lane, Outcome, ResultRecord
from pipeline.lanes.runner import BatchOutcome
from pipeline.run.channel import ChannelReceiver, channel
from pipeline.run.job import JobRun

# Each commit costs the event loop more than its rows: DuckDB's Python client takes the GIL
# back dozens of times per statement, and the loop waits each time. Commits of 500 rows came
# eight times a second at c64; so time decides (a kill -9 still loses at most 250 ms of
# answers, which the journal counts), and the row cap only bounds memory at high rates.
FLUSH_ROWS = 4_000
FLUSH_SECONDS = 0.25

Message = Outcome | ResultRecord | BatchOutcome  # what the writer receives


@dataclass(slots=True)
class Pending:
    """What the writer holds until its next commit."""

    results: list[ResultRecord] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    closes: list[BatchClose] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.results or self.calls or self.closes)

    def add(
        self,
        msgs: list[Message],
        fan_out: Callable[[list[ResultRecord]], list[ResultRecord]],
        count: Callable[[CallRecord], None],
    ) -> list[CallRecord]:
        """Take the messages in; the online calls among them, which need the journal."""
        received: list[CallRecord] = []
        for msg in msgs:
            if isinstance(msg, Outcome):
                received.append(msg.call)
                self.results.extend(fan_out(msg.results))
                count(msg.call)
            elif isinstance(msg, BatchOutcome):
                # the provider keeps a batch's answers: no journal needed, and the batch
                # closes in the same commit as its results
                self.calls.extend(msg.calls)
                self.results.extend(fan_out(msg.results))
                self.closes.append(msg.close)
                for call in msg.calls:
                    count(call)
            else:
                self.results.append(msg)
        self.calls.extend(received)
        return received


async def _receive_some(
    inbox: ChannelReceiver[Message], most: int, wait: float
) -> tuple[list[Message], bool]:
    """What is queued (up to `most`), waiting at most `wait` for the first; and whether the
    stream has ended."""
    msgs: list[Message] = []
    with anyio.move_on_after(wait):
        try:
            msgs.append(await inbox.receive())
            while len(msgs) < most:  # take what is queued: one journal write
                msgs.append(inbox.receive_nowait())
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return msgs, True
    return msgs, False


class Writer:
    """Owns what is received but not yet stored: the journal's current generation and the
    pending commit."""

    def __init__(self, run: JobRun):
        self.spec = run.spec
        self.store = run.store
        self.stats = run.stats
        self.dedupe = run.dedupe
        self.journal = run.journal
        self.in_progress = run.in_progress  # shared with the reader
        self._committed = anyio.Event()
        self._committed.set()

    async def write(self, inbox: ChannelReceiver[Message]) -> None:
        """Receive outcomes, journal each call at once, and hand batches to the committer.

        Receiving never waits for a commit: while one batch commits, the next one fills and
        its calls are already in the journal, so a kill -9 loses no received call unrecorded.
        Each journal generation holds exactly one batch and is deleted once that batch commits.
        """
        pending = Pending()
        last = time.monotonic()
        to_commit, committing = channel[tuple[Path, Pending]](1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._commit, committing)
            async with inbox, to_commit:
                closed = False
                while not closed:
                    msgs, closed = await _receive_some(inbox, 512, FLUSH_SECONDS)
                    received = pending.add(msgs, self._fan_out, self._count_call)
                    if received:
                        self.journal.append(self.spec.name, received)
                    now = time.monotonic()
                    due = len(pending.results) >= FLUSH_ROWS or now - last >= FLUSH_SECONDS
                    if pending and (closed or (due and self._committed.is_set())):
                        await self._committed.wait()  # only ever waits at the very end
                        self._committed = anyio.Event()
                        await to_commit.send((self.journal.rotate(), pending))
                        pending, last = Pending(), now

    def _fan_out(self, finals: list[ResultRecord]) -> list[ResultRecord]:
        """Each sent row's result, plus the results of the copies that waited for it."""
        out: list[ResultRecord] = []
        for r in finals:
            out.extend(self.dedupe.fan_out(r))
        return out

    async def _commit(self, batches: ChannelReceiver[tuple[Path, Pending]]) -> None:
        async with batches:
            async for generation, p in batches:
                await self._flush(p.results, p.calls, p.closes)
                generation.unlink(missing_ok=True)  # every call in it is stored now
                self._committed.set()

    def _count_call(self, call: CallRecord) -> None:
        s = self.stats
        if call.lane != Lane.BATCH:  # batch answers arrive in a few HTTP requests, counted apart
            s.requests += 1
        s.usage = s.usage + call.usage
        s.usd += call.cost_usd
        if call.outcome == "rate_limited":
            s.rate_limited += 1

    async def _flush(
        self, results: list[ResultRecord], calls: list[CallRecord], closes: list[BatchClose]
    ) -> None:
        await self.store.run(self.store.store.write, self.spec.name, results, calls, closes)
        self.stats.count([r.status for r in results])
        done = self.in_progress.pop
        for r in results:
            done(r.row_id, None)
