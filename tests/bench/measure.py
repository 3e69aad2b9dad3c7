"""Run flashpipe as its own process (timing, peak RSS) and read what it left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson

from tests.bench.data import data_dir, write_toml

ROOT = Path(__file__).resolve().parents[2]
KEY = "sim-key"


@dataclass
class Proc:
    wall_s: float
    elapsed_s: float  # the run's own elapsed time, from its summary line (or wall_s)
    peak_mib: float
    started: float  # time.time() just before the process was spawned
    stdout: str
    stderr: str
    code: int
    interrupted: bool = False


def run_job(
    doc: dict[str, Any], db: Path, *, timeout: float = 600, stop_after: float | None = None
) -> Proc:
    """Write the job file, run it with the CLI; raise when it does not finish cleanly.

    With `stop_after`, the run gets SIGINT after that many seconds (a graceful stop)."""
    job = write_toml(doc, data_dir() / f"{doc['name']}.toml")
    p = flashpipe(
        "run", str(job), "--db", str(db), "--quiet", timeout=timeout, stop_after=stop_after
    )
    if p.code != 0 and not (p.interrupted and p.code == 130):
        raise RuntimeError(f"job {doc['name']} exited {p.code}: {p.stderr.strip()[-800:]}")
    return p


def flashpipe(*args: str, timeout: float = 600, stop_after: float | None = None) -> Proc:
    """`python -m pipeline ARGS` in a child process, reaped with os.wait4 for its peak RSS."""
    started = time.time()
    t0 = time.monotonic()
    out_path = data_dir() / f"_out_{os.getpid()}_{threading.get_ident()}.txt"
    err_path = data_dir() / f"_err_{os.getpid()}_{threading.get_ident()}.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            env=dict(os.environ, PYTHONUNBUFFERED="1", GEMINI_API_KEY=KEY, OPENAI_API_KEY=KEY),
        )
        deadline = time.monotonic() + timeout
        stop_at = time.monotonic() + stop_after if stop_after is not None else None
        interrupted = False
        hwm = 0.0
        while True:
            hwm = max(hwm, _peak_rss_mib(proc.pid))
            if stop_at is not None and not interrupted and time.monotonic() > stop_at:
                proc.send_signal(signal.SIGINT)
                interrupted = True
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise RuntimeError(f"flashpipe {' '.join(args)} timed out after {timeout} s")
            time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    text = out_path.read_text(errors="replace")
    err_text = err_path.read_text(errors="replace")
    out_path.unlink()
    err_path.unlink()
    m = re.search(r" in ([0-9.]+) s,", text)
    return Proc(
        wall,
        float(m.group(1)) if m else wall,
        # ru_maxrss of a child counts the parent's pages it held between fork and exec (the
        # bench runner's own memory); VmHWM belongs to the exec'd program alone
        hwm or usage.ru_maxrss / 1024,
        started,
        text,
        err_text,
        proc.returncode,
        interrupted,
    )


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def fresh_db(name: str) -> Path:
    db = data_dir() / f"{name}.duckdb"
    for suffix in ("", ".wal", ".status.json"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    return db


def fresh_file(name: str) -> Path:
    path = data_dir() / name
    path.unlink(missing_ok=True)
    return path


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def status_counts(db: Path, job: str) -> dict[str, int]:
    rows = query(db, "SELECT status, count(*) FROM results WHERE job = ? GROUP BY 1", job)
    return {str(s): int(n) for s, n in rows}


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any sliding window of `window` seconds."""
    ts = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
