"""A sample of the input and its token estimate: what `flashpipe estimate` and
`rows_per_request = "auto"` both start from."""

from __future__ import annotations

from pipeline.core.records import Row
from pipeline.sources import read_batches
from pipeline.spec import JobSpec
from pipeline.tasks.base import Task, estimate_tokens
from pipeline.tasks.packing import packed_shape, render_pack

SAMPLE_ROWS = 500
# thinking tokens per visible output token, by level (minimal thinks not at all)
THINKING_RATIO = {"minimal": 0.0, "low": 1.0, "medium": 3.0, "high": 8.0}


def sample_tokens(task: Task, sample: list[Row], per: int) -> tuple[float, float]:
    """Estimated prompt and answer tokens per row when `per` rows go in one request."""
    if per == 1:
        shape = task.shape
        fixed = estimate_tokens(shape.system) + estimate_tokens(str(shape.schema)) + 8
        prompt = sum(fixed + estimate_tokens(task.render(r)) for r in sample) / len(sample)
        output = sum(task.expected_output_tokens(task.render(r)) for r in sample) / len(sample)
    else:
        shape = packed_shape(task)
        fixed = estimate_tokens(shape.system) + estimate_tokens(str(shape.schema)) + 8
        packs = [sample[i : i + per] for i in range(0, len(sample), per)]
        prompt = sum(fixed + estimate_tokens(render_pack(task, p)) for p in packs) / len(sample)
        output = sum(task.expected_output_tokens(r.text or "") + 6 for r in sample) / len(sample)
    return prompt, output


def read_sample(spec: JobSpec) -> list[Row]:
    """The first SAMPLE_ROWS readable rows of the input."""
    sample: list[Row] = []
    for batch in read_batches(spec.input, batch_rows=SAMPLE_ROWS):
        sample.extend(r for r in batch if r.valid)
        if len(sample) >= SAMPLE_ROWS:
            break
    return sample[:SAMPLE_ROWS]
