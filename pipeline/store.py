"""DuckDB store: schema, the single writer, the resume anti-join, typed views, reports.

One connection, used from one dedicated thread (DuckDB releases the GIL while it works):
the event loop hands it work through `StoreThread.run`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import orjson
import pyarrow as pa

from pipeline.core.records import BatchClose, BatchRow, CallRecord, ResultRecord, now_utc, runner_id
from pipeline.core.usage import Usage
from pipeline.errors import AFTER_FAULT, FlashpipeError, JobBusy, SpecError, StoreError, fault_cause
from pipeline.tasks.base import ViewColumn

T = TypeVar("T")

DEFAULT_PATH = "flashpipe.duckdb"
STATES = ("running", "done", "interrupted", "budget_exhausted", "stopped", "failed")

# The answer cache. No index: a PRIMARY KEY on request_key (an ART index) grew in memory with
# every stored answer (bench 6: a 1M-row run peaked at 410 MiB against 303 at 100k). key_hash,
# the key's first 60 bits, is the one column lookups and the duplicate check scan.
ANSWERS_DDL = """CREATE TABLE IF NOT EXISTS answers (
    request_key VARCHAR NOT NULL,
    key_hash BIGINT NOT NULL,
    output JSON NOT NULL,
    input_tokens BIGINT,
    output_tokens BIGINT,
    thinking_tokens BIGINT,
    cached_tokens BIGINT,
    job VARCHAR,
    row_id VARCHAR,
    created_at TIMESTAMPTZ
);"""
ANSWERS_COLUMNS = (
    "request_key, key_hash, output, input_tokens, output_tokens, thinking_tokens,"
    " cached_tokens, job, row_id, created_at"
)


def key_hash_sql(column: str) -> str:
    """SQL for a request key's key_hash: its first 15 hex digits (60 bits) as a BIGINT."""
    return f"CAST('0x' || substr({column}, 1, 15) AS BIGINT)"


SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS jobs (
    name VARCHAR PRIMARY KEY,
    spec JSON NOT NULL,
    spec_hash VARCHAR NOT NULL,
    task VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    message VARCHAR,
    rows_seen BIGINT DEFAULT 0,
    runs INTEGER DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    runner VARCHAR
);
CREATE TABLE IF NOT EXISTS results (
    job VARCHAR NOT NULL,
    row_id VARCHAR NOT NULL,
    pos VARCHAR,
    status VARCHAR NOT NULL,
    output JSON,
    error VARCHAR,
    attempts INTEGER,
    input_tokens BIGINT,
    output_tokens BIGINT,
    thinking_tokens BIGINT,
    cached_tokens BIGINT,
    cost_usd DECIMAL(38, 12),
    kept JSON,
    finished_at TIMESTAMPTZ,
    UNIQUE (job, row_id)
);
CREATE TABLE IF NOT EXISTS calls (
    job VARCHAR NOT NULL,
    call_id VARCHAR NOT NULL,
    row_ids VARCHAR[],
    attempt INTEGER,
    started_at TIMESTAMPTZ,
    latency_ms DOUBLE,
    http_status INTEGER,
    outcome VARCHAR,
    error VARCHAR,
    input_tokens BIGINT,
    output_tokens BIGINT,
    thinking_tokens BIGINT,
    cached_tokens BIGINT,
    cost_usd DECIMAL(38, 12),
    model VARCHAR,
    model_version VARCHAR,
    response_id VARCHAR,
    recovered BOOLEAN DEFAULT false,
    lane VARCHAR DEFAULT 'standard',
    pool VARCHAR
);
ALTER TABLE calls ADD COLUMN IF NOT EXISTS recovered BOOLEAN DEFAULT false;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS lane VARCHAR DEFAULT 'standard';
ALTER TABLE results ADD COLUMN IF NOT EXISTS answered_by VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS request_key VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS input_hash VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS from_cache BOOLEAN DEFAULT false;
ALTER TABLE results ADD COLUMN IF NOT EXISTS saved_usd DECIMAL(38, 12) DEFAULT 0;
ALTER TABLE results ADD COLUMN IF NOT EXISTS model VARCHAR;
"""
    + ANSWERS_DDL
    + """
ALTER TABLE calls ADD COLUMN IF NOT EXISTS pool VARCHAR;
CREATE TABLE IF NOT EXISTS batches (
    job VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    provider_name VARCHAR,
    input_file VARCHAR,
    state VARCHAR NOT NULL,
    rows INTEGER,
    requests INTEGER,
    ok_rows INTEGER DEFAULT 0,
    retry_rows INTEGER DEFAULT 0,
    reserved_usd DECIMAL(38, 12),
    error VARCHAR,
    created_at TIMESTAMPTZ,
    submitted_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    closed BOOLEAN DEFAULT false,
    UNIQUE (job, batch_id)
);
CREATE TABLE IF NOT EXISTS batch_rows (
    job VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    req INTEGER NOT NULL,
    row_id VARCHAR NOT NULL,
    pos VARCHAR,
    text VARCHAR,
    fields JSON,
    attempts INTEGER
);
"""
)

COST = pa.decimal128(38, 12)
RESULT_SCHEMA = pa.schema(
    [
        ("job", pa.string()),
        ("row_id", pa.string()),
        ("pos", pa.string()),
        ("status", pa.string()),
        ("output", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("thinking_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("cost_usd", COST),
        ("kept", pa.string()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("answered_by", pa.string()),
        ("request_key", pa.string()),
        ("input_hash", pa.string()),
        ("from_cache", pa.bool_()),
        ("saved_usd", COST),
        ("model", pa.string()),
    ]
)
CALL_SCHEMA = pa.schema(
    [
        ("job", pa.string()),
        ("call_id", pa.string()),
        ("row_ids", pa.list_(pa.string())),
        ("attempt", pa.int32()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("latency_ms", pa.float64()),
        ("http_status", pa.int32()),
        ("outcome", pa.string()),
        ("error", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("thinking_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("cost_usd", COST),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("response_id", pa.string()),
        ("recovered", pa.bool_()),
        ("lane", pa.string()),
        ("pool", pa.string()),  # the key pool (a provider project) it went through; never a key
    ]
)
BATCH_ROW_SCHEMA = pa.schema(
    [
        ("job", pa.string()),
        ("batch_id", pa.string()),
        ("req", pa.int32()),
        ("row_id", pa.string()),
        ("pos", pa.string()),
        ("text", pa.string()),
        ("fields", pa.string()),
        ("attempts", pa.int32()),
    ]
)
_Q = Decimal("0.000000000001")


def view_name(job: str) -> str:
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", job).strip("_").lower() or "job"
    return f"results_{slug}"


def resolve_path(cli_path: str | None, spec_path: str | None = None) -> str:
    return cli_path or os.environ.get("FLASHPIPE_DB") or spec_path or DEFAULT_PATH


# What a user can act on, from an OSError's errno or the text DuckDB copies from strerror()
def store_fault(path: str, action: str, exc: BaseException) -> StoreError:
    """`store 'x.duckdb': cannot write results: no space left on device; ...` as one line."""
    return StoreError(f"store {path!r}: cannot {action}: {fault_cause(exc)}; {AFTER_FAULT}")


def check_writable(path: str) -> None:
    """Before anything is sent: the store's directory exists and takes a write."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise StoreError(f"store {path!r}: its directory {str(folder)!r} does not exist")
    probe = folder / f".{Path(path).name}.{os.getpid()}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(
            f"store {path!r}: its directory {str(folder)!r} is not writable: {fault_cause(exc)}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _busy(path: str, who: str, for_run: bool) -> FlashpipeError:
    if for_run:
        return JobBusy(f"store {path!r} is held by {who}; one runner per store")
    return StoreError(
        f"store {path!r} is busy: {who} is writing to it; `flashpipe status` reads its live snapshot"
    )


def _holder(message: str) -> str:
    match = re.search(r"PID (\d+)", message)
    return f"process {match.group(1)}" if match else "another process"


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


class SideLock:
    """An flock on `<store>.lock`, taken before DuckDB's own lock and held until close.

    DuckDB's lock goes away while the writer reopens its connection; this one does not, so no
    second runner (nor a reader of ours, which would block the reopen) slips in between.
    Writers hold it exclusive, readers shared; the holder's PID is in the file.
    """

    def __init__(self, db_path: str, *, shared: bool):
        self.path = db_path + ".lock"
        self.fd = -1
        try:
            flags = os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT
            self.fd = os.open(self.path, flags, 0o644)
        except OSError:
            return  # no lock file (a reader of an old store) or an unwritable directory
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self.fd)
            self.fd = -1
            raise _Held(holder) from None
        if not shared:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"PID {os.getpid()}\n".encode())

    def _holder(self) -> str:
        try:
            return _holder(os.pread(self.fd, 64, 0).decode(errors="replace"))
        except OSError:
            return "another process"

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


class _Held(Exception):
    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def _key_answers_by_hash(con: duckdb.DuckDBPyConnection) -> None:
    """A store from before key_hash has `answers` under a VARCHAR PRIMARY KEY; DuckDB cannot
    drop a constraint, so the table is made again in today's layout and its rows copied."""
    keyed = con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE database_name = current_database()"
        " AND schema_name = 'main' AND table_name = 'answers' AND column_name = 'key_hash'"
    ).fetchall()[0][0]
    if keyed:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("ALTER TABLE answers RENAME TO answers_by_key")
        con.execute(ANSWERS_DDL)
        con.execute(
            f"INSERT INTO answers ({ANSWERS_COLUMNS}) SELECT request_key,"
            f" {key_hash_sql('request_key')}, output, input_tokens, output_tokens,"
            " thinking_tokens, cached_tokens, job, row_id, created_at FROM answers_by_key"
        )
        con.execute("DROP TABLE answers_by_key")
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


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
        except _Held as held:
            raise _busy(path, held.holder, for_run) from None
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
                _key_answers_by_hash(con)
                # checkpoints happen when the writer reopens (every REOPEN_ROWS), not when the
                # WAL passes DuckDB's default 16 MB in the middle of a run; see REOPEN_ROWS
                con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
                self._writer_settings(con)
            return con
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise _busy(path, _holder(text), not read_only) from None
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
                self.con.register("_calls", _calls_table(job, calls))
                self.con.execute("INSERT INTO calls SELECT * FROM _calls")
            if results:
                self.con.register("_results", _results_table(job, results))
                self.con.execute(f"INSERT INTO results BY NAME SELECT * FROM _results{conflict}")
                if any(r.request_key is not None for r in results):
                    self.con.execute(_KEEP_ANSWERS, [now])
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
                [job, batch_id, len(rows), requests, reserved.quantize(_Q), now, now],
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
            self.con.register("_calls", _calls_table(job, records, recovered=True))
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
        cols += [f"{_column_sql(c)} AS {sql_ident(c.name)}" for c in columns]
        taken = {c.name for c in columns} | {"row_id", "status", "error", "cost_usd", "attempts"}
        sql_types = self._sql_types(keep_types or {})
        cols += [
            f"{_kept_sql(k, sql_types.get(k))} AS {sql_ident(k)}" for k in keep if k not in taken
        ]
        cols += ["r.attempts", "r.cost_usd", "r.output", "r.finished_at"]
        self.con.execute(
            f"CREATE OR REPLACE VIEW {sql_ident(name)} AS SELECT {', '.join(cols)} "
            f"FROM results r WHERE r.job = {sql_str(job)}"
        )
        return name

    def _sql_types(self, types: Mapping[str, pa.DataType]) -> dict[str, str]:
        """DuckDB's name for each Arrow type it can read back from JSON."""
        usable = {k: t for k, t in types.items() if _from_json(t)}
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
        thrown_away: everything else that was billed (failed, blocked rows' attempts)."""
        rows = self.con.execute(
            "SELECT CASE WHEN outcome = 'ok' THEN 'ok'"
            " WHEN outcome IN ('retried', 'invalid_output', 'truncated') THEN 'retried'"
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


def sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _column_sql(c: ViewColumn) -> str:
    """The SQL of a task's view column over the results table (aliased `r`)."""
    path = sql_str(c.path)
    if c.type == "VARCHAR":
        sql = f"json_extract_string(r.output, {path})"
    elif c.type == "JSON":
        sql = f"json_extract(r.output, {path})"
    else:
        sql = f"CAST(json_extract(r.output, {path}) AS {c.type})"
    return f"coalesce({sql}, r.status = 'blocked')" if c.blocked_is_true else sql


def _from_json(t: pa.DataType) -> bool:
    """Whether a value of this type survives the trip through the `kept` JSON column."""
    if pa.types.is_struct(t):
        return all(_from_json(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return bool(_from_json(t.value_type))
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_date(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
    )


def _kept_sql(key: str, sql_type: str | None) -> str:
    """A keep column read back from `kept` JSON: TRY_CAST, so a value that does not fit the
    type (a JSONL row unlike the first ones) is NULL in the view and still whole in `kept`."""
    path = sql_str("$." + key)
    if sql_type is None or sql_type == "VARCHAR":
        return f"json_extract_string(r.kept, {path})"
    nested = sql_type.startswith(("STRUCT", "MAP")) or sql_type.endswith("]")
    extract = "json_extract" if nested else "json_extract_string"
    return f"TRY_CAST({extract}(r.kept, {path}) AS {sql_type})"


def _json_default(value: Any) -> Any:
    """Kept values orjson does not write itself (Decimal, bytes)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):  # a subclass (pandas.Timestamp) orjson does not take
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def kept_json(kept: Mapping[str, Any]) -> str:
    return orjson.dumps(kept, default=_json_default).decode()


# ok answers by request key; a copy stored in the same commit adds its share back, so the
# tokens are what one sending of the request took per row. A key whose key_hash is stored
# already is left out: the anti-join scans key_hash alone (joining on request_key as well
# read every stored key, 7x slower at 1M answers); two keys sharing 60 bits would only
# cost the second its cache entry
_KEEP_ANSWERS = (
    f"INSERT INTO answers ({ANSWERS_COLUMNS}) SELECT n.* FROM (SELECT request_key,"
    f" {key_hash_sql('request_key')} AS key_hash, any_value(output), sum(input_tokens),"
    " sum(output_tokens), sum(thinking_tokens), sum(cached_tokens), any_value(job),"
    " min(row_id), ? FROM _results WHERE status = 'ok' AND request_key IS NOT NULL"
    " AND NOT from_cache GROUP BY request_key) n ANTI JOIN answers a"
    " ON a.key_hash = n.key_hash"
)


# what `status` and the job page show of each batch of the Batch lane
BATCH_COLUMNS = (
    "batch_id",
    "provider_name",
    "state",
    "closed",
    "rows",
    "requests",
    "ok_rows",
    "retry_rows",
    "error",
    "created_at",
    "finished_at",
)


def _results_table(job: str, records: Sequence[ResultRecord]) -> pa.Table:
    return pa.table(
        {
            "job": [job] * len(records),
            "row_id": [r.row_id for r in records],
            "pos": [r.pos for r in records],
            "status": [r.status for r in records],
            "output": [
                orjson.dumps(r.output).decode() if r.output is not None else None for r in records
            ],
            "error": [r.error for r in records],
            "attempts": [r.attempts for r in records],
            "input_tokens": [r.usage.input for r in records],
            "output_tokens": [r.usage.output for r in records],
            "thinking_tokens": [r.usage.thinking for r in records],
            "cached_tokens": [r.usage.cached for r in records],
            "cost_usd": [r.cost_usd.quantize(_Q) for r in records],
            "kept": [kept_json(r.kept) if r.kept else None for r in records],
            "finished_at": [r.finished_at for r in records],
            "answered_by": [r.answered_by for r in records],
            "request_key": [r.request_key for r in records],
            "input_hash": [r.input_hash for r in records],
            "from_cache": [r.from_cache for r in records],
            "saved_usd": [r.saved_usd.quantize(_Q) for r in records],
            "model": [r.model for r in records],
        },
        schema=RESULT_SCHEMA,
    )


def _calls_table(job: str, records: Sequence[CallRecord], *, recovered: bool = False) -> pa.Table:
    return pa.table(
        {
            "job": [job] * len(records),
            "call_id": [c.call_id for c in records],
            "row_ids": [list(c.row_ids) for c in records],
            "attempt": [c.attempt for c in records],
            "started_at": [c.started_at for c in records],
            "latency_ms": [c.latency_ms for c in records],
            "http_status": [c.http_status for c in records],
            "outcome": [c.outcome for c in records],
            "error": [c.error for c in records],
            "input_tokens": [c.usage.input for c in records],
            "output_tokens": [c.usage.output for c in records],
            "thinking_tokens": [c.usage.thinking for c in records],
            "cached_tokens": [c.usage.cached for c in records],
            "cost_usd": [c.cost_usd.quantize(_Q) for c in records],
            "model": [c.model for c in records],
            "model_version": [c.model_version for c in records],
            "response_id": [c.response_id for c in records],
            "recovered": [recovered] * len(records),
            "lane": [c.lane for c in records],
            "pool": [c.pool for c in records],
        },
        schema=CALL_SCHEMA,
    )


class StoreThread:
    """Runs every store call on one dedicated thread, so the event loop never blocks on DuckDB."""

    def __init__(self, store: Store):
        self.store = store
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flashpipe-store")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the store's thread; a disk or file fault becomes one StoreError line."""
        try:
            return await asyncio.wrap_future(self._pool.submit(fn, *args))
        except (duckdb.Error, OSError) as exc:
            action = getattr(fn, "__name__", "use the store").replace("_", " ")
            raise store_fault(self.store.path, action, exc) from None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        # a connection a disk fault invalidated has nothing left to save
        with contextlib.suppress(duckdb.Error):
            self.store.close()


class StoredBatches:
    """A job's provider batches in the store, as the Batch lane keeps them (its BatchBook)."""

    def __init__(self, thread: StoreThread, job: str):
        self.thread = thread
        self.job = job

    async def open_batches(self) -> list[dict[str, Any]]:
        return await self.thread.run(self.thread.store.open_batches, self.job)

    async def record(
        self, batch_id: str, rows: list[BatchRow], requests: int, reserved: Decimal
    ) -> None:
        store = self.thread.store
        await self.thread.run(store.record_batch, self.job, batch_id, rows, requests, reserved)

    async def rows(self, batch_id: str) -> list[BatchRow]:
        return await self.thread.run(self.thread.store.batch_rows, self.job, batch_id)

    async def submitted(self, batch_id: str, provider_name: str) -> None:
        store = self.thread.store
        await self.thread.run(store.batch_submitted, self.job, batch_id, provider_name)

    async def state(self, batch_id: str, state: str) -> None:
        await self.thread.run(self.thread.store.batch_state, self.job, batch_id, state)
