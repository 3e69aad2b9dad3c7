"""Rows whose input changed: `status` counts them, `retry --changed` re-sends exactly those."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from pipeline.simproc import SimProcess
from tests.support import (
    ledger_usage,
    make_spec,
    run_cli,
    run_sync,
    sql,
    ticket_rows,
    write_jsonl,
)


def test_retry_changed_after_editing_10_rows_resends_exactly_those_10(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    rows = ticket_rows(200)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    db = tmp_path / "s.duckdb"
    first = sim_factory()
    run_sync(make_spec(first, src), db)
    first.stop()
    status = orjson.loads(run_cli("status", "t", "--json", "--db", str(db)).stdout)
    assert status["jobs"][0]["changed_rows"] == 0

    edited = {f"T-{i:05d}" for i in range(5, 200, 20)}
    for r in rows:
        if r["id"] in edited:
            r["text"] = f"Please add an export to CSV, edited ({r['id']})"
    write_jsonl(src, rows)
    status = run_cli("status", "t", "--db", str(db))
    assert "10 stored rows no longer match the input" in status.stdout, status.stdout
    retry = run_cli("retry", "t", "--changed", "--db", str(db))
    assert retry.returncode == 0 and "re-queued 10 rows" in retry.stdout, retry.stderr

    second = sim_factory()
    summary = run_sync(make_spec(second, src), db)
    second.stop()
    assert summary.rows == {"ok": 10}
    assert ledger_usage(second.ledger)["requests"] == 10
    sent = [
        rid
        for (ids,) in sql(db, "SELECT row_ids FROM calls WHERE call_id LIKE '2-%'")
        for rid in ids
    ]
    assert sorted(sent) == sorted(edited)
    labels = dict(sql(db, "SELECT row_id, label FROM results_t WHERE row_id LIKE 'T-%'"))
    assert len(labels) == 200 and {labels[i] for i in edited} == {"feature_request"}
    status = orjson.loads(run_cli("status", "t", "--json", "--db", str(db)).stdout)
    assert status["jobs"][0]["changed_rows"] == 0
