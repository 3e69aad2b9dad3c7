"""OpenAI-compatible chat completions (OpenAI, gateways, Gemini's /v1beta/openai endpoint)."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.core.reply import Prompt, Reply, ReplyKind, Shape
from pipeline.core.retry import ErrorClass
from pipeline.core.usage import Usage
from pipeline.providers.base import google_capacity, google_error, parse_duration
from pipeline.transport import HttpResponse

STOP_CODES = {
    "insufficient_quota",
    "billing_hard_limit_reached",
    "invalid_api_key",
    "model_not_found",
}


class OpenAIProvider:
    api = "openai"

    def __init__(self, base_url: str, model: str, thinking: str, temperature: float):
        self._url = f"{base_url}/chat/completions"
        self._model = model
        self._effort = thinking
        self._temperature = temperature
        self._prefix: dict[tuple[int, int, str | None], bytes] = {}

    def url(self) -> str:
        return self._url

    def headers(self, api_key: str) -> dict[str, str]:
        return {"content-type": "application/json", "authorization": f"Bearer {api_key}"}

    def _head(self, shape: Shape, max_tokens: int, tier: str | None = None) -> bytes:
        key = (id(shape), max_tokens, tier)
        head = self._prefix.get(key)
        if head is None:
            doc = {
                "model": self._model,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": shape.name, "strict": True, "schema": shape.schema},
                },
                "max_completion_tokens": max_tokens,
                "reasoning_effort": self._effort,
                "temperature": self._temperature,
            }
            if tier is not None:
                doc["service_tier"] = tier
            system = orjson.dumps({"role": "system", "content": shape.system})
            head = (
                orjson.dumps(doc)[:-1] + b',"messages":[' + system + b',{"role":"user","content":'
            )
            self._prefix[key] = head
        return head

    def encode(self, prompt: Prompt, tier: str | None = None) -> bytes:
        return (
            self._head(prompt.shape, prompt.max_output_tokens, tier)
            + orjson.dumps(prompt.user)
            + b"}]}"
        )

    def parse(self, resp: HttpResponse) -> Reply:
        try:
            body = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            cls = ErrorClass.BAD_REQUEST if 400 <= resp.status < 429 else ErrorClass.TRANSIENT
            if resp.status == 429:
                cls = ErrorClass.RATE_LIMITED
            return Reply(
                ReplyKind.ERROR,
                resp.status,
                error_class=cls,
                error=f"HTTP {resp.status}: unparseable body ({len(resp.body)} bytes)",
            )
        if resp.status != 200:
            return _error_reply(resp, body)
        if not isinstance(body, dict):
            return Reply(
                ReplyKind.ERROR,
                200,
                error_class=ErrorClass.TRANSIENT,
                error="HTTP 200, not an object",
            )
        return parse_chat_completion(body)


def usage_of(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    prompt = int(raw.get("prompt_tokens", 0) or 0)
    completion = int(raw.get("completion_tokens", 0) or 0)
    cached = int((raw.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0)
    reasoning = int((raw.get("completion_tokens_details") or {}).get("reasoning_tokens", 0) or 0)
    return Usage(
        input=max(0, prompt - cached),
        cached=cached,
        output=max(0, completion - reasoning),
        thinking=reasoning,
    )


def parse_chat_completion(body: dict[str, Any]) -> Reply:
    usage = usage_of(body.get("usage"))
    version = body.get("model")
    rid = body.get("id")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return Reply(
            ReplyKind.ERROR,
            200,
            usage,
            error_class=ErrorClass.TRANSIENT,
            error="HTTP 200 without choices",
            model_version=version,
            response_id=rid,
        )
    choice = choices[0]
    message = choice.get("message") or {}
    finish = str(choice.get("finish_reason") or "stop")
    refusal = message.get("refusal")
    if refusal:
        block = {"reason": "refusal", "source": "message.refusal", "refusal": str(refusal)[:500]}
        return Reply(
            ReplyKind.BLOCKED,
            200,
            usage,
            error=f"refusal: {str(refusal)[:200]}",
            block=block,
            model_version=version,
            response_id=rid,
        )
    if finish == "content_filter":
        block = {"reason": "content_filter", "source": "finish_reason"}
        return Reply(
            ReplyKind.BLOCKED,
            200,
            usage,
            error="answer blocked: finish_reason content_filter",
            block=block,
            model_version=version,
            response_id=rid,
        )
    text = message.get("content") or ""
    if finish == "length":
        return Reply(
            ReplyKind.TRUNCATED,
            200,
            usage,
            text=text,
            error="answer cut off: finish_reason length",
            model_version=version,
            response_id=rid,
        )
    return Reply(ReplyKind.OK, 200, usage, text=text, model_version=version, response_id=rid)


def _error_reply(resp: HttpResponse, body: Any) -> Reply:
    status = resp.status
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # Gemini's OpenAI-compatible endpoint wraps errors in a list
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(body)[:200]}
    if "status" in error or "details" in error:
        cls, what, delay = google_error(status, error)
        return Reply(
            ReplyKind.ERROR,
            status,
            error_class=cls,
            error=what,
            retry_after=delay,
            capacity=google_capacity(status, error),
        )
    code = str(error.get("code") or error.get("type") or "")
    message = str(error.get("message", ""))[:300]
    what = f"HTTP {status} {code}: {message}".strip()
    delay = _retry_after(resp.headers)
    if code in STOP_CODES or str(error.get("type")) in STOP_CODES or status in (401, 403, 404):
        return Reply(ReplyKind.ERROR, status, error_class=ErrorClass.STOP, error=what)
    if status == 429:
        return Reply(
            ReplyKind.ERROR,
            status,
            error_class=ErrorClass.RATE_LIMITED,
            error=what,
            retry_after=delay,
            capacity=code not in ("rate_limit_exceeded", "tokens", "requests"),
        )
    if status in (408, 409) or status >= 500:
        return Reply(
            ReplyKind.ERROR,
            status,
            error_class=ErrorClass.TRANSIENT,
            error=what,
            retry_after=delay,
            capacity=status == 503,
        )
    return Reply(ReplyKind.ERROR, status, error_class=ErrorClass.BAD_REQUEST, error=what)


def _retry_after(headers: dict[str, str]) -> float | None:
    if ms := headers.get("retry-after-ms"):
        seconds = parse_duration(ms)
        return seconds / 1000 if seconds is not None else None
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        seconds = parse_duration(headers.get(name))
        if seconds is not None:
            return seconds
    return None
