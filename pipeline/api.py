"""flashpipe from Python: `Job` for job files and specs, one-call helpers for in-memory data.

Everything runs through the same engine, store, resume and cost accounting as the CLI:

    job = Job.from_file("jobs/classify_tickets.toml", db="tickets.duckdb")
    job.estimate(); job.run()            # or: await job.run_async() inside a running loop
    table = job.results()                # pyarrow.Table with the typed view's columns

    job = classify(df, labels=["billing", "bug", "other"], name="tickets", db="t.duckdb")

In-memory data (a pyarrow Table or RecordBatchReader, a pandas or polars DataFrame, a list
of dicts) is written once to a Parquet file beside the store, named by a hash of its content,
so calling a helper again with the same data and name resumes and sends nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast

import orjson
import pyarrow as pa

from pipeline.errors import SpecError, UsageError
from pipeline.run.engine import run_job
from pipeline.run.job import RunSummary
from pipeline.spec import JobSpec, load_spec

JobState = Literal["running", "done", "interrupted", "budget_exhausted", "stopped", "failed"]
RowStatus = Literal["ok", "blocked", "failed", "invalid"]
DEFAULT_MODEL = "gemini-3.1-flash-lite-preview"


@dataclass(frozen=True)
class Tokens:
    input: int = 0
    cached: int = 0
    output: int = 0
    thinking: int = 0


@dataclass(frozen=True)
class Status:
    """Where a job stands in the store (what `flashpipe status` prints)."""

    job: str
    state: JobState
    rows: int
    by_status: Mapping[str, int]
    requests: int
    rate_limited: int
    usd: Decimal
    rows_paid_twice: int
    runs: int
    message: str | None = None


@dataclass(frozen=True)
class Cost:
    """What a job has cost so far, to the token (what `flashpipe cost` prints)."""

    job: str
    model: str
    usd: Decimal
    requests: int
    rows: int
    tokens: Tokens
    by_outcome: Mapping[str, Decimal] = field(default_factory=dict)
    by_lane: Mapping[str, Decimal] = field(default_factory=dict)
    rows_paid_twice: int = 0


@dataclass(frozen=True)
class Estimate:
    """Requests, tokens and USD predicted from a sample of the input (`flashpipe estimate`)."""

    job: str
    model: str
    rows: int
    rows_exact: bool
    requests: int
    tokens: Tokens
    usd: Decimal
    usd_low: Decimal
    usd_high: Decimal
    usd_by_lane: Mapping[str, Decimal]
    minutes_at_limits: float | None


Overrides = Mapping[str, Any] | Sequence[str]


class Job:
    """One job and the store it lives in. Cheap to create: nothing is read or sent until a
    method asks for it."""

    def __init__(
        self,
        spec: JobSpec | Mapping[str, Any],
        *,
        db: str | Path | None = None,
        overrides: Overrides = (),
    ):
        if isinstance(spec, JobSpec):
            if overrides:
                doc = orjson.loads(spec.raw)
                spec = _load(doc, overrides)
        else:
            spec = _load(dict(spec), overrides)
        self.spec: JobSpec = spec
        from pipeline.store import resolve_path

        self.db: str = resolve_path(str(db) if db is not None else None, spec.store_path)

    @classmethod
    def from_file(
        cls, path: str | Path, *, db: str | Path | None = None, overrides: Overrides = ()
    ) -> Job:
        """A job file (TOML), with `{"limits.rpm": 600}`-style or `["limits.rpm=600"]` overrides."""
        return cls(load_spec(path, _override_strings(overrides)), db=db)

    @classmethod
    def open(cls, name: str, *, db: str | Path | None = None, overrides: Overrides = ()) -> Job:
        """A job already in the store, from the spec stored with it (like `flashpipe resume`)."""
        from pipeline.store import Store, resolve_path

        path = resolve_path(str(db) if db is not None else None)
        store = Store(path, read_only=True)
        try:
            row = store.job_row(name)
        finally:
            store.close()
        if row is None:
            raise UsageError(f"no job named {name!r} in {path!r}")
        return cls(orjson.loads(row["spec"])["doc"], db=path, overrides=overrides)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def view(self) -> str:
        """The typed view of this job's results in the store (`SELECT * FROM <view>`)."""
        from pipeline.store import view_name

        return view_name(self.name)

    def __repr__(self) -> str:
        return f"Job({self.name!r}, task={self.spec.task!r}, db={self.db!r})"

    # -- running ---------------------------------------------------------------------------
    def estimate(self) -> Estimate:
        from pipeline.estimate import estimate

        r = estimate(self.spec)
        t = r.get("tokens", {})
        return Estimate(
            job=self.name,
            model=self.spec.model,
            rows=int(r.get("rows", 0)),
            rows_exact=bool(r.get("rows_exact", True)),
            requests=int(r.get("requests", 0)),
            tokens=Tokens(**{k: int(v) for k, v in t.items()}),
            usd=Decimal(r.get("usd", "0")),
            usd_low=Decimal(r.get("usd_low", "0")),
            usd_high=Decimal(r.get("usd_high", "0")),
            usd_by_lane={k: Decimal(v) for k, v in r.get("usd_by_lane", {}).items()},
            minutes_at_limits=r.get("minutes_at_limits"),
        )

    def run(
        self, *, restart: bool = False, progress: bool = True, sim: bool | str = False
    ) -> RunSummary:
        """Run or resume the job to its end and wait for it. Inside a running event loop (a
        notebook) it runs on a thread of its own; `await run_async()` avoids that."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            main = threading.current_thread() is threading.main_thread()
            return _anyio_run(self._run(restart, progress, sim, handle_signals=main))
        with concurrent.futures.ThreadPoolExecutor(1, "flashpipe-run") as pool:
            coro = self._run(restart, progress, sim, handle_signals=False)
            return pool.submit(_anyio_run, coro).result()

    async def run_async(
        self, *, restart: bool = False, progress: bool = True, sim: bool | str = False
    ) -> RunSummary:
        """Run or resume the job on the running asyncio loop (Jupyter's, an app's)."""
        return await self._run(restart, progress, sim, handle_signals=False)

    async def _run(
        self, restart: bool, progress: bool, sim: bool | str, *, handle_signals: bool
    ) -> RunSummary:
        from pipeline.progress import ProgressReporter

        # a notebook's stderr is no TTY: plain lines, no escape codes
        reporter = ProgressReporter(sys.stderr, quiet=not progress, interval=5.0)
        spec, api_key, simulator = self.spec, None, None
        if sim:
            spec, api_key, simulator = _with_simulator(spec, "clean" if sim is True else sim)
        try:
            return await run_job(
                spec,
                self.db,
                api_key=api_key,
                restart=restart,
                progress=reporter,
                handle_signals=handle_signals,
            )
        finally:
            if simulator is not None:
                simulator.stop()

    def retry(self, status: RowStatus | Sequence[RowStatus] = "failed") -> int:
        """Re-queue the rows with these statuses; the next `run()` sends them. Returns how many."""
        from pipeline.store import Store

        statuses = [status] if isinstance(status, str) else list(status)
        store = Store(self.db)
        try:
            self._known(store)
            return store.requeue(self.name, statuses)
        finally:
            store.close()

    # -- reading the store -----------------------------------------------------------------
    def status(self) -> Status:
        """From the store; while a run holds the store (in this process or another), from the
        live snapshot the runner keeps beside it."""
        from pipeline.errors import StoreError
        from pipeline.reports import status_report

        try:
            j = self._report(status_report)
        except StoreError:
            live = self._live_status()
            if live is None:
                raise
            return live
        return Status(
            job=self.name,
            state=cast(JobState, j["state"]),
            rows=int(j["rows"]),
            by_status=dict(j["by_status"]),
            requests=int(j["requests"]),
            rate_limited=int(j["rate_limited"]),
            usd=Decimal(j["usd"]),
            rows_paid_twice=int(j["rows_paid_twice"]),
            runs=int(j["runs"] or 0),
            message=j["message"],
        )

    def _live_status(self) -> Status | None:
        from pipeline.run.job import status_path

        path = status_path(self.db)
        if not path.exists():
            return None
        snap = orjson.loads(path.read_bytes())
        if snap.get("job") != self.name:
            return None
        return Status(
            job=self.name,
            state="running",
            rows=int(snap["rows_done"]),
            by_status=dict(snap["by_status"]),
            requests=int(snap["requests"]),
            rate_limited=int(snap["rate_limited"]),
            usd=Decimal(snap["usd"]),
            rows_paid_twice=0,
            runs=0,
            message="running; figures from the live snapshot",
        )

    def cost(self) -> Cost:
        from pipeline.reports import cost_report

        j = self._report(cost_report)
        return Cost(
            job=self.name,
            model=j["model"],
            usd=Decimal(j["usd_exact"]),
            requests=int(j["requests"]),
            rows=int(j["rows"]),
            tokens=Tokens(**{k: int(v) for k, v in j["tokens"].items()}),
            by_outcome={k: Decimal(v) for k, v in j["usd"]["by_outcome"].items()},
            by_lane={k: Decimal(v["usd_exact"]) for k, v in j["lanes"].items()},
            rows_paid_twice=int(j["rows_paid_twice"]),
        )

    def results(self, status: RowStatus | Sequence[RowStatus] | None = None) -> pa.Table:
        """The job's results in input order, with the typed view's columns (answer fields and
        keep columns in their input types)."""
        from pipeline.store import sql_ident, sql_str

        where = ""
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where = " AND r.status IN (" + ", ".join(sql_str(s) for s in statuses) + ")"
        return self.query(
            f"SELECT v.* FROM {sql_ident(self.view)} v JOIN results r"
            f" ON r.job = {sql_str(self.name)} AND r.row_id = v.row_id WHERE true{where}"
            " ORDER BY regexp_replace(r.pos, '[0-9]+$', ''),"
            " TRY_CAST(regexp_extract(r.pos, '([0-9]+)$', 1) AS BIGINT), r.row_id"
        )

    def relation(self, status: RowStatus | Sequence[RowStatus] | None = None) -> Any:
        """The results as a DuckDB relation (in DuckDB's default in-memory connection), for
        SQL: `job.relation().aggregate("label, count(*)")` or `duckdb.sql("... FROM rel")`."""
        import duckdb

        return duckdb.from_arrow(self.results(status))

    def query(self, sql: str) -> pa.Table:
        """Any SQL over the store (`results`, `calls`, `jobs`, the typed views), as Arrow."""
        from pipeline.store import Store

        store = Store(self.db, read_only=True)
        try:
            self._known(store)
            return store.query_arrow(sql)
        finally:
            store.close()

    def _known(self, store: Any) -> None:
        from pipeline.reports import job_names

        job_names(store, self.name)

    def _report(self, build: Any) -> dict[str, Any]:
        from pipeline.store import Store

        store = Store(self.db, read_only=True)
        try:
            report: dict[str, Any] = build(store, self.name)["jobs"][0]
        finally:
            store.close()
        return report


# -- one-call helpers -------------------------------------------------------------------------
def classify(
    data: Any,
    labels: Sequence[str | Mapping[str, str]],
    *,
    multi_label: bool = False,
    **common: Any,
) -> Job:
    """Classify every row of `data` into `labels`; returns the finished Job (`.results()`)."""
    table = {"labels": [dict(x) if isinstance(x, Mapping) else x for x in labels]}
    if multi_label:
        table["multi_label"] = True  # type: ignore[assignment]
    return _helper("classify", table, data, **common)


def translate(
    data: Any,
    target: str | Sequence[str],
    *,
    source: str = "auto",
    glossary: Mapping[str, str] | None = None,
    **common: Any,
) -> Job:
    """Translate every row's text into `target` (a code like "de", or several)."""
    targets = [target] if isinstance(target, str) else list(target)
    table: dict[str, Any] = {"targets": targets, "source": source}
    if glossary:
        table["glossary"] = dict(glossary)
    return _helper("translate", table, data, **common)


def moderate(data: Any, categories: Sequence[str] | None = None, **common: Any) -> Job:
    """Flag every row in `categories` (default: hate, harassment, sexual, violence, ...)."""
    table = {"categories": list(categories)} if categories is not None else {}
    return _helper("moderate", table, data, **common)


def extract(data: Any, prompt: str, schema: Mapping[str, Any], **common: Any) -> Job:
    """A custom task: `prompt` with `{column}` placeholders, answers validated by `schema`."""
    return _helper("custom", {"prompt": prompt, "schema": dict(schema)}, data, **common)


custom = extract


def _helper(
    task: str,
    task_table: dict[str, Any],
    data: Any,
    *,
    name: str | None = None,
    db: str | Path | None = None,
    model: str = DEFAULT_MODEL,
    text: str = "text",
    id: str | None = None,
    keep: Sequence[str] | None = None,
    provider: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
    max_usd: float | str | Decimal | None = None,
    overrides: Overrides = (),
    restart: bool = False,
    progress: bool = True,
    sim: bool | str = False,
) -> Job:
    from pipeline.store import resolve_path

    db_path = resolve_path(str(db) if db is not None else None)
    path, columns, digest = stage_input(data, db_path)
    if text not in columns:
        raise SpecError(f"text: column {text!r} is not in the data (columns: {', '.join(columns)})")
    if keep is None:  # every other column comes back with the results, in its type
        keep = [c for c in columns if c not in (text, id)]
    doc: dict[str, Any] = {
        "name": name or f"{task}-{digest[:12]}",
        "task": task,
        "model": model,
        "input": {"path": path, "text": text, "keep": list(keep), **({"id": id} if id else {})},
        "provider": dict(provider or {}),
        "limits": dict(limits or {}),
        task: task_table,
    }
    if max_usd is not None:
        doc["budget"] = {"max_usd": str(max_usd)}
    job = Job(doc, db=db_path, overrides=overrides)
    job.run(restart=restart, progress=progress, sim=sim)
    return job


def stage_input(data: Any, db_path: str) -> tuple[str, list[str], str]:
    """Where the engine reads `data` from: a path as it is, in-memory data as a Parquet file
    beside the store named by a hash of its content (written once). Returns the path, the
    column names and the content hash."""
    if isinstance(data, str | Path):
        from pipeline.files import input_files

        first = input_files(str(data))[0]
        return str(data), _columns_of(first), hashlib.sha256(str(data).encode()).hexdigest()
    reader = _as_reader(data)
    folder = Path(db_path + ".inputs")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".staging-{os.getpid()}-{threading.get_ident()}.parquet"
    digest = hashlib.sha256(reader.schema.serialize().to_pybytes())
    import pyarrow.parquet as pq

    with pq.ParquetWriter(tmp, reader.schema) as writer:
        for batch in reader:
            digest.update(batch.serialize().to_pybytes())
            writer.write_batch(batch)
    hexdigest = digest.hexdigest()
    final = folder / f"{hexdigest[:24]}.parquet"
    if final.exists():  # the same data as before: the job's input stays untouched
        tmp.unlink()
    else:
        tmp.replace(final)
    return str(final.absolute()), list(reader.schema.names), hexdigest


def _as_reader(data: Any) -> pa.RecordBatchReader:
    if isinstance(data, pa.RecordBatchReader):
        return data
    if isinstance(data, pa.Table):
        return data.to_reader()
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data]).to_reader()
    module = type(data).__module__.split(".")[0]
    if module == "pandas":
        return pa.Table.from_pandas(data, preserve_index=False).to_reader()
    if module == "polars":
        return cast(pa.Table, data.to_arrow()).to_reader()
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | Mapping):
        rows = list(data)
        if all(isinstance(r, Mapping) for r in rows):
            return pa.Table.from_pylist([dict(r) for r in rows]).to_reader()
    raise UsageError(
        f"data: a {type(data).__name__} is not something flashpipe reads; give a pyarrow Table "
        "or RecordBatchReader, a pandas or polars DataFrame, a list of dicts, or a file path"
    )


def _columns_of(f: Any) -> list[str]:
    from pipeline.sources import _csv_reader, _parquet_file
    from pipeline.spec import InputSpec

    if f.format == "parquet":
        return list(_parquet_file(f).schema_arrow.names)
    if f.format in ("csv", "tsv"):
        return list(_csv_reader(f, InputSpec(f.uri)).schema.names)
    from pipeline.sources import read_batches

    rows = next(read_batches(InputSpec(f.uri)), [])
    return list(dict.fromkeys(k for r in rows[:100] for k in r.fields))


# -- plumbing ---------------------------------------------------------------------------------
def _load(doc: dict[str, Any], overrides: Overrides) -> JobSpec:
    if isinstance(overrides, Mapping):
        doc = _merged(doc, overrides)
        return load_spec(document=doc)
    return load_spec(document=doc, overrides=list(overrides))


def _merged(doc: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`{"limits.rpm": 600}` or `{"limits": {"rpm": 600}}` laid over a job document."""
    out: dict[str, Any] = orjson.loads(orjson.dumps(doc))
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"overrides: {part!r} in {key!r} is not a table")
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = _merged(node[leaf], value)
        else:
            node[leaf] = orjson.loads(orjson.dumps(value, default=str))
    return out


def _override_strings(overrides: Overrides) -> list[str]:
    """Overrides as the `--set KEY=VALUE` strings load_spec applies to a job file."""
    if not isinstance(overrides, Mapping):
        return list(overrides)
    flat: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat.append(f"{prefix}={_toml(value)}")

    walk("", overrides)
    return flat


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return orjson.dumps(value).decode()  # a JSON string or number is a TOML one too
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{orjson.dumps(str(k)).decode()} = {_toml(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise SpecError(f"overrides: {value!r} is not a TOML value")


def _with_simulator(spec: JobSpec, profile: str) -> tuple[JobSpec, str, Any]:
    """Like `--sim`: the embedded simulator in a child process, base_url pointed at it."""
    from pipeline.simproc import SimProcess

    if not re.fullmatch(r"clean|realistic|hostile", profile):
        raise UsageError(f"sim: {profile!r} is not a profile; expected clean, realistic or hostile")
    simulator = SimProcess(["--profile", profile]).start()
    overrides = [f'provider.base_url="{simulator.base_url(spec.provider.api)}"']
    if spec.provider.lane in ("batch", "auto"):  # the simulator's batches take seconds
        overrides += ["batch.poll_seconds=0.25", "batch.max_poll_seconds=1"]
    return load_spec(document=orjson.loads(spec.raw), overrides=overrides), simulator.key, simulator


def _anyio_run(coro: Any) -> RunSummary:
    import anyio

    async def main() -> RunSummary:
        result: RunSummary = await coro
        return result

    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    return anyio.run(main, backend="asyncio", backend_options=options)
