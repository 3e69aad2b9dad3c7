"""What a provider receives from a task and what it hands back to the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from pipeline.core.reply import Prompt, Reply, ReplyKind, Shape
from pipeline.core.retry import ErrorClass
from pipeline.core.usage import ZERO, Usage
from pipeline.transport import HttpResponse


class PrefixEncoder:
    """Owns the encoded request prefix a job's requests share: built once per (shape, output
    cap, tier), so only the row's text is encoded per request. A provider subclass says how
    the prefix is built (`head`) and what closes the body after the text (`tail`)."""

    tail: bytes = b""

    def __init__(self) -> None:
        self._prefix: dict[tuple[int, int, str | None], bytes] = {}

    def head(self, shape: Shape, max_tokens: int, tier: str | None) -> bytes:
        """The body up to the opening quote of the row's text."""
        raise NotImplementedError

    def encode(self, prompt: Prompt, tier: str | None = None) -> bytes:
        key = (id(prompt.shape), prompt.max_output_tokens, tier)
        head = self._prefix.get(key)
        if head is None:
            head = self._prefix[key] = self.head(prompt.shape, prompt.max_output_tokens, tier)
        return head + orjson.dumps(prompt.user) + self.tail


@dataclass(frozen=True)
class AnswerFields:
    """Where a provider's 200 body keeps its usage, model version and response id.

    Token counts are paths below `usage`. `output_has_thinking`: the output count includes the
    thinking tokens (OpenAI's completion_tokens) instead of leaving them out (Gemini's
    candidatesTokenCount). Both count cached tokens inside the prompt.
    """

    usage: str
    prompt: tuple[str, ...]
    cached: tuple[str, ...]
    output: tuple[str, ...]
    thinking: tuple[str, ...]
    output_has_thinking: bool
    version: str
    response_id: str

    def usage_of(self, raw: Any) -> Usage:
        if not isinstance(raw, dict):
            return ZERO
        prompt, cached = _count(raw, self.prompt), _count(raw, self.cached)
        output, thinking = _count(raw, self.output), _count(raw, self.thinking)
        if self.output_has_thinking:
            output = max(0, output - thinking)
        return Usage(max(0, prompt - cached), cached, output, thinking)

    def replies(self, body: dict[str, Any]) -> Replies:
        """Builds the Replies of one 200 answer with its usage, model version and id fixed."""
        usage = self.usage_of(body.get(self.usage))
        return Replies(usage, body.get(self.version), body.get(self.response_id))


class Replies:
    """The Replies of one 200 answer: its usage, model version and response id fixed, the
    rest named (explicit keywords: a `partial` merging them cost ~1 µs a call)."""

    __slots__ = ("model_version", "response_id", "usage")

    def __init__(self, usage: Usage, model_version: str | None, response_id: str | None):
        self.usage = usage
        self.model_version = model_version
        self.response_id = response_id

    def __call__(
        self,
        kind: ReplyKind,
        *,
        text: str | None = None,
        error_class: ErrorClass | None = None,
        error: str | None = None,
        block: dict[str, Any] | None = None,
    ) -> Reply:
        return Reply(
            kind,
            200,
            self.usage,
            text,
            error_class,
            error,
            None,
            block,
            self.model_version,
            self.response_id,
        )


def _count(raw: dict[str, Any], path: tuple[str, ...]) -> int:
    """The token count at `path` below a usage object; 0 where it is missing."""
    if len(path) == 1:  # most counts sit right in the usage object
        value = raw.get(path[0])
    else:
        value = raw
        for key in path:
            if not isinstance(value, dict):
                return 0
            value = value.get(key)
    return value if type(value) is int else int(value or 0)


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


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """What an error body says beyond its HTTP status, as a provider reads it.

    `text`: the one-line error; `stop`: the body names a job-level refusal whatever the status
    (an invalid key, a per-day quota, billing); `quota`: on a 429, whether it names a quota of
    the key (False: shared capacity ran out); `retry_after`: the server's delay in seconds.
    """

    text: str
    stop: bool = False
    quota: bool = True
    retry_after: float | None = None


# (status, the body's error object, response headers) -> what the body says
ErrorReader = Callable[[int, dict[str, Any], dict[str, str]], ErrorBody]


def status_class(status: int) -> ErrorClass:
    """The class an HTTP status gives on its own, the same for every provider and body.

    A 200 that could not be read is transient (a cut connection). 401/403/404 refuse every row
    alike (key, API, model or base URL), so the job stops. 408/409/5xx are retried, as both SDKs
    do. Any other 4xx, and a 1xx/2xx/3xx that is not 200 (a redirect loop, a proxy's page),
    fails the row: neither SDK retries them and sending again gets the same answer.
    """
    if status == 200:
        return ErrorClass.TRANSIENT
    if status == 429:
        return ErrorClass.RATE_LIMITED
    if status in (401, 403, 404):
        return ErrorClass.STOP
    if status in (408, 409) or status >= 500:
        return ErrorClass.TRANSIENT
    return ErrorClass.BAD_REQUEST


def error_reply(status: int, said: ErrorBody) -> Reply:
    """A failed call's Reply: the status's class, refined by what the body said."""
    cls = ErrorClass.STOP if said.stop else status_class(status)
    waits = cls in (ErrorClass.RATE_LIMITED, ErrorClass.TRANSIENT) or status == 429
    return Reply(
        ReplyKind.ERROR,
        status,
        error_class=cls,
        error=said.text,
        retry_after=said.retry_after if waits else None,
        # 503, or a 429 that names no quota of the key: on a Flex call a refusal, not a limit
        capacity=status == 503 or (status == 429 and not said.quota),
    )


def error_object(body: Any) -> dict[str, Any]:
    """The error object of a parsed error body: `{"error": {...}}`, or Gemini's OpenAI-compatible
    endpoint's `[{"error": {...}}]`; anything else becomes `{"message": ...}`."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error: dict[str, Any] = body["error"]
        return error
    return {"message": str(body)[:200]}


def classify_error(resp: HttpResponse, read: ErrorReader) -> Reply:
    """Any answer but a readable 200 -> an error Reply (also used by the batch clients)."""
    try:
        body = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        text = f"HTTP {resp.status}: unparseable body ({len(resp.body)} bytes)"
        return error_reply(resp.status, ErrorBody(text, quota=True))
    if resp.status == 200:
        return error_reply(200, ErrorBody("HTTP 200 with a body that is not a JSON object"))
    return error_reply(resp.status, read(resp.status, error_object(body), resp.headers))


def parse_reply(
    resp: HttpResponse, read: ErrorReader, success: Callable[[dict[str, Any]], Reply]
) -> Reply:
    """The one path from an HTTP answer to a Reply: a 200 JSON object goes to the provider's
    `success` parser, everything else through `classify_error`."""
    if resp.status == 200:
        try:
            body = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            return success(body)
    return classify_error(resp, read)


def line_error(status: int, said: ErrorBody) -> Reply:
    """One failed line of a provider batch: never stops the job, and a 429 in a batch's result
    is about that batch, not the key's per-minute quota, so the row just goes again."""
    reply = error_reply(status, said)
    cls = reply.error_class
    if cls is ErrorClass.STOP:
        cls = ErrorClass.BAD_REQUEST
    elif cls is ErrorClass.RATE_LIMITED:
        cls = ErrorClass.TRANSIENT
    return Reply(
        ReplyKind.ERROR, status, error_class=cls, error=said.text, retry_after=reply.retry_after
    )


def google_error(status: int, error: dict[str, Any], headers: dict[str, str]) -> ErrorBody:
    """Read a Google-shaped error object ({code, message, status, details}): Gemini, Vertex AI
    and Gemini's OpenAI-compatible endpoint. The delay is RetryInfo.retryDelay (no header)."""
    message = str(error.get("message", ""))[:300]
    grpc_status = str(error.get("status", ""))
    details = error.get("details") or []
    reasons: set[str] = set()
    quota_ids: list[str] = []
    quota_failure = False
    quota_zero = False
    retry_delay: float | None = None
    for d in details if isinstance(details, list) else []:
        if not isinstance(d, dict):
            continue
        kind = str(d.get("@type", ""))
        if kind.endswith("ErrorInfo"):
            reasons.add(str(d.get("reason", "")))
        elif kind.endswith("QuotaFailure"):
            quota_failure = True
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
            what = f"{what} ({scope}; resume when the quota resets)"
            return ErrorBody(what, stop=True, retry_after=retry_delay)
    stop = status == 400 and ("API_KEY_INVALID" in reasons or grpc_status == "FAILED_PRECONDITION")
    return ErrorBody(what, stop=stop, quota=quota_failure, retry_after=retry_delay)
