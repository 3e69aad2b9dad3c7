"""Packs of rows to and from Arrow record batches: how the driver hands work to a worker."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa

from pipeline.core.records import Row

SCHEMA = pa.schema(
    [
        ("pack", pa.int32()),  # rows of one request share a pack number
        ("id", pa.string()),
        ("pos", pa.string()),
        ("text", pa.string()),
        ("fields", pa.binary()),  # JSON: the kept columns and a custom prompt's fields
    ]
)


def encode_packs(packs: Sequence[Sequence[Row]]) -> pa.RecordBatch:
    numbers: list[int] = []
    ids: list[str] = []
    positions: list[str] = []
    texts: list[str | None] = []
    fields: list[bytes] = []
    for n, pack in enumerate(packs):
        for row in pack:
            numbers.append(n)
            ids.append(row.id)
            positions.append(row.pos)
            texts.append(row.text)
            fields.append(orjson.dumps(row.fields))
    return pa.RecordBatch.from_arrays(
        [
            pa.array(numbers, pa.int32()),
            pa.array(ids),
            pa.array(positions),
            pa.array(texts),
            pa.array(fields, pa.binary()),
        ],
        schema=SCHEMA,
    )


def decode_packs(batch: pa.RecordBatch) -> list[list[Row]]:
    cols = batch.to_pydict()
    packs: list[list[Row]] = []
    last = -1
    for n, rid, pos, text, blob in zip(
        cols["pack"], cols["id"], cols["pos"], cols["text"], cols["fields"], strict=True
    ):
        if n != last:
            packs.append([])
            last = n
        packs[-1].append(Row(rid, pos, text, orjson.loads(blob)))
    return packs
