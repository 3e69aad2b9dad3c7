from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from pipeline.catalog import Channel, canonical_model, channel_of
from pipeline.core.pricing import cost_usd
from pipeline.core.usage import Usage
from pipeline.pricing import PRICE_TABLE

FLASH_LITE = PRICE_TABLE[("gemini-3.1-flash-lite-preview", Channel.GEMINI_API)]
tokens = st.integers(min_value=0, max_value=10**9)
usages = st.builds(Usage, tokens, tokens, tokens, tokens)


def test_flash_lite_list_price() -> None:
    assert cost_usd(Usage(input=1_000_000), FLASH_LITE) == Decimal("0.25")
    assert cost_usd(Usage(output=1_000_000), FLASH_LITE) == Decimal("1.50")
    # thinking is billed as output
    assert cost_usd(Usage(thinking=1_000_000), FLASH_LITE) == Decimal("1.50")
    assert cost_usd(Usage(cached=1_000_000), FLASH_LITE) == FLASH_LITE.cached_per_m


@given(usages, usages)
def test_cost_is_additive(a: Usage, b: Usage) -> None:
    assert cost_usd(a + b, FLASH_LITE) == cost_usd(a, FLASH_LITE) + cost_usd(b, FLASH_LITE)


@given(usages, st.integers(min_value=1, max_value=50))
def test_row_shares_sum_to_the_call(u: Usage, n: int) -> None:
    shares = u.split(n)
    assert sum(shares, Usage()) == u
    assert sum((cost_usd(s, FLASH_LITE) for s in shares), Decimal(0)) == cost_usd(u, FLASH_LITE)


@given(usages)
def test_cost_is_exact_to_the_picodollar(u: Usage) -> None:
    c = cost_usd(u, FLASH_LITE)
    assert c == c.quantize(Decimal("0.000000000001"))


def test_gateway_prefix_resolves_to_the_model() -> None:
    assert (
        canonical_model("google/gemini-3.1-flash-lite-preview") == "gemini-3.1-flash-lite-preview"
    )
    assert channel_of("openai", "https://api.cometapi.com/v1") is Channel.COMETAPI
    assert (
        channel_of("openai", "https://generativelanguage.googleapis.com/v1beta/openai")
        is Channel.GEMINI_API
    )
    assert channel_of("openai", "https://api.openai.com/v1") is Channel.OPENAI
