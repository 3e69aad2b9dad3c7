"""Packing: several rows in one request, each with its id; answers matched back by id."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.core.records import Row
from pipeline.core.reply import Shape
from pipeline.tasks.base import Task

PACK_NOTE = (
    '\n\nThe user message is a JSON object {"items": [{"id": ..., "text": ...}, ...]}. '
    'Treat every item on its own and answer with {"items": [...]}: exactly one answer object '
    "per input item, carrying the item's `id` unchanged."
)


def packed_shape(task: Task) -> Shape:
    item = copy.deepcopy(task.item_schema)
    item.setdefault("properties", {})
    item["properties"] = {"id": {"type": "string"}, **item["properties"]}
    item["required"] = ["id", *[r for r in item.get("required", []) if r != "id"]]
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": item}},
        "required": ["items"],
        "additionalProperties": False,
    }
    return Shape(f"{task.name}_pack", task.shape.system + PACK_NOTE, schema)


def render_pack(task: Task, rows: Sequence[Row]) -> str:
    return orjson.dumps({"items": [{"id": r.id, "text": task.render(r)} for r in rows]}).decode()


@dataclass(frozen=True, slots=True)
class ItemResult:
    row: Row
    output: dict[str, Any] | None
    error: str | None


def match_pack(task: Task, rows: Sequence[Row], text: str | None) -> list[ItemResult]:
    """One ItemResult per row: the validated answer, or why it is missing or unusable."""
    try:
        answer = orjson.loads(text or "")
    except orjson.JSONDecodeError:
        return [ItemResult(r, None, "packed answer is not JSON") for r in rows]
    items = answer.get("items") if isinstance(answer, dict) else None
    if not isinstance(items, list):
        return [ItemResult(r, None, "packed answer has no `items` list") for r in rows]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        if isinstance(item, dict):
            by_id.setdefault(str(item.get("id")), []).append(item)
    results = []
    for r in rows:
        found = by_id.get(r.id, [])
        if not found:
            results.append(ItemResult(r, None, f"no answer for id {r.id!r} in the pack"))
            continue
        if len(found) > 1:
            results.append(ItemResult(r, None, f"{len(found)} answers for id {r.id!r} in the pack"))
            continue
        one = {k: v for k, v in found[0].items() if k != "id"}
        output, error = task.validate(one, r)
        results.append(ItemResult(r, output, error))
    return results
