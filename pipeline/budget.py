"""Budget: reserve a call's worst-case cost before dispatch, settle to the billed cost after.

Calls in flight can therefore never push spend past the cap. A reservation that does not fit
waits while other calls are in flight (their settling usually frees most of what they held);
only when nothing is in flight and it still does not fit is the budget exhausted.
"""

from __future__ import annotations

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
