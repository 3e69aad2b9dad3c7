"""End to end in-process: a real simulator over loopback, a real DuckDB file, both providers."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.pricing import cost_usd
from pipeline.core.usage import Usage
from pipeline.errors import BudgetExhausted, ProviderStop
from pipeline.pricing import resolve_prices
from pipeline.simproc import SimProcess
from tests.support import (
    ledger_usage,
    make_spec,
    run_sync,
    sql,
    store_usage,
    ticket_rows,
    write_jsonl,
)


def one_result_per_row(db: Path, job: str, n: int) -> None:
    rows = sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results WHERE job = ?", job)[0]
    assert rows == (n, n)


def costs_balance(db: Path, job: str) -> Decimal:
    calls, results = sql(
        db,
        "SELECT (SELECT sum(cost_usd) FROM calls WHERE job = $1),"
        " (SELECT sum(cost_usd) FROM results WHERE job = $1)",
        job,
    )[0]
    assert calls == results, "per-row shares must add up to what the calls cost"
    return Decimal(calls)


@pytest.mark.parametrize("api", ["gemini", "openai"])
def test_classify_every_row_once_and_cost_equals_the_ledger(
    api: str, sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(300))
    spec = make_spec(sim, src, api=api)
    db = tmp_path / "s.duckdb"
    summary = run_sync(spec, db)
    sim.stop()

    assert summary.state == "done"
    assert summary.rows == {"ok": 300}
    one_result_per_row(db, "t", 300)
    labels = dict(sql(db, "SELECT row_id, label FROM results_t"))
    assert labels["T-00000"] == "billing" and labels["T-00001"] == "bug"
    assert labels["T-00003"] == "feature_request"
    ledger = ledger_usage(sim.ledger)
    stored = store_usage(db, "t")
    assert stored["calls"] == ledger["requests"] == 300
    for kind in ("input", "cached", "output", "thinking"):
        assert stored[kind] == ledger[kind], kind
    spent = costs_balance(db, "t")
    expected = cost_usd(
        Usage(ledger["input"], ledger["cached"], ledger["output"], ledger["thinking"]),
        resolve_prices(spec),
    )
    assert spent == expected


@pytest.mark.parametrize("api", ["gemini", "openai"])
def test_hostile_parquet_run_ends_every_row_and_counts_every_billed_token(
    api: str, sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory(
        "--profile", "hostile", "--seed", "3", "--hang-seconds", "4", "--fault", "429=0.01"
    )
    n = 2000
    table = pa.table(
        {
            "id": [r["id"] for r in ticket_rows(n)],
            "text": [r["text"] for r in ticket_rows(n)],
            "lang": ["en"] * n,
        }
    )
    src = tmp_path / "in.parquet"
    pq.write_table(table, src, row_group_size=700)
    spec = make_spec(
        sim,
        src,
        api=api,
        extra={
            "provider": {"timeout": {"connect": 2, "read": 1.5, "total": 3}},
            "limits": {"concurrency": 64, "max_attempts": 8},
        },
    )
    db = tmp_path / "s.duckdb"
    summary = run_sync(spec, db)
    sim.stop()

    assert summary.state == "done"
    one_result_per_row(db, "t", n)
    by_status = dict(sql(db, "SELECT status, count(*) FROM results GROUP BY ALL"))
    assert by_status.get("blocked", 0) > 0  # safety + prompt blocks are results, not crashes
    assert by_status["ok"] > n * 0.9
    outcomes = dict(sql(db, "SELECT outcome, count(*) FROM calls GROUP BY ALL"))
    assert outcomes.get("rate_limited", 0) > 0 and outcomes.get("retried", 0) > 0
    assert outcomes.get("timeout", 0) > 0
    ledger = ledger_usage(sim.ledger)
    stored = store_usage(db, "t")
    for kind in ("input", "cached", "output", "thinking"):
        assert stored[kind] == ledger[kind], kind
    billed = Usage(ledger["input"], ledger["cached"], ledger["output"], ledger["thinking"])
    assert costs_balance(db, "t") == cost_usd(billed, resolve_prices(spec))
    # every failed row names its reason
    assert sql(db, "SELECT count(*) FROM results WHERE status <> 'ok' AND error IS NULL")[0][0] == 0


def test_bad_rows_become_invalid_results_and_the_job_goes_on(
    sim: SimProcess, tmp_path: Path
) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(
        src,
        [
            {"id": "a", "text": "refund my invoice"},
            b"{not json",
            {"id": "b"},
            b'{"id": "c", "text": "bad \xff utf8"}',
            {"id": "d", "text": "the app crashes"},
            {"id": "e", "text": ""},
        ],
    )
    db = tmp_path / "s.duckdb"
    summary = run_sync(make_spec(sim, src), db)
    assert summary.state == "done"
    got = dict(sql(db, "SELECT row_id, status || ':' || coalesce(error, '') FROM results"))
    assert got["a"].startswith("ok") and got["d"].startswith("ok")
    assert got["line:2"].startswith("invalid:") and "JSON" in got["line:2"]
    assert got["b"].startswith("invalid:") and "text" in got["b"]
    assert got["line:4"].startswith("invalid:") and "UTF-8" in got["line:4"]
    assert got["e"].startswith("invalid:")
    assert sql(db, "SELECT count(*) FROM calls")[0][0] == 2  # invalid rows cost nothing


@pytest.mark.parametrize("api", ["gemini", "openai"])
@pytest.mark.parametrize(
    ("marker", "status", "calls", "error_part"),
    [
        ("[[sim:500*2]]", "ok", 3, None),
        ("[[sim:503*1]]", "ok", 2, None),
        ("[[sim:429*2]]", "ok", 3, None),
        ("[[sim:bad_json*1]]", "ok", 2, None),
        ("[[sim:bad_enum*1]]", "ok", 2, None),
        ("[[sim:bad_enum]]", "failed", 4, "label"),
        ("[[sim:400]]", "failed", 1, "400"),
        ("[[sim:safety]]", "blocked", 1, None),
        ("[[sim:drop*1]]", "ok", 2, None),
    ],
)
def test_each_failure_ends_the_row_as_promised(
    api: str,
    marker: str,
    status: str,
    calls: int,
    error_part: str | None,
    sim: SimProcess,
    tmp_path: Path,
) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "x", "text": f"I was charged twice, refund please {marker}"}],
    )
    db = tmp_path / "s.duckdb"
    run_sync(make_spec(sim, src, api=api), db)
    (got_status, error, attempts) = sql(db, "SELECT status, error, attempts FROM results")[0]
    assert got_status == status, error
    assert sql(db, "SELECT count(*) FROM calls")[0][0] == calls
    assert 1 <= attempts <= calls
    if error_part:
        assert error_part in error
    if status == "blocked":
        assert error  # the provider's reason is kept


def test_429s_do_not_burn_attempts(sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "text": "refund [[sim:429*5]]"}])
    db = tmp_path / "s.duckdb"
    run_sync(make_spec(sim, src, overrides=["limits.max_attempts=2"]), db)
    assert sql(db, "SELECT status FROM results")[0][0] == "ok"
    outcomes = dict(sql(db, "SELECT outcome, count(*) FROM calls GROUP BY ALL"))
    assert outcomes == {"rate_limited": 5, "ok": 1}


def test_translation_that_drops_a_placeholder_is_retried_then_failed(
    sim: SimProcess, tmp_path: Path
) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "p1", "text": "Hi {name}, order {order_id} ships [[sim:drop_placeholder*1]]"},
            {"id": "p2", "text": "Hi {name}, see https://acme.example [[sim:drop_placeholder]]"},
            {"id": "p3", "text": "A long text that gets cut [[sim:max_tokens*1]]"},
        ],
    )
    db = tmp_path / "s.duckdb"
    spec = make_spec(sim, src, task="translate", extra={"translate": {"target": "de"}})
    run_sync(spec, db)
    got = {r[0]: r[1:] for r in sql(db, "SELECT row_id, status, error FROM results")}
    assert got["p1"][0] == "ok"
    assert got["p2"][0] == "failed" and "{name}" in got["p2"][1]
    assert got["p3"][0] == "ok"
    translation, target = sql(
        db, "SELECT translation, target_lang FROM results_t WHERE row_id = 'p1'"
    )[0]
    assert "{order_id}" in translation and target == "de"


def test_a_bad_key_stops_the_job_and_leaves_rows_pending(sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(50))
    db = tmp_path / "s.duckdb"
    with pytest.raises(ProviderStop) as stop:
        run_sync(make_spec(sim, src), db, key="wrong-key")
    assert stop.value.exit_code == 4
    assert "key" in str(stop.value).lower()
    assert sql(db, "SELECT count(*) FROM results")[0][0] == 0
    assert sql(db, "SELECT state FROM jobs")[0][0] == "stopped"
    run_sync(make_spec(sim, src), db)  # the right key resumes it
    one_result_per_row(db, "t", 50)


def test_budget_is_never_exceeded_and_resume_with_more_continues(
    sim: SimProcess, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(400))
    db = tmp_path / "s.duckdb"
    cap = Decimal("0.01")
    with pytest.raises(BudgetExhausted) as stop:
        run_sync(make_spec(sim, src, extra={"budget": {"max_usd": float(cap)}}), db)
    assert stop.value.exit_code == 3
    spent = Decimal(sql(db, "SELECT sum(cost_usd) FROM calls")[0][0])
    assert Decimal("0.005") < spent <= cap
    assert sql(db, "SELECT state FROM jobs")[0][0] == "budget_exhausted"
    run_sync(make_spec(sim, src, extra={"budget": {"max_usd": 1.0}}), db)
    one_result_per_row(db, "t", 400)
    paid = sql(
        db,
        "SELECT count(*) FROM (SELECT unnest(row_ids) AS r FROM calls) GROUP BY r"
        " HAVING count(*) > 1",
    )
    assert paid == []  # no row was paid twice across the stop and the resume
    assert sql(db, "SELECT state FROM jobs")[0][0] == "done"


def test_packing_sends_few_requests_and_resends_only_the_missing_item(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory()
    rows = ticket_rows(2000)
    rows[7]["text"] += " [[sim:drop_item*1]]"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    db = tmp_path / "s.duckdb"
    run_sync(make_spec(sim, src, overrides=["limits.rows_per_request=20"]), db)
    sim.stop()
    one_result_per_row(db, "t", 2000)
    requests = sql(db, "SELECT count(*) FROM calls")[0][0]
    assert requests <= 110
    assert sql(db, "SELECT count(*) FROM results WHERE status = 'ok'")[0][0] == 2000
    resent = sql(db, "SELECT len(row_ids) FROM calls WHERE list_contains(row_ids, 'T-00007')")
    assert sorted(r[0] for r in resent) == [1, 20]
    costs_balance(db, "t")
    ledger = ledger_usage(sim.ledger)
    assert store_usage(db, "t")["input"] == ledger["input"]


def test_moderation_flags_and_provider_blocks_are_signals(sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "c1", "text": "Great product, works well"},
            {"id": "c2", "text": "buy cheap followers at http://spam.example click here"},
            {"id": "c3", "text": "something [[sim:prompt_blocked]]"},
        ],
    )
    db = tmp_path / "s.duckdb"
    run_sync(make_spec(sim, src, task="moderate"), db)
    got = {r[0]: r[1:] for r in sql(db, "SELECT row_id, flagged, spam FROM results_t")}
    assert got["c1"][0] is False
    assert got["c2"][0] is True and got["c2"][1] is True
    assert got["c3"][0] is True  # a provider block counts as flagged
    assert sql(db, "SELECT status FROM results WHERE row_id = 'c3'")[0][0] == "blocked"


def test_a_second_run_sends_nothing(sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(120))
    db = tmp_path / "s.duckdb"
    run_sync(make_spec(sim, src), db)
    again = run_sync(make_spec(sim, src), db)
    assert again.requests == 0 and again.rows == {}
    one_result_per_row(db, "t", 120)


MODERATE_ROWS = [
    {"id": "m1", "text": "Lovely update, thanks team"},
    {"id": "m2", "text": "buy cheap followers at http://spam.example now"},
    {"id": "m3", "text": "you are an idiot and everyone hates you"},
]
TRANSLATE_ROWS = [
    {"id": "p1", "text": "Hi {customer_name}, your Acme order {order_id} ships today"},
    {"id": "p2", "text": "<b>Save 20%</b> at https://acme.example/help"},
]
NESTED_SCHEMA = {
    "type": "object",
    "required": ["summary", "contact"],
    "additionalProperties": False,
    "properties": {
        "summary": {"type": "string"},
        "contact": {
            "type": "object",
            "required": ["channel", "priority"],
            "additionalProperties": False,
            "properties": {
                "channel": {"type": "string", "enum": ["email", "phone", "chat"]},
                "priority": {"type": "integer", "minimum": 1, "maximum": 3},
            },
        },
    },
}
TASKS: dict[str, tuple[str, list[dict[str, object]], dict[str, object], list[str], str]] = {
    # name: (task, rows, extra spec, overrides, a GROUP BY column of the typed view)
    "classify": ("classify", ticket_rows(40), {}, [], "label"),
    "multi_label": ("classify", ticket_rows(40), {}, ["classify.multi_label=true"], "labels"),
    "packed": ("classify", ticket_rows(45), {}, ["limits.rows_per_request=10"], "label"),
    "translate": ("translate", TRANSLATE_ROWS, {"translate": {"target": "de"}}, [], "target_lang"),
    "moderate": ("moderate", MODERATE_ROWS, {}, [], "flagged"),
    "moderate_packed": ("moderate", MODERATE_ROWS, {}, ["limits.rows_per_request=3"], "flagged"),
    "custom": (
        "custom",
        ticket_rows(20),
        {"custom": {"prompt": "Ticket ({lang}): {text}", "schema": NESTED_SCHEMA}},
        [],
        "contact",
    ),
}


@pytest.mark.parametrize("api", ["gemini", "openai"])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_on_both_apis(
    api: str, name: str, sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    task, rows, extra, overrides, column = TASKS[name]
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    db = tmp_path / "s.duckdb"
    spec = make_spec(sim, src, api=api, task=task, extra=extra, overrides=overrides)
    summary = run_sync(spec, db)
    sim.stop()
    assert summary.rows == {"ok": len(rows)}
    one_result_per_row(db, "t", len(rows))
    groups = sql(db, f"SELECT {column}, count(*) FROM results_t GROUP BY ALL")
    assert sum(n for _, n in groups) == len(rows) and all(g is not None for g, _ in groups)
    if name == "multi_label":
        assert all(isinstance(g, list) and g for g, _ in groups)
    if name == "custom":
        assert all(1 <= json.loads(c)["priority"] <= 3 for c, _ in groups)  # a JSON column
    costs_balance(db, "t")
    ledger = ledger_usage(sim.ledger)
    stored = store_usage(db, "t")
    assert [stored[k] for k in ("input", "output", "thinking")] == [
        ledger[k] for k in ("input", "output", "thinking")
    ]


def test_ten_thousand_parquet_rows_and_cost_json_equals_the_simulator(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    from tests.support import run_cli

    sim = sim_factory()
    rows = ticket_rows(10_000)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=4096)
    db = tmp_path / "s.duckdb"
    run_sync(make_spec(sim, src, overrides=["limits.concurrency=64"]), db)
    sim.stop()
    one_result_per_row(db, "t", 10_000)
    report = run_cli("cost", "t", "--json", "--db", str(db))
    assert report.returncode == 0, report.stderr
    tokens = json.loads(report.stdout)["jobs"][0]["tokens"]
    ledger = ledger_usage(sim.ledger)
    assert tokens == {k: ledger[k] for k in ("input", "cached", "output", "thinking")}


def test_an_empty_input_file_is_a_finished_job(sim: SimProcess, tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"")
    db = tmp_path / "s.duckdb"
    summary = run_sync(make_spec(sim, src), db)
    assert summary.state == "done" and summary.requests == 0
    assert sql(db, "SELECT count(*) FROM results")[0][0] == 0


@pytest.mark.parametrize(
    ("fault", "api"), [("403", "gemini"), ("429-day", "gemini"), ("insufficient_quota", "openai")]
)
def test_a_provider_stop_ends_the_job_after_a_handful_of_requests(
    fault: str, api: str, sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--fault", f"{fault}=1.0")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(500))
    db = tmp_path / "s.duckdb"
    with pytest.raises(ProviderStop) as stop:
        run_sync(make_spec(sim, src, api=api), db)
    sim.stop()
    assert stop.value.exit_code == 4
    sent = ledger_usage(sim.ledger)["requests"]
    assert 1 <= sent <= 20  # the in-flight ones at most (concurrency 16), not one per row
    assert sql(db, "SELECT count(*) FROM results")[0][0] == 0  # every row stays pending
    assert sql(db, "SELECT state FROM jobs")[0][0] == "stopped"


def test_progress_without_a_tty_prints_plain_lines(sim: SimProcess, tmp_path: Path) -> None:
    import io

    import anyio

    from pipeline.progress import ProgressReporter
    from pipeline.run.engine import run_job

    out = io.StringIO()
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(200))
    spec = make_spec(sim, src, overrides=["limits.rpm=3000"])  # about 4 s: two progress lines

    async def go() -> None:
        reporter = ProgressReporter(out, interval=1.0)
        await run_job(
            spec,
            str(tmp_path / "s.duckdb"),
            api_key="sim-key",
            progress=reporter,
            handle_signals=False,
        )

    anyio.run(go)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and not any("\x1b" in line for line in lines)
    last = lines[-1]
    assert "rows 200/200" in last and "rows/s" in last and "$0.0" in last


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_resume_over_many_lookup_groups_sends_exactly_the_rows_not_stored(
    kind: str, sim: SimProcess, tmp_path: Path
) -> None:
    import duckdb

    rows = ticket_rows(12_000)
    if kind == "jsonl":
        src = write_jsonl(tmp_path / "in.jsonl", rows)
    else:
        src = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=1500)
    db = tmp_path / "s.duckdb"
    # the cache would answer the deleted rows from their own earlier answers
    spec = make_spec(sim, src, overrides=["limits.concurrency=64", "cache=false"])
    run_sync(spec, db)
    # rows 0-4999 stay stored (whole lookup groups done, read ahead in growing groups);
    # then scattered gaps, a run of gaps across a group border, and the very last row
    lost = {f"T-{i:05d}" for i in range(5_000, 12_000, 7)}
    lost |= {f"T-{i:05d}" for i in range(8_990, 9_020)} | {"T-11999"}
    con = duckdb.connect(str(db))
    con.register("lost", pa.table({"row_id": sorted(lost)}))
    con.execute("DELETE FROM results WHERE row_id IN (SELECT row_id FROM lost)")
    con.close()
    run_sync(spec, db)
    one_result_per_row(db, "t", 12_000)
    sent = [
        rid
        for (ids,) in sql(db, "SELECT row_ids FROM calls WHERE call_id LIKE '2-%'")
        for rid in ids
    ]
    assert sorted(sent) == sorted(lost)  # each lost row once, no stored row again
