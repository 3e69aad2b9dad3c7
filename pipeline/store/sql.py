"""SQL text: quoting, and the typed view's column expressions over `results` (alias `r`)."""

from __future__ import annotations

import pyarrow as pa

from pipeline.tasks.base import ViewColumn


def sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def column_sql(c: ViewColumn) -> str:
    """The SQL of a task's view column over the results table (aliased `r`)."""
    path = sql_str(c.path)
    if c.type == "VARCHAR":
        sql = f"json_extract_string(r.output, {path})"
    elif c.type == "JSON":
        sql = f"json_extract(r.output, {path})"
    else:
        sql = f"CAST(json_extract(r.output, {path}) AS {c.type})"
    return f"coalesce({sql}, r.status = 'blocked')" if c.blocked_is_true else sql


def from_json(t: pa.DataType) -> bool:
    """Whether a value of this type survives the trip through the `kept` JSON column."""
    if pa.types.is_struct(t):
        return all(from_json(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return bool(from_json(t.value_type))
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_date(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
    )


def kept_sql(key: str, sql_type: str | None) -> str:
    """A keep column read back from `kept` JSON: TRY_CAST, so a value that does not fit the
    type (a JSONL row unlike the first ones) is NULL in the view and still whole in `kept`."""
    path = sql_str("$." + key)
    if sql_type is None or sql_type == "VARCHAR":
        return f"json_extract_string(r.kept, {path})"
    nested = sql_type.startswith(("STRUCT", "MAP")) or sql_type.endswith("]")
    extract = "json_extract" if nested else "json_extract_string"
    return f"TRY_CAST({extract}(r.kept, {path}) AS {sql_type})"
