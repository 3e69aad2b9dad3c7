"""One JSON line per request, buffered and flushed periodically and at exit."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, BinaryIO

import orjson


class Ledger:
    def __init__(self, path: str | None, every: float = 0.5):
        self.path = path
        self.every = every
        self.buffer: list[bytes] = []
        self.file: BinaryIO | None = open(path, "ab") if path else None  # noqa: SIM115
        self.task: asyncio.Task[None] | None = None

    def record(self, entry: dict[str, Any]) -> None:
        if self.file is not None:
            self.buffer.append(orjson.dumps(entry) + b"\n")

    def flush(self) -> None:
        if self.file is not None and self.buffer:
            self.file.write(b"".join(self.buffer))
            self.buffer.clear()
            self.file.flush()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.flush()

    def start(self) -> None:
        if self.file is not None:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.flush()
        if self.file is not None:
            self.file.close()
            self.file = None
