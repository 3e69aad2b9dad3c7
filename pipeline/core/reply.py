"""What a task asks of a provider (Prompt, Shape) and what comes back (Reply), wire-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.core.retry import ErrorClass
from pipeline.core.usage import ZERO, Usage


@dataclass(frozen=True, eq=False)
class Shape:
    """The part of a prompt shared by every request of a job: built once, encoded once."""

    name: str
    system: str
    schema: dict[str, Any]


@dataclass(slots=True)
class Prompt:
    shape: Shape
    user: str
    max_output_tokens: int


class ReplyKind(StrEnum):
    OK = "ok"
    BLOCKED = "blocked"
    TRUNCATED = "truncated"
    ERROR = "error"


@dataclass(slots=True)
class Reply:
    kind: ReplyKind
    http_status: int
    usage: Usage = ZERO
    text: str | None = None
    error_class: ErrorClass | None = None
    error: str | None = None
    retry_after: float | None = None
    block: dict[str, Any] | None = field(default=None)
    model_version: str | None = None
    response_id: str | None = None
    # the service had no capacity (503, or a 429 that names no quota of the key): on a Flex
    # call this is a refusal ("shed"), not a rate limit
    capacity: bool = False
