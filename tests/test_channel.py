"""The engine's bounded channels keep anyio's stream contract."""

import asyncio

import anyio
import pytest

from pipeline.run.channel import ChannelReceiver, channel


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_items_arrive_in_order_and_the_stream_ends_when_every_sender_closed() -> None:
    send, recv = channel[int](4)
    other = send.clone()
    got: list[int] = []

    async def consume() -> None:
        async with recv:
            async for item in recv:
                got.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        async with send:
            for i in range(10):
                await send.send(i)
        await anyio.sleep(0.01)
        assert got == list(range(10))  # still open: `other` has not closed
        async with other:
            await other.send(10)
    assert got == list(range(11))


@pytest.mark.anyio
async def test_a_full_channel_holds_the_sender_until_a_receiver_takes() -> None:
    send, recv = channel[int](2)
    send.send_nowait(1)
    send.send_nowait(2)
    with pytest.raises(anyio.WouldBlock):
        send.send_nowait(3)
    sent = anyio.Event()

    async def produce() -> None:
        await send.send(3)
        sent.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await anyio.sleep(0.01)
        assert not sent.is_set()
        assert recv.receive_nowait() == 1
        await sent.wait()
    assert [recv.receive_nowait(), recv.receive_nowait()] == [2, 3]


@pytest.mark.anyio
async def test_many_receivers_share_the_items_each_exactly_once() -> None:
    send, recv = channel[int](8)
    seen: list[int] = []

    async def worker(mine: ChannelReceiver[int]) -> None:
        async with mine:
            async for item in mine:
                seen.append(item)
                await anyio.sleep(0)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(worker, recv.clone())
            recv.close()
            async with send:
                for i in range(1000):
                    await send.send(i)
                # every item is taken while the channel is still open: closing would wake
                # every waiter and hide a lost wake-up
                while len(seen) < 1000:
                    await anyio.sleep(0.001)
    assert sorted(seen) == list(range(1000))


@pytest.mark.anyio
async def test_a_receiver_cancelled_as_it_is_woken_passes_the_item_on() -> None:
    send, recv = channel[int](4)
    got: list[tuple[str, int]] = []

    async def take(name: str) -> None:
        got.append((name, await recv.receive()))

    loop = asyncio.get_running_loop()
    first = loop.create_task(take("first"))
    await anyio.sleep(0.01)
    second = loop.create_task(take("second"))
    await anyio.sleep(0.01)
    send.send_nowait(1)  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    with anyio.fail_after(2):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert got == [("second", 1)]


@pytest.mark.anyio
async def test_a_receiver_closed_while_woken_leaves_the_item_to_another() -> None:
    send, recv = channel[int](4)
    other = recv.clone()
    got: list[int] = []
    failed: list[BaseException] = []

    async def take_closed() -> None:
        try:
            await recv.receive()
        except anyio.ClosedResourceError as exc:
            failed.append(exc)

    async def take_other() -> None:
        got.append(await other.receive())

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take_closed)
            await anyio.sleep(0.01)
            tg.start_soon(take_other)
            await anyio.sleep(0.01)
            send.send_nowait(5)  # wakes the first waiter
            recv.close()  # whose end closes before it runs
    assert got == [5] and len(failed) == 1


@pytest.mark.anyio
async def test_timed_out_waits_leave_no_waiter_behind() -> None:
    send, recv = channel[int](4)
    for _ in range(200):
        with anyio.move_on_after(0.0005):
            await recv.receive()
    assert not recv._shared.getters  # the writer times out 4 times a second, for hours
    send.send_nowait(1)
    assert await recv.receive() == 1


@pytest.mark.anyio
async def test_the_stream_ends_only_after_buffered_items_and_closed_ends_refuse_use() -> None:
    send, recv = channel[int](4)
    send.send_nowait(1)
    send.send_nowait(2)
    send.close()
    assert [item async for item in recv] == [1, 2]
    with pytest.raises(anyio.EndOfStream):
        recv.receive_nowait()
    with pytest.raises(anyio.ClosedResourceError):
        await send.send(3)
    with pytest.raises(anyio.ClosedResourceError):
        send.clone()
    recv.close()
    with pytest.raises(anyio.ClosedResourceError):
        recv.clone()


@pytest.mark.anyio
async def test_a_cancelled_wait_loses_no_item() -> None:
    send, recv = channel[int](1)
    with anyio.move_on_after(0.01):
        await recv.receive()  # cancelled while waiting
    send.send_nowait(7)
    assert await recv.receive() == 7
    send.send_nowait(8)
    with anyio.move_on_after(0.01):
        await send.send(9)  # cancelled while the channel is full
    assert recv.receive_nowait() == 8
    with pytest.raises(anyio.WouldBlock):
        recv.receive_nowait()


@pytest.mark.anyio
async def test_sending_after_every_receiver_closed_fails_loudly() -> None:
    send, recv = channel[int](1)
    send.send_nowait(1)
    blocked: list[BaseException] = []

    async def produce() -> None:
        try:
            await send.send(2)
        except anyio.BrokenResourceError as exc:
            blocked.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await anyio.sleep(0.01)
        recv.close()
    assert len(blocked) == 1
    with pytest.raises(anyio.BrokenResourceError):
        send.send_nowait(3)
    with pytest.raises(anyio.ClosedResourceError):
        recv.receive_nowait()
