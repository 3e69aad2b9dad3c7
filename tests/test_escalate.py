"""Escalation: the rows the first model cannot answer go to a second model, billed per model."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from pipeline.core.pricing import cost_usd
from pipeline.core.usage import Usage
from pipeline.errors import SpecError
from pipeline.escalate import escalation_spec
from pipeline.pricing import resolve_prices
from pipeline.simproc import SimProcess
from tests.support import make_spec, read_ledger, run_cli, run_sync, sql, ticket_rows, write_jsonl

STRONG = "gemini-3-flash-preview"
LITE = "gemini-3.1-flash-lite-preview"


def ledger_usd_by_model(ledger: Path | None, prices: dict[str, object]) -> dict[str, Decimal]:
    usage: dict[str, Usage] = {}
    for e in read_ledger(ledger):
        if e["billed"]:
            u = e["usage"]
            one = Usage(u["prompt"] - u["cached"], u["cached"], u["output"], u["thinking"])
            usage[e["model"]] = usage.get(e["model"], Usage()) + one
    return {m: cost_usd(u, prices[m]) for m, u in usage.items()}  # type: ignore[arg-type]


def test_rows_the_first_model_answers_invalidly_go_to_the_second_and_cost_per_model_matches(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    rows = ticket_rows(200)
    weak = {r["id"] for r in rows[::20]}  # 5 % of the rows: a bad label from Flash-Lite
    for r in rows:
        if r["id"] in weak:
            r["text"] += " [[sim:lite_enum]]"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    sim = sim_factory()
    spec = make_spec(
        sim,
        src,
        extra={"escalate": {"model": STRONG, "on": ["invalid"]}, "limits": {"max_attempts": 2}},
    )
    db = tmp_path / "s.duckdb"
    summary = run_sync(spec, db)
    sim.stop()

    assert summary.rows == {"ok": 200}
    by_model = dict(sql(db, "SELECT model, list(row_id) FROM results GROUP BY 1"))
    assert set(by_model[STRONG]) == weak and len(by_model[LITE]) == 190
    sent_up = {
        rid
        for (ids,) in sql(db, "SELECT row_ids FROM calls WHERE model = ?", STRONG)
        for rid in ids
    }
    assert sent_up == weak  # exactly those rows went to the second model
    prices = {LITE: resolve_prices(spec), STRONG: resolve_prices(escalation_spec(spec))}
    expected = ledger_usd_by_model(sim.ledger, prices)
    stored = {
        m: Decimal(u) for m, u in sql(db, "SELECT model, sum(cost_usd) FROM calls GROUP BY 1")
    }
    assert stored == expected
    total = sql(db, "SELECT sum(cost_usd) FROM results")[0][0]
    assert Decimal(total) == sum(expected.values())
    report = orjson.loads(run_cli("cost", "--json", "--db", str(db)).stdout)["jobs"][0]["models"]
    assert Decimal(report[STRONG]["usd_exact"]) == expected[STRONG]
    assert report[STRONG]["rows"] == 10 and report[LITE]["rows"] == 190
    # an escalated answer is not cached under the first model's request
    assert sql(db, "SELECT count(*) FROM answers") == [(190,)]


def test_escalate_checks_its_keys(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(1))
    with pytest.raises(SpecError, match=r"^escalate\.on: \['late'\] is not valid"):
        make_spec(None, src, extra={"escalate": {"model": STRONG, "on": ["late"]}})
    with pytest.raises(SpecError, match=r"^provider\.lane: 'batch' is not valid"):
        make_spec(None, src, extra={"escalate": {"model": STRONG}, "provider": {"lane": "batch"}})
    spec = make_spec(None, src, extra={"escalate": {"model": LITE, "thinking": "high"}})
    up = escalation_spec(spec)
    assert up.model == LITE and up.provider.thinking == "high" and up.escalate is None
