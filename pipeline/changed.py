"""Rows whose input changed since their result was stored.

Each result keeps the hash of what its row sent (`results.input_hash`, the rendered text).
Reading the input again and hashing each row the same way finds the stored rows that no
longer match it; `status NAME` counts them and `retry NAME --changed` re-queues them. Rows
stored without a hash (before this existed, or answered in a batch a previous run submitted)
are never reported as changed.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from pipeline.dedupe import input_hash
from pipeline.errors import UsageError
from pipeline.sources import read_frames
from pipeline.spec import JobSpec, load_spec
from pipeline.store import Store
from pipeline.tasks import build_task
from pipeline.tasks.custom import CustomTask


def input_hashes(spec: JobSpec) -> Iterator[tuple[list[str], list[str]]]:
    """(row ids, hashes of what they send) per input frame; rows that cannot be sent are left
    out (their stored result is `invalid` and never sent anything)."""
    task = build_task(spec)
    for frame in read_frames(spec.input):
        ids: list[str] = []
        hashes: list[str] = []
        for row in frame.rows():
            if row.error is not None:
                continue
            if isinstance(task, CustomTask) and task.missing_field(row) is not None:
                continue
            ids.append(row.id)
            hashes.append(input_hash(task.render(row)))
        yield ids, hashes


def changed_rows(store: Store, spec: JobSpec) -> list[str]:
    """The ids of the job's stored rows whose input no longer matches their result."""
    out: list[str] = []
    for ids, hashes in input_hashes(spec):
        out += store.changed_ids(spec.name, ids, hashes)
    return out


def stored_job(store: Store, name: str) -> JobSpec:
    """The job as the store holds it (the spec of its last run)."""
    row = store.job_row(name)
    if row is None:
        raise UsageError(f"no job named {name!r} in {store.path!r}")
    return load_spec(document=orjson.loads(row["spec"])["doc"])
