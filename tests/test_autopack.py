"""rows_per_request = "auto": the packing is chosen from a sample of the input."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from pipeline.autopack import choose_packing, pick
from pipeline.core.pricing import cost_usd
from pipeline.core.usage import Usage
from pipeline.estimate import estimate
from pipeline.pricing import resolve_prices
from pipeline.sampling import read_sample
from pipeline.simproc import SimProcess
from pipeline.tasks import build_task
from tests.support import ledger_usage, make_spec, run_sync, sql, ticket_rows, write_jsonl


def test_pick_takes_the_smallest_packing_within_2_percent_of_the_cheapest() -> None:
    costs = {1: Decimal("10"), 10: Decimal("5.05"), 25: Decimal("5.01"), 50: Decimal("5")}
    assert pick(costs) == 10
    assert pick({1: Decimal("3"), 5: Decimal("4")}) == 1


def test_auto_packing_is_chosen_from_the_input_and_costs_what_the_ledger_says(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(200))
    sim = sim_factory()
    spec = make_spec(sim, src, overrides=['limits.rows_per_request="auto"'])
    assert spec.identity()["rows_per_request"] == "auto"
    task = build_task(spec)
    choice = choose_packing(spec, task, read_sample(spec), resolve_prices(spec))
    assert 1 < choice.rows <= 50 and min(choice.usd_per_row.values()) < choice.usd_per_row[1]
    assert estimate(spec)["rows_per_request"] == choice.rows
    db = tmp_path / "s.duckdb"
    summary = run_sync(spec, db)
    sim.stop()

    assert summary.rows == {"ok": 200}
    sizes = {n for (n,) in sql(db, "SELECT len(row_ids) FROM calls")}
    assert max(sizes) == choice.rows
    ledger = ledger_usage(sim.ledger)
    assert ledger["requests"] == -(-200 // choice.rows)
    tokens = Usage(ledger["input"], ledger["cached"], ledger["output"], ledger["thinking"])
    calls, results = sql(
        db, "SELECT (SELECT sum(cost_usd) FROM calls), (SELECT sum(cost_usd) FROM results)"
    )[0]
    assert Decimal(calls) == Decimal(results) == cost_usd(tokens, resolve_prices(spec))
