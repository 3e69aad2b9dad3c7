"""The files users actually have: compressed JSONL and CSV, TSV, Windows-written JSONL, typed
keep columns. Each runs against the real simulator into a real DuckDB file."""

from __future__ import annotations

import bz2
import csv
import gzip
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import SpecError
from pipeline.simproc import SimProcess
from pipeline.sources import CSV_BLOCK, iter_lines, read_batches
from pipeline.spec import InputSpec
from tests.support import make_spec, run_sync, sql, ticket_rows

N = 60
WORDS = [
    f"{w}{i}"
    for i, w in enumerate(
        ["invoice", "crash", "login", "refund", "export", "dark", "mode", "hours"]
    )
]
WORDS += [str(i) for i in range(1000)]


def jsonl_bytes(rows: list[dict[str, Any]], end: bytes = b"\n") -> bytes:
    return b"".join(orjson.dumps(r) + end for r in rows)


def csv_text(rows: list[dict[str, Any]], delimiter: str) -> str:
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["id", "text", "lang"], delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_zstd(path: Path, data: bytes) -> None:
    with pa.CompressedOutputStream(str(path), "zstd") as out:
        out.write(data)


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimProcess]:
    """One simulator for the many small runs here (each test has its own store)."""
    with SimProcess([]) as sim:
        yield sim


def make_input(kind: str, tmp_path: Path) -> Path:
    rows = ticket_rows(N)
    rows[7]["text"] = 'a "quoted" text, with a comma\nand a second line'
    if kind == "jsonl.gz":
        path = tmp_path / "rows.jsonl.gz"
        path.write_bytes(gzip.compress(jsonl_bytes(rows)))
    elif kind == "jsonl.zst":
        path = tmp_path / "rows.jsonl.zst"
        write_zstd(path, jsonl_bytes(rows))
    elif kind == "jsonl.bz2":
        path = tmp_path / "rows.jsonl.bz2"
        path.write_bytes(bz2.compress(jsonl_bytes(rows)))
    elif kind == "bom-crlf.jsonl":
        path = tmp_path / "windows.jsonl"
        path.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(rows, b"\r\n"))
    elif kind == "csv":
        path = tmp_path / "rows.csv"
        path.write_text(csv_text(rows, ","), encoding="utf-8")
    elif kind == "bom-crlf.csv":
        path = tmp_path / "excel.csv"
        text = csv_text(rows, ",").replace("\r\n", "\n").replace("\n", "\r\n")
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    elif kind == "csv.gz":
        path = tmp_path / "rows.csv.gz"
        path.write_bytes(gzip.compress(csv_text(rows, ",").encode()))
    elif kind == "tsv":
        path = tmp_path / "rows.tsv"
        path.write_text(csv_text(rows, "\t"), encoding="utf-8")
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "jsonl.gz",
        "jsonl.zst",
        "jsonl.bz2",
        "bom-crlf.jsonl",
        "csv",
        "bom-crlf.csv",
        "csv.gz",
        "tsv",
    ],
)
def test_each_input_kind_runs_to_the_end_with_one_result_per_row(
    kind: str, shared_sim: SimProcess, tmp_path: Path
) -> None:
    sim = shared_sim
    src = make_input(kind, tmp_path)
    db = tmp_path / "s.duckdb"
    summary = run_sync(make_spec(sim, src), db)

    assert summary.state == "done"
    assert summary.rows == {"ok": N}
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results")[0] == (N, N)
    ids = {r[0] for r in sql(db, "SELECT row_id FROM results_t")}
    assert ids == {f"T-{i:05d}" for i in range(N)}  # the first row's id survives a BOM
    assert sql(db, "SELECT DISTINCT lang FROM results_t") == [("en",)]


def test_the_text_of_a_csv_row_spanning_lines_reaches_the_model_whole(tmp_path: Path) -> None:
    src = make_input("csv.gz", tmp_path)
    rows = [r for batch in read_batches(InputSpec(str(src), "id", "text")) for r in batch]
    assert len(rows) == N
    assert rows[7].text == 'a "quoted" text, with a comma\nand a second line'
    assert rows[0].pos == "row:1" and rows[0].id == "T-00000"


@pytest.mark.parametrize("block", [1, 2, 3, 5, 1 << 20])
def test_lines_are_split_alike_whatever_the_read_size(block: int) -> None:
    data = b'\xef\xbb\xbf{"a":1}\r\n{"a":2}\n\n{"a":3}'
    stream = pa.BufferReader(data)
    assert [line.strip() for line in iter_lines(stream, block)] == [
        b'{"a":1}',
        b'{"a":2}',
        b"",
        b'{"a":3}',
    ]


def test_a_file_of_unknown_format_is_one_line_naming_the_readable_ones(tmp_path: Path) -> None:
    src = tmp_path / "rows.xlsx"
    src.write_bytes(b"x")
    with pytest.raises(SpecError, match=r"is not \.jsonl, \.ndjson, \.csv, \.tsv"):
        list(read_batches(InputSpec(str(src))))


def test_a_truncated_gzip_is_one_line_naming_the_file(tmp_path: Path) -> None:
    src = tmp_path / "rows.jsonl.gz"
    src.write_bytes(gzip.compress(jsonl_bytes(ticket_rows(2000)))[:-200])
    with pytest.raises(SpecError, match=r"rows\.jsonl\.gz'?: cannot be read"):
        list(read_batches(InputSpec(str(src), "id")))


def typed_table(n: int) -> pa.Table:
    rows = ticket_rows(n)
    return pa.table(
        {
            "id": [r["id"] for r in rows],
            "text": [r["text"] for r in rows],
            "score": pa.array([i / 4 for i in range(n)], pa.float64()),
            "vip": pa.array([i % 2 == 0 for i in range(n)], pa.bool_()),
            "seen": pa.array(
                [datetime(2026, 1, 1 + i % 28, 12, 30) for i in range(n)], pa.timestamp("us")
            ),
            "customer": pa.array(
                [{"tier": "gold" if i % 3 else "free", "seats": i} for i in range(n)],
                pa.struct([("tier", pa.string()), ("seats", pa.int32())]),
            ),
            "tags": pa.array([["a", "b"][: i % 3] for i in range(n)], pa.list_(pa.string())),
            "n": pa.array(range(n), pa.int64()),
        }
    )


def test_parquet_keep_columns_keep_their_types_in_the_typed_view(
    sim: SimProcess, tmp_path: Path
) -> None:
    src = tmp_path / "typed.parquet"
    pq.write_table(typed_table(N), src)
    keep = ["score", "vip", "seen", "customer", "tags", "n"]
    spec = make_spec(sim, src, extra={"input": {"keep": keep}})
    db = tmp_path / "s.duckdb"
    assert run_sync(spec, db).rows == {"ok": N}

    types = dict(
        sql(
            db,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'results_t'",
        )
    )
    assert types["score"] == "DOUBLE"
    assert types["vip"] == "BOOLEAN"
    assert types["seen"] == "TIMESTAMP"
    assert types["customer"] == "STRUCT(tier VARCHAR, seats INTEGER)"
    assert types["tags"] == "VARCHAR[]"
    assert types["n"] == "BIGINT"
    # numbers compare as numbers, fields of a struct are reachable
    assert sql(db, "SELECT count(*) FROM results_t WHERE score > 9")[0][0] == N - 37
    row = sql(
        db, "SELECT vip, seen, customer.tier, customer.seats, tags FROM results_t WHERE n = 4"
    )
    assert row == [(True, datetime(2026, 1, 5, 12, 30), "gold", 4, ["a"])]


def test_csv_and_jsonl_keep_columns_are_typed_as_read(sim: SimProcess, tmp_path: Path) -> None:
    rows = [
        {"id": f"r{i}", "text": f"hello {i}", "score": i + 0.5, "ok": i % 2 == 0, "meta": {"k": i}}
        for i in range(10)
    ]
    src = tmp_path / "rows.jsonl.gz"
    src.write_bytes(gzip.compress(jsonl_bytes(rows)))
    csv_src = tmp_path / "rows.csv"
    csv_src.write_text(
        "id,text,score,ok\n" + "".join(f"r{i},hi {i},{i}.5,true\n" for i in range(10))
    )
    db = tmp_path / "s.duckdb"
    run_sync(make_spec(sim, src, extra={"input": {"keep": ["score", "ok", "meta"]}}), db)
    run_sync(make_spec(sim, csv_src, name="c", extra={"input": {"keep": ["score", "ok"]}}), db)

    assert sql(db, "SELECT sum(score), count(*) FILTER (WHERE ok), max(meta.k) FROM results_t")[
        0
    ] == (50.0, 5, 9)
    assert sql(db, "SELECT sum(score), bool_and(ok) FROM results_c")[0] == (50.0, True)


def test_a_store_written_before_typed_keep_columns_still_opens_and_resumes(
    sim: SimProcess, tmp_path: Path
) -> None:
    src = tmp_path / "typed.parquet"
    pq.write_table(typed_table(N), src)
    spec = make_spec(sim, src, extra={"input": {"keep": ["score"]}})
    db = tmp_path / "s.duckdb"
    run_sync(spec, db)
    import duckdb

    con = duckdb.connect(str(db))  # as the view looked before: every keep column text
    con.execute(
        "CREATE OR REPLACE VIEW results_t AS SELECT r.row_id,"
        " json_extract_string(r.kept, '$.score') AS score FROM results r WHERE job = 't'"
    )
    con.execute("DELETE FROM results WHERE row_id IN ('T-00001', 'T-00002')")
    con.close()

    summary = run_sync(spec, db)
    assert summary.rows == {"ok": 2}
    assert sql(db, "SELECT count(*), sum(score) FROM results_t")[0] == (
        N,
        sum(i / 4 for i in range(N)),
    )


def test_keep_types_are_read_from_each_format(tmp_path: Path) -> None:
    from pipeline.sources import keep_types

    src = tmp_path / "rows.jsonl"
    src.write_bytes(jsonl_bytes([{"text": "x", "a": 1, "b": [1.5], "c": "s"}]))
    types = keep_types(InputSpec(str(src), keep=("a", "b", "c")))
    assert types == {"a": pa.int64(), "b": pa.list_(pa.float64()), "c": pa.string()}


def test_remote_glob_patterns_match_segment_by_segment() -> None:
    from pipeline.files import _match

    def m(path: str, pattern: str) -> bool:
        return _match(path.split("/"), pattern.split("/"))

    assert m("b/d/x.parquet", "b/d/*.parquet")
    assert not m("b/d/e/x.parquet", "b/d/*.parquet")
    assert m("b/d/e/x.parquet", "b/d/**/*.parquet")
    assert m("b/d/x.parquet", "b/d/**/*.parquet")
    assert not m("b/d/x.csv", "b/d/**/*.parquet")


def test_formats_and_codecs_come_from_the_file_name() -> None:
    from pipeline.files import file_format

    assert file_format("a.JSONL.GZ") == ("jsonl", "gzip")
    assert file_format("a.csv.zst") == ("csv", "zstd")
    assert file_format("a.tsv.bz2") == ("tsv", "bz2")
    assert file_format("a.parquet") == ("parquet", None)
    assert file_format("a.parquet.gz") is None
    assert file_format("a.txt") is None


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "jsonl.zst"])
def test_a_large_files_row_count_is_extrapolated_from_its_head(suffix: str, tmp_path: Path) -> None:
    import random

    from pipeline.files import input_files
    from pipeline.sources import _count_extrapolated

    rng = random.Random(5)  # text that compresses about as well as real text, not 100:1
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(12)), "n": i} for i in range(30_000)]
    data = jsonl_bytes(rows)
    path = tmp_path / f"rows.{suffix}"
    if suffix.endswith("gz"):
        path.write_bytes(gzip.compress(data))
    elif suffix.endswith("zst"):
        write_zstd(path, data)
    else:
        path.write_bytes(data)
    f = input_files(str(path))[0]
    assert f.size > 512 * 1024
    assert 0.9 * 30_000 <= _count_extrapolated(f, sample=256 * 1024) <= 1.1 * 30_000


def test_a_csv_cell_unlike_its_columns_first_block_is_read_on_as_text(tmp_path: Path) -> None:
    src = tmp_path / "rows.csv"
    first = 'r0,"a text\nover two lines",0\n'  # records, not lines, are counted on a re-read
    body = "".join(f"r{i},hello {i},{i}\n" for i in range(1, 80_000))
    src.write_text("id,text,zip\n" + first + body + "r-last,hello,A1B 2C3\nr-end,bye,7\n")
    assert src.stat().st_size > 4 * CSV_BLOCK  # the odd cells come blocks after the first
    rows = [r for b in read_batches(InputSpec(str(src), "id", keep=("zip",))) for r in b]
    assert len(rows) == 80_002
    assert [r.id for r in rows[:2]] == ["r0", "r1"] and rows[0].text == "a text\nover two lines"
    assert [(r.id, r.pos) for r in rows[-3:]] == [
        ("r79999", "row:80000"),
        ("r-last", "row:80001"),
        ("r-end", "row:80002"),
    ]
    assert len({r.id for r in rows}) == 80_002
    assert rows[-2].fields["zip"] == "A1B 2C3" and rows[5].fields["zip"] == 5
