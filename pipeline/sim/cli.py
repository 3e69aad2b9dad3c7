"""Command line: parse the flags, bind, print the listening line, serve until a signal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from aiohttp import web

from pipeline.sim.config import Config
from pipeline.sim.faults import PROFILES, parse_rate
from pipeline.sim.server import Sim


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="flashpipe sim", description="Serve the provider simulator.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--profile", default="clean", choices=sorted(PROFILES))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--key",
        action="append",
        default=None,
        metavar="KEY[=PROJECT]",
        help="an API key accepted (repeat for more); keys of one PROJECT share its quota",
    )
    p.add_argument("--latency-ms", type=float, default=None)
    for limit in ("rpm", "tpm", "rpd"):
        p.add_argument(
            f"--{limit}",
            action="append",
            default=[],
            metavar="N|PROJECT=N",
            help=f"{limit} of every project, or of one project (repeatable)",
        )
    p.add_argument("--ledger", default=None, help="append one JSON line per request")
    p.add_argument("--fault", action="append", default=[], metavar="NAME=RATE")
    p.add_argument("--hang-seconds", type=float, default=30.0)
    p.add_argument(
        "--fault-retry-s", type=float, default=1.0, help="retryDelay of an injected Gemini 429"
    )
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
        keys = [k.partition("=") for k in (a.key or ["sim-key"])]
        limits = {name: _limits(getattr(a, name)) for name in ("rpm", "tpm", "rpd")}
    except ValueError as e:
        p.error(str(e))
    main_key = keys[0][0]
    projects = {k: (proj if sep else k) for k, sep, proj in keys}
    per_project: dict[str, tuple[int | None, int | None, int | None]] = {}
    for name in {proj for _, per in limits.values() for proj in per}:
        per_project[name] = (
            limits["rpm"][1].get(name, limits["rpm"][0]),
            limits["tpm"][1].get(name, limits["tpm"][0]),
            limits["rpd"][1].get(name, limits["rpd"][0]),
        )
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
        key=main_key,
        latency_ms=a.latency_ms,
        rpm=limits["rpm"][0],
        tpm=limits["tpm"][0],
        rpd=limits["rpd"][0],
        keys=projects,
        fault_retry_s=a.fault_retry_s,
        project_limits=per_project,
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


def _limits(values: list[str]) -> tuple[int | None, dict[str, int]]:
    """['600', 'acme-1=300'] -> (600, {'acme-1': 300})."""
    default: int | None = None
    per: dict[str, int] = {}
    for value in values:
        name, sep, n = value.rpartition("=")
        if not n.isdigit():
            raise ValueError(f"{value!r}: expected N or PROJECT=N")
        if sep:
            per[name] = int(n)
        else:
            default = int(n)
    return default, per


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
