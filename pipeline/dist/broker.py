"""The quota broker: one Ray actor per key pool, holding the pool's QuotaPolicy for every
worker. Workers lease blocks of capacity and report what they used with their next lease.

Ray restarts a broker that dies (`max_restarts=-1`) and retries the leases that were in flight
(`max_task_retries=-1`); the new one starts with empty buckets, so it cannot burst over what
its predecessor already let through this minute. Its per-day count starts from what the driver
found in the store when the run began (`sent_today`, the calls stored since the quota day
began), and each worker's next report adds every request that worker has sent with the pool
in this run; only the requests of workers that died before the restart are not counted again.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.pools import DAY, Grant, PoolSpec, QuotaPolicy, Report


class QuotaBroker:
    def __init__(self, pool: PoolSpec, sent_today: int = 0, day_left: float = DAY):
        self.policy = QuotaPolicy(pool, time.monotonic, sent_today=sent_today, day_left=day_left)
        self.started = time.time()

    def lease(self, want: int, tokens_each: int, report: Report) -> Grant:
        return self.policy.lease(want, tokens_each, report)

    def report(self, report: Report) -> None:
        self.policy.report(report)

    def stats(self) -> dict[str, Any]:
        p = self.policy
        return {
            "pool": p.spec.name,
            "state": p.state.value,
            "reason": p.reason,
            "leases": p.leases,
            "rate_limited": p.rate_limited,
            "rpm": p.current_rpm,
            "sent_today": p.sent_today,
            "gate_closures": p.gate.closures,
            "started": self.started,
        }
