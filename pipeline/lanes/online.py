"""The online lane: one work item (a row, or a pack of rows) through its attempts.

Each attempt waits out an outage, reserves its worst case against the budget, passes flow
control, sends, and hands the reply to the judge (pipeline/core/verdict.py). What the verdict
signals is acted on here, by the lane that owns the call: a 429 slows this lane's flow
control, a provider stop stops the job, rows Flex keeps refusing move to Batch or Standard,
and rows the model gave up on go to the escalation model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from functools import partial

import anyio

from pipeline.auth import Auth
from pipeline.budget import Budget
from pipeline.core.breaker import Breaker, BreakerState, Signal
from pipeline.core.pricing import LANE_FACTOR, Prices, cost_usd, lane_prices
from pipeline.core.records import (
    Lane,
    Outcome,
    Row,
    RowState,
    StopDispatch,
    StopReason,
    now_utc,
)
from pipeline.core.reply import Prompt, Reply, ReplyKind
from pipeline.core.retry import ErrorClass
from pipeline.core.usage import Usage
from pipeline.core.verdict import Judge, Trigger, Verdict, charge
from pipeline.errors import ProviderStop
from pipeline.lanes.requests import Requests
from pipeline.limits import Flow
from pipeline.providers.base import Provider
from pipeline.transport import Transport, TransportError

Emit = Callable[[Outcome], Awaitable[None]]
ToBatch = Callable[[list[RowState]], Awaitable[None]]
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


@dataclass(frozen=True, slots=True)
class Client:
    """How calls reach the provider: its wire format, the HTTP client, the credentials and the
    bound on requests in flight."""

    provider: Provider
    transport: Transport
    auth: Auth
    in_flight: anyio.CapacityLimiter | InFlightCounter


@dataclass(frozen=True, slots=True)
class Gates:
    """What every call passes before it is sent: rate limits, budget, outage breaker."""

    flow: Flow
    budget: Budget
    breaker: Breaker


@dataclass(frozen=True, slots=True)
class Routing:
    """The online tier a row starts on and where rows Flex keeps refusing go."""

    lane: str = Lane.STANDARD  # standard | flex | auto (auto: Flex, then Batch)
    flex_sheds: int = 3  # refusals after which the auto lane moves a row
    to_batch: ToBatch | None = None
    deadline: datetime | None = None
    batch_hours: float = 24.0

    def batch_in_time(self) -> bool:
        if self.deadline is None:
            return True
        return (self.deadline - now_utc()).total_seconds() > self.batch_hours * 3600


@dataclass(frozen=True, slots=True)
class Asking:
    """One model as the lanes ask it: its prompts and records, its judge, its prices."""

    requests: Requests
    judge: Judge
    prices: Prices

    def lane_prices(self) -> dict[str, Prices]:
        return {name: lane_prices(self.prices, name) for name in LANE_FACTOR}


class OnlineLane:
    """Runs work items to the end through the online API; owns the attempt loop, the outage
    wait, and the escalation hand-off. Results go out through `emit` with their call."""

    def __init__(
        self,
        asking: Asking,
        client: Client,
        gates: Gates,
        routing: Routing,
        stopping: Callable[[], bool],
        seed: int = 0,
    ):
        self.asking = asking
        self.requests = asking.requests
        self.judge = asking.judge
        self.prices = asking.lane_prices()
        # a packed call's share of each row, priced at the lane's prices
        self._share_cost = {lane: partial(_cost_at, prices) for lane, prices in self.prices.items()}
        self.client = client
        self.gates = gates
        self.routing = routing
        self.stopping = stopping
        self._seed = seed
        self._rng = random.Random(seed)
        self._url = client.provider.url()
        self._resumed = anyio.Event()  # set (and replaced) each time an outage ends
        self.escalate_to: OnlineLane | None = None  # [escalate]: the second model
        self.escalate_on: frozenset[Trigger] = frozenset()
        self.shed = 0  # calls Flex refused (the progress line shows them)
        self.latency_ewma = 1.0  # seconds; sizes the automatic concurrency

    def for_model(self, asking: Asking, provider: Provider) -> OnlineLane:
        """A lane for a second model that shares this one's limits, budget and client."""
        client = replace(self.client, provider=provider)
        routing = replace(self.routing, to_batch=None)  # the Batch lane asks the first model
        return OnlineLane(asking, client, self.gates, routing, self.stopping, self._seed)

    # -- the attempt loop ------------------------------------------------------------------
    async def process(self, rows: list[Row], emit: Emit) -> None:
        """Run one work item to the end: every row gets a result, or stays pending on stop."""
        flex = self.routing.lane in (Lane.FLEX, "auto")
        await self._process([self.requests.state(r, flex=flex) for r in rows], emit)

    async def take(self, states: list[RowState], emit: Emit) -> None:
        """Rows another model or lane gave up on: a fresh set of attempts, their bill kept."""
        for s in states:
            s.fresh_attempts(self.requests.max_output_tokens)
        await self._process(states, emit)

    async def resume(self, states: list[RowState], emit: Emit) -> None:
        """Rows another lane held (a stalled batch): their attempts so far still count."""
        await self._process(states, emit)

    async def _process(self, states: list[RowState], emit: Emit) -> None:
        todo: list[list[RowState]] = [states]
        while todo and not self.stopping():
            todo.extend(await self._attempt(todo.pop(), emit))

    async def _attempt(self, group: list[RowState], emit: Emit) -> list[list[RowState]]:
        self._refund(group)
        probe = await self._admit() if self.gates.breaker.paused else False
        if probe is None:  # stopping while paused: the rows stay pending
            return []
        prompt, est_tokens = self.requests.prompt_for(group)
        flex = group[0].flex
        lane = Lane.FLEX if flex else Lane.STANDARD
        prices = self.prices[lane]
        sent = await self._call(prompt, est_tokens, prices, flex, probe)
        if sent is None:
            return []
        reply, when, kind, call_cost = sent
        verdict = self._judge(group, prompt, reply, kind, call_cost, lane, probe)
        self.gates.flow.settle_tokens(est_tokens, reply.usage.total)
        up = self.judge.escalating(group, verdict, self.escalate_on)
        pool = self.gates.flow.pool_name()
        call = self.requests.call_record(group, reply, verdict, when, lane, call_cost, pool)
        await emit(Outcome(call, verdict.finals))
        if up:
            assert self.escalate_to is not None
            await self.escalate_to.take(up, emit)
        if not (verdict.retry or verdict.stop or verdict.off_flex):  # most calls: all final
            return []
        return await self._act(group, verdict)

    async def _call(
        self, prompt: Prompt, est_tokens: int, prices: Prices, flex: bool, probe: bool
    ) -> tuple[Reply, tuple[float, float], str | None, Decimal] | None:
        """Reserve, pass flow control and send: the reply, when, the transport's failure kind
        and the call's cost. None when the job stops meanwhile."""
        budget = self.gates.budget
        reserve = self.requests.reserve_for(prompt, est_tokens, prices, budget.cap is not None)
        try:
            if not await budget.reserve(reserve):
                raise StopDispatch(StopReason.BUDGET, "budget.max_usd reached")
            try:
                await self.gates.flow.acquire(est_tokens)
                if self.stopping():
                    budget.settle(reserve, _ZERO)
                    if probe:
                        self.gates.breaker.abandon_probe()
                    return None
                reply, when, kind = await self._send(prompt, flex)
            except BaseException:
                budget.settle(reserve, _ZERO)
                raise
        except BaseException:
            if probe:
                self.gates.breaker.abandon_probe()
            raise
        cost = cost_usd(reply.usage, prices)
        budget.settle(reserve, cost)
        return reply, when, kind, cost

    def _judge(
        self,
        group: list[RowState],
        prompt: Prompt,
        reply: Reply,
        kind: str | None,
        call_cost: Decimal,
        lane: Lane,
        probe: bool,
    ) -> Verdict:
        """The verdict on the reply; the breaker and flow control hear what it says."""
        flow, breaker = self.gates.flow, self.gates.breaker
        shed = group[0].flex and reply.kind is ReplyKind.ERROR and reply.capacity
        if not shed:  # a Flex refusal says nothing about the key's rate limits
            flow.on_response(reply.error_class is ErrorClass.RATE_LIMITED)
        signal = Signal.ANSWERED if shed else provider_signal(reply, kind)
        fault = signal is not Signal.ANSWERED
        self._observe(signal, fault, reply, probe)
        charge(group, reply.usage, call_cost, self._share_cost[lane])
        if fault and breaker.covers(breaker.clock()):
            return self.judge.in_outage(group, reply)
        if shed:
            self.shed += 1
            auto = self.routing.lane == "auto"
            return self.judge.shed(group, reply, self.routing.flex_sheds if auto else None)
        verdict = self.judge.verdict(group, prompt.max_output_tokens, reply)
        if verdict.rate_limited:
            flow.on_rate_limited(verdict.retry_after)
        if fault:
            now = breaker.clock()
            for state in group:
                state.fault_times.append(now)
            if verdict.finals and breaker.suspect():
                self.judge.hold(group, verdict)
        return verdict

    async def _act(self, group: list[RowState], verdict: Verdict) -> list[list[RowState]]:
        """Stop the job, move rows off Flex, or wait before the retries: what comes next."""
        if verdict.stop:
            if self.gates.flow.bench_current(verdict.error or "the provider refused the key"):
                return [group]  # that key pool is out: its rows go to the others
            raise StopDispatch(StopReason.PROVIDER, verdict.error or "the provider refused the job")
        again = verdict.again()
        moving = verdict.off_flex
        if moving:
            if self.routing.to_batch is not None and self.routing.batch_in_time():
                await self.routing.to_batch(moving)
            else:
                for state in moving:
                    state.flex = False
                again.append(moving)
        if again and verdict.delay > 0:
            await anyio.sleep(verdict.delay)
        return again

    # -- outages (pipeline/core/breaker.py decides; here the workers wait, rows are refunded) --
    async def _admit(self) -> bool | None:
        """Wait while the provider is in an outage. True: this call is the outage's probe;
        False: a regular call; None: the job is stopping. Raises StopDispatch past the limit."""
        breaker = self.gates.breaker
        while breaker.paused:
            if self.stopping():
                return None
            outage = breaker.outage()
            if outage is None:
                break
            if breaker.state is BreakerState.EXPIRED:
                raise StopDispatch(StopReason.OUTAGE, self.outage_message())
            if breaker.claim_probe():
                return True
            resumed = self._resumed
            wait = min(1.0, max(0.05, outage.next_probe_at - breaker.clock()))
            with anyio.move_on_after(wait):
                await resumed.wait()
        return False

    def outage_message(self) -> str:
        breaker = self.gates.breaker
        outage = breaker.outage()
        cause = outage.cause if outage is not None else "no answer"
        lasted = breaker.clock() - outage.since if outage is not None else 0.0
        return (
            f"provider unreachable at {self._url} for {lasted:.0f} s ({cause}); no row was"
            " charged for it, the rest stay pending: run it again when the provider answers"
        )

    def _observe(self, signal: Signal, fault: bool, reply: Reply, probe: bool) -> None:
        breaker = self.gates.breaker
        was_paused = breaker.paused
        cause = (reply.error or signal.value).splitlines()[0][:200] if fault else ""
        if probe:
            breaker.probe_done(signal, cause)
        else:
            breaker.record(signal, cause)
        if was_paused and not breaker.paused:
            self._resumed.set()
            self._resumed = anyio.Event()

    def _refund(self, group: list[RowState]) -> None:
        """Attempts that failed inside an outage were not the row's: give them back."""
        breaker = self.gates.breaker
        for state in group:
            if not state.fault_times:
                continue
            covered = [t for t in state.fault_times if breaker.covers(t)]
            if covered:
                state.calls -= len(covered)
                state.burned = max(0, state.burned - len(covered))
                state.fault_times = [t for t in state.fault_times if t not in covered]

    async def _send(
        self, prompt: Prompt, flex: bool
    ) -> tuple[Reply, tuple[float, float], str | None]:
        """The reply, (when it was sent, its latency), and the transport's failure kind."""
        client = self.client
        body = client.provider.encode(prompt, "flex" if flex else None)
        async with client.in_flight:
            if client.auth.stale():
                try:
                    await client.auth.refresh()
                except ProviderStop as exc:  # no token: the job stops, its rows stay pending
                    raise StopDispatch(StopReason.PROVIDER, str(exc)) from None
            started = time.time()
            t0 = time.monotonic()
            try:
                resp = await client.transport.post(self._url, client.auth.headers, body)
            except TransportError as exc:
                error = str(exc)[:300]
                reply = Reply(ReplyKind.ERROR, 0, error_class=ErrorClass.TRANSIENT, error=error)
                return reply, (started, time.monotonic() - t0), exc.kind
            latency = time.monotonic() - t0
        self.latency_ewma = 0.9 * self.latency_ewma + 0.1 * latency
        return client.provider.parse(resp), (started, latency), None


def _cost_at(prices: Prices, usage: Usage) -> Decimal:
    return cost_usd(usage, prices)


def provider_signal(reply: Reply, transport_kind: str | None) -> Signal:
    """What a reply says about the provider: any HTTP answer but a 5xx means it is up."""
    if reply.kind is not ReplyKind.ERROR:
        return Signal.ANSWERED
    if transport_kind is not None:
        return Signal.NO_CONNECTION if transport_kind == "connect" else Signal.NO_ANSWER
    if 500 <= reply.http_status <= 599:
        return Signal.SERVER_ERROR
    return Signal.ANSWERED
