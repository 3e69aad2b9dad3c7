"""What an input without an id column looked like when its job first read it.

Such rows are identified by their position (`line:57`, `row:57`); if the file changes between
runs, positions name other rows, and a resume would skip rows never answered or store answers
under the wrong row. Size, modification time and a hash of the first 64 KiB of each file are
recorded with the job, and a resume over a file that differs is refused before anything is sent.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import SpecError
from pipeline.files import HEAD_BYTES
from pipeline.sources import input_files
from pipeline.spec import InputSpec


def input_fingerprint(spec: InputSpec) -> list[dict[str, Any]] | None:
    """Per input file: uri, size, mtime and head hash; None when rows carry their own id."""
    if spec.id is not None:
        return None
    return [
        {"uri": f.uri, "size": f.size, "mtime_ns": f.mtime_ns, "head": f.head_hash()}
        for f in input_files(spec)
    ]


def check_unchanged(
    job: str, recorded: list[dict[str, Any]] | None, now: list[dict[str, Any]] | None
) -> None:
    """Refuse (one line) a resume whose id-less input is not the one the job first read."""
    if recorded is None or now is None or recorded == now:
        return
    before = {f["uri"]: f for f in recorded}
    after = {f["uri"]: f for f in now}
    if set(before) != set(after):
        gone = sorted(set(before) - set(after))
        new = sorted(set(after) - set(before))
        what = f"the input files changed (gone: {len(gone)}, new: {len(new)})"
    else:
        uri = next(u for u in sorted(after) if before[u] != after[u])
        diffs = [
            label
            for key, label in (
                ("size", "size"),
                ("head", f"first {HEAD_BYTES // 1024} KiB"),
                ("mtime_ns", "modification time"),
            )
            if before[uri].get(key) != after[uri].get(key)
        ]
        what = f"input {uri!r} changed ({', '.join(diffs)})"
    raise SpecError(
        f"job {job!r}: {what} since the job first read it, and its rows have no id column,"
        " so their positions may now name other rows; add input.id, or use --restart"
    )
