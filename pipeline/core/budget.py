"""A capped budget split across workers, pure: the messages between a worker's share and the
driver, and the driver's side (BudgetHolder), which grants blocks of the cap so that the
workers' calls together can never be billed past it. The waiting budgets are pipeline/budget.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


class Spending(Protocol):
    """A budget as the holder starts from: its cap, what is spent and what is reserved."""

    cap: Decimal | None
    spent: Decimal
    reserved: Decimal


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

    def __init__(self, budget: Spending, block_calls: int) -> None:
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
