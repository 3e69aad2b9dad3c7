"""What both lanes need to ask one model: a group's prompt, its worst-case cost, the call's
record, and the task's checks as the judge sees them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from decimal import Decimal

from pipeline.core.pricing import Prices, worst_case_cost
from pipeline.core.records import CallRecord, Lane, Row, RowState
from pipeline.core.reply import Prompt, Reply, Shape
from pipeline.core.verdict import Output, Verdict
from pipeline.feedback import with_feedback
from pipeline.tasks.base import Task, estimate_tokens
from pipeline.tasks.packing import match_pack, packed_shape, render_pack

MAX_OUTPUT_CAP = 65_536
_ZERO = Decimal(0)


class TaskChecks:
    """A task's answer checks, for one row or a pack of rows (the judge's `Checks`)."""

    def __init__(self, task: Task):
        self.task = task

    def parse(self, text: str | None, row: Row) -> tuple[Output | None, str | None]:
        return self.task.parse(text, row)

    def parse_pack(
        self, rows: Sequence[Row], text: str | None
    ) -> list[tuple[Output | None, str | None]]:
        return [(item.output, item.error) for item in match_pack(self.task, rows, text)]


class Requests:
    """Builds one model's prompts and call records; numbers its calls."""

    def __init__(
        self, task: Task, model: str, max_output_tokens: int, output_cap: int, call_prefix: str
    ):
        self.task = task
        self.model = model
        self.max_output_tokens = max_output_tokens  # the job's budget for a single row
        self.output_cap = output_cap  # the model's own: a larger maxOutputTokens is a 400
        self._prefix = call_prefix
        self._numbers = itertools.count(1)
        self._pack_shape: Shape | None = None
        self._shape_tokens: dict[int, int] = {}

    def state(self, row: Row, *, flex: bool = False, burned: int = 0) -> RowState:
        return RowState(row, self.max_output_tokens, flex=flex, burned=burned)

    def prompt_for(self, group: list[RowState]) -> tuple[Prompt, int]:
        """The prompt for a group and its estimated total tokens (prompt + expected answer)."""
        task = self.task
        if len(group) == 1:
            shape = task.shape
            user = task.render(group[0].row)
            if group[0].feedback is not None:
                user = with_feedback(user, group[0].feedback)
            max_tokens = group[0].max_tokens
            expected = task.expected_output_tokens(user)
        else:
            if self._pack_shape is None:
                self._pack_shape = packed_shape(task)
            shape = self._pack_shape
            rows = [s.row for s in group]
            user = render_pack(task, rows)
            expected = sum(task.expected_output_tokens(r.text or "") + 6 for r in rows)
            max_tokens = min(self.output_cap, max(max(s.max_tokens for s in group), expected * 2))
        fixed = self._shape_tokens.get(id(shape))
        if fixed is None:
            fixed = estimate_tokens(shape.system) + estimate_tokens(str(shape.schema)) + 8
            self._shape_tokens[id(shape)] = fixed
        prompt_tokens = fixed + estimate_tokens(user)
        return Prompt(shape, user, max_tokens), prompt_tokens + expected

    def reserve_for(self, prompt: Prompt, est_tokens: int, prices: Prices, capped: bool) -> Decimal:
        """What a call may cost at worst: held against a budget cap until it is settled."""
        if not capped:  # the worst case matters only against a cap
            return _ZERO
        est_prompt = est_tokens - self.task.expected_output_tokens(prompt.user)
        return worst_case_cost(int(est_prompt * 1.5) + 64, prompt.max_output_tokens, prices)

    def call_record(
        self,
        group: list[RowState],
        reply: Reply,
        verdict: Verdict,
        when: tuple[float, float],
        lane: Lane,
        cost: Decimal,
        pool: str | None = None,
        call_id: str | None = None,
    ) -> CallRecord:
        """The call's record: `when` is its start (seconds since the epoch) and its latency in
        seconds."""
        started, latency = when
        if len(group) == 1:  # most calls: no generators
            state = group[0]
            row_ids: tuple[str, ...] = (state.row.id,)
            attempt = state.calls
        else:
            row_ids = tuple([s.row.id for s in group])
            attempt = max([s.calls for s in group])
        # plain strings in records (`_value_`: the member's value without the enum property)
        return CallRecord(
            call_id or f"{self._prefix}-{next(self._numbers)}",
            row_ids,
            attempt,
            started,
            latency * 1000,
            reply.http_status or None,
            verdict.outcome._value_,
            verdict.error,
            reply.usage,
            cost,
            self.model,
            reply.model_version,
            reply.response_id,
            lane._value_,
            pool,
        )
