"""`flashpipe estimate`: requests, tokens, USD and wall time from a sample of real rows.

It samples the first rows of the input (Parquet row count from metadata, JSONL extrapolated
from file size), so it answers in well under a second whatever the input size.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from pipeline.autopack import choose_packing
from pipeline.core.pricing import LANE_FACTOR, cost_usd, lane_prices
from pipeline.core.usage import Usage
from pipeline.pricing import resolve_prices
from pipeline.sampling import THINKING_RATIO, read_sample, sample_tokens
from pipeline.sources import count_rows_fast
from pipeline.spec import JobSpec
from pipeline.tasks import build_task


def estimate(spec: JobSpec) -> dict[str, Any]:
    task = build_task(spec)
    prices = resolve_prices(spec)
    total_rows, exact = count_rows_fast(spec.input)
    sample = read_sample(spec)
    if not sample:
        return {"job": spec.name, "rows": total_rows, "rows_exact": exact, "sampled": 0, "usd": "0"}
    choice = None
    if spec.limits.auto_pack:
        choice = choose_packing(spec, task, sample, prices)
    per = choice.rows if choice is not None else max(1, spec.limits.rows_per_request)
    prompt, output = sample_tokens(task, sample, per)
    thinking = output * THINKING_RATIO[spec.provider.thinking]
    requests = math.ceil(total_rows / per)
    usage = Usage(
        input=round(prompt * total_rows),
        output=round(output * total_rows),
        thinking=round(thinking * total_rows),
    )
    # Vertex AI's batch jobs go through Cloud Storage, which flashpipe does not drive
    lanes = [n for n in LANE_FACTOR if not (n == "batch" and spec.provider.api == "vertex")]
    by_lane = {name: cost_usd(usage, lane_prices(prices, name)) for name in lanes}
    lane = (
        spec.provider.lane if spec.provider.lane in LANE_FACTOR else "flex"
    )  # auto starts on Flex
    usd = by_lane[lane]
    rpm = spec.limits.rpm
    minutes = requests / rpm if rpm else None
    if spec.limits.tpm and minutes is not None:
        minutes = max(minutes, (usage.input + usage.cached) / spec.limits.tpm)
    return {
        "job": spec.name,
        "model": spec.model,
        "rows": total_rows,
        "rows_exact": exact,
        "sampled": len(sample),
        "requests": requests,
        "tokens": {
            "input": usage.input,
            "cached": 0,
            "output": usage.output,
            "thinking": usage.thinking,
        },
        "lane": spec.provider.lane,
        "rows_per_request": per,
        "rows_per_request_auto": choice.view() if choice is not None else None,
        "usd": str(usd.quantize(Decimal("0.000001"))),
        "usd_by_lane": {k: str(v.quantize(Decimal("0.000001"))) for k, v in by_lane.items()},
        "usd_low": str((usd * Decimal("0.8")).quantize(Decimal("0.000001"))),
        "usd_high": str((usd * Decimal("1.3")).quantize(Decimal("0.000001"))),
        "minutes_at_limits": round(minutes, 1) if minutes is not None else None,
        "prices_per_m": {
            "input": str(prices.input_per_m),
            "output": str(prices.output_per_m),
            "source": prices.source,
        },
    }


def format_estimate(r: dict[str, Any]) -> str:
    if not r.get("sampled"):
        return f"{r['job']}: no readable rows to sample"
    rows = f"{r['rows']:,}" if r["rows_exact"] else f"~{r['rows']:,}"
    t = r["tokens"]
    p = r["prices_per_m"]
    wall = (
        f"{r['minutes_at_limits']:,} min at the configured limits"
        if r["minutes_at_limits"] is not None
        else "no rate limit set"
    )
    return (
        f"{r['job']} ({r['model']}): {rows} rows -> {r['requests']:,} requests\n"
        f"  tokens: input {t['input']:,}, output {t['output']:,}, thinking {t['thinking']:,}"
        f" (sampled {r['sampled']} rows)\n"
        f"  cost: ${r['usd']} in the {r['lane']} lane (range ${r['usd_low']} - ${r['usd_high']})\n"
        f"  by lane: " + ", ".join(f"{k} ${v}" for k, v in r["usd_by_lane"].items()) + "\n"
        f"  prices: ${p['input']}/M in, ${p['output']}/M out ({p['source']})\n"
        f"  time: {wall}" + _auto_line(r)
    )


def _auto_line(r: dict[str, Any]) -> str:
    auto = r.get("rows_per_request_auto")
    if not auto:
        return ""
    costs = ", ".join(f"{n}: ${usd}" for n, usd in auto["usd_per_1k_rows"].items())
    return (
        f"\n  rows_per_request auto: {auto['rows']} (USD per 1,000 rows by rows per request:"
        f" {costs})"
    )
