"""The store on a real DuckDB file: one result per row, whatever is written twice."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from pipeline.store import CallRecord, ResultRecord, Store, changed_keys
from pipeline.usage import Usage


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
        datetime.now(UTC),
    )


def call(call_id: str, row_id: str) -> CallRecord:
    return CallRecord(
        call_id,
        (row_id,),
        1,
        datetime.now(UTC),
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


def test_changed_keys_name_the_dotted_path() -> None:
    old = {"task": "classify", "classify": {"labels": ["a", "b"], "multi_label": False}}
    new = {"task": "classify", "classify": {"labels": ["a"], "multi_label": False}, "x": 1}
    assert changed_keys(old, new) == ["classify.labels", "x"]
