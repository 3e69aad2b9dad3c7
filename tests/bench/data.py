"""Bench inputs (generated into tests/bench/_data/, git-ignored) and job documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tests.support import ticket_rows

DATA = Path(__file__).resolve().parent / "_data"
MODEL = "gemini-3.1-flash-lite-preview"
LABELS = ["billing", "bug", "account", "feature_request", "other"]


def data_dir() -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    return DATA


def tickets_jsonl(n: int) -> Path:
    path = data_dir() / f"tickets_{n}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            step = 100_000
            for start in range(0, n, step):
                rows = _rows(start, min(n, start + step))
                fh.write(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
        tmp.rename(path)
    return path


def tickets_parquet(n: int) -> Path:
    path = data_dir() / f"tickets_{n}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("lang", pa.string())])
        with pq.ParquetWriter(tmp, schema) as writer:
            step = 100_000
            for start in range(0, n, step):
                writer.write_table(pa.Table.from_pylist(_rows(start, min(n, start + step)), schema))
        tmp.rename(path)
    return path


def tickets_jsonl_gz(n: int) -> Path:
    """The JSONL tickets, gzip-compressed (a real .gz, written by the standard library)."""
    import gzip
    import shutil

    path = data_dir() / f"tickets_{n}.jsonl.gz"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with tickets_jsonl(n).open("rb") as src, gzip.open(tmp, "wb", compresslevel=6) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        tmp.rename(path)
    return path


def tickets_csv_gz(n: int) -> Path:
    """The Parquet tickets as a gzip-compressed CSV with a header line."""
    import pyarrow.csv as pacsv

    path = data_dir() / f"tickets_{n}.csv.gz"
    if not path.exists():
        tmp = data_dir() / f"tickets_{n}.csv.gz.tmp"
        pf = pq.ParquetFile(tickets_parquet(n))
        with (
            pa.CompressedOutputStream(str(tmp), "gzip") as out,
            pacsv.CSVWriter(out, pf.schema_arrow) as writer,
        ):
            for batch in pf.iter_batches(batch_size=100_000):
                writer.write_batch(batch)
        tmp.rename(path)
    return path


def _rows(start: int, stop: int) -> list[dict[str, Any]]:
    base = ticket_rows(5)
    return [
        {"id": f"T-{i:07d}", "text": f"{base[i % 5]['text'].split(' (#')[0]} (#{i})", "lang": "en"}
        for i in range(start, stop)
    ]


def job_doc(
    name: str,
    input_path: Path,
    base_url: str,
    *,
    api: str = "gemini",
    rpm: int = 0,
    concurrency: int | str = 64,
    rows_per_request: int = 1,
    max_attempts: int = 6,
) -> dict[str, Any]:
    return {
        "name": name,
        "task": "classify",
        "model": MODEL,
        "input": {"path": str(input_path), "id": "id", "keep": ["lang"]},
        "provider": {
            "api": api,
            "base_url": base_url,
            "max_output_tokens": 64,
            "timeout": {"connect": 5, "read": 30, "total": 60},
        },
        "limits": {
            "rpm": rpm,
            "tpm": 0,
            "concurrency": concurrency,
            "rows_per_request": rows_per_request,
            "max_attempts": max_attempts,
        },
        "classify": {"labels": LABELS},
    }


def write_toml(doc: dict[str, Any], path: Path) -> Path:
    """A minimal TOML writer for job documents (tables of scalars and lists)."""
    lines: list[str] = []
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    for k, v in doc.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml(v)}")
    for name, table in tables.items():
        _table(lines, name, table)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _table(lines: list[str], name: str, table: dict[str, Any]) -> None:
    lines.append(f"[{name}]")
    subs = {k: v for k, v in table.items() if isinstance(v, dict)}
    for k, v in table.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml(v)}")
    for k, v in subs.items():
        _table(lines, f"{name}.{k}", v)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
