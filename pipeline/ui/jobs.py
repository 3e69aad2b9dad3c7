"""What the Jobs and Job pages show, read from a store opened read-only (or the live sidecar)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import FlashpipeError
from pipeline.spec import JobSpec, load_spec
from pipeline.store import Store, view_name


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One line of the Jobs page: from the store, or from a running job's status sidecar."""

    name: str
    state: str
    task: str
    model: str
    rows: int
    rows_total: int | None
    by_status: dict[str, int]
    usd: Decimal
    usd_projected: Decimal | None
    budget: Decimal | None
    lane: str
    rows_per_min: float | None
    eta_s: int | None
    requests: int
    rate_limited: int
    message: str | None = None
    live: bool = False
    runner: str | None = None


def job_spec(store: Store, name: str) -> JobSpec | None:
    """The job's spec as stored with it; None when it no longer validates (e.g. an old file)."""
    row = store.job_row(name)
    if row is None:
        return None
    try:
        return load_spec(document=orjson.loads(row["spec"])["doc"])
    except (FlashpipeError, KeyError, orjson.JSONDecodeError):
        return None


def summaries(store: Store) -> list[JobSummary]:
    return [summary(store, name) for name in store.job_names()]


def summary(store: Store, name: str) -> JobSummary:
    row = store.job_row(name)
    if row is None:
        raise KeyError(name)
    spec = job_spec(store, name)
    counts = store.status_counts(name)
    totals = store.call_totals(name)
    first, last, rows = store.con.execute(
        "SELECT min(finished_at), max(finished_at), count(*) FROM results WHERE job = ?", [name]
    ).fetchall()[0]
    rate = None
    if first is not None and last is not None and rows > 1:
        rate = round(rows / max(1.0, (last - first).total_seconds()) * 60, 1)
    seen = int(row["rows_seen"] or 0)
    return JobSummary(
        name=name,
        state=str(row["state"]),
        task=str(row["task"]),
        model=str(row["model"]),
        rows=int(rows),
        rows_total=max(seen, int(rows)) or None,
        by_status=counts,
        usd=Decimal(totals["usd"]),
        usd_projected=None,
        budget=spec.max_usd if spec else None,
        lane=spec.provider.lane if spec else "standard",
        rows_per_min=rate,
        eta_s=None,
        requests=int(totals["requests"]),
        rate_limited=int(totals["rate_limited"]),
        message=row["message"],
    )


def live_summary(snap: dict[str, Any]) -> JobSummary:
    """A running job, from the `<store>.status.json` sidecar its runner rewrites every second."""
    rate = snap.get("rows_per_s")
    return JobSummary(
        name=str(snap.get("job", "?")),
        state=str(snap.get("state", "running")),
        task="",
        model="",
        rows=int(snap.get("rows_done", 0)),
        rows_total=int(snap.get("rows_total") or 0) or None,
        by_status={str(k): int(v) for k, v in (snap.get("by_status") or {}).items()},
        usd=Decimal(str(snap.get("usd", "0"))),
        usd_projected=Decimal(str(snap["usd_projected"])) if snap.get("usd_projected") else None,
        budget=None,
        lane=str(snap.get("lane", "standard")),
        rows_per_min=round(float(rate) * 60, 1) if rate is not None else None,
        eta_s=snap.get("eta_s"),
        requests=int(snap.get("requests", 0)),
        rate_limited=int(snap.get("rate_limited", 0)),
        live=True,
        runner=snap.get("runner"),
    )


def read_sidecar(db_path: str) -> dict[str, Any] | None:
    path = Path(db_path + ".status.json")
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# -- the job page ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Count:
    label: str
    value: float
    text: str
    column: str | None = None  # a view column to filter the Rows page by (label -> value)
    match: str | None = None


@dataclass(frozen=True, slots=True)
class Distribution:
    title: str
    counts: list[Count]
    share: bool = False  # values are shares (0..1) rather than counts


@dataclass
class JobDetail:
    summary: JobSummary
    view: str | None
    distributions: list[Distribution] = field(default_factory=list)
    cost_lanes: list[Count] = field(default_factory=list)
    cost_outcomes: list[Count] = field(default_factory=list)
    cost_tokens: list[Count] = field(default_factory=list)
    rows_per_min: list[tuple[str, float]] = field(default_factory=list)
    limited_per_min: list[tuple[str, float]] = field(default_factory=list)
    bucket_s: int = 60
    latency: list[tuple[str, float]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)


def view_of(store: Store, job: str) -> str | None:
    name = view_name(job)
    found = store.con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]
    ).fetchall()[0][0]
    return name if found else None


def view_columns(store: Store, view: str) -> dict[str, str]:
    """Column name -> DuckDB type of the job's typed view."""
    rows = store.con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ?"
        " ORDER BY column_index",
        [view],
    ).fetchall()
    return {str(n): str(t) for n, t in rows}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _counts(store: Store, view: str, column: str, *, unnest: bool = False) -> list[Count]:
    expr = f"unnest({_ident(column)})" if unnest else _ident(column)
    rows = store.con.execute(
        f"SELECT CAST(v AS VARCHAR), n FROM (SELECT {expr} AS v, count(*) AS n"
        f" FROM {_ident(view)} GROUP BY 1) ORDER BY n DESC, 1 LIMIT 25"
    ).fetchall()
    return [
        Count(str(v) if v is not None else "(no answer)", float(n), f"{n:,}", column, v)
        for v, n in rows
    ]


def distributions(store: Store, spec: JobSpec | None, view: str | None) -> list[Distribution]:
    if spec is None or view is None:
        return []
    cols = view_columns(store, view)
    out: list[Distribution] = []
    if spec.classify is not None:
        col = "labels" if spec.classify.multi_label else "label"
        if col in cols:
            out.append(Distribution("Labels", _counts(store, view, col, unnest=col == "labels")))
    elif spec.translate is not None:
        for col, title in (
            ("target_lang", "Target languages"),
            ("source_lang", "Source languages"),
        ):
            if col in cols:
                out.append(Distribution(title, _counts(store, view, col)))
    elif spec.moderate is not None:
        cats = [c for c in ("flagged", *spec.moderate.categories) if c in cols]
        if cats:
            exprs = ", ".join(
                f"count(*) FILTER (WHERE {_ident(c)}), count({_ident(c)})" for c in cats
            )
            row = store.con.execute(f"SELECT {exprs} FROM {_ident(view)}").fetchall()[0]
            shares = []
            for i, c in enumerate(cats):
                hit, seen = int(row[2 * i]), int(row[2 * i + 1])
                share = hit / seen if seen else 0.0
                shares.append(Count(c, share, f"{share * 100:.1f} % ({hit:,})", c, "true"))
            out.append(Distribution("Flagged share per category", shares, share=True))
    elif spec.custom is not None:
        props = spec.custom.schema.get("properties") or {}
        for name, prop in props.items():
            if name in cols and _categorical(prop):
                out.append(Distribution(f"Top values of {name}", _counts(store, view, name)))
    return out


def _categorical(prop: Any) -> bool:
    if not isinstance(prop, dict):
        return False
    if "enum" in prop or prop.get("type") == "boolean":
        return True
    lo, hi = prop.get("minimum"), prop.get("maximum")
    return (
        prop.get("type") == "integer"
        and isinstance(lo, int)
        and isinstance(hi, int)
        and hi - lo <= 20
    )


def detail(store: Store, name: str) -> JobDetail:
    from pipeline.reports import cost_report

    spec = job_spec(store, name)
    view = view_of(store, name)
    d = JobDetail(summary=summary(store, name), view=view)
    d.distributions = distributions(store, spec, view)
    cost = cost_report(store, name)["jobs"][0]
    for lane, lt in sorted(cost["lanes"].items()):
        d.cost_lanes.append(Count(lane, float(lt["usd_exact"]), f"${lt['usd']}"))
    for outcome, usd in cost["usd"]["by_outcome"].items():
        d.cost_outcomes.append(Count(outcome.replace("_", " "), float(usd), f"${usd}"))
    d.cost_tokens = _token_costs(cost)
    d.bucket_s, d.rows_per_min, d.limited_per_min = _timeline(store, name)
    d.latency = _latency(store, name)
    d.batches = store.batch_list(name)
    return d


def _token_costs(cost: dict[str, Any]) -> list[Count]:
    """USD per token kind, summed over lanes at each lane's prices (tokens when unpriced)."""
    kinds = {"input": 0.0, "cached": 0.0, "output": 0.0, "thinking": 0.0}
    tokens = {k: 0 for k in kinds}
    priced = True
    for lt in cost["lanes"].values():
        prices = lt.get("prices_per_m")
        for kind in kinds:
            tokens[kind] += int(lt["tokens"][kind])
            if prices is None:
                priced = False
                continue
            per_m = prices["output" if kind == "thinking" else kind]
            kinds[kind] += lt["tokens"][kind] * float(per_m) / 1e6
    if not priced:
        return [Count(k, float(v), f"{v:,} tokens") for k, v in tokens.items()]
    return [Count(k, v, f"${v:.6f} · {compact(tokens[k])} tok") for k, v in kinds.items()]


def compact(n: int) -> str:
    """12,345,678 -> 12.3M: short enough to sit beside a bar."""
    for size, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


def _label(seconds: float) -> str:
    if seconds < 120:
        return f"+{seconds:.0f}s"
    if seconds < 7200:
        return f"+{seconds / 60:.0f}m"
    return f"+{seconds / 3600:.1f}h"


def _timeline(
    store: Store, name: str
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """Stored rows and 429s per minute, in at most 60 buckets over the job's lifetime."""
    first, last = store.con.execute(
        "SELECT min(t), max(t) FROM (SELECT epoch_ms(finished_at) AS t FROM results WHERE job = ?"
        " UNION ALL SELECT epoch_ms(started_at) FROM calls WHERE job = ?)",
        [name, name],
    ).fetchall()[0]
    if first is None:
        return 60, [], []
    span_s = (last - first) / 1000
    bucket = next((s for s in _STEPS if span_s / s < 60), _STEPS[-1])
    n = int(span_s // bucket) + 1

    def series(sql: str) -> list[tuple[str, float]]:
        values = [0.0] * n
        for k, c in store.con.execute(sql, [first, bucket * 1000, name]).fetchall():
            values[min(n - 1, int(k))] = c * 60 / bucket
        return [(_label(i * bucket), v) for i, v in enumerate(values)]

    rows = series(
        "SELECT (epoch_ms(finished_at) - ?) // ?, count(*) FROM results WHERE job = ? GROUP BY 1"
    )
    limited = series(
        "SELECT (epoch_ms(started_at) - ?) // ?, count(*) FROM calls WHERE job = ?"
        " AND outcome = 'rate_limited' GROUP BY 1"
    )
    return bucket, rows, limited


def _latency(store: Store, name: str, bins: int = 24) -> list[tuple[str, float]]:
    """Call latency in equal bins up to the 99th percentile; the last bin holds the slow tail."""
    p99 = store.con.execute(
        "SELECT quantile_cont(latency_ms, 0.99) FROM calls WHERE job = ? AND latency_ms IS NOT NULL",
        [name],
    ).fetchall()[0][0]
    if p99 is None:
        return []
    width = max(1.0, float(p99) / (bins - 1))
    counts = [0.0] * bins
    for k, c in store.con.execute(
        "SELECT least(CAST(floor(latency_ms / ?) AS BIGINT), ?), count(*) FROM calls"
        " WHERE job = ? AND latency_ms IS NOT NULL GROUP BY 1",
        [width, bins - 1, name],
    ).fetchall():
        counts[int(k)] = float(c)
    out = [(f"<{(i + 1) * width:,.0f} ms", v) for i, v in enumerate(counts[:-1])]
    out.append((f">={(bins - 1) * width:,.0f} ms", counts[-1]))
    return out


def updated(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else "-"
