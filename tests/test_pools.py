"""Key pools: the quota policy (pure, a fake clock) and pools in one process against the sim."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import orjson
import pytest

from pipeline.errors import ProviderStop, SpecError, UsageError
from pipeline.pools import PoolSpec, PoolState, QuotaPolicy, Report, group_pools, quota_day
from pipeline.simproc import SimProcess
from pipeline.store import Store
from tests.support import make_spec, read_ledger, run_cli, run_sync, sql, ticket_rows, write_jsonl


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(policy: QuotaPolicy, clock: Clock, seconds: float) -> list[float]:
    """A worker leasing greedily for `seconds` of fake time, sending each block when it is
    due; the time of every request sent."""
    sent: list[float] = []
    end = clock.now + seconds
    while clock.now < end:
        grant = policy.lease(256, 100)
        if grant.requests:
            sent += [clock.now + grant.start] * grant.requests
            policy.report(Report(sent=grant.requests))
            clock.now += grant.start
        else:
            clock.now += max(grant.wait, 0.001)
    return sent


def test_keys_of_one_project_share_one_pool() -> None:
    pools = group_pools(
        [
            {"api_key_env": "KEY_A", "project": "acme-1", "rpm": 300},
            {"api_key_env": "KEY_B", "project": "acme-1"},
            {"api_key_env": "KEY_C", "project": "acme-2", "rpm": 600, "rpd": 10},
        ],
        4000,
        4_000_000,
    )
    assert pools == (
        PoolSpec("acme-1", ("KEY_A", "KEY_B"), 300, 4_000_000, 0),
        PoolSpec("acme-2", ("KEY_C",), 600, 4_000_000, 10),
    )


def test_one_project_with_two_different_limits_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"provider.pool\[1\].rpm: 600 differs"):
        group_pools(
            [
                {"api_key_env": "A", "project": "p", "rpm": 300},
                {"api_key_env": "B", "project": "p", "rpm": 600},
            ],
            4000,
            0,
        )


def test_leases_hold_the_minute_and_ten_second_windows() -> None:
    clock = Clock()
    policy = QuotaPolicy(PoolSpec("p", ("K",), rpm=600), clock)
    sent = drain(policy, clock, 120.0)
    for start in range(0, 120, 1):
        t0 = 1000.0 + start
        assert sum(1 for t in sent if t0 <= t < t0 + 60) <= 600
        assert sum(1 for t in sent if t0 <= t < t0 + 10) <= 110
    assert len(sent) >= 0.95 * 1200


def test_workers_are_booked_blocks_ahead_instead_of_polling() -> None:
    clock = Clock()
    policy = QuotaPolicy(PoolSpec("p", ("K",), rpm=6000), clock)
    grants = [policy.lease(256, 10) for _ in range(4)]  # four workers ask at the same moment
    assert all(g.requests == 24 for g in grants)
    assert [round(g.start, 2) for g in grants] == [0.24, 0.49, 0.73, 0.98]
    refused = policy.lease(256, 10)  # a second ahead is booked: come back later
    assert refused.requests == 0 and refused.wait > 0


def test_a_lease_is_a_fraction_of_a_second_of_the_rate() -> None:
    clock = Clock()
    policy = QuotaPolicy(PoolSpec("p", ("K",), rpm=60_000), clock)
    clock.now += 5
    grant = policy.lease(10_000, 100)
    assert 1 <= grant.requests <= 60_000 / 60 * 0.25


def test_a_new_broker_starts_empty_so_it_cannot_burst() -> None:
    clock = Clock()
    policy = QuotaPolicy(PoolSpec("p", ("K",), rpm=600), clock)
    first = policy.lease(256, 100)  # booked, but due only once the bucket has earned it
    assert first.requests >= 1 and first.start >= first.requests / (600 / 60) * 0.99


def test_429s_reported_by_one_worker_close_the_gate_for_every_worker() -> None:
    clock = Clock()
    policy = QuotaPolicy(PoolSpec("p", ("K",), rpm=6000), clock)
    clock.now += 2
    assert policy.lease(1, 10).requests == 1
    # worker A saw a run of 429s with the server's retryDelay of 7 s
    policy.report(Report(sent=20, ok=14, limited=6, retry_delay=7.0))
    b = policy.lease(10, 10)  # worker B asks next
    assert b.requests == 0 and 6.9 <= b.wait <= 7.0
    assert policy.current_rpm is not None and policy.current_rpm < 6000  # AIMD lowered it
    clock.now += 7.1
    assert policy.lease(10, 10).requests > 0


def test_a_stray_429_does_not_close_the_gate() -> None:
    clock = Clock()
    policy = QuotaPolicy(PoolSpec("p", ("K",), rpm=6000), clock)
    clock.now += 2
    policy.report(Report(sent=50, ok=49, limited=1, retry_delay=7.0))
    assert policy.lease(10, 10).requests > 0


def test_tokens_are_settled_to_what_was_billed() -> None:
    clock = Clock()
    policy = QuotaPolicy(PoolSpec("p", ("K",), tpm=60_000), clock)
    clock.now += 1.0  # ~980 tokens in the bucket
    assert policy.lease(1, 900).requests == 1
    assert policy.lease(1, 900).requests == 0  # the estimate holds the bucket
    policy.report(Report(token_correction=850))  # billed 50, not 900
    assert policy.lease(1, 900).requests == 1


def test_the_per_day_quota_benches_the_pool() -> None:
    clock = Clock()
    policy = QuotaPolicy(PoolSpec("p", ("K",), rpd=5), clock)
    got = 0
    while (g := policy.lease(256, 1, Report(sent=got and 0))).state is PoolState.ACTIVE:
        got += g.requests
        policy.report(Report(sent=g.requests))
    assert got == 5 and "per-day quota of 5" in (g.reason or "")


def test_a_policy_started_again_learns_the_days_count_from_its_workers_totals() -> None:
    clock = Clock()
    spec = PoolSpec("p", ("K",), rpd=30)
    first = QuotaPolicy(spec, clock, sent_today=4)  # 4 stored today before the run
    for worker, total in ((1, 6), (2, 9), (1, 10), (1, 10)):  # a report seen twice counts once
        first.report(Report(sent=1, worker=worker, sent_total=total))
    assert first.sent_today == 4 + 10 + 9
    again = QuotaPolicy(spec, clock, sent_today=4)  # a restarted broker: the run's start count
    again.lease(1, 1, Report(worker=1, sent_total=10))  # each worker's next lease says it all
    again.lease(1, 1, Report(worker=2, sent_total=9))
    assert again.sent_today == 4 + 10 + 9
    grant = again.lease(256, 1, Report(worker=1, sent_total=10))
    assert grant.requests == 30 - 23 - 2  # two leased above are still out


def test_the_days_count_starts_again_when_the_quota_day_turns() -> None:
    clock = Clock()
    policy = QuotaPolicy(PoolSpec("p", ("K",), rpd=30), clock, sent_today=25, day_left=60.0)
    policy.report(Report(sent=3, worker=1, sent_total=3))
    assert policy.sent_today == 28
    clock.now += 61
    policy.report(Report(sent=2, worker=1, sent_total=5))
    assert policy.sent_today == 2


def test_the_quota_day_turns_at_midnight_pacific() -> None:
    summer = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)  # 03:00 PDT
    start, left = quota_day(summer)
    assert start == datetime(2026, 7, 1, 7, 0, tzinfo=UTC) and left == 21 * 3600
    winter = datetime(2026, 12, 2, 7, 30, tzinfo=UTC)  # 23:30 PST the day before
    start, left = quota_day(winter)
    assert start == datetime(2026, 12, 1, 8, 0, tzinfo=UTC) and left == 30 * 60


def test_a_refusal_reported_by_a_worker_benches_the_pool_for_all() -> None:
    policy = QuotaPolicy(PoolSpec("p", ("K",)), Clock())
    policy.report(Report(benched="pool 'p': API key not valid"))
    grant = policy.lease(10, 10)
    assert grant.state is PoolState.BENCHED and grant.requests == 0


# -- the simulator serves several keys and projects -----------------------------------------------
def _post(url: str, key: str) -> int:
    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    req = urllib.request.Request(
        f"{url}/v1beta/models/gemini-2.5-flash:generateContent",
        data=body,
        headers={"x-goog-api-key": key, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_sim_keys_of_one_project_share_its_quota(sim_factory: Callable[..., SimProcess]) -> None:
    sim = sim_factory("--key", "a1=acme", "--key", "a2=acme", "--key", "b1=beta", "--rpm", "acme=3")
    assert [_post(sim.url, k) for k in ("a1", "a2", "a1")] == [200, 200, 200]
    assert _post(sim.url, "a2") == 429  # the project's minute is spent, whichever key
    assert _post(sim.url, "b1") == 200  # another project, its own quota
    assert _post(sim.url, "nope") == 400


# -- pools in one process ---------------------------------------------------------------------------
POOLS = {
    "pool": [
        {"api_key_env": "FP_TEST_KEY_A", "project": "acme-a", "rpm": 300},
        {"api_key_env": "FP_TEST_KEY_B", "project": "acme-b", "rpm": 600},
    ]
}


@pytest.fixture
def pool_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP_TEST_KEY_A", "key-a")
    monkeypatch.setenv("FP_TEST_KEY_B", "key-b")


def test_two_pools_share_the_work_by_their_quotas_and_calls_record_the_pool(
    sim_factory: Callable[..., SimProcess], tmp_path: Path, pool_keys: None
) -> None:
    sim = sim_factory("--key", "key-a=acme-a", "--key", "key-b=acme-b", "--rpm", "acme-a=300")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(90))
    db = tmp_path / "s.duckdb"
    run_sync(make_spec(sim, src, extra={"provider": POOLS}), db)
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(90, 90)]
    by_pool = dict(sql(db, "SELECT pool, count(*) FROM calls GROUP BY pool"))
    assert set(by_pool) == {"acme-a", "acme-b"} and by_pool["acme-b"] > by_pool["acme-a"]
    sim.stop()
    assert not any(e["status"] == 429 for e in read_ledger(sim.ledger))
    assert b"key-a" not in db.read_bytes() and b"key-b" not in db.read_bytes()
    # cost and status show spend and rate per pool
    cost = orjson.loads(run_cli("cost", "--json", "--db", str(db)).stdout)["jobs"][0]
    assert {k: v["calls"] for k, v in cost["pools"].items()} == by_pool
    total = sum(Decimal(v["usd"]) for v in cost["pools"].values())
    assert abs(total - Decimal(cost["usd"]["total"])) <= Decimal("0.000002")
    status = orjson.loads(run_cli("status", "--json", "--db", str(db)).stdout)["jobs"][0]
    assert status["pools"]["acme-b"]["requests_per_min"] > 0
    assert "pool acme-a:" in run_cli("status", "--db", str(db)).stdout


def test_a_pool_benched_by_its_daily_quota_leaves_its_rows_to_the_other(
    sim_factory: Callable[..., SimProcess], tmp_path: Path, pool_keys: None
) -> None:
    sim = sim_factory("--key", "key-a=acme-a", "--key", "key-b=acme-b", "--rpd", "acme-a=10")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(80))
    db = tmp_path / "s.duckdb"
    summary = run_sync(make_spec(sim, src, extra={"provider": POOLS}), db)
    assert summary.state == "done" and summary.rows == {"ok": 80}
    ok_a = sql(db, "SELECT count(*) FROM calls WHERE pool = 'acme-a' AND outcome = 'ok'")[0][0]
    assert ok_a <= 10
    assert sql(db, "SELECT count(*) FROM calls WHERE pool = 'acme-a' AND http_status = 429")[0][0]


def test_every_pool_out_stops_the_job_with_rows_pending(
    sim_factory: Callable[..., SimProcess], tmp_path: Path, pool_keys: None
) -> None:
    sim = sim_factory("--key", "key-a=acme-a", "--key", "key-b=acme-b", "--rpd", "5")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(40))
    db = tmp_path / "s.duckdb"
    with pytest.raises(ProviderStop, match="per-day quota"):
        run_sync(make_spec(sim, src, extra={"provider": POOLS}), db)
    assert sql(db, "SELECT count(*) FROM results")[0][0] <= 10
    refused = sql(db, "SELECT DISTINCT pool FROM calls WHERE http_status = 429 ORDER BY 1")
    assert refused == [("acme-a",), ("acme-b",)]  # each pool was tried before the job stopped


def test_a_pool_key_missing_from_the_environment_is_one_line(
    sim: SimProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FP_TEST_KEY_A", raising=False)
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(3))
    with pytest.raises(SpecError, match=r"FP_TEST_KEY_A .*is not set"):
        run_sync(make_spec(sim, src, extra={"provider": POOLS}), tmp_path / "s.duckdb")


def test_an_old_store_gains_the_pool_column(tmp_path: Path) -> None:
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE calls (job VARCHAR NOT NULL, call_id VARCHAR NOT NULL, row_ids VARCHAR[],"
        " attempt INTEGER, started_at TIMESTAMPTZ, latency_ms DOUBLE, http_status INTEGER,"
        " outcome VARCHAR, error VARCHAR, input_tokens BIGINT, output_tokens BIGINT,"
        " thinking_tokens BIGINT, cached_tokens BIGINT, cost_usd DECIMAL(38, 12), model VARCHAR,"
        " model_version VARCHAR, response_id VARCHAR, recovered BOOLEAN DEFAULT false,"
        " lane VARCHAR DEFAULT 'standard');"
        "INSERT INTO calls (job, call_id, outcome) VALUES ('old', 'c1', 'ok')"
    )
    con.close()
    Store(str(db)).close()
    assert sql(db, "SELECT call_id, pool FROM calls") == [("c1", None)]


def test_ray_missing_is_a_one_line_error_saying_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.dist import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray sees
    with pytest.raises(UsageError, match=r'pip install "flashpipe\[ray\]"'):
        require_ray()


def test_workers_without_ray_is_a_usage_error(tmp_path: Path) -> None:
    job = tmp_path / "j.toml"
    job.write_text('name = "x"\ntask = "classify"\n[input]\npath = "in.jsonl"\n')
    out = run_cli("run", str(job), "--workers", "2")
    assert out.returncode == 2 and "--workers needs --ray" in out.stderr
