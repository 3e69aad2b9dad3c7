"""Escalation: rows the first model could not answer go to a second, stronger model.

`[escalate]` names the second model (on the same provider), optionally a thinking level,
and when to use it: after the first model's answers were `invalid` (every attempt answered
something the schema or the task's checks refused) and/or after it `failed` otherwise
(errors, truncation). The row's bill carries over: its result holds the cost of every call
of both models, and records the model that produced it (`results.model`).
"""

from __future__ import annotations

from dataclasses import replace

from pipeline.core.verdict import Trigger
from pipeline.spec import JobSpec

TRIGGERS: tuple[Trigger, ...] = ("invalid", "failed")


def escalation_spec(spec: JobSpec) -> JobSpec:
    """The job as the second model runs it: its model and thinking level, nothing else."""
    e = spec.escalate
    assert e is not None
    provider = replace(spec.provider, thinking=e.thinking or spec.provider.thinking)
    return replace(spec, model=e.model, provider=provider, escalate=None)


def triggers(on: tuple[str, ...]) -> frozenset[Trigger]:
    """The job file's `escalate.on`, as the outcomes it names."""
    return frozenset(t for t in TRIGGERS if t in on)
