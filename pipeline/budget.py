"""Budget: reserve a call's worst-case cost before dispatch, settle to the billed cost after.

Calls in flight can therefore never push spend past the cap. A reservation that does not fit
waits while other calls are in flight (their settling usually frees most of what they held);
only when nothing is in flight and it still does not fit is the budget exhausted.

Budget is one process's; ShareBudget is a Ray worker's share of a capped budget, granted by the
driver's BudgetHolder (pipeline/core/budget.py, pure, with the messages between the two).
"""

from __future__ import annotations

from decimal import Decimal

import anyio

from pipeline.core.budget import ShareAnswer, ShareReport


class Budget:
    """One process's budget (or, as a ShareBudget, a worker's share of one): what is spent,
    what calls in flight hold, and the calls waiting for room."""

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
            await self._next_settle()
        return True

    def settle(self, reserved: Decimal, actual: Decimal) -> None:
        self.reserved -= reserved
        self.spent += actual
        self._wake()

    async def _next_settle(self) -> None:
        """Wait until a call settles (or the share hears from the driver)."""
        self._waiting += 1
        try:
            await self._settled.wait()
        finally:
            self._waiting -= 1

    def _wake(self) -> None:
        if self._waiting:  # an Event per settle would cost every call; only wake real waiters
            self._settled.set()
            self._settled = anyio.Event()

    @property
    def left(self) -> Decimal | None:
        return None if self.cap is None else self.cap - self.spent - self.reserved


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
            await self._next_settle()
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
