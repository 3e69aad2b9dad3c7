"""OpenAI chat completions (and Gemini's OpenAI-compatible endpoint): parsing and bodies."""

from __future__ import annotations

from typing import Any

from pipeline.sim import envelopes
from pipeline.sim.core import CONTENT_FILTER, MAX_TOKENS, BadRequest, Req, Result, compile_schema


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(
            str(p.get("text", "")) for p in value if isinstance(p, dict) and p.get("type") == "text"
        )
    return "" if value is None else str(value)


def parse(body: Any, req: Req) -> None:
    if not isinstance(body, dict):
        raise BadRequest("Invalid type for request body: expected an object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", field="model")
    req.model = model.removeprefix("models/")
    tier = body.get("service_tier")
    if tier is not None:
        if tier not in ("auto", "default", "flex", "priority", "scale"):
            raise BadRequest(
                f"Invalid value: '{tier}'. Supported values are: 'auto', 'default', 'flex', "
                "'scale', and 'priority'.",
                field="service_tier",
                code="invalid_value",
            )
        req.tier = str(tier)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest(
            "Missing required parameter: 'messages'.",
            field="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            field="messages",
            code="empty_array",
        )
    system: list[str] = []
    user: list[str] = []
    for m in messages:
        if not isinstance(m, dict):
            raise BadRequest("Invalid type for 'messages': expected an object.", field="messages")
        text = _content(m.get("content"))
        (system if m.get("role") in ("system", "developer") else user).append(text)
    req.system = "\n".join(system)
    req.user = "\n".join(user)
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise BadRequest(
                    "Missing required parameter: 'response_format.json_schema'.",
                    field="response_format.json_schema",
                    code="missing_required_parameter",
                )
            try:
                req.schema = compile_schema(spec["schema"], "response_format.json_schema.schema")
            except BadRequest as e:
                name = spec.get("name", "response")
                raise BadRequest(
                    f"Invalid schema for response_format '{name}': {e.message}",
                    field="response_format",
                    violations=e.violations,
                ) from None
        req.json_mode = kind in ("json_object", "json_schema")
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    if cap is not None:
        if not isinstance(cap, int) or cap < 1:
            raise BadRequest(
                f"Invalid 'max_completion_tokens': integer below minimum value. Expected a value "
                f">= 1, but got {cap} instead.",
                field="max_completion_tokens",
                code="integer_below_min_value",
            )
        req.max_out = cap
    effort = body.get("reasoning_effort")
    if isinstance(effort, str):
        req.level = "minimal" if effort in ("none", "minimal") else effort.lower()
    google = (body.get("extra_body") or {}).get("google") or body.get("google") or {}
    thinking = google.get("thinking_config") if isinstance(google, dict) else None
    if isinstance(thinking, dict):
        budget = thinking.get("thinking_budget", thinking.get("thinkingBudget"))
        level = thinking.get("thinking_level", thinking.get("thinkingLevel"))
        if level is not None:
            req.level = str(level).lower()
        elif budget is not None:
            req.level, req.budget = None, int(budget)
    req.stream = bool(body.get("stream"))
    options = body.get("stream_options")
    req.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    if req.level is None and req.budget is None and req.model.startswith("gpt-4"):
        req.level = "minimal"


def usage(r: Result) -> dict[str, Any]:
    return {
        "prompt_tokens": r.prompt,
        "completion_tokens": r.output + r.thinking,
        "total_tokens": r.total,
        "prompt_tokens_details": {"cached_tokens": r.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": r.thinking,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def finish_reason(r: Result) -> str:
    if r.finish == MAX_TOKENS:
        return "length"
    if r.finish in (CONTENT_FILTER, "SAFETY", "PROHIBITED_CONTENT", "PROMPT_BLOCKED"):
        return "content_filter"
    return "stop"


def body(r: Result, model: str, rid: str, created: int, tier: str = "default") -> dict[str, Any]:
    text = r.text if r.text is not None or r.finish != MAX_TOKENS else ""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": r.refusal,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason(r),
            }
        ],
        "usage": usage(r),
        "service_tier": tier,
        "system_fingerprint": None,
    }


def chunks(r: Result, model: str, rid: str, created: int, with_usage: bool) -> list[Any]:
    head = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice], "usage": None}

    out = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    text = r.text or ""
    step = max(1, len(text) // 3 + 1)
    for i in range(0, len(text), step):
        out.append(chunk({"content": text[i : i + step]}, None))
    if r.refusal:
        out.append(chunk({"refusal": r.refusal}, None))
    out.append(chunk({}, finish_reason(r)))
    if with_usage:
        out.append({**head, "choices": [], "usage": usage(r)})
    return out


def rate_headers(limit_r: int, left_r: int, limit_t: int, left_t: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit_r),
        "x-ratelimit-limit-tokens": str(limit_t),
        "x-ratelimit-remaining-requests": str(left_r),
        "x-ratelimit-remaining-tokens": str(left_t),
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-reset-tokens": "9ms",
    }


def fault_error(fault: str, model: str, rpm: int, rpd: int) -> tuple[int, Any, float] | None:
    """(status, body, retry-after seconds or 0) of an error fault on api.openai.com."""
    if fault == "429":
        body = envelopes.openai_rate_limit(model, per="minute", limit=rpm, used=rpm, retry_s=1.0)
        return 429, body, 1.0
    if fault == "429-day":
        body = envelopes.openai_rate_limit(model, per="day", limit=rpd, used=rpd, retry_s=1.0)
        return 429, body, 1.0
    if fault == "insufficient_quota":
        return 429, envelopes.INSUFFICIENT_QUOTA, 0.0
    if fault == "404":
        return 404, envelopes.openai_not_found(model), 0.0
    if fault in envelopes.OPENAI_FAULTS:
        return int(fault), envelopes.OPENAI_FAULTS[fault], 0.0
    return None
