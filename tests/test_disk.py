"""A full, read-only or missing store: exit 5 with one line, nothing lost, the next run resumes.

Real faults: the store lives on a small tmpfs mounted by the test (root only; skipped with the
reason otherwise), filled up by the run itself or by a filler file, or remounted read-only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.simproc import SimProcess
from tests.support import (
    KEY_ENV,
    ROOT,
    job_file,
    read_ledger,
    run_cli,
    sql,
    ticket_rows,
    write_jsonl,
)


def mount(fs: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *options, str(fs)], capture_output=True, text=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of the given size; unmounted after the test."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
        fs = tmp_path / f"fs{len(mounted)}"
        fs.mkdir()
        r = mount(fs, "-t", "tmpfs", "-o", f"size={size}", "tmpfs")
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(fs)
        return fs

    yield make
    for fs in mounted:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)


def job(tmp: Path, sim: SimProcess, rows: int) -> Path:
    src = write_jsonl(tmp / "in.jsonl", ticket_rows(rows))
    return job_file(tmp, sim, src, name="disk", keep=(), concurrency=16)


def run(job_path: Path, db: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("run", str(job_path), "--db", str(db), "--quiet", env={KEY_ENV: "sim-key"})


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("flashpipe:")]
    assert len(lines) == 1, r.stderr  # a warning aside, exactly one error line
    return lines[0]


def fill(fs: Path, leave_kib: int) -> Path:
    """A filler file that leaves about `leave_kib` KiB free on fs."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    filler = fs / "filler"
    with filler.open("wb") as fh:
        fh.truncate(0)
        fh.write(b"\0" * max(0, free - leave_kib * 1024))
    return filler


def journals(db: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in db.parent.glob(db.name + ".journal.*")}


def one_result_per_row(db: Path, rows: int) -> None:
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(rows, rows)]
    assert sql(db, "SELECT count(*) FROM results WHERE status <> 'ok'") == [(0,)]


def test_a_missing_store_directory_exits_5_naming_it(sim: SimProcess, tmp_path: Path) -> None:
    db = tmp_path / "gone" / "s.duckdb"
    r = run(job(tmp_path, sim, 20), db)
    assert r.returncode == 5
    line = one_error_line(r)
    assert str(db.parent) in line and "does not exist" in line
    time.sleep(1.0)  # the simulator flushes its ledger every 0.5 s
    assert read_ledger(sim.ledger) == []  # nothing was sent


@pytest.mark.slow
def test_disk_full_mid_run_exits_5_then_one_run_finishes(
    sim: SimProcess, tmp_path: Path, small_fs: Callable[[str], Path]
) -> None:
    fs = small_fs("1600k")
    db = fs / "s.duckdb"
    path = job(tmp_path, sim, 8000)
    r = run(path, db)
    assert r.returncode == 5, r.stderr
    line = one_error_line(r)
    assert str(db) in line and "no space left on device" in line
    stored = sql(db, "SELECT count(*) FROM results")[0][0]
    assert 0 < stored < 8000
    assert mount(fs, "-o", "remount,size=64m").returncode == 0  # space is freed
    again = run(path, db)
    assert again.returncode == 0, again.stderr
    one_result_per_row(db, 8000)
    assert journals(db) == {}


@pytest.mark.slow
def test_disk_full_during_recovery_exits_5_and_keeps_the_journal(
    sim_factory: Callable[..., SimProcess], tmp_path: Path, small_fs: Callable[[str], Path]
) -> None:
    sim = sim_factory("--latency-ms", "40")
    fs = small_fs("16m")
    db = fs / "s.duckdb"
    path = job(tmp_path, sim, 3000)
    env = dict(os.environ, **{KEY_ENV: "sim-key"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(path), "--db", str(db), "--quiet"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not journals(db) or sum(journals(db).values()) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    left = journals(db)
    assert left, "the kill left no journal to recover"
    # one free page: the writability check passes, moving the journal into the store fails
    filler = fill(fs, leave_kib=4)
    r = run(path, db)
    assert r.returncode == 5, r.stderr
    line = one_error_line(r)
    assert str(db) in line and "no space left on device" in line
    assert journals(db) == left  # the journal is intact
    filler.unlink()
    again = run(path, db)
    assert again.returncode == 0, again.stderr
    one_result_per_row(db, 3000)
    assert sql(db, "SELECT count(*) > 0 FROM calls WHERE recovered") == [(True,)]


@pytest.mark.slow
def test_a_read_only_store_exits_5_before_sending_then_resumes(
    sim: SimProcess, tmp_path: Path, small_fs: Callable[[str], Path]
) -> None:
    fs = small_fs("16m")
    db = fs / "s.duckdb"
    path = job(tmp_path, sim, 100)
    assert run(path, db).returncode == 0
    write_jsonl(tmp_path / "in.jsonl", ticket_rows(200))  # 100 more rows arrived
    assert sim.ledger is not None
    time.sleep(1.0)  # the simulator flushes its ledger every 0.5 s
    sent = len(read_ledger(sim.ledger))
    assert sent == 100
    assert mount(fs, "-o", "remount,ro").returncode == 0
    try:
        r = run(path, db)
    finally:
        assert mount(fs, "-o", "remount,rw").returncode == 0
    assert r.returncode == 5, r.stderr
    line = one_error_line(r)
    assert str(fs) in line and "read-only file system" in line
    time.sleep(1.0)
    assert len(read_ledger(sim.ledger)) == sent  # nothing sent
    again = run(path, db)
    assert again.returncode == 0, again.stderr
    one_result_per_row(db, 200)
