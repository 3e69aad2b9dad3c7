"""The simulator's settings (the flags of `flashpipe sim`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 0
    profile: str = "clean"
    seed: int = 7
    key: str = "sim-key"
    latency_ms: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    ledger: str | None = None
    faults: dict[str, float] = field(default_factory=dict)
    hang_seconds: float = 30.0
    cache_min_tokens: int = 1024
    flex_shed: float = 0.0  # share of Flex calls refused (not billed)
    flex_slowdown: float = 2.0  # Flex answers this many times slower
    batch_seconds: float = 2.0  # a batch finishes this long after it was created
    batch_faults: list[str] = field(default_factory=list)  # one per created batch, in order
    batch_create_delay: float = 0.0  # the first batch create answers this late (it is created)
    token_seconds: float = 3600.0  # life of a Vertex AI access token from /token
    # more keys, each in a project (keys of a project share its quota windows), and limits of
    # a project's own (rpm, tpm, rpd); the main `key` is a project of its own name
    keys: dict[str, str] = field(default_factory=dict)
    fault_retry_s: float = 1.0  # the retryDelay of an injected Gemini per-minute 429
    project_limits: dict[str, tuple[int | None, int | None, int | None]] = field(
        default_factory=dict
    )
