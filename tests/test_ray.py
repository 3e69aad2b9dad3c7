"""flashpipe on a real Ray cluster on this machine: a head and a second node (Ray's own
cluster_utils), the simulator over loopback, a real DuckDB file. One cluster for the module."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from pipeline.core.pricing import cost_usd
from pipeline.core.usage import Usage
from pipeline.errors import BudgetExhausted, SpecError
from pipeline.pricing import resolve_prices
from pipeline.simproc import SimProcess
from tests.support import (
    ROOT,
    ledger_of,
    make_spec,
    read_ledger,
    run_cli,
    run_sync,
    sql,
    ticket_rows,
    write_jsonl,
)

pytestmark = pytest.mark.timeout(300)

KEYS = {"FP_RAY_KEY_MAIN": "sim-key", "FP_RAY_KEY_A": "ray-key-a", "FP_RAY_KEY_B": "ray-key-b"}
TWO_POOLS = [
    {"api_key_env": "FP_RAY_KEY_A", "project": "proj-a", "rpm": 120},
    {"api_key_env": "FP_RAY_KEY_B", "project": "proj-b", "rpm": 240},
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    # the nodes' processes inherit this environment: that is how workers get their keys
    os.environ.update(KEYS)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    second = c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, include_dashboard=False)
    state = {"cluster": c, "second": second}
    try:
        yield state
    finally:
        ray.shutdown()
        c.shutdown()


def ray_spec(sim: SimProcess, src: Path, workers: int = 4, name: str = "t", **extra: Any) -> Any:
    doc: dict[str, Any] = {
        "engine": {"kind": "ray", "workers": workers},
        "provider": {"api_key_env": "FP_RAY_KEY_MAIN"},
        "limits": {"concurrency": 8},
    }
    for k, v in extra.items():
        doc[k] = {**doc.get(k, {}), **v}
    return make_spec(sim, src, name=name, extra=doc)


def windows(times: list[float], span: float) -> int:
    """The most events in any window of `span` seconds."""
    times = sorted(times)
    best = j = 0
    for i, t in enumerate(times):
        while times[j] <= t - span:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_every_row_is_stored_exactly_once_with_four_workers(
    cluster: dict[str, Any], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--latency-ms", "20")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(400))
    db = tmp_path / "s.duckdb"
    summary = run_sync(ray_spec(sim, src), db)
    assert summary.state == "done" and summary.rows == {"ok": 400}
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(400, 400)]
    again = run_sync(ray_spec(sim, src, workers=1), db)  # a second run finds nothing to do
    assert again.rows == {} and again.requests == 0
    sim.stop()  # the ledger is complete once the simulator has stopped
    billed = sum(1 for e in read_ledger(sim.ledger) if e["billed"])
    # every billed call is stored, once, with its pool; costs add up
    assert sql(db, "SELECT count(*), count(DISTINCT call_id) FROM calls") == [(billed, billed)]
    assert sql(db, "SELECT DISTINCT pool FROM calls") == [("default",)]
    assert sql(db, "SELECT sum(cost_usd) FROM results") == sql(
        db, "SELECT sum(cost_usd) FROM calls"
    )


def test_a_capped_job_stops_at_its_budget_and_the_provider_billed_no_more(
    cluster: dict[str, Any], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--latency-ms", "20")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(400))
    db = tmp_path / "s.duckdb"
    cap = Decimal("0.01")  # about half of what the 400 rows cost
    spec = ray_spec(sim, src, budget={"max_usd": float(cap)})
    with pytest.raises(BudgetExhausted, match=r"stopped at its budget \(max_usd 0\.01") as stop:
        run_sync(spec, db)
    assert stop.value.exit_code == 3  # as in one process
    assert sql(db, "SELECT state FROM jobs")[0][0] == "budget_exhausted"
    stored = sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results")[0]
    assert stored[0] == stored[1] and 150 < stored[0] < 400  # near the cap; the rest pending
    time.sleep(1.0)  # the simulator flushes its ledger every 0.5 s
    prices = resolve_prices(spec)
    billed = [e["usage"] for e in read_ledger(sim.ledger) if e["billed"]]  # type: ignore[attr-defined]
    paid = sum(
        cost_usd(Usage(u["prompt"] - u["cached"], u["cached"], u["output"], u["thinking"]), prices)
        for u in billed
    )
    assert paid <= cap  # what the provider billed, whatever the four workers had in flight
    # the rest is pending, and a higher budget finishes it with no row paid twice
    summary = run_sync(ray_spec(sim, src, workers=2, budget={"max_usd": 1.0}), db)
    assert summary.state == "done"
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(400, 400)]
    twice = sql(
        db,
        "SELECT count(*) FROM (SELECT unnest(row_ids) r FROM calls) GROUP BY r HAVING count(*) > 1",
    )
    assert twice == []


def test_a_key_missing_on_the_workers_nodes_is_a_one_line_error(
    cluster: dict[str, Any],
    sim_factory: Callable[..., SimProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory()
    monkeypatch.setenv("FP_RAY_KEY_DRIVER_ONLY", "sim-key")  # not in the nodes' environment
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(5))
    spec = ray_spec(sim, src, workers=1, provider={"api_key_env": "FP_RAY_KEY_DRIVER_ONLY"})
    with pytest.raises(SpecError, match=r"Ray worker .*FP_RAY_KEY_DRIVER_ONLY .*is not set"):
        run_sync(spec, tmp_path / "s.duckdb")


@pytest.mark.slow
def test_two_pools_each_hold_their_quota_across_four_workers(
    cluster: dict[str, Any], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory(
        "--key", "ray-key-a=proj-a", "--key", "ray-key-b=proj-b",
        "--rpm", "proj-a=120", "--rpm", "proj-b=240", "--latency-ms", "20",
    )  # fmt: skip
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(150))
    db = tmp_path / "s.duckdb"
    summary = run_sync(ray_spec(sim, src, provider={"pool": TWO_POOLS}), db)
    assert summary.rows == {"ok": 150}
    sim.stop()
    ledger = read_ledger(sim.ledger)
    assert [e for e in ledger if e["status"] == 429] == []  # no quota 429 from either project
    for project, rpm in (("proj-a", 120), ("proj-b", 240)):
        times = [e["t"] for e in ledger if e["project"] == project]
        assert times, project
        assert windows(times, 10.0) <= rpm / 6 * 1.1 + 1, project
    by_pool = dict(sql(db, "SELECT pool, count(*) FROM calls GROUP BY pool"))
    assert by_pool["proj-b"] > by_pool["proj-a"]  # work goes where the capacity is


def test_a_gemini_429_burst_closes_the_gate_for_every_worker(
    cluster: dict[str, Any], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--latency-ms", "100", "--fault-retry-s", "3")
    rows = ticket_rows(700)
    for r in rows[450:474]:  # answered once by a 429 with retryDelay 3 s, once all workers run
        r["text"] += " [[sim:429*1]]"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    db = tmp_path / "s.duckdb"
    summary = run_sync(ray_spec(sim, src, limits={"concurrency": 4}), db)
    assert summary.rows == {"ok": 700}
    # (start time, worker): call ids carry the worker's number
    calls = [
        (t.timestamp(), int(cid.split("-")[0]) % 1000, outcome)
        for cid, t, outcome in sql(db, "SELECT call_id, started_at, outcome FROM calls")
    ]
    calls.sort()
    first_429 = min(t for t, _, o in calls if o == "rate_limited")
    # every gap of 2 s or more between two calls, by when it began; rows whose 429 came after
    # the first pause may pause the job again, so any of them may be the longest
    pauses = [a[0] for a, b in itertools.pairwise(calls) if b[0] - a[0] >= 2.0]
    # the job paused for most of the server's 3 s right after the first 429s: no worker sent...
    at = min((t for t in pauses if t >= first_429 - 0.1), default=None)
    assert at is not None and at <= first_429 + 2.0, (first_429, pauses)
    # ...though several workers had been sending just before
    before = {w for t, w, _ in calls if at - 1.0 <= t <= at}
    assert len(before) >= 3, before


def test_a_pool_benched_by_its_daily_quota_finishes_on_the_other(
    cluster: dict[str, Any], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory(
        "--key", "ray-key-a=proj-a", "--key", "ray-key-b=proj-b", "--rpd", "proj-a=15"
    )
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(200))
    db = tmp_path / "s.duckdb"
    pools = [{**p, "rpm": 0} for p in TWO_POOLS]
    summary = run_sync(ray_spec(sim, src, workers=2, provider={"pool": pools}), db)
    assert summary.state == "done" and summary.rows == {"ok": 200}
    ok = dict(sql(db, "SELECT pool, count(*) FROM calls WHERE outcome = 'ok' GROUP BY pool"))
    assert ok["proj-a"] <= 15 and ok["proj-a"] + ok["proj-b"] == 200


@pytest.mark.slow
def test_a_projects_daily_quota_spent_by_an_earlier_job_is_remembered(
    cluster: dict[str, Any], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--key", "ray-key-a=proj-a", "--key", "ray-key-b=proj-b")
    db = tmp_path / "s.duckdb"
    pools = [{**p, "rpm": 0, "rpd": 15} for p in TWO_POOLS]
    first = ray_spec(sim, write_jsonl(tmp_path / "a.jsonl", ticket_rows(15)), workers=2,
                     provider={"pool": pools[:1]})  # fmt: skip
    assert run_sync(first, db).rows == {"ok": 15}  # proj-a's 15 requests of the day
    # another job in the same store, the same day: the simulator has no per-day limit, so
    # only flashpipe's own count keeps it off proj-a
    src = write_jsonl(tmp_path / "b.jsonl", ticket_rows(30)[15:])  # new rows: not cached
    second = ray_spec(sim, src, workers=2, name="t2", provider={"pool": pools})
    assert run_sync(second, db).rows == {"ok": 15}
    by_pool = dict(sql(db, "SELECT pool, count(*) FROM calls WHERE job = 't2' GROUP BY pool"))
    assert by_pool == {"proj-b": 15}


@pytest.mark.slow
def test_a_killed_broker_is_recreated_without_a_burst(
    cluster: dict[str, Any], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--rpm", "600", "--latency-ms", "20")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(200))
    db = tmp_path / "s.duckdb"
    spec = ray_spec(sim, src, limits={"rpm": 600})
    done: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: done.update(summary=run_sync(spec, db)))
    runner.start()
    ledger_path = ledger_of(sim)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ledger_path.exists() and len(ledger_path.read_bytes().splitlines()) >= 60:
            break
        time.sleep(0.1)
    broker = ray.get_actor("flashpipe-broker-t-default")
    before = ray.get(broker.stats.remote())["started"]
    ray.kill(broker, no_restart=False)  # Ray restarts it; the leases in flight are retried
    after = before
    deadline = time.monotonic() + 60
    while after == before and time.monotonic() < deadline:  # the kill takes effect, then
        after = ray.get(broker.stats.remote(), timeout=60)["started"]  # the restart
        time.sleep(0.2)
    runner.join(120)
    sim.stop()
    assert after > before  # a new broker, empty buckets
    assert done["summary"].rows == {"ok": 200}
    ledger = read_ledger(ledger_path)
    assert [e for e in ledger if e["status"] == 429] == []
    assert windows([e["t"] for e in ledger], 10.0) <= 600 / 6 * 1.1 + 1


@pytest.mark.slow
def test_the_cli_joins_the_cluster_and_a_killed_driver_resumes_exactly_once(
    cluster: dict[str, Any], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--latency-ms", "150")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(600))
    db = tmp_path / "s.duckdb"
    job = tmp_path / "job.toml"
    job.write_text(
        f'''name = "cli-ray"
task = "classify"
[input]
path = "{src}"
id = "id"
[provider]
base_url = "{sim.url}"
api_key_env = "FP_RAY_KEY_MAIN"
[limits]
rpm = 0
tpm = 0
concurrency = 8
[classify]
labels = ["billing", "bug", "account", "feature_request", "other"]
'''
    )
    address = cluster["cluster"].address
    args = [sys.executable, "-m", "pipeline", "run", str(job), "--db", str(db), "--quiet"]
    args += ["--ray", address, "--workers", "2"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ledger_path = ledger_of(sim)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger_path.exists() and len(ledger_path.read_bytes().splitlines()) >= 150:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert sql(db, "SELECT count(*) FROM results")[0][0] < 600  # killed mid-run
    again = run_cli("run", str(job), "--db", str(db), "--ray", address, "--workers", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(600, 600)]
    assert sql(db, "SELECT count(*) FROM results WHERE status <> 'ok'") == [(0,)]


@pytest.mark.slow
def test_a_worker_node_killed_mid_run_loses_no_row(
    cluster: dict[str, Any], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--latency-ms", "150")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(1200))
    db = tmp_path / "s.duckdb"
    spec = ray_spec(sim, src)
    ledger_path = ledger_of(sim)
    done: dict[str, Any] = {}

    def go() -> None:
        try:
            done["summary"] = run_sync(spec, db)
        except BaseException as exc:
            done["error"] = exc

    runner = threading.Thread(target=go)
    runner.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and runner.is_alive():
        if ledger_path.exists() and len(ledger_path.read_bytes().splitlines()) >= 250:
            break
        time.sleep(0.1)
    c: Cluster = cluster["cluster"]
    c.remove_node(cluster["second"], allow_graceful=False)  # SIGKILL the node's processes
    cluster["second"] = c.add_node(num_cpus=2)  # for the tests that follow
    runner.join(240)
    sim.stop()
    assert not runner.is_alive() and "error" not in done, done.get("error")
    assert done["summary"].rows == {"ok": 1200}
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(1200, 1200)]
    message = sql(db, "SELECT message FROM jobs")[0][0] or ""
    assert "Ray worker(s) lost" in message, message
    bound = int(message.split("at most ")[1].split()[0])
    # rows the provider answered (and billed) more than once: only the lost workers' in flight
    answered: dict[str, int] = defaultdict(int)
    for e in read_ledger(ledger_path):
        if e["billed"]:
            answered[e["text_hash"]] += 1
    paid_twice = sum(1 for n in answered.values() if n > 1)
    lost = int(message.split(" Ray worker(s) lost")[0].split()[-1])
    # at most the lost workers' in-flight count: 8 calls of one row each per worker
    assert 1 <= lost <= 4
    assert paid_twice <= bound <= lost * 8
