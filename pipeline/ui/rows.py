"""The Rows, Row and Errors pages' queries: every filter a bound parameter, keyset paging.

A filter column is only ever a name looked up in the job's typed view (and quoted); the value,
the search text and the page cursor are bound parameters. Paging walks `row_id` (the UNIQUE key)
forwards with `row_id > ?` or backwards with `row_id < ?`, never OFFSET, so page 20,000 costs
what page 1 costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.spec import JobSpec
from pipeline.store import Store
from pipeline.ui.jobs import _ident, view_columns, view_of

PAGE = 50
STATUSES = ("ok", "blocked", "failed", "invalid")
BAD = ("failed", "invalid", "blocked")
# view columns that are not answer fields (shown elsewhere, or too large for a filter)
_FIXED = {"row_id", "status", "error", "attempts", "cost_usd", "output", "finished_at"}


@dataclass(frozen=True, slots=True)
class RowFilter:
    status: str | None = None
    column: str | None = None
    value: str | None = None
    q: str | None = None
    after: str | None = None
    before: str | None = None

    def params(self) -> dict[str, str | None]:
        return {"status": self.status, "col": self.column, "val": self.value, "q": self.q}


@dataclass
class RowsPage:
    columns: list[str]  # answer and kept columns shown beside id and status
    filterable: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    next_after: str | None = None
    prev_before: str | None = None
    searched_text: bool = False  # the search looked into the input file's text too


@dataclass(frozen=True, slots=True)
class InputSource:
    """The job's input file as DuckDB reads it, to show and search the rows' input text."""

    from_sql: str
    id_field: str
    text_field: str


def input_source(spec: JobSpec | None, db_path: str) -> InputSource | None:
    if spec is None or not spec.input.id:
        return None  # without an id column the row ids are positions: not joinable here
    raw = Path(spec.input.path)
    candidates = [raw] if raw.is_absolute() else [raw, Path(db_path).resolve().parent / raw]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    lit = "'" + str(path).replace("'", "''") + "'"
    name = path.name.lower()
    if name.endswith(".parquet"):
        return InputSource(f"read_parquet({lit})", spec.input.id, spec.input.text)
    if name.endswith((".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".jsonl.zst")):
        src = f"read_json_auto({lit}, format = 'newline_delimited', ignore_errors = true)"
        return InputSource(src, spec.input.id, spec.input.text)
    return None


def rows_page(
    store: Store, job: str, f: RowFilter, source: InputSource | None, limit: int = PAGE
) -> RowsPage:
    view = view_of(store, job)
    types = view_columns(store, view) if view else {}
    shown = [c for c in types if c not in _FIXED]
    page = RowsPage(columns=shown, filterable=shown)
    table = _ident(view) if view else "(SELECT * FROM results WHERE job = ?)"
    where: list[str] = []
    args: list[Any] = [] if view else [job]
    if f.status in STATUSES:
        where.append("status = ?")
        args.append(f.status)
    if f.column and f.column in shown and f.value is not None and f.value != "":
        col = _ident(f.column)
        if types[f.column].endswith("[]"):
            where.append(f"list_contains(CAST({col} AS VARCHAR[]), ?)")
        else:
            where.append(f"CAST({col} AS VARCHAR) = ?")
        args.append(f.value)
    if f.q:
        terms = [
            "contains(lower(row_id), lower(?))",
            "contains(lower(CAST(output AS VARCHAR)), lower(?))",
        ]
        terms.append("contains(lower(coalesce(error, '')), lower(?))")
        args += [f.q, f.q, f.q]
        if source is not None:
            terms.append(
                f"row_id IN (SELECT CAST({_ident(source.id_field)} AS VARCHAR) FROM {source.from_sql}"
                f" WHERE contains(lower(CAST({_ident(source.text_field)} AS VARCHAR)), lower(?)))"
            )
            args.append(f.q)
            page.searched_text = True
        where.append("(" + " OR ".join(terms) + ")")
    backwards = f.before is not None and f.after is None
    if f.after is not None:
        where.append("row_id > ?")
        args.append(f.after)
    elif f.before is not None:
        where.append("row_id < ?")
        args.append(f.before)
    cols = ", ".join(
        ["row_id", "status", *(_ident(c) for c in shown), "attempts", "cost_usd", "error"]
    )
    sql = f"SELECT {cols} FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY row_id {'DESC' if backwards else 'ASC'} LIMIT ?"
    args.append(limit + 1)
    cur = store.con.execute(sql, args)
    names = [d[0] for d in cur.description]
    got = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    more = len(got) > limit
    got = got[:limit]
    if backwards:
        got.reverse()
    page.rows = got
    if got and backwards:
        page.prev_before = got[0]["row_id"] if more else None
        page.next_after = got[-1]["row_id"]
    elif got:
        page.next_after = got[-1]["row_id"] if more else None
        page.prev_before = got[0]["row_id"] if f.after is not None else None
    return page


@dataclass
class RowDetail:
    result: dict[str, Any]
    answer: str | None  # the output as indented JSON
    kept: dict[str, Any]
    calls: list[dict[str, Any]]
    text: str | None
    text_note: str | None


def row_detail(store: Store, job: str, row_id: str, source: InputSource | None) -> RowDetail | None:
    cur = store.con.execute(
        "SELECT row_id, pos, status, output, error, attempts, input_tokens, cached_tokens,"
        " output_tokens, thinking_tokens, cost_usd, kept, finished_at FROM results"
        " WHERE job = ? AND row_id = ?",
        [job, row_id],
    )
    names = [d[0] for d in cur.description]
    found = cur.fetchall()
    if not found:
        return None
    result = dict(zip(names, found[0], strict=True))
    answer = None
    if result["output"] is not None:
        answer = orjson.dumps(orjson.loads(result["output"]), option=orjson.OPT_INDENT_2).decode()
    kept = orjson.loads(result["kept"]) if result["kept"] else {}
    cur = store.con.execute(
        "SELECT call_id, attempt, lane, started_at, latency_ms, http_status, outcome, error,"
        " input_tokens, cached_tokens, output_tokens, thinking_tokens, cost_usd, len(row_ids)"
        " AS rows_in_call, model_version FROM calls WHERE job = ? AND list_contains(row_ids, ?)"
        " ORDER BY started_at, attempt",
        [job, row_id],
    )
    names = [d[0] for d in cur.description]
    calls = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    text: str | None = None
    note: str | None = None
    note = "the input file is not readable from here (moved, remote, or no id column)"
    if source is not None:
        try:
            hit = store.con.execute(
                f"SELECT CAST({_ident(source.text_field)} AS VARCHAR) FROM {source.from_sql}"
                f" WHERE CAST({_ident(source.id_field)} AS VARCHAR) = ? LIMIT 1",
                [row_id],
            ).fetchall()
        except Exception as exc:  # a malformed or changed input file: say so, show the rest
            hit, note = [], f"the input file cannot be read: {str(exc).splitlines()[0]}"
        if hit:
            text, note = hit[0][0], None
        elif note is not None and note.startswith("the input file is not"):
            note = "this row id is not in the input file any more"
    return RowDetail(result, answer, kept, calls, text, note)


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    status: str
    reason: str  # the error with its numbers replaced by N, so one cause is one group
    count: int
    example_ids: list[str]
    example_error: str


def error_groups(store: Store, job: str, limit: int = 100) -> list[ErrorGroup]:
    rows = store.con.execute(
        "SELECT status, regexp_replace(left(coalesce(error, '(no message)'), 300), '[0-9]+', 'N',"
        " 'g') AS reason, count(*) AS n, min(row_id), max(row_id), min(error) FROM results"
        " WHERE job = ? AND status IN ('failed', 'invalid', 'blocked')"
        " GROUP BY 1, 2 ORDER BY n DESC, 1, 2 LIMIT ?",
        [job, limit],
    ).fetchall()
    return [
        ErrorGroup(str(s), str(r), int(n), sorted({str(a), str(b)}), str(e or ""))
        for s, r, n, a, b, e in rows
    ]
