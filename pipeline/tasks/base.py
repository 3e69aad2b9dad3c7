"""What every task shares: one answer schema compiled once, parsing and validation of answers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator

from pipeline.core.records import Row
from pipeline.core.reply import Shape
from pipeline.tasks.fastcheck import compile_check

SqlType = Literal["VARCHAR", "JSON", "BIGINT", "INTEGER", "DOUBLE", "BOOLEAN", "VARCHAR[]"]


@dataclass(frozen=True)
class ViewColumn:
    """A typed column of a job's results view: the answer's value at a JSON path. The store
    writes the SQL."""

    name: str
    path: str  # a JSON path into the answer, e.g. "$.labels"
    type: SqlType = "VARCHAR"
    blocked_is_true: bool = False  # a row the provider blocked reads as true (moderate)


def estimate_tokens(text: str) -> int:
    """A local token estimate (about 4 bytes of UTF-8 per token) for reservations and `estimate`."""
    # an ASCII text is as many bytes as characters, and `isascii` reads a flag: no encoding
    size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
    return size // 4 + 1


class Task:
    """Base of classify / translate / moderate / custom: subclasses set the schema and prompt."""

    name = "task"

    def __init__(self, system: str, item_schema: dict[str, Any]):
        self.item_schema = item_schema
        self.shape = Shape(self.name, system, item_schema)
        self._validator = Draft202012Validator(item_schema)
        self._fast_check = compile_check(item_schema)

    def render(self, row: Row) -> str:
        """The user text for one row."""
        assert row.text is not None
        return row.text

    def expected_output_tokens(self, user_text: str) -> int:
        return 16

    def check(self, answer: dict[str, Any], row: Row) -> str | None:
        """Task-specific checks after the schema; a reason string when the answer is unusable."""
        return None

    def normalise(self, answer: dict[str, Any]) -> dict[str, Any]:
        return answer

    def validate(self, answer: Any, row: Row) -> tuple[dict[str, Any] | None, str | None]:
        """(output, None) for a usable answer, else (None, reason)."""
        if not isinstance(answer, dict):
            return None, f"answer is {type(answer).__name__}, expected an object"
        fast = self._fast_check
        error = (
            None
            if fast is not None and fast(answer)
            else next(iter(self._validator.iter_errors(answer)), None)
        )
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "answer"
            return None, f"schema: {where}: {error.message}"[:300]
        reason = self.check(answer, row)
        if reason is not None:
            return None, reason
        return self.normalise(answer), None

    def parse(self, text: str | None, row: Row) -> tuple[dict[str, Any] | None, str | None]:
        if not text:
            return None, "empty answer"
        try:
            answer = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None, f"answer is not JSON: {text[:80]!r}"
        return self.validate(answer, row)

    def view_columns(self) -> list[ViewColumn]:
        return []


_PLACEHOLDER = re.compile(
    r"\{\{[^{}]+\}\}|\{[A-Za-z_][\w.]*\}|%\(\w+\)[sd]|%[sd]|</?[A-Za-z][^<>]*>|https?://[^\s<>\"')]+"
)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def protected_tokens(text: str) -> list[str]:
    """Placeholders, markup, URLs and numbers a translation must carry over unchanged."""
    found = _PLACEHOLDER.findall(text)
    found += [re.sub(r"[.,]", "", n) for n in _NUMBER.findall(_PLACEHOLDER.sub(" ", text))]
    return found


def missing_tokens(source: str, translation: str) -> list[str]:
    digits = re.sub(r"(?<=\d)[.,\u202f\u00a0 ](?=\d)", "", translation)
    missing = []
    for token in protected_tokens(source):
        haystack = digits if token.isdigit() else translation
        if token not in haystack:
            missing.append(token)
    return missing
