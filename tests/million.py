"""A million-row store written straight with DuckDB SQL into the real schema (seconds, not a run).

Used by the browser tests and by `make bench`: one classify job, its typed view, an input
Parquet file with the rows' text, one call per row plus a 429 for every 50th row, a failed row
every 97th and an invalid one every 211th.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.run.job import stored_spec
from pipeline.spec import load_spec
from pipeline.store import Store
from pipeline.tasks import build_task

LABELS = ["billing", "bug", "account", "feature_request", "other"]
JOB = "million"


def row_id_sql(i: str) -> str:
    return f"'M-' || lpad(CAST({i} AS VARCHAR), 7, '0')"


def make_store(db: Path, rows: int = 1_000_000) -> Path:
    src = db.with_name(db.stem + "-input.parquet")
    spec = load_spec(
        document={
            "name": JOB,
            "task": "classify",
            "model": "gemini-3.1-flash-lite-preview",
            "input": {"path": str(src), "id": "id", "keep": ["lang"]},
            "classify": {"labels": LABELS},
            "budget": {"max_usd": 50},
        }
    )
    store = Store(str(db))
    try:
        con = store.con
        rid = row_id_sql("i")
        con.execute(
            f"COPY (SELECT {rid} AS id, 'ticket ' || i || CASE i % 5 WHEN 0 THEN ' refund please'"
            " WHEN 1 THEN ' the app crashes' WHEN 2 THEN ' cannot log in' WHEN 3 THEN"
            " ' add dark mode' ELSE ' opening hours?' END AS text,"
            " CASE WHEN i % 3 = 0 THEN 'de' ELSE 'en' END AS lang"
            f" FROM range({rows}) t(i)) TO '{src}' (FORMAT parquet)"
        )
        store.begin_job(
            JOB, stored_spec(spec), spec.spec_hash, spec.identity(), "classify", spec.model
        )
        labels = "['" + "', '".join(LABELS) + "']"
        con.execute(
            "INSERT INTO results (job, row_id, pos, status, output, error, attempts,"
            " input_tokens, output_tokens, thinking_tokens, cached_tokens, cost_usd, kept,"
            " finished_at) SELECT ?, " + rid + ", 'line:' || (i + 1),"
            " CASE WHEN i % 97 = 0 THEN 'failed' WHEN i % 211 = 0 THEN 'invalid' ELSE 'ok' END,"
            f" CASE WHEN i % 97 = 0 OR i % 211 = 0 THEN NULL ELSE"
            f" '{{\"label\": \"' || {labels}[i % 5 + 1] || '\"}}' END,"
            " CASE WHEN i % 97 = 0 THEN 'HTTP 500 after ' || (2 + i % 4) || ' attempts'"
            " WHEN i % 211 = 0 THEN 'answer is not valid JSON at char ' || (i % 40) END,"
            " 1 + (i % 97 = 0)::INT * 3, 120 + i % 50, 6, 0, 0, 0.0000125 + (i % 50) * 0.0000001,"
            ' CASE WHEN i % 3 = 0 THEN \'{"lang": "de"}\' ELSE \'{"lang": "en"}\' END,'
            " TIMESTAMPTZ '2026-11-30 10:00:00+00' + to_milliseconds(i * 3)"
            f" FROM range({rows}) t(i)",
            [JOB],
        )
        con.execute(
            "INSERT INTO calls (job, call_id, row_ids, attempt, started_at, latency_ms, http_status,"
            " outcome, error, input_tokens, output_tokens, thinking_tokens, cached_tokens,"
            " cost_usd, model, model_version, response_id, recovered, lane) SELECT ?, 'c' || i, ["
            + rid
            + "], 1,"
            " TIMESTAMPTZ '2026-11-30 10:00:00+00' + to_milliseconds(i * 3 - 400),"
            " 150 + (i * 7919) % 900, 200, 'ok', NULL, 120 + i % 50, 6, 0, 0,"
            " 0.0000125 + (i % 50) * 0.0000001, 'gemini-3.1-flash-lite-preview', NULL, 'r' || i,"
            f" false, 'standard' FROM range({rows}) t(i)",
            [JOB],
        )
        con.execute(
            "INSERT INTO calls (job, call_id, row_ids, attempt, started_at, latency_ms, http_status,"
            " outcome, error, input_tokens, output_tokens, thinking_tokens, cached_tokens,"
            " cost_usd, model, model_version, response_id, recovered, lane) SELECT ?, 'l' || i, ["
            + rid
            + "], 0,"
            " TIMESTAMPTZ '2026-11-30 10:00:00+00' + to_milliseconds(i * 3 - 900),"
            " 40, 429, 'rate_limited', 'HTTP 429', 0, 0, 0, 0, 0, 'gemini-3.1-flash-lite-preview',"
            f" NULL, NULL, false, 'standard' FROM range(0, {rows}, 50) t(i)",
            [JOB],
        )
        store.create_view(JOB, build_task(spec).view_columns(), spec.input.keep)
        store.set_state(JOB, "done", None, rows)
    finally:
        store.close()
    return db
