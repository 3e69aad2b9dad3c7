"""Outages: the job pauses, probes, resumes or stops resumable; no row pays for the provider."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.core.breaker import Breaker, BreakerConfig, BreakerState, Signal
from pipeline.simproc import SimProcess
from tests.outage import OutageProxy, free_port
from tests.support import ROOT, run_cli, sql, ticket_rows, write_jsonl

KEY_ENV = "FP_TEST_KEY"


# -- the policy, on a fake clock ------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_scattered_faults_never_trip_the_breaker() -> None:
    clock = Clock()
    b = Breaker(BreakerConfig(), clock)
    for i in range(10_000):  # 1 fault in 6: far more than the hostile profile's 7.5 %
        clock.t += 0.01
        b.record(Signal.SERVER_ERROR if i % 6 == 0 else Signal.ANSWERED, "503")
    assert b.state is BreakerState.CLOSED


def test_nearly_all_faults_trip_it_and_one_probe_goes_out_on_a_growing_interval() -> None:
    clock = Clock()
    b = Breaker(BreakerConfig(first_probe_s=2, growth=2, max_probe_s=5, limit_s=60), clock)
    for _ in range(20):
        b.record(Signal.ANSWERED)
    first = clock.t + 1
    for _ in range(18):
        clock.t += 1
        b.record(Signal.SERVER_ERROR, "503 overloaded")
    assert b.state is BreakerState.OPEN
    outage = b.outage()
    assert outage is not None and outage.since == first
    assert b.covers(first) and not b.covers(first - 1)
    assert not b.claim_probe()  # not due yet
    clock.t += 2
    assert b.claim_probe() and not b.claim_probe()  # exactly one probe at a time
    gaps = []
    for _ in range(4):
        b.probe_done(Signal.NO_ANSWER, "timeout")
        o = b.outage()
        assert o is not None
        gaps.append(o.next_probe_at - clock.t)
        clock.t = o.next_probe_at
        assert b.claim_probe()
    assert gaps == [4, 5, 5, 5]  # grows, then capped
    b.probe_done(Signal.ANSWERED)
    assert b.state is BreakerState.CLOSED
    assert b.covers(clock.t - 1) and not b.covers(clock.t + 1)


def test_an_outage_past_the_limit_expires() -> None:
    clock = Clock()
    b = Breaker(BreakerConfig(limit_s=30), clock)
    for _ in range(10):
        b.record(Signal.ANSWERED)
    for _ in range(20):
        b.record(Signal.SERVER_ERROR, "503")
    while b.state is not BreakerState.EXPIRED:
        o = b.outage()
        assert o is not None and o.next_probe_at <= o.since + 30
        clock.t = o.next_probe_at
        assert b.claim_probe()
        b.probe_done(Signal.SERVER_ERROR, "503")
    assert clock.t == 1000 + 30


def test_no_connection_before_any_answer_stops_sooner() -> None:
    clock = Clock()
    b = Breaker(BreakerConfig(limit_s=900, start_limit_s=30), clock)
    for _ in range(10):
        b.record(Signal.NO_CONNECTION, "connect: refused")
    assert b.limit_s == 30
    b2 = Breaker(BreakerConfig(limit_s=900, start_limit_s=30), clock)
    b2.record(Signal.ANSWERED)
    for _ in range(20):
        b2.record(Signal.NO_CONNECTION, "connect: refused")
    assert b2.limit_s == 900


# -- real outages in front of the simulator -------------------------------------------------
@pytest.fixture
def proxy(sim_factory: Callable[..., SimProcess]) -> Iterator[OutageProxy]:
    sim = sim_factory("--latency-ms", "40", ledger=False)
    p = OutageProxy(sim.base_url("gemini")).start()
    yield p
    p.stop()


def job(tmp: Path, base_url: str, rows: int, extra: str = "") -> Path:
    src = write_jsonl(tmp / "in.jsonl", ticket_rows(rows))
    path = tmp / "job.toml"
    path.write_text(
        f"""
name = "out"
task = "classify"
model = "gemini-3.1-flash-lite-preview"
[input]
path = "{src}"
id = "id"
[provider]
base_url = "{base_url}"
api_key_env = "{KEY_ENV}"
timeout = {{ connect = 2, read = 5, total = 10 }}
[limits]
rpm = 0
concurrency = 8
max_attempts = 3
{extra}
[classify]
labels = ["billing", "bug", "account", "feature_request", "other"]
"""
    )
    return path


def start_run(job_path: Path, db: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, **{KEY_ENV: "sim-key"})
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(job_path), "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def stored(db: Path) -> int:
    try:
        snap = (Path(str(db) + ".status.json")).read_text()
    except OSError:
        return 0
    import json

    return int(json.loads(snap)["rows_done"])


def wait_for(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_20_s_outage_mid_job_pauses_then_every_row_ends_ok(
    proxy: OutageProxy, tmp_path: Path
) -> None:
    db = tmp_path / "s.duckdb"
    proc = start_run(job(tmp_path, proxy.url, 2000), db)
    wait_for(lambda: stored(db) >= 300, 60)
    proxy.set("refuse")
    down = time.monotonic()
    status = ""
    while time.monotonic() - down < 20:
        time.sleep(1)
        out = run_cli("status", "--db", str(db)).stdout
        if "PAUSED: provider unreachable since" in out:
            status = out
    proxy.set("up")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "PAUSED: provider unreachable since" in status and "next probe in" in status
    assert "PAUSED: provider unreachable since" in err  # the progress line showed it too
    assert sql(db, "SELECT status, count(*) FROM results GROUP BY 1") == [("ok", 2000)]
    # no row's attempts count the outage: the simulator is clean, so each row took one
    charged = sql(db, "SELECT row_id, attempts FROM results WHERE attempts > 1 LIMIT 5")
    assert charged == [], charged
    outage_calls = sql(db, "SELECT count(*) FROM calls WHERE outcome = 'outage'")[0][0]
    assert 0 < outage_calls < 200  # the in-flight calls and a handful of probes, not 2000x3


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_outage_past_the_limit_stops_resumable_and_the_next_run_finishes(
    proxy: OutageProxy, tmp_path: Path
) -> None:
    db = tmp_path / "s.duckdb"
    path = job(tmp_path, proxy.url, 1000, "outage_minutes = 0.2")  # 12 s
    proc = start_run(path, db)
    wait_for(lambda: stored(db) >= 100, 60)
    proxy.set("503")
    down = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 6, err
    assert 12 <= time.monotonic() - down < 40
    last = err.strip().splitlines()[-1]
    assert last.startswith("flashpipe: job 'out' stopped: provider unreachable at " + proxy.url)
    assert "Traceback" not in err
    assert sql(db, "SELECT count(*) FROM results WHERE status <> 'ok'") == [(0,)]
    assert sql(db, "SELECT state FROM jobs") == [("stopped",)]
    proxy.set("up")
    again = run_cli("run", str(path), "--db", str(db), env={KEY_ENV: "sim-key"})
    assert again.returncode == 0, again.stderr
    assert sql(db, "SELECT status, count(*), count(DISTINCT row_id) FROM results GROUP BY 1") == [
        ("ok", 1000, 1000)
    ]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_unreachable_provider_at_start_stops_within_a_minute_naming_the_url(
    tmp_path: Path,
) -> None:
    """A refused port and a host that does not resolve, run side by side (default limits)."""
    urls = {"refused": f"http://127.0.0.1:{free_port()}", "dns": "http://no-such-host.invalid"}
    env = dict(os.environ, **{KEY_ENV: "k"})
    t0 = time.monotonic()
    procs = {}
    for case, url in urls.items():
        (tmp_path / case).mkdir()
        path = job(tmp_path / case, url, 2000)
        db = tmp_path / case / "s.duckdb"
        cmd = [sys.executable, "-m", "pipeline", "run", str(path), "--db", str(db), "--quiet"]
        procs[case] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
    for case, proc in procs.items():
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 6, err
        assert time.monotonic() - t0 < 60
        lines = err.strip().splitlines()
        assert len(lines) == 1 and urls[case] in lines[0], err
        db = tmp_path / case / "s.duckdb"
        assert sql(db, "SELECT count(*) FROM results") == [(0,)]
        status = run_cli("status", "--db", str(db))
        assert "out: stopped" in status.stdout and "provider unreachable" in status.stdout
