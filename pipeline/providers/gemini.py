"""Gemini generateContent: request building and response / usage / error parsing."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.core.reply import Reply, ReplyKind, Shape
from pipeline.core.retry import ErrorClass
from pipeline.providers.base import (
    AnswerFields,
    PrefixEncoder,
    google_error,
    parse_reply,
)
from pipeline.transport import HttpResponse

BLOCK_FINISH = {
    "SAFETY",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_SAFETY",
    "LANGUAGE",
}
THINKING_BUDGET = {"minimal": 0, "low": 1024, "medium": 8192, "high": 24576}


class GeminiProvider(PrefixEncoder):
    """Gemini's generateContent wire format (the Gemini API, Vertex AI, native gateways)."""

    api = "gemini"
    tail = b"}]}]}"

    def __init__(
        self,
        base_url: str,
        model: str,
        thinking: str,
        temperature: float,
        *,
        model_path: str | None = None,
        labels: dict[str, str] | None = None,
    ):
        """`model_path` replaces `/v1beta/models/{model}` (Vertex AI's project/location path);
        `labels` go on every request (Vertex AI bills them to the user's labels)."""
        super().__init__()
        model_id = model.removeprefix("models/")
        self._url = f"{base_url}{model_path or f'/v1beta/models/{model_id}'}:generateContent"
        self._labels = labels
        self._thinking: dict[str, Any]
        if model_id.startswith("gemini-2"):
            self._thinking = {"thinkingBudget": THINKING_BUDGET[thinking]}
        else:
            self._thinking = {"thinkingLevel": thinking.upper()}
        self._temperature = temperature
        self._caches: dict[str, str] = {}  # system instruction -> its cachedContents name

    def use_cache(self, system: str, name: str | None) -> None:
        """Name the context cache `name` instead of sending `system` (None: send it again)."""
        if name is None:
            self._caches.pop(system, None)
        else:
            self._caches[system] = name
        self._prefix.clear()

    def url(self) -> str:
        return self._url

    def headers(self, api_key: str) -> dict[str, str]:
        return {"content-type": "application/json", "x-goog-api-key": api_key}

    def head(self, shape: Shape, max_tokens: int, tier: str | None) -> bytes:
        config = {
            "responseMimeType": "application/json",
            "responseJsonSchema": shape.schema,
            "temperature": self._temperature,
            "maxOutputTokens": max_tokens,
            "thinkingConfig": self._thinking,
        }
        doc: dict[str, Any] = {
            "systemInstruction": {"parts": [{"text": shape.system}]},
            "generationConfig": config,
        }
        cached = self._caches.get(shape.system)
        if cached is not None:  # the API refuses a systemInstruction beside a cachedContent
            doc = {"cachedContent": cached, "generationConfig": config}
        if self._labels:
            doc["labels"] = self._labels
        if tier is not None:  # as google-genai sends it (the REST docs show "FLEX")
            doc["serviceTier"] = tier
        return orjson.dumps(doc)[:-1] + b',"contents":[{"role":"user","parts":[{"text":'

    def parse(self, resp: HttpResponse) -> Reply:
        return parse_reply(resp, google_error, parse_generate_content)


ANSWER = AnswerFields(
    usage="usageMetadata",
    prompt=("promptTokenCount",),
    cached=("cachedContentTokenCount",),
    output=("candidatesTokenCount",),
    thinking=("thoughtsTokenCount",),
    output_has_thinking=False,
    version="modelVersion",
    response_id="responseId",
)


def parse_generate_content(body: dict[str, Any]) -> Reply:
    """A 200 generateContent body -> Reply (shared by online calls and batch results)."""
    say = ANSWER.replies(body)
    feedback = body.get("promptFeedback")
    candidates = body.get("candidates")
    if isinstance(feedback, dict) and feedback.get("blockReason") and not candidates:
        block = {"reason": str(feedback["blockReason"]), "source": "promptFeedback"}
        if feedback.get("safetyRatings"):
            block["ratings"] = feedback["safetyRatings"]
        return say(ReplyKind.BLOCKED, error=f"prompt blocked: {block['reason']}", block=block)
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        return say(
            ReplyKind.ERROR,
            error_class=ErrorClass.TRANSIENT,
            error="HTTP 200 without candidates",
        )
    cand = candidates[0]
    finish = str(cand.get("finishReason", "STOP"))
    if finish in BLOCK_FINISH:
        block = {"reason": finish, "source": "finishReason"}
        if cand.get("safetyRatings"):
            block["ratings"] = cand["safetyRatings"]
        return say(ReplyKind.BLOCKED, error=f"answer blocked: finishReason {finish}", block=block)
    parts = (cand.get("content") or {}).get("parts") or []
    first = parts[0] if isinstance(parts, list) and len(parts) == 1 else None
    if isinstance(first, dict) and not first.get("thought"):  # most answers: one text part
        value = first.get("text")
        text = value if isinstance(value, str) else ""
    else:
        text = "".join(
            p.get("text", "") for p in parts if isinstance(p, dict) and not p.get("thought")
        )
    if finish == "MAX_TOKENS":
        return say(ReplyKind.TRUNCATED, text=text, error="answer cut off: finishReason MAX_TOKENS")
    if finish not in ("STOP", "FINISH_REASON_UNSPECIFIED"):
        return say(
            ReplyKind.ERROR,
            text=text,
            error_class=ErrorClass.INVALID_OUTPUT,
            error=f"finishReason {finish}",
        )
    return say(ReplyKind.OK, text=text)
