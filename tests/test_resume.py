"""The resume lookup (`Store.to_do`) over a real DuckDB file: which input rows still need a
result, and for a repeated id, where its stored result came from."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core.records import BatchRow, ResultRecord
from pipeline.core.usage import Usage
from pipeline.store import Store

JOB = "tickets"


def result(row_id: str, pos: str, status: str = "ok") -> ResultRecord:
    ok = status == "ok"
    return ResultRecord(
        row_id,
        pos,
        status,
        {"label": "bug"} if ok else None,
        None if ok else "no valid answer after 4 attempts",
        1,
        Usage(10, 0, 2, 0),
        Decimal("0.000005500000"),
        None,
        time.time(),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(str(tmp_path / "s.duckdb"))
    try:
        yield opened
    finally:
        opened.close()


def to_do(store: Store, rows: list[tuple[str, str]], job: str = JOB) -> dict[int, str | None]:
    ids = pa.array([r[0] for r in rows], pa.string())
    positions = pa.array([r[1] for r in rows], pa.string())
    return store.to_do(job, ids, positions)


INPUT = [("a", "line:1"), ("b", "line:2"), ("c", "line:3")]


@pytest.mark.parametrize(
    ("stored", "in_batch", "expected"),
    [
        pytest.param([], [], {0: None, 1: None, 2: None}, id="nothing-stored"),
        pytest.param([("a", "line:1", "ok")], [], {1: None, 2: None}, id="done-row-skipped"),
        pytest.param(
            [("b", "line:2", "failed"), ("c", "line:3", "invalid")],
            [],
            {0: None},
            id="failed-and-invalid-rows-are-results-too",
        ),
        pytest.param([("c", "line:3", "blocked")], [], {0: None, 1: None}, id="blocked-row"),
        pytest.param([], [("b", "line:2")], {0: None, 2: None}, id="row-in-an-open-batch"),
        pytest.param(
            [("a", "line:9", "ok")], [], {0: "line:9", 1: None, 2: None}, id="id-stored-elsewhere"
        ),
        pytest.param([(row_id, pos, "ok") for row_id, pos in INPUT], [], {}, id="everything-done"),
    ],
)
def test_to_do_names_the_rows_still_without_a_result(
    store: Store,
    stored: list[tuple[str, str, str]],
    in_batch: list[tuple[str, str]],
    expected: dict[int, str | None],
) -> None:
    store.write(JOB, [result(row_id, pos, status) for row_id, pos, status in stored], [])
    if in_batch:
        rows = [BatchRow(0, row_id, pos, "text", {}, 0) for row_id, pos in in_batch]
        store.record_batch(JOB, "batch-1", rows, 1, Decimal("0.01"))
    assert to_do(store, INPUT) == expected


def test_another_jobs_results_and_batches_do_not_count(store: Store) -> None:
    store.write("other", [result("a", "line:1")], [])
    store.record_batch("other", "batch-1", [BatchRow(0, "b", "line:2", "t", {}, 0)], 1, Decimal(0))
    assert to_do(store, INPUT) == {0: None, 1: None, 2: None}


def test_a_repeated_id_is_sent_once_and_its_repeat_names_the_first(store: Store) -> None:
    store.write(JOB, [result("a", "line:1")], [])
    rows = [("a", "line:1"), ("a", "line:4"), ("b", "line:5")]
    assert to_do(store, rows) == {1: "line:1", 2: None}


def test_requeued_failed_rows_are_to_do_again(store: Store) -> None:
    store.write(JOB, [result("a", "line:1"), result("b", "line:2", "failed")], [])
    assert store.requeue(JOB, ["failed"]) == 1
    assert to_do(store, INPUT) == {1: None, 2: None}


def test_a_long_lookup_after_a_short_one_gives_every_index(store: Store) -> None:
    store.write(JOB, [result(f"r{i}", f"line:{i}") for i in range(0, 5000, 2)], [])
    assert to_do(store, [("r1", "line:1"), ("r2", "line:2")]) == {0: None}
    rows = [(f"r{i}", f"line:{i}") for i in range(5000)]
    assert to_do(store, rows) == {i: None for i in range(1, 5000, 2)}


def test_an_empty_input_has_nothing_to_do(store: Store) -> None:
    assert to_do(store, []) == {}
