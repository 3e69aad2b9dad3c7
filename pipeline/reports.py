"""What `status` and `cost` report, as plain dicts (the --json shapes) built from the store."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from pipeline.errors import FlashpipeError, UsageError
from pipeline.pricing import MILLION, Prices, resolve_prices
from pipeline.spec import load_spec
from pipeline.store import Store

SIX = Decimal("0.000001")


def usd(value: Decimal) -> str:
    return str(value.quantize(SIX))


def job_names(store: Store, name: str | None) -> list[str]:
    names = store.job_names()
    if name is None:
        return names
    if name not in names:
        known = ", ".join(names) or "none yet"
        raise UsageError(f"no job named {name!r} in {store.path!r} (jobs: {known})")
    return [name]


def job_prices(store: Store, name: str) -> Prices | None:
    row = store.job_row(name)
    if row is None:
        return None
    doc = orjson.loads(row["spec"])["doc"]
    try:
        return resolve_prices(load_spec(document=doc))
    except FlashpipeError:
        return None


def cost_report(store: Store, name: str | None) -> dict[str, Any]:
    jobs = []
    total = Decimal(0)
    for job in job_names(store, name):
        row = store.job_row(job)
        assert row is not None
        t = store.call_totals(job)
        tokens = t["tokens"]
        prices = job_prices(store, job)
        by_outcome = store.cost_by_outcome(job)
        entry: dict[str, Any] = {
            "name": job,
            "model": row["model"],
            "requests": t["requests"],
            "rows": sum(store.status_counts(job).values()),
            "tokens": tokens,
            "usd": {
                "total": usd(t["usd"]),
                "by_outcome": {k: usd(v) for k, v in by_outcome.items()},
            },
            "rows_paid_twice": store.rows_paid_twice(job),
        }
        if prices is not None:
            entry["usd"]["input"] = usd(
                (tokens["input"] * prices.input_per_m + tokens["cached"] * prices.cached_per_m)
                / MILLION
            )
            entry["usd"]["output"] = usd(
                (tokens["output"] + tokens["thinking"]) * prices.output_per_m / MILLION
            )
            entry["prices_per_m"] = {
                "input": str(prices.input_per_m),
                "cached": str(prices.cached_per_m),
                "output": str(prices.output_per_m),
                "source": prices.source,
            }
        entry["usd_exact"] = str(t["usd"])
        jobs.append(entry)
        total += t["usd"]
    return {"jobs": jobs, "total_usd": usd(total), "total_usd_exact": str(total)}


def status_report(store: Store, name: str | None) -> dict[str, Any]:
    jobs = []
    for job in job_names(store, name):
        row = store.job_row(job)
        assert row is not None
        counts = store.status_counts(job)
        t = store.call_totals(job)
        elapsed = None
        if t["first"] is not None and t["last"] is not None:
            elapsed = max(1e-9, (t["last"] - t["first"]).total_seconds())
        jobs.append(
            {
                "name": job,
                "state": row["state"],
                "message": row["message"],
                "task": row["task"],
                "model": row["model"],
                "rows": sum(counts.values()),
                "rows_seen": row["rows_seen"],
                "by_status": counts,
                "requests": t["requests"],
                "rate_limited": t["rate_limited"],
                "requests_per_min": round(t["requests"] / elapsed * 60, 1) if elapsed else None,
                "usd": usd(t["usd"]),
                "rows_paid_twice": store.rows_paid_twice(job),
                "runs": row["runs"],
                "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None,
            }
        )
    return {"jobs": jobs}
