"""The verdict on one call: which rows are final, which go again and when, and what the lane
that owns the call should be told. Every retry decision of the row lifecycle is made here.

`Judge.verdict` is pure apart from updating the `RowState`s it is given (their attempts, bill
and last error): it never sleeps, sends, or touches flow control. A rate-limited reply comes
back as a signal (`Verdict.rate_limited`, `retry_after`); the online lane passes it to its own
flow control, the batch lane has none to pass it to.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

from pipeline.core.records import CallOutcome, ResultRecord, Row, RowState, Status
from pipeline.core.reply import Reply, ReplyKind
from pipeline.core.retry import Action, ErrorClass, RetryPolicy
from pipeline.core.usage import ZERO, Usage

Output = dict[str, Any]
Trigger = Literal["invalid", "failed"]
MAX_SHED = 200  # a row Flex refuses this often fails (the auto lane moves it long before)


class Checks(Protocol):
    """The task's side of judging: is this answer valid for this row (alone, or in a pack)?"""

    def parse(self, text: str | None, row: Row) -> tuple[Output | None, str | None]: ...

    def parse_pack(
        self, rows: Sequence[Row], text: str | None
    ) -> list[tuple[Output | None, str | None]]: ...


@dataclass(slots=True)
class Retry:
    """Rows that go again together, after `delay` seconds."""

    rows: list[RowState]
    delay: float = 0.0


@dataclass(slots=True)
class Verdict:
    """What one call came to. The lane stores `finals`, sends `retry` again, and acts on the
    signals: `rate_limited` (tell flow control, `retry_after` seconds), `stop` (the provider
    refused the job) and `off_flex` (rows the Flex tier keeps refusing)."""

    outcome: CallOutcome
    finals: list[ResultRecord] = field(default_factory=list)
    retry: list[Retry] = field(default_factory=list)
    error: str | None = None
    rate_limited: bool = False
    retry_after: float | None = None
    stop: bool = False
    off_flex: list[RowState] = field(default_factory=list)

    @property
    def delay(self) -> float:
        return max((r.delay for r in self.retry), default=0.0)

    def again(self) -> list[list[RowState]]:
        return [r.rows for r in self.retry]


@dataclass(frozen=True, slots=True)
class Rules:
    """How a job judges answers: the job file's limits and task, as the judge needs them."""

    checks: Checks
    policy: RetryPolicy
    model: str
    output_cap: int  # the model's own: a larger output budget is a 400
    feedback: bool = True  # tell the model why its last answer was refused
    keep: tuple[str, ...] = ()


class Judge:
    """Turns (rows, reply) into a Verdict under one job's Rules; builds the final records."""

    def __init__(
        self,
        rules: Rules,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,  # the results' finished_at
    ):
        self.rules = rules
        self._rng = rng or random.Random(0)
        self._clock = clock

    # -- final records -----------------------------------------------------------------------
    def final(
        self, state: RowState, status: Status, output: Output | None, error: str | None
    ) -> ResultRecord:
        keep = self.rules.keep
        row = state.row
        return ResultRecord(
            row.id,
            row.pos,
            status._value_,  # a plain string in records: JSON and Arrow take it as it is
            output,
            error,
            state.calls,
            state.usage,
            state.cost,
            {k: row.fields.get(k) for k in keep} if keep else None,
            self._clock(),
            model=self.rules.model,
        )

    def _fail(self, state: RowState, error: str) -> ResultRecord:
        return self.final(state, Status.FAILED, None, error)

    # -- the verdict on a reply ----------------------------------------------------------------
    def verdict(self, group: list[RowState], max_output_tokens: int, reply: Reply) -> Verdict:
        """The verdict on a reply to a call that carried `group` with that output budget."""
        if reply.kind is ReplyKind.OK:
            return self._answered(group, reply)
        if reply.kind is ReplyKind.BLOCKED:
            return self._blocked(group, reply)
        if reply.kind is ReplyKind.TRUNCATED:
            return self._truncated(group, max_output_tokens, reply)
        return self._error(group, reply)

    def _answered(self, group: list[RowState], reply: Reply) -> Verdict:
        checks = self.rules.checks
        if len(group) == 1:
            answers = [checks.parse(reply.text, group[0].row)]
        else:
            answers = checks.parse_pack([s.row for s in group], reply.text)
        v = Verdict(CallOutcome.OK)
        for state, (output, error) in zip(group, answers, strict=True):
            if output is not None:
                v.finals.append(self.final(state, Status.OK, output, None))
                continue
            v.outcome = CallOutcome.INVALID_OUTPUT
            v.error = v.error or error
            self._invalid(state, error or "invalid answer", v)
        return v

    def _invalid(self, state: RowState, error: str, v: Verdict) -> None:
        state.burned += 1
        state.last_error = error
        state.invalid = True
        if self.rules.feedback:
            state.feedback = error
        if state.burned >= self.rules.policy.max_attempts:
            v.finals.append(self._fail(state, f"invalid answer: {error}"))
        else:
            v.retry.append(Retry([state]))

    def _blocked(self, group: list[RowState], reply: Reply) -> Verdict:
        v = Verdict(CallOutcome.BLOCKED, error=reply.error)
        if len(group) == 1:
            output = {"blocked": True, "block": reply.block or {}}
            v.finals.append(self.final(group[0], Status.BLOCKED, output, reply.error))
            return v
        # a pack was blocked as a whole: find the culprit by sending each row alone
        return self._alone(group, v)

    def _alone(self, group: list[RowState], v: Verdict) -> Verdict:
        for state in group:
            state.burned += 1
            v.retry.append(Retry([state]))
        return v

    def _truncated(self, group: list[RowState], max_output_tokens: int, reply: Reply) -> Verdict:
        v = Verdict(CallOutcome.TRUNCATED, error=reply.error)
        bigger = min(self.rules.output_cap, max_output_tokens * 2)
        going: list[RowState] = []
        for state in group:
            state.burned += 1
            state.max_tokens = max(state.max_tokens, bigger)
            state.invalid = False
            state.last_error = f"answer cut off at {max_output_tokens} output tokens"
            if state.burned >= self.rules.policy.max_attempts:
                v.finals.append(self._fail(state, f"{state.last_error} (MAX_TOKENS)"))
            else:
                going.append(state)
        if len(going) > 1:  # a smaller pack needs a smaller answer
            half = len(going) // 2
            v.retry += [Retry(going[:half]), Retry(going[half:])]
        elif going:
            v.retry.append(Retry(going))
        return v

    def _error(self, group: list[RowState], reply: Reply) -> Verdict:
        cls = reply.error_class or ErrorClass.TRANSIENT
        error = reply.error or cls.value
        if cls is ErrorClass.STOP:
            return Verdict(CallOutcome.STOPPED, error=error, stop=True)
        if cls is ErrorClass.BAD_REQUEST and len(group) > 1:
            # one row may have caused it: each row alone gets its own verdict
            return self._alone(group, Verdict(CallOutcome.FAILED, error=error))
        limited = cls is ErrorClass.RATE_LIMITED
        v = Verdict(CallOutcome.FAILED, error=error, rate_limited=limited)
        v.retry_after = reply.retry_after
        alive: list[RowState] = []
        delay = 0.0
        for state in group:
            if limited:
                state.rate_limited += 1
            else:
                state.burned += 1
            state.last_error = error
            state.invalid = False
            decision = self.rules.policy.decide(
                cls, state.burned, state.rate_limited, self._rng, reply.retry_after
            )
            if decision.action is Action.RETRY:
                alive.append(state)
                delay = max(delay, decision.delay)
            else:
                v.finals.append(self._fail(state, _failed_reason(state, error)))
        if alive:
            v.retry.append(Retry(alive, delay))
        if limited:
            v.outcome = CallOutcome.RATE_LIMITED
        elif "timeout" in error:
            v.outcome = CallOutcome.TIMEOUT
        elif alive:
            v.outcome = CallOutcome.RETRIED
        return v

    # -- verdicts without a usable reply -------------------------------------------------------
    def unanswered(self, group: list[RowState], why: str, unit: str = "batches") -> Verdict:
        """Rows a finished provider batch holds no answer for: again, up to max_attempts."""
        v = Verdict(CallOutcome.FAILED, error=why)
        back: list[RowState] = []
        for state in group:
            state.burned += 1
            state.last_error = why
            if state.burned >= self.rules.policy.max_attempts:
                v.finals.append(self._fail(state, f"after {state.burned} {unit}: {why}"))
            else:
                back.append(state)
        if back:
            v.retry.append(Retry(back))
        return v

    def in_outage(self, group: list[RowState], reply: Reply) -> Verdict:
        """A call that failed inside an outage: not an attempt at its rows; they go again once
        the provider answers (the online lane waits for that)."""
        for state in group:
            state.calls -= 1
        return Verdict(CallOutcome.OUTAGE, retry=[Retry(group)], error=reply.error)

    def shed(self, group: list[RowState], reply: Reply, move_after: int | None) -> Verdict:
        """Flex refused the call: no attempt burned, nothing billed. Rows go to Flex again
        later; with `move_after` (the auto lane) rows refused that often move off Flex."""
        v = Verdict(CallOutcome.SHED, error=f"flex refused: {reply.error or 'no capacity'}")
        again: list[RowState] = []
        for state in group:
            state.shed += 1
            state.calls -= 1  # a refusal is not an attempt at the row
            if move_after is not None and state.shed >= move_after:
                v.off_flex.append(state)
            elif state.shed >= MAX_SHED:
                v.finals.append(self._fail(state, f"Flex refused it {state.shed} times"))
            else:
                again.append(state)
        if again:
            shed = max(s.shed for s in again)
            wait = reply.retry_after or self.rules.policy.backoff(shed, self._rng)
            v.retry.append(Retry(again, wait))
        return v

    def hold(self, group: list[RowState], v: Verdict) -> None:
        """While most calls fail (an outage may be starting), a row's last attempt does not fail
        it: the row waits, at most max_attempts times, for the outage breaker's verdict."""
        by_id = {s.row.id: s for s in group}
        held: list[RowState] = []
        for result in list(v.finals):
            kept = by_id.get(result.row_id)
            if result.status != Status.FAILED or kept is None:
                continue
            if kept.held >= self.rules.policy.max_attempts:
                continue
            kept.held += 1
            v.finals.remove(result)
            held.append(kept)
        if held:
            delay = self.rules.policy.backoff(max(s.burned for s in held), self._rng)
            v.retry.append(Retry(held, delay))

    def escalating(
        self, group: list[RowState], v: Verdict, on: frozenset[Trigger]
    ) -> list[RowState]:
        """Take out of `v.finals` the failed rows that go to a second model instead."""
        if not on or not v.finals:
            return []
        failed = {r.row_id for r in v.finals if r.status == Status.FAILED}
        up = [s for s in group if s.row.id in failed and escalates(s.invalid, on)]
        if up:
            moving = {s.row.id for s in up}
            v.finals = [r for r in v.finals if r.row_id not in moving]
        return up


def escalates(invalid: bool, on: frozenset[Trigger]) -> bool:
    """Whether a row the first model gave up on goes to the second one."""
    return ("invalid" if invalid else "failed") in on


def charge(
    group: list[RowState], usage: Usage, cost: Decimal, share_cost: Callable[[Usage], Decimal]
) -> None:
    """Each row of a call carries its exact share of the call's tokens and cost."""
    if len(group) == 1:  # the whole call: its cost is already known
        state = group[0]
        state.calls += 1
        # a row's first bill (most rows) is the call's own: no new Usage, no Decimal sum
        state.usage = usage if state.usage is ZERO else state.usage + usage
        state.cost = state.cost + cost if state.cost else cost
        return
    for state, share in zip(group, usage.split(len(group)), strict=True):
        state.calls += 1
        state.usage = state.usage + share
        state.cost += share_cost(share)


def _failed_reason(state: RowState, error: str) -> str:
    if state.rate_limited and state.burned == 0:
        return f"rate limited {state.rate_limited} times: {error}"
    return f"after {state.burned} attempts: {error}" if state.burned > 1 else error
