"""OpenAI-compatible chat completions (OpenAI, gateways, Gemini's /v1beta/openai endpoint)."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.core.reply import Reply, ReplyKind, Shape
from pipeline.core.retry import ErrorClass
from pipeline.providers.base import (
    AnswerFields,
    ErrorBody,
    PrefixEncoder,
    google_error,
    parse_duration,
    parse_reply,
)
from pipeline.transport import HttpResponse

STOP_CODES = {
    "insufficient_quota",
    "billing_hard_limit_reached",
    "invalid_api_key",
    "model_not_found",
}
# a 429 with one of these names the key's own per-minute limit; any other 429 is capacity
QUOTA_CODES = {"rate_limit_exceeded", "tokens", "requests"}


class OpenAIProvider(PrefixEncoder):
    """The chat/completions wire format (OpenAI, gateways, Gemini's OpenAI-compatible API)."""

    api = "openai"
    tail = b"}]}"

    def __init__(self, base_url: str, model: str, thinking: str, temperature: float):
        super().__init__()
        self._url = f"{base_url}/chat/completions"
        self._model = model
        self._effort = thinking
        self._temperature = temperature

    def url(self) -> str:
        return self._url

    def headers(self, api_key: str) -> dict[str, str]:
        return {"content-type": "application/json", "authorization": f"Bearer {api_key}"}

    def head(self, shape: Shape, max_tokens: int, tier: str | None) -> bytes:
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
        return orjson.dumps(doc)[:-1] + b',"messages":[' + system + b',{"role":"user","content":'

    def parse(self, resp: HttpResponse) -> Reply:
        return parse_reply(resp, openai_error, parse_chat_completion)


ANSWER = AnswerFields(
    usage="usage",
    prompt=("prompt_tokens",),
    cached=("prompt_tokens_details", "cached_tokens"),
    output=("completion_tokens",),
    thinking=("completion_tokens_details", "reasoning_tokens"),
    output_has_thinking=True,
    version="model",
    response_id="id",
)


def parse_chat_completion(body: dict[str, Any]) -> Reply:
    """A 200 chat.completion body -> Reply (shared by online calls and batch results)."""
    say = ANSWER.replies(body)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return say(
            ReplyKind.ERROR, error_class=ErrorClass.TRANSIENT, error="HTTP 200 without choices"
        )
    choice = choices[0]
    message = choice.get("message") or {}
    finish = str(choice.get("finish_reason") or "stop")
    refusal = message.get("refusal")
    if refusal:
        block = {"reason": "refusal", "source": "message.refusal", "refusal": str(refusal)[:500]}
        return say(ReplyKind.BLOCKED, error=f"refusal: {str(refusal)[:200]}", block=block)
    if finish == "content_filter":
        block = {"reason": "content_filter", "source": "finish_reason"}
        return say(
            ReplyKind.BLOCKED, error="answer blocked: finish_reason content_filter", block=block
        )
    text = message.get("content") or ""
    if finish == "length":
        return say(ReplyKind.TRUNCATED, text=text, error="answer cut off: finish_reason length")
    return say(ReplyKind.OK, text=text)


def openai_error(status: int, error: dict[str, Any], headers: dict[str, str]) -> ErrorBody:
    """Read an OpenAI error object ({message, type, param, code}); the delay comes from the
    headers. Gemini's OpenAI-compatible endpoint answers in Google's shape instead."""
    if "status" in error or "details" in error:
        return google_error(status, error, headers)
    code = str(error.get("code") or error.get("type") or "")
    message = str(error.get("message", ""))[:300]
    return ErrorBody(
        f"HTTP {status} {code}: {message}".strip(),
        stop=code in STOP_CODES or str(error.get("type")) in STOP_CODES,
        quota=code in QUOTA_CODES,
        retry_after=_retry_after(headers),
    )


def _retry_after(headers: dict[str, str]) -> float | None:
    if ms := headers.get("retry-after-ms"):
        seconds = parse_duration(ms)
        return seconds / 1000 if seconds is not None else None
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        seconds = parse_duration(headers.get(name))
        if seconds is not None:
            return seconds
    return None
