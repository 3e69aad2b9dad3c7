"""The store's own thread: the event loop hands it every store call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import duckdb

from pipeline.core.records import BatchRow
from pipeline.store.disk import store_fault
from pipeline.store.store import Store

T = TypeVar("T")


class StoreThread:
    """Runs every store call on one dedicated thread, so the event loop never blocks on DuckDB."""

    def __init__(self, store: Store):
        self.store = store
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flashpipe-store")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the store's thread; a disk or file fault becomes one StoreError line."""
        try:
            return await asyncio.wrap_future(self._pool.submit(fn, *args))
        except (duckdb.Error, OSError) as exc:
            action = getattr(fn, "__name__", "use the store").replace("_", " ")
            raise store_fault(self.store.path, action, exc) from None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        # a connection a disk fault invalidated has nothing left to save
        with contextlib.suppress(duckdb.Error):
            self.store.close()


class StoredBatches:
    """A job's provider batches in the store, as the Batch lane keeps them (its BatchBook)."""

    def __init__(self, thread: StoreThread, job: str):
        self.thread = thread
        self.job = job

    async def open_batches(self) -> list[dict[str, Any]]:
        return await self.thread.run(self.thread.store.open_batches, self.job)

    async def record(
        self, batch_id: str, rows: list[BatchRow], requests: int, reserved: Decimal
    ) -> None:
        store = self.thread.store
        await self.thread.run(store.record_batch, self.job, batch_id, rows, requests, reserved)

    async def rows(self, batch_id: str) -> list[BatchRow]:
        return await self.thread.run(self.thread.store.batch_rows, self.job, batch_id)

    async def submitted(self, batch_id: str, provider_name: str) -> None:
        store = self.thread.store
        await self.thread.run(store.batch_submitted, self.job, batch_id, provider_name)

    async def state(self, batch_id: str, state: str) -> None:
        await self.thread.run(self.thread.store.batch_state, self.job, batch_id, state)
