"""Speed benches: simulator, throughput vs baselines, real latency, packing, peers, estimate."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline.simproc import SimProcess
from tests.bench import clients, data, measure
from tests.bench.report import Section, rates


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def steady_rate(db: Path, job: str, trim: float = 0.1) -> float:
    """Calls per second between the first and last `trim` of the run's call span."""
    ts = [
        r[0]
        for r in measure.query(
            db, "SELECT epoch(started_at) FROM calls WHERE job = ? ORDER BY 1", job
        )
    ]
    if len(ts) < 10:
        return 0.0
    span = ts[-1] - ts[0]
    lo, hi = ts[0] + trim * span, ts[-1] - trim * span
    n = sum(1 for t in ts if lo <= t <= hi)
    return n / (hi - lo) if hi > lo else 0.0


def bench_sim(sec: Section) -> None:
    src = data.tickets_jsonl(50_000)
    with SimProcess([]) as sim:
        reqs = clients.requests_for(data.job_doc("sim", src, sim.base_url("gemini")))
        r = clients.aiohttp_loop(reqs, 256, seconds=10)
    sec.add("simulator req/s, clean, bare aiohttp at 256 in flight", f"{r.rate:,.0f} req/s")
    sec.note(
        f"{r.done:,} requests in {r.seconds:.1f} s ({r.errors} errors); the simulator is one "
        "aiohttp process on one core, so it caps every throughput figure below"
    )


ROUNDS = 3  # alternating runs of flashpipe and each baseline; the medians are compared


def bench_throughput(sec: Section, rows: int = 50_000) -> None:
    src = data.tickets_jsonl(rows)
    with SimProcess([]) as sim:
        for conc in (64, 256):
            doc = data.job_doc(f"tput{conc}", src, sim.base_url("gemini"), concurrency=conc)
            reqs = clients.requests_for(doc)
            fps: list[float] = []
            aios: list[clients.LoopResult] = []
            naives: list[clients.LoopResult] = []
            for _ in range(ROUNDS):  # alternating: a slow spell of the machine hits all three
                p = measure.run_job(doc, measure.fresh_db(f"tput{conc}"))
                fps.append(rows / p.elapsed_s)
                aios.append(clients.aiohttp_loop(reqs, conc))
                naives.append(clients.httpx_loop(reqs, conc, seconds=10))
            fp = statistics.median(fps)
            aio = statistics.median(r.rate for r in aios)
            naive = statistics.median(r.rate for r in naives)
            sec.add(
                f"c{conc}: flashpipe rows/s vs one httpx.AsyncClient",
                f"{fp:,.0f} rows/s",
                f"{naive:,.0f} req/s",
                _ratio(fp, naive),
                ">= 1.5",
                _ratio(fp, naive) >= 1.5,
            )
            sec.add(
                f"c{conc}: flashpipe rows/s vs bare aiohttp loop (ceiling)",
                f"{fp:,.0f} rows/s",
                f"{aio:,.0f} req/s",
                _ratio(fp, aio),
                ">= 0.6" if conc == 64 else "-",
                _ratio(fp, aio) >= 0.6 if conc == 64 else None,
            )
            sec.note(
                f"c{conc}: medians of {ROUNDS} alternating runs of each; flashpipe "
                f"{rates(fps)} rows/s ({rows:,} rows each, its own summary); bare aiohttp "
                f"{rates([r.rate for r in aios])} req/s ({rows:,} requests); httpx "
                f"{rates([r.rate for r in naives])} req/s over 10 s windows, as {rows:,} would "
                "take minutes"
            )
    sec.note(
        "the ratio against the bare loop is what flashpipe's own work per row costs: both send "
        "the same bodies to the same simulator, CPU-bound on one core while the simulator takes "
        "the other. This machine's speed drifts by up to 2x between minutes, so each figure is "
        "a median of runs that alternate with its baseline's"
    )


def bench_latency(sec: Section, rows: int = 30_000) -> None:
    src = data.tickets_jsonl(rows)
    with SimProcess(["--latency-ms", "200"]) as sim:
        for conc in (512, 1024):
            doc = data.job_doc(f"lat{conc}", src, sim.base_url("gemini"), concurrency=conc)
            db = measure.fresh_db(f"lat{conc}")
            p = measure.run_job(doc, db)
            steady = steady_rate(db, doc["name"])
            ideal = conc / 0.2
            frac = steady / ideal
            sec.add(
                f"c{conc}, 200 ms: steady rows/s / ideal",
                f"{steady:,.0f} rows/s",
                f"{ideal:,.0f} (c / 0.2 s)",
                frac,
                ">= 0.6" if conc == 512 else "-",
                frac >= 0.6 if conc == 512 else None,
            )
            sec.note(
                f"c{conc}: {rows:,} rows in {p.elapsed_s:.1f} s end to end "
                f"({rows / p.elapsed_s:,.0f} rows/s); steady = call starts in the middle 80 % "
                "of the run"
            )
            bare = clients.aiohttp_loop(clients.requests_for(doc), conc)
            sec.add(
                f"  c{conc}, 200 ms: a bare aiohttp loop, same requests (the client's ceiling)",
                f"{bare.rate:,.0f} req/s",
                f"{ideal:,.0f}",
                bare.rate / ideal,
            )
            sec.add(
                f"  c{conc}, 200 ms: flashpipe steady rows/s vs the bare loop",
                f"{steady:,.0f} rows/s",
                f"{bare.rate:,.0f} req/s",
                _ratio(steady, bare.rate),
            )
        sec.note(
            "at c1024 the ideal (5,120 req/s) is past what one simulator process serves with "
            "200 ms sleeps beside a client on the other core, so the bare loop is the ceiling "
            "to read it against: a share of ideal alone moved 0.44-0.68 between runs on "
            "2026-12-03, flashpipe against the loop 0.84-0.92"
        )
        sec.note(
            "flashpipe is CPU-bound on one core while the simulator takes the other, so this "
            "figure drops whenever anything else takes CPU. A py-spy profile of `flashpipe run` "
            "at c512 / 200 ms (2026-12-01, `py-spy record --gil -r 200 -f raw`) puts the event "
            "loop's samples at 51 % aiohttp (request setup, send, response), 35 % flashpipe "
            "(dispatch, judging, records, journal; 4 % of it dataclass construction), 6 % asyncio "
            "and under 1 % anyio. Two changes lifted c512 from 0.58-0.70 to 0.78-0.94 of ideal "
            "on this machine (alternating runs): the stages' bounded channels wait on asyncio "
            "futures instead of anyio memory streams, whose every waiting receive built an Event "
            "and a TaskInfo (~45 µs per row with 512 waiting workers), and the cyclic GC runs at "
            "a 100k gen-0 threshold with the start-up objects frozen. The bare loop above does "
            "none of the per-row work"
        )


def bench_packing(sec: Section, rows: int = 5_000) -> None:
    src = data.tickets_jsonl(rows)
    with SimProcess([]) as sim:
        for per in (1, 10, 20, 25):
            doc = data.job_doc(
                f"pack{per}", src, sim.base_url("gemini"), rows_per_request=per, concurrency=64
            )
            db = measure.fresh_db(f"pack{per}")
            p = measure.run_job(doc, db)
            ((tokens, calls),) = measure.query(
                db,
                "SELECT sum(input_tokens + cached_tokens), count(*) FROM calls WHERE job = ?",
                doc["name"],
            )
            sec.add(
                f"rows_per_request {per}",
                f"{tokens / rows:.1f} input tokens/row, {rows / p.elapsed_s:,.0f} rows/s",
            )
            sec.note(f"rows_per_request {per}: {calls:,} calls, {p.elapsed_s:.1f} s")


def bench_estimate(sec: Section) -> None:
    big = data.tickets_parquet(1_000_000)
    sample_rows = 20_000
    sample = data.tickets_parquet(sample_rows)  # the same first 20,000 rows
    with SimProcess([]) as sim:
        doc = data.job_doc("estimate", big, sim.base_url("gemini"), concurrency=64)
        job = data.write_toml(doc, data.data_dir() / "estimate.toml")
        p = measure.flashpipe("estimate", str(job), "--json")
        if p.code != 0:
            raise RuntimeError(f"estimate failed: {p.stderr[-500:]}")
        est = orjson.loads(p.stdout)
        doc_s = data.job_doc("estimate-sample", sample, sim.base_url("gemini"), concurrency=64)
        db = measure.fresh_db("estimate-sample")
        measure.run_job(doc_s, db)
    c = measure.flashpipe("cost", "--json", "--db", str(db))
    actual = float(orjson.loads(c.stdout)["total_usd"])
    predicted = float(est["usd"]) * sample_rows / int(est["rows"])
    sec.add("estimate wall time, 1M-row Parquet", f"{p.wall_s:.2f} s", target="< 2 s")
    sec.lines[-1].passed = p.wall_s < 2
    err = abs(predicted - actual) / actual
    sec.add(
        "estimate USD (scaled to 20,000 rows) vs actual simulator cost",
        f"${predicted:.4f}",
        f"${actual:.4f}",
        predicted / actual,
        "within 15 %",
        err <= 0.15,
    )
    sec.note(
        f"estimate said ${est['usd']} for {int(est['rows']):,} rows; wall time includes the "
        "interpreter start of `python -m pipeline estimate`"
    )


def bench_peers(sec: Section, rows: int = 20_000) -> None:
    src = data.tickets_jsonl(rows)
    with SimProcess([]) as sim:
        doc = data.job_doc("peers", src, sim.base_url("openai"), api="openai", concurrency=64)
        p = measure.run_job(doc, measure.fresh_db("peers"))
        fp = rows / p.elapsed_s
        reqs = clients.requests_for(doc)
        cook = clients.cookbook_processor(
            reqs,
            data.data_dir() / "cookbook_results.jsonl",
            max_requests_per_minute=1e9,
            max_tokens_per_minute=1e12,
            max_connections=64,
        )
        cur = curator_peer(sim.base_url("openai"), src, rows, 64)
    sec.add(
        "flashpipe vs cookbook parallel processor (OpenAI endpoint, 64 connections)",
        f"{fp:,.0f} rows/s",
        f"{cook.rate:,.0f} rows/s",
        _ratio(fp, cook.rate),
    )
    sec.note(
        f"cookbook: {cook.done:,} ok, {cook.errors} failed in {cook.seconds:.1f} s; its main "
        "loop sleeps 1 ms per turn and dispatches at most one request per turn"
    )
    if isinstance(cur, str):
        sec.note(cur)
        return
    sec.add(
        "flashpipe vs bespokelabs-curator (OpenAI backend, 64 concurrent requests)",
        f"{fp:,.0f} rows/s",
        f"{cur['rows'] / cur['seconds']:,.0f} rows/s",
        _ratio(fp, cur["rows"] / cur["seconds"]),
    )
    sec.note(
        f"curator {cur['version']}: {cur['rows']:,} rows in {cur['seconds']:.1f} s (its own "
        f"`llm(dataset)` call, setup excluded); installed once into tests/bench/_data/"
        f"curator-venv ({cur['install']}); its tiktoken encoding cannot be downloaded here, so "
        "tests/bench/curator_peer.py counts 4 characters per token for curator's TPM limiter only"
    )


CURATOR_VENV = Path(__file__).parent / "_data" / "curator-venv"


def curator_peer(base_url: str, src: Path, rows: int, concurrency: int) -> dict[str, Any] | str:
    """Run bespokelabs-curator in its own venv (installed on first use, never a flashpipe
    dependency) on the same rows; a sentence saying why when it cannot run."""
    python = CURATOR_VENV / "bin" / "python"
    install = "already there"
    if not python.exists():
        t0 = time.monotonic()
        try:
            subprocess.run([sys.executable, "-m", "venv", str(CURATOR_VENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "bespokelabs-curator"],
                check=True,
                capture_output=True,
                timeout=600,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            shutil.rmtree(CURATOR_VENV, ignore_errors=True)
            return f"bespokelabs-curator: not measured, it could not be installed ({exc})"
        install = f"install took {time.monotonic() - t0:.0f} s"
    version = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; print(m.version('bespokelabs-curator'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    cache = CURATOR_VENV.parent / "curator-cache"
    shutil.rmtree(cache, ignore_errors=True)  # curator answers a repeated run from its cache
    script = Path(__file__).parent / "curator_peer.py"
    try:
        r = subprocess.run(
            [str(python), str(script), base_url, str(src), str(rows), str(concurrency), str(cache)],
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return "bespokelabs-curator: not measured (no answer within 15 min)"
    last = (r.stdout.strip().splitlines() or ["{}"])[-1]
    if r.returncode != 0 or not last.startswith("{"):
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"bespokelabs-curator: not measured, the run failed ({tail})"
    result: dict[str, Any] = json.loads(last)
    result["version"] = version
    result["install"] = install
    return result
