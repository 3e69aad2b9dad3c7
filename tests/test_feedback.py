"""Retries that tell the model what was wrong, against plain re-sends of the same request."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.feedback import with_feedback
from pipeline.simproc import SimProcess
from tests.support import ledger_usage, make_spec, run_sync, sql, ticket_rows, write_jsonl

STUBBORN = " [[sim:stubborn_enum]]"  # the simulator answers with a bad label until told why


def test_feedback_names_the_error_after_the_text() -> None:
    user = with_feedback("My invoice is wrong", "schema: label: 'payment' is not one of [...]")
    assert user.startswith("My invoice is wrong\n\n")
    assert "rejected: schema: label: 'payment' is not one of [...]." in user


@pytest.mark.parametrize("feedback", [True, False])
def test_an_invalid_answer_is_fixed_by_feedback_where_a_plain_resend_repeats_it(
    feedback: bool, sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    rows = ticket_rows(60)
    for r in rows[::6]:
        r["text"] += STUBBORN
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    sim = sim_factory()
    spec = make_spec(sim, src, overrides=[f"limits.retry_feedback={str(feedback).lower()}"])
    db = tmp_path / "s.duckdb"
    summary = run_sync(spec, db)
    sim.stop()
    ledger = ledger_usage(sim.ledger)
    attempts = dict(sql(db, "SELECT row_id, attempts FROM results"))
    if feedback:
        assert summary.rows == {"ok": 60}
        assert {attempts[r["id"]] for r in rows[::6]} == {2}  # the second attempt succeeds
        assert ledger["requests"] == 60 + 10
    else:
        assert summary.rows == {"ok": 50, "failed": 10}  # the same bad label, every time
        assert {attempts[r["id"]] for r in rows[::6]} == {4}
        assert ledger["requests"] == 50 + 10 * 4


def test_feedback_spends_fewer_tokens_in_total_than_plain_resends(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    rows = ticket_rows(60)
    for r in rows[::6]:
        r["text"] += STUBBORN
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    spent = {}
    for feedback in (True, False):
        sim = sim_factory()
        spec = make_spec(sim, src, overrides=[f"limits.retry_feedback={str(feedback).lower()}"])
        run_sync(spec, tmp_path / f"s-{feedback}.duckdb")
        sim.stop()
        ledger = ledger_usage(sim.ledger)
        spent[feedback] = sum(ledger[k] for k in ("input", "cached", "output", "thinking"))
    assert spent[True] < spent[False]
