"""Batch jobs and files as both batch APIs keep them: what a job holds, how it advances with
time and is answered once, and the faults a created batch may meet.

A batch finishes `batch_seconds` after it was created; `batch_faults` are consumed one per
created batch: "ok", "expire", "fail" or "invalid=0.03" (that share of answers breaks schema),
"stall" / "stall=SECONDS" (held PENDING for ever / that much longer, then answered, billed) or
"lie" (reported SUCCEEDED with every line failed, nothing billed). What differs between the
APIs (how a line is read and answered, names, views) is a `Dialect`: batch_gemini.py and
batch_openai.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from pipeline.sim import core
from pipeline.sim.config import Config
from pipeline.sim.core import BadRequest, Req, Result
from pipeline.sim.faults import Picker
from pipeline.sim.record import Recorder

ENDED = ("succeeded", "failed", "expired", "cancelled")


def timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Dialect(Protocol):
    """How one batch API reads a request line and writes an answer line."""

    api: str  # "gemini" | "openai": the ledger's name for the API

    def parse(self, body: Any, req: Req) -> None: ...

    def answer(self, key: str, result: Result, model: str, rid: str) -> dict[str, Any]: ...

    def line_error(self, key: str, message: str, code: int) -> dict[str, Any]: ...

    def output_name(self, tag: str) -> str: ...


@dataclass
class SimFile:
    name: str  # "files/abc" (Gemini) or "file-abc" (OpenAI)
    display: str
    mime: str
    data: bytes
    created: float


@dataclass
class Job:
    dialect: Dialect
    name: str
    model: str
    display: str
    key: str
    lines: list[tuple[str, Any]]  # (key or custom_id, request body)
    inline: bool
    created: float
    fault: str
    input_file: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    state: str = "pending"  # pending running succeeded failed expired cancelled
    outputs: list[dict[str, Any]] | None = None
    output_file: str | None = None
    ok: int = 0
    failed: int = 0
    ended: float | None = None


class ProviderBatches:
    """Owns every file, upload and batch job of both APIs, and their fate."""

    def __init__(self, cfg: Config, record: Recorder, picker: Picker):
        self.cfg = cfg
        self.record = record
        self.picker = picker
        self.files: dict[str, SimFile] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self.faults = list(cfg.batch_faults)
        self.rng = random.Random(cfg.seed + 3)
        self.create_delay = cfg.batch_create_delay

    def jobs_of(self, dialect: Dialect) -> list[Job]:
        return [j for j in self.jobs.values() if j.dialect is dialect]

    def add_file(self, name: str, display: str, mime: str, data: bytes) -> SimFile:
        self.files[name] = SimFile(name, display, mime, data, time.time())
        return self.files[name]

    def take_fault(self) -> str:
        return self.faults.pop(0) if self.faults else "ok"

    async def created(self, job: Job, path: str) -> None:
        """Keep and log the create; the first one may answer late (the batch exists already)."""
        self.jobs[job.name] = job
        self.record.http(path, 200)
        if self.create_delay:
            delay, self.create_delay = self.create_delay, 0.0
            self.record.ledger.flush()
            await asyncio.sleep(delay)

    def cancel(self, job: Job) -> None:
        self.advance(job)
        if job.state in ("pending", "running"):
            job.state, job.ended = "cancelled", time.time()

    def advance(self, job: Job) -> None:
        if job.state in ENDED:
            return
        age = time.time() - job.created
        delay = self.cfg.batch_seconds
        hold = 0.0
        if job.fault.startswith("stall"):
            hold = float(job.fault.split("=", 1)[1]) if "=" in job.fault else float("inf")
        if age < delay * 0.3 + hold:
            job.state = "pending"
            return
        if age < delay + hold:
            job.state = "running"
            return
        job.ended = time.time()
        if job.fault in ("expire", "fail"):
            job.state = "expired" if job.fault == "expire" else "failed"
            return
        if job.fault == "lie":
            self._lie(job)
        else:
            self._answer(job)
        job.state = "succeeded"

    def _lie(self, job: Job) -> None:
        """Succeeded, says the batch; every line holds an error and nothing is billed."""
        job.failed = len(job.lines)
        error = "Internal error encountered."
        self._keep_outputs(job, [job.dialect.line_error(k, error, 500) for k, _ in job.lines])

    def _answer(self, job: Job) -> None:
        """Answer every line once (billed in the ledger at the batch lane)."""
        bad = self._broken_lines(job)
        outputs: list[dict[str, Any]] = []
        for i, (k, body) in enumerate(job.lines):
            req = Req(job.dialect.api, f"batch:{job.name}", job.model, job.key)
            try:
                job.dialect.parse(body, req)
            except BadRequest as e:
                job.failed += 1
                outputs.append(job.dialect.line_error(k, e.message, 400))
                continue
            fault, drop = self.picker.forced(None, core.unpacked_texts(req))
            if i in bad:
                fault = "bad_enum" if req.schema is not None and i % 2 else "bad_json"
            result = core.generate(req, fault, drop, 0)
            rid = self.record.response_id()
            self.record.call(req, 200, fault, result, rid, lane="batch")
            job.ok += 1
            outputs.append(job.dialect.answer(k, result, job.model, rid))
        self._keep_outputs(job, outputs)

    def _broken_lines(self, job: Job) -> set[int]:
        """The lines an "invalid=SHARE" fault answers against the schema."""
        if not job.fault.startswith("invalid="):
            return set()
        share = float(job.fault.split("=", 1)[1])
        if not share:
            return set()
        n = max(1, round(len(job.lines) * share))
        return set(self.rng.sample(range(len(job.lines)), min(n, len(job.lines))))

    def _keep_outputs(self, job: Job, outputs: list[dict[str, Any]]) -> None:
        job.outputs = outputs
        if not job.inline:
            tag = job.name.split("/")[-1]
            data = b"".join(orjson.dumps(o) + b"\n" for o in outputs)
            name = job.dialect.output_name(tag)
            self.add_file(name, f"batch-{tag}", "application/jsonl", data)
            job.output_file = name
