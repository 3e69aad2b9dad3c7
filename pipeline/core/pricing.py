"""Cost as a pure function of usage and prices, in exact Decimal dollars: the lanes' prices,
a call's worst case (what the budget reserves) and an explicit context cache's bill.

Which prices a job has (the built-in table, a gateway, a job's [pricing]) is pipeline/pricing.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pipeline.core.usage import Usage

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens; `storage_per_m_hour`: per million tokens held in an
    explicit context cache for an hour (Gemini's cachedContents; 0 where there is none)."""

    input_per_m: Decimal
    output_per_m: Decimal
    cached_per_m: Decimal
    source: str = "built-in"
    storage_per_m_hour: Decimal = Decimal(0)


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
        prices.storage_per_m_hour,  # storage is billed by the hour, whatever the lane
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


def context_cache_cost(tokens: int, seconds: float, prices: Prices) -> Decimal:
    """An explicit context cache: its tokens written once at the standard input price, then
    held `seconds` at the storage price per token-hour (prorated to the second)."""
    held = Decimal(tokens) * Decimal(str(round(seconds, 3))) / Decimal(3600)
    return (tokens * prices.input_per_m + held * prices.storage_per_m_hour) / MILLION
