"""The CLI as users meet it: real processes, signals, kill -9, two runners, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.simproc import SimProcess
from tests.support import (
    KEY_ENV,
    ROOT,
    env,
    job_file,
    ledger_usage,
    run_cli,
    sql,
    start_run,
    store_usage,
    ticket_rows,
    wait_for_rows,
    write_jsonl,
)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("flashpipe:")]
    assert len(errors) == 1, err  # progress lines aside, exactly one error line
    return errors[0]


@pytest.fixture
def slow_sim(sim_factory: Callable[..., SimProcess]) -> SimProcess:
    return sim_factory("--latency-ms", "40")


def test_sigint_stops_cleanly_and_resume_finishes(slow_sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(4000))
    job, db = job_file(tmp_path, slow_sim, src), tmp_path / "s.duckdb"
    proc = start_run(job, db, "--quiet")
    wait_for_rows(db, 300)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    state, stored = sql(
        db, "SELECT state, (SELECT count(*) FROM results) FROM jobs WHERE name = 'cli'"
    )[0]
    assert state == "interrupted" and 300 <= stored < 4000
    # every answer received before the stop was written: no call lacks its result
    assert (
        sql(
            db,
            "SELECT count(*) FROM calls c WHERE outcome = 'ok' AND NOT EXISTS"
            " (SELECT 1 FROM results r WHERE r.row_id = c.row_ids[1])",
        )[0][0]
        == 0
    )

    again = run_cli("run", str(job), "--db", str(db), "--quiet", env=env())
    assert again.returncode == 0, again.stderr
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(4000, 4000)]
    status = json.loads(run_cli("status", "cli", "--json", "--db", str(db)).stdout)
    assert status["jobs"][0]["rows_paid_twice"] == 0
    assert status["jobs"][0]["state"] == "done"


def test_kill_9_then_rerun_gives_one_result_per_row(slow_sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(4000))
    job, db = job_file(tmp_path, slow_sim, src), tmp_path / "s.duckdb"
    proc = start_run(job, db, "--quiet")
    snap = wait_for_rows(db, 500)
    proc.kill()
    proc.communicate(timeout=10)
    rate = max(1.0, snap["rows_per_s"])

    again = run_cli("run", str(job), "--db", str(db), "--quiet", env=env())
    assert again.returncode == 0, again.stderr
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(4000, 4000)]
    status = json.loads(run_cli("status", "cli", "--json", "--db", str(db)).stdout)["jobs"][0]
    # results are flushed every 0.25 s: a kill loses about a second of answers
    assert status["rows_paid_twice"] <= max(500, rate * 1.5)


def test_a_second_runner_is_refused_and_status_works_meanwhile(
    slow_sim: SimProcess, tmp_path: Path
) -> None:
    # enough rows that the run outlasts three CLI start-ups on a loaded machine (it is
    # interrupted at the end, so the size costs no time)
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(30_000))
    job, db = job_file(tmp_path, slow_sim, src), tmp_path / "s.duckdb"
    proc = start_run(job, db, "--quiet")
    try:
        wait_for_rows(db, 100)
        second = run_cli("run", str(job), "--db", str(db), env=env())
        assert second.returncode == 2
        assert str(proc.pid) in one_line_error(second)
        live = run_cli("status", "--json", "--db", str(db))
        assert live.returncode == 0, live.stderr
        snap = json.loads(live.stdout)["live"]
        assert snap["state"] == "running" and snap["rows_done"] >= 100
        busy = run_cli("query", "SELECT 1", "--db", str(db))
        assert busy.returncode == 5
        assert "busy" in one_line_error(busy) and str(proc.pid) in busy.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_a_changed_spec_is_refused_and_restart_starts_over(sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(50))
    db = tmp_path / "s.duckdb"
    job = job_file(tmp_path, sim, src)
    assert run_cli("run", str(job), "--db", str(db), "--quiet", env=env()).returncode == 0
    changed = job_file(tmp_path, sim, src, labels='["billing", "bug", "other"]')
    refused = run_cli("run", str(changed), "--db", str(db), env=env())
    assert refused.returncode == 2
    message = one_line_error(refused)
    assert "classify.labels" in message and "--restart" in message
    again = run_cli("run", str(changed), "--db", str(db), "--restart", "--quiet", env=env())
    assert again.returncode == 0, again.stderr
    labels = {r[0] for r in sql(db, "SELECT DISTINCT label FROM results_cli")}
    assert labels <= {"billing", "bug", "other"}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('[budget]\nmax_usd = "lots"', "budget.max_usd"),
        ("[limits]\nmax_attempts = 0", "limits.max_attempts"),
        ('[provider]\nthinking = "extreme"', "provider.thinking"),
        ("colour = 1", "colour"),
    ],
)
def test_bad_job_files_get_one_line_and_exit_2(tmp_path: Path, extra: str, needle: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(3))
    job = job_file(tmp_path, None, src)
    text = job.read_text()
    # put the bad key in its own table (TOML forbids repeating a table header)
    section = extra.split("\n", 1)[0]
    if not section.startswith("["):
        text = extra + "\n" + text  # a top-level key
    elif section in text:
        text = text.replace(section, extra, 1)
    else:
        text = text + "\n" + extra
    job.write_text(text)
    proc = run_cli("run", str(job), "--db", str(tmp_path / "s.duckdb"), env=env())
    assert proc.returncode == 2
    assert needle in one_line_error(proc)
    assert not (tmp_path / "s.duckdb").exists()  # nothing sent, nothing stored


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ('task = "classify"', 'task = "summarise"', "task"),
        ('path = "', 'pathh = "', "input.path"),
        ("labels = [", "labels = [] # [", "classify.labels"),
    ],
)
def test_unknown_task_and_missing_input_path(
    tmp_path: Path, old: str, new: str, needle: str
) -> None:
    job = job_file(tmp_path, None, write_jsonl(tmp_path / "in.jsonl", ticket_rows(3)))
    job.write_text(job.read_text().replace(old, new, 1))
    proc = run_cli("run", str(job), "--db", str(tmp_path / "s.duckdb"), env=env())
    assert proc.returncode == 2
    assert needle in one_line_error(proc)


def test_missing_job_file_and_missing_key(tmp_path: Path) -> None:
    proc = run_cli("run", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2 and "nope.toml" in one_line_error(proc)
    job = job_file(tmp_path, None, write_jsonl(tmp_path / "in.jsonl", ticket_rows(3)))
    no_key = run_cli("run", str(job), "--db", str(tmp_path / "s.duckdb"), env={KEY_ENV: ""})
    assert no_key.returncode == 2 and KEY_ENV in one_line_error(no_key)


def test_wrong_key_exits_4_and_the_key_is_never_written(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    secret = "AIzaSy-test-secret-1234567890"
    sim = sim_factory("--key", secret)
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(40))
    job, db = job_file(tmp_path, sim, src), tmp_path / "s.duckdb"
    wrong = run_cli("run", str(job), "--db", str(db), env=env("AIzaSy-wrong-key"))
    assert wrong.returncode == 4
    assert "key" in one_line_error(wrong).lower()
    ok = run_cli("run", str(job), "--db", str(db), env=env(secret))
    assert ok.returncode == 0, ok.stderr
    outputs = [wrong.stdout, wrong.stderr, ok.stdout, ok.stderr]
    outputs.append(run_cli("status", "--json", "--db", str(db)).stdout)
    outputs.append(run_cli("query", "SELECT * FROM jobs", "--json", "--db", str(db)).stdout)
    assert not any(secret in o for o in outputs)
    assert secret.encode() not in db.read_bytes()


def test_budget_at_half_the_estimate_exits_3_then_resume_finishes(
    sim: SimProcess, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(300))
    estimate = json.loads(run_cli("estimate", str(job_file(tmp_path, sim, src)), "--json").stdout)
    cap = float(estimate["usd"]) / 2
    job = job_file(tmp_path, sim, src, extra=f"[budget]\nmax_usd = {cap}")
    db = tmp_path / "s.duckdb"
    capped = run_cli("run", str(job), "--db", str(db), "--quiet", env=env())
    assert capped.returncode == 3
    assert "max_usd" in one_line_error(capped)
    spent = sql(db, "SELECT sum(cost_usd) FROM calls")[0][0]
    assert 0 < spent <= cap
    resumed = run_cli(
        "resume", "cli", "--db", str(db), "--quiet", "--set", "budget.max_usd=1", env=env()
    )
    assert resumed.returncode == 0, resumed.stderr
    assert sql(db, "SELECT count(DISTINCT row_id), count(*) FROM results") == [(300, 300)]
    status = json.loads(run_cli("status", "cli", "--json", "--db", str(db)).stdout)["jobs"][0]
    assert status["rows_paid_twice"] == 0
    twice = sql(
        db,
        "SELECT count(*) FROM (SELECT unnest(row_ids) r FROM calls) GROUP BY r HAVING count(*) > 1",
    )
    assert twice == []


def test_results_export_retry_and_cost_json(sim: SimProcess, tmp_path: Path) -> None:
    rows = ticket_rows(30)
    rows[3]["text"] += " [[sim:400*1]]"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    job, db = job_file(tmp_path, sim, src), tmp_path / "s.duckdb"
    assert run_cli("run", str(job), "--db", str(db), "--quiet", env=env()).returncode == 0
    assert sql(db, "SELECT status FROM results WHERE row_id = 'T-00003'") == [("failed",)]

    out = tmp_path / "out.parquet"
    exported = run_cli("results", "cli", "--format", "parquet", "-o", str(out), "--db", str(db))
    assert exported.returncode == 0, exported.stderr
    table = pq.read_table(out)
    assert table.num_rows == 30 and "label" in table.column_names

    requeued = run_cli("retry", "cli", "--status", "failed", "--db", str(db))
    assert requeued.returncode == 0 and "1" in requeued.stdout
    assert run_cli("run", str(job), "--db", str(db), "--quiet", env=env()).returncode == 0
    assert sql(db, "SELECT status FROM results WHERE row_id = 'T-00003'") == [("ok",)]

    cost = json.loads(run_cli("cost", "cli", "--json", "--db", str(db)).stdout)
    entry = cost["jobs"][0]
    assert entry["requests"] == 31 and entry["rows"] == 30  # 30 + the re-queued row
    assert entry["usd"]["total"] == cost["total_usd"]
    by_outcome = entry["usd"]["by_outcome"]
    assert float(by_outcome["thrown_away"]) == 0  # a 400 is not billed


def test_estimate_is_close_to_what_the_run_costs(sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(400))
    job, db = job_file(tmp_path, sim, src), tmp_path / "s.duckdb"
    est = run_cli("estimate", str(job), "--json")
    assert est.returncode == 0, est.stderr
    predicted = json.loads(est.stdout)
    assert predicted["rows"] == 400 and predicted["requests"] == 400
    assert run_cli("run", str(job), "--db", str(db), "--quiet", env=env()).returncode == 0
    actual = float(json.loads(run_cli("cost", "--json", "--db", str(db)).stdout)["total_usd"])
    assert float(predicted["usd_low"]) <= actual <= float(predicted["usd_high"])
    assert abs(float(predicted["usd"]) - actual) <= 0.15 * actual


@pytest.mark.slow
def test_chaos_three_kill_9s_then_one_result_per_row(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    import random

    from tests.support import read_ledger

    sim = sim_factory(
        "--profile", "hostile", "--seed", "11", "--hang-seconds", "3", "--fault", "429=0.01"
    )
    n = 5000
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(n))
    job, db = job_file(tmp_path, sim, src), tmp_path / "s.duckdb"
    text = job.read_text().replace(
        f'api_key_env = "{KEY_ENV}"',
        f'api_key_env = "{KEY_ENV}"\ntimeout = {{connect = 2, read = 2, total = 4}}',
    )
    job.write_text(text.replace("[limits]", "[limits]\nmax_attempts = 8"))
    rng = random.Random(5)
    done = 0
    for _ in range(3):
        proc = start_run(job, db, "--quiet")
        done = wait_for_rows(db, done + 300, timeout=60)["rows_done"]
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment: mid-flush, mid-request, mid-retry
        proc.kill()
        proc.communicate(timeout=10)
    final = run_cli("run", str(job), "--db", str(db), "--quiet", env=env(), timeout=180)
    assert final.returncode == 0, final.stderr
    sim.stop()

    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(n, n)]
    statuses = {r[0] for r in sql(db, "SELECT DISTINCT status FROM results")}
    assert statuses <= {"ok", "blocked", "failed"}
    # the ledger is the provider's bill: a row answered successfully twice was in flight (or
    # not yet flushed, at most ~0.25 s of answers) when a kill hit
    answered: dict[str, int] = {}
    for e in read_ledger(sim.ledger):
        final = e["fault"] not in ("truncated", "max_tokens")  # an answer that ends the row
        if e["billed"] and e["status"] == 200 and final:
            answered[e["text_hash"]] = answered.get(e["text_hash"], 0) + 1
    twice = sum(1 for c in answered.values() if c > 1)
    assert twice <= 3 * 200, twice
    # flashpipe's own count comes from its call journal: every answer it received and lost;
    # it cannot know those still in flight at a kill (concurrency 32), nor answers that came
    # after the client's timeout (billed, then sent again)
    status = json.loads(run_cli("status", "cli", "--json", "--db", str(db)).stdout)["jobs"][0]
    timeouts = sql(db, "SELECT count(*) FROM calls WHERE outcome = 'timeout'")[0][0]
    assert twice - 3 * 32 - timeouts <= status["rows_paid_twice"] <= twice
    billed = ledger_usage(sim.ledger)
    stored = store_usage(db, "cli")
    assert billed["billed"] - 3 * 32 <= stored["calls"] <= billed["requests"]
    assert billed["input"] * 0.97 <= stored["input"] <= billed["input"]


def test_flashpipe_sim_serves_until_sigint_and_exits_cleanly() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "sim",
            "--port",
            "0",
            "--profile",
            "hostile",
            "--rpm",
            "600",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("flashpipe-sim listening on http://127.0.0.1:")
    url = line.split()[-1]
    import urllib.request

    with urllib.request.urlopen(f"{url}/v1beta/models?key=sim-key", timeout=5) as resp:
        assert resp.status == 200
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in err
