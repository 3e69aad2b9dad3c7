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
from pipeline.breaker import Breaker, BreakerConfig, BreakerState, Signal
from pipeline.budget import Budget
from pipeline.errors import ProviderStop
from pipeline.escalate import Trigger, escalates
from pipeline.feedback import with_feedback
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
    """Raised inside a worker when the job as a whole must stop (provider stop, outage, budget)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # "provider" | "outage" | "budget"


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
    feedback: str | None = None  # why the last answer was rejected, told on the next attempt
    invalid: bool = False  # the last attempt got an answer the checks refused
    # clock times of provider faults charged to the row; refunded if an outage covers them
    fault_times: list[float] = field(default_factory=list)
    held: int = 0  # last attempts not failed because most calls around them failed too


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
        feedback: bool = True,
        call_prefix: str | None = None,
        breaker: Breaker | None = None,
    ):
        self.job = job
        self.feedback = feedback
        self._call_prefix = call_prefix or str(run_no)
        self.escalate_to: Dispatcher | None = None  # [escalate]: the second model
        self.escalate_on: frozenset[Trigger] = frozenset()
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
        self.clock = time.monotonic
        self.breaker = breaker or Breaker(BreakerConfig(), self.clock)
        self._resumed = anyio.Event()  # set (and replaced) each time an outage ends
        self.outage_calls = 0  # calls that failed inside an outage: charged to no row

    # -- prompt building -------------------------------------------------------------------
    def prompt_for(self, group: list[RowState]) -> tuple[Prompt, int]:
        """The prompt for a group and its estimated total tokens (prompt + expected answer)."""
        if len(group) == 1:
            shape = self.task.shape
            user = self.task.render(group[0].row)
            if group[0].feedback is not None:
                user = with_feedback(user, group[0].feedback)
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
        await self._process([RowState(r, self.max_output_tokens, tier=tier) for r in rows], emit)

    def for_model(
        self, model: str, provider: Provider, prices: Prices, output_cap: int
    ) -> Dispatcher:
        """A dispatcher for a second model that shares this one's limits, budget and client."""
        return Dispatcher(
            job=self.job,
            model=model,
            task=self.task,
            provider=provider,
            transport=self.transport,
            auth=self.auth,
            flow=self.flow,
            budget=self.budget,
            prices=prices,
            policy=self.policy,
            max_output_tokens=self.max_output_tokens,
            run_no=self._run_no,
            in_flight=self.in_flight,
            stopping=self.stopping,
            keep=self.keep,
            lane=self.lane,
            deadline=self.deadline,
            flex_sheds=self.flex_sheds,
            batch_hours=self.batch_hours,
            output_cap=output_cap,
            feedback=self.feedback,
            call_prefix=f"{self._run_no}e",
        )

    async def take(self, states: list[RowState], emit: Emit) -> None:
        """Rows another model gave up on: a fresh set of attempts, their bill carried on."""
        for s in states:
            s.burned = s.rate_limited = 0
            s.feedback, s.invalid, s.last_error = None, False, None
            s.max_tokens = self.max_output_tokens
        await self._process(states, emit)

    async def _process(self, states: list[RowState], emit: Emit) -> None:
        todo: list[list[RowState]] = [states]
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
        self._refund(group)
        probe = await self._admit()
        if probe is None:  # stopping while paused: the rows stay pending
            return []
        prompt, est_tokens = self.prompt_for(group)
        tier = group[0].tier
        lane = "flex" if tier == "flex" else "standard"
        prices = self.lane_prices[lane]
        reserve = self.reserve_for(prompt, est_tokens, prices)
        try:
            if not await self.budget.reserve(reserve):
                raise StopDispatch("budget", "budget.max_usd reached")
            try:
                await self.flow.acquire(est_tokens)
                if self.stopping():
                    self.budget.settle(reserve, Decimal(0))
                    if probe:
                        self.breaker.abandon_probe()
                    return []
                reply, started, latency, kind = await self._send(prompt, tier)
            except BaseException:
                self.budget.settle(reserve, Decimal(0))
                raise
        except BaseException:
            if probe:
                self.breaker.abandon_probe()
            raise
        call_cost = cost_usd(reply.usage, prices)
        self.budget.settle(reserve, call_cost)
        self.flow.settle_tokens(est_tokens, reply.usage.total)
        shed = tier == "flex" and reply.kind is ReplyKind.ERROR and reply.capacity
        if not shed:  # a Flex refusal says nothing about the key's rate limits
            self.flow.on_response(reply.error_class is ErrorClass.RATE_LIMITED)
        signal = Signal.ANSWERED if shed else provider_signal(reply, kind)
        self._observe(signal, reply, probe)
        self.charge(group, reply, prices, call_cost)
        if signal.is_fault and self.breaker.covers(self.clock()):
            outcome, finals, retry, error = self._in_outage(group, reply)
        elif shed:
            outcome, finals, retry, error = await self._shed(group, reply)
        else:
            outcome, finals, retry, error = self.judge(group, prompt, reply)
            if signal.is_fault:
                self._hold(group, finals, retry)
        up: list[RowState] = []
        if self.escalate_to is not None and finals:
            finals, up = self._escalating(group, finals)
        call = self.call_record(group, reply, outcome, error, started, latency, lane, call_cost)
        await emit(Outcome(call, finals))
        if up:
            assert self.escalate_to is not None
            await self.escalate_to.take(up, emit)
        if outcome == "stopped":
            if self.flow.bench_current(error or "the provider refused the key"):
                return [group]  # that key pool is out: its rows go to the others
            raise StopDispatch("provider", error or "the provider refused the job")
        if retry:
            delay = max(d for _, d in retry)
            if delay > 0:
                await anyio.sleep(delay)
        return [g for g, _ in retry]

    def _escalating(
        self, group: list[RowState], finals: list[ResultRecord]
    ) -> tuple[list[ResultRecord], list[RowState]]:
        """Split off the rows this model failed that go to the second model instead."""
        failed = {r.row_id for r in finals if r.status == "failed"}
        up = [s for s in group if s.row.id in failed and escalates(s.invalid, self.escalate_on)]
        if not up:
            return finals, []
        moving = {s.row.id for s in up}
        self.failures -= len(up)
        return [r for r in finals if r.row_id not in moving], up

    # -- outages (pipeline/breaker.py decides; here the workers wait and rows are refunded) --
    async def _admit(self) -> bool | None:
        """Wait while the provider is in an outage. True: this call is the outage's probe;
        False: a regular call; None: the job is stopping. Raises StopDispatch past the limit."""
        breaker = self.breaker
        while breaker.paused:
            if self.stopping():
                return None
            outage = breaker.outage()
            if outage is None:
                break
            if breaker.state is BreakerState.EXPIRED:
                raise StopDispatch("outage", self.outage_message())
            if breaker.claim_probe():
                return True
            resumed = self._resumed
            wait = min(1.0, max(0.05, outage.next_probe_at - self.clock()))
            with anyio.move_on_after(wait):
                await resumed.wait()
        return False

    def outage_message(self) -> str:
        outage = self.breaker.outage()
        cause = outage.cause if outage is not None else "no answer"
        lasted = self.clock() - outage.since if outage is not None else 0.0
        return (
            f"provider unreachable at {self._url} for {lasted:.0f} s ({cause}); no row was"
            " charged for it, the rest stay pending: run it again when the provider answers"
        )

    def _observe(self, signal: Signal, reply: Reply, probe: bool) -> None:
        was_paused = self.breaker.paused
        cause = (reply.error or signal.value).splitlines()[0][:200] if signal.is_fault else ""
        if probe:
            self.breaker.probe_done(signal, cause)
        else:
            self.breaker.record(signal, cause)
        if was_paused and not self.breaker.paused:
            self._resumed.set()
            self._resumed = anyio.Event()

    def _refund(self, group: list[RowState]) -> None:
        """Attempts that failed inside an outage were not the row's: give them back."""
        for state in group:
            if not state.fault_times:
                continue
            covered = [t for t in state.fault_times if self.breaker.covers(t)]
            if covered:
                state.calls -= len(covered)
                state.burned = max(0, state.burned - len(covered))
                state.fault_times = [t for t in state.fault_times if t not in covered]

    def _in_outage(
        self, group: list[RowState], reply: Reply
    ) -> tuple[str, list[ResultRecord], list[tuple[list[RowState], float]], str | None]:
        """A call that failed inside an outage: not an attempt at its rows, sent again once
        the provider answers (the workers wait at `_admit`)."""
        self.outage_calls += 1
        for state in group:
            state.calls -= 1
        return "outage", [], [(group, 0.0)], reply.error

    def _hold(
        self,
        group: list[RowState],
        finals: list[ResultRecord],
        retry: list[tuple[list[RowState], float]],
    ) -> None:
        """Note the provider fault on each row; while most calls fail (an outage may be
        starting), a row's last attempt does not fail it: it waits for the breaker's verdict."""
        now = self.clock()
        for state in group:
            state.fault_times.append(now)
        if not finals or not self.breaker.suspect():
            return
        by_id = {s.row.id: s for s in group}
        held: list[RowState] = []
        for result in list(finals):
            kept = by_id.get(result.row_id)
            if result.status != "failed" or kept is None or kept.held >= self.policy.max_attempts:
                continue
            kept.held += 1
            finals.remove(result)
            self.failures -= 1
            held.append(kept)
        if held:
            retry.append((held, self.policy.backoff(max(s.burned for s in held), self._rng)))

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
            call_id=call_id or f"{self._call_prefix}-{self._calls}-{id(group) & 0xFFFF:x}",
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

    async def _send(
        self, prompt: Prompt, tier: str | None = None
    ) -> tuple[Reply, datetime, float, str | None]:
        """The reply, when it was sent, its latency, and the transport's failure kind (if any)."""
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
                    exc.kind,
                )
            latency = time.monotonic() - t0
        self.latency_ewma = 0.9 * self.latency_ewma + 0.1 * latency
        return self.provider.parse(resp), started, latency, None

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
            model=self.model,
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
                state.invalid = False
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
            state.invalid = False
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
        state.invalid = True
        if self.feedback:
            state.feedback = error
        if state.burned >= self.policy.max_attempts:
            finals.append(self.final(state, "failed", None, f"invalid answer: {error}"))
            self.failures += 1
        else:
            retry.append(([state], 0.0))


def provider_signal(reply: Reply, transport_kind: str | None) -> Signal:
    """What a reply says about the provider: any HTTP answer but a 5xx means it is up."""
    if reply.kind is not ReplyKind.ERROR:
        return Signal.ANSWERED
    if transport_kind is not None:
        return Signal.NO_CONNECTION if transport_kind == "connect" else Signal.NO_ANSWER
    if 500 <= reply.http_status <= 599:
        return Signal.SERVER_ERROR
    return Signal.ANSWERED


def _failed_reason(state: RowState, error: str) -> str:
    if state.rate_limited and state.burned == 0:
        return f"rate limited {state.rate_limited} times: {error}"
    return f"after {state.burned} attempts: {error}" if state.burned > 1 else error
