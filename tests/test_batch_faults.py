"""Batches that lie or stall: their rows still end with exactly one result each."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from pipeline.core.pricing import cost_usd, lane_prices
from pipeline.core.usage import Usage
from pipeline.pricing import resolve_prices
from pipeline.simproc import SimProcess
from tests.support import ledger_usage, run_cli, run_rows, sql, ticket_rows

FAST_BATCH = {"poll_seconds": 0.1, "max_poll_seconds": 0.3, "collect_seconds": 0.2}


def test_a_batch_reported_succeeded_with_every_line_failed_sends_its_rows_again(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--batch-seconds", "0.3", "--batch-fault", "lie")
    spec, db, summary = run_rows(
        sim, tmp_path, ticket_rows(100), extra={"provider": {"lane": "batch"}, "batch": FAST_BATCH}
    )

    assert summary.rows == {"ok": 100}
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(100, 100)]
    batches = sql(db, "SELECT state, ok_rows, retry_rows FROM batches ORDER BY created_at")
    assert batches == [("succeeded", 0, 100), ("succeeded", 100, 0)]
    ledger = ledger_usage(sim.ledger)
    assert ledger["billed"] == 100  # the lying batch billed nothing
    tokens = Usage(ledger["input"], ledger["cached"], ledger["output"], ledger["thinking"])
    calls, results = sql(
        db, "SELECT (SELECT sum(cost_usd) FROM calls), (SELECT sum(cost_usd) FROM results)"
    )[0]
    assert (
        Decimal(calls)
        == Decimal(results)
        == cost_usd(tokens, lane_prices(resolve_prices(spec), "batch"))
    )


def test_a_stalled_batch_moves_its_rows_to_flex_and_a_late_answer_is_paid_twice(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    # held PENDING 1.2 s past its normal 0.3 s; the job calls it stalled after 1 s of polling
    sim = sim_factory("--batch-seconds", "0.3", "--batch-fault", "stall=1.2")
    batch = {**FAST_BATCH, "stall_seconds": 1.0}
    _, db, summary = run_rows(
        sim, tmp_path, ticket_rows(100), extra={"provider": {"lane": "batch"}, "batch": batch}
    )

    assert summary.rows == {"ok": 100}
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(100, 100)]
    lanes = dict(sql(db, "SELECT lane, count(*) FROM calls WHERE outcome = 'ok' GROUP BY 1"))
    assert lanes == {"flex": 100}  # every row's answer came from Flex
    assert sql(db, "SELECT count(*) FROM calls WHERE outcome = 'paid_twice'") == [(100,)]
    assert sql(db, "SELECT state FROM batches") == [("succeeded",)]
    ledger = ledger_usage(sim.ledger)
    assert ledger["billed"] == 200  # the late batch billed every row a second time
    calls, results, twice = sql(
        db,
        "SELECT (SELECT sum(cost_usd) FROM calls), (SELECT sum(cost_usd) FROM results),"
        " (SELECT sum(cost_usd) FROM calls WHERE outcome = 'paid_twice')",
    )[0]
    assert Decimal(results) == Decimal(calls) - Decimal(twice)
    status = run_cli("status", "t", "--db", str(db))
    assert "rows paid twice 100" in status.stdout, status.stdout


def test_a_batch_that_never_leaves_pending_has_its_rows_answered_on_flex(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--batch-seconds", "0.3", "--batch-fault", "stall")
    batch = {**FAST_BATCH, "stall_seconds": 0.5}
    spec, db, summary = run_rows(
        sim, tmp_path, ticket_rows(60), extra={"provider": {"lane": "batch"}, "batch": batch}
    )

    assert summary.rows == {"ok": 60} and summary.state == "done"
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(60, 60)]
    assert sql(db, "SELECT state, closed FROM batches") == [("stalled", True)]
    ledger = ledger_usage(sim.ledger)
    assert ledger["billed"] == 60
    prices = lane_prices(resolve_prices(spec), "flex")
    tokens = Usage(ledger["input"], ledger["cached"], ledger["output"], ledger["thinking"])
    calls, results = sql(
        db, "SELECT (SELECT sum(cost_usd) FROM calls), (SELECT sum(cost_usd) FROM results)"
    )[0]
    assert Decimal(calls) == Decimal(results) == cost_usd(tokens, prices)


def test_a_batch_pending_when_the_deadline_nears_moves_its_rows_to_flex_in_time(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--batch-seconds", "0.3", "--batch-fault", "stall")
    lane = {"lane": "batch", "deadline": "15m"}  # a batch cannot make it: Flex still can
    _, db, summary = run_rows(
        sim, tmp_path, ticket_rows(40), extra={"provider": lane, "batch": FAST_BATCH}
    )

    assert summary.rows == {"ok": 40} and summary.elapsed_s < 60
    lanes = dict(sql(db, "SELECT lane, count(*) FROM calls WHERE outcome = 'ok' GROUP BY 1"))
    assert lanes == {"flex": 40}
    assert sql(db, "SELECT state FROM batches") == [("stalled",)]
