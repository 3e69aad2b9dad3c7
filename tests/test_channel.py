"""The engine's bounded channels keep anyio's stream contract."""

import anyio
import pytest

from pipeline.channel import ChannelReceiver, channel


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

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(worker, recv.clone())
        recv.close()
        async with send:
            for i in range(1000):
                await send.send(i)
    assert sorted(seen) == list(range(1000))


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
