"""JSONL / CSV / TSV / Parquet readers: batches of Row, read lazily so memory stays flat.

Files may be local or remote and JSONL/CSV may be compressed (pipeline.files opens them);
a UTF-8 byte-order mark and CRLF line ends read like any other file.

A row that cannot be read keeps its position as id (`line:57`, `row:57`) and carries
the reason in `error`; the engine stores it as an `invalid` result and goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import files
from pipeline.core.records import Row
from pipeline.errors import SpecError
from pipeline.files import InputFile
from pipeline.spec import InputSpec

T = TypeVar("T")
log = logging.getLogger("flashpipe")
BATCH_ROWS = 1000
# rows per Parquet frame, as for JSONL: 8192-row frames put 8192 rows at once through the
# engine (rows, keys, lookups) and a 1M-row run peaked at 374-397 MiB against 335 with 1000
PARQUET_FRAME_ROWS = BATCH_ROWS
# bytes of CSV per parsed block (about 3,500 rows of the bench's tickets; the first one types
# the columns). Reading a 1M-row CSV.gz alone
# with 1 MiB blocks climbed from 184 to 214 MiB over its first 300k rows (a 200k file stayed at
# 184), so its resume-skip pair read 1.20-1.29; with 256 KiB blocks both stayed at 174 MiB
CSV_BLOCK = 1 << 18


def input_files(spec: InputSpec) -> list[InputFile]:
    """The files an input path or glob names (local or remote), sorted."""
    return files.input_files(spec.path)


def read_batches(spec: InputSpec, batch_rows: int = BATCH_ROWS) -> Iterator[list[Row]]:
    """Yield batches of rows from every input file in order."""
    for frame in read_frames(spec, batch_rows):
        yield frame.rows()


class Frame:
    """A batch of input whose ids are known before its rows are built.

    Resume looks the ids up first and builds Row objects only for the rows still to do, so
    skipping a million stored Parquet rows costs Arrow reads, not a million Python objects.
    """

    holds_rows = False  # True: its rows are parsed already and sit in memory

    def __len__(self) -> int:
        raise NotImplementedError

    def ids(self) -> pa.Array:
        raise NotImplementedError

    def positions(self) -> pa.Array:
        raise NotImplementedError

    def rows(self, indices: list[int] | None = None) -> list[Row]:
        raise NotImplementedError


class _RowFrame(Frame):
    holds_rows = True

    def __init__(self, rows: list[Row]):
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> pa.Array:
        return pa.array([r.id for r in self._rows], pa.string())

    def positions(self) -> pa.Array:
        return pa.array([r.pos for r in self._rows], pa.string())

    def rows(self, indices: list[int] | None = None) -> list[Row]:
        return self._rows if indices is None else [self._rows[i] for i in indices]


class _ArrowFrame(Frame):
    """Rows of a Parquet file. Only the id column is read up front; the other columns are
    read when rows are asked for, so resume skips stored rows without decoding their text."""

    def __init__(
        self,
        ids: pa.Array | None,
        length: int,
        spec: InputSpec,
        prefix: str,
        offset: int,
        load: Callable[[], pa.RecordBatch],
    ):
        self._ids = ids
        self._length = length
        self._load = load
        self._spec = spec
        self._prefix = f"{prefix}row:"
        self._offset = offset

    def __len__(self) -> int:
        return self._length

    def _pos(self, i: int) -> str:
        return f"{self._prefix}{self._offset + i + 1}"

    def positions(self) -> pa.Array:
        numbers = pc.add(_counting(len(self)), self._offset + 1)
        return pc.binary_join_element_wise(self._prefix, numbers.cast(pa.string()), "")

    def ids(self) -> pa.Array:
        if self._ids is None:
            return self.positions()
        column = self._ids
        if column.null_count == 0 and (
            pa.types.is_integer(column.type)
            or (
                (pa.types.is_string(column.type) or pa.types.is_large_string(column.type))
                and (len(column) == 0 or pc.min(pc.utf8_length(column)).as_py() > 0)
            )
        ):
            return column.cast(pa.string())
        # odd ids (floats, nulls, empties): row by row, as _make_row will see them
        texts = [_id_text(v) or self._pos(i) for i, v in enumerate(column.to_pylist())]
        return pa.array(texts, pa.string())

    def rows(self, indices: list[int] | None = None) -> list[Row]:
        full = self._load()
        batch = full if indices is None else full.take(pa.array(indices, pa.int64()))
        picked = range(len(self)) if indices is None else indices
        return [
            _make_row(rec, self._spec, self._pos(i))
            for i, rec in zip(picked, batch.to_pylist(), strict=True)
        ]


@functools.cache
def _counting(n: int) -> pa.Array:
    """0, 1, ..., n-1 as an Arrow array (built once per frame size)."""
    return pa.array(range(n), pa.int64())


def _id_text(value: Any) -> str | None:
    """The id as the store keeps it; None when missing or unusable (_make_row says why)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, str | int | float) else None


def read_frames(spec: InputSpec, batch_rows: int = BATCH_ROWS) -> Iterator[Frame]:
    """Yield frames from every input file in order."""
    found = input_files(spec)
    for f in found:
        prefix = f"{f.name}#" if len(found) > 1 else ""
        if f.format == "jsonl":
            for rows in _jsonl_batches(f, spec, prefix, batch_rows):
                yield _RowFrame(rows)
        elif f.format == "parquet":
            yield from _parquet_frames(f, spec, prefix, max(batch_rows, PARQUET_FRAME_ROWS))
        else:
            yield from _csv_frames(f, spec, prefix, batch_rows)


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


BOM = b"\xef\xbb\xbf"
READ_BLOCK = 1 << 20


def iter_lines(stream: Any, block: int = READ_BLOCK) -> Iterator[bytes]:
    """Lines of a byte stream (without their LF), a block at a time. A leading UTF-8 BOM is
    dropped; a CR before the LF stays and is stripped with the other whitespace."""
    tail = b""
    while len(tail) < len(BOM):  # the start, whole enough to see a BOM
        chunk = stream.read(block)
        if not chunk:
            break
        tail += chunk
    tail = tail.removeprefix(BOM)
    while True:
        lines = tail.split(b"\n")
        tail = lines.pop()
        yield from lines
        chunk = stream.read(block)
        if not chunk:
            break
        tail += chunk
    if tail:
        yield tail


def _jsonl_batches(f: InputFile, spec: InputSpec, prefix: str, n: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    with _opened(f) as fh:
        for lineno, raw in enumerate(_checked(f, iter_lines(fh)), start=1):
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


def _opened(f: InputFile) -> Any:
    try:
        return f.open()
    except (OSError, ValueError) as exc:
        raise SpecError(f"input.path: {f.uri!r} cannot be opened: {_first_line(exc)}") from None


def _checked(f: InputFile, items: Iterator[T]) -> Iterator[T]:
    """Read errors in the middle of a file (a truncated .gz, a CSV cell that does not fit its
    column's type, a dropped connection) as one line that names the file."""
    try:
        yield from items
    except (OSError, pa.ArrowException) as exc:
        raise SpecError(f"input {f.uri!r}: cannot be read: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _missing_columns(f: InputFile, spec: InputSpec, names: set[str]) -> None:
    columns = ", ".join(sorted(names))
    if spec.text not in names:
        raise SpecError(f"input.text: column {spec.text!r} is not in {f.name} (columns: {columns})")
    if spec.id is not None and spec.id not in names:
        raise SpecError(f"input.id: column {spec.id!r} is not in {f.name} (columns: {columns})")


def _csv_reader(
    f: InputFile,
    spec: InputSpec,
    block: int = CSV_BLOCK,
    *,
    all_text: Sequence[str] = (),
    skip: int = 0,
) -> Any:
    """pyarrow's streaming CSV reader: column types inferred from the first block, the id and
    text columns (and `all_text`) read as strings; quoted values may span lines; `skip` rows
    after the header are passed over."""
    import pyarrow.csv as pacsv

    strings = {c: pa.string() for c in (*all_text, spec.text, *([spec.id] if spec.id else []))}
    try:
        return pacsv.open_csv(
            _opened(f),
            read_options=pacsv.ReadOptions(block_size=block, skip_rows_after_names=skip),
            parse_options=pacsv.ParseOptions(
                delimiter="\t" if f.format == "tsv" else ",", newlines_in_values=True
            ),
            convert_options=pacsv.ConvertOptions(column_types=strings),
        )
    except (OSError, pa.ArrowException) as exc:
        raise SpecError(f"input {f.uri!r}: not a readable CSV file: {_first_line(exc)}") from None


def _csv_frames(f: InputFile, spec: InputSpec, prefix: str, n: int) -> Iterator[Frame]:
    reader = _csv_reader(f, spec)
    _missing_columns(f, spec, set(reader.schema.names))
    offset = 0
    blocks = iter(reader.read_next_batch, None)
    as_text = False
    while True:
        try:
            block = next(blocks, None)
        except pa.ArrowInvalid as exc:
            if as_text or "conversion error" not in str(exc):
                raise SpecError(f"input {f.uri!r}: cannot be read: {_first_line(exc)}") from None
            # a cell unlike what the first block made of its column: read on from here with
            # every column as text (the typed view casts them back; what does not fit is NULL)
            as_text = True
            log.info(
                "%s: a CSV value unlike its column's type at row %d; reading on as text",
                f.uri,
                offset + 1,
            )
            reader = _csv_reader(f, spec, all_text=reader.schema.names, skip=offset)
            blocks = _checked(f, iter(reader.read_next_batch, None))
            continue
        except (OSError, pa.ArrowException) as exc:
            raise SpecError(f"input {f.uri!r}: cannot be read: {_first_line(exc)}") from None
        if block is None:
            return
        for start in range(0, block.num_rows, n):
            batch = block.slice(start, n)
            ids = batch.column(spec.id) if spec.id else None
            yield _CsvFrame(
                ids, batch.num_rows, spec, prefix, offset, functools.partial(_same, batch)
            )
            offset += batch.num_rows


class _CsvFrame(_ArrowFrame):
    """Rows of a CSV block: already decoded and in memory, so the reader does not read the
    next group ahead while this one is looked up (as for JSONL)."""

    holds_rows = True


def _same(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch


def _parquet_file(f: InputFile) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(f.open_random_access())
    except Exception as exc:  # pyarrow raises several types for an unreadable file
        raise SpecError(
            f"input.path: {f.uri!r} is not a readable Parquet file ({_first_line(exc)})"
        ) from None


# Parquet columns are decoded on the reading thread (use_threads=False): Arrow's CPU thread
# pool kept ~25 MiB more resident (reading a 1M-row file: 185 against 165 MiB peak) and
# decoded no faster on 2 cores. The row groups are read a frame at a time either way.
def _parquet_frames(f: InputFile, spec: InputSpec, prefix: str, n: int) -> Iterator[Frame]:
    pf = _parquet_file(f)
    names = set(pf.schema_arrow.names)
    _missing_columns(f, spec, names)
    wanted = [c for c in {spec.text, *(spec.keep), *([spec.id] if spec.id else [])} if c in names]
    wanted = sorted(wanted)
    offset = 0
    for rg in range(pf.metadata.num_row_groups):
        size = pf.metadata.row_group(rg).num_rows
        ids = (
            pf.read_row_group(rg, columns=[spec.id], use_threads=False).column(0)
            if spec.id
            else None
        )
        loader = _RowGroupLoader(pf, rg, wanted, n)
        for k, start in enumerate(range(0, size, n)):
            length = min(n, size - start)
            frame_ids = ids.slice(start, length).combine_chunks() if ids is not None else None
            yield _ArrowFrame(
                frame_ids, length, spec, prefix, offset + start, functools.partial(loader.frame, k)
            )
        offset += size


class _RowGroupLoader:
    """Reads one row group's frames in order, only if some frame's rows are asked for: frames
    wholly done are skipped over without building rows, and memory stays one frame."""

    def __init__(self, pf: Any, rg: int, columns: list[str], n: int):
        self._pf, self._rg, self._columns, self._n = pf, rg, columns, n
        self._it: Iterator[pa.RecordBatch] | None = None
        self._next = 0

    def frame(self, k: int) -> pa.RecordBatch:
        if self._it is None or k < self._next:
            self._it = self._pf.iter_batches(
                batch_size=self._n, columns=self._columns, row_groups=[self._rg], use_threads=False
            )
            self._next = 0
        while True:
            batch = next(self._it)
            self._next += 1
            if self._next - 1 == k:
                return batch


def count_rows_fast(spec: InputSpec) -> tuple[int, bool]:
    """Total rows (exact for Parquet from metadata, and for small text files) and whether the
    count is exact; larger JSONL/CSV files (remote ones over 1 MiB) are extrapolated from
    their first MiB."""
    total = 0
    exact = True
    for f in input_files(spec):
        if f.format == "parquet":
            total += _parquet_file(f).metadata.num_rows
        elif f.size <= (READ_BLOCK if files.is_remote(f.uri) else 8 << 20):
            total += _count_exact(f, spec)  # remote: never download a file just to count it
        else:
            total += _count_extrapolated(f)
            exact = False
    return total, exact


def _count_exact(f: InputFile, spec: InputSpec) -> int:
    if f.format in ("csv", "tsv"):
        reader = _csv_reader(f, spec)
        return sum(b.num_rows for b in _checked(f, iter(reader.read_next_batch, None)))
    with _opened(f) as fh:
        return sum(1 for line in _checked(f, iter_lines(fh)) if line.strip())


def _count_extrapolated(f: InputFile, sample: int = READ_BLOCK) -> int:
    """Lines in the content behind the first MiB of the stored file, scaled to its size."""
    with f.open_raw() as raw:
        if f.codec is None:
            head = raw.read(sample)
            return int(f.size / max(1, len(head)) * head.count(b"\n"))
        counted = _CountingReader(raw)
        stream = pa.CompressedInputStream(pa.PythonFile(counted, mode="r"), f.codec)
        lines = 0
        while counted.consumed < sample:
            chunk = stream.read(256 * 1024)
            if not chunk:
                break
            lines += chunk.count(b"\n")
        return int(f.size / max(1, counted.consumed) * lines)


class _CountingReader:
    """A raw stream that counts the bytes the decompressor has taken from it, handed over in
    small reads so what it holds undecompressed (the count's error) stays under 16 KiB."""

    MAX_READ = 16 * 1024

    def __init__(self, raw: Any):
        self._raw = raw
        self.consumed = 0
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._raw.read(self.MAX_READ if n < 0 else min(n, self.MAX_READ))
        self.consumed += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def keep_types(spec: InputSpec) -> dict[str, pa.DataType]:
    """The Arrow type of each keep column, as the first input file gives it (Parquet from its
    schema, CSV from the reader's inference, JSONL from the values of its first rows)."""
    if not spec.keep:
        return {}
    f = input_files(spec)[0]
    if f.format == "parquet":
        schema = _parquet_file(f).schema_arrow
    elif f.format in ("csv", "tsv"):
        schema = _csv_reader(f, spec).schema
    else:
        rows = next(_jsonl_batches(f, spec, "", BATCH_ROWS), [])
        records = [r.fields for r in rows if r.fields]
        types = {}
        for k in spec.keep:
            try:
                types[k] = pa.array([r.get(k) for r in records]).type
            except (pa.ArrowException, TypeError, ValueError):
                continue  # mixed values: the view keeps them as text
        return types
    return {k: schema.field(k).type for k in spec.keep if k in schema.names}
