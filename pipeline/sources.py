"""JSONL / Parquet readers: batches of Row, read lazily so memory stays flat.

A row that cannot be read keeps its position as id (`line:57`, `row:57`) and carries
the reason in `error`; the engine stores it as an `invalid` result and goes on.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import SpecError
from pipeline.spec import InputSpec

BATCH_ROWS = 1000


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    pos: str  # where the row sits in the input; doubles as id when there is no id column
    text: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def input_files(spec: InputSpec) -> list[Path]:
    """The files an input path or glob names, sorted; an empty match is a job-file error."""
    pattern = spec.path
    paths = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
    files = [Path(p) for p in paths if Path(p).is_file()]
    if not files:
        raise SpecError(f"input.path: {pattern!r} matches no file")
    for f in files:
        if _kind(f) is None:
            raise SpecError(f"input.path: {str(f)!r} is not .jsonl, .ndjson or .parquet")
    return files


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    return None


def read_batches(spec: InputSpec, batch_rows: int = BATCH_ROWS) -> Iterator[list[Row]]:
    """Yield batches of rows from every input file in order."""
    files = input_files(spec)
    for f in files:
        prefix = f"{f.name}#" if len(files) > 1 else ""
        reader = _jsonl_batches if _kind(f) == "jsonl" else _parquet_batches
        yield from reader(f, spec, prefix, batch_rows)


def _make_row(record: Any, spec: InputSpec, pos: str) -> Row:
    if not isinstance(record, dict):
        return Row(
            pos, pos, None, error=f"{pos}: expected a JSON object, got {type(record).__name__}"
        )
    row_id = pos
    if spec.id is not None:
        raw_id = record.get(spec.id)
        if raw_id is None or raw_id == "":
            return Row(pos, pos, None, record, f"{pos}: id field {spec.id!r} is missing")
        if isinstance(raw_id, float) and raw_id.is_integer():
            raw_id = int(raw_id)
        if not isinstance(raw_id, str | int | float) or isinstance(raw_id, bool):
            return Row(pos, pos, None, record, f"{pos}: id {raw_id!r} is not a string or number")
        row_id = str(raw_id)
    text = record.get(spec.text)
    if text is None:
        return Row(row_id, pos, None, record, f"{pos}: text field {spec.text!r} is missing")
    if not isinstance(text, str):
        return Row(
            row_id,
            pos,
            None,
            record,
            f"{pos}: text field {spec.text!r} is {type(text).__name__}, expected a string",
        )
    if not text.strip():
        return Row(row_id, pos, None, record, f"{pos}: text field {spec.text!r} is empty")
    return Row(row_id, pos, text, record)


def _jsonl_batches(path: Path, spec: InputSpec, prefix: str, n: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            pos = f"{prefix}line:{lineno}"
            stripped = raw.strip()
            if not stripped:
                continue
            try:
                record = orjson.loads(stripped)
            except orjson.JSONDecodeError as exc:
                reason = "not valid UTF-8" if "utf-8" in str(exc).lower() else "not valid JSON"
                batch.append(Row(pos, pos, None, error=f"{pos}: {reason} ({exc})"[:300]))
            else:
                batch.append(_make_row(record, spec, pos))
            if len(batch) >= n:
                yield batch
                batch = []
    if batch:
        yield batch


def _parquet_batches(path: Path, spec: InputSpec, prefix: str, n: int) -> Iterator[list[Row]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for an unreadable file
        raise SpecError(
            f"input.path: {str(path)!r} is not a readable Parquet file ({exc})"
        ) from None
    names = set(pf.schema_arrow.names)
    if spec.text not in names:
        raise SpecError(
            f"input.text: column {spec.text!r} is not in {path.name} (columns: {', '.join(sorted(names))})"
        )
    wanted = [c for c in {spec.text, *(spec.keep), *([spec.id] if spec.id else [])} if c in names]
    wanted = sorted(wanted)
    offset = 0
    for rb in pf.iter_batches(batch_size=n, columns=wanted):
        records = rb.to_pylist()
        batch = [
            _make_row(rec, spec, f"{prefix}row:{offset + i + 1}") for i, rec in enumerate(records)
        ]
        offset += len(records)
        yield batch


def count_rows_fast(spec: InputSpec) -> tuple[int, bool]:
    """Total rows (exact for Parquet from metadata) and whether the count is exact."""
    import pyarrow.parquet as pq

    total = 0
    exact = True
    for f in input_files(spec):
        if _kind(f) == "parquet":
            total += pq.ParquetFile(f).metadata.num_rows
        else:
            size = f.stat().st_size
            if size <= 8 << 20:
                with f.open("rb") as fh:
                    total += sum(1 for line in fh if line.strip())
            else:
                with f.open("rb") as fh:
                    head = fh.read(1 << 20)
                lines = max(1, head.count(b"\n"))
                total += int(size / (len(head) / lines))
                exact = False
    return total, exact
