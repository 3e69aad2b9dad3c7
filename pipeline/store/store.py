"""The Store: one DuckDB connection that owns a store file's jobs, results and calls.

It opens (and migrates) the file, runs the resume anti-join, writes each commit of results and
calls in one transaction, keeps the Batch lane's batches, and creates the typed views and the
reports' totals. One connection, used from one dedicated thread (`pipeline.store.thread`;
DuckDB releases the GIL while it works).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from pipeline.core.records import BatchClose, BatchRow, CallRecord, ResultRecord, now_utc, runner_id
from pipeline.core.usage import Usage
from pipeline.errors import JobBusy, SpecError, StoreError, fault_cause
from pipeline.store.disk import Held, SideLock, busy_error, holder_of, store_fault
from pipeline.store.schema import (
    BATCH_COLUMNS,
    KEEP_ANSWERS,
    SCHEMA,
    key_answers_by_hash,
    key_hash_sql,
)
from pipeline.store.sql import column_sql, from_json, kept_sql, sql_ident, sql_str
from pipeline.store.tables import (
    BATCH_ROW_SCHEMA,
    COST_QUANTUM,
    calls_table,
    kept_json,
    results_table,
)
from pipeline.tasks.base import ViewColumn


def view_name(job: str) -> str:
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", job).strip("_").lower() or "job"
    return f"results_{slug}"


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two spec identities differ: ["classify.labels", "model"]."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(path)
            else:
                out.extend(changed_keys(old[k], new[k], path))
        return out
    return [] if old == new else [prefix or "the job definition"]


# Peak memory flat with the job's size (tests/bench, section 6). DuckDB keeps what its inserts
# under the UNIQUE(job, row_id) index allocated until the connection closes, and each
# automatic checkpoint (every 16 MB of WAL by default) spikes by an amount that grows with the
# table. So the writer closes and reopens its connection every REOPEN_ROWS stored results and
# calls (the close is the checkpoint), and automatic checkpoints only act as a safety valve.
# Measured 2026-12-02, peak RSS 1M vs 100k rows: JSONL 1.33 -> 1.16, Parquet 1.46 -> 1.23;
# reopening alone (default threshold) changed nothing (1.33, 1.46).
REOPEN_ROWS = 100_000
CHECKPOINT_THRESHOLD = "256MB"
# Once a run writes, its connection runs on one DuckDB thread: a 500-row insert gains nothing
# from the thread pool (one thread wrote 100k results + calls 15 % faster, 2026-12-02, bench 7)
# and the other cores stay with the event loop. The resume lookup before it keeps every thread.
WRITER_THREADS = 1


class Store:
    """A DuckDB file holding jobs, results and calls. Use from one thread at a time."""

    def __init__(self, path: str, *, read_only: bool = False, for_run: bool = False):
        self.path = path
        self.read_only = read_only
        self._indices = pa.array([], pa.int64())  # 0..n-1, sliced for each resume lookup
        self._since_reopen = 0
        self._writing = False  # set by the first write: the connection goes to WRITER_THREADS
        if read_only and not Path(path).exists():
            raise StoreError(f"store {path!r} does not exist; run a job first")
        try:
            self._lock = SideLock(path, shared=read_only)
        except Held as held:
            raise busy_error(path, held.holder, for_run) from None
        try:
            self.con = self._connect()
        except BaseException:
            self._lock.release()
            raise

    def _connect(self) -> duckdb.DuckDBPyConnection:
        path, read_only = self.path, self.read_only
        try:
            con = duckdb.connect(path, read_only=read_only)
            if not read_only:
                con.execute(SCHEMA)
                key_answers_by_hash(con)
                # checkpoints happen when the writer reopens (every REOPEN_ROWS), not when the
                # WAL passes DuckDB's default 16 MB in the middle of a run; see REOPEN_ROWS
                con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
                self._writer_settings(con)
            return con
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise busy_error(path, holder_of(text), not read_only) from None
            raise StoreError(f"store {path!r} cannot be opened: {fault_cause(exc)}") from None
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(f"store {path!r} is unusable: {first}") from None

    def _writer_settings(self, con: duckdb.DuckDBPyConnection) -> None:
        """What a connection that writes runs with (kept across reopens)."""
        if self._writing:
            con.execute(f"SET threads = {WRITER_THREADS}")

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            self._lock.release()

    def reopen(self) -> None:
        """Close and reopen the connection (the side lock stays held): DuckDB gives back the
        memory its inserts kept. A foreign DuckDB client that grabs the file in between is
        waited for, a few seconds at most."""
        self.con.close()
        self._since_reopen = 0
        for wait in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 0.0):
            try:
                self.con = self._connect()
                return
            except (JobBusy, StoreError):
                if not wait:
                    raise
                time.sleep(wait)

    # -- jobs ---------------------------------------------------------------------------
    def job_row(self, name: str) -> dict[str, Any] | None:
        rows = self.con.execute(
            "SELECT name, spec, spec_hash, task, model, state, message, rows_seen, runs,"
            " created_at, updated_at, runner FROM jobs WHERE name = ?",
            [name],
        ).fetchall()
        if not rows:
            return None
        keys = [
            "name",
            "spec",
            "spec_hash",
            "task",
            "model",
            "state",
            "message",
            "rows_seen",
            "runs",
            "created_at",
            "updated_at",
            "runner",
        ]
        return dict(zip(keys, rows[0], strict=True))

    def job_names(self) -> list[str]:
        return [
            r[0] for r in self.con.execute("SELECT name FROM jobs ORDER BY created_at").fetchall()
        ]

    def begin_job(
        self,
        name: str,
        spec_json: str,
        spec_hash: str,
        identity: dict[str, Any],
        task: str,
        model: str,
    ) -> int:
        """Register (or re-open) a job and return its run number; refuse a changed spec."""
        existing = self.job_row(name)
        now = now_utc()
        if existing is None:
            self.con.execute(
                "INSERT INTO jobs (name, spec, spec_hash, task, model, state, rows_seen, runs,"
                " created_at, updated_at, runner) VALUES (?, ?, ?, ?, ?, 'running', 0, 1, ?, ?, ?)",
                [name, spec_json, spec_hash, task, model, now, now, runner_id()],
            )
            return 1
        if existing["spec_hash"] != spec_hash:
            old = orjson.loads(existing["spec"]).get("_identity", {})
            changed = changed_keys(old, identity)
            what = ", ".join(changed[:6]) or "the job definition"
            raise SpecError(
                f"job {name!r} already exists in the store with a different {what}; "
                "use a new name, or --restart to discard its results"
            )
        runs = int(existing["runs"] or 0) + 1
        self.con.execute(
            "UPDATE jobs SET state = 'running', message = NULL, runs = ?, updated_at = ?,"
            " runner = ?, spec = ? WHERE name = ?",
            [runs, now, runner_id(), spec_json, name],
        )
        return runs

    def drop_job(self, name: str) -> None:
        for table in ("results", "calls", "batches", "batch_rows"):
            self.con.execute(f"DELETE FROM {table} WHERE job = ?", [name])
        self.con.execute("DELETE FROM jobs WHERE name = ?", [name])

    def set_state(self, name: str, state: str, message: str | None, rows_seen: int | None) -> None:
        self.con.execute(
            "UPDATE jobs SET state = ?, message = ?, updated_at = ?, runner = NULL,"
            " rows_seen = coalesce(?, rows_seen) WHERE name = ?",
            [state, message, now_utc(), rows_seen, name],
        )

    # -- resume -------------------------------------------------------------------------
    def to_do(self, job: str, row_ids: pa.Array, positions: pa.Array) -> dict[int, str | None]:
        """The anti-join of resume: candidates with no stored result, or stored from another
        input position (a duplicate id). Index -> the position that stored it (or None)."""
        n = len(row_ids)
        if len(self._indices) < n:  # built from a Python range once, not per lookup
            self._indices = pa.array(range(max(n, 2 * len(self._indices))), pa.int64())
        cand = pa.table({"row_id": row_ids, "pos": positions, "idx": self._indices.slice(0, n)})
        self.con.register("_cand", cand)
        try:
            rows = self.con.execute(
                "SELECT c.idx, r.pos FROM _cand c LEFT JOIN"
                " (SELECT row_id, pos FROM results WHERE job = ?) r ON r.row_id = c.row_id"
                " WHERE (r.row_id IS NULL AND NOT EXISTS (SELECT 1 FROM batch_rows b"
                "  WHERE b.job = ? AND b.row_id = c.row_id))"
                " OR (r.pos IS NOT NULL AND r.pos <> c.pos)",
                [job, job],
            ).fetchall()
        finally:
            self.con.unregister("_cand")
        return {int(i): p for i, p in rows}

    # -- the single writer ---------------------------------------------------------------
    def write(
        self,
        job: str,
        results: Sequence[ResultRecord],
        calls: Sequence[CallRecord],
        closes: Sequence[BatchClose] = (),
    ) -> None:
        """Store results and calls in one transaction; a row stored before keeps its result.

        Rows come from the resume anti-join, so a conflict means a race or a bug: the plain
        INSERT is about a third faster, and on a conflict the batch is written again with
        ON CONFLICT DO NOTHING.
        """
        if not results and not calls and not closes:
            return
        if not self._writing:
            self._writing = True
            self._writer_settings(self.con)
        try:
            try:
                self._write(job, results, calls, closes, "")
            except duckdb.ConstraintException:
                self.con.execute("ROLLBACK")
                self._write(job, results, calls, closes, " ON CONFLICT DO NOTHING")
        except (duckdb.Error, OSError) as exc:
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK")
            raise store_fault(self.path, "write results", exc) from None
        self._since_reopen += len(results) + len(calls)
        if self._since_reopen >= REOPEN_ROWS:
            try:
                self.reopen()
            except (duckdb.Error, OSError) as exc:
                raise store_fault(self.path, "reopen the store", exc) from None

    def _write(
        self,
        job: str,
        results: Sequence[ResultRecord],
        calls: Sequence[CallRecord],
        closes: Sequence[BatchClose],
        conflict: str,
    ) -> None:
        self.con.execute("BEGIN TRANSACTION")
        try:
            now = now_utc()
            for c in closes:
                self.con.execute(
                    "UPDATE batches SET closed = true, state = ?, ok_rows = ?, retry_rows = ?,"
                    " error = ?, finished_at = ?, updated_at = ? WHERE job = ? AND batch_id = ?",
                    [c.state, c.ok_rows, c.retry_rows, c.error, now, now, job, c.batch_id],
                )
                self.con.execute(
                    "DELETE FROM batch_rows WHERE job = ? AND batch_id = ?", [job, c.batch_id]
                )
            if calls:
                self.con.register("_calls", calls_table(job, calls))
                self.con.execute("INSERT INTO calls SELECT * FROM _calls")
            if results:
                self.con.register("_results", results_table(job, results))
                self.con.execute(f"INSERT INTO results BY NAME SELECT * FROM _results{conflict}")
                if any(r.request_key is not None for r in results):
                    self.con.execute(KEEP_ANSWERS, [now])
            self.con.execute("COMMIT")
        finally:
            for name in ("_calls", "_results"):
                with contextlib.suppress(duckdb.Error):
                    self.con.unregister(name)

    # -- the Batch lane ------------------------------------------------------------------
    def record_batch(
        self, job: str, batch_id: str, rows: Sequence[BatchRow], requests: int, reserved: Decimal
    ) -> None:
        """A batch and its rows, stored before anything is submitted (state `prepared`)."""
        now = now_utc()
        table = pa.table(
            {
                "job": [job] * len(rows),
                "batch_id": [batch_id] * len(rows),
                "req": [r.req for r in rows],
                "row_id": [r.row_id for r in rows],
                "pos": [r.pos for r in rows],
                "text": [r.text for r in rows],
                "fields": [kept_json(r.fields) for r in rows],
                "attempts": [r.attempts for r in rows],
            },
            schema=BATCH_ROW_SCHEMA,
        )
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute(
                "INSERT INTO batches (job, batch_id, state, rows, requests, reserved_usd,"
                " created_at, updated_at) VALUES (?, ?, 'prepared', ?, ?, ?, ?, ?)",
                [job, batch_id, len(rows), requests, reserved.quantize(COST_QUANTUM), now, now],
            )
            self.con.register("_brows", table)
            self.con.execute("INSERT INTO batch_rows SELECT * FROM _brows")
            self.con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK")
            raise
        finally:
            with contextlib.suppress(duckdb.Error):
                self.con.unregister("_brows")

    def batch_submitted(self, job: str, batch_id: str, provider_name: str) -> None:
        now = now_utc()
        self.con.execute(
            "UPDATE batches SET provider_name = ?, state = 'submitted', submitted_at = ?,"
            " updated_at = ? WHERE job = ? AND batch_id = ?",
            [provider_name, now, now, job, batch_id],
        )

    def batch_state(self, job: str, batch_id: str, state: str) -> None:
        self.con.execute(
            "UPDATE batches SET state = ?, updated_at = ? WHERE job = ? AND batch_id = ?",
            [state, now_utc(), job, batch_id],
        )

    def open_batches(self, job: str) -> list[dict[str, Any]]:
        rows = self.con.execute(
            "SELECT batch_id, provider_name, state, reserved_usd FROM batches"
            " WHERE job = ? AND NOT closed ORDER BY created_at",
            [job],
        ).fetchall()
        return [
            {"batch_id": r[0], "provider_name": r[1], "state": r[2], "reserved": Decimal(r[3] or 0)}
            for r in rows
        ]

    def batch_rows(self, job: str, batch_id: str) -> list[BatchRow]:
        rows = self.con.execute(
            "SELECT req, row_id, pos, text, fields, attempts FROM batch_rows"
            " WHERE job = ? AND batch_id = ? ORDER BY req, row_id",
            [job, batch_id],
        ).fetchall()
        return [
            BatchRow(int(r[0]), r[1], r[2], r[3], orjson.loads(r[4]) if r[4] else {}, int(r[5]))
            for r in rows
        ]

    def batch_list(self, job: str) -> list[dict[str, Any]]:
        cols = BATCH_COLUMNS
        rows = self.con.execute(
            f"SELECT {', '.join(cols)} FROM batches WHERE job = ? ORDER BY created_at", [job]
        ).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def lane_totals(self, job: str) -> dict[str, dict[str, Any]]:
        """Per lane (standard, flex, batch): calls, Flex refusals, tokens, USD, answered rows."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.con.execute(
            "SELECT coalesce(lane, 'standard'), count(*), count(*) FILTER (WHERE outcome = 'shed'),"
            " coalesce(sum(cost_usd) FILTER (WHERE outcome = 'shed'), 0),"
            " coalesce(sum(input_tokens), 0), coalesce(sum(cached_tokens), 0),"
            " coalesce(sum(output_tokens), 0), coalesce(sum(thinking_tokens), 0),"
            " coalesce(sum(cost_usd), 0) FROM calls WHERE job = ? GROUP BY 1 ORDER BY 1",
            [job],
        ).fetchall():
            out[str(r[0])] = {
                "calls": int(r[1]),
                "shed": {"calls": int(r[2]), "usd": Decimal(r[3])},
                "tokens": {
                    "input": int(r[4]),
                    "cached": int(r[5]),
                    "output": int(r[6]),
                    "thinking": int(r[7]),
                },
                "usd": Decimal(r[8]),
                "rows": 0,
            }
        for lane, rows in self.con.execute(
            "SELECT lane, count(DISTINCT rid) FROM (SELECT coalesce(lane, 'standard') AS lane,"
            " unnest(row_ids) AS rid FROM calls WHERE job = ? AND outcome IN ('ok', 'blocked'))"
            " GROUP BY 1",
            [job],
        ).fetchall():
            out[str(lane)]["rows"] = int(rows)
        return out

    def recover_calls(self, calls: Sequence[tuple[str, CallRecord]]) -> int:
        """Store calls a killed run received but never stored (from its journal), once each."""
        added = 0
        for job in sorted({j for j, _ in calls}):
            records = [c for j, c in calls if j == job]
            self.con.register("_calls", calls_table(job, records, recovered=True))
            added += self.con.execute(
                "INSERT INTO calls SELECT * FROM _calls c WHERE NOT EXISTS"
                " (SELECT 1 FROM calls k WHERE k.job = c.job AND k.call_id = c.call_id)"
            ).fetchall()[0][0]
            self.con.unregister("_calls")
        return int(added)

    def cached_answers(self, keys: Sequence[str]) -> dict[str, tuple[str, Usage]]:
        """For the request keys found in `answers`: key -> (output JSON, tokens it took).

        The first query scans key_hash alone and the second reads the matching rows by rowid:
        one query reading every column scanned three times the memory (31 against 8 MiB at
        1M answers) and took longer. A row whose hash matches but whose key does not is left
        out."""
        if not keys:
            return {}
        self.con.register("_keys", pa.table({"k": pa.array(keys, pa.string())}))
        try:
            found = self.con.execute(
                f"SELECT rowid FROM answers WHERE key_hash IN (SELECT {key_hash_sql('k')}"
                " FROM _keys)"
            ).fetchall()
        finally:
            self.con.unregister("_keys")
        if not found:
            return {}
        rows = self.con.execute(
            "SELECT request_key, output, input_tokens, cached_tokens, output_tokens,"
            " thinking_tokens FROM answers WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
            [[r[0] for r in found]],
        ).fetchall()
        wanted = set(keys)
        return {
            r[0]: (r[1], Usage(int(r[2] or 0), int(r[3] or 0), int(r[4] or 0), int(r[5] or 0)))
            for r in rows
            if r[0] in wanted
        }

    def model_totals(self, job: str) -> dict[str, dict[str, Any]]:
        """Per model: calls, USD and the rows whose stored answer is that model's."""
        out: dict[str, dict[str, Any]] = {}
        for model, calls, cost in self.con.execute(
            "SELECT coalesce(model, '?'), count(*), coalesce(sum(cost_usd), 0) FROM calls"
            " WHERE job = ? GROUP BY 1 ORDER BY 1",
            [job],
        ).fetchall():
            out[str(model)] = {"calls": int(calls), "usd": Decimal(cost), "rows": 0}
        for model, rows in self.con.execute(
            "SELECT model, count(*) FROM results WHERE job = ? AND model IS NOT NULL GROUP BY 1",
            [job],
        ).fetchall():
            out.setdefault(str(model), {"calls": 0, "usd": Decimal(0), "rows": 0})["rows"] = rows
        return out

    def cache_totals(self, job: str) -> dict[str, Any]:
        """Rows of a job answered from the cache, and what asking again would have cost."""
        n, saved = self.con.execute(
            "SELECT count(*), coalesce(sum(saved_usd), 0) FROM results"
            " WHERE job = ? AND from_cache",
            [job],
        ).fetchall()[0]
        return {"rows": int(n), "saved_usd": Decimal(saved)}

    def changed_ids(self, job: str, ids: Sequence[str], hashes: Sequence[str]) -> list[str]:
        """Of these rows, those stored with a different input hash."""
        cand = pa.table({"row_id": pa.array(ids, pa.string()), "h": pa.array(hashes, pa.string())})
        self.con.register("_cand", cand)
        try:
            rows = self.con.execute(
                "SELECT r.row_id FROM results r JOIN _cand c ON r.row_id = c.row_id"
                " WHERE r.job = ? AND r.input_hash IS NOT NULL AND r.input_hash <> c.h",
                [job],
            ).fetchall()
        finally:
            self.con.unregister("_cand")
        return [str(r[0]) for r in rows]

    def requeue_rows(self, job: str, row_ids: Sequence[str]) -> int:
        """Drop these rows' results, so the next run sends them again."""
        self.con.register("_ids", pa.table({"row_id": pa.array(row_ids, pa.string())}))
        try:
            self.con.execute(
                "DELETE FROM results WHERE job = ? AND row_id IN (SELECT row_id FROM _ids)", [job]
            )
        finally:
            self.con.unregister("_ids")
        return len(row_ids)

    def requeue(self, job: str, statuses: Sequence[str]) -> int:
        count = self.con.execute(
            "SELECT count(*) FROM results WHERE job = ? AND list_contains(?, status)",
            [job, list(statuses)],
        ).fetchall()[0][0]
        self.con.execute(
            "DELETE FROM results WHERE job = ? AND list_contains(?, status)", [job, list(statuses)]
        )
        return int(count)

    # -- views and reports ---------------------------------------------------------------
    def create_view(
        self,
        job: str,
        columns: Sequence[ViewColumn],
        keep: Sequence[str],
        keep_types: Mapping[str, pa.DataType] | None = None,
    ) -> str:
        """The job's typed view: one column per answer field, and the keep columns in their
        input types (text when the type is unknown, as in a store written before types)."""
        name = view_name(job)
        cols = ["r.row_id", "r.status", "r.error"]
        cols += [f"{column_sql(c)} AS {sql_ident(c.name)}" for c in columns]
        taken = {c.name for c in columns} | {"row_id", "status", "error", "cost_usd", "attempts"}
        sql_types = self._sql_types(keep_types or {})
        cols += [
            f"{kept_sql(k, sql_types.get(k))} AS {sql_ident(k)}" for k in keep if k not in taken
        ]
        cols += ["r.attempts", "r.cost_usd", "r.output", "r.finished_at"]
        self.con.execute(
            f"CREATE OR REPLACE VIEW {sql_ident(name)} AS SELECT {', '.join(cols)} "
            f"FROM results r WHERE r.job = {sql_str(job)}"
        )
        return name

    def _sql_types(self, types: Mapping[str, pa.DataType]) -> dict[str, str]:
        """DuckDB's name for each Arrow type it can read back from JSON."""
        usable = {k: t for k, t in types.items() if from_json(t)}
        if not usable:
            return {}
        empty = pa.schema([(f"c{i}", t) for i, t in enumerate(usable.values())]).empty_table()
        rel = self.con.from_arrow(empty)
        return {k: str(t) for k, t in zip(usable, rel.types, strict=True)}

    def status_counts(self, job: str) -> dict[str, int]:
        rows = self.con.execute(
            "SELECT status, count(*) FROM results WHERE job = ? GROUP BY status", [job]
        ).fetchall()
        return {str(s): int(n) for s, n in rows}

    def rows_paid_twice(self, job: str) -> int:
        """Rows answered (and billed) in a call a killed run lost before storing it, or in a
        stalled batch that answered after its rows were answered online."""
        return int(
            self.con.execute(
                "SELECT count(DISTINCT rid) FROM (SELECT unnest(row_ids) AS rid FROM calls"
                " WHERE job = ? AND ((recovered AND outcome IN ('ok', 'blocked'))"
                " OR outcome = 'paid_twice'))",
                [job],
            ).fetchall()[0][0]
        )

    def call_totals(self, job: str) -> dict[str, Any]:
        row = self.con.execute(
            "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(cached_tokens), 0),"
            " coalesce(sum(output_tokens), 0), coalesce(sum(thinking_tokens), 0),"
            " coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE outcome = 'rate_limited'),"
            " min(started_at), max(started_at) FROM calls WHERE job = ?",
            [job],
        ).fetchall()[0]
        return {
            "requests": int(row[0]),
            "tokens": {
                "input": int(row[1]),
                "cached": int(row[2]),
                "output": int(row[3]),
                "thinking": int(row[4]),
            },
            "usd": Decimal(row[5]),
            "rate_limited": int(row[6]),
            "first": row[7],
            "last": row[8],
        }

    def pool_totals(self, job: str) -> dict[str, dict[str, Any]]:
        """Calls, spend, 429s and request rate per key pool (jobs run with [[provider.pool]]
        or on Ray; a pool is a provider project, never a key)."""
        rows = self.con.execute(
            "SELECT pool, count(*), coalesce(sum(cost_usd), 0),"
            " count(*) FILTER (WHERE outcome = 'rate_limited'), min(started_at), max(started_at)"
            " FROM calls WHERE job = ? AND pool IS NOT NULL GROUP BY pool ORDER BY pool",
            [job],
        ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for pool, calls, spent, limited, first, last in rows:
            span = (last - first).total_seconds() if first is not None else 0.0
            out[str(pool)] = {
                "calls": int(calls),
                "usd": Decimal(spent),
                "rate_limited": int(limited),
                "requests_per_min": round(calls / span * 60, 1) if span > 0 else None,
            }
        return out

    def cost_by_outcome(self, job: str) -> dict[str, Decimal]:
        """ok: calls whose answers were stored as final; retried: attempts that were re-sent;
        context_cache: the run's explicit context cache (written once, then stored by the
        hour), which the ok calls' cached tokens used; thrown_away: everything else that was
        billed (failed, blocked rows' attempts)."""
        rows = self.con.execute(
            "SELECT CASE WHEN outcome = 'ok' THEN 'ok'"
            " WHEN outcome IN ('retried', 'invalid_output', 'truncated') THEN 'retried'"
            " WHEN outcome = 'context_cache' THEN 'context_cache'"
            " ELSE 'thrown_away' END, coalesce(sum(cost_usd), 0) FROM calls WHERE job = ?"
            " GROUP BY 1",
            [job],
        ).fetchall()
        out = {"ok": Decimal(0), "retried": Decimal(0), "thrown_away": Decimal(0)}
        for k, v in rows:
            out[str(k)] = Decimal(v)
        return out

    def query_arrow(self, sql: str) -> pa.Table:
        try:
            return self.con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SpecError(f"query failed: {first}") from None
