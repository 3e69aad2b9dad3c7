"""What the simulator writes to its ledger: one entry per call it answers (billed or not), one
per HTTP request of the batch lane (never billed), and the response ids it hands out."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import time

from pipeline.sim import core, model
from pipeline.sim.core import Req, Result
from pipeline.sim.ledger import Ledger

NO_USAGE = {"prompt": 0, "cached": 0, "output": 0, "thinking": 0}


class Recorder:
    """Owns the ledger's entries (not its file: that is the Ledger's) and the response ids."""

    def __init__(self, ledger: Ledger, projects: dict[str, str], seed: int):
        self.ledger = ledger
        self.projects = projects
        self.enabled = ledger.path is not None
        self.counter = itertools.count(1)
        salt = f"{seed}:{time.time_ns()}:{os.getpid()}".encode()
        digest = hashlib.blake2b(salt, digest_size=9).digest()
        self.id_prefix = base64.urlsafe_b64encode(digest).decode()

    def response_id(self) -> str:
        return f"{self.id_prefix}{next(self.counter):010x}"

    def call(
        self,
        req: Req,
        status: int,
        fault: str | None,
        result: Result | None = None,
        rid: str | None = None,
        lane: str | None = None,
    ) -> None:
        """One model call: billed when it has a result."""
        if not self.enabled:
            return
        lane = lane or ("flex" if req.tier == "flex" else "standard")
        items = 1
        if req.schema is not None and req.schema.packed_item is not None:
            unpacked = model.unpack(req.user)
            items = len(unpacked) if unpacked is not None else 1
        usage = NO_USAGE
        if result is not None:
            usage = {
                "prompt": result.prompt,
                "cached": result.cached,
                "output": result.output,
                "thinking": result.thinking,
            }
        self.ledger.record(
            {
                "t": time.time(),
                "api": req.api,
                "path": req.path,
                "model": req.model,
                "status": status,
                "fault": fault,
                "billed": result is not None,
                "usage": usage,
                "items": items,
                "lane": lane,
                "http": lane != "batch",
                "response_id": rid,
                "text_hash": hashlib.blake2b(
                    core.strip_feedback(req.user).encode(), digest_size=8
                ).hexdigest(),
                "project": self.projects.get(req.key),
                **(
                    {"channel": "vertex", "token": req.token, "labels": req.labels}
                    if req.vertex
                    else {}
                ),
            }
        )

    def http(self, path: str, status: int) -> None:
        """One HTTP request of the batch lane (an upload, a create, a poll): not billed."""
        if not self.enabled:
            return
        self.ledger.record(
            {
                "t": time.time(),
                "api": "batch",
                "path": path,
                "status": status,
                "billed": False,
                "http": True,
                "lane": "batch",
                "usage": NO_USAGE,
                "items": 0,
            }
        )
