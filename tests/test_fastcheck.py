"""The fast schema check never accepts what jsonschema refuses (hypothesis against the real one)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pipeline.tasks.fastcheck import compile_check

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["billing", "bug", "other"]}},
        "required": ["label"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "labels": {
                "type": "array",
                "items": {"type": "string", "enum": ["a", "b"]},
                "minItems": 1,
                "maxItems": 2,
            }
        },
        "required": ["labels"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "required": ["flagged", "categories"],
        "properties": {
            "flagged": {"type": "boolean"},
            "categories": {
                "type": "object",
                "properties": {
                    "spam": {
                        "type": "object",
                        "properties": {
                            "flagged": {"type": "boolean"},
                            "severity": {"type": "integer", "minimum": 0, "maximum": 3},
                        },
                        "required": ["flagged", "severity"],
                    }
                },
            },
        },
    },
    # a list of types and three checks in a row (type, minimum, maximum)
    {"type": ["integer", "null"], "minimum": 0, "maximum": 3},
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(-5, 5)
    | st.sampled_from(["billing", "bug", "a", "b", "x", ""]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["label", "labels", "flagged", "categories", "spam", "severity", "z"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=400)
@given(st.sampled_from(range(len(SCHEMAS))), json_values)
def test_fast_check_agrees_with_jsonschema(which: int, value: Any) -> None:
    schema = SCHEMAS[which]
    fast = compile_check(schema)
    assert fast is not None
    assert fast(value) == Draft202012Validator(schema).is_valid(value)


def test_unsupported_keywords_fall_back() -> None:
    assert compile_check({"type": "string", "pattern": "^a"}) is None
    assert compile_check({"anyOf": [{"type": "string"}]}) is None
    assert compile_check({"type": "string", "maxLength": 3}) is None
