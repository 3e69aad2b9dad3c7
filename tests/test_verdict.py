"""The verdict on a call, in process: every reply kind x one row / a pack x attempts left /
exhausted, and the verdicts without a usable reply (outage, Flex refusal, missing batch answer).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import anyio
import pytest

from pipeline.budget import Budget
from pipeline.core.breaker import Breaker, BreakerConfig
from pipeline.core.records import CallOutcome, Outcome, Row, RowState, Status
from pipeline.core.reply import Reply, ReplyKind
from pipeline.core.retry import ErrorClass, RetryPolicy
from pipeline.core.usage import Usage
from pipeline.core.verdict import Judge, Retry, Rules, charge
from pipeline.lanes.api import SUCCEEDED, RemoteBatch
from pipeline.lanes.build import build_provider, online_lane
from pipeline.lanes.online import Client, Gates, InFlightCounter, Routing
from pipeline.lanes.runner import BatchOutcome, BatchRunner, JobControl, LocalBatch
from pipeline.limits import FlowControl
from pipeline.tasks import build_task
from tests.support import make_spec

MAX_ATTEMPTS = 3
WHEN = datetime(2026, 12, 2, tzinfo=UTC).timestamp()


class LabelChecks:
    """A task's checks, reduced: an answer is valid when it is JSON with a `label`."""

    def parse(self, text: str | None, row: Row) -> tuple[dict[str, Any] | None, str | None]:
        try:
            answer = json.loads(text or "")
        except json.JSONDecodeError:
            return None, "not JSON"
        if "label" not in answer:
            return None, "no label"
        return {"label": answer["label"]}, None

    def parse_pack(
        self, rows: Sequence[Row], text: str | None
    ) -> list[tuple[dict[str, Any] | None, str | None]]:
        items = {i["id"]: i for i in json.loads(text or "{}").get("items", [])}
        return [self.parse(json.dumps(items.get(r.id, {})), r) for r in rows]


def judge(feedback: bool = True) -> Judge:
    rules = Rules(LabelChecks(), RetryPolicy(max_attempts=MAX_ATTEMPTS), "m", 8192, feedback)
    return Judge(rules, random.Random(1), clock=lambda: WHEN)


def group(n: int, burned: int) -> list[RowState]:
    return [RowState(Row(f"r{i}", str(i), f"text {i}"), 256, burned=burned) for i in range(n)]


def ok_text(n: int, valid: int) -> str:
    """A pack answer where the first `valid` rows are answered, the rest without a label."""
    if n == 1:
        return json.dumps({"label": "bug"} if valid else {"nope": 1})
    items = [{"id": f"r{i}", **({"label": "bug"} if i < valid else {})} for i in range(n)]
    return json.dumps({"items": items})


def error(cls: ErrorClass, status: int, text: str = "boom", after: float | None = None) -> Reply:
    return Reply(ReplyKind.ERROR, status, error_class=cls, error=text, retry_after=after)


@dataclass(frozen=True)
class Case:
    reply: Reply
    outcome: CallOutcome
    final: Status | None  # what every row becomes when final (None: none is final)
    retried: bool  # the rows go again when attempts are left


ONE_LEFT, EXHAUSTED = 0, MAX_ATTEMPTS - 1  # attempts burned before the call
CASES = {
    "ok": Case(Reply(ReplyKind.OK, 200, text="{}"), CallOutcome.OK, Status.OK, False),
    "invalid": Case(
        Reply(ReplyKind.OK, 200, text="x"), CallOutcome.INVALID_OUTPUT, Status.FAILED, True
    ),
    "blocked": Case(Reply(ReplyKind.BLOCKED, 200, error="SAFETY"), CallOutcome.BLOCKED, None, True),
    "truncated": Case(Reply(ReplyKind.TRUNCATED, 200), CallOutcome.TRUNCATED, Status.FAILED, True),
    "429": Case(
        error(ErrorClass.RATE_LIMITED, 429, after=7.0), CallOutcome.RATE_LIMITED, None, True
    ),
    "stop": Case(error(ErrorClass.STOP, 403), CallOutcome.STOPPED, None, False),
    "bad_request": Case(
        error(ErrorClass.BAD_REQUEST, 400), CallOutcome.FAILED, Status.FAILED, False
    ),
    "5xx": Case(error(ErrorClass.TRANSIENT, 503), CallOutcome.RETRIED, Status.FAILED, True),
    "timeout": Case(
        error(ErrorClass.TRANSIENT, 0, "read timeout"), CallOutcome.TIMEOUT, Status.FAILED, True
    ),
}


def reply_for(name: str, n: int) -> Reply:
    case = CASES[name]
    if name == "ok":
        return Reply(ReplyKind.OK, 200, text=ok_text(n, n))
    if name == "invalid":
        return Reply(ReplyKind.OK, 200, text=ok_text(n, 0))
    return case.reply


@pytest.mark.parametrize("burned", [ONE_LEFT, EXHAUSTED], ids=["attempts_left", "last_attempt"])
@pytest.mark.parametrize("size", [1, 4], ids=["single", "packed"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_reply_kind(name: str, size: int, burned: int) -> None:
    case = CASES[name]
    rows = group(size, burned)
    v = judge().verdict(rows, 256, reply_for(name, size))
    retried = {s.row.id for r in v.retry for s in r.rows}
    final = {r.row_id: r.status for r in v.finals}
    # every row is either final or sent again, never both, never lost (a stop keeps them pending)
    assert not retried & set(final)
    if name == "stop":
        assert v.stop and not final and not retried and v.outcome is CallOutcome.STOPPED
        return
    assert retried | set(final) == {s.row.id for s in rows}
    packed_alone = size > 1 and name in ("blocked", "bad_request")
    if packed_alone:  # a pack refused as a whole: each row goes again alone to find the culprit
        assert [len(r.rows) for r in v.retry] == [1] * size and not final
        return
    last = burned == EXHAUSTED
    # a transient fault on the last attempt is a failed call, not a retried one
    assert v.outcome is (CallOutcome.FAILED if name == "5xx" and last else case.outcome)
    if name == "ok" or (name == "blocked" and size == 1) or name == "bad_request":
        expected = Status.BLOCKED if name == "blocked" else case.final
        assert set(final.values()) == {expected} and not retried
    elif name == "429":  # a 429 burns no attempt: it waits the server's delay, whatever is left
        assert not final and v.rate_limited and v.retry_after == 7.0 and v.delay >= 7.0
        assert all(s.burned == burned and s.rate_limited == 1 for s in rows)
    elif last:
        assert set(final.values()) == {Status.FAILED} and not retried
    else:
        assert not final and retried == {s.row.id for s in rows}
    if name != "429":
        assert not v.rate_limited


def test_a_truncated_pack_is_split_in_two_with_a_bigger_budget() -> None:
    rows = group(5, 0)
    v = judge().verdict(rows, 300, Reply(ReplyKind.TRUNCATED, 200))
    assert [len(r.rows) for r in v.retry] == [2, 3]
    assert all(s.max_tokens == 600 and s.burned == 1 for s in rows)


def test_a_pack_with_some_invalid_answers_keeps_the_good_ones() -> None:
    rows = group(4, 0)
    v = judge().verdict(rows, 256, Reply(ReplyKind.OK, 200, text=ok_text(4, 3)))
    assert v.outcome is CallOutcome.INVALID_OUTPUT
    assert [r.row_id for r in v.finals] == ["r0", "r1", "r2"]
    assert [[s.row.id for s in r.rows] for r in v.retry] == [["r3"]]
    assert rows[3].feedback == "no label" and rows[3].invalid


def test_feedback_off_tells_the_model_nothing() -> None:
    rows = group(1, 0)
    judge(feedback=False).verdict(rows, 256, Reply(ReplyKind.OK, 200, text="x"))
    assert rows[0].feedback is None and rows[0].invalid


def test_rate_limits_end_after_max_rate_limited() -> None:
    rows = group(1, 0)
    rows[0].rate_limited = RetryPolicy().max_rate_limited - 1
    v = judge().verdict(rows, 256, error(ErrorClass.RATE_LIMITED, 429))
    assert [r.status for r in v.finals] == [Status.FAILED]
    assert v.finals[0].error is not None and v.finals[0].error.startswith("rate limited")


def test_an_outage_call_is_no_attempt() -> None:
    rows = group(2, 1)
    for s in rows:
        s.calls = 2
    v = judge().in_outage(rows, error(ErrorClass.TRANSIENT, 503))
    assert v.outcome is CallOutcome.OUTAGE and v.retry == [Retry(rows)]
    assert [s.calls for s in rows] == [1, 1] and [s.burned for s in rows] == [1, 1]


@pytest.mark.parametrize(("move_after", "moved"), [(None, 0), (2, 1)])
def test_flex_refusals_wait_or_move_off_flex(move_after: int | None, moved: int) -> None:
    rows = group(2, 0)
    rows[0].shed = 1
    v = judge().shed(rows, Reply(ReplyKind.ERROR, 503, capacity=True, retry_after=2.0), move_after)
    assert v.outcome is CallOutcome.SHED and len(v.off_flex) == moved
    assert sum(len(r.rows) for r in v.retry) == 2 - moved and v.delay == 2.0


def test_while_most_calls_fail_a_last_attempt_is_held_not_failed() -> None:
    rows = group(1, EXHAUSTED)
    j = judge()
    v = j.verdict(rows, 256, error(ErrorClass.TRANSIENT, 503))
    assert [r.status for r in v.finals] == [Status.FAILED]
    j.hold(rows, v)
    assert not v.finals and v.again() == [rows] and rows[0].held == 1


def test_a_row_with_no_batch_answer_goes_again_until_its_attempts_end() -> None:
    j = judge()
    assert j.unanswered(group(2, 0), "batch expired").again()
    v = j.unanswered(group(2, EXHAUSTED), "batch expired")
    assert not v.retry and {r.error for r in v.finals} == {"after 3 batches: batch expired"}


def test_escalating_takes_the_failed_rows_the_triggers_name() -> None:
    rows = group(2, EXHAUSTED)
    j = judge()
    v = j.verdict(rows, 256, Reply(ReplyKind.OK, 200, text=ok_text(2, 1)))
    up = j.escalating(rows, v, frozenset({"invalid"}))
    assert [s.row.id for s in up] == ["r1"] and [r.row_id for r in v.finals] == ["r0"]
    assert j.escalating(rows, v, frozenset({"failed"})) == []


def test_a_packed_call_charges_each_row_its_share() -> None:
    rows = group(3, 0)
    usage = Usage(input=100, output=31)
    charge(rows, usage, Decimal("0.3"), lambda u: Decimal(u.input + u.output))
    assert sum(s.usage.input for s in rows) == 100
    assert sum(s.usage.output for s in rows) == 31
    assert sum(s.cost for s in rows) == 131
    assert all(s.calls == 1 for s in rows)


class _Results:
    """A Batch API that only answers `results`: the finished batch's lines."""

    requests = 0

    def __init__(self, answers: dict[str, Reply]):
        self.answers = answers

    async def results(self, remote: RemoteBatch) -> dict[str, Reply]:
        return self.answers


class RecordingFlow(FlowControl):
    """Flow control that notes what it is told."""

    def __init__(self) -> None:
        super().__init__(600, 0, lambda: 100.0)
        self.told: list[tuple[str, Any]] = []

    def on_response(self, rate_limited: bool) -> None:
        self.told.append(("response", rate_limited))
        super().on_response(rate_limited)

    def on_rate_limited(self, delay: float | None) -> None:
        self.told.append(("429", delay))
        super().on_rate_limited(delay)


def test_a_429_line_in_a_batch_result_changes_nothing_online(tmp_path: Any) -> None:
    """Both lanes wired as the engine wires them (auto lane: one judge, one Asking). A 429
    inside a batch result is retried in a later batch; the online lane's flow control never
    hears of it, so its gate and rate are untouched."""
    spec = make_spec(None, tmp_path / "in.jsonl", extra={"provider": {"lane": "auto"}})
    task = build_task(spec)
    flow = RecordingFlow()
    gates = Gates(flow, Budget(None), Breaker(BreakerConfig(), lambda: 100.0))
    client = Client(build_provider(spec), cast(Any, None), cast(Any, None), InFlightCounter(4))
    online = online_lane(spec, task, (client, gates, Routing("auto")), lambda: False, 1)
    control = JobControl("t", 1, lambda: False, lambda reason, message: None)
    api = cast(Any, _Results({"0": error(ErrorClass.RATE_LIMITED, 429, after=30.0)}))
    runner = BatchRunner(
        spec.batch, online.asking, api, client.provider, cast(Any, None), Budget(None), control
    )
    rows = group(1, 0)
    batch = LocalBatch("b1", [rows], Decimal(0))

    async def main() -> list[BatchOutcome | Outcome]:
        send, recv = anyio.create_memory_object_stream[BatchOutcome | Outcome](8)
        runner.out = send
        prompt = online.requests.prompt_for(rows)[0]
        await runner._finish(batch, [prompt], RemoteBatch("b1", SUCCEEDED, None))
        send.close()
        return [x async for x in recv]

    [done] = anyio.run(main)
    assert flow.told == [] and flow.gate.remaining() == 0
    assert isinstance(done, BatchOutcome)
    assert [c.outcome for c in done.calls] == ["rate_limited"] and not done.results
    assert runner._buffer == [rows] and rows[0].rate_limited == 1  # waits for the next batch
    # the same reply to an online call does reach it
    v = online.judge.verdict(group(1, 0), 256, error(ErrorClass.RATE_LIMITED, 429, after=30.0))
    assert v.rate_limited and v.retry_after == 30.0
