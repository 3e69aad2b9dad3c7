"""A fast yes for the answers that are valid: plain Python checks compiled from simple schemas.

jsonschema costs tens of microseconds per answer, a noticeable share of the CPU per request at
thousands of requests a second. Task schemas use a small subset of JSON Schema; `compile_check`
turns such a schema into nested closures, and returns None for anything outside the subset.
A True from the closure is final; a False goes to jsonschema for the authoritative verdict
and its message, so the fast path can never accept what jsonschema would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

_ANNOTATIONS = {"description", "title", "$schema", "$comment", "examples", "default"}
_KNOWN = _ANNOTATIONS | {
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
}


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (
        isinstance(v, float) and v.is_integer()
    )


_TYPES: dict[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": _is_int,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def compile_check(schema: Any) -> Check | None:
    """A closure that returns True only for instances valid under `schema`; None if unsupported."""
    if schema is True:
        return lambda v: True
    if not isinstance(schema, dict) or set(schema) - _KNOWN:
        return None
    checks: list[Check] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or not all(isinstance(k, str) and k in _TYPES for k in kinds):
            return None
        checks.append(_any_of([_TYPES[k] for k in kinds]))
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
            return None  # jsonschema's equality (1 == True is false there) is not worth copying
        allowed = frozenset(values)
        checks.append(lambda v: isinstance(v, str) and v in allowed)
    if "const" in schema:
        const = schema["const"]
        if not isinstance(const, str):
            return None
        checks.append(lambda v: isinstance(v, str) and v == const)
    if "minLength" in schema or "maxLength" in schema:
        return None  # code points vs grapheme subtleties: strings with bounds go to jsonschema
    for key in ("minItems", "maxItems", "minimum", "maximum"):
        if key in schema:
            bound = schema[key]
            if not isinstance(bound, int | float) or isinstance(bound, bool):
                return None
            checks.append(_bound(key, bound))
    supported, object_check = _object(schema)
    if not supported:
        return None
    if object_check is not None:
        checks.append(object_check)
    if "items" in schema:
        item = compile_check(schema["items"])
        if item is None:
            return None
        checks.append(_each_item(item))
    return _all_of(checks)


# Checks are chained pairwise: a generator per check (`all(c(v) for c in checks)`) cost more
# than the checks themselves, ~1.5 µs of ~2 µs per answer of a one-label schema.
def _all_of(checks: list[Check]) -> Check:
    if not checks:
        return lambda v: True
    combined = checks[-1]
    for check in reversed(checks[:-1]):
        combined = _both(check, combined)
    return combined


def _both(first: Check, second: Check) -> Check:
    return lambda v: first(v) and second(v)


def _any_of(tests: list[Check]) -> Check:
    combined = tests[-1]
    for test in reversed(tests[:-1]):
        combined = _either(test, combined)
    return combined


def _either(first: Check, second: Check) -> Check:
    return lambda v: first(v) or second(v)


def _each_item(item: Check) -> Check:
    def check(v: Any) -> bool:
        if isinstance(v, list):
            for x in v:
                if not item(x):
                    return False
        return True

    return check


def _bound(key: str, n: float) -> Check:
    if key == "minItems":
        return lambda v: not isinstance(v, list) or len(v) >= n
    if key == "maxItems":
        return lambda v: not isinstance(v, list) or len(v) <= n
    if key == "minimum":
        return lambda v: not _TYPES["number"](v) or v >= n
    return lambda v: not _TYPES["number"](v) or v <= n


def _object(schema: dict[str, Any]) -> tuple[bool, Check | None]:
    """(supported, the properties / required / additionalProperties check or None)."""
    props = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(props, dict) or not isinstance(required, list) or not isinstance(extra, bool):
        return False, None
    if not all(isinstance(name, str) for name in required):
        return False, None
    if not props and not required and extra:
        return True, None
    compiled: dict[str, Check] = {}
    for name, sub in props.items():
        sub_check = compile_check(sub)
        if sub_check is None:
            return False, None
        compiled[name] = sub_check
    need = frozenset(required)

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True  # `type` says whether it must be an object
        if not v.keys() >= need:
            return False
        for k, x in v.items():
            sub = compiled.get(k)
            if sub is None:
                if not extra:
                    return False
            elif not sub(x):
                return False
        return True

    return True, check
