"""Gemini explicit context caching: the instructions cached once per run, priced to the ledger."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.pricing import MILLION, Prices, context_cache_cost, cost_usd
from pipeline.core.usage import Usage
from pipeline.errors import SpecError
from pipeline.pricing import resolve_prices
from pipeline.reports import cost_report
from pipeline.simproc import SimProcess
from pipeline.spec import JobSpec
from pipeline.store import Store
from tests.support import ledger_of, make_spec, read_ledger, run_sync, sql, ticket_rows, write_jsonl

# five labels described at length, with examples: about 6,000 tokens of instructions
EXAMPLE = "Example: a customer writes that the invoice for order 4411 shows a second charge. "
LABELS = [
    {"name": name, "description": f"{name} questions. " + EXAMPLE * 58}
    for name in ("billing", "bug", "account", "feature_request", "other")
]
# the simulator's implicit cache then never hits: the saving is the explicit cache's alone
NO_IMPLICIT = ("--cache-min-tokens", "100000000")


def long_job(sim: SimProcess, src: Path, name: str, context_cache: object) -> JobSpec:
    return make_spec(
        sim,
        src,
        name=name,
        extra={"classify": {"labels": LABELS}, "provider": {"context_cache": context_cache}},
    )


def ledger_usd(ledger: Path, prices: Prices) -> Decimal:
    """What the simulator billed: every billed request's tokens, and the caches' storage."""
    total = Decimal(0)
    for e in read_ledger(ledger):
        if e["billed"]:
            u = e["usage"]
            total += cost_usd(
                Usage(u["prompt"] - u["cached"], u["cached"], u["output"], u["thinking"]), prices
            )
        if "storage" in e:
            hours = Decimal(e["storage"]["tokens"]) * Decimal(str(e["storage"]["seconds"]))
            total += hours / 3600 * prices.storage_per_m_hour / MILLION
    return total


def job_cost(db: Path, job: str) -> Decimal:
    store = Store(str(db))
    try:
        return Decimal(cost_report(store, job)["jobs"][0]["usd_exact"])
    finally:
        store.close()


def test_a_6000_token_instruction_costs_less_with_a_context_cache_and_cost_equals_the_ledger(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(150))
    usd: dict[bool, Decimal] = {}
    for cached in (False, True):
        sim = sim_factory(*NO_IMPLICIT)
        spec = long_job(sim, src, f"long-{cached}", cached)
        db = tmp_path / f"{cached}.duckdb"
        summary = run_sync(spec, db)
        sim.stop()
        assert summary.rows == {"ok": 150}
        usd[cached] = job_cost(db, spec.name)
        billed = ledger_usd(ledger_of(sim), resolve_prices(spec))
        # storage seconds are measured on each side of the wire: equal to the microdollar
        assert abs(usd[cached] - billed) < Decimal("0.000001"), (usd[cached], billed)
    assert usd[True] < usd[False] / 3, usd


def test_every_request_names_the_cache_and_the_cache_is_deleted_at_the_end(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(40))
    sim = sim_factory(*NO_IMPLICIT)
    spec = long_job(sim, src, "named", True)
    db = tmp_path / "s.duckdb"
    run_sync(spec, db)
    sim.stop()

    entries = read_ledger(ledger_of(sim))
    created = [e for e in entries if e.get("cache") and e["usage"]["prompt"]]
    ended = [e for e in entries if "storage" in e]
    assert len(created) == 1 and len(ended) == 1
    assert ended[0]["http"] and ended[0]["path"].startswith("/v1beta/cachedContents/")
    tokens = created[0]["usage"]["prompt"]
    assert tokens >= 4096
    calls = [e for e in entries if e["path"].endswith(":generateContent")]
    assert len(calls) == 40 and all(e["usage"]["cached"] == tokens for e in calls)
    stored = sql(
        db,
        "SELECT sum(cached_tokens), count(*) FILTER (WHERE outcome = 'context_cache'),"
        " sum(input_tokens) FILTER (WHERE outcome = 'context_cache') FROM calls",
    )[0]
    assert stored == (40 * tokens, 1, tokens)
    prices = resolve_prices(spec)
    cache_call = sql(db, "SELECT cost_usd, latency_ms FROM calls WHERE outcome = 'context_cache'")
    cost, ms = cache_call[0]
    assert cost == context_cache_cost(tokens, ms / 1000, prices).quantize(Decimal("1e-12"))
    store = Store(str(db), read_only=True)
    try:
        by_outcome = cost_report(store, spec.name)["jobs"][0]["usd"]["by_outcome"]
    finally:
        store.close()
    # the cache's bill is a cost of its own, not money thrown away
    assert Decimal(by_outcome["context_cache"]) == cost.quantize(Decimal("1e-6"))
    assert Decimal(by_outcome["thrown_away"]) == 0


def test_auto_caches_only_an_instruction_the_model_can_cache(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(10))
    sim = sim_factory()
    short = make_spec(sim, src, name="short", extra={"provider": {"context_cache": "auto"}})
    run_sync(short, tmp_path / "a.duckdb")
    long = long_job(sim, src, "long", "auto")
    run_sync(long, tmp_path / "b.duckdb")
    sim.stop()
    caches = {e["cache"] for e in read_ledger(ledger_of(sim)) if e.get("cache")}
    assert len(caches) == 1  # the long job's, not the short one's


def test_a_cache_the_provider_refuses_stops_the_run_before_any_request(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    from pipeline.errors import ProviderStop

    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(10))
    sim = sim_factory()
    spec = make_spec(sim, src, extra={"provider": {"context_cache": True}})  # a short instruction
    with pytest.raises(ProviderStop, match="Cached content is too small"):
        run_sync(spec, tmp_path / "s.duckdb")
    sim.stop()
    assert not [e for e in read_ledger(ledger_of(sim)) if e["path"].endswith(":generateContent")]


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ({"api": "openai", "context_cache": True}, "api"),
        ({"lane": "batch", "context_cache": True}, "provider.lane"),
        ({"context_cache": "sometimes"}, 'true, false or "auto"'),
    ],
)
def test_context_cache_options_the_job_file_refuses(
    tmp_path: Path, provider: dict[str, Any], message: str
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(1))
    with pytest.raises(SpecError, match=r"provider\.context_cache") as caught:
        make_spec(None, src, extra={"provider": provider})
    assert message in str(caught.value)


def test_the_google_genai_sdk_creates_uses_and_deletes_a_cache_on_the_simulator(
    sim_factory: Callable[..., SimProcess],
) -> None:
    from google import genai
    from google.genai import errors, types

    sim = sim_factory("--key", "sim-key", "--key", "other-key=other-project")
    client = genai.Client(
        api_key="sim-key", http_options=types.HttpOptions(base_url=sim.base_url("gemini"))
    )
    model = "gemini-3.1-flash-lite-preview"
    with pytest.raises(errors.ClientError, match="too small"):
        client.caches.create(
            model=model, config=types.CreateCachedContentConfig(system_instruction="be brief")
        )
    instruction = "Label support tickets. " + EXAMPLE * 300
    cache = client.caches.create(
        model=model,
        config=types.CreateCachedContentConfig(
            system_instruction=instruction, ttl="300s", display_name="t"
        ),
    )
    assert cache.name and cache.usage_metadata and cache.usage_metadata.total_token_count
    assert client.caches.get(name=cache.name).display_name == "t"
    answer = client.models.generate_content(
        model=model,
        contents="I was charged twice",
        config=types.GenerateContentConfig(cached_content=cache.name),
    )
    usage = answer.usage_metadata
    assert usage is not None and usage.cached_content_token_count == (
        cache.usage_metadata.total_token_count
    )
    assert usage.prompt_token_count and usage.prompt_token_count > usage.cached_content_token_count
    stranger = genai.Client(
        api_key="other-key", http_options=types.HttpOptions(base_url=sim.base_url("gemini"))
    )
    with pytest.raises(errors.ClientError, match="PERMISSION_DENIED"):
        stranger.models.generate_content(
            model=model,
            contents="hi",
            config=types.GenerateContentConfig(cached_content=cache.name),
        )
    client.caches.delete(name=cache.name)
    with pytest.raises(errors.ClientError, match="PERMISSION_DENIED"):
        client.caches.get(name=cache.name)


def test_openai_implicitly_cached_tokens_are_priced_at_the_cached_rate(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(1))
    spec = make_spec(
        None,
        src,
        api="openai",
        extra={
            "model": "gpt-5.3-chat-latest",
            "provider": {"base_url": "https://api.openai.com/v1"},
        },
    )
    prices = resolve_prices(spec)
    cached = cost_usd(Usage(input=0, cached=1_000_000), prices)
    assert cached == prices.cached_per_m == prices.input_per_m / 10
