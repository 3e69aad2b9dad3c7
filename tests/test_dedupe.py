"""Dedupe: rows whose request would be identical are sent once and every copy gets the answer."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.pricing import cost_usd, lane_prices
from pipeline.core.records import ResultRecord, Row
from pipeline.core.usage import Usage
from pipeline.dedupe import Dedupe, input_hash, request_key, row_hashes, split_cost
from pipeline.pricing import resolve_prices
from pipeline.simproc import SimProcess
from tests.support import ledger_usage, make_spec, run_rows, sql, ticket_rows, write_jsonl

FAST_BATCH = {"poll_seconds": 0.1, "max_poll_seconds": 0.5, "collect_seconds": 0.2}


def repeating_rows(n: int, repeat_share: float, seed: int = 7) -> tuple[list[dict[str, Any]], int]:
    """n ticket rows where `repeat_share` of them copy the text of an earlier row."""
    rng = random.Random(seed)
    rows = ticket_rows(n)
    repeats = set(rng.sample(range(1, n), int(n * repeat_share)))
    for i in sorted(repeats):
        rows[i]["text"] = rows[rng.randrange(i)]["text"]
    return rows, len({r["text"] for r in rows})


def billed(db: Path, job: str) -> tuple[Decimal, Decimal]:
    calls, results = sql(
        db,
        "SELECT (SELECT sum(cost_usd) FROM calls WHERE job = $1),"
        " (SELECT sum(cost_usd) FROM results WHERE job = $1)",
        job,
    )[0]
    return Decimal(calls), Decimal(results)


def copies_match_their_answer(db: Path, job: str) -> int:
    """Every copy names a row of the job that was answered, and carries the same output."""
    rows = sql(
        db,
        "SELECT count(*), count(*) FILTER (WHERE c.output = a.output AND a.answered_by IS NULL)"
        " FROM results c LEFT JOIN results a ON a.job = c.job AND a.row_id = c.answered_by"
        " WHERE c.job = ? AND c.answered_by IS NOT NULL",
        job,
    )[0]
    assert rows[0] == rows[1]
    return int(rows[0])


def test_split_cost_adds_up_exactly_at_the_stores_precision() -> None:
    for cost in (Decimal("0.000123456789"), Decimal("0.0000000001"), Decimal(0)):
        for n in (1, 2, 3, 7, 1000):
            shares = split_cost(cost, n)
            assert len(shares) == n and sum(shares) == cost and min(shares) >= 0


def test_copies_of_a_row_in_flight_share_its_tokens_and_cost() -> None:
    d = Dedupe(("lang",))
    rows = [Row(f"r{i}", f"line:{i}", "same text", {"lang": "en"}) for i in range(3)]
    assert d.admit(rows[0], "k", "h") is True
    assert d.admit(rows[1], "k", "h") is False and d.admit(rows[2], "k", "h") is False
    usage = Usage(100, 0, 11, 0)
    result = ResultRecord(
        "r0",
        "line:0",
        "ok",
        {"label": "bug"},
        None,
        1,
        usage,
        Decimal("0.00005"),
        None,
        time.time(),
    )
    out = d.fan_out(result)
    assert [r.row_id for r in out] == ["r0", "r1", "r2"]
    assert [r.answered_by for r in out] == [None, "r0", "r0"]
    assert sum((r.usage for r in out), Usage()) == usage
    assert sum(r.cost_usd for r in out) == Decimal("0.00005")
    assert all(r.output == {"label": "bug"} and r.request_key == "k" for r in out)
    late = d.answered(Row("r9", "line:9", "same text", {"lang": "de"}), "k")
    assert late is not None and late.answered_by == "r0" and late.cost_usd == 0
    assert late.kept == {"lang": "de"}


def test_a_quarter_of_10000_rows_repeating_sends_only_the_distinct_texts(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory()
    rows, distinct = repeating_rows(10_000, 0.25)
    spec, db, summary = run_rows(sim, tmp_path, rows, extra={"limits": {"concurrency": 64}})

    assert summary.rows == {"ok": 10_000}
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(10_000, 10_000)]
    ledger = ledger_usage(sim.ledger)
    assert ledger["requests"] == distinct < 10_000 * 0.8
    assert copies_match_their_answer(db, "t") == 10_000 - distinct
    calls, results = billed(db, "t")
    assert calls == results
    tokens = Usage(ledger["input"], ledger["cached"], ledger["output"], ledger["thinking"])
    assert calls == cost_usd(tokens, resolve_prices(spec))
    # the cache keeps each distinct request once, with the tokens its one sending took (the
    # copies answered from an answer stored in an earlier commit add no second entry)
    kept = sql(db, "SELECT count(*), count(DISTINCT request_key), sum(input_tokens) FROM answers")
    assert kept == [(distinct, distinct, ledger["input"])]


def test_dedupe_false_sends_every_row(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory()
    rows, distinct = repeating_rows(300, 0.5)
    _, db, _ = run_rows(sim, tmp_path, rows, extra={"dedupe": False})

    assert ledger_usage(sim.ledger)["requests"] == 300 > distinct
    assert sql(db, "SELECT count(*) FROM results WHERE answered_by IS NOT NULL") == [(0,)]
    calls, results = billed(db, "t")
    assert calls == results


def test_dedupe_before_packing_sends_each_text_once(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory()
    rows, distinct = repeating_rows(400, 0.5)
    spec, db, summary = run_rows(sim, tmp_path, rows, extra={"limits": {"rows_per_request": 10}})

    assert summary.rows == {"ok": 400}
    rows_sent = sql(db, "SELECT sum(len(row_ids)) FROM calls WHERE outcome = 'ok'")[0][0]
    assert rows_sent == distinct
    assert copies_match_their_answer(db, "t") == 400 - distinct
    calls, results = billed(db, "t")
    ledger = ledger_usage(sim.ledger)
    tokens = Usage(ledger["input"], ledger["cached"], ledger["output"], ledger["thinking"])
    assert calls == results == cost_usd(tokens, resolve_prices(spec))


def test_dedupe_in_the_batch_lane(sim_factory: Callable[..., SimProcess], tmp_path: Path) -> None:
    sim = sim_factory("--batch-seconds", "0.3")
    rows, distinct = repeating_rows(300, 0.4)
    spec, db, summary = run_rows(
        sim, tmp_path, rows, extra={"provider": {"lane": "batch"}, "batch": FAST_BATCH}
    )

    assert summary.rows == {"ok": 300}
    ledger = ledger_usage(sim.ledger)
    assert ledger["billed"] == distinct
    assert copies_match_their_answer(db, "t") == 300 - distinct
    calls, results = billed(db, "t")
    tokens = Usage(ledger["input"], ledger["cached"], ledger["output"], ledger["thinking"])
    assert calls == results == cost_usd(tokens, lane_prices(resolve_prices(spec), "batch"))


def test_dedupe_must_be_true_or_false(tmp_path: Path) -> None:
    import pytest

    from pipeline.errors import SpecError

    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(1))
    assert make_spec(None, src).dedupe is True
    with pytest.raises(SpecError, match=r"^dedupe: 'no' is not valid; expected true or false$"):
        make_spec(None, src, extra={"dedupe": "no"})


@pytest.mark.parametrize("text", ["I was charged twice", "naïve café ☕", "", "a\udc80b"])
def test_the_reader_hashes_a_text_as_the_key_and_input_hash_functions_do(text: str) -> None:
    assert row_hashes("fp", text) == (request_key("fp", text), input_hash(text))
