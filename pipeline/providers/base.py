"""What a provider receives from a task and what it hands back to the engine."""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.core.reply import Prompt, Reply
from pipeline.core.retry import ErrorClass
from pipeline.transport import HttpResponse


class Provider(Protocol):
    api: str

    def url(self) -> str: ...

    def headers(self, api_key: str) -> dict[str, str]: ...

    def encode(self, prompt: Prompt, tier: str | None = None) -> bytes: ...

    def parse(self, resp: HttpResponse) -> Reply: ...


def parse_duration(value: str | None) -> float | None:
    """'23s', '1.5s', '250ms', '6m0s', '2' -> seconds; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    total = 0.0
    number = ""
    i = 0
    matched = False
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        i += len(unit)
        if not number:
            return None
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit)
        if scale is None:
            return None
        total += float(number) * scale
        number = ""
        matched = True
    if number:
        total += float(number)
        matched = True
    return total if matched else None


def google_capacity(status: int, error: dict[str, Any]) -> bool:
    """503, or a bare 429 without a QuotaFailure: shared capacity ran out, not the key's quota."""
    if status == 503:
        return True
    if status != 429:
        return False
    details = error.get("details") or []
    return not any(
        isinstance(d, dict) and str(d.get("@type", "")).endswith("QuotaFailure")
        for d in (details if isinstance(details, list) else [])
    )


def google_error(status: int, error: dict[str, Any]) -> tuple[ErrorClass, str, float | None]:
    """Classify a Google-shaped error object ({code, message, status, details})."""
    message = str(error.get("message", ""))[:300]
    grpc_status = str(error.get("status", ""))
    details = error.get("details") or []
    reasons: set[str] = set()
    quota_ids: list[str] = []
    quota_zero = False
    retry_delay: float | None = None
    for d in details if isinstance(details, list) else []:
        if not isinstance(d, dict):
            continue
        kind = str(d.get("@type", ""))
        if kind.endswith("ErrorInfo"):
            reasons.add(str(d.get("reason", "")))
        elif kind.endswith("QuotaFailure"):
            for v in d.get("violations") or []:
                if isinstance(v, dict):
                    quota_ids.append(str(v.get("quotaId", "")))
                    quota_zero = quota_zero or str(v.get("quotaValue", "")) == "0"
        elif kind.endswith("RetryInfo"):
            retry_delay = parse_duration(str(d.get("retryDelay", "")))
    what = f"HTTP {status} {grpc_status}: {message}".strip()
    if status == 429:
        per_day = any("perday" in q.lower() for q in quota_ids)
        if per_day or quota_zero or ("billing" in message.lower() and not quota_ids):
            scope = "per-day quota" if per_day else "quota is 0 / billing"
            return ErrorClass.STOP, f"{what} ({scope}; resume when the quota resets)", retry_delay
        return ErrorClass.RATE_LIMITED, what, retry_delay
    if status in (401, 403, 404):
        return ErrorClass.STOP, what, None
    if status == 400 and ("API_KEY_INVALID" in reasons or grpc_status == "FAILED_PRECONDITION"):
        return ErrorClass.STOP, what, None
    if status in (408, 409) or status >= 500:
        return ErrorClass.TRANSIENT, what, retry_delay
    return ErrorClass.BAD_REQUEST, what, None
