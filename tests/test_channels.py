"""Channels: Vertex AI (OAuth2 from a real service-account key), a gateway's prices, model limits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from pipeline.catalog import Channel, channel_of
from pipeline.core.pricing import cost_usd
from pipeline.core.reply import Prompt, Shape
from pipeline.core.usage import Usage
from pipeline.errors import SpecError
from pipeline.pricing import resolve_prices
from pipeline.providers.gemini import GeminiProvider
from pipeline.simproc import SimProcess
from tests.support import (
    ROOT,
    ledger_usage,
    make_spec,
    read_ledger,
    run_cli,
    run_sync,
    sql,
    ticket_rows,
    write_jsonl,
)

COMET = "https://api.cometapi.com"


@pytest.mark.parametrize(
    ("api", "base_url", "channel"),
    [
        ("gemini", "https://generativelanguage.googleapis.com", Channel.GEMINI_API),
        ("openai", "https://generativelanguage.googleapis.com/v1beta/openai", Channel.GEMINI_API),
        ("gemini", "https://us-central1-aiplatform.googleapis.com", Channel.VERTEX),
        ("gemini", "https://aiplatform.googleapis.com", Channel.VERTEX),
        ("vertex", "http://127.0.0.1:8080", Channel.VERTEX),
        ("gemini", COMET, Channel.COMETAPI),
        ("openai", f"{COMET}/v1", Channel.COMETAPI),
        ("openai", "https://api.openai.com/v1", Channel.OPENAI),
        ("openai", "https://openrouter.ai/api/v1", Channel.GATEWAY),
        ("gemini", "http://127.0.0.1:8765", Channel.GEMINI_API),
        ("openai", "http://localhost:8765/v1", Channel.OPENAI),
    ],
)
def test_the_channel_comes_from_the_host_not_the_wire_format(
    api: str, base_url: str, channel: Channel
) -> None:
    assert channel_of(api, base_url) is channel


def spec_doc(model: str, provider: dict[str, object]) -> dict[str, object]:
    return {
        "name": "t",
        "task": "classify",
        "model": model,
        "input": {"path": "data/tickets.jsonl", "id": "id"},
        "provider": provider,
        "classify": {"labels": ["a", "b"]},
    }


def test_the_gateways_own_example_is_priced_at_the_gateways_price() -> None:
    from pipeline.spec import load_spec

    for model in (
        "gemini-3.1-flash-lite-preview",
        "gemini-3.1-flash-lite-preview-thinking",
        "gemini-3.1-flash-lite-thinking",
    ):
        spec = load_spec(document=spec_doc(model, {"api": "gemini", "base_url": COMET}))
        prices = resolve_prices(spec)
        assert (prices.input_per_m, prices.output_per_m) == (Decimal("0.20"), Decimal("1.20"))
        assert "CometAPI" in prices.source
    direct = load_spec(document=spec_doc("gemini-3.1-flash-lite-preview", {"api": "gemini"}))
    assert resolve_prices(direct).input_per_m == Decimal("0.25")
    # a gateway-only id is not a Google model id
    with pytest.raises(SpecError, match="no built-in price on the gemini channel"):
        resolve_prices(
            load_spec(document=spec_doc("gemini-3.1-flash-lite-thinking", {"api": "gemini"}))
        )


def test_an_unknown_gateway_falls_back_to_the_list_price_and_says_so() -> None:
    from pipeline.spec import load_spec

    doc = spec_doc("gpt-5.3-chat-latest", {"api": "openai", "base_url": "https://gw.example/v1"})
    prices = resolve_prices(load_spec(document=doc))
    assert prices.input_per_m == Decimal("1.75")
    assert "no gateway price in the table" in prices.source


def test_max_output_tokens_over_the_models_cap_is_a_job_file_error() -> None:
    from pipeline.spec import load_spec

    doc = spec_doc("gpt-5.3-chat-latest", {"api": "openai", "max_output_tokens": 20_000})
    with pytest.raises(SpecError, match=r"provider.max_output_tokens: 20000 .* at most 16,384"):
        load_spec(document=doc)
    doc = spec_doc("gpt-5.3-chat-latest", {"api": "openai", "max_output_tokens": 16_384})
    assert load_spec(document=doc).provider.max_output_tokens == 16_384


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ({"api": "vertex"}, "provider.project: missing"),
        ({"api": "vertex", "project": "p", "lane": "batch"}, 'use lane = "flex"'),
        ({"api": "vertex", "project": "p", "lane": "auto"}, "batch jobs read and write"),
        ({"api": "gemini", "project": "p"}, 'unless api = "vertex"'),
        ({"api": "gemini", "channel": "nowhere"}, "provider.channel"),
    ],
)
def test_vertex_settings_are_checked_before_anything_is_sent(
    provider: dict[str, object], message: str
) -> None:
    from pipeline.spec import load_spec

    with pytest.raises(SpecError, match=message) as err:
        load_spec(document=spec_doc("gemini-3.1-flash-lite-preview", provider))
    assert "\n" not in str(err.value)


def test_flex_goes_on_the_wire_as_the_sdk_sends_it() -> None:
    provider = GeminiProvider("http://x", "gemini-3.1-flash-lite-preview", "minimal", 0.0)
    shape = Shape("s", "system", {"type": "object"})
    body = orjson.loads(provider.encode(Prompt(shape, "hi", 16), "flex"))
    assert body["serviceTier"] == "flex" and "service_tier" not in body
    assert "serviceTier" not in orjson.loads(provider.encode(Prompt(shape, "hi", 16)))


@pytest.mark.parametrize("field", [{"serviceTier": "flex"}, {"service_tier": "FLEX"}])
def test_the_simulator_accepts_both_spellings_of_flex(
    field: dict[str, str], sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    import httpx

    sim = sim_factory()
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}], **field}
    resp = httpx.post(
        f"{sim.url}/v1beta/models/gemini-3.1-flash-lite-preview:generateContent",
        headers={"x-goog-api-key": sim.key},
        json=body,
    )
    assert resp.status_code == 200
    sim.stop()
    assert [e["lane"] for e in read_ledger(sim.ledger)] == ["flex"]


def vertex_spec(sim: SimProcess, src: Path, tmp_path: Path, **limits: int) -> object:
    creds = sim.service_account(tmp_path / "sa.json", "acme-1")
    provider = {
        "api": "vertex",
        "project": "acme-1",
        "location": "us-central1",
        "credentials_file": str(creds),
        "labels": {"team": "support"},
    }
    return make_spec(sim, src, api="vertex", extra={"provider": provider, "limits": limits})


def test_a_vertex_job_refreshes_its_token_and_labels_every_request(
    sim_factory: Callable[..., SimProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # google-auth refreshes 225 s before expiry: a 227 s token is stale after about 2 s
    sim = sim_factory("--token-seconds", "227")
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(150))
    spec = vertex_spec(sim, src, tmp_path, rpm=1800, concurrency=8)
    db = tmp_path / "s.duckdb"
    caplog.set_level(logging.DEBUG)
    summary = run_sync(spec, db)  # type: ignore[arg-type]
    sim.stop()

    assert summary.rows == {"ok": 150}
    ledger = read_ledger(sim.ledger)
    assert len(ledger) == 150
    assert all(e["channel"] == "vertex" for e in ledger)
    assert all(
        e["labels"] == {"flashpipe-job": "t", "flashpipe-run": "1", "team": "support"}
        for e in ledger
    )
    assert len({e["token"] for e in ledger}) >= 2, "the token was refreshed during the run"
    usage = ledger_usage(sim.ledger)
    billed = Usage(usage["input"], usage["cached"], usage["output"], usage["thinking"])
    stored = Decimal(sql(db, "SELECT sum(cost_usd) FROM calls")[0][0])
    assert stored == cost_usd(billed, resolve_prices(spec))  # type: ignore[arg-type]
    # no bearer token anywhere the user or a log could see it
    assert "ya29." not in caplog.text
    for f in tmp_path.iterdir():
        if f.is_file():
            assert b"ya29." not in f.read_bytes(), f.name
    dumped = sql(db, "SELECT * FROM calls")
    assert "ya29." not in repr(dumped)


def test_a_refused_token_stops_the_job_with_rows_pending(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    from pipeline.errors import ProviderStop
    from pipeline.simproc import write_service_account

    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(20))
    spec = vertex_spec(sim, src, tmp_path)
    # the same project, but a key file whose token endpoint answers 404
    creds = write_service_account(tmp_path / "sa.json", f"{sim.url}/nowhere", "acme-1")
    assert creds.exists()
    db = tmp_path / "s.duckdb"
    with pytest.raises(ProviderStop, match="Vertex AI credentials: no access token") as err:
        run_sync(spec, db)  # type: ignore[arg-type]
    assert "ya29." not in str(err.value)
    assert sql(db, "SELECT count(*) FROM results")[0][0] == 0


def test_the_sdks_vertex_client_works_against_the_simulator(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    from google import genai
    from google.genai import types
    from google.oauth2 import service_account

    sim = sim_factory()
    key = sim.service_account(tmp_path / "sa.json", "acme-1")
    creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        str(key), scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    client = genai.Client(
        vertexai=True,
        project="acme-1",
        location="us-central1",
        credentials=creds,
        http_options=types.HttpOptions(base_url=sim.url),
    )
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["bug", "x"]}}}
    resp = client.models.generate_content(
        model="gemini-3.1-flash-lite-preview",
        contents="classify: app crashes",
        config=types.GenerateContentConfig(
            response_mime_type="application/json",
            response_json_schema=schema,
            labels={"job": "tickets"},
        ),
    )
    assert orjson.loads(resp.text or "{}")["label"] in ("bug", "x")
    sim.stop()
    (entry,) = read_ledger(sim.ledger)
    assert entry["path"].startswith("/v1beta1/projects/acme-1/locations/us-central1/publishers/")
    assert entry["labels"] == {"job": "tickets"}


def test_a_row_over_the_models_context_is_invalid_and_never_sent(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory()
    rows = ticket_rows(3)
    rows[1]["text"] = "word " * 160_000  # about 200k tokens: over GPT-5.3's 128,000
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    spec = make_spec(sim, src, api="openai", overrides=['model="gpt-5.3-chat-latest"'])
    db = tmp_path / "s.duckdb"
    summary = run_sync(spec, db)
    sim.stop()
    assert summary.rows == {"ok": 2, "invalid": 1}
    ((status, error),) = sql(db, "SELECT status, error FROM results WHERE row_id = 'T-00001'")
    assert status == "invalid" and "128,000-token context" in error and "gpt-5.3" in error
    assert ledger_usage(sim.ledger)["requests"] == 2


def test_run_sim_prices_a_gateway_job_as_the_gateway(tmp_path: Path) -> None:
    job = tmp_path / "comet.toml"
    job.write_text(
        'name = "comet"\ntask = "classify"\nmodel = "gemini-3.1-flash-lite-preview-thinking"\n'
        f'[input]\npath = "{ROOT / "data" / "tickets.jsonl"}"\nid = "id"\n'
        f'[provider]\napi = "gemini"\nbase_url = "{COMET}"\napi_key_env = "COMETAPI_KEY"\n'
        '[classify]\nlabels = ["billing", "bug", "account", "feature_request", "other"]\n'
    )
    db = tmp_path / "s.duckdb"
    run = run_cli("run", str(job), "--sim", "--db", str(db), "--quiet")
    assert run.returncode == 0, run.stderr
    cost = run_cli("cost", "comet", "--json", "--db", str(db))
    assert cost.returncode == 0, cost.stderr
    (entry,) = orjson.loads(cost.stdout)["jobs"]
    assert (
        entry["prices_per_m"]["input"] == "0.20" and "CometAPI" in entry["prices_per_m"]["source"]
    )
    tokens = entry["tokens"]
    expected = (
        Decimal(tokens["input"]) * Decimal("0.20")
        + Decimal(tokens["cached"]) * Decimal("0.02")
        + (Decimal(tokens["output"]) + Decimal(tokens["thinking"])) * Decimal("1.20")
    ) / 1_000_000
    assert Decimal(entry["usd"]["total"]) == expected.quantize(Decimal(entry["usd"]["total"]))


def test_run_sim_runs_a_vertex_job_through_a_throwaway_service_account(tmp_path: Path) -> None:
    job = tmp_path / "vertex.toml"
    job.write_text(
        'name = "vx"\ntask = "classify"\n'
        f'[input]\npath = "{ROOT / "data" / "tickets.jsonl"}"\nid = "id"\n'
        '[provider]\napi = "vertex"\nproject = "acme-1"\nlocation = "europe-west4"\n'
        '[classify]\nlabels = ["billing", "bug", "account", "feature_request", "other"]\n'
    )
    db = tmp_path / "s.duckdb"
    run = run_cli("run", str(job), "--sim", "--db", str(db))
    assert run.returncode == 0, run.stderr
    assert "ya29." not in run.stdout + run.stderr
    assert sql(db, "SELECT count(*) FROM results WHERE status = 'ok'")[0][0] == 300


def test_vertex_429s_without_a_retry_delay_are_waited_out_not_failed(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory()
    rows = ticket_rows(6)
    rows[2]["text"] += " [[sim:429*2]]"  # Vertex's RESOURCE_EXHAUSTED twice, then an answer
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    db = tmp_path / "s.duckdb"
    summary = run_sync(vertex_spec(sim, src, tmp_path), db)  # type: ignore[arg-type]
    sim.stop()
    assert summary.rows == {"ok": 6}
    ((attempts,),) = sql(db, "SELECT attempts FROM results WHERE row_id = 'T-00002'")
    outcomes = sql(db, "SELECT outcome, http_status FROM calls ORDER BY started_at")
    assert outcomes.count(("rate_limited", 429)) == 2 and attempts == 3  # 3 calls, 1 answer


def test_a_gateway_job_costs_what_the_ledger_says_at_the_gateways_price(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(100))
    spec = make_spec(
        sim,
        src,
        overrides=['model="gemini-3.1-flash-lite-preview-thinking"', 'provider.channel="cometapi"'],
    )
    db = tmp_path / "s.duckdb"
    assert run_sync(spec, db).rows == {"ok": 100}
    sim.stop()
    usage = ledger_usage(sim.ledger)
    billed = (
        Decimal(usage["input"]) * Decimal("0.20")
        + Decimal(usage["cached"]) * Decimal("0.02")
        + Decimal(usage["output"] + usage["thinking"]) * Decimal("1.20")
    ) / 1_000_000
    assert Decimal(sql(db, "SELECT sum(cost_usd) FROM calls")[0][0]) == billed
