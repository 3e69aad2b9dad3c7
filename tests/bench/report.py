"""Bench results: one table per measurement in results.md, and a stdout summary."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Line:
    item: str
    figure: str
    baseline: str = "-"
    ratio: float | None = None
    target: str = "-"
    passed: bool | None = None  # None: reported only, no target

    @property
    def verdict(self) -> str:
        return "-" if self.passed is None else ("PASS" if self.passed else "MISS")


@dataclass
class Section:
    name: str
    title: str
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(self, *args: object, **kwargs: object) -> Line:
        line = Line(*args, **kwargs)  # type: ignore[arg-type]
        self.lines.append(line)
        return line

    def note(self, text: str) -> None:
        self.notes.append(text)


def rates(values: list[float]) -> str:
    """The figures of alternating runs, as a note lists them: "2,890 / 2,564 / 2,174"."""
    return " / ".join(f"{v:,.0f}" for v in values)


def machine() -> str:
    return (
        f"- CPUs: {os.cpu_count()} ({platform.processor() or platform.machine()})\n"
        f"- Python: {sys.version.split()[0]} ({platform.python_implementation()})\n"
        f"- Platform: {platform.platform()}\n"
        f"- Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- Load average at start (1/5/15 min): {os.getloadavg()[0]:.2f} / "
        f"{os.getloadavg()[1]:.2f} / {os.getloadavg()[2]:.2f}\n"
    )


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def markdown(sections: list[Section], total_s: float) -> str:
    out = ["# flashpipe benchmarks", "", machine(), f"Total bench time: {total_s:.0f} s.", ""]
    out += [
        "Every baseline was measured in the same run against the same simulator process "
        "setup (simulator in its own process, flashpipe as its own process via the CLI).",
        "",
    ]
    for s in sections:
        out += [f"## {s.title}", "", f"_`--only {s.name}`, {s.seconds:.0f} s_", ""]
        if s.error:
            out += [f"**CRASHED**: `{s.error}`", ""]
        if s.lines:
            out += [
                "| item | figure | baseline | ratio | target | result |",
                "|---|---|---|---|---|---|",
            ]
            for ln in s.lines:
                out.append(
                    f"| {ln.item} | {ln.figure} | {ln.baseline} | {_ratio(ln.ratio)} "
                    f"| {ln.target} | {ln.verdict} |"
                )
            out.append("")
        out += [f"- {n}" for n in s.notes]
        if s.notes:
            out.append("")
    return "\n".join(out)


def summary(sections: list[Section]) -> str:
    out = []
    for s in sections:
        out.append(f"[{s.name}] {s.title} ({s.seconds:.0f} s)" + (" CRASHED" if s.error else ""))
        if s.error:
            out.append(f"    {s.error}")
        for ln in s.lines:
            ratio = "" if ln.ratio is None else f" ratio {ln.ratio:.2f}"
            target = "" if ln.target == "-" else f" target {ln.target}"
            out.append(f"    {ln.verdict:4} {ln.item}: {ln.figure}{ratio}{target}")
    return "\n".join(out)


def write(path: Path, sections: list[Section], total_s: float) -> None:
    path.write_text(markdown(sections, total_s), encoding="utf-8")
