"""Price table and cost as a pure function of usage; exact Decimal dollars."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pipeline.errors import SpecError
from pipeline.spec import JobSpec
from pipeline.usage import Usage

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens."""

    input_per_m: Decimal
    output_per_m: Decimal
    cached_per_m: Decimal
    source: str = "built-in"


def _p(i: str, o: str, c: str, source: str = "built-in list price") -> Prices:
    return Prices(Decimal(i), Decimal(o), Decimal(c), source)


# (model, endpoint kind) -> prices. Kinds: "gemini" (Google direct, incl. its OpenAI-compatible
# endpoint), "openai" (api.openai.com), "gateway" (any other OpenAI-compatible base URL).
# List prices as published when written; a job's [pricing] table overrides them.
PRICE_TABLE: dict[tuple[str, str], Prices] = {
    ("gemini-3.1-flash-lite-preview", "gemini"): _p("0.25", "1.50", "0.025"),
    ("gemini-3.1-flash-lite-preview", "gateway"): _p("0.20", "1.20", "0.02", "gateway list price"),
    ("gemini-2.5-flash-lite", "gemini"): _p("0.10", "0.40", "0.01"),
    ("gemini-2.5-flash", "gemini"): _p("0.30", "2.50", "0.03"),
    ("gemini-3-flash-preview", "gemini"): _p("0.50", "3.00", "0.05"),
    ("gpt-5.3-chat-latest", "openai"): _p("1.75", "14.00", "0.175"),
    ("gpt-5-mini", "openai"): _p("0.25", "2.00", "0.025"),
}


def endpoint_kind(api: str, base_url: str) -> str:
    if api == "gemini" or "generativelanguage.googleapis.com" in base_url:
        return "gemini"
    if base_url.rstrip("/").endswith("/v1beta/openai"):
        return "gemini"
    if "api.openai.com" in base_url:
        return "openai"
    return "gateway"


def canonical_model(model: str) -> str:
    """`google/gemini-3.1-flash-lite-preview`, `models/x`, `openai/gpt-5.3-chat-latest` -> bare id."""
    return model.rsplit("/", 1)[-1].strip().lower()


def resolve_prices(spec: JobSpec) -> Prices:
    """The job's prices; an unknown model without [pricing] is an error before anything is sent."""
    if spec.pricing is not None:
        o = spec.pricing
        cached = o.cached_per_m if o.cached_per_m is not None else o.input_per_m
        return Prices(o.input_per_m, o.output_per_m, cached, "job [pricing]")
    model = canonical_model(spec.model)
    kind = endpoint_kind(spec.provider.api, spec.provider.base_url)
    for k in (kind, "gemini", "openai", "gateway"):
        found = PRICE_TABLE.get((model, k))
        if found is not None:
            return found
    known = ", ".join(sorted({m for m, _ in PRICE_TABLE}))
    raise SpecError(
        f"model: {spec.model!r} has no built-in price; add a [pricing] table "
        f"(input_per_m, output_per_m) or use one of: {known}"
    )


# Flex and Batch sell the same tokens at half price on both providers. Discounts stack: a cached
# token in a batch or flex call costs half the standard cached price.
LANE_FACTOR: dict[str, Decimal] = {
    "standard": Decimal(1),
    "flex": Decimal("0.5"),
    "batch": Decimal("0.5"),
}


def lane_prices(prices: Prices, lane: str) -> Prices:
    """The price table of one lane ("standard", "flex" or "batch")."""
    f = LANE_FACTOR[lane]
    if f == 1:
        return prices
    return Prices(
        prices.input_per_m * f,
        prices.output_per_m * f,
        prices.cached_per_m * f,
        f"{prices.source}, {lane} lane x{f}",
    )


def cost_usd(usage: Usage, prices: Prices) -> Decimal:
    """Exact cost of a usage record; thinking is billed at the output price."""
    return (
        usage.input * prices.input_per_m
        + usage.cached * prices.cached_per_m
        + (usage.output + usage.thinking) * prices.output_per_m
    ) / MILLION


def worst_case_cost(input_tokens: int, max_output_tokens: int, prices: Prices) -> Decimal:
    """An upper bound for one call: every prompt token uncached, the output budget used up."""
    return (input_tokens * prices.input_per_m + max_output_tokens * prices.output_per_m) / MILLION
