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


# One classification for both providers: the status decides the class, whatever the body;
# a JSON error body only refines it (a named stop, the quota a 429 names, the server's delay).
# (status, class, capacity on Flex)
STATUS_TABLE = [
    (201, ErrorClass.BAD_REQUEST, False),
    (302, ErrorClass.BAD_REQUEST, False),
    (400, ErrorClass.BAD_REQUEST, False),
    (401, ErrorClass.STOP, False),
    (403, ErrorClass.STOP, False),
    (404, ErrorClass.STOP, False),
    (408, ErrorClass.TRANSIENT, False),
    (409, ErrorClass.TRANSIENT, False),
    (413, ErrorClass.BAD_REQUEST, False),
    (431, ErrorClass.BAD_REQUEST, False),
    (429, ErrorClass.RATE_LIMITED, None),  # capacity: see the body cases below
    (500, ErrorClass.TRANSIENT, False),
    (502, ErrorClass.TRANSIENT, False),
    (503, ErrorClass.TRANSIENT, True),
    (504, ErrorClass.TRANSIENT, False),
]
# a provider's error body that says nothing beyond its status
PLAIN_BODY = {
    "gemini": lambda status: {"error": {"code": status, "message": "m", "status": "X"}},
    "openai": lambda status: {"error": {"message": "m", "type": "server_error", "code": None}},
}
PROVIDERS = {"gemini": gemini, "openai": openai}


@pytest.mark.parametrize("api", sorted(PROVIDERS))
@pytest.mark.parametrize("body_kind", ["json", "html", "empty"])
@pytest.mark.parametrize(("status", "cls", "capacity"), STATUS_TABLE)
def test_every_status_family_is_classified_the_same_for_both_providers(
    api: str, body_kind: str, status: int, cls: ErrorClass, capacity: bool | None
) -> None:
    body = {
        "json": json.dumps(PLAIN_BODY[api](status)).encode(),
        "html": b"<html><body>Bad Gateway</body></html>",
        "empty": b"",
    }[body_kind]
    reply = PROVIDERS[api].parse(HttpResponse(status, {"content-type": "text/html"}, body))
    assert reply.kind is ReplyKind.ERROR
    assert reply.error_class is cls, reply.error
    assert reply.http_status == status
    assert reply.error and str(status) in reply.error
    if capacity is None:  # a JSON 429 naming no quota of the key is capacity, a proxy's is not
        capacity = body_kind == "json"
    assert reply.capacity is capacity


@pytest.mark.parametrize("api", sorted(PROVIDERS))
@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b""])
def test_an_unreadable_200_is_transient_for_both_providers(api: str, body: bytes) -> None:
    reply = PROVIDERS[api].parse(HttpResponse(200, {}, body))
    assert (reply.kind, reply.error_class) == (ReplyKind.ERROR, ErrorClass.TRANSIENT)


@pytest.mark.parametrize(
    ("api", "headers", "error", "delay"),
    [
        ("gemini", {}, {"details": [{"@type": "x.RetryInfo", "retryDelay": "7s"}]}, 7.0),
        # Gemini sends no Retry-After header; a proxy's header is not the service's delay
        ("gemini", {"retry-after": "9"}, {}, None),
        ("openai", {"retry-after-ms": "250"}, {"code": "rate_limit_exceeded"}, 0.25),
        ("openai", {"retry-after": "3"}, {"code": "rate_limit_exceeded"}, 3.0),
        ("openai", {}, {"code": "rate_limit_exceeded"}, None),
    ],
)
def test_the_429_delay_comes_from_where_each_provider_puts_it(
    api: str, headers: dict[str, str], error: dict[str, object], delay: float | None
) -> None:
    body = {"error": {"code": 429, "message": "slow down", **error}}
    if api == "openai":
        body = {"error": {"message": "slow down", "type": "requests", **error}}
    reply = PROVIDERS[api].parse(HttpResponse(429, headers, json.dumps(body).encode()))
    assert reply.error_class is ErrorClass.RATE_LIMITED
    assert reply.retry_after == (pytest.approx(delay) if delay is not None else None)


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (400, {"error": {"code": "invalid_api_key", "message": "bad key"}}, ErrorClass.STOP),
        (429, {"error": {"code": "insufficient_quota", "message": "billing"}}, ErrorClass.STOP),
        (429, {"error": {"code": "rate_limit_exceeded", "message": "m"}}, ErrorClass.RATE_LIMITED),
        (
            400,
            {"error": {"code": "context_length_exceeded", "message": "m"}},
            ErrorClass.BAD_REQUEST,
        ),
    ],
)
def test_openai_error_codes_refine_the_status(status: int, body: object, cls: ErrorClass) -> None:
    reply = openai.parse(HttpResponse(status, {}, json.dumps(body).encode()))
    assert reply.error_class is cls, reply.error


def test_the_compat_endpoints_list_wrapped_google_errors_read_as_gemini_reads_them() -> None:
    for name in (
        "error.429.free-tier.per-day-requests.gemini-2.5-flash.json",
        "error.429.free-tier.per-minute-requests.gemini-3.6-flash.json",
        "error.400.api-key-invalid.json",
        "error.503.unavailable.overloaded.json",
    ):
        fx = json.loads((GEMINI / name).read_text())
        wrapped = HttpResponse(fx["status"], {}, json.dumps([fx["body"]]).encode())
        native, compat = gemini.parse(wrapped), openai.parse(wrapped)
        assert (compat.error_class, compat.retry_after, compat.capacity) == (
            native.error_class,
            native.retry_after,
            native.capacity,
        ), name


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ErrorClass.BAD_REQUEST),
        (401, ErrorClass.BAD_REQUEST),  # one line's error never stops the job
        (404, ErrorClass.BAD_REQUEST),
        (429, ErrorClass.TRANSIENT),  # a batch's 429 says nothing about the online quota
        (500, ErrorClass.TRANSIENT),
        (503, ErrorClass.TRANSIENT),
    ],
)
def test_a_failed_batch_line_is_classified_the_same_for_both_providers(
    status: int, cls: ErrorClass
) -> None:
    from pipeline.lanes.gemini_batch import _reply as gemini_line
    from pipeline.lanes.openai_batch import _reply as openai_line

    g = gemini_line({"key": "1", "error": {"code": status, "message": "m", "status": "X"}})
    o = openai_line(
        {
            "custom_id": "1",
            "response": {"status_code": status, "body": {"error": {"message": "m", "code": "x"}}},
        }
    )
    assert (g.kind, g.error_class, g.http_status) == (ReplyKind.ERROR, cls, status)
    assert (o.kind, o.error_class, o.http_status) == (ReplyKind.ERROR, cls, status)


class CannedTransport:
    """Answers every request with one recorded-style response (status, headers, body)."""

    def __init__(self, resp: HttpResponse):
        self.resp = resp

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None
    ) -> HttpResponse:
        return self.resp


@pytest.mark.parametrize("api", sorted(PROVIDERS))
@pytest.mark.parametrize(("status", "cls", "capacity"), STATUS_TABLE)
def test_batch_calls_are_refused_as_online_calls_are_classified(
    api: str, status: int, cls: ErrorClass, capacity: bool | None
) -> None:
    import anyio

    from pipeline.lanes.api import BatchApiError, send
    from pipeline.providers.base import google_error
    from pipeline.providers.openai import openai_error

    transport = CannedTransport(HttpResponse(status, {}, b"<html>proxy</html>"))
    reader = google_error if api == "gemini" else openai_error

    async def call() -> None:
        await send(transport, "GET", "http://x/batches/1", {}, None, reader)  # type: ignore[arg-type]

    with pytest.raises(BatchApiError) as caught:
        anyio.run(call)
    assert caught.value.stop is (cls is ErrorClass.STOP)
    assert caught.value.bad is (cls is ErrorClass.BAD_REQUEST)
    assert caught.value.status == status
