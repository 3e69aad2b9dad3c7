"""Inputs without an id column: a resume over a changed file is refused, nothing is sent."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from pipeline.errors import SpecError
from pipeline.simproc import SimProcess
from pipeline.spec import JobSpec, load_spec
from tests.support import make_spec, read_ledger, run_cli, run_sync, sql, ticket_rows, write_jsonl


def no_id_rows(n: int) -> list[dict[str, str]]:
    return [{"text": r["text"], "lang": r["lang"]} for r in ticket_rows(n)]


def test_resume_over_a_changed_input_without_ids_is_refused_and_sends_nothing(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", no_id_rows(40))
    spec = _without_id(make_spec(sim, src))
    db = tmp_path / "s.duckdb"
    assert run_sync(spec, db).rows == {"ok": 40}

    rows = no_id_rows(40)
    rows.insert(0, {"text": "a new first row", "lang": "en"})  # every position shifts
    write_jsonl(src, rows)
    with pytest.raises(SpecError) as refused:
        run_sync(spec, db)
    message = str(refused.value)
    assert "\n" not in message
    assert "changed" in message and "add input.id, or use --restart" in message
    assert sql(db, "SELECT count(*) FROM results") == [(40,)]

    # the CLI says the same in one line, exit 2
    job = tmp_path / "job.toml"
    job.write_text(
        f'name = "t"\ntask = "classify"\n[input]\npath = "{src}"\n'
        f'[provider]\nbase_url = "{sim.base_url("gemini")}"\n'
        '[classify]\nlabels = ["billing", "bug", "account", "feature_request", "other"]\n'
        "[limits]\nrpm = 0\ntpm = 0\nconcurrency = 16\nmax_attempts = 4\n"
    )
    cli = run_cli("run", str(job), "--db", str(db), "--quiet", env={"GEMINI_API_KEY": "k"})
    assert cli.returncode == 2
    assert cli.stderr.count("\n") == 1 and "add input.id, or use --restart" in cli.stderr

    assert run_sync(spec, db, restart=True).rows == {"ok": 41}
    sim.stop()  # the ledger is complete once the simulator stops
    # the refused runs sent nothing; the restart sent only the new row (the 40 others come
    # from the answer cache)
    assert len(read_ledger(sim.ledger)) == 40 + 1


def test_resume_over_the_same_input_without_ids_goes_on(sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", no_id_rows(30))
    spec = _without_id(make_spec(sim, src))
    db = tmp_path / "s.duckdb"
    run_sync(spec, db)
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("DELETE FROM results WHERE pos IN ('line:3', 'line:30')")
    con.close()
    assert run_sync(spec, db).rows == {"ok": 2}
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(30, 30)]


def test_a_touched_file_of_the_same_bytes_is_refused_too(sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", no_id_rows(5))
    spec = _without_id(make_spec(sim, src))
    db = tmp_path / "s.duckdb"
    run_sync(spec, db)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(SpecError, match="modification time"):
        run_sync(spec, db)


def test_an_input_with_ids_may_change_between_runs(sim: SimProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(10))
    spec = make_spec(sim, src)
    db = tmp_path / "s.duckdb"
    run_sync(spec, db)
    write_jsonl(src, ticket_rows(12))
    assert run_sync(spec, db).rows == {"ok": 2}


def _without_id(spec: JobSpec) -> JobSpec:
    doc = orjson.loads(spec.raw)
    doc["input"].pop("id", None)
    return load_spec(document=doc)
