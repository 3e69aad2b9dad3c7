"""Plain helpers the tests share: input rows and files, job specs and files, running a job
in-process or through the CLI, and reading the store and the simulator's ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.simproc import SimProcess
from pipeline.spec import JobSpec, load_spec

if TYPE_CHECKING:
    from pipeline.run.job import RunSummary

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "fixtures" / "reference"  # copied from the shared recordings
KEY_ENV = "FP_TEST_KEY"  # the job files' api_key_env


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("wb") as fh:
        for r in rows:
            fh.write(r if isinstance(r, bytes) else orjson.dumps(r))
            fh.write(b"\n")
    return path


def ticket_rows(n: int) -> list[dict[str, Any]]:
    texts = [
        "I was charged twice on my last invoice, please refund",
        "The app crashes with an error when I export",
        "I cannot login, password reset email never arrives",
        "Please add dark mode, would love that feature",
        "What are your opening hours?",
    ]
    return [{"id": f"T-{i:05d}", "text": f"{texts[i % 5]} (#{i})", "lang": "en"} for i in range(n)]


def make_spec(
    sim: SimProcess | None,
    input_path: Path,
    *,
    api: str = "gemini",
    task: str = "classify",
    name: str = "t",
    extra: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> JobSpec:
    doc: dict[str, Any] = {
        "name": name,
        "task": task,
        "model": "gemini-3.1-flash-lite-preview",
        "input": {"path": str(input_path), "id": "id", "keep": ["lang"]},
        "provider": {
            "api": api,
            "base_url": sim.base_url(api) if sim is not None else "http://127.0.0.1:9",
            "timeout": {"connect": 2, "read": 5, "total": 10},
        },
        "limits": {"rpm": 0, "tpm": 0, "concurrency": 16, "max_attempts": 4},
    }
    if task == "classify":
        doc["classify"] = {"labels": ["billing", "bug", "account", "feature_request", "other"]}
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k].update(v)
        else:
            doc[k] = v
    return load_spec(document=doc, overrides=overrides or [])


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )


def read_ledger(path: Path | None) -> list[dict[str, Any]]:
    """The simulator's ledger entries (`sim.ledger`), in order."""
    if path is None:
        raise ValueError("this simulator was started without a ledger")
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def ledger_of(sim: SimProcess) -> Path:
    """The path of the simulator's ledger (the `sim_factory` fixture gives every one a ledger)."""
    if sim.ledger is None:
        raise ValueError("this simulator was started without a ledger")
    return sim.ledger


def run_sync(spec: JobSpec, db: Path, *, key: str = "sim-key", restart: bool = False) -> RunSummary:
    """Run a job in-process to its end (or its stop, which raises) and return the summary."""
    import anyio

    from pipeline.run.engine import run_job

    async def go() -> RunSummary:
        return await run_job(spec, str(db), api_key=key, restart=restart, handle_signals=False)

    return anyio.run(go)


def run_rows(
    sim: SimProcess, tmp: Path, rows: list[dict[str, Any]], *, extra: dict[str, Any] | None = None
) -> tuple[JobSpec, Path, RunSummary]:
    """Run a job over `rows` in-process against `sim` to its end, then stop `sim` (its ledger is
    then complete); return the spec, the store and the summary."""
    src = write_jsonl(tmp / "in.jsonl", rows)
    spec = make_spec(sim, src, extra=extra)
    db = tmp / "s.duckdb"
    summary = run_sync(spec, db)
    sim.stop()
    return spec, db, summary


def sql(db: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the store with a real DuckDB connection (read-only, after the run has let go)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(query, list(params)).fetchall()
    finally:
        con.close()


def ledger_usage(path: Path | None) -> dict[str, int]:
    """Billed tokens the simulator reported, in flashpipe's kinds (input excludes cached)."""
    total = {"requests": 0, "billed": 0, "input": 0, "cached": 0, "output": 0, "thinking": 0}
    for e in read_ledger(path):
        total["requests"] += 1
        if e["billed"]:
            u = e["usage"]
            total["billed"] += 1
            total["input"] += u["prompt"] - u["cached"]
            total["cached"] += u["cached"]
            total["output"] += u["output"]
            total["thinking"] += u["thinking"]
    return total


def store_usage(db: Path, job: str) -> dict[str, int]:
    row = sql(
        db,
        "SELECT count(*), sum(input_tokens), sum(cached_tokens), sum(output_tokens),"
        " sum(thinking_tokens) FROM calls WHERE job = ?",
        job,
    )[0]
    return {
        "calls": int(row[0]),
        "input": int(row[1] or 0),
        "cached": int(row[2] or 0),
        "output": int(row[3] or 0),
        "thinking": int(row[4] or 0),
    }


def job_file(
    tmp: Path,
    sim: SimProcess | None,
    src: Path,
    *,
    name: str = "cli",
    labels: str = '["billing", "bug", "account", "feature_request", "other"]',
    keep: Sequence[str] = ("lang",),
    concurrency: int = 32,
    extra: str = "",
) -> Path:
    base = sim.base_url("gemini") if sim else "http://127.0.0.1:9"
    keep_line = f"keep = {json.dumps(list(keep))}" if keep else ""  # none: the line is left out
    path = tmp / f"{name}.toml"
    path.write_text(
        f"""
name = "{name}"
task = "classify"
model = "gemini-3.1-flash-lite-preview"
[input]
path = "{src}"
id = "id"
{keep_line}
[provider]
base_url = "{base}"
api_key_env = "{KEY_ENV}"
[limits]
rpm = 0
concurrency = {concurrency}
[classify]
labels = {labels}
{extra}
"""
    )
    return path


def env(key: str = "sim-key") -> dict[str, str]:
    return {KEY_ENV: key}


def start_run(job: Path, db: Path, *extra: str, key: str = "sim-key") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(job), "--db", str(db), *extra],
        cwd=ROOT,
        env=dict(os.environ, **env(key)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_rows(db: Path, at_least: int, timeout: float = 30) -> dict[str, Any]:
    """Poll the runner's status snapshot until it has stored `at_least` rows."""
    snap_path = Path(str(db) + ".status.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            snap: dict[str, Any] = json.loads(snap_path.read_text())
            if snap["rows_done"] >= at_least:
                return snap
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("the run never got going")
