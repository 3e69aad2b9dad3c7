"""Command line: parse the flags, bind, print the listening line, serve until a signal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from aiohttp import web

from pipeline.sim.faults import PROFILES, parse_rate
from pipeline.sim.server import Config, Sim


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="flashpipe sim", description="Serve the provider simulator.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--profile", default="clean", choices=sorted(PROFILES))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--key", default="sim-key", help="the only API key accepted")
    p.add_argument("--latency-ms", type=float, default=None)
    p.add_argument("--rpm", type=int, default=None)
    p.add_argument("--tpm", type=int, default=None)
    p.add_argument("--rpd", type=int, default=None)
    p.add_argument("--ledger", default=None, help="append one JSON line per request")
    p.add_argument("--fault", action="append", default=[], metavar="NAME=RATE")
    p.add_argument("--hang-seconds", type=float, default=30.0)
    p.add_argument("--cache-min-tokens", type=int, default=1024)
    p.add_argument("--flex-shed", type=float, default=0.0, help="share of Flex calls refused")
    p.add_argument("--flex-slowdown", type=float, default=2.0)
    p.add_argument("--batch-seconds", type=float, default=2.0, help="time to finish a batch")
    p.add_argument(
        "--batch-create-delay",
        type=float,
        default=0.0,
        help="the first batch create is registered at once but answered this many seconds late",
    )
    p.add_argument(
        "--batch-fault",
        action="append",
        default=[],
        metavar="ok|expire|fail|invalid=SHARE|stall[=SECONDS]|lie",
        help="the fate of the next created batch (repeat: one per batch, in order)",
    )
    p.add_argument(
        "--token-seconds",
        type=float,
        default=3600.0,
        help="life of a Vertex AI access token issued by /token",
    )
    a = p.parse_args(argv)
    try:
        faults = dict(parse_rate(f) for f in a.fault)
    except ValueError as e:
        p.error(str(e))
    for fate in a.batch_fault:
        number = fate.partition("=")[2]
        if fate not in ("ok", "expire", "fail", "stall", "lie") and not (
            fate.startswith(("invalid=", "stall=")) and number.replace(".", "", 1).isdigit()
        ):
            p.error(
                f"--batch-fault {fate!r}: expected ok, expire, fail, invalid=SHARE,"
                " stall[=SECONDS] or lie"
            )
    return Config(
        host=a.host,
        port=a.port,
        profile=a.profile,
        seed=a.seed,
        key=a.key,
        latency_ms=a.latency_ms,
        rpm=a.rpm,
        tpm=a.tpm,
        rpd=a.rpd,
        ledger=a.ledger,
        faults=faults,
        hang_seconds=a.hang_seconds,
        cache_min_tokens=a.cache_min_tokens,
        flex_shed=a.flex_shed,
        flex_slowdown=a.flex_slowdown,
        batch_seconds=a.batch_seconds,
        batch_faults=list(a.batch_fault),
        batch_create_delay=a.batch_create_delay,
        token_seconds=a.token_seconds,
    )


async def serve(cfg: Config) -> int:
    sim = Sim(cfg)
    runner = web.AppRunner(
        sim.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, backlog=2048)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    sim.ledger.start()
    port = runner.addresses[0][1]
    sys.stdout.write(f"flashpipe-sim listening on http://{cfg.host}:{port}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await sim.ledger.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    # a plain loop, not asyncio.run: its own SIGINT handling would turn SIGINT into an error
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(serve(cfg))
    finally:
        loop.close()
