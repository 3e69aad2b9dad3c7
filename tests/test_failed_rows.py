"""A job whose rows failed is not silently done: exit 7 past limits.max_failed_share, and the
summary names the command that sends the failed rows again."""

from __future__ import annotations

from pathlib import Path

from pipeline.simproc import SimProcess
from tests.support import KEY_ENV, job_file, run_cli, sql, ticket_rows, write_jsonl


def job(tmp: Path, sim: SimProcess, bad: int, rows: int = 20) -> Path:
    data = ticket_rows(rows)
    for r in data[:bad]:
        r["text"] += " [[sim:400*1]]"  # the simulator refuses each of these once, with a 400
    src = write_jsonl(tmp / "in.jsonl", data)
    return job_file(tmp, sim, src, name="fr", keep=(), concurrency=4)


def test_mostly_failed_rows_exit_7_naming_the_retry_command(
    sim: SimProcess, tmp_path: Path
) -> None:
    db = tmp_path / "s.duckdb"
    path = job(tmp_path, sim, bad=12)
    r = run_cli("run", str(path), "--db", str(db), "--quiet", env={KEY_ENV: "sim-key"})
    assert r.returncode == 7, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "12 of the 20 rows this run stored failed" in lines[0]
    assert f"flashpipe retry fr --status failed --db {db}" in lines[0]
    assert sql(db, "SELECT state FROM jobs") == [("done",)]
    assert run_cli("retry", "fr", "--status", "failed", "--db", str(db)).returncode == 0
    again = run_cli("resume", "fr", "--db", str(db), "--quiet", env={KEY_ENV: "sim-key"})
    assert again.returncode == 0, again.stderr
    assert sql(db, "SELECT status, count(*) FROM results GROUP BY 1") == [("ok", 20)]


def test_a_few_failed_rows_exit_0_with_a_line_naming_the_retry_command(
    sim: SimProcess, tmp_path: Path
) -> None:
    db = tmp_path / "s.duckdb"
    r = run_cli(
        "run", str(job(tmp_path, sim, bad=1)), "--db", str(db), "--quiet", env={KEY_ENV: "sim-key"}
    )
    assert r.returncode == 0, r.stderr
    assert "1 rows failed" in r.stdout and "flashpipe retry fr --status failed" in r.stdout
