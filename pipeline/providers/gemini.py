"""Gemini generateContent: request building and response / usage / error parsing."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.core.reply import Prompt, Reply, ReplyKind, Shape
from pipeline.core.retry import ErrorClass
from pipeline.core.usage import Usage
from pipeline.providers.base import google_capacity, google_error
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


class GeminiProvider:
    api = "gemini"

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
        model_id = model.removeprefix("models/")
        self._url = f"{base_url}{model_path or f'/v1beta/models/{model_id}'}:generateContent"
        self._labels = labels
        self._thinking: dict[str, Any]
        if model_id.startswith("gemini-2"):
            self._thinking = {"thinkingBudget": THINKING_BUDGET[thinking]}
        else:
            self._thinking = {"thinkingLevel": thinking.upper()}
        self._temperature = temperature
        self._prefix: dict[tuple[int, int, str | None], bytes] = {}

    def url(self) -> str:
        return self._url

    def headers(self, api_key: str) -> dict[str, str]:
        return {"content-type": "application/json", "x-goog-api-key": api_key}

    def _head(self, shape: Shape, max_tokens: int, tier: str | None = None) -> bytes:
        key = (id(shape), max_tokens, tier)
        head = self._prefix.get(key)
        if head is None:
            config = {
                "responseMimeType": "application/json",
                "responseJsonSchema": shape.schema,
                "temperature": self._temperature,
                "maxOutputTokens": max_tokens,
                "thinkingConfig": self._thinking,
            }
            doc = {
                "systemInstruction": {"parts": [{"text": shape.system}]},
                "generationConfig": config,
            }
            if self._labels:
                doc["labels"] = self._labels
            if tier is not None:  # as google-genai sends it (the REST docs show "FLEX")
                doc["serviceTier"] = tier
            # the shared prefix is encoded once per job; only the user text is encoded per row
            head = orjson.dumps(doc)[:-1] + b',"contents":[{"role":"user","parts":[{"text":'
            self._prefix[key] = head
        return head

    def encode(self, prompt: Prompt, tier: str | None = None) -> bytes:
        return (
            self._head(prompt.shape, prompt.max_output_tokens, tier)
            + orjson.dumps(prompt.user)
            + b"}]}]}"
        )

    def parse(self, resp: HttpResponse) -> Reply:
        try:
            body = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            what = f"HTTP {resp.status}: unparseable body ({len(resp.body)} bytes)"
            cls = (
                ErrorClass.TRANSIENT
                if resp.status in (200, 429) or resp.status >= 500
                else ErrorClass.BAD_REQUEST
            )
            if resp.status == 429:
                cls = ErrorClass.RATE_LIMITED
            return Reply(ReplyKind.ERROR, resp.status, error_class=cls, error=what)
        if resp.status != 200:
            error = _error_object(body)
            cls, what, delay = google_error(resp.status, error)
            return Reply(
                ReplyKind.ERROR,
                resp.status,
                error_class=cls,
                error=what,
                retry_after=delay,
                capacity=google_capacity(resp.status, error),
            )
        if not isinstance(body, dict):
            return Reply(
                ReplyKind.ERROR,
                200,
                error_class=ErrorClass.TRANSIENT,
                error="HTTP 200 with a body that is not a JSON object",
            )
        return parse_generate_content(body)


def _error_object(body: Any) -> dict[str, Any]:
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error: dict[str, Any] = body["error"]
        return error
    return {"message": str(body)[:200]}


def usage_of(meta: Any) -> Usage:
    if not isinstance(meta, dict):
        return Usage()
    prompt = int(meta.get("promptTokenCount", 0) or 0)
    cached = int(meta.get("cachedContentTokenCount", 0) or 0)
    return Usage(
        input=max(0, prompt - cached),
        cached=cached,
        output=int(meta.get("candidatesTokenCount", 0) or 0),
        thinking=int(meta.get("thoughtsTokenCount", 0) or 0),
    )


def parse_generate_content(body: dict[str, Any]) -> Reply:
    """A 200 generateContent body -> Reply (shared by online calls and batch results)."""
    usage = usage_of(body.get("usageMetadata"))
    version = body.get("modelVersion")
    rid = body.get("responseId")
    feedback = body.get("promptFeedback")
    candidates = body.get("candidates")
    if isinstance(feedback, dict) and feedback.get("blockReason") and not candidates:
        block = {"reason": str(feedback["blockReason"]), "source": "promptFeedback"}
        if feedback.get("safetyRatings"):
            block["ratings"] = feedback["safetyRatings"]
        return Reply(
            ReplyKind.BLOCKED,
            200,
            usage,
            error=f"prompt blocked: {block['reason']}",
            block=block,
            model_version=version,
            response_id=rid,
        )
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        return Reply(
            ReplyKind.ERROR,
            200,
            usage,
            error_class=ErrorClass.TRANSIENT,
            error="HTTP 200 without candidates",
            model_version=version,
            response_id=rid,
        )
    cand = candidates[0]
    finish = str(cand.get("finishReason", "STOP"))
    if finish in BLOCK_FINISH:
        block = {"reason": finish, "source": "finishReason"}
        if cand.get("safetyRatings"):
            block["ratings"] = cand["safetyRatings"]
        return Reply(
            ReplyKind.BLOCKED,
            200,
            usage,
            error=f"answer blocked: finishReason {finish}",
            block=block,
            model_version=version,
            response_id=rid,
        )
    parts = (cand.get("content") or {}).get("parts") or []
    text = "".join(p.get("text", "") for p in parts if isinstance(p, dict) and not p.get("thought"))
    if finish == "MAX_TOKENS":
        return Reply(
            ReplyKind.TRUNCATED,
            200,
            usage,
            text=text,
            error="answer cut off: finishReason MAX_TOKENS",
            model_version=version,
            response_id=rid,
        )
    if finish not in ("STOP", "FINISH_REASON_UNSPECIFIED"):
        return Reply(
            ReplyKind.ERROR,
            200,
            usage,
            text=text,
            error_class=ErrorClass.INVALID_OUTPUT,
            error=f"finishReason {finish}",
            model_version=version,
            response_id=rid,
        )
    return Reply(ReplyKind.OK, 200, usage, text=text, model_version=version, response_id=rid)
