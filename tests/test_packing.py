"""The pack split, in-process: rows rendered into one request, answers matched back by id."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.records import Row
from pipeline.spec import ClassifySpec, Label
from pipeline.tasks.classify import ClassifyTask
from pipeline.tasks.packing import PACK_NOTE, match_pack, packed_shape, render_pack

TASK = ClassifyTask(ClassifySpec(labels=(Label("billing"), Label("bug"), Label("other"))))
ROWS = [
    Row("a", "line:1", "I was charged twice"),
    Row("b", "line:2", "The app crashes"),
    Row("c", "line:3", "What are your hours?"),
]
A = {"id": "a", "label": "billing"}
B = {"id": "b", "label": "bug"}
C = {"id": "c", "label": "other"}
ALL_OK = {"a": {"label": "billing"}, "b": {"label": "bug"}, "c": {"label": "other"}}


def pack(*items: Any) -> str:
    return orjson.dumps({"items": list(items)}).decode()


def test_render_pack_lists_every_row_with_its_id_in_input_order() -> None:
    assert orjson.loads(render_pack(TASK, ROWS)) == {
        "items": [
            {"id": "a", "text": "I was charged twice"},
            {"id": "b", "text": "The app crashes"},
            {"id": "c", "text": "What are your hours?"},
        ]
    }


def test_the_packed_shape_asks_for_the_id_beside_the_tasks_own_fields() -> None:
    shape = packed_shape(TASK)
    item = shape.schema["properties"]["items"]["items"]
    assert item["required"] == ["id", "label"]
    assert list(item["properties"]) == ["id", "label"]
    assert shape.system.endswith(PACK_NOTE)
    assert TASK.item_schema["required"] == ["label"]  # the task's own schema is left alone


def test_a_rendered_pack_answered_item_by_item_matches_back() -> None:
    sent = orjson.loads(render_pack(TASK, ROWS))["items"]
    answer = pack(*({"id": item["id"], "label": "other"} for item in reversed(sent)))
    results = match_pack(TASK, ROWS, answer)
    assert [(r.row.id, r.output, r.error) for r in results] == [
        (row.id, {"label": "other"}, None) for row in ROWS
    ]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(pack(A, B, C), ALL_OK, id="in-order"),
        pytest.param(pack(C, A, B), ALL_OK, id="reordered"),
        pytest.param(pack(A, B, C, {"id": "z", "label": "bug"}), ALL_OK, id="extra-id-ignored"),
        pytest.param(
            pack(A, C),
            {**ALL_OK, "b": "no answer for id 'b' in the pack"},
            id="one-missing",
        ),
        pytest.param(
            pack(A, {"id": "a", "label": "bug"}, B, C),
            {**ALL_OK, "a": "2 answers for id 'a' in the pack"},
            id="duplicate-id",
        ),
        pytest.param(
            pack(A, {"id": "b", "label": "refund"}, C),
            {**ALL_OK, "b": "schema: label:"},
            id="item-off-schema",
        ),
        pytest.param(
            pack(A, "bug", ["c", "other"], C),
            {**ALL_OK, "b": "no answer for id 'b' in the pack"},
            id="malformed-items-skipped",
        ),
        pytest.param(pack({"label": "bug"}, A, B, C), ALL_OK, id="item-without-id-matches-nothing"),
        pytest.param(
            "Sure! Here are the labels:",
            dict.fromkeys("abc", "packed answer is not JSON"),
            id="prose",
        ),
        pytest.param(None, dict.fromkeys("abc", "packed answer is not JSON"), id="no-text"),
        pytest.param(
            '{"answers": []}',
            dict.fromkeys("abc", "packed answer has no `items` list"),
            id="no-items-key",
        ),
        pytest.param(
            '{"items": {"a": "billing"}}',
            dict.fromkeys("abc", "packed answer has no `items` list"),
            id="items-not-a-list",
        ),
        pytest.param(
            orjson.dumps([A, B, C]).decode(),
            dict.fromkeys("abc", "packed answer has no `items` list"),
            id="bare-list",
        ),
    ],
)
def test_match_pack_gives_each_row_its_answer_or_the_reason(
    answer: str | None, expected: dict[str, Any]
) -> None:
    results = match_pack(TASK, ROWS, answer)
    assert [r.row for r in results] == ROWS  # one result per row, in the rows' order
    for r in results:
        want = expected[r.row.id]
        if isinstance(want, dict):
            assert (r.output, r.error) == (want, None)
        else:
            assert r.output is None and r.error is not None and r.error.startswith(want), r.error


def test_ids_match_as_text_whatever_json_type_the_model_used() -> None:
    rows = [Row("7", "line:1", "x"), Row("8", "line:2", "y")]
    results = match_pack(TASK, rows, pack({"id": 7, "label": "bug"}, {"id": "8", "label": "other"}))
    assert [r.output for r in results] == [{"label": "bug"}, {"label": "other"}]
