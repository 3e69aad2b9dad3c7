"""The fake model: a deterministic answer, a pure function of (schema, system prompt, user text).

With a schema the answer is always a valid instance of it (required fields, enums, const, types,
bounds, arrays, nested objects). Enum fields pick the value whose words best overlap the text;
`translation` is "[target] " + the text; moderation categories come from small lexicons; packed
requests ({"items": [{"id", "text"}]}) get one answer per item with the id echoed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from pipeline.sim import tokens

TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}
BAD_LABEL = "sim_unlisted_label"

_WORD = re.compile(r"[^\W_]+")
_DESCRIPTION = re.compile(r"^\s*-\s*([^:\n]+?):\s*(.+)$", re.MULTILINE)
_INTO = re.compile(r"\binto ([A-Za-z]{2,3}(?:-[A-Za-z]{2,4})?)\b")
_PLACEHOLDER = re.compile(
    r"\{\{[^{}]+\}\}|\{[A-Za-z_][\w.]*\}|%\(\w+\)[sd]|%[sd]|</?[A-Za-z][^<>]*>|https?://[^\s<>\"')]+"
)
_MARKER = re.compile(r"\[\[sim:[^\]]*\]\]")

SYNONYMS: dict[str, str] = {
    "billing": "invoice charge charged refund payment vat paid price bill card subscription money"
    " rechnung zahlung erstattung abgebucht betrag facture paiement remboursement"
    " factura pago reembolso cobro cargo factuur betaling terugbetaling",
    "bug": "crash crashes error broken fail fails exception glitch freeze freezes working"
    " fehler absturz stürzt funktioniert erreur plante marche fallo funciona bloquea"
    " fout werkt crasht",
    "account": "login password 2fa email profile sign signin username locked"
    " passwort konto anmelden anmeldung passe compte connexion connecter contraseña cuenta"
    " sesión wachtwoord inloggen",
    "feature_request": "please add would like feature support wish request great if"
    " bitte wäre schön funktion hinzufügen ajouter fonctionnalité serait añadir función"
    " sería toevoegen functie zou",
    "positive": "love great good excellent happy thanks awesome",
    "negative": "hate bad terrible awful poor angry worst",
    "neutral": "okay fine average",
    "shipping": "delivery package shipped arrived track tracking courier",
    "spam": "buy free click offer winner prize cheap discount subscribe",
}
LEXICON: dict[str, str] = {
    "hate": "hate hateful racist racism inferior subhuman slur bigot nazi exterminate vermin",
    "harassment": "idiot stupid loser ugly pathetic moron dumb worthless harass shut",
    "sexual": "sex sexual nude naked porn explicit nsfw xxx",
    "violence": "kill murder attack shoot stab bomb hurt beat blood weapon gun",
    "self_harm": "suicide suicidal overdose selfharm hopeless harm",
    "spam": "buy free click offer winner prize cheap discount subscribe crypto deal",
}
STOPWORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "en": "the and is are to of my i you it this not with for was have be",
        "de": "der die das und ist nicht ich ein eine mit für zu auf mein meine wir sie",
        "fr": "le la les et est une un je pas du pour avec mon ma ne des que il",
        "es": "el los las y es un una no por para con mi que del está muy",
        "it": "il lo gli e è un una non di per con mio che sono della",
        "nl": "het een en is niet ik mijn met voor van dat wij zijn",
        "pt": "o os as e é um uma não para com meu que do da está",
    }.items()
}


class SchemaError(ValueError):
    """A schema the service rejects: `field` is the proto path, `description` the reason."""

    def __init__(self, field: str, description: str):
        super().__init__(description)
        self.field = field
        self.description = description


@lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) > 4 and (word.endswith("ed") or word.endswith("es")):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def words_of(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text.lower())]


def summary(text: str, n: int = 8) -> str:
    return " ".join(_MARKER.sub("", text).split()[:n])


@dataclass(slots=True)
class Node:
    kind: str  # a JSON type, or "enum", "const", "any"
    props: list[tuple[str, Node]] = field(default_factory=list)
    items: Node | None = None
    values: list[Any] = field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None
    min_items: int = 0
    max_items: int | None = None
    min_len: int = 0
    max_len: int | None = None
    category: bool = False  # {flagged, severity} of a moderation category


@dataclass(frozen=True, slots=True)
class Schema:
    root: Node
    packed_item: Node | None  # the item node when the root is {"items": [{"id", ...}]}
    target: str | None  # the translation target from a target_lang const / enum
    tokens: int  # what the schema adds to the prompt


def _get(s: dict[str, Any], camel: str, snake: str) -> Any:
    value = s.get(camel)
    return s.get(snake) if value is None else value


def _type_of(s: dict[str, Any], path: str) -> str | None:
    raw = s.get("type")
    if isinstance(raw, list):
        named = [t for t in raw if isinstance(t, str) and t.lower() != "null"]
        raw = named[0] if named else "null"
    if raw is None or raw == "TYPE_UNSPECIFIED":
        return None
    if not isinstance(raw, str) or raw.lower() not in TYPES:
        raise SchemaError(
            f"{path}.type",
            f"Invalid value at '{path}.type' "
            f'(type.googleapis.com/google.ai.generativelanguage.v1beta.Type), "{raw}"',
        )
    return raw.lower()


def _resolve(ref: str, root: Any, path: str) -> Any:
    if not ref.startswith("#"):
        raise SchemaError(f"{path}.ref", f"Unsupported $ref '{ref}' at '{path}'.")
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        if not isinstance(node, dict) or part not in node:
            raise SchemaError(f"{path}.ref", f"Unresolvable $ref '{ref}' at '{path}'.")
        node = node[part]
    return node


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _compile(s: Any, root: Any, path: str, depth: int) -> Node:
    if depth > 24 or s is True:
        return Node("any")
    if not isinstance(s, dict):
        raise SchemaError(path, f"Invalid value at '{path}': expected a schema object.")
    ref = s.get("$ref")
    if isinstance(ref, str):
        return _compile(_resolve(ref, root, path), root, path, depth + 1)
    for key in ("anyOf", "any_of", "oneOf", "one_of"):
        branches = s.get(key)
        if isinstance(branches, list) and branches:
            real = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
            return _compile((real or branches)[0], root, f"{path}.{key}[0]", depth + 1)
    if isinstance(s.get("allOf"), list) and s["allOf"]:
        merged: dict[str, Any] = {}
        for part in s["allOf"]:
            if isinstance(part, dict):
                merged.update(part)
        merged.update({k: v for k, v in s.items() if k != "allOf"})
        return _compile(merged, root, path, depth + 1)
    if "const" in s:
        return Node("const", values=[s["const"]])
    if "enum" in s:
        enum = s["enum"]
        if not isinstance(enum, list) or not enum:
            raise SchemaError(f"{path}.enum", f"Invalid value at '{path}.enum': empty enum.")
        return Node("enum", values=list(enum))
    kind = _type_of(s, path)
    if kind is None:
        kind = "object" if "properties" in s else "array" if "items" in s else "any"
    node = Node(kind)
    if kind == "object":
        props = s.get("properties") or {}
        if not isinstance(props, dict):
            raise SchemaError(f"{path}.properties", f"Invalid value at '{path}.properties'.")
        order = _get(s, "propertyOrdering", "property_ordering") or []
        names = [n for n in order if n in props] + [n for n in props if n not in order]
        node.props = [
            (n, _compile(props[n], root, f"{path}.properties[{n}]", depth + 1)) for n in names
        ]
        kinds = {n: p.kind for n, p in node.props}
        node.category = kinds.get("flagged") == "boolean" and kinds.get("severity") in (
            "integer",
            "number",
        )
    elif kind == "array":
        node.items = _compile(s.get("items", True), root, f"{path}.items", depth + 1)
        node.min_items = int(_get(s, "minItems", "min_items") or 0)
        max_items = _get(s, "maxItems", "max_items")
        node.max_items = int(max_items) if max_items is not None else None
    elif kind in ("integer", "number"):
        node.minimum = _number(s.get("minimum", s.get("exclusiveMinimum")))
        node.maximum = _number(s.get("maximum", s.get("exclusiveMaximum")))
        if "exclusiveMinimum" in s and node.minimum is not None:
            node.minimum += 1 if kind == "integer" else 1e-6
        if "exclusiveMaximum" in s and node.maximum is not None:
            node.maximum -= 1 if kind == "integer" else 1e-6
    elif kind == "string":
        node.min_len = int(_get(s, "minLength", "min_length") or 0)
        max_len = _get(s, "maxLength", "max_length")
        node.max_len = int(max_len) if max_len is not None else None
    return node


def _find(node: Node, name: str) -> Node | None:
    for key, child in node.props:
        if key == name:
            return child
        found = _find(child, name)
        if found is not None:
            return found
    return _find(node.items, name) if node.items is not None else None


@lru_cache(maxsize=1024)
def compile_schema(raw: bytes) -> Schema:
    """`raw` is the schema's JSON; compiled once per distinct schema."""
    schema = orjson.loads(raw)
    root = _compile(schema, schema, "response_schema", 0)
    packed = None
    items = dict(root.props).get("items") if root.kind == "object" else None
    item = items.items if items is not None and items.kind == "array" else None
    if item is not None and item.kind == "object" and "id" in dict(item.props):
        packed = item
    target = None
    target_node = _find(root, "target_lang")
    if target_node is not None and target_node.values and isinstance(target_node.values[0], str):
        target = target_node.values[0]
    return Schema(root, packed, target, tokens.count(raw.decode()))


@lru_cache(maxsize=256)
def _descriptions(system: str) -> dict[str, str]:
    return {m.group(1).strip(): m.group(2) for m in _DESCRIPTION.finditer(system)}


@lru_cache(maxsize=1024)
def _enum_keywords(values: tuple[str, ...], system: str) -> list[frozenset[str]]:
    described = _descriptions(system)
    out = []
    for value in values:
        words = set(words_of(value))
        words.update(words_of(SYNONYMS.get(value.lower(), "")))
        for w in list(_WORD.findall(value.lower())):
            words.update(words_of(SYNONYMS.get(w, "")))
        words.update(w for w in words_of(described.get(value, "")) if len(w) > 2)
        out.append(frozenset(words - STOPWORDS["en"]))
    return out


@lru_cache(maxsize=256)
def _category_words(name: str) -> frozenset[str]:
    return frozenset(words_of(LEXICON.get(name.lower(), "")) + words_of(name.replace("_", " ")))


def guess_language(text: str) -> str:
    seen = set(_WORD.findall(text.lower()))
    best, score = "en", 0
    for lang, stop in STOPWORDS.items():
        hits = len(seen & stop)
        if hits > score:
            best, score = lang, hits
    return best


@dataclass(slots=True)
class Ctx:
    text: str
    system: str
    target: str
    bad_enum: bool = False
    drop_placeholder: bool = False
    _words: list[str] | None = None
    _set: frozenset[str] | None = None

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = words_of(self.text)
        return self._words

    @property
    def word_set(self) -> frozenset[str]:
        if self._set is None:
            self._set = frozenset(self.words)
        return self._set


def _scores(values: list[Any], ctx: Ctx) -> list[int]:
    strings = tuple(v if isinstance(v, str) else "" for v in values)
    keywords = _enum_keywords(strings, ctx.system)
    seen = ctx.word_set
    return [len(kw & seen) for kw in keywords]


def _clamp(value: float, node: Node) -> float:
    if node.minimum is not None:
        value = max(value, node.minimum)
    if node.maximum is not None:
        value = min(value, node.maximum)
    return value


def _string(node: Node, key: str, ctx: Ctx) -> str:
    if key == "translation":
        text = _PLACEHOLDER.sub("", ctx.text) if ctx.drop_placeholder else ctx.text
        value = f"[{ctx.target}] {text}"
    elif key == "source_lang":
        value = guess_language(ctx.text)
    elif key == "target_lang":
        value = ctx.target
    else:
        value = summary(ctx.text) or "n/a"
    if node.max_len is not None:
        value = value[: node.max_len]
    if len(value) < node.min_len:
        value = value + "." * (node.min_len - len(value))
    return value


def _enum(node: Node, key: str, ctx: Ctx) -> Any:
    if ctx.bad_enum and all(isinstance(v, str) for v in node.values):
        return BAD_LABEL
    if key == "source_lang":
        guess = guess_language(ctx.text)
        return guess if guess in node.values else node.values[0]
    if key == "target_lang":
        return ctx.target if ctx.target in node.values else node.values[0]
    scores = _scores(node.values, ctx)
    if max(scores) == 0:  # nothing matches: abstain where the schema allows it
        for fallback in ("other", "none", "unknown", "neutral"):
            if fallback in node.values:
                return fallback
    return node.values[scores.index(max(scores))]


def _array(node: Node, key: str, ctx: Ctx) -> list[Any]:
    item = node.items or Node("any")
    cap = node.max_items
    if item.kind == "enum":
        if ctx.bad_enum and all(isinstance(v, str) for v in item.values):
            return [BAD_LABEL]
        scores = _scores(item.values, ctx)
        ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        chosen = [i for i in ranked if scores[i] > 0] or ranked[:1]
        want = max(len(chosen), node.min_items)
        chosen = ranked[:want] if want > len(chosen) else chosen
        chosen = sorted(chosen[: cap if cap is not None else None])
        return [item.values[i] for i in chosen]
    n = max(node.min_items, 1)
    if cap is not None:
        n = min(n, cap)
    return [generate(item, key, ctx) for _ in range(n)]


def _object(node: Node, key: str, ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if node.category:
        hits = sum(1 for w in ctx.words if w in _category_words(key))
        for name, child in node.props:
            if name == "flagged":
                out[name] = hits > 0
            elif name == "severity":
                severity = _clamp(min(3, hits), child)
                out[name] = int(severity) if child.kind == "integer" else float(severity)
            else:
                out[name] = generate(child, name, ctx)
        return out
    for name, child in node.props:
        out[name] = generate(child, name, ctx)
    cats = out.get("categories")
    if isinstance(out.get("flagged"), bool) and isinstance(cats, dict):
        out["flagged"] = any(
            isinstance(c, dict) and c.get("flagged") is True for c in cats.values()
        )
    return out


def generate(node: Node, key: str, ctx: Ctx) -> Any:
    kind = node.kind
    if kind == "object":
        return _object(node, key, ctx)
    if kind == "enum":
        return _enum(node, key, ctx)
    if kind == "string" or kind == "any":
        return _string(node, key, ctx)
    if kind == "const":
        return node.values[0]
    if kind == "array":
        return _array(node, key, ctx)
    if kind == "boolean":
        return "?" in ctx.text or "urgent" in ctx.text.lower()
    if kind == "integer":
        return int(_clamp(1, node))
    if kind == "number":
        return _clamp(0.9, node)
    return None


def _target(schema: Schema, system: str) -> str:
    if schema.target:
        return schema.target
    m = _INTO.search(system)
    return m.group(1) if m else "en"


def _ctx(text: str, system: str, target: str, bad_enum: bool, drop_placeholder: bool) -> Ctx:
    return Ctx(text, system, target, bad_enum, drop_placeholder)


def unpack(user: str) -> list[dict[str, Any]] | None:
    """The items of a packed user text, or None when it is not one."""
    if not user.startswith('{"items"') and not user.lstrip().startswith("{"):
        return None
    try:
        doc = orjson.loads(user)
    except orjson.JSONDecodeError:
        return None
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return None
    return items


def _echo(value: Any, node: Node, fallback: Any) -> Any:
    """The input id, as the type the schema wants (a real model would echo it that way)."""
    if node.kind in ("string", "any") and value is not None:
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if node.kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if node.kind == "integer" and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if node.kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if node.kind == "enum" and value in node.values:
        return value
    return fallback


def answer(
    schema: Schema,
    system: str,
    user: str,
    *,
    bad_enum: bool = False,
    drop_placeholder: bool = False,
    drop: frozenset[str] = frozenset(),
) -> Any:
    """The answer object. `drop`: texts of packed items that get no answer."""
    target = _target(schema, system)
    items = unpack(user) if schema.packed_item is not None else None
    if items is None or schema.packed_item is None:
        ctx = _ctx(user, system, target, bad_enum, drop_placeholder)
        return generate(schema.root, "", ctx)
    answers = []
    for item in items:
        text = str(item.get("text", ""))
        if text in drop:
            continue
        ctx = _ctx(text, system, target, bad_enum, drop_placeholder)
        one = generate(schema.packed_item, "", ctx)
        one["id"] = _echo(item.get("id"), dict(schema.packed_item.props)["id"], one["id"])
        answers.append(one)
    out: dict[str, Any] = {}
    whole = _ctx(user, system, target, bad_enum, drop_placeholder)
    for name, child in schema.root.props:
        out[name] = answers if name == "items" else generate(child, name, whole)
    return out


def plain(user: str) -> str:
    """The answer without a schema."""
    return f"Simulated answer: {summary(user, 12) or 'hello'}"
