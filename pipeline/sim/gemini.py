"""Gemini generateContent: request parsing (camelCase and snake_case) and response bodies."""

from __future__ import annotations

from typing import Any

from pipeline.sim import envelopes, tokens
from pipeline.sim.core import (
    PROHIBITED,
    PROMPT_BLOCKED,
    SAFETY,
    BadRequest,
    Req,
    Result,
    compile_schema,
)

SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "LOW"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
]


def get(d: dict[str, Any], camel: str, snake: str) -> Any:
    value = d.get(camel)
    return d.get(snake) if value is None else value


def _texts(content: Any, where: str) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, dict):
        raise BadRequest(
            f"Invalid value at '{where}' (type.googleapis.com/google.ai.generativelanguage."
            f"v1beta.Content), {str(content)[:40]}",
            violations=[(where, f"Invalid value at '{where}'")],
        )
    parts = content.get("parts") or []
    if not isinstance(parts, list):
        parts = [parts]
    return [str(p["text"]) for p in parts if isinstance(p, dict) and "text" in p]


def parse(body: Any, req: Req) -> None:
    """Fill `req` from a GenerateContentRequest; BadRequest for what the API rejects."""
    if not isinstance(body, dict):
        raise BadRequest(
            "Invalid JSON payload received. Expected an object.",
            violations=[(None, "Invalid JSON payload received. Expected an object.")],
        )
    contents = body.get("contents")
    if isinstance(contents, dict | str):
        contents = [contents]
    if not contents or not isinstance(contents, list):
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified\n")
    texts: list[str] = []
    for i, content in enumerate(contents):
        texts.extend(_texts(content, f"contents[{i}]"))
    req.user = "\n".join(texts)
    system = get(body, "systemInstruction", "system_instruction")
    if system is not None:
        req.system = "\n".join(_texts(system, "system_instruction"))
    cached = get(body, "cachedContent", "cached_content")
    if cached is not None:
        if system is not None:
            raise BadRequest(
                "CachedContent can not be used with GenerateContent request setting "
                "system_instruction, tools or tool_config.\n\nProposed fix: move those values "
                "to CachedContent from GenerateContent request."
            )
        req.context_cache = str(cached)
    tier = get(body, "serviceTier", "service_tier")
    if tier is not None:
        req.tier = str(tier).lower()
        if req.tier not in ("standard", "flex", "priority"):
            raise BadRequest(
                f"Invalid value at 'service_tier' (type.googleapis.com/google.ai."
                f'generativelanguage.v1beta.ServiceTier), "{tier}"',
                violations=[("service_tier", f"Invalid value at 'service_tier', \"{tier}\"")],
            )
    config = get(body, "generationConfig", "generation_config") or {}
    if not isinstance(config, dict):
        raise BadRequest("Invalid value at 'generation_config'.")
    mime = get(config, "responseMimeType", "response_mime_type")
    schema = get(config, "responseJsonSchema", "response_json_schema")
    where = "generation_config.response_json_schema"
    if schema is None:
        schema = get(config, "responseSchema", "response_schema")
        where = "generation_config.response_schema"
    if schema is not None:
        req.schema = compile_schema(schema, where)
    req.json_mode = mime == "application/json"
    req.enum_text = mime == "text/x.enum"
    max_out = get(config, "maxOutputTokens", "max_output_tokens")
    if max_out is not None:
        if not isinstance(max_out, int) or max_out < 0:
            raise BadRequest("Invalid value at 'generation_config.max_output_tokens'.")
        req.max_out = max_out or None
    thinking = get(config, "thinkingConfig", "thinking_config") or {}
    if isinstance(thinking, dict):
        level = get(thinking, "thinkingLevel", "thinking_level")
        budget = get(thinking, "thinkingBudget", "thinking_budget")
        if level is not None and budget is not None:
            raise BadRequest("Request contains an invalid argument.")
        if level is not None:
            req.level = str(level).lower()
            if req.level not in tokens.LEVELS:
                raise BadRequest(
                    f"Invalid value at 'generation_config.thinking_config.thinking_level' "
                    f'(type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingLevel), "{level}"'
                )
        if budget is not None:
            req.budget = int(budget)


def usage(r: Result) -> dict[str, Any]:
    meta: dict[str, Any] = {"promptTokenCount": r.prompt}
    if r.output or r.text is not None:
        meta["candidatesTokenCount"] = r.output
    meta["totalTokenCount"] = r.total
    if r.cached:
        meta["cachedContentTokenCount"] = r.cached
    meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": r.prompt}]
    if r.cached:
        meta["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": r.cached}]
    if r.thinking:
        meta["thoughtsTokenCount"] = r.thinking
    return meta


def candidate(r: Result, text: str | None, finish: str | None) -> dict[str, Any]:
    if r.finish == SAFETY:
        return {"finishReason": SAFETY, "index": 0, "safetyRatings": SAFETY_RATINGS}
    if r.finish == PROHIBITED:
        return {"finishReason": PROHIBITED, "index": 0}
    content: dict[str, Any] = {"role": "model"}
    if text is not None:
        content = {"parts": [{"text": text}], "role": "model"}
    cand: dict[str, Any] = {"content": content}
    if finish is not None:
        cand["finishReason"] = finish
    cand["index"] = 0
    return cand


def body(r: Result, model: str, rid: str) -> dict[str, Any]:
    if r.finish == PROMPT_BLOCKED:
        return {
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": usage(r),
            "modelVersion": model,
            "responseId": rid,
        }
    return {
        "candidates": [candidate(r, r.text, r.finish)],
        "usageMetadata": usage(r),
        "modelVersion": model,
        "responseId": rid,
    }


def chunks(r: Result, model: str, rid: str) -> list[dict[str, Any]]:
    """Stream chunks: the text in up to three pieces, cumulative usage, finishReason on the last."""
    text = r.text
    if r.finish == PROMPT_BLOCKED or text is None or len(text) < 8:
        return [body(r, model, rid)]
    cut1, cut2 = len(text) // 3, 2 * len(text) // 3
    pieces = [text[:cut1], text[cut1:cut2], text[cut2:]]
    out = []
    seen = ""
    for i, piece in enumerate(pieces):
        seen += piece
        last = i == len(pieces) - 1
        part = Result(
            piece,
            r.finish,
            r.prompt,
            r.cached,
            r.output if last else min(r.output, tokens.count(seen)),
            r.thinking,
        )
        out.append(
            {
                "candidates": [candidate(part, piece, r.finish if last else None)],
                "usageMetadata": usage(part),
                "modelVersion": model,
                "responseId": rid,
            }
        )
    return out


def fault_error(
    fault: str, model: str, version: str, method: str, rpm: int, rpd: int, retry_s: float = 1.0
) -> tuple[int, Any] | None:
    """(status, body) of an error fault on a Gemini endpoint, or None for non-error faults."""
    if fault == "429":
        return 429, envelopes.quota(model, per="minute", limit=rpm, retry_s=retry_s)
    if fault in ("429-day", "insufficient_quota"):
        return 429, envelopes.quota(model, per="day", limit=rpd, retry_s=1.0)
    if fault == "404":
        return 404, envelopes.not_found(model, version, method)
    if fault in envelopes.GOOGLE_FAULTS:
        return int(fault), envelopes.GOOGLE_FAULTS[fault]
    return None
