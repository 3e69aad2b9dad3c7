"""Provider parsers against the recorded bodies of the real services."""

import json
from pathlib import Path

import orjson
import pytest

from pipeline.core.reply import Prompt, ReplyKind, Shape
from pipeline.core.retry import ErrorClass
from pipeline.providers.base import parse_duration
from pipeline.providers.gemini import GeminiProvider
from pipeline.providers.openai import OpenAIProvider
from pipeline.transport import HttpResponse
from tests.support import REFERENCE

GEMINI = REFERENCE / "gemini-recorded"
OPENAI = REFERENCE / "openai-recorded"


def replay(path: Path) -> HttpResponse:
    fx = json.loads(path.read_text())
    body = fx.get("body_text") or json.dumps(fx["body"])
    return HttpResponse(
        fx["status"], {k.lower(): v for k, v in (fx.get("headers") or {}).items()}, body.encode()
    )


gemini = GeminiProvider("http://x", "gemini-3.1-flash-lite-preview", "minimal", 0.0)
openai = OpenAIProvider("http://x/v1", "gpt-5.3-chat-latest", "minimal", 0.0)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("error.400.api-key-invalid.json", ErrorClass.STOP),
        ("error.403.permission-denied.service-disabled.json", ErrorClass.STOP),
        ("error.404.model-not-found.json", ErrorClass.STOP),
        ("error.400.failed-precondition.user-location.json", ErrorClass.STOP),
        ("error.429.free-tier.per-day-requests.gemini-2.5-flash.json", ErrorClass.STOP),
        ("error.429.multiple-violations.gemini-2.0-flash.json", ErrorClass.STOP),
        ("error.429.free-tier.per-minute-requests.gemini-3.6-flash.json", ErrorClass.RATE_LIMITED),
        (
            "error.429.paid-tier.per-minute-input-tokens.gemini-3.1-pro.json",
            ErrorClass.RATE_LIMITED,
        ),
        ("error.429.resource-exhausted.no-details.json", ErrorClass.RATE_LIMITED),
        ("error.400.invalid-argument.generic.json", ErrorClass.BAD_REQUEST),
        ("error.400.invalid-argument.schema-field-violations.json", ErrorClass.BAD_REQUEST),
        ("error.500.internal.json", ErrorClass.TRANSIENT),
        ("error.503.unavailable.overloaded.json", ErrorClass.TRANSIENT),
        ("error.504.deadline-exceeded.json", ErrorClass.TRANSIENT),
        ("openai-compat.error.400.list-wrapped.unknown-field.json", ErrorClass.BAD_REQUEST),
    ],
)
def test_gemini_errors_are_classified_once(name: str, cls: ErrorClass) -> None:
    reply = gemini.parse(replay(GEMINI / name))
    assert reply.kind is ReplyKind.ERROR
    assert reply.error_class is cls, reply.error


def test_gemini_per_minute_429_carries_retry_delay_from_the_body() -> None:
    reply = gemini.parse(
        replay(GEMINI / "error.429.free-tier.per-minute-requests.gemini-3.6-flash.json")
    )
    assert reply.retry_after is not None and reply.retry_after > 0


def test_gemini_usage_thinking_and_cache() -> None:
    r = gemini.parse(replay(GEMINI / "generate_content.200.thinking.gemini-3-flash-preview.json"))
    assert r.kind is ReplyKind.OK
    assert (r.usage.input, r.usage.output, r.usage.thinking) == (34, 418, 438)
    fx = json.loads(
        (GEMINI / "generate_content.200.implicit-cache-hit.gemini-2.5-flash.json").read_text()
    )
    meta = fx["body"]["usageMetadata"]
    r = gemini.parse(
        replay(GEMINI / "generate_content.200.implicit-cache-hit.gemini-2.5-flash.json")
    )
    assert r.usage.cached == meta["cachedContentTokenCount"]
    assert r.usage.input + r.usage.cached == meta["promptTokenCount"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("generate_content.200.finish-safety.json", ReplyKind.BLOCKED),
        ("generate_content.200.prompt-blocked.json", ReplyKind.BLOCKED),
        ("generate_content.200.finish-recitation.json", ReplyKind.BLOCKED),
        ("generate_content.200.max-tokens-no-parts.vertex.json", ReplyKind.TRUNCATED),
    ],
)
def test_gemini_stops(name: str, kind: ReplyKind) -> None:
    fx = json.loads((GEMINI / name).read_text())
    body = fx["body"].get("data", fx["body"])
    r = gemini.parse(HttpResponse(200, {}, json.dumps(body).encode()))
    assert r.kind is kind
    if kind is ReplyKind.BLOCKED:
        assert r.block and r.block["reason"]


@pytest.mark.parametrize(
    ("name", "kind", "cls"),
    [
        ("chat.completion.200.basic.json", ReplyKind.OK, None),
        ("chat.completion.200.finish-content-filter.json", ReplyKind.BLOCKED, None),
        ("chat.completion.200.finish-length.json", ReplyKind.TRUNCATED, None),
        ("chat.completion.200.refusal.json", ReplyKind.BLOCKED, None),
        ("error.401.invalid-api-key.json", ReplyKind.ERROR, ErrorClass.STOP),
        ("error.429.insufficient-quota.json", ReplyKind.ERROR, ErrorClass.STOP),
        ("error.429.rate-limit-exceeded.tokens.json", ReplyKind.ERROR, ErrorClass.RATE_LIMITED),
    ],
)
def test_openai_replies(name: str, kind: ReplyKind, cls: ErrorClass | None) -> None:
    r = openai.parse(replay(OPENAI / name))
    assert r.kind is kind
    assert r.error_class is cls


def test_openai_usage_does_not_double_count_reasoning_or_cache() -> None:
    r = openai.parse(replay(OPENAI / "chat.completion.200.reasoning-and-cached.json"))
    assert (r.usage.input, r.usage.cached, r.usage.output, r.usage.thinking) == (86, 1920, 44, 256)


def test_durations() -> None:
    assert parse_duration("23s") == 23
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("6m0s") == 360
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("") is None


def test_gemini_request_matches_what_the_sdk_sends() -> None:
    caps = [
        json.loads(line)
        for line in (REFERENCE / "sdk-request-captures.jsonl").read_text().splitlines()
    ]
    sdk = next(
        c for c in caps if c["call"].startswith("models.generate_content:response_json_schema_dict")
    )
    shape = Shape("t", "be brief", {"type": "object", "properties": {"a": {"type": "string"}}})
    body = orjson.loads(gemini.encode(Prompt(shape, "hello", 64)))
    assert set(body) <= set(sdk["body"]) | {"systemInstruction"}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hello"}]}]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert "x-goog-api-key" in gemini.headers("k") and "x-goog-api-key" in sdk["headers"]


def test_openai_request_shape() -> None:
    shape = Shape("t", "sys", {"type": "object"})
    body = orjson.loads(openai.encode(Prompt(shape, "hi", 32)))
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
    ]
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["max_completion_tokens"] == 32
