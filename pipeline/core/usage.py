"""The one usage record every provider's billed tokens are normalised into."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, unsafe_hash=True)
class Usage:
    """Billed tokens of one call; nothing is counted twice.

    input: uncached prompt tokens; cached: prompt tokens served from cache;
    output: visible answer tokens; thinking: reasoning tokens (billed as output).
    """

    input: int = 0
    cached: int = 0
    output: int = 0
    thinking: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input + other.input,
            self.cached + other.cached,
            self.output + other.output,
            self.thinking + other.thinking,
        )

    @property
    def total(self) -> int:
        return self.input + self.cached + self.output + self.thinking

    def split(self, n: int) -> list[Usage]:
        """Shares for n rows that sum exactly to this usage (remainders go to the first rows)."""

        def parts(value: int) -> list[int]:
            q, r = divmod(value, n)
            return [q + (1 if i < r else 0) for i in range(n)]

        cols = [parts(self.input), parts(self.cached), parts(self.output), parts(self.thinking)]
        return [Usage(*(c[i] for c in cols)) for i in range(n)]


ZERO = Usage()
