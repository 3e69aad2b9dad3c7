"""Answers kept across jobs and runs: a request whose answer is stored is not sent again.

The store's `answers` table maps a request key (`dedupe.request_key`: the model, channel,
instructions, schema, generation settings and the row's rendered text) to the `ok` answer it
got and the tokens it took. A row whose key is found there gets that answer at no cost; its
result says `from_cache` and what it saved, priced at the lane the job would have used. A
changed label, prompt, schema, model or thinking level changes every key, so it never hits
an old entry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipeline.core.pricing import Prices, cost_usd
from pipeline.core.records import ResultRecord, Row
from pipeline.core.usage import ZERO, Usage
from pipeline.dedupe import kept_fields


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    output: dict[str, Any]
    usage: Usage  # what the answer took when it was paid for (per row)


def lane_for_saving(lane: str) -> str:
    """The lane whose prices a cached answer saves: the one its request would have gone to."""
    return "flex" if lane == "auto" else lane


def cached_result(
    row: Row,
    key: str,
    ihash: str,
    hit: CachedAnswer,
    keep: tuple[str, ...],
    prices: Prices,
    model: str | None = None,
) -> ResultRecord:
    return ResultRecord(
        row_id=row.id,
        pos=row.pos,
        status="ok",
        output=hit.output,
        error=None,
        attempts=0,
        usage=ZERO,
        cost_usd=Decimal(0),
        kept=kept_fields(row, keep),
        finished_at=time.time(),
        request_key=key,
        input_hash=ihash,
        from_cache=True,
        saved_usd=cost_usd(hit.usage, prices),
        model=model,
    )
