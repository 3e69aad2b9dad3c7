"""What every endpoint shares: the parsed request, the generated result, token accounting."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from pipeline.sim import model, tokens
from pipeline.sim.model import Schema

KNOWN_MODELS = (
    "gemini-3.1-flash-lite-preview",
    "gemini-3.1-flash-lite",
    "gemini-3-flash-preview",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.5-pro",
    "gemini-flash-latest",
    "gemini-flash-lite-latest",
    "gpt-5.3-chat-latest",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-4.1-mini",
    "gpt-4o-mini",
)
PREFIXES = ("gemini-", "gemma-", "gpt-", "chatgpt-", "learnlm-")

# finish kinds (mapped to each API's words when rendered)
STOP = "STOP"
MAX_TOKENS = "MAX_TOKENS"
SAFETY = "SAFETY"
PROHIBITED = "PROHIBITED_CONTENT"
PROMPT_BLOCKED = "PROMPT_BLOCKED"
REFUSAL = "REFUSAL"
CONTENT_FILTER = "CONTENT_FILTER"
REFUSAL_TEXT = "I'm sorry, I cannot assist with that request."

BLOCKING = {
    "safety": SAFETY,
    "prohibited": PROHIBITED,
    "prompt_blocked": PROMPT_BLOCKED,
    "refusal": REFUSAL,
    "content_filter": CONTENT_FILTER,
}


def known_model(name: str) -> bool:
    if name in KNOWN_MODELS or name.startswith(PREFIXES):
        return True
    return len(name) > 1 and name[0] == "o" and name[1].isdigit()


class BadRequest(Exception):
    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        violations: list[tuple[str | None, str]] | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        self.violations = violations
        self.code = code


@dataclass(slots=True)
class Req:
    api: str
    path: str
    model: str
    key: str
    system: str = ""
    user: str = ""
    schema: Schema | None = None
    json_mode: bool = False
    enum_text: bool = False  # responseMimeType text/x.enum
    level: str | None = None
    budget: int | None = None
    max_out: int | None = None
    stream: bool = False
    sse: bool = False
    include_usage: bool = False
    tier: str | None = None  # "flex" for the Flex tier
    vertex: bool = False  # came in on a Vertex AI path, with a bearer token
    token: str | None = None  # a fingerprint of that token (never the token)
    labels: dict[str, str] | None = None
    context_cache: str | None = None  # the cachedContents name the request refers to


@dataclass(slots=True)
class Result:
    text: str | None
    finish: str
    prompt: int
    cached: int
    output: int
    thinking: int
    refusal: str | None = None

    @property
    def total(self) -> int:
        return self.prompt + self.output + self.thinking


def compile_schema(schema: object, where: str) -> Schema:
    if not isinstance(schema, dict):
        raise BadRequest(
            f"Invalid value at '{where}': expected a schema object.",
            field=where,
            violations=[(where, f"Invalid value at '{where}': expected a schema object.")],
        )
    try:
        return model.compile_schema(orjson.dumps(schema))
    except model.SchemaError as e:
        path = e.field.replace("response_schema", where, 1)
        text = e.description.replace("response_schema", where)
        raise BadRequest(text, field=path, violations=[(path, text)]) from None


def prompt_tokens(req: Req) -> tuple[int, int]:
    """(prompt tokens incl. schema, system tokens)."""
    system = tokens.count(req.system)
    schema = req.schema.tokens if req.schema is not None else 0
    return system + tokens.count(req.user) + schema, system


FEEDBACK = "your previous answer was rejected"


def heeds(user: str) -> bool:
    """A model that follows feedback: the request says why its previous answer was rejected."""
    return FEEDBACK in user.lower()


def strip_feedback(user: str) -> str:
    """The row's own text, without the note about a rejected answer a retry appends: fault
    markers count sends of a row, and the ledger names rows, by it."""
    cut = user.lower().find("\n\n---\n" + FEEDBACK)
    return user if cut < 0 else user[:cut]


def unpacked_texts(req: Req) -> list[str]:
    """Texts to scan for fault markers: the packed items' texts, else the user text."""
    if req.schema is not None and req.schema.packed_item is not None and "[[sim:" in req.user:
        items = model.unpack(req.user)
        if items is not None:
            return [str(i.get("text", "")) for i in items]
    return [strip_feedback(req.user)]


def generate(req: Req, fault: str | None, drop: frozenset[str], cached: int) -> Result:
    prompt, _ = prompt_tokens(req)
    blocked = BLOCKING.get(fault or "")
    if blocked is not None and blocked != REFUSAL:
        return Result(None, blocked, prompt, cached, 0, 0)
    if blocked == REFUSAL:
        out = tokens.count(REFUSAL_TEXT)
        return Result(None, STOP, prompt, cached, out, 0, refusal=REFUSAL_TEXT)
    if req.schema is not None:
        value = model.answer(
            req.schema,
            req.system,
            req.user,
            bad_enum=fault == "bad_enum"
            or (fault == "stubborn_enum" and not heeds(req.user))
            or (fault == "lite_enum" and "lite" in req.model),
            drop_placeholder=fault == "drop_placeholder",
            drop=drop,
        )
        enum_text = req.enum_text and isinstance(value, str)
        text = value if enum_text else orjson.dumps(value).decode()
    elif req.json_mode:
        text = orjson.dumps({"answer": model.summary(req.user, 12)}).decode()
    else:
        text = model.plain(req.user)
    if fault == "bad_json":
        text = "Sure! Here is what I found: " + model.summary(req.user, 12)
    elif fault == "truncated":
        text = text[: max(1, len(text) // 2)]
    finish = STOP
    if fault == "max_tokens":
        text = text[: max(1, len(text) // 2)]
        finish = MAX_TOKENS
    output = tokens.count(text)
    thinking = tokens.thinking(req.model, req.level, req.budget, output)
    cap = req.max_out
    if cap is not None and cap > 0 and thinking + output > cap:
        thinking = min(thinking, cap)
        output = cap - thinking
        finish = MAX_TOKENS
        return Result(text[: output * 4] or None, finish, prompt, cached, output, thinking)
    return Result(text, finish, prompt, cached, output, thinking)
