"""The half-price lanes: Flex and the Batch API, with the same store, resume and cost."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import types

from pipeline.core.pricing import MILLION, lane_prices
from pipeline.pricing import PRICE_TABLE
from pipeline.simproc import SimProcess
from tests.support import (
    env,
    job_file,
    ledger_of,
    ledger_usage,
    make_spec,
    read_ledger,
    run_cli,
    run_sync,
    sql,
    start_run,
    store_usage,
    ticket_rows,
    write_jsonl,
)

STANDARD = PRICE_TABLE[("gemini-3.1-flash-lite-preview", "gemini")]
FAST_BATCH = {"poll_seconds": 0.1, "max_poll_seconds": 0.5, "collect_seconds": 0.2}


def usd_of(tokens: dict[str, int], lane: str) -> Decimal:
    p = lane_prices(STANDARD, lane)
    return (
        tokens["input"] * p.input_per_m
        + tokens["cached"] * p.cached_per_m
        + (tokens["output"] + tokens["thinking"]) * p.output_per_m
    ) / MILLION


def http_requests(ledger: Path | None) -> int:
    return sum(1 for e in read_ledger(ledger) if e.get("http", True))


def batch_job(tmp: Path, sim: SimProcess, src: Path, extra: str = "") -> Path:
    return job_file(
        tmp,
        sim,
        src,
        extra=f"""
[batch]
poll_seconds = 0.1
max_poll_seconds = 0.5
collect_seconds = 0.2
{extra}
""",
    )


def with_lane(job: Path, lane: str) -> Path:
    text = job.read_text().replace("[provider]\n", f'[provider]\nlane = "{lane}"\n', 1)
    job.write_text(text)
    return job


def test_batch_lane_20k_rows_at_half_price_in_few_requests(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--batch-seconds", "0.5")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(20_000))
    job = with_lane(batch_job(tmp_path, sim, src), "batch")
    db = tmp_path / "s.duckdb"
    done = run_cli("run", str(job), "--db", str(db), "--quiet", env=env())
    assert done.returncode == 0, done.stderr
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(20_000, 20_000)]
    assert sql(db, "SELECT DISTINCT status FROM results") == [("ok",)]

    sim.stop()  # the ledger is complete once the simulator has stopped
    ledger = ledger_usage(sim.ledger)
    assert ledger["billed"] == 20_000  # one billed answer per row, nothing paid twice
    report = json.loads(run_cli("cost", "--json", "--db", str(db)).stdout)["jobs"][0]
    assert {k: report["tokens"][k] for k in ("input", "cached", "output", "thinking")} == {
        k: ledger[k] for k in ("input", "cached", "output", "thinking")
    }
    exact = Decimal(report["usd_exact"])
    assert exact == usd_of(ledger, "batch")
    assert exact * 2 == usd_of(ledger, "standard")  # half the standard price, same tokens
    assert set(report["lanes"]) == {"batch"} and report["lanes"]["batch"]["rows"] == 20_000
    # two batches of 10,000 rows, each uploaded as a file: a handful of HTTP requests
    requests = http_requests(sim.ledger)
    assert requests < 10 * 20, requests
    assert sql(db, "SELECT count(*), bool_and(closed) FROM batches") == [(2, True)]
    assert sql(db, "SELECT count(*) FROM batch_rows") == [(0,)]


def test_flex_lane_survives_20_percent_shedding_and_bills_no_refusal(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--flex-shed", "0.2")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(300))
    job = with_lane(job_file(tmp_path, sim, src), "flex")
    db = tmp_path / "s.duckdb"
    done = run_cli("run", str(job), "--db", str(db), "--quiet", env=env())
    assert done.returncode == 0, done.stderr
    assert sql(db, "SELECT status, count(*) FROM results GROUP BY 1") == [("ok", 300)]

    sim.stop()
    entries = read_ledger(sim.ledger)
    shed = [e for e in entries if e["fault"] == "flex_shed"]
    assert len(shed) > 20 and not any(e["billed"] for e in shed)
    assert {e["lane"] for e in entries} == {"flex"}  # every request asked for the Flex tier
    ledger = ledger_usage(sim.ledger)
    report = json.loads(run_cli("cost", "--json", "--db", str(db)).stdout)["jobs"][0]
    flex = report["lanes"]["flex"]
    assert flex["shed"] == {"calls": len(shed), "usd": "0.000000"}
    assert flex["prices_per_m"]["input"] == str(STANDARD.input_per_m / 2)
    assert Decimal(report["usd_exact"]) == usd_of(ledger, "flex")
    # a refusal is not an attempt: every row was answered by its first billed call
    assert sql(db, "SELECT max(attempts) FROM results") == [(1,)]


def test_auto_lane_moves_rows_flex_keeps_refusing_to_batch(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--flex-shed", "0.5", "--batch-seconds", "0.3")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(200))
    spec = make_spec(
        sim,
        src,
        extra={"provider": {"lane": "auto"}, "batch": {**FAST_BATCH, "flex_sheds": 2}},
    )
    db = tmp_path / "s.duckdb"
    run_sync(spec, db)
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results WHERE status = 'ok'") == [
        (200, 200)
    ]
    lanes = dict(sql(db, "SELECT lane, count(*) FROM calls WHERE outcome = 'ok' GROUP BY 1"))
    assert lanes["flex"] > 0 and lanes["batch"] > 0 and lanes["flex"] + lanes["batch"] == 200
    sim.stop()
    ledger = ledger_usage(sim.ledger)
    assert store_usage(db, "t")["input"] == ledger["input"]

    # with the deadline closer than a batch takes, the rows go to Standard instead
    sim2 = sim_factory("--flex-shed", "0.5")
    spec2 = make_spec(
        sim2,
        src,
        name="t2",
        extra={
            "provider": {"lane": "auto", "deadline": "2h"},
            "batch": {"flex_sheds": 2},
            "cache": False,  # the same rows again: sent, not taken from the first job's answers
        },
    )
    run_sync(spec2, db)
    lanes2 = dict(
        sql(db, "SELECT lane, count(*) FROM calls WHERE job = 't2' AND outcome = 'ok' GROUP BY 1")
    )
    assert "batch" not in lanes2 and lanes2["standard"] > 0


def test_openai_batch_lane_files_and_custom_ids(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--batch-seconds", "0.3")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(500))
    spec = make_spec(
        sim,
        src,
        api="openai",
        extra={"provider": {"lane": "batch"}, "batch": {**FAST_BATCH, "rows_per_batch": 200}},
    )
    db = tmp_path / "s.duckdb"
    run_sync(spec, db)
    assert sql(db, "SELECT count(*) FROM results WHERE status = 'ok'") == [(500,)]
    sim.stop()
    ledger = ledger_usage(sim.ledger)
    assert ledger["billed"] == 500
    assert store_usage(db, "t")["output"] == ledger["output"]
    assert sql(db, "SELECT count(*) FROM batches WHERE provider_name LIKE 'batch_%'") == [(3,)]


def test_an_expired_batch_and_invalid_answers_are_the_only_rows_sent_again(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory(
        "--batch-seconds", "0.3", "--batch-fault", "expire", "--batch-fault", "invalid=0.03"
    )
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(1000))
    spec = make_spec(
        sim,
        src,
        extra={
            "provider": {"lane": "batch"},
            "batch": {**FAST_BATCH, "rows_per_batch": 400, "max_open": 1},
        },
    )
    db = tmp_path / "s.duckdb"
    run_sync(spec, db)
    assert sql(db, "SELECT status, count(*) FROM results GROUP BY 1") == [("ok", 1000)]

    batches = sql(
        db, "SELECT batch_id, state, rows, ok_rows, retry_rows FROM batches ORDER BY created_at"
    )
    first, second = batches[0], batches[1]
    assert first[1] == "expired" and first[3] == 0 and first[4] == 400
    assert second[1] == "succeeded" and second[4] == 12  # 3 % of 400 broke the schema
    sim.stop()
    # every row went out once; the only rows sent again: the expired batch's 400 and the 12
    assert sum(b[2] for b in batches) == 1000 + 400 + 12
    assert sum(b[4] for b in batches) == 400 + 12
    invalid = sql(
        db,
        "SELECT count(DISTINCT r) FROM (SELECT unnest(row_ids) AS r FROM calls"
        " WHERE call_id LIKE ? AND outcome = 'invalid_output')",
        second[0] + ":%",
    )
    assert invalid == [(12,)]
    billed = Counter(e["text_hash"] for e in read_ledger(sim.ledger) if e["billed"])
    assert sum(billed.values()) == 1000 + 12  # the expired batch was never billed
    assert sorted(Counter(billed.values()).items()) == [(1, 988), (2, 12)]


def _wait_in_ledger(ledger: Path, needle: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger.exists() and any(needle in e.get("path", "") for e in read_ledger(ledger)):
            return
        time.sleep(0.05)
    raise AssertionError(f"never saw {needle!r} in the simulator's ledger")


def _creates(ledger: Path) -> int:
    return sum(
        1 for e in read_ledger(ledger) if e.get("path", "").endswith(":batchGenerateContent")
    )


@pytest.mark.parametrize("moment", ["before_the_answer", "while_batches_run"])
def test_sigkill_never_submits_a_batch_twice(
    sim_factory: Callable[..., SimProcess], tmp_path: Path, moment: str
) -> None:
    delay = "4" if moment == "before_the_answer" else "0"
    sim = sim_factory("--batch-seconds", "2", "--batch-create-delay", delay)
    ledger = ledger_of(sim)
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(600))
    job = with_lane(batch_job(tmp_path, sim, src, "rows_per_batch = 300"), "batch")
    db = tmp_path / "s.duckdb"
    proc = start_run(job, db, "--quiet")
    # the create of the first batch reached the provider (its answer is held back 4 s), or
    # the batches were created and are being polled
    _wait_in_ledger(ledger, ":batchGenerateContent" if delay != "0" else "/v1beta/batches/")
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert sql(db, "SELECT count(*) FROM batches") != [(0,)]  # stored before submitting

    rerun = run_cli("run", str(job), "--db", str(db), "--quiet", env=env())
    assert rerun.returncode == 0, rerun.stderr
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results WHERE status = 'ok'") == [
        (600, 600)
    ]
    batches = sql(db, "SELECT count(*) FROM batches")[0][0]
    sim.stop()
    assert _creates(ledger) == batches == 2  # each batch was created exactly once
    assert ledger_usage(ledger)["billed"] == 600  # and no row was paid twice
    assert sql(db, "SELECT sum(cost_usd) FROM calls") == sql(
        db, "SELECT sum(cost_usd) FROM results"
    )


def test_status_shows_batches_and_lanes(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--batch-seconds", "0.2")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(50))
    job = with_lane(batch_job(tmp_path, sim, src), "batch")
    db = tmp_path / "s.duckdb"
    assert run_cli("run", str(job), "--db", str(db), "--quiet", env=env()).returncode == 0
    out = run_cli("status", "--db", str(db)).stdout
    assert "lanes: batch 50 rows" in out and "succeeded, 50 rows, 50 ok" in out
    cost = run_cli("cost", "--db", str(db)).stdout
    assert "batch lane: $" in cost
    est = json.loads(run_cli("estimate", str(job), "--json").stdout)
    by_lane = {k: Decimal(v) for k, v in est["usd_by_lane"].items()}
    assert by_lane["flex"] == by_lane["batch"] and abs(
        by_lane["standard"] - 2 * by_lane["batch"]
    ) <= Decimal("0.000001")


def test_google_genai_batch_and_file_calls_work_against_the_simulator(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory("--batch-seconds", "0.2")
    client = genai.Client(api_key="sim-key", http_options=types.HttpOptions(base_url=sim.url))
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["billing", "bug", "other"]}},
        "required": ["label"],
    }
    lines = [
        {
            "key": f"row-{i}",
            "request": {
                "contents": [{"parts": [{"text": f"Classify: {t}"}], "role": "user"}],
                "generationConfig": {
                    "responseMimeType": "application/json",
                    "responseJsonSchema": schema,
                },
            },
        }
        for i, t in enumerate(["please refund my invoice", "the app crashes"])
    ]
    path = tmp_path / "batch-input.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = client.files.upload(
        file=str(path), config=types.UploadFileConfig(display_name="batch-input", mime_type="jsonl")
    )
    assert uploaded.name and uploaded.name.startswith("files/")
    assert client.files.get(name=uploaded.name).size_bytes == path.stat().st_size

    job = client.batches.create(
        model="gemini-3.1-flash-lite-preview", src=uploaded.name, config={"display_name": "file"}
    )
    assert job.state == types.JobState.JOB_STATE_PENDING
    job = _until_done(client, job)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.dest is not None
    assert job.dest.file_name is not None
    out = [json.loads(x) for x in client.files.download(file=job.dest.file_name).splitlines()]
    assert [o["key"] for o in out] == ["row-0", "row-1"]
    assert json.loads(out[0]["response"]["candidates"][0]["content"]["parts"][0]["text"]) == {
        "label": "billing"
    }

    inline = client.batches.create(
        model="gemini-3.1-flash-lite-preview",
        src=[{"contents": [{"parts": [{"text": "Say hello"}], "role": "user"}]}],
        config={"display_name": "inline"},
    )
    inline = _until_done(client, inline)
    assert inline.dest is not None and inline.dest.inlined_responses
    first = inline.dest.inlined_responses[0].response
    assert first is not None and first.text
    names = {b.display_name for b in client.batches.list(config={"page_size": 1})}
    assert names == {"file", "inline"}
    client.batches.delete(name=inline.name or "")


def _until_done(client: genai.Client, job: Any) -> Any:
    deadline = time.monotonic() + 10
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.batches.get(name=job.name)
    return job


def test_the_budget_reserves_a_whole_batch_before_submitting_it(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    from pipeline.errors import BudgetExhausted

    sim = sim_factory("--batch-seconds", "0.2")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(400))
    lanes = {"provider": {"lane": "batch"}, "batch": {**FAST_BATCH, "rows_per_batch": 400}}
    db = tmp_path / "s.duckdb"
    # a 400-row batch may cost up to ~$0.16 (every answer at max_output_tokens): too much
    tight = make_spec(sim, src, extra={**lanes, "budget": {"max_usd": 0.05}})
    with pytest.raises(BudgetExhausted):
        run_sync(tight, db)
    assert sql(db, "SELECT count(*) FROM batches") == [(0,)]  # nothing was submitted
    roomy = make_spec(sim, src, extra={**lanes, "budget": {"max_usd": 1}})
    run_sync(roomy, db)
    assert sql(db, "SELECT count(*) FROM results WHERE status = 'ok'") == [(400,)]
    spent = sql(db, "SELECT sum(cost_usd) FROM calls")[0][0]
    assert 0 < spent < Decimal("0.05")  # the real bill is far below the worst case


class RecordedTransport:
    """Answers every request with the next recorded body (a stand-in for the network)."""

    def __init__(self, bodies: list[Any]):
        self.bodies = list(bodies)
        self.sent: list[tuple[str, str]] = []

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> Any:
        from pipeline.transport import HttpResponse

        self.sent.append((method, url))
        return HttpResponse(200, {}, json.dumps(self.bodies.pop(0)).encode())


def test_the_recorded_gemini_batch_lifecycle_parses() -> None:
    import anyio

    from pipeline.core.reply import ReplyKind
    from pipeline.lanes.api import PENDING, RUNNING, SUCCEEDED
    from pipeline.lanes.gemini_batch import GeminiBatchApi, _reply
    from tests.support import REFERENCE

    rec = json.loads(
        (REFERENCE / "gemini-recorded/batch.lifecycle.inline.gemini-2.5-flash.json").read_text()
    )
    bodies = [step["body"] for step in rec["sequence"]]
    transport = RecordedTransport(bodies)
    api = GeminiBatchApi(transport, "https://g.test", "gemini-2.5-flash", "k")  # type: ignore[arg-type]

    async def go() -> list[Any]:
        states = [await api.get(bodies[0]["name"]) for _ in bodies]
        return [states, await api.results(states[-1])]

    states, answers = anyio.run(go)
    assert [s.state for s in states] == [PENDING, RUNNING, SUCCEEDED]
    assert transport.sent[0] == ("GET", "https://g.test/v1beta/" + bodies[0]["name"])
    assert sorted(answers) == ["req_1", "req_2", "req_3"]
    first = answers["req_1"]
    assert first.kind is ReplyKind.OK and first.usage.input == 5
    assert (first.usage.output, first.usage.thinking) == (1373, 1582)

    lines = json.loads(
        (REFERENCE / "gemini-recorded/batch.output.responses-file.lines.json").read_text()
    )
    ok, bad = (_reply(line) for line in lines["output_lines"])
    assert ok.kind is ReplyKind.OK and ok.text == '{"label":"billing"}'
    assert bad.kind is ReplyKind.ERROR and bad.http_status == 400


def test_the_simulators_batch_bodies_have_the_recorded_shape(sim: SimProcess) -> None:
    import urllib.request

    from tests.support import REFERENCE

    rec = json.loads((REFERENCE / "gemini-recorded/batch.create.200.file-input.json").read_text())
    request = {
        "batch": {
            "displayName": "shape",
            "inputConfig": {
                "requests": {
                    "requests": [
                        {
                            "request": {"contents": [{"parts": [{"text": "hi"}]}]},
                            "metadata": {"key": "a"},
                        }
                    ]
                }
            },
        }
    }
    req = urllib.request.Request(
        sim.url + "/v1beta/models/gemini-3.1-flash-lite-preview:batchGenerateContent",
        data=json.dumps(request).encode(),
        headers={"x-goog-api-key": "sim-key", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        body = json.loads(resp.read())
    want = rec["body"]
    assert set(body) == set(want)
    assert set(body["metadata"]) == set(want["metadata"]) - {"inputConfig"}
    assert body["metadata"]["@type"] == want["metadata"]["@type"]
    assert body["metadata"]["state"] == "BATCH_STATE_PENDING"
    assert body["metadata"]["batchStats"] == {"requestCount": "1", "pendingRequestCount": "1"}
