"""The store on a real DuckDB file: one result per row, whatever is written twice."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import pipeline.store.store as store_module
from pipeline.core.records import CallRecord, ResultRecord
from pipeline.core.usage import Usage
from pipeline.errors import JobBusy, StoreError
from pipeline.store import Store, changed_keys


def result(row_id: str, label: str) -> ResultRecord:
    return ResultRecord(
        row_id,
        "line:1",
        "ok",
        {"label": label},
        None,
        1,
        Usage(10, 0, 2, 0),
        Decimal("0.000005500000"),
        None,
        time.time(),
    )


def call(call_id: str, row_id: str) -> CallRecord:
    return CallRecord(
        call_id,
        (row_id,),
        1,
        time.time(),
        12.0,
        200,
        "ok",
        None,
        Usage(10, 0, 2, 0),
        Decimal("0.000005500000"),
        "m",
        "m-001",
        "resp-1",
    )


def test_a_row_written_twice_keeps_its_first_result_and_both_calls(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.duckdb"))
    try:
        store.write("j", [result("a", "billing")], [call("c1", "a")])
        store.write("j", [result("a", "bug"), result("b", "bug")], [call("c2", "a")])
        rows = store.con.execute(
            "SELECT row_id, output->>'label' FROM results ORDER BY 1"
        ).fetchall()
        assert rows == [("a", "billing"), ("b", "bug")]
        assert store.con.execute("SELECT count(*) FROM calls").fetchall()[0][0] == 2
    finally:
        store.close()


def test_times_carried_as_epoch_seconds_are_stored_as_the_same_instants(tmp_path: Path) -> None:
    when = datetime(2026, 12, 2, 16, 30, 1, 234567, tzinfo=UTC)
    done, sent = result("a", "bug"), call("c1", "a")
    done.finished_at = sent.started_at = when.timestamp()
    store = Store(str(tmp_path / "s.duckdb"))
    try:
        store.write("j", [done], [sent])
        stored = store.con.execute(
            "SELECT r.finished_at, c.started_at FROM results r, calls c"
        ).fetchall()
        assert stored == [(when, when)]
    finally:
        store.close()


def test_costs_are_stored_exactly_to_twelve_places_and_rounded_past_them(tmp_path: Path) -> None:
    exact, zero = result("a", "bug"), result("b", "bug")
    exact.cost_usd = Decimal(126) * Decimal("0.10") / Decimal(1_000_000)  # 0.0000126
    zero.cost_usd = Decimal(0)
    long, sent = result("c", "bug"), call("c1", "c")
    long.cost_usd = sent.cost_usd = Decimal("0.0000000000015")  # 13 places: rounds half even
    long.saved_usd = Decimal("0.25")
    store = Store(str(tmp_path / "s.duckdb"))
    try:
        store.write("j", [exact, zero, long], [sent])
        stored = store.con.execute(
            "SELECT row_id, cost_usd, saved_usd FROM results ORDER BY 1"
        ).fetchall()
        assert stored == [
            ("a", Decimal("0.000012600000"), Decimal(0)),
            ("b", Decimal(0), Decimal(0)),
            ("c", Decimal("0.000000000002"), Decimal("0.25")),
        ]
        assert store.con.execute("SELECT cost_usd FROM calls").fetchall() == [
            (Decimal("0.000000000002"),)
        ]
    finally:
        store.close()


def test_changed_keys_name_the_dotted_path() -> None:
    old = {"task": "classify", "classify": {"labels": ["a", "b"], "multi_label": False}}
    new = {"task": "classify", "classify": {"labels": ["a"], "multi_label": False}, "x": 1}
    assert changed_keys(old, new) == ["classify.labels", "x"]


def test_the_writer_reopens_its_connection_and_no_second_runner_gets_in_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "REOPEN_ROWS", 40)
    path = str(tmp_path / "s.duckdb")
    store = Store(path, for_run=True)
    try:
        first = store.con
        for batch in range(5):
            ids = [f"r{batch}-{i}" for i in range(10)]
            store.write("j", [result(r, "bug") for r in ids], [call(f"c-{r}", r) for r in ids])
            with pytest.raises(JobBusy, match=f"process {os.getpid()}"):
                Store(path, for_run=True)
            with pytest.raises(StoreError, match="busy"):
                Store(path, read_only=True)
        assert store.con is not first  # 50 results + 50 calls: reopened twice
        assert store.con.execute(
            "SELECT count(*), count(DISTINCT row_id) FROM results"
        ).fetchall() == [(50, 50)]
    finally:
        store.close()
    Store(path, for_run=True).close()  # free again once the writer is done
