"""The price list: what a model costs on each channel, and a job's prices (the list, or its
[pricing] table). Cost from usage and prices is pipeline/core/pricing.py."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from pipeline.catalog import GATEWAY_ALIASES, Channel, canonical_model, channel_of
from pipeline.core.pricing import Prices
from pipeline.errors import SpecError
from pipeline.spec import JobSpec

# Gemini API pricing page: context caching storage, $1.00 per 1M tokens per hour for the Flash
# and Flash-Lite models; CometAPI lists no storage price (Google's assumed).
_STORAGE = "1.00"


def _p(i: str, o: str, c: str, source: str, storage: str = _STORAGE) -> Prices:
    return Prices(Decimal(i), Decimal(o), Decimal(c), source, Decimal(storage))


_GOOGLE = "Gemini API list price"
_VERTEX = "Vertex AI list price (the Gemini API's)"
_COMET = "CometAPI model page (cached input assumed 10 %, as Google's)"
_OPENAI = "OpenAI list price"
# (model, channel) -> prices, as published when written; a job's [pricing] table overrides them.
# Cached input is a tenth of the input price on both providers.
PRICE_TABLE: dict[tuple[str, Channel], Prices] = {
    ("gemini-3.1-flash-lite-preview", Channel.GEMINI_API): _p("0.25", "1.50", "0.025", _GOOGLE),
    ("gemini-3.1-flash-lite-preview", Channel.VERTEX): _p("0.25", "1.50", "0.025", _VERTEX),
    ("gemini-3.1-flash-lite-preview", Channel.COMETAPI): _p("0.20", "1.20", "0.02", _COMET),
    ("gemini-3.1-flash-lite-preview-thinking", Channel.COMETAPI): _p(
        "0.20", "1.20", "0.02", _COMET
    ),
    ("gemini-3.1-flash-lite-thinking", Channel.COMETAPI): _p("0.20", "1.20", "0.02", _COMET),
    ("gemini-2.5-flash-lite", Channel.GEMINI_API): _p("0.10", "0.40", "0.01", _GOOGLE),
    ("gemini-2.5-flash", Channel.GEMINI_API): _p("0.30", "2.50", "0.03", _GOOGLE),
    ("gemini-3-flash-preview", Channel.GEMINI_API): _p("0.50", "3.00", "0.05", _GOOGLE),
    # OpenAI caches prompt prefixes on its own (no storage, no explicit cache)
    ("gpt-5.3-chat-latest", Channel.OPENAI): _p("1.75", "14.00", "0.175", _OPENAI, "0"),
    ("gpt-5-mini", Channel.OPENAI): _p("0.25", "2.00", "0.025", _OPENAI, "0"),
}


def prices_for(model: str, channel: Channel) -> Prices | None:
    """The table's price of a model bought through a channel.

    A channel without its own entry (an unknown gateway, Vertex for an older model) falls back
    to the model's list price, and the source says so; a gateway-only model id has no price
    anywhere else.
    """
    name = canonical_model(model)
    found = PRICE_TABLE.get((name, channel))
    if found is not None:
        return found
    if name in GATEWAY_ALIASES:
        return None
    for home in (Channel.GEMINI_API, Channel.OPENAI):
        listed = PRICE_TABLE.get((name, home))
        if listed is not None:
            return replace(listed, source=f"{listed.source}; no {channel} price in the table")
    return None


def resolve_prices(spec: JobSpec) -> Prices:
    """The job's prices; an unknown model without [pricing] is an error before anything is sent."""
    p = spec.provider
    channel = channel_of(p.api, p.base_url, p.channel)
    found = prices_for(spec.model, channel)
    if spec.pricing is not None:
        o = spec.pricing
        cached = o.cached_per_m if o.cached_per_m is not None else o.input_per_m
        # [pricing] names token prices; a context cache's storage keeps the table's price
        storage = found.storage_per_m_hour if found is not None else Decimal(0)
        return Prices(o.input_per_m, o.output_per_m, cached, "job [pricing]", storage)
    if found is not None:
        return found
    known = ", ".join(sorted({f"{m} ({c})" for m, c in PRICE_TABLE}))
    raise SpecError(
        f"model: {spec.model!r} has no built-in price on the {channel} channel; add a [pricing] "
        f"table (input_per_m, output_per_m) or use one of: {known}"
    )
