"""Fixtures: the simulator over loopback, each with a ledger in tmp_path (plain helpers are in
tests/support.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.simproc import SimProcess


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    started: list[SimProcess] = []

    def make(*args: str, ledger: bool = True) -> SimProcess:
        path = tmp_path / f"ledger{len(started)}.jsonl" if ledger else None
        sim = SimProcess(args, ledger=path).start()
        started.append(sim)
        return sim

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def sim(sim_factory: Callable[..., SimProcess]) -> SimProcess:
    return sim_factory()
