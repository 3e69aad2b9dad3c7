"""Inline SVG charts: horizontal bars, columns over time, a histogram. No JavaScript.

Every drawn value is a `<rect class="mark">` with a `<title>` (the browser's tooltip), so a
test can count marks and a reader can hover for the exact number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.ui.markup import Html, join, tag


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: float
    text: str  # the value as shown beside the bar
    href: str | None = None


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def bars(items: Sequence[Bar], *, title: str, width: int = 560, max_value: float = 0) -> Html:
    """One horizontal bar per item, longest = max_value (or the largest value)."""
    if not items:
        return tag("p", "nothing to show yet", class_="empty")
    row_h, label_w, text_w = 22, 150, 160
    top = max([max_value] + [b.value for b in items]) or 1.0
    span = width - label_w - text_w
    marks = []
    for i, b in enumerate(items):
        y = i * row_h
        w = max(1.0, span * b.value / top) if b.value > 0 else 0.0
        label = b.label if len(b.label) <= 24 else b.label[:23] + "…"
        rect = tag(
            "rect",
            tag("title", f"{b.label}: {b.text}"),
            class_="mark",
            x=label_w,
            y=_num(y + 3),
            width=_num(w),
            height=row_h - 6,
        )
        text = tag("text", label, x=label_w - 6, y=y + 15, text_anchor="end")
        if b.href:
            text = tag("a", text, href=b.href)
        value = tag("text", b.text, x=_num(label_w + w + 6), y=y + 15)
        marks.append(join(text, rect, value))
    height = row_h * len(items)
    return tag(
        "svg",
        tag("title", title),
        marks,
        class_="chart",
        width=width,
        height=height,
        viewBox=f"0 0 {width} {height}",
        role="img",
    )


def columns(
    points: Sequence[tuple[str, float]],
    *,
    title: str,
    fmt: Callable[[float], str] = _num,
    width: int = 560,
    height: int = 140,
    tone: str = "mark",
) -> Html:
    """Vertical columns in order (a time series or a histogram); first/last labels on the axis."""
    if not points:
        return tag("p", "nothing to show yet", class_="empty")
    pad_l, pad_b, pad_t = 48, 20, 8
    plot_w, plot_h = width - pad_l - 4, height - pad_b - pad_t
    top = max(v for _, v in points) or 1.0
    step = plot_w / len(points)
    marks = []
    for i, (label, value) in enumerate(points):
        h = plot_h * value / top
        marks.append(
            tag(
                "rect",
                tag("title", f"{label}: {fmt(value)}"),
                class_=tone,
                x=_num(pad_l + i * step + step * 0.1),
                y=_num(pad_t + plot_h - h),
                width=_num(max(1.0, step * 0.8)),
                height=_num(h),
            )
        )
    axis = join(
        tag("line", x1=pad_l, y1=pad_t + plot_h, x2=width - 4, y2=pad_t + plot_h, class_="axis"),
        tag("text", fmt(top), x=pad_l - 4, y=pad_t + 10, text_anchor="end"),
        tag("text", "0", x=pad_l - 4, y=pad_t + plot_h, text_anchor="end"),
        tag("text", points[0][0], x=pad_l, y=height - 4),
        tag("text", points[-1][0], x=width - 4, y=height - 4, text_anchor="end"),
    )
    return tag(
        "svg",
        tag("title", title),
        axis,
        marks,
        class_="chart",
        width=width,
        height=height,
        viewBox=f"0 0 {width} {height}",
        role="img",
    )


def progress(done: int, total: int | None) -> Html:
    """A progress bar (an HTML element, so it scales with the table cell)."""
    share = min(1.0, done / total) if total else (1.0 if done else 0.0)
    label = f"{done:,} / {total:,}" if total else f"{done:,}"
    return tag(
        "div",
        tag("div", class_="fill", style=f"width:{share * 100:.1f}%"),
        tag("span", label),
        class_="progress",
        title=f"{share * 100:.1f} %",
    )


def progress_share(value: float, cap: float) -> Html:
    """Spend against a budget: the same bar, red past 90 %."""
    share = min(1.0, value / cap) if cap > 0 else 0.0
    colour = "#dc2626" if share > 0.9 else "#10b981"
    return tag(
        "div",
        tag("div", class_="fill", style=f"width:{share * 100:.1f}%;background:{colour}"),
        tag("span", f"{share * 100:.1f} % of budget"),
        class_="progress",
    )
