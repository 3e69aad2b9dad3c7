"""Records as Arrow tables: what the writer hands DuckDB in one INSERT per table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.records import CallRecord, ResultRecord

COST = pa.decimal128(38, 12)
RESULT_SCHEMA = pa.schema(
    [
        ("job", pa.string()),
        ("row_id", pa.string()),
        ("pos", pa.string()),
        ("status", pa.string()),
        ("output", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("thinking_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("cost_usd", COST),
        ("kept", pa.string()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("answered_by", pa.string()),
        ("request_key", pa.string()),
        ("input_hash", pa.string()),
        ("from_cache", pa.bool_()),
        ("saved_usd", COST),
        ("model", pa.string()),
    ]
)
CALL_SCHEMA = pa.schema(
    [
        ("job", pa.string()),
        ("call_id", pa.string()),
        ("row_ids", pa.list_(pa.string())),
        ("attempt", pa.int32()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("latency_ms", pa.float64()),
        ("http_status", pa.int32()),
        ("outcome", pa.string()),
        ("error", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("thinking_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("cost_usd", COST),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("response_id", pa.string()),
        ("recovered", pa.bool_()),
        ("lane", pa.string()),
        ("pool", pa.string()),  # the key pool (a provider project) it went through; never a key
    ]
)
BATCH_ROW_SCHEMA = pa.schema(
    [
        ("job", pa.string()),
        ("batch_id", pa.string()),
        ("req", pa.int32()),
        ("row_id", pa.string()),
        ("pos", pa.string()),
        ("text", pa.string()),
        ("fields", pa.string()),
        ("attempts", pa.int32()),
    ]
)
COST_QUANTUM = Decimal("0.000000000001")


def _json_default(value: Any) -> Any:
    """Kept values orjson does not write itself (Decimal, bytes)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):  # a subclass (pandas.Timestamp) orjson does not take
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def kept_json(kept: Mapping[str, Any]) -> str:
    return orjson.dumps(kept, default=_json_default).decode()


_UTC_MICROS = pa.timestamp("us", tz="UTC")


def timestamps(seconds: list[float]) -> pa.Array:
    """Seconds since the epoch as a TIMESTAMPTZ column, converted in Arrow (the records carry
    floats: a datetime per call and per result cost the event loop about 2 us a row)."""
    micros = pc.round(pc.multiply(pa.array(seconds, pa.float64()), 1e6))
    return micros.cast(pa.int64()).cast(_UTC_MICROS)


_ZERO_COST = pa.scalar(Decimal(0), COST)


def costs(values: list[Decimal]) -> pa.Array:
    """Costs as a DECIMAL(38, 12) column. Prices and token counts give costs with at most 12
    places, which Arrow takes as they are; a value with more is rounded to 12 places first
    (the rounding costs ~0.6 µs a value, the store thread's largest Python cost per row)."""
    if not any(values):  # no cost at all (cached answers' saved_usd, the usual case)
        return pa.repeat(_ZERO_COST, len(values))
    try:
        return pa.array(values, COST)
    except pa.ArrowInvalid:  # more than 12 places
        return pa.array([v.quantize(COST_QUANTUM) for v in values], COST)


def results_table(job: str, records: Sequence[ResultRecord]) -> pa.Table:
    dumps, default = orjson.dumps, _json_default
    return pa.table(
        {
            "job": [job] * len(records),
            "row_id": [r.row_id for r in records],
            "pos": [r.pos for r in records],
            "status": [r.status for r in records],
            "output": [dumps(r.output).decode() if r.output is not None else None for r in records],
            "error": [r.error for r in records],
            "attempts": [r.attempts for r in records],
            "input_tokens": [r.usage.input for r in records],
            "output_tokens": [r.usage.output for r in records],
            "thinking_tokens": [r.usage.thinking for r in records],
            "cached_tokens": [r.usage.cached for r in records],
            "cost_usd": costs([r.cost_usd for r in records]),
            "kept": [dumps(r.kept, default=default).decode() if r.kept else None for r in records],
            "finished_at": timestamps([r.finished_at for r in records]),
            "answered_by": [r.answered_by for r in records],
            "request_key": [r.request_key for r in records],
            "input_hash": [r.input_hash for r in records],
            "from_cache": [r.from_cache for r in records],
            "saved_usd": costs([r.saved_usd for r in records]),
            "model": [r.model for r in records],
        },
        schema=RESULT_SCHEMA,
    )


def calls_table(job: str, records: Sequence[CallRecord], *, recovered: bool = False) -> pa.Table:
    return pa.table(
        {
            "job": [job] * len(records),
            "call_id": [c.call_id for c in records],
            "row_ids": [c.row_ids for c in records],
            "attempt": [c.attempt for c in records],
            "started_at": timestamps([c.started_at for c in records]),
            "latency_ms": [c.latency_ms for c in records],
            "http_status": [c.http_status for c in records],
            "outcome": [c.outcome for c in records],
            "error": [c.error for c in records],
            "input_tokens": [c.usage.input for c in records],
            "output_tokens": [c.usage.output for c in records],
            "thinking_tokens": [c.usage.thinking for c in records],
            "cached_tokens": [c.usage.cached for c in records],
            "cost_usd": costs([c.cost_usd for c in records]),
            "model": [c.model for c in records],
            "model_version": [c.model_version for c in records],
            "response_id": [c.response_id for c in records],
            "recovered": [recovered] * len(records),
            "lane": [c.lane for c in records],
            "pool": [c.pool for c in records],
        },
        schema=CALL_SCHEMA,
    )
