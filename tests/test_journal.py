"""The call journal, in-process on real files: what it writes, what a later run reads back,
and that a line torn by a kill -9 costs only that line."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from pipeline.core.records import CallRecord
from pipeline.core.usage import Usage
from pipeline.run.journal import CallJournal, decode, encode, journal_files, read_journal


def call(n: int, *, lane: str = "standard", pool: str | None = None) -> CallRecord:
    return CallRecord(
        call_id=f"c{n}",
        row_ids=(f"r{n}", f"r{n}b"),
        attempt=n,
        started_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC).timestamp(),
        latency_ms=12.5,
        http_status=200,
        outcome="ok",
        error=None,
        usage=Usage(100 + n, 7, 12, 3),
        cost_usd=Decimal("0.000012345678"),
        model="gemini-3.1-flash-lite-preview",
        model_version="001",
        response_id=f"resp-{n}",
        lane=lane,
        pool=pool,
    )


@pytest.mark.parametrize(
    "record",
    [
        call(1),
        call(2, lane="batch", pool="acme"),
        CallRecord(
            "c3", ("r3",), 4, datetime(2026, 5, 6, tzinfo=UTC).timestamp(), 0.0, None, "timeout",
            "read timed out", Usage(), Decimal(0), "gpt-5-mini", None, None, "flex",
        ),
    ],
    ids=["ok", "batch-lane-in-a-pool", "refused-nothing-billed"],
)  # fmt: skip
def test_a_call_reads_back_exactly_as_written(record: CallRecord) -> None:
    line = encode("tickets", record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line.rstrip(b"\n")) == ("tickets", record)


@pytest.mark.parametrize(
    ("fields", "lane", "pool"),
    [(14, "standard", None), (15, "batch", None), (16, "batch", "acme")],
    ids=["before-lanes", "before-pools", "current"],
)
def test_lines_from_older_versions_read_with_the_defaults(
    fields: int, lane: str, pool: str | None
) -> None:
    full = orjson.loads(encode("j", call(1, lane="batch", pool="acme")))
    job, record = decode(orjson.dumps(full[:fields]))
    assert (job, record.call_id, record.lane, record.pool) == ("j", "c1", lane, pool)


def test_a_start_written_as_iso_text_by_an_older_version_reads_as_the_same_instant() -> None:
    full = orjson.loads(encode("j", call(1)))
    full[4] = "2026-01-02T03:04:05.678901+00:00"
    _, record = decode(orjson.dumps(full))
    assert record.started_at == call(1).started_at


def test_appended_calls_are_on_disk_before_close_and_read_back_in_order(tmp_path: Path) -> None:
    db = str(tmp_path / "s.duckdb")
    journal = CallJournal(db)
    journal.append("j", [call(1), call(2)])
    journal.append("k", [call(3)])
    # read by another reader while the journal is still open: nothing waits in a buffer
    assert [(job, c.call_id) for job, c in read_journal(journal_files(db))] == [
        ("j", "c1"),
        ("j", "c2"),
        ("k", "c3"),
    ]
    journal.close()
    assert journal_files(db) == [Path(db + ".journal.1")]


def test_a_torn_last_line_loses_only_that_call(tmp_path: Path) -> None:
    db = str(tmp_path / "s.duckdb")
    journal = CallJournal(db)
    journal.append("j", [call(1), call(2)])
    journal.close()
    torn = encode("j", call(3))[:40]  # the kill came in the middle of the write
    with open(db + ".journal.1", "ab") as fh:
        fh.write(torn)
    assert [c.call_id for _, c in read_journal(journal_files(db))] == ["c1", "c2"]


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\n", b"not json\n", b"[]\n", b'["j", "c9"]\n', b"{}\n"],
    ids=["empty", "blank-line", "not-json", "empty-list", "short-list", "object"],
)
def test_unreadable_lines_are_skipped_and_the_rest_recovered(
    tmp_path: Path, garbage: bytes
) -> None:
    path = tmp_path / "s.duckdb.journal.1"
    path.write_bytes(encode("j", call(1)) + garbage + encode("j", call(2)))
    assert [c.call_id for _, c in read_journal([path])] == ["c1", "c2"]


def test_rotate_hands_off_one_generation_and_opens_the_next(tmp_path: Path) -> None:
    db = str(tmp_path / "s.duckdb")
    journal = CallJournal(db)
    journal.append("j", [call(1)])
    done = journal.rotate()
    journal.append("j", [call(2)])
    assert done == Path(db + ".journal.1") and journal.current == Path(db + ".journal.2")
    assert [c.call_id for _, c in read_journal([done])] == ["c1"]
    done.unlink()  # what the writer does once the generation is committed
    journal.close()
    assert [c.call_id for _, c in read_journal(journal_files(db))] == ["c2"]


def test_close_removes_an_empty_generation_and_keeps_one_with_calls(tmp_path: Path) -> None:
    db = str(tmp_path / "s.duckdb")
    empty = CallJournal(db)
    empty.close()
    assert journal_files(db) == []
    kept = CallJournal(db)
    kept.append("j", [call(1)])
    kept.close()
    assert journal_files(db) == [Path(db + ".journal.1")]


def test_generations_are_found_oldest_first_and_only_beside_their_own_store(
    tmp_path: Path,
) -> None:
    db = tmp_path / "a[1].duckdb"  # glob characters in the store's name
    for name in ["journal.10", "journal.2", "journal.tmp", "journal"]:
        (tmp_path / f"a[1].duckdb.{name}").write_bytes(b"")
    (tmp_path / "a1.duckdb.journal.3").write_bytes(b"")  # another store's journal
    assert [p.name for p in journal_files(str(db))] == [
        "a[1].duckdb.journal.2",
        "a[1].duckdb.journal.10",
    ]


def test_the_journal_file_is_private_to_its_owner(tmp_path: Path) -> None:
    db = str(tmp_path / "s.duckdb")
    journal = CallJournal(db)
    try:
        assert os.stat(journal.current).st_mode & 0o777 == 0o600
    finally:
        journal.close()
