"""Identical requests sent once: the key of a request, and one answer fanned out to its copies.

Within a job the model, instructions, schema and generation settings are fixed, so two rows
whose rendered text is the same would send the same request. The first of them (the leader)
is sent; the others wait for its answer and get the same result, each naming the leader in
`answered_by`. The call's tokens and cost, already charged to the leader, are split across
the leader and its copies when the leader's result reaches the writer, so every copy is
stored in the same commit and `SUM(results.cost_usd) = SUM(calls.cost_usd)` still holds.

A copy that arrives after its leader's answer was stored (the input repeats far apart) gets
the answer at once, at no cost. Only `ok` and `blocked` answers are handed on that way, and
only the most recent `remember` of them are kept, so memory stays bounded.

Everything here is pure: the engine feeds rows in and hands results through `fan_out`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, Decimal
from typing import Any

import orjson

from pipeline.core.records import ResultRecord, Row
from pipeline.core.usage import ZERO

QUANTUM = Decimal("0.000000000001")  # the store keeps costs to 12 places
# answers kept in memory for later copies in the same run; older ones are found through the
# answer cache (the reader's per-frame lookup) or sent again. 100,000 results held ~190 MiB
# and made peak memory grow with the job (bench 6: 1.35 for 100k vs 1M rows); 10,000 is flat
REMEMBER = 10_000
REUSED = ("ok", "blocked")  # answers a later copy may take as they are


def fingerprint(parts: dict[str, Any]) -> str:
    """A stable hash of everything a job's requests share (model, instructions, schema...)."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def request_key(fp: str, user: str) -> str:
    """The content address of one row's request: the job's fingerprint and the row's text."""
    return row_hashes(fp, user)[0]


def row_hashes(fp: str, user: str) -> tuple[str, str]:
    """(request_key, input_hash) of one row's text, encoded once: the request key hashes the
    job's fingerprint, a NUL and the text; the input hash the text alone."""
    data = user.encode("utf-8", "surrogatepass")
    key = hashlib.blake2b(fp.encode(), digest_size=20)
    key.update(b"\0")
    key.update(data)
    return key.hexdigest(), hashlib.blake2b(data, digest_size=16).hexdigest()


def input_hash(user: str) -> str:
    """The hash of what a row sends (its rendered text): a changed input changes it."""
    return hashlib.blake2b(user.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def split_cost(cost: Decimal, n: int) -> list[Decimal]:
    """n shares that add up exactly to `cost` at the store's precision (the rest to the first)."""
    share = (cost / n).quantize(QUANTUM, rounding=ROUND_DOWN)
    return [cost.quantize(QUANTUM) - share * (n - 1)] + [share] * (n - 1)


def kept_fields(row: Row, keep: tuple[str, ...]) -> dict[str, Any] | None:
    return {k: row.fields.get(k) for k in keep} if keep and row.fields else None


@dataclass
class _Sent:
    key: str
    input_hash: str
    copies: list[Row] = field(default_factory=list)


class Dedupe:
    """Rows sent in this run by request key; copies of a row in flight wait for its answer.

    With `enabled` False every row is sent, but results are still labelled with their request
    key (the cache stores answers under it) and input hash (`retry --changed` reads it).
    """

    def __init__(
        self,
        keep: tuple[str, ...],
        *,
        enabled: bool = True,
        record_key: bool = True,
        remember: int = REMEMBER,
        model: str | None = None,
    ):
        self.model = model  # the job's model: another model's answer is not kept under its key
        self.keep = keep
        self.enabled = enabled
        self.record_key = record_key  # False: results carry no request key (the cache is off)
        self.remember = remember
        self._sent: dict[str, _Sent] = {}  # row id sent -> its key and the copies waiting
        self._leader: dict[str, str] = {}  # request key -> row id sent, while in flight
        # request key -> latest stored answer, oldest first. An OrderedDict, not a dict: a dict
        # whose first entries keep being deleted makes `next(iter(d))` step over every deleted
        # slot until it is resized (~8 µs per row once `remember` answers are held)
        self._answered: OrderedDict[str, ResultRecord] = OrderedDict()
        self.copies = 0  # rows answered by another row's request in this run

    def answered(self, row: Row, key: str) -> ResultRecord | None:
        """A copy of an answer this run already stored for the same request, at no cost."""
        if not self.enabled:
            return None
        found = self._answered.get(key)
        if found is None:
            return None
        self.copies += 1
        return replace(
            found,
            row_id=row.id,
            pos=row.pos,
            kept=kept_fields(row, self.keep),
            usage=ZERO,
            cost_usd=Decimal(0),
            answered_by=found.answered_by or found.row_id,
            finished_at=time.time(),
        )

    def in_flight(self, key: str) -> bool:
        """Whether a row of this run was sent with this request and awaits its answer."""
        return self.enabled and key in self._leader

    def admit(self, row: Row, key: str, ihash: str) -> bool:
        """True: send the row. False: the same request is in flight; the row waits for it."""
        leader = self._leader.get(key) if self.enabled else None
        if leader is not None:
            self._sent[leader].copies.append(row)
            self.copies += 1
            return False
        self._sent[row.id] = _Sent(key, ihash)
        if self.enabled:
            self._leader[key] = row.id
        return True

    def fan_out(self, result: ResultRecord) -> list[ResultRecord]:
        """The result of a row that was sent, labelled, plus one result for each copy."""
        sent = self._sent.pop(result.row_id, None)
        if sent is None:  # not sent by this run (a batch a previous run submitted)
            return [result]
        if self._leader.get(sent.key) == result.row_id:
            del self._leader[sent.key]
        own = result.model is None or result.model == self.model
        key = sent.key if self.record_key and own else None
        # the writer owns the record now: addressed in place, not copied
        result.request_key, result.input_hash = key, sent.input_hash
        if self.enabled and result.status in REUSED:
            self._answered.pop(sent.key, None)
            self._answered[sent.key] = result
            if len(self._answered) > self.remember:
                self._answered.popitem(last=False)
        if not sent.copies:
            return [result]
        n = 1 + len(sent.copies)
        usages = result.usage.split(n)
        costs = split_cost(result.cost_usd, n)
        out = [replace(result, usage=usages[0], cost_usd=costs[0])]
        for row, usage, cost in zip(sent.copies, usages[1:], costs[1:], strict=True):
            out.append(
                replace(
                    result,
                    row_id=row.id,
                    pos=row.pos,
                    kept=kept_fields(row, self.keep),
                    usage=usage,
                    cost_usd=cost,
                    answered_by=result.row_id,
                )
            )
        return out
