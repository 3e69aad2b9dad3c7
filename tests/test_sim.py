"""The provider simulator, driven through the official SDKs and raw HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from jsonschema import Draft202012Validator
from openai import OpenAI

from pipeline.core.retry import ErrorClass
from pipeline.providers.gemini import GeminiProvider
from pipeline.sim import model as sim_model
from pipeline.simproc import SimProcess
from pipeline.transport import HttpResponse

CLASSIFY = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["billing", "bug", "account", "other"]}},
    "required": ["label"],
    "additionalProperties": False,
}
TRANSLATE = {
    "type": "object",
    "properties": {
        "source_lang": {"type": "string"},
        "target_lang": {"type": "string", "enum": ["fr"]},
        "translation": {"type": "string"},
    },
    "required": ["source_lang", "target_lang", "translation"],
    "additionalProperties": False,
}
CATEGORY = {
    "type": "object",
    "properties": {
        "flagged": {"type": "boolean"},
        "severity": {"type": "integer", "minimum": 0, "maximum": 3},
    },
    "required": ["flagged", "severity"],
    "additionalProperties": False,
}
MODERATE = {
    "type": "object",
    "properties": {
        "flagged": {"type": "boolean"},
        "categories": {
            "type": "object",
            "properties": {"violence": CATEGORY, "spam": CATEGORY},
            "required": ["violence", "spam"],
            "additionalProperties": False,
        },
    },
    "required": ["flagged", "categories"],
    "additionalProperties": False,
}


def packed(item: dict[str, Any]) -> dict[str, Any]:
    item = json.loads(json.dumps(item))
    item["properties"] = {"id": {"type": "string"}, **item["properties"]}
    item["required"] = ["id", *item["required"]]
    return {
        "type": "object",
        "properties": {"items": {"type": "array", "items": item}},
        "required": ["items"],
        "additionalProperties": False,
    }


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(["--profile", "clean", "--cache-min-tokens", "64"]) as s:
        yield s


def gclient(sim: SimProcess, key: str = "sim-key") -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=sim.url))


def oclient(sim: SimProcess, key: str = "sim-key", compat: bool = False) -> OpenAI:
    base = sim.url + ("/v1beta/openai" if compat else "/v1")
    return OpenAI(api_key=key, base_url=base, max_retries=0)


def ask(sim: SimProcess, text: str, schema: dict[str, Any] | None = CLASSIFY, **config: Any) -> Any:
    if schema is not None:
        config.update(response_mime_type="application/json", response_json_schema=schema)
    client = gclient(sim)  # keep a reference: a collected client closes its connection pool
    return client.models.generate_content(
        model="gemini-2.5-flash", contents=text, config=types.GenerateContentConfig(**config)
    )


def raw(
    sim: SimProcess, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(sim.url + path, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
KEY = {"x-goog-api-key": "sim-key"}


def test_genai_enum_answer_and_usage(sim: SimProcess) -> None:
    resp = ask(sim, "I was charged twice on my invoice", thinking_config={"thinking_budget": 0})
    assert json.loads(resp.text) == {"label": "billing"}
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP
    u = resp.usage_metadata
    assert u.prompt_token_count > 0 and u.candidates_token_count == 5
    assert u.thoughts_token_count is None
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count
    assert resp.response_id and resp.model_version == "gemini-2.5-flash"
    assert json.loads(ask(sim, "the app crashes with an error").text) == {"label": "bug"}
    # gemini-2.5 thinks (medium) when nothing is set: 3 x output + 16
    u = ask(sim, "I forgot my password").usage_metadata
    assert u.thoughts_token_count == 3 * u.candidates_token_count + 16


def test_openai_sdk_json_schema(sim: SimProcess) -> None:
    resp = oclient(sim).chat.completions.create(
        model="gpt-5-mini",
        messages=[
            {"role": "system", "content": "Classify support tickets."},
            {"role": "user", "content": "I cannot login, password reset fails"},
        ],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "t", "strict": True, "schema": CLASSIFY},
        },
        reasoning_effort="low",
    )
    answer = json.loads(resp.choices[0].message.content or "")
    assert answer["label"] in ("account", "bug")
    assert resp.choices[0].finish_reason == "stop" and resp.id.startswith("chatcmpl-")
    u = resp.usage
    assert u is not None and u.completion_tokens_details is not None
    visible = u.completion_tokens - u.completion_tokens_details.reasoning_tokens
    assert u.completion_tokens_details.reasoning_tokens == visible + 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_wrong_or_missing_key(sim: SimProcess) -> None:
    bad = gclient(sim, "nope")
    with pytest.raises(genai_errors.ClientError) as e:
        bad.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT"
    assert e.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    status, _, body = raw(sim, GEN, {"contents": "hi"})
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
    with pytest.raises(openai.AuthenticationError) as oe:
        oclient(sim, "sk-wrong-key-123456").chat.completions.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert oe.value.code == "invalid_api_key" and oe.value.status_code == 401
    with pytest.raises(openai.BadRequestError) as ce:
        oclient(sim, "nope", compat=True).chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
        )
    assert isinstance(ce.value.body, list)  # Gemini's compat endpoint wraps errors in a list
    assert ce.value.body[0]["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_bad_requests(sim: SimProcess) -> None:
    status, _, body = raw(sim, GEN, b"{not json", KEY)
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    assert body["error"]["details"][0]["@type"].endswith("google.rpc.BadRequest")
    status, _, body = raw(sim, GEN, {"generationConfig": {}}, KEY)
    assert status == 400 and "contents" in body["error"]["message"]
    status, _, body = raw(sim, "/v1beta/models/claude-3:generateContent", {"contents": "x"}, KEY)
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    bad = {"contents": "x", "generationConfig": {"responseSchema": {"type": "WHATEVER"}}}
    status, _, body = raw(sim, GEN, bad, KEY)
    assert status == 400 and "generation_config.response_schema.type" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oclient(sim).chat.completions.create(model="gpt-5-mini", messages=[])
    assert e.value.param == "messages"


def test_429_marker_has_retry_info(sim: SimProcess) -> None:
    with pytest.raises(genai_errors.ClientError) as e:
        ask(sim, "hello [[sim:429]]")
    assert e.value.code == 429 and e.value.status == "RESOURCE_EXHAUSTED"
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in e.value.details["error"]["details"]}
    assert details["RetryInfo"]["retryDelay"] == "1s"
    assert "PerMinute" in details["QuotaFailure"]["violations"][0]["quotaId"]
    # flashpipe's own client reads it as a rate limit with the delay
    status, headers, body = raw(sim, GEN, {"contents": "x [[sim:429-day]]"}, KEY)
    reply = GeminiProvider(sim.url, "gemini-2.5-flash", "minimal", 0).parse(
        HttpResponse(status, headers, json.dumps(body).encode())
    )
    assert reply.error_class == ErrorClass.STOP and reply.retry_after == 1.0
    with pytest.raises(openai.RateLimitError) as oe:
        oclient(sim).chat.completions.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "x [[sim:429]]"}]
        )
    assert oe.value.code == "rate_limit_exceeded"
    assert oe.value.response.headers["retry-after-ms"] == "1000"


def test_packed_request_echoes_ids_and_drops_marked_item(sim: SimProcess) -> None:
    items = [
        {"id": "r1", "text": "refund my payment please"},
        {"id": "r2", "text": "the app crashes on start"},
        {"id": "r3", "text": "whatever [[sim:drop_item]]"},
    ]
    resp = ask(sim, json.dumps({"items": items}), packed(CLASSIFY))
    answer = json.loads(resp.text)
    assert answer == {"items": [{"id": "r1", "label": "billing"}, {"id": "r2", "label": "bug"}]}


def test_translation_keeps_placeholders(sim: SimProcess) -> None:
    text = "Hallo {name}, ich habe <b>3</b> neue Nachrichten: https://x.example/a?b=1"
    answer = json.loads(ask(sim, text, TRANSLATE).text)
    assert answer == {"source_lang": "de", "target_lang": "fr", "translation": f"[fr] {text}"}
    dropped = json.loads(ask(sim, text + " [[sim:drop_placeholder]]", TRANSLATE).text)
    assert "{name}" not in dropped["translation"] and "<b>" not in dropped["translation"]


def test_moderation_and_schema_validity(sim: SimProcess) -> None:
    answer = json.loads(ask(sim, "I will kill you and shoot everyone", MODERATE).text)
    assert answer["flagged"] is True
    assert answer["categories"]["violence"] == {"flagged": True, "severity": 2}
    assert answer["categories"]["spam"] == {"flagged": False, "severity": 0}
    for schema in (CLASSIFY, TRANSLATE, MODERATE, packed(MODERATE)):
        compiled = sim_model.compile_schema(json.dumps(schema).encode())
        for text in ("", "hi?", "Buy cheap pills, click here!!", '{"items": [{"id": 1}]}'):
            value = sim_model.answer(compiled, "", text)
            assert not list(Draft202012Validator(schema).iter_errors(value)), (schema, text)


def test_k_marker_fails_only_k_times(sim: SimProcess) -> None:
    text = f"flaky {time.time_ns()} [[sim:503*2]]"
    for _ in range(2):
        with pytest.raises(genai_errors.ServerError) as e:
            ask(sim, text)
        assert e.value.code == 503 and e.value.status == "UNAVAILABLE"
    assert json.loads(ask(sim, text).text)["label"] in CLASSIFY["properties"]["label"]["enum"]
    assert ask(sim, text).candidates[0].finish_reason == types.FinishReason.STOP


def test_blocks_and_max_tokens(sim: SimProcess) -> None:
    resp = ask(sim, "x [[sim:safety]]")
    assert resp.candidates[0].finish_reason == types.FinishReason.SAFETY and resp.text is None
    resp = ask(sim, "x [[sim:prompt_blocked]]")
    assert not resp.candidates and resp.prompt_feedback.block_reason.value == "PROHIBITED_CONTENT"
    resp = ask(sim, "a rather long text " * 20, None, max_output_tokens=10)
    assert resp.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    u = resp.usage_metadata
    assert (u.candidates_token_count or 0) + (u.thoughts_token_count or 0) == 10
    o = oclient(sim).chat.completions.create(
        model="gpt-5-mini", messages=[{"role": "user", "content": "hi [[sim:refusal]]"}]
    )
    assert o.choices[0].message.refusal and o.choices[0].message.content is None


def test_implicit_cache_and_count_tokens(sim: SimProcess) -> None:
    system = "You are a careful classifier of support tickets. " * 12  # ~150 tokens >= 64
    config = types.GenerateContentConfig(system_instruction=system)
    client = gclient(sim)
    first = client.models.generate_content(
        model="gemini-2.5-flash-lite", contents="a", config=config
    )
    second = client.models.generate_content(
        model="gemini-2.5-flash-lite", contents="b", config=config
    )
    assert first.usage_metadata.cached_content_token_count is None
    cached = second.usage_metadata.cached_content_token_count
    assert cached == (len(system) + 3) // 4
    assert second.usage_metadata.prompt_token_count > cached
    counted = client.models.count_tokens(model="gemini-2.5-flash", contents="How many tokens?")
    assert counted.total_tokens == 4
    names = [m.name for m in client.models.list()]
    assert "models/gemini-3.1-flash-lite-preview" in names


def test_sse_stream_with_sdk(sim: SimProcess) -> None:
    client = gclient(sim)
    text = "the app crashes every time I open the settings page"
    whole = ask(sim, text)
    chunks = list(
        client.models.generate_content_stream(
            model="gemini-2.5-flash",
            contents=text,
            config=types.GenerateContentConfig(
                response_mime_type="application/json", response_json_schema=CLASSIFY
            ),
        )
    )
    assert len(chunks) == 3
    assert "".join(c.text or "" for c in chunks) == whole.text
    assert chunks[-1].usage_metadata.total_token_count == whole.usage_metadata.total_token_count
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    status, _, body = raw(
        sim, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", {"contents": text}, KEY
    )
    assert status == 200 and isinstance(body, list) and len(body) == 3
    stream = oclient(sim).chat.completions.create(
        model="gpt-5-mini",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    events = list(stream)
    assert events[-1].usage is not None and events[-1].usage.total_tokens > 0
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices).startswith("Sim")


def test_drop_and_hang() -> None:
    with SimProcess(["--hang-seconds", "0.4"]) as s:
        t0 = time.monotonic()
        assert ask(s, "slow [[sim:hang]]").text
        assert time.monotonic() - t0 >= 0.4
        with pytest.raises((urllib.error.URLError, ConnectionError)) as e:
            raw(s, GEN, {"contents": "bye [[sim:drop]]"}, KEY)
        assert not isinstance(e.value, urllib.error.HTTPError)
        assert ask(s, "still serving").text


def test_ledger_matches_responses_and_quota(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    seen: dict[str, dict[str, int]] = {}
    with SimProcess(["--ledger", str(ledger), "--rpm", "6"]) as s:
        for i, text in enumerate(["refund", "crash", "x [[sim:500]]", "safety [[sim:safety]]"]):
            try:
                r = ask(s, f"{text} {i}", max_output_tokens=400)
            except genai_errors.ServerError:
                continue
            u = r.usage_metadata
            seen[r.response_id] = {
                "prompt": u.prompt_token_count,
                "cached": u.cached_content_token_count or 0,
                "output": u.candidates_token_count or 0,
                "thinking": u.thoughts_token_count or 0,
            }
        o = oclient(s).chat.completions.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "hello"}]
        )
        assert o.usage is not None and o.usage.completion_tokens_details is not None
        reasoning = o.usage.completion_tokens_details.reasoning_tokens
        seen[o.id] = {
            "prompt": o.usage.prompt_tokens,
            "cached": 0,
            "output": o.usage.completion_tokens - reasoning,
            "thinking": reasoning,
        }
        # 6 requests per minute: the 6th passes, the 7th is refused with the real 429 body
        ask(s, "sixth")
        with pytest.raises(genai_errors.ClientError) as e:
            ask(s, "seventh")
        retry = e.value.details["error"]["details"][-1]["retryDelay"]
        assert e.value.code == 429 and 50 <= int(retry.rstrip("s")) <= 60
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(lines) == 7
    billed = {x["response_id"]: x["usage"] for x in lines if x["billed"] and x["status"] == 200}
    assert len(billed) == 5 and all(billed[rid] == u for rid, u in seen.items())
    assert [x["fault"] for x in lines if not x["billed"]] == ["500", "quota"]


def test_genai_pydantic_schema_parsed_plain_text_and_error_types(sim: SimProcess) -> None:
    from pydantic import BaseModel

    class Ticket(BaseModel):
        label: Literal["billing", "bug", "account", "other"]
        urgent: bool

    client = genai.Client(
        api_key="sim-key", http_options={"base_url": sim.url, "api_version": "v1beta"}
    )
    resp = client.models.generate_content(
        model="gemini-3.1-flash-lite-preview",
        contents="I was charged twice, refund my invoice",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=Ticket
        ),
    )
    assert isinstance(resp.parsed, Ticket) and resp.parsed.label == "billing"
    assert resp.usage_metadata is not None and resp.usage_metadata.prompt_token_count
    plain = client.models.generate_content(
        model="gemini-3.1-flash-lite-preview", contents="Say hello"
    )
    assert plain.text and plain.parsed is None
    for fault, error_type, code in [
        ("403", genai_errors.ClientError, 403),
        ("429", genai_errors.ClientError, 429),
        ("503", genai_errors.ServerError, 503),
    ]:
        with pytest.raises(error_type) as e:
            client.models.generate_content(
                model="gemini-3.1-flash-lite-preview", contents=f"hi [[sim:{fault}]]"
            )
        assert e.value.code == code
