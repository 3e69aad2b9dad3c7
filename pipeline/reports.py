"""What `status` and `cost` report, as plain dicts (the --json shapes) built from the store."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from pipeline.core.pricing import MILLION, Prices, lane_prices
from pipeline.errors import FlashpipeError, UsageError
from pipeline.pricing import resolve_prices
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
            "cache": _cache_view(store, job),
            "models": {
                m: {
                    "calls": v["calls"],
                    "rows": v["rows"],
                    "usd": usd(v["usd"]),
                    "usd_exact": str(v["usd"]),
                }
                for m, v in store.model_totals(job).items()
            },
        }
        lanes = store.lane_totals(job)
        entry["lanes"] = {}
        money_in = money_out = Decimal(0)
        for lane, lt in lanes.items():
            shown: dict[str, Any] = {
                "calls": lt["calls"],
                "rows": lt["rows"],
                "tokens": lt["tokens"],
                "usd": usd(lt["usd"]),
                "usd_exact": str(lt["usd"]),
            }
            if lane == "flex":
                shown["shed"] = {"calls": lt["shed"]["calls"], "usd": usd(lt["shed"]["usd"])}
            if prices is not None:
                lp = lane_prices(prices, lane)
                lt_t = lt["tokens"]
                money_in += (
                    lt_t["input"] * lp.input_per_m + lt_t["cached"] * lp.cached_per_m
                ) / MILLION
                money_out += (lt_t["output"] + lt_t["thinking"]) * lp.output_per_m / MILLION
                shown["prices_per_m"] = _price_dict(lp)
            entry["lanes"][lane] = shown
        if prices is not None:
            entry["usd"]["input"] = usd(money_in)
            entry["usd"]["output"] = usd(money_out)
            entry["prices_per_m"] = _price_dict(prices)
        entry["usd_exact"] = str(t["usd"])
        pools = store.pool_totals(job)
        if pools:
            entry["pools"] = {k: {**v, "usd": usd(v["usd"])} for k, v in pools.items()}
        jobs.append(entry)
        total += t["usd"]
    return {"jobs": jobs, "total_usd": usd(total), "total_usd_exact": str(total)}


def _changed(store: Store, job: str) -> int | None:
    """Stored rows whose input no longer matches (None when the input cannot be read)."""
    from pipeline.changed import changed_rows, stored_job

    try:
        return len(changed_rows(store, stored_job(store, job)))
    except FlashpipeError:
        return None


def _cache_view(store: Store, job: str) -> dict[str, Any]:
    """Rows answered from the cache and what they saved, at the lane the job would have used."""
    c = store.cache_totals(job)
    return {
        "rows": c["rows"],
        "saved_usd": usd(c["saved_usd"]),
        "saved_usd_exact": str(c["saved_usd"]),
    }


def _price_dict(p: Prices) -> dict[str, str]:
    return {
        "input": str(p.input_per_m),
        "cached": str(p.cached_per_m),
        "output": str(p.output_per_m),
        "source": p.source,
    }


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
                "cache": _cache_view(store, job),
                "changed_rows": _changed(store, job) if name is not None else None,
                "lanes": {
                    lane: {"calls": lt["calls"], "rows": lt["rows"], "usd": usd(lt["usd"])}
                    for lane, lt in store.lane_totals(job).items()
                },
                "batches": [_batch_view(b) for b in store.batch_list(job)],
                "pools": {
                    k: {**v, "usd": usd(v["usd"])} for k, v in store.pool_totals(job).items()
                },
                "runs": row["runs"],
                "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None,
            }
        )
    return {"jobs": jobs}


def _batch_view(b: dict[str, Any]) -> dict[str, Any]:
    out = dict(b)
    for k in ("created_at", "finished_at"):
        if out.get(k) is not None:
            out[k] = out[k].isoformat()
    return out
