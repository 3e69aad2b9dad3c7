"""`rows_per_request = "auto"`: the packing that costs least per row, within safe limits.

Packing sends the instructions and schema once for many rows, so the cost per row falls
with every row added, by less each time. From a sample of the input (the same estimate as
`flashpipe estimate`) the cost per row is computed for each candidate packing that fits:
the answers' expected tokens, doubled as the online lane asks, within the model's output
cap, and the rows within the packer's input cap. Larger packs cost more latency and re-send
more rows when one answer goes wrong, so the choice is the smallest packing within 2 % of
the cheapest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from pipeline.catalog import model_limits
from pipeline.core.pricing import Prices, cost_usd
from pipeline.core.records import Row
from pipeline.core.usage import Usage
from pipeline.pricing import resolve_prices
from pipeline.sampling import THINKING_RATIO, read_sample, sample_tokens
from pipeline.spec import JobSpec
from pipeline.tasks.base import Task, estimate_tokens

log = logging.getLogger("flashpipe")
CANDIDATES = (1, 2, 5, 10, 15, 20, 25, 30, 40, 50)
MAX_INPUT_TOKENS = 8_000  # the reader's Packer (pipeline.run.reader) closes a pack here
WITHIN = Decimal("1.02")


@dataclass(frozen=True)
class PackChoice:
    rows: int
    usd_per_row: dict[int, Decimal]  # every candidate that fits

    def view(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "usd_per_1k_rows": {
                str(n): str((usd * 1000).quantize(Decimal("0.000001")))
                for n, usd in self.usd_per_row.items()
            },
        }


def pick(costs: dict[int, Decimal]) -> int:
    """The smallest packing whose cost per row is within 2 % of the cheapest."""
    best = min(costs.values())
    return min(n for n, usd in costs.items() if usd <= best * WITHIN)


def choose_packing(spec: JobSpec, task: Task, sample: list[Row], prices: Prices) -> PackChoice:
    cap = model_limits(spec.model).max_output
    row_tokens = max(estimate_tokens(task.render(r)) for r in sample) if sample else 1
    ratio = THINKING_RATIO[spec.provider.thinking]
    costs: dict[int, Decimal] = {}
    for n in CANDIDATES:
        if n > 1 and (n * row_tokens > MAX_INPUT_TOKENS or n > len(sample)):
            break
        prompt, output = sample_tokens(task, sample, n)
        if n > 1 and output * n * 2 > cap:
            break
        per_row = Usage(
            input=round(prompt * 1000),
            output=round(output * 1000),
            thinking=round(output * ratio * 1000),
        )
        costs[n] = cost_usd(per_row, prices) / 1000
    return PackChoice(pick(costs), costs)


def with_auto_packing(spec: JobSpec, task: Task) -> JobSpec:
    """The job with `rows_per_request = "auto"` resolved from a sample of its input."""
    sample = read_sample(spec)
    if not sample:
        return spec
    choice = choose_packing(spec, task, sample, resolve_prices(spec))
    log.info("rows_per_request auto: %d rows per request", choice.rows)
    return replace(spec, limits=replace(spec.limits, rows_per_request=choice.rows))
