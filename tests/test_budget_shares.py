"""A capped budget split across workers: the driver's BudgetHolder and a worker's ShareBudget
(pure: no Ray, no sockets; the share's waits run on a real anyio loop)."""

from __future__ import annotations

from decimal import Decimal

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.budget import Budget, ShareBudget
from pipeline.core.budget import BudgetHolder, ShareAnswer, ShareReport

D = Decimal


def holder(cap: str, spent_before: str = "0", block_calls: int = 4) -> BudgetHolder:
    return BudgetHolder(Budget(D(cap), D(spent_before)), block_calls)


def test_a_grant_is_a_block_of_calls_and_never_more_than_is_left() -> None:
    h = holder("1.00", spent_before="0.70")
    assert h.answer(1, ShareReport(asking=D("0.05"))).grant == D("0.20")  # 4 calls' worth
    assert h.answer(2, ShareReport(asking=D("0.05"))).grant == D("0.10")  # what is left
    assert h.free == 0


def test_running_short_asks_every_worker_to_hand_back_what_it_does_not_use() -> None:
    h = holder("1.00", block_calls=1)
    h.answer(1, ShareReport(asking=D("0.60")))
    answer = h.answer(2, ShareReport(asking=D("0.60")))
    assert answer == ShareAnswer(reclaim=True)  # worker 1 still holds some: wait, not out
    # worker 1 spent 0.10 of its 0.60 and hands back the 0.50 it does not hold for a call
    assert h.answer(1, ShareReport(spent=D("0.10"), returned=D("0.50"))).reclaim
    assert h.answer(2, ShareReport(asking=D("0.60"))).grant == D("0.60")  # exactly the call


def test_the_budget_is_out_only_when_nothing_is_held_and_the_call_does_not_fit() -> None:
    h = holder("1.00", block_calls=1)
    h.answer(1, ShareReport(asking=D("0.90")))
    # worker 1 still has a call reserved: worker 2 waits for it to settle
    assert not h.answer(2, ShareReport(asking=D("0.20"))).out
    assert not h.answer(1, ShareReport(spent=D("0.10"), reserved=D("0.80"))).out
    # it settled at 0.85 and handed the rest back; 0.15 is left, worker 2's call needs 0.20
    assert not h.answer(1, ShareReport(spent=D("0.85"), returned=D("0.05"))).out
    assert h.answer(2, ShareReport(asking=D("0.20"))).out


def test_a_lost_workers_grant_stays_committed() -> None:
    h = holder("1.00", block_calls=1)
    h.answer(1, ShareReport(asking=D("0.40")))
    h.lost(1)  # its calls may have been billed: the 0.40 is never granted again
    assert h.answer(2, ShareReport(asking=D("0.70"))).out
    assert h.free == D("0.60")


def test_a_finished_worker_frees_what_it_did_not_spend() -> None:
    h = holder("1.00", block_calls=1)
    h.answer(1, ShareReport(asking=D("0.40")))
    h.finished(1, ShareReport(spent=D("0.10"), returned=D("0.30")))
    assert h.free == D("0.90")


def test_a_share_waits_for_a_grant_and_gives_up_when_the_budget_is_out() -> None:
    async def go() -> None:
        share = ShareBudget()
        got: list[bool] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _reserve(share, D("0.10"), got))
            await anyio.wait_all_tasks_blocked()
            assert share.needs_answer() and got == []
            assert share.report(reclaim=False).asking == D("0.10")
            assert not share.needs_answer()  # told once
            share.apply(ShareAnswer(grant=D("0.40")))
        assert got == [True] and share.left == D("0.30")
        share.settle(D("0.10"), D("0.02"))
        assert share.report(reclaim=True).returned == D("0.38")  # all but what it spent
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _reserve(share, D("0.10"), got))
            await anyio.wait_all_tasks_blocked()
            share.apply(ShareAnswer(out=True))
        assert got == [True, False]

    anyio.run(go)


async def _reserve(share: ShareBudget, amount: Decimal, got: list[bool]) -> None:
    got.append(await share.reserve(amount))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # the worker
            st.integers(1, 40),  # the worst-case cost of its next call, in cents
            st.integers(0, 100),  # what the call is billed, in % of its worst case
        ),
        max_size=60,
    )
)
def test_workers_together_never_spend_past_the_cap(calls: list[tuple[int, int, int]]) -> None:
    cap = D("1.00")
    h = holder(str(cap), block_calls=3)
    shares = [ShareBudget() for _ in range(3)]
    answers = [ShareAnswer() for _ in range(3)]
    for w, worst_cents, billed_pct in calls:
        share = shares[w]
        share.apply(answers[w])
        worst = D(worst_cents) / 100
        if share.try_reserve(worst):
            share.settle(worst, worst * billed_pct / 100)
        else:
            share.asking = worst
        answers[w] = h.answer(w, share.report(reclaim=answers[w].reclaim))
        assert sum(s.spent + s.reserved for s in shares) <= cap
        assert h.committed <= cap
