"""Budget: reserve a call's worst-case cost before dispatch, settle to the billed cost after.

Calls in flight can therefore never push spend past the cap.
"""

from __future__ import annotations

from decimal import Decimal


class Budget:
    def __init__(self, cap: Decimal | None, spent: Decimal = Decimal(0)):
        self.cap = cap
        self.spent = spent
        self.reserved = Decimal(0)

    def try_reserve(self, amount: Decimal) -> bool:
        if self.cap is not None and self.spent + self.reserved + amount > self.cap:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: Decimal, actual: Decimal) -> None:
        self.reserved -= reserved
        self.spent += actual

    @property
    def left(self) -> Decimal | None:
        return None if self.cap is None else self.cap - self.spent - self.reserved
