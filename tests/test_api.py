"""The Python API: Job and the one-call helpers, against the real simulator and a real store."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import pipeline
from pipeline import Cost, Estimate, Job, Status, classify, extract, moderate, translate
from pipeline.errors import SpecError, UsageError
from pipeline.simproc import SimProcess
from tests.support import ROOT, make_spec, read_ledger, ticket_rows, write_jsonl

LABELS = ["billing", "bug", "account", "feature_request", "other"]


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "sim-key")  # the simulator's key, from the environment


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_readme_notebook_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)

    table = scope["table"]
    assert isinstance(table, pa.Table) and table.num_rows == 2
    assert table.schema.field("stars").type == pa.float64()
    assert table.column("label").to_pylist() == ["billing", "bug"]
    cost = scope["job"].cost()
    assert isinstance(cost, Cost) and cost.usd > 0 and cost.requests == 2
    printed = capsys.readouterr()
    assert "'label': 'billing', 'stars': 1.0" in printed.out
    assert "\x1b" not in printed.err  # no TTY: plain progress lines, no escape codes
    assert "tickets: rows 2/2" in printed.err
    assert (tmp_path / "tickets.duckdb").exists()


def test_calling_the_same_helper_twice_sends_nothing_the_second_time(
    sim: SimProcess, tmp_path: Path, key: None
) -> None:
    rows = [{"text": r["text"], "n": i} for i, r in enumerate(ticket_rows(25))]
    db = tmp_path / "t.duckdb"
    provider = {"base_url": sim.base_url("gemini")}
    first = classify(rows, labels=LABELS, name="tickets", db=db, provider=provider, progress=False)
    again = classify(rows, labels=LABELS, name="tickets", db=db, provider=provider, progress=False)
    sim.stop()

    assert len(read_ledger(sim.ledger)) == 25
    assert first.status().by_status == {"ok": 25}
    status = again.status()
    assert isinstance(status, Status)
    assert status.state == "done" and status.runs == 2 and status.requests == 25
    table = again.results()
    assert table.column("n").to_pylist() == list(range(25))  # input order, typed int64
    assert table.schema.field("n").type == pa.int64()


def test_run_async_works_inside_a_running_event_loop(
    sim: SimProcess, tmp_path: Path, key: None
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(30))
    spec = make_spec(sim, src)
    db = tmp_path / "t.duckdb"

    async def notebook_cell() -> tuple[Any, Any]:
        job = Job(spec, db=db)
        summary = await job.run_async(progress=False)
        # a blocking call from the same running loop (what a notebook user types) works too
        more = classify(
            [{"text": "refund my invoice"}],
            labels=LABELS,
            name="one",
            db=db,
            provider={"base_url": sim.base_url("gemini")},
            progress=False,
        )
        return summary, more

    summary, more = asyncio.run(notebook_cell())
    assert summary.state == "done" and summary.rows == {"ok": 30}
    assert more.results().column("label").to_pylist() == ["billing"]


def test_job_from_file_estimates_runs_and_retries_with_typed_values(
    sim: SimProcess, tmp_path: Path, key: None
) -> None:
    rows = ticket_rows(20)
    rows[3]["text"] += " [[sim:400*1]]"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        f'name = "tickets"\ntask = "classify"\n[input]\npath = "{src.name}"\nid = "id"\n'
        'keep = ["lang"]\n[classify]\nlabels = ["billing", "bug", "other"]\n'
    )
    job = Job.from_file(
        job_file,
        db=tmp_path / "t.duckdb",
        overrides={"provider": {"base_url": sim.base_url("gemini")}, "limits.rpm": 0},
    )
    assert job.spec.limits.rpm == 0 and job.spec.input.path == str(src)

    est = job.estimate()
    assert isinstance(est, Estimate) and est.rows == 20 and est.requests == 20 and est.usd > 0
    summary = job.run(progress=False)
    assert summary.rows == {"ok": 19, "failed": 1}
    failed = job.results(status="failed")
    assert failed.column("row_id").to_pylist() == ["T-00003"]
    assert job.results().num_rows == 20

    assert job.retry(status="failed") == 1
    assert job.run(progress=False).rows == {"ok": 1}
    assert job.status().by_status == {"ok": 20}
    cost = job.cost()
    assert cost.requests == 21 and cost.rows == 20
    assert cost.usd == sum(cost.by_lane.values()) and cost.tokens.input > 0
    by_label = job.relation().aggregate("label, count(*) AS n").order("label").fetchall()
    assert sum(n for _, n in by_label) == 20
    reopened = Job.open("tickets", db=tmp_path / "t.duckdb")
    assert reopened.spec.classify == job.spec.classify and reopened.cost() == cost


def test_helpers_take_arrow_pandas_and_readers(sim: SimProcess, tmp_path: Path, key: None) -> None:
    import pandas as pd

    provider = {"base_url": sim.base_url("gemini")}
    db = tmp_path / "t.duckdb"
    df = pd.DataFrame(
        {
            "id": ["a", "b"],
            "text": ["Hello world", "Good morning"],
            "when": pd.to_datetime(["2026-01-01 10:00", "2026-02-01 11:30"]),
        }
    )
    t = translate(df, "de", id="id", db=db, provider=provider, progress=False)
    table = t.results()
    assert table.column("row_id").to_pylist() == ["a", "b"]
    assert pa.types.is_timestamp(table.schema.field("when").type)

    reader = pa.Table.from_pylist([{"text": "you are awful"}, {"text": "nice day"}]).to_reader()
    m = moderate(reader, db=db, provider=provider, progress=False)
    assert m.status().rows == 2

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    e = extract(
        [{"text": "I live in Berlin"}],
        "Where does the writer live? {text}",
        schema,
        db=db,
        provider=provider,
        progress=False,
    )
    assert e.results().num_rows == 1 and e.status().by_status == {"ok": 1}


def test_bad_data_and_a_missing_text_column_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not something flashpipe reads"):
        classify(42, labels=LABELS, db=tmp_path / "t.duckdb")
    with pytest.raises(SpecError, match="column 'text' is not in the data"):
        classify([{"body": "x"}], labels=LABELS, db=tmp_path / "t.duckdb")


def test_the_public_api_is_exported() -> None:
    for name in ("Job", "classify", "translate", "moderate", "extract", "Status", "Cost"):
        assert name in pipeline.__all__
    assert Decimal  # the typed values carry Decimals


def test_status_while_run_async_holds_the_store_comes_from_the_live_snapshot(
    sim_factory: Callable[..., SimProcess], tmp_path: Path, key: None
) -> None:
    sim = sim_factory("--latency-ms", "400")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(40))
    job = Job(make_spec(sim, src, overrides=["limits.concurrency=4"]), db=tmp_path / "t.duckdb")

    async def notebook_cell() -> tuple[Status, Any]:
        running = asyncio.ensure_future(job.run_async(progress=False))
        while not Path(job.db + ".status.json").exists():
            await asyncio.sleep(0.1)
        live = job.status()
        return live, await running

    live, summary = asyncio.run(notebook_cell())
    assert live.state == "running" and live.rows < 40
    assert summary.rows == {"ok": 40}
    assert job.status().state == "done"
