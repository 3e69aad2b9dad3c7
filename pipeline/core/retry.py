"""Error classes and the retry policy: pure functions of the failure and the attempt number."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class ErrorClass(StrEnum):
    RATE_LIMITED = "rate_limited"  # 429 per-minute quota: wait for the gate, do not burn an attempt
    STOP = "stop"  # credentials, disabled API, unknown model, per-day quota, billing: stop the job
    BAD_REQUEST = "bad_request"  # any other 4xx: this row fails, no retry
    TRANSIENT = "transient"  # 5xx, timeout, dropped connection, unparseable body: back off, retry
    INVALID_OUTPUT = "invalid_output"  # 200 but the answer fails the schema or the task's checks
    TRUNCATED = "truncated"  # MAX_TOKENS / length: retry with a larger output budget
    BLOCKED = "blocked"  # safety block / refusal: final, no retry


class Action(StrEnum):
    RETRY = "retry"
    FAIL = "fail"
    STOP = "stop"
    BLOCK = "block"


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0
    # 429s do not burn attempts, but a row is not retried forever either
    max_rate_limited: int = 60

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random, capped."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(0, attempt - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)

    def decide(
        self,
        cls: ErrorClass,
        attempts: int,
        rate_limited: int,
        rng: random.Random,
        retry_after: float | None = None,
    ) -> Decision:
        """What to do after a failed call.

        attempts: attempts burned so far (429s excluded); rate_limited: 429s seen by this row.
        """
        if cls is ErrorClass.STOP:
            return Decision(Action.STOP)
        if cls is ErrorClass.BLOCKED:
            return Decision(Action.BLOCK)
        if cls is ErrorClass.BAD_REQUEST:
            return Decision(Action.FAIL)
        if cls is ErrorClass.RATE_LIMITED:
            if rate_limited >= self.max_rate_limited:
                return Decision(Action.FAIL)
            # wait the server's delay (the shared gate adds to it under pressure); a little
            # jitter spreads the re-sends
            wait = retry_after if retry_after is not None else self.backoff(rate_limited, rng)
            return Decision(Action.RETRY, min(wait, self.max_delay * 3) + rng.uniform(0, 0.25))
        if attempts >= self.max_attempts:
            return Decision(Action.FAIL)
        if cls is ErrorClass.TRANSIENT:
            delay = self.backoff(attempts, rng)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.max_delay * 3))
            return Decision(Action.RETRY, delay)
        # invalid output or truncation: the answer came back, ask again at once
        return Decision(Action.RETRY)
