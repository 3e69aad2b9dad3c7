"""HTML pages (server-rendered, inline CSS and SVG; nothing loaded from anywhere else)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from pipeline.store import BATCH_COLUMNS
from pipeline.ui import svg
from pipeline.ui.jobs import Count, JobDetail, JobSummary
from pipeline.ui.markup import Html, join, tag, url
from pipeline.ui.rows import BAD, STATUSES, ErrorGroup, RowDetail, RowFilter, RowsPage

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:10px 24px}header a{color:#fff;margin-right:18px;text-decoration:none}
header b{margin-right:28px}main{padding:16px 24px;max-width:1200px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%}td,th{padding:5px 8px;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.progress{position:relative;background:#e3e6eb;border-radius:3px;height:18px;min-width:160px}
.progress .fill{background:#3b82f6;height:100%;border-radius:3px}
.progress span{position:absolute;left:6px;top:0;font-size:12px;line-height:18px}
.scroll{overflow-x:auto}.grid{margin-top:16px;display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:12px 24px}
.card{background:#fff;border:1px solid #e3e6eb;border-radius:4px;padding:8px 12px}
svg.chart{display:block;overflow:visible}svg.chart text{font-size:11px;fill:#394150}
rect.mark{fill:#3b82f6}rect.warn{fill:#dc2626}line.axis{stroke:#9aa3b2}
.state{padding:1px 6px;border-radius:3px;background:#e3e6eb}.state.running{background:#fde68a}
.state.done{background:#bbf7d0}.state.failed,.state.stopped,.state.budget_exhausted{background:#fecaca}
pre{background:#fff;border:1px solid #e3e6eb;padding:8px;white-space:pre-wrap;word-break:break-word}
.muted,.empty{color:#6b7280}form.filters{margin:8px 0;display:flex;gap:8px;flex-wrap:wrap;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:12px}code{background:#eef0f4;padding:1px 4px}
.pager a{margin-right:16px}.live{background:#fff7d6;border:1px solid #f5d76e;padding:6px 10px;border-radius:4px}
"""


# the pages use no script at all: forbid it outright, a second wall behind the escaping
# (also as a <meta>, so a saved report carries it)
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'"


def job_href(name: str, sub: str = "") -> str:
    return f"/jobs/{quote(name, safe='')}{sub}"


def layout(title: str, body: object, *, refresh: int | None = None, nav: bool = True) -> str:
    head = join(
        tag("meta", charset="utf-8"),
        tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
        tag("meta", http_equiv="Content-Security-Policy", content=CSP),
        tag("meta", http_equiv="refresh", content=str(refresh)) if refresh else None,
        tag("title", title),
        tag("style", Html(CSS)),
    )
    top = tag("header", tag("b", "flashpipe"), tag("a", "Jobs", href="/") if nav else None)
    doc = tag("html", tag("head", head), tag("body", top, tag("main", body)), lang="en")
    return "<!doctype html>\n" + doc


def money(value: Decimal | None) -> str:
    return "-" if value is None else f"${value.quantize(Decimal('0.000001'))}"


def eta(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _spend(s: JobSummary) -> Html:
    text = money(s.usd)
    if s.budget is not None:
        return join(
            text, " of ", money(s.budget), svg.progress_share(float(s.usd), float(s.budget))
        )
    if s.usd_projected is not None:
        return join(text, tag("div", f"projected {money(s.usd_projected)}", class_="muted"))
    return join(text)


def _statuses(by_status: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(by_status.items())) or "-"


def _run_cells(s: JobSummary) -> Html:
    """The state, progress, rows by status, spend and lane cells of a job's row."""
    return join(
        tag(
            "td",
            tag("span", s.state, class_=f"state {s.state}"),
            tag("div", s.message, class_="muted") if s.message else None,
        ),
        tag("td", svg.progress(s.rows, s.rows_total)),
        tag("td", _statuses(s.by_status)),
        tag("td", _spend(s)),
        tag("td", s.lane),
    )


def jobs_page(jobs: Sequence[JobSummary], db_path: str, note: str | None) -> str:
    head = tag(
        "tr",
        [
            tag("th", h)
            for h in (
                "job",
                "state",
                "progress",
                "rows by status",
                "spend",
                "lane",
                "rows/min",
                "429s",
                "ETA",
            )
        ],
    )
    lines = []
    for s in jobs:
        name: object = s.name if s.live else tag("a", s.name, href=job_href(s.name))
        lines.append(
            tag(
                "tr",
                tag(
                    "td",
                    name,
                    tag("div", f"{s.task} · {s.model}", class_="muted") if s.task else None,
                ),
                _run_cells(s),
                tag(
                    "td",
                    f"{s.rows_per_min:,.0f}" if s.rows_per_min is not None else "-",
                    class_="num",
                ),
                tag("td", f"{s.rate_limited:,}", class_="num"),
                tag("td", eta(s.eta_s) if s.live else "-", class_="num"),
                class_="job",
                data_job=s.name,
            )
        )
    body = join(
        tag("h1", "Jobs"),
        tag("p", "store ", tag("code", db_path), class_="muted"),
        tag("p", note, class_="live") if note else None,
        tag("table", head, lines, id="jobs")
        if lines
        else tag("p", "no jobs in this store yet", class_="empty"),
    )
    return layout(
        "flashpipe · jobs",
        body,
        refresh=2 if any(s.live or s.state == "running" for s in jobs) or note else None,
    )


def _bars(counts: Sequence[Count], title: str, *, links: str | None, share: bool = False) -> Html:
    items = [
        svg.Bar(
            c.label,
            c.value,
            c.text,
            url(links, {"col": c.column, "val": c.match})
            if links and c.column and c.match is not None
            else None,
        )
        for c in counts
    ]
    return svg.bars(items, title=title, max_value=1.0 if share else 0)


def _card(title: str, *content: object) -> Html:
    return tag("div", tag("h2", title), content, class_="card")


def job_page(d: JobDetail, db_path: str, *, links: bool = True) -> str:
    s = d.summary
    rows_href = job_href(s.name, "/rows") if links else None
    facts = tag(
        "table",
        tag(
            "tr",
            [
                tag("th", h)
                for h in (
                    "state",
                    "progress",
                    "rows by status",
                    "spend",
                    "lane",
                    "requests",
                    "429s",
                    "rows/min",
                )
            ],
        ),
        tag(
            "tr",
            _run_cells(s),
            tag("td", f"{s.requests:,}", class_="num"),
            tag("td", f"{s.rate_limited:,}", class_="num"),
            tag(
                "td", f"{s.rows_per_min:,.0f}" if s.rows_per_min is not None else "-", class_="num"
            ),
        ),
        id="facts",
    )
    nav = None
    if links:
        nav = tag(
            "p",
            tag("a", "Rows", href=rows_href),
            tag("a", "Errors", href=job_href(s.name, "/errors")),
            class_="pager",
        )
    answers = [
        _card(dist.title, _bars(dist.counts, dist.title, links=rows_href, share=dist.share))
        for dist in d.distributions
    ]
    if not answers:
        answers = [
            _card("Answers", tag("p", "no answer fields to chart for this job", class_="empty"))
        ]
    per = "minute" if d.bucket_s >= 60 else f"minute (in {d.bucket_s} s buckets)"
    charts = tag(
        "div",
        answers,
        _card("Cost by lane", _bars(d.cost_lanes, "cost by lane", links=None)),
        _card("Cost by outcome", _bars(d.cost_outcomes, "cost by outcome", links=None)),
        _card("Cost by token kind", _bars(d.cost_tokens, "cost by token kind", links=None)),
        _card(f"Rows stored per {per}", svg.columns(d.rows_per_min, title="rows per minute")),
        _card(
            f"429s per {per}", svg.columns(d.limited_per_min, title="429s per minute", tone="warn")
        ),
        _card(
            "Call latency",
            svg.columns(d.latency, title="latency histogram", fmt=lambda v: f"{v:,.0f}"),
        ),
        class_="grid",
    )
    batches = None
    if d.batches:
        cols = BATCH_COLUMNS
        batches = join(
            tag("h2", "Batches (Batch lane)"),
            tag(
                "table",
                tag("tr", [tag("th", c) for c in cols]),
                [tag("tr", [tag("td", _cell(b[c])) for c in cols]) for b in d.batches],
                id="batches",
            ),
        )
    body = join(
        tag("h1", s.name),
        tag("p", f"{s.task} · {s.model} · store ", tag("code", db_path), class_="muted"),
        nav,
        facts,
        charts,
        batches,
        None if links else tag("p", f"report written {_now()} by flashpipe report", class_="muted"),
    )
    return layout(f"flashpipe · {s.name}", body, nav=links)


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="seconds"))
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "…"


def rows_page(job: str, page: RowsPage, f: RowFilter) -> str:
    base = job_href(job, "/rows")
    status = tag(
        "select",
        tag("option", "any", value=""),
        [tag("option", st, value=st, selected=f.status == st) for st in STATUSES],
        name="status",
    )
    column = tag(
        "select",
        tag("option", "(field)", value=""),
        [tag("option", c, value=c, selected=f.column == c) for c in page.filterable],
        name="col",
    )
    form = tag(
        "form",
        tag("label", "status", status),
        tag("label", "field", column),
        tag("label", "equals", tag("input", name="val", value=f.value or "", size=14)),
        tag(
            "label",
            "search id, answer, error" + (", text" if page.searched_text or not f.q else ""),
            tag("input", name="q", value=f.q or "", size=24),
        ),
        tag("button", "filter", type="submit"),
        tag("a", "clear", href=base),
        class_="filters",
        method="get",
        action=base,
    )
    cols = ["row_id", "status", *page.columns, "attempts", "cost_usd", "error"]
    head = tag("tr", [tag("th", c) for c in cols])
    body = []
    for r in page.rows:
        link = tag("a", r["row_id"], href=url(job_href(job, "/row"), {"id": r["row_id"]}))
        cells = [tag("td", link)] + [tag("td", _cell(r[c])) for c in cols[1:]]
        body.append(tag("tr", cells, class_="row"))
    pager = tag(
        "p",
        tag("a", "« first", href=url(base, f.params())),
        tag(
            "a",
            "‹ previous",
            href=url(base, {**f.params(), "before": page.prev_before}),
            rel="prev",
        )
        if page.prev_before
        else None,
        tag(
            "a",
            "next ›",
            href=url(base, {**f.params(), "after": page.next_after}),
            rel="next",
            id="next",
        )
        if page.next_after
        else None,
        class_="pager",
    )
    content = join(
        tag("h1", tag("a", job, href=job_href(job)), " · rows"),
        form,
        tag("div", tag("table", head, body, id="rows"), class_="scroll")
        if body
        else tag("p", "no rows match", class_="empty"),
        pager,
    )
    return layout(f"flashpipe · {job} · rows", content)


def row_page(job: str, d: RowDetail) -> str:
    r = d.result
    facts = tag(
        "table",
        [
            tag("tr", tag("th", k), tag("td", _cell(r[k])))
            for k in (
                "row_id",
                "pos",
                "status",
                "attempts",
                "input_tokens",
                "cached_tokens",
                "output_tokens",
                "thinking_tokens",
                "cost_usd",
                "finished_at",
            )
        ],
        [tag("tr", tag("th", f"kept: {k}"), tag("td", _cell(v))) for k, v in d.kept.items()],
        id="row-facts",
    )
    text = (
        tag("textarea", d.text, readonly=True, rows=6, cols=100, id="input-text")
        if d.text is not None
        else tag("p", d.text_note, class_="empty")
    )
    call_cols = (
        "attempt",
        "lane",
        "started_at",
        "latency_ms",
        "http_status",
        "outcome",
        "error",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "thinking_tokens",
        "cost_usd",
        "rows_in_call",
        "model_version",
    )
    calls = tag(
        "table",
        tag("tr", [tag("th", c) for c in call_cols]),
        [tag("tr", [tag("td", _cell(c[k])) for k in call_cols], class_="call") for c in d.calls],
        id="calls",
    )
    body = join(
        tag("h1", tag("a", job, href=job_href(job)), " · row ", r["row_id"]),
        tag("p", tag("a", "all rows", href=job_href(job, "/rows"))),
        facts,
        tag("h2", "Input text"),
        text,
        tag("h2", "Answer"),
        tag("pre", d.answer, id="answer")
        if d.answer is not None
        else tag("p", "no answer stored", class_="empty"),
        tag("h2", "Error"),
        tag("pre", r["error"], id="error") if r["error"] else tag("p", "none", class_="empty"),
        tag("h2", f"HTTP calls ({len(d.calls)})"),
        tag("div", calls, class_="scroll")
        if d.calls
        else tag("p", "no calls recorded for this row", class_="empty"),
    )
    return layout(f"flashpipe · {job} · {r['row_id']}", body)


def errors_page(job: str, groups: Sequence[ErrorGroup], db_path: str) -> str:
    rows_href = job_href(job, "/rows")
    lines = []
    for g in groups:
        examples = join(
            [
                tag("a", i, href=url(job_href(job, "/row"), {"id": i}), style="margin-right:8px")
                for i in g.example_ids
            ]
        )
        lines.append(
            tag(
                "tr",
                tag("td", tag("a", g.status, href=url(rows_href, {"status": g.status}))),
                tag("td", f"{g.count:,}", class_="num"),
                tag(
                    "td",
                    g.reason,
                    tag("div", g.example_error, class_="muted")
                    if g.example_error != g.reason
                    else None,
                ),
                tag("td", examples),
                class_="error-group",
            )
        )
    statuses = sorted({g.status for g in groups}, key=BAD.index)
    db = shlex.quote(db_path)
    cmds = [
        f"flashpipe retry {shlex.quote(job)} {' '.join(f'--status {s}' for s in statuses)} --db {db}",
        f"flashpipe resume {shlex.quote(job)} --db {db}",
    ]
    body = join(
        tag("h1", tag("a", job, href=job_href(job)), " · errors"),
        tag(
            "table",
            tag(
                "tr",
                [tag("th", h) for h in ("status", "rows", "reason (numbers as N)", "examples")],
            ),
            lines,
            id="errors",
        )
        if lines
        else tag("p", "no failed, invalid or blocked rows", class_="empty"),
        join(
            tag("h2", "Re-queue them"),
            tag("p", "stop any run of this store first; these two commands send the rows again:"),
            tag("pre", "\n".join(cmds), id="requeue"),
        )
        if lines
        else None,
    )
    return layout(f"flashpipe · {job} · errors", body)


def message_page(title: str, text: str, *, refresh: int | None = None) -> str:
    return layout(f"flashpipe · {title}", join(tag("h1", title), tag("p", text)), refresh=refresh)
