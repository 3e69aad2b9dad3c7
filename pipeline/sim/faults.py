"""Which fault (if any) a request gets: forced by header or marker, else drawn from the profile."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

FAULTS = (
    "429",
    "429-day",
    "400",
    "403",
    "404",
    "500",
    "503",
    "504",
    "drop",
    "hang",
    "truncated",
    "truncated_body",
    "safety",
    "prohibited",
    "prompt_blocked",
    "max_tokens",
    "bad_enum",
    "stubborn_enum",  # bad_enum on every send, until the request says why it was rejected
    "lite_enum",  # bad_enum from a Flash-Lite model (its id says "lite"), right from any other
    "bad_json",
    "drop_placeholder",
    "drop_item",
    "refusal",
    "content_filter",
    "insufficient_quota",
)

PROFILES: dict[str, dict[str, float]] = {
    "clean": {},
    "realistic": {"429": 0.01, "500": 0.005, "503": 0.01},
    "hostile": {
        "429": 0.05,
        "500": 0.02,
        "503": 0.03,
        "504": 0.01,
        "drop": 0.01,
        "hang": 0.005,
        "truncated": 0.01,
        "safety": 0.01,
        "max_tokens": 0.01,
        "prompt_blocked": 0.005,
    },
}

MARKER = re.compile(r"\[\[sim:([A-Za-z0-9_\-]+)(?:\*(\d+))?\]\]")


def parse_rate(spec: str) -> tuple[str, float]:
    """'503=0.02' -> ('503', 0.02)."""
    name, _, rate = spec.partition("=")
    name = name.strip()
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
    value = float(rate)
    if not 0 <= value <= 1:
        raise ValueError(f"fault rate for {name} must be within 0..1")
    return name, value


class Picker:
    def __init__(self, rates: dict[str, float], seed: int):
        self.rng = random.Random(seed)
        self.table: list[tuple[float, str]] = []
        edge = 0.0
        for name, rate in rates.items():
            if rate > 0:
                edge += rate
                self.table.append((edge, name))
        self.seen: dict[tuple[str, str], int] = {}

    def forced(self, header: str | None, texts: Iterable[str]) -> tuple[str | None, frozenset[str]]:
        """(fault for the whole request, texts whose item to drop) from the header or markers."""
        if header:
            name = header.strip()
            return (name if name in FAULTS else None), frozenset()
        fault: str | None = None
        drop: set[str] = set()
        for text in texts:
            if "[[sim:" not in text:
                continue
            for m in MARKER.finditer(text):
                name, limit = m.group(1), m.group(2)
                if name not in FAULTS:
                    continue
                if limit is not None:
                    key = (m.group(0), text)
                    n = self.seen.get(key, 0)
                    self.seen[key] = n + 1
                    if n >= int(limit):
                        continue
                if name == "drop_item":
                    drop.add(text)
                elif fault is None:
                    fault = name
        return fault, frozenset(drop)

    def draw(self) -> str | None:
        if not self.table:
            return None
        x = self.rng.random()
        for edge, name in self.table:
            if x < edge:
                return name
        return None
