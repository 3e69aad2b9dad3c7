"""Bounded channels between the engine's stages: anyio's stream interface at asyncio's cost.

anyio's memory object streams build an Event and a TaskInfo for every receive that waits;
with 512 workers waiting on the work stream that cost ~45 µs per row, 7 % of the event
loop at 512 in flight (py-spy, c512 / 200 ms). These channels keep the same contract —
bounded, `clone()`d ends, EndOfStream once every sender closed, BrokenResourceError once
every receiver closed, cancellation-safe waits — on plain asyncio futures, like
`asyncio.Queue` (0.6-0.85 µs per item, reference/perf-facts.md). A receive or send that
need not wait returns without a checkpoint, as `asyncio.Queue` does; every stage awaits
real I/O between items, so cancellation still arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Generic, TypeVar

from anyio import BrokenResourceError, ClosedResourceError, EndOfStream, WouldBlock
from anyio.abc import ObjectReceiveStream, ObjectSendStream

T = TypeVar("T")


class _Shared(Generic[T]):
    __slots__ = ("buffer", "getters", "putters", "receivers", "senders", "size")

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("a channel holds at least one item")
        self.size = size
        self.buffer: deque[T] = deque()
        self.getters: deque[asyncio.Future[None]] = deque()
        self.putters: deque[asyncio.Future[None]] = deque()
        self.senders = 1
        self.receivers = 1

    @staticmethod
    def wake_one(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    @staticmethod
    def wake_all(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)


async def _wait(waiters: deque[asyncio.Future[None]]) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(fut)
    try:
        await fut
    except BaseException:
        if fut.done() and not fut.cancelled():
            _Shared.wake_one(waiters)  # woken and cancelled at once: pass the wake-up on
        else:
            # a timed-out wait leaves nothing behind (the writer times out 4 times a second)
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
        raise


class ChannelSender(ObjectSendStream[T]):
    """One sending end of a channel; the channel ends once every clone is closed."""

    __slots__ = ("_closed", "_shared")

    def __init__(self, shared: _Shared[T]):
        self._shared = shared
        self._closed = False

    def send_nowait(self, item: T) -> None:
        shared = self._shared
        if self._closed:
            raise ClosedResourceError
        if shared.receivers == 0:
            raise BrokenResourceError
        if len(shared.buffer) >= shared.size:
            raise WouldBlock
        shared.buffer.append(item)
        if shared.getters:
            shared.wake_one(shared.getters)

    async def send(self, item: T) -> None:
        shared = self._shared
        while True:
            try:
                self.send_nowait(item)
                return
            except WouldBlock:
                await _wait(shared.putters)
            if self._closed and len(shared.buffer) < shared.size:
                shared.wake_one(shared.putters)  # closed while woken: the room goes to another

    def clone(self) -> ChannelSender[T]:
        if self._closed:
            raise ClosedResourceError
        self._shared.senders += 1
        return ChannelSender(self._shared)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shared = self._shared
        shared.senders -= 1
        if shared.senders == 0:
            shared.wake_all(shared.getters)  # they find the buffer empty and end

    async def aclose(self) -> None:
        self.close()


class ChannelReceiver(ObjectReceiveStream[T]):
    """One receiving end of a channel; senders fail once every clone is closed."""

    __slots__ = ("_closed", "_shared")

    def __init__(self, shared: _Shared[T]):
        self._shared = shared
        self._closed = False

    def receive_nowait(self) -> T:
        shared = self._shared
        if self._closed:
            raise ClosedResourceError
        if shared.buffer:
            item = shared.buffer.popleft()
            if shared.putters:
                shared.wake_one(shared.putters)
            return item
        if shared.senders == 0:
            raise EndOfStream
        raise WouldBlock

    async def receive(self) -> T:
        shared = self._shared
        while True:
            try:
                return self.receive_nowait()
            except WouldBlock:
                await _wait(shared.getters)
            if self._closed and shared.buffer:
                shared.wake_one(shared.getters)  # closed while woken: the item goes to another

    def clone(self) -> ChannelReceiver[T]:
        if self._closed:
            raise ClosedResourceError
        self._shared.receivers += 1
        return ChannelReceiver(self._shared)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shared = self._shared
        shared.receivers -= 1
        if shared.receivers == 0:
            shared.buffer.clear()
            shared.wake_all(shared.putters)  # they find no receiver and fail

    async def aclose(self) -> None:
        self.close()


class channel(tuple[ChannelSender[T], ChannelReceiver[T]]):
    """`send, receive = channel[Item](size)`: a channel holding up to `size` items.

    A class only so that the item type can be given as anyio's
    `create_memory_object_stream[Item](size)` takes it; calling it returns the two ends."""

    def __new__(cls, size: int) -> tuple[ChannelSender[T], ChannelReceiver[T]]:  # type: ignore[misc]
        shared: _Shared[T] = _Shared(size)
        return ChannelSender(shared), ChannelReceiver(shared)
