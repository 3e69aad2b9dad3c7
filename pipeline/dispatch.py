"""One work item's life: build the prompt, pass flow control and budget, call, judge, retry.

The engine hands a Dispatcher work items (one row, or a pack of rows) and receives, per call,
the call record plus any results that became final. Nothing here knows the wire format.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import anyio

from pipeline.auth import Auth
from pipeline.budget import Budget
from pipeline.errors import ProviderStop
from pipeline.limits import Flow
from pipeline.pricing import LANE_FACTOR, Prices, cost_usd, lane_prices, worst_case_cost
from pipeline.providers.base import Prompt, Provider, Reply, ReplyKind, Shape
from pipeline.retry import Action, ErrorClass, RetryPolicy
from pipeline.sources import Row
from pipeline.store import CallRecord, ResultRecord, now_utc
from pipeline.tasks.base import Task, estimate_tokens
from pipeline.tasks.packing import match_pack, packed_shape, render_pack
from pipeline.transport import Transport, TransportError
from pipeline.usage import ZERO, Usage

MAX_OUTPUT_CAP = 65_536


_ZERO = Decimal(0)


class InFlightCounter:
    """Counts requests in flight where the number of workers already bounds them."""

    def __init__(self, total: int):
        self.total_tokens = total
        self.borrowed_tokens = 0

    async def __aenter__(self) -> None:
        self.borrowed_tokens += 1

    async def __aexit__(self, *exc: object) -> None:
        self.borrowed_tokens -= 1


class StopDispatch(Exception):
    """Raised inside a worker when the job as a whole must stop (provider stop or budget)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # "provider" | "budget"


@dataclass
class RowState:
    row: Row
    max_tokens: int
    calls: int = 0  # every call that carried this row
    burned: int = 0  # attempts that count against max_attempts (429s excluded)
    rate_limited: int = 0
    usage: Usage = ZERO
    cost: Decimal = field(default_factory=lambda: Decimal(0))
    last_error: str | None = None
    tier: str | None = None  # "flex" while the row goes through Flex
    shed: int = 0  # Flex refusals: not billed, not an attempt burned


@dataclass(frozen=True, slots=True)
class Outcome:
    call: CallRecord
    results: list[ResultRecord]


Emit = Callable[[Outcome], Awaitable[None]]
ToBatch = Callable[[list[RowState]], Awaitable[None]]
MAX_SHED = 200  # a row Flex refuses this often fails (the auto lane moves it long before)


class Dispatcher:
    def __init__(
        self,
        *,
        job: str,
        model: str,
        task: Task,
        provider: Provider,
        transport: Transport,
        auth: Auth,
        flow: Flow,
        budget: Budget,
        prices: Prices,
        policy: RetryPolicy,
        max_output_tokens: int,
        run_no: int,
        in_flight: anyio.CapacityLimiter | InFlightCounter,
        stopping: Callable[[], bool],
        keep: tuple[str, ...] = (),
        seed: int = 0,
        lane: str = "standard",
        to_batch: ToBatch | None = None,
        deadline: datetime | None = None,
        flex_sheds: int = 3,
        batch_hours: float = 24.0,
        output_cap: int = MAX_OUTPUT_CAP,
    ):
        self.job = job
        self.model = model
        self.task = task
        self.provider = provider
        self.transport = transport
        self.auth = auth
        self._url = provider.url()
        self.flow = flow
        self.budget = budget
        self.prices = prices
        self.lane_prices = {name: lane_prices(prices, name) for name in LANE_FACTOR}
        self.lane = lane
        self.to_batch = to_batch
        self.deadline = deadline
        self.flex_sheds = flex_sheds
        self.batch_hours = batch_hours
        self.shed = 0
        self.moved: dict[str, int] = {"batch": 0, "standard": 0}
        self.policy = policy
        self.max_output_tokens = max_output_tokens
        self.output_cap = output_cap  # the model's own: a larger maxOutputTokens is a 400
        self.in_flight = in_flight
        self.stopping = stopping
        self.keep = keep
        self._run_no = run_no
        self._calls = 0
        self._rng = random.Random(seed)
        self._pack_shape: Shape | None = None
        self._shape_tokens: dict[int, int] = {}
        self.latency_ewma = 1.0
        self.rate_limited = 0
        self.failures = 0

    # -- prompt building -------------------------------------------------------------------
    def prompt_for(self, group: list[RowState]) -> tuple[Prompt, int]:
        """The prompt for a group and its estimated total tokens (prompt + expected answer)."""
        if len(group) == 1:
            shape = self.task.shape
            user = self.task.render(group[0].row)
            max_tokens = group[0].max_tokens
            expected = self.task.expected_output_tokens(user)
        else:
            if self._pack_shape is None:
                self._pack_shape = packed_shape(self.task)
            shape = self._pack_shape
            rows = [s.row for s in group]
            user = render_pack(self.task, rows)
            expected = sum(self.task.expected_output_tokens(r.text or "") + 6 for r in rows)
            max_tokens = min(self.output_cap, max(max(s.max_tokens for s in group), expected * 2))
        fixed = self._shape_tokens.get(id(shape))
        if fixed is None:
            fixed = estimate_tokens(shape.system) + estimate_tokens(str(shape.schema)) + 8
            self._shape_tokens[id(shape)] = fixed
        prompt_tokens = fixed + estimate_tokens(user)
        return Prompt(shape, user, max_tokens), prompt_tokens + expected

    # -- the attempt loop ------------------------------------------------------------------
    async def process(self, rows: list[Row], emit: Emit) -> None:
        """Run one work item to the end: every row gets a result, or stays pending on stop."""
        tier = "flex" if self.lane in ("flex", "auto") else None
        todo: list[list[RowState]] = [
            [RowState(r, self.max_output_tokens, tier=tier) for r in rows]
        ]
        while todo:
            if self.stopping():
                return
            group = todo.pop()
            retry_groups = await self._attempt(group, emit)
            todo.extend(retry_groups)

    def reserve_for(self, prompt: Prompt, est_tokens: int, prices: Prices) -> Decimal:
        """What a call may cost at worst: counted against the budget until it is settled."""
        if self.budget.cap is None:  # the worst case matters only against a cap
            return _ZERO
        est_prompt = est_tokens - self.task.expected_output_tokens(prompt.user)
        return worst_case_cost(int(est_prompt * 1.5) + 64, prompt.max_output_tokens, prices)

    async def _attempt(self, group: list[RowState], emit: Emit) -> list[list[RowState]]:
        prompt, est_tokens = self.prompt_for(group)
        tier = group[0].tier
        lane = "flex" if tier == "flex" else "standard"
        prices = self.lane_prices[lane]
        reserve = self.reserve_for(prompt, est_tokens, prices)
        if not await self.budget.reserve(reserve):
            raise StopDispatch("budget", "budget.max_usd reached")
        try:
            await self.flow.acquire(est_tokens)
            if self.stopping():
                self.budget.settle(reserve, Decimal(0))
                return []
            reply, started, latency = await self._send(prompt, tier)
        except BaseException:
            self.budget.settle(reserve, Decimal(0))
            raise
        call_cost = cost_usd(reply.usage, prices)
        self.budget.settle(reserve, call_cost)
        self.flow.settle_tokens(est_tokens, reply.usage.total)
        shed = tier == "flex" and reply.kind is ReplyKind.ERROR and reply.capacity
        if not shed:  # a Flex refusal says nothing about the key's rate limits
            self.flow.on_response(reply.error_class is ErrorClass.RATE_LIMITED)
        self.charge(group, reply, prices, call_cost)
        if shed:
            outcome, finals, retry, error = await self._shed(group, reply)
        else:
            outcome, finals, retry, error = self.judge(group, prompt, reply)
        call = self.call_record(group, reply, outcome, error, started, latency, lane, call_cost)
        await emit(Outcome(call, finals))
        if outcome == "stopped":
            if self.flow.bench_current(error or "the provider refused the key"):
                return [group]  # that key pool is out: its rows go to the others
            raise StopDispatch("provider", error or "the provider refused the job")
        if retry:
            delay = max(d for _, d in retry)
            if delay > 0:
                await anyio.sleep(delay)
        return [g for g, _ in retry]

    def charge(
        self, group: list[RowState], reply: Reply, prices: Prices, call_cost: Decimal
    ) -> None:
        """Each row of the call carries its exact share of the call's tokens and cost."""
        if len(group) == 1:  # the whole call: its cost is already known
            state = group[0]
            state.calls += 1
            state.usage = state.usage + reply.usage
            state.cost += call_cost
            return
        for state, share in zip(group, reply.usage.split(len(group)), strict=True):
            state.calls += 1
            state.usage = state.usage + share
            state.cost += cost_usd(share, prices)

    def call_record(
        self,
        group: list[RowState],
        reply: Reply,
        outcome: str,
        error: str | None,
        started: datetime,
        latency: float,
        lane: str,
        cost: Decimal,
        call_id: str | None = None,
    ) -> CallRecord:
        self._calls += 1
        return CallRecord(
            call_id=call_id or f"{self._run_no}-{self._calls}-{id(group) & 0xFFFF:x}",
            row_ids=tuple(s.row.id for s in group),
            attempt=max(s.calls for s in group),
            started_at=started,
            latency_ms=latency * 1000,
            http_status=reply.http_status or None,
            outcome=outcome,
            error=error,
            usage=reply.usage,
            cost_usd=cost,
            model=self.model,
            model_version=reply.model_version,
            response_id=reply.response_id,
            lane=lane,
            pool=self.flow.pool_name(),
        )

    async def _shed(
        self, group: list[RowState], reply: Reply
    ) -> tuple[str, list[ResultRecord], list[tuple[list[RowState], float]], str | None]:
        """Flex refused the call: no attempt burned, nothing billed. Try Flex again later, or
        (auto lane) move rows Flex keeps refusing to Batch, or to Standard near the deadline."""
        self.shed += 1
        error = f"flex refused: {reply.error or 'no capacity'}"
        finals: list[ResultRecord] = []
        again: list[RowState] = []
        moving: list[RowState] = []
        for state in group:
            state.shed += 1
            state.calls -= 1  # a refusal is not an attempt at the row
            if self.lane == "auto" and state.shed >= self.flex_sheds:
                moving.append(state)
            elif state.shed >= MAX_SHED:
                finals.append(
                    self.final(state, "failed", None, f"Flex refused it {state.shed} times")
                )
                self.failures += 1
            else:
                again.append(state)
        retry: list[tuple[list[RowState], float]] = []
        if moving:
            if self.to_batch is not None and self._batch_in_time():
                self.moved["batch"] += len(moving)
                await self.to_batch(moving)
            else:
                for state in moving:
                    state.tier = None
                self.moved["standard"] += len(moving)
                retry.append((moving, 0.0))
        if again:
            wait = reply.retry_after or self.policy.backoff(max(s.shed for s in again), self._rng)
            retry.append((again, wait))
        return "shed", finals, retry, error

    def _batch_in_time(self) -> bool:
        if self.deadline is None:
            return True
        left = (self.deadline - now_utc()).total_seconds()
        return left > self.batch_hours * 3600

    async def _send(self, prompt: Prompt, tier: str | None = None) -> tuple[Reply, datetime, float]:
        body = self.provider.encode(prompt, tier)
        async with self.in_flight:
            if self.auth.stale():
                try:
                    await self.auth.refresh()
                except ProviderStop as exc:  # no token: the job stops, its rows stay pending
                    raise StopDispatch("provider", str(exc)) from None
            started = now_utc()
            t0 = time.monotonic()
            try:
                resp = await self.transport.post(self._url, self.auth.headers, body)
            except TransportError as exc:
                latency = time.monotonic() - t0
                cls = ErrorClass.TRANSIENT
                return (
                    Reply(ReplyKind.ERROR, 0, error_class=cls, error=str(exc)[:300]),
                    started,
                    latency,
                )
            latency = time.monotonic() - t0
        self.latency_ewma = 0.9 * self.latency_ewma + 0.1 * latency
        return self.provider.parse(resp), started, latency

    # -- judging a reply -------------------------------------------------------------------
    def final(
        self, state: RowState, status: str, output: dict[str, Any] | None, error: str | None
    ) -> ResultRecord:
        fields = state.row.fields
        kept = {k: fields.get(k) for k in self.keep} if self.keep else None
        return ResultRecord(
            row_id=state.row.id,
            pos=state.row.pos,
            status=status,
            output=output,
            error=error,
            attempts=state.calls,
            usage=state.usage,
            cost_usd=state.cost,
            kept=kept,
            finished_at=now_utc(),
        )

    def judge(
        self, group: list[RowState], prompt: Prompt, reply: Reply
    ) -> tuple[str, list[ResultRecord], list[tuple[list[RowState], float]], str | None]:
        """(call outcome, final results, groups to retry with their delay, call error)."""
        finals: list[ResultRecord] = []
        retry: list[tuple[list[RowState], float]] = []
        if reply.kind is ReplyKind.OK:
            if len(group) == 1:
                state = group[0]
                output, error = self.task.parse(reply.text, state.row)
                if output is not None:
                    finals.append(self.final(state, "ok", output, None))
                    return "ok", finals, retry, None
                self._invalid(state, error or "invalid answer", finals, retry)
                return "invalid_output", finals, retry, error
            items = match_pack(self.task, [s.row for s in group], reply.text)
            bad = 0
            first_error = None
            for state, item in zip(group, items, strict=True):
                if item.output is not None:
                    finals.append(self.final(state, "ok", item.output, None))
                else:
                    bad += 1
                    first_error = first_error or item.error
                    self._invalid(state, item.error or "invalid answer", finals, retry)
            return ("ok" if bad == 0 else "invalid_output"), finals, retry, first_error

        if reply.kind is ReplyKind.BLOCKED:
            if len(group) == 1:
                state = group[0]
                output = {"blocked": True, "block": reply.block or {}}
                finals.append(self.final(state, "blocked", output, reply.error))
                return "blocked", finals, retry, reply.error
            # a pack was blocked as a whole: find the culprit by sending each row alone
            for state in group:
                state.burned += 1
                retry.append(([state], 0.0))
            return "blocked", finals, retry, reply.error

        if reply.kind is ReplyKind.TRUNCATED:
            bigger = min(self.output_cap, prompt.max_output_tokens * 2)
            for state in group:
                state.burned += 1
                state.max_tokens = max(state.max_tokens, bigger)
                state.last_error = f"answer cut off at {prompt.max_output_tokens} output tokens"
            exhausted = [s for s in group if s.burned >= self.policy.max_attempts]
            for state in exhausted:
                finals.append(self.final(state, "failed", None, f"{state.last_error} (MAX_TOKENS)"))
                self.failures += 1
            going = [s for s in group if s not in exhausted]
            if len(going) > 1:
                half = len(going) // 2
                retry += [(going[:half], 0.0), (going[half:], 0.0)]
            elif going:
                retry.append((going, 0.0))
            return "truncated", finals, retry, reply.error

        cls = reply.error_class or ErrorClass.TRANSIENT
        error = reply.error or cls.value
        if cls is ErrorClass.STOP:
            return "stopped", finals, retry, error
        if cls is ErrorClass.RATE_LIMITED:
            self.rate_limited += 1
            self.flow.on_rate_limited(reply.retry_after)
        if cls is ErrorClass.BAD_REQUEST and len(group) > 1:
            # one row may have caused it: each row alone gets its own verdict
            for state in group:
                state.burned += 1
                retry.append(([state], 0.0))
            return "failed", finals, retry, error
        alive: list[RowState] = []
        delay = 0.0
        for state in group:
            if cls is ErrorClass.RATE_LIMITED:
                state.rate_limited += 1
            else:
                state.burned += 1
            state.last_error = error
            decision = self.policy.decide(
                cls, state.burned, state.rate_limited, self._rng, reply.retry_after
            )
            if decision.action is Action.RETRY:
                alive.append(state)
                delay = max(delay, decision.delay)
            else:
                finals.append(self.final(state, "failed", None, _failed_reason(state, error)))
                self.failures += 1
        if alive:
            retry.append((alive, delay))
        if cls is ErrorClass.RATE_LIMITED:
            return "rate_limited", finals, retry, error
        if "timeout" in error:
            return "timeout", finals, retry, error
        return ("retried" if alive else "failed"), finals, retry, error

    def _invalid(
        self,
        state: RowState,
        error: str,
        finals: list[ResultRecord],
        retry: list[tuple[list[RowState], float]],
    ) -> None:
        state.burned += 1
        state.last_error = error
        if state.burned >= self.policy.max_attempts:
            finals.append(self.final(state, "failed", None, f"invalid answer: {error}"))
            self.failures += 1
        else:
            retry.append(([state], 0.0))


def _failed_reason(state: RowState, error: str) -> str:
    if state.rate_limited and state.burned == 0:
        return f"rate limited {state.rate_limited} times: {error}"
    return f"after {state.burned} attempts: {error}" if state.burned > 1 else error
