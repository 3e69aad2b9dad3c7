"""Budget: reserve a call's worst-case cost before dispatch, settle to the billed cost after.

Calls in flight can therefore never push spend past the cap. A reservation that does not fit
waits while other calls are in flight (their settling usually frees most of what they held);
only when nothing is in flight and it still does not fit is the budget exhausted.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import anyio


class Budget:
    def __init__(self, cap: Decimal | None, spent: Decimal = Decimal(0)):
        self.cap = cap
        self.spent = spent
        self.reserved = Decimal(0)
        self._settled = anyio.Event()
        self._waiting = 0

    def try_reserve(self, amount: Decimal) -> bool:
        if self.cap is not None and self.spent + self.reserved + amount > self.cap:
            return False
        self.reserved += amount
        return True

    def hold(self, amount: Decimal) -> None:
        """Count a cost already committed (a batch submitted by an earlier run), cap or not."""
        self.reserved += amount

    async def reserve(self, amount: Decimal) -> bool:
        """Reserve `amount`, waiting for in-flight calls to settle; False when it never fits."""
        while not self.try_reserve(amount):
            if self.reserved == 0:
                return False
            self._waiting += 1
            try:
                await self._settled.wait()
            finally:
                self._waiting -= 1
        return True

    def settle(self, reserved: Decimal, actual: Decimal) -> None:
        self.reserved -= reserved
        self.spent += actual
        if self._waiting:  # an Event per settle would cost every call; only wake real waiters
            self._settled.set()
            self._settled = anyio.Event()

    @property
    def left(self) -> Decimal | None:
        return None if self.cap is None else self.cap - self.spent - self.reserved


@dataclass(frozen=True, slots=True)
class ShareReport:
    """What a worker's share of the budget looked like when it last answered the driver."""

    spent: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)
    asking: Decimal = Decimal(0)  # a call is waiting for this much (0: none is waiting)
    ahead: Decimal = Decimal(0)  # the share runs low: this much per call would keep it going
    returned: Decimal = Decimal(0)  # handed back to the driver (asked to, or at the end)


@dataclass(frozen=True, slots=True)
class ShareAnswer:
    """The driver's answer: more budget, or that the job's budget cannot cover the call."""

    grant: Decimal = Decimal(0)
    out: bool = False  # nothing is held anywhere and what is left does not fit: stop
    reclaim: bool = False  # the job runs short: hand back what is neither spent nor reserved


NO_ANSWER = ShareAnswer()


class ShareBudget(Budget):
    """A worker's share of a job's capped budget, when the job runs on several workers.

    The share's cap is what the driver granted it, in blocks; calls reserve and settle against
    it exactly as against one process's budget, so the share's calls can never spend more than
    it was granted. A call that does not fit waits while the worker asks the driver for more
    (with its next answer to the driver, never a call of its own); the share stops the worker
    only when the driver says the job's budget is out.
    """

    def __init__(self) -> None:
        super().__init__(Decimal(0))
        self.asking = Decimal(0)
        self.ahead = Decimal(0)
        self.told = False  # the driver has seen the current ask
        self.out = False
        self.low_water = 4  # calls' worth of room left below which the share asks ahead

    async def reserve(self, amount: Decimal) -> bool:
        while not self.try_reserve(amount):
            if self.out:
                return False
            if amount > self.asking:
                self.asking = amount
                self.told = False
            self._waiting += 1
            try:
                await self._settled.wait()
            finally:
                self._waiting -= 1
        left = self.left
        if left is not None and left < amount * self.low_water:
            self.ahead = max(self.ahead, amount)
        return True

    def needs_answer(self) -> bool:
        """A call waits for budget and the driver has not heard of it yet."""
        return self.asking > 0 and not self.told

    def apply(self, answer: ShareAnswer) -> None:
        """The driver's answer: a grant wakes the calls waiting for one; out ends them."""
        if answer.grant > 0:
            assert self.cap is not None
            self.cap += answer.grant
            self.asking = self.ahead = Decimal(0)
        if answer.out:
            self.out = True
        if answer.grant > 0 or answer.out:
            self._wake()

    def stop(self) -> None:
        """The job stops: calls waiting for budget give up (their rows stay pending)."""
        self.out = True
        self._wake()

    def report(self, reclaim: bool) -> ShareReport:
        """The share as it stands, handing back its free part when asked to (or when done)."""
        assert self.cap is not None
        returned = Decimal(0)
        if reclaim:
            returned = self.cap - self.spent - self.reserved
            self.cap -= returned
        self.told = self.asking > 0
        return ShareReport(self.spent, self.reserved, self.asking, self.ahead, returned)

    def _wake(self) -> None:
        if self._waiting:
            self._settled.set()
            self._settled = anyio.Event()


@dataclass
class _Share:
    granted: Decimal = Decimal(0)
    spent: Decimal = Decimal(0)
    live: bool = True

    @property
    def held(self) -> Decimal:
        """Granted and not known to be spent: reserved, free, or spent since the last report."""
        return self.granted - self.spent


class BudgetHolder:
    """The driver's side of a capped budget split across workers (pure: no I/O, no waiting).

    It owns how much of the cap is committed: what earlier runs spent plus every block granted
    and not handed back. A grant is made only out of what is not committed, so whatever the
    workers do, their calls together can never be billed past the cap. A worker that dies
    keeps its grant committed (its calls may have been billed). When a worker asks for more
    than is left, the holder runs short: from then on every worker hands back what it neither
    spent nor reserved with each answer, and asks for exactly what its next call needs. The
    job's budget is out when a call does not fit and no live worker holds anything.
    """

    def __init__(self, budget: Budget, block_calls: int) -> None:
        assert budget.cap is not None
        self.cap = budget.cap
        self.committed = budget.spent + budget.reserved
        self.block_calls = max(1, block_calls)
        self.shares: dict[int, _Share] = {}
        self.short = False
        self.grants = 0

    @property
    def free(self) -> Decimal:
        return self.cap - self.committed

    def answer(self, worker: int, report: ShareReport) -> ShareAnswer:
        share = self.shares.setdefault(worker, _Share())
        share.granted -= report.returned
        self.committed -= report.returned
        share.spent = report.spent
        if self.short:  # exactly what a waiting call needs; nothing ahead
            want, size = report.asking, report.asking
        else:
            want = max(report.asking, report.ahead)
            size = want * self.block_calls
        if want <= 0:
            return ShareAnswer(reclaim=self.short)
        if self.free >= want:
            grant = min(size, self.free)
            share.granted += grant
            self.committed += grant
            self.grants += 1
            return ShareAnswer(grant=grant, reclaim=self.short)
        self.short = True
        if report.asking <= 0 or report.reserved > 0:
            return ShareAnswer(reclaim=True)  # its own calls in flight may free enough
        # with nothing reserved, what this worker holds is free: it hands it back next time
        held_elsewhere = any(s.held > 0 for w, s in self.shares.items() if w != worker and s.live)
        out = not held_elsewhere and self.free + share.held < report.asking
        return ShareAnswer(out=out, reclaim=True)

    def lost(self, worker: int) -> None:
        """A worker died: what it held stays committed (its calls may have been billed)."""
        share = self.shares.get(worker)
        if share is not None:
            share.live = False

    def finished(self, worker: int, report: ShareReport) -> None:
        """A worker ended with everything settled: what it did not spend is free again."""
        share = self.shares.setdefault(worker, _Share())
        share.granted -= report.returned
        self.committed -= report.returned
        share.spent = report.spent
        self.committed -= share.held
        share.granted = share.spent
        share.live = False
