"""The cache across jobs and runs: an answered request is not sent (or paid for) again."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import duckdb
import orjson
import pytest

from pipeline.errors import SpecError
from pipeline.simproc import SimProcess
from pipeline.store import SCHEMA, Store
from tests.support import (
    env,
    job_file,
    ledger_of,
    ledger_usage,
    make_spec,
    run_cli,
    run_sync,
    sql,
    ticket_rows,
    write_jsonl,
)

LABELS = ["billing", "bug", "account", "feature_request", "other"]


def requests(sim: SimProcess) -> int:
    path = ledger_of(sim)
    return ledger_usage(path)["requests"] if path.exists() else 0


def test_a_new_job_name_and_a_restart_send_nothing_and_report_the_saving(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(200))
    db = tmp_path / "s.duckdb"
    first = sim_factory()
    run_sync(make_spec(first, src, name="nov"), db)
    first.stop()
    assert requests(first) == 200
    paid = Decimal(sql(db, "SELECT sum(cost_usd) FROM calls WHERE job = 'nov'")[0][0])

    again = sim_factory()
    summary = run_sync(make_spec(again, src, name="nov-again"), db)
    assert summary.rows == {"ok": 200} and summary.requests == 0
    restarted = run_sync(make_spec(again, src, name="nov"), db, restart=True)
    assert restarted.rows == {"ok": 200} and restarted.requests == 0
    again.stop()
    assert requests(again) == 0

    for job in ("nov-again", "nov"):
        cached, saved, cost = sql(
            db,
            "SELECT count(*) FILTER (WHERE from_cache), sum(saved_usd), sum(cost_usd)"
            " FROM results WHERE job = ?",
            job,
        )[0]
        assert cached == 200 and Decimal(saved) == paid and cost == 0
    same = sql(
        db,
        "SELECT count(*) FROM results_nov_again a JOIN (SELECT row_id, output FROM results"
        " WHERE job = 'nov') b USING (row_id) WHERE a.output = b.output",
    )
    assert same == [(200,)]
    cost = run_cli("cost", "nov-again", "--db", str(db))
    assert cost.returncode == 0, cost.stderr
    assert f"200 rows from cache, ${paid.quantize(Decimal('0.000001'))} saved" in cost.stdout
    status = orjson.loads(run_cli("status", "nov-again", "--json", "--db", str(db)).stdout)
    assert status["jobs"][0]["cache"]["rows"] == 200


def test_a_changed_label_or_thinking_level_or_no_cache_sends_every_request_again(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(100))
    db = tmp_path / "s.duckdb"
    sim = sim_factory()
    run_sync(make_spec(sim, src, name="a"), db)
    relabelled = {"classify": {"labels": [*LABELS[:-1], "something_else"]}}
    assert run_sync(make_spec(sim, src, name="b", extra=relabelled), db).requests == 100
    thinking = {"provider": {"thinking": "low"}}
    assert run_sync(make_spec(sim, src, name="c", extra=thinking), db).requests == 100
    no_cache = make_spec(sim, src, name="d", overrides=["cache=false"])
    assert run_sync(no_cache, db).requests == 100
    assert run_sync(make_spec(sim, src, name="e"), db).requests == 0
    sim.stop()
    assert requests(sim) == 400
    assert sql(db, "SELECT count(*) FROM results WHERE job = 'd' AND request_key IS NOT NULL") == [
        (0,)
    ]


def test_a_store_from_before_the_cache_opens_and_keeps_its_results(tmp_path: Path) -> None:
    db = tmp_path / "old.duckdb"
    old_results = SCHEMA.split("CREATE TABLE IF NOT EXISTS results")[1].split(";")[0]
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE results" + old_results)
    con.execute("INSERT INTO results (job, row_id, status) VALUES ('old', 'r1', 'ok')")
    con.close()
    Store(str(db)).close()
    rows = sql(db, "SELECT row_id, answered_by, from_cache, input_hash FROM results")
    assert rows == [("r1", None, False, None)]
    assert sql(db, "SELECT count(*) FROM answers") == [(0,)]


# `answers` as stores written before key_hash have it (a VARCHAR PRIMARY KEY)
OLD_ANSWERS = """CREATE TABLE answers (
    request_key VARCHAR PRIMARY KEY,
    output JSON NOT NULL,
    input_tokens BIGINT,
    output_tokens BIGINT,
    thinking_tokens BIGINT,
    cached_tokens BIGINT,
    job VARCHAR,
    row_id VARCHAR,
    created_at TIMESTAMPTZ
)"""


def test_a_store_whose_answers_have_a_varchar_primary_key_still_answers_from_its_cache(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    db = tmp_path / "old.duckdb"
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(120))
    sim = sim_factory()
    run_sync(make_spec(sim, src, name="a"), db)
    con = duckdb.connect(str(db))  # the same answers, in the old layout
    con.execute(
        "CREATE TABLE kept AS SELECT request_key, output, input_tokens, output_tokens,"
        " thinking_tokens, cached_tokens, job, row_id, created_at FROM answers"
    )
    con.execute("DROP TABLE answers")
    con.execute(OLD_ANSWERS)
    con.execute("INSERT INTO answers SELECT * FROM kept")
    con.execute("DROP TABLE kept")
    con.close()

    write_jsonl(src, ticket_rows(150))  # the job resumes over 30 more rows
    resumed = run_sync(make_spec(sim, src, name="a"), db)
    assert resumed.rows == {"ok": 30} and resumed.requests == 30
    again = run_sync(make_spec(sim, src, name="b"), db)
    assert again.rows == {"ok": 150} and again.requests == 0
    sim.stop()
    assert requests(sim) == 150
    assert sql(db, "SELECT count(*) FILTER (WHERE from_cache) FROM results WHERE job = 'b'") == [
        (150,)
    ]
    assert sql(db, "SELECT count(*), count(DISTINCT request_key) FROM answers") == [(150, 150)]
    constraints = "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'answers'"
    assert sql(db, constraints + " AND constraint_type = 'PRIMARY KEY'") == [(0,)]
    assert sql(db, "SELECT count(*) FROM answers WHERE key_hash IS NULL") == [(0,)]


def test_no_cache_on_the_command_line_sends_again_and_keeps_nothing(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(50))
    db = tmp_path / "s.duckdb"
    sim = sim_factory()
    job = job_file(tmp_path, sim, src, name="cli")
    for name, flags, sent in (("cli", [], 50), ("d", ["--no-cache"], 50), ("e", [], 0)):
        done = run_cli("run", str(job), "--set", f"name={name}", *flags, "--db", str(db), env=env())
        assert done.returncode == 0, done.stderr
        assert f", {sent} requests," in done.stdout, done.stdout
    assert sql(db, "SELECT count(*) FROM answers") == [(50,)]
    with pytest.raises(SpecError, match=r"^cache: 'no' is not valid; expected true or false$"):
        make_spec(None, src, extra={"cache": "no"})
