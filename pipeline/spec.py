"""JobSpec: a TOML job file plus --set overrides, validated into one frozen value.

Every error is one line that names the key, the bad value and what is valid.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from pipeline.catalog import Channel, model_limits, vertex_base_url
from pipeline.errors import SpecError
from pipeline.pools import PoolSpec, group_pools

TASKS = ("classify", "translate", "moderate", "custom")
APIS = ("gemini", "openai", "vertex")
THINKING = ("minimal", "low", "medium", "high")
LANES = ("standard", "flex", "batch", "auto")
DEFAULT_CATEGORIES = ("hate", "harassment", "sexual", "violence", "self_harm", "spam")
DEFAULT_BASE_URL = {
    "gemini": "https://generativelanguage.googleapis.com",
    "openai": "https://api.openai.com/v1",
}
DEFAULT_KEY_ENV = {"gemini": "GEMINI_API_KEY", "openai": "OPENAI_API_KEY", "vertex": ""}
TOP_KEYS = {
    "name",
    "task",
    "model",
    "input",
    "provider",
    "limits",
    "budget",
    "pricing",
    "store",
    "batch",
    "dedupe",
    "cache",
    "escalate",
    "engine",
    *TASKS,
}
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Label:
    name: str
    description: str = ""


@dataclass(frozen=True)
class InputSpec:
    path: str
    id: str | None = None
    text: str = "text"
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 60.0
    total: float = 120.0


@dataclass(frozen=True)
class ProviderSpec:
    api: str = "gemini"
    base_url: str = DEFAULT_BASE_URL["gemini"]
    api_key_env: str = DEFAULT_KEY_ENV["gemini"]
    thinking: str = "minimal"
    temperature: float = 0.0
    max_output_tokens: int = 512
    timeout: Timeouts = field(default_factory=Timeouts)
    lane: str = "standard"  # standard | flex | batch | auto
    deadline: str | None = None  # "2026-12-01T08:00Z" or "6h" (from the start of the run)
    channel: str | None = None  # a Channel value; None = read from the host of base_url
    # Vertex AI (api = "vertex"): OAuth2 from Application Default Credentials
    project: str | None = None
    location: str = "global"
    credentials_file: str | None = None  # a service-account or ADC JSON; default: ADC lookup
    labels: tuple[tuple[str, str], ...] = ()  # sent on every Vertex request, with job and run
    # [[provider.pool]]: several keys, one quota per project (empty: api_key_env and [limits])
    pools: tuple[PoolSpec, ...] = ()
    # Gemini explicit context caching of the instructions: "off" | "on" | "auto" (on when the
    # instructions reach the model's minimum cache size)
    context_cache: str = "off"


@dataclass(frozen=True)
class BatchSpec:
    """How the Batch lane splits and watches provider batch jobs."""

    rows_per_batch: int = 10_000
    inline_max_bytes: int = 4_000_000  # larger batches are uploaded as a JSONL file
    max_open: int = 8  # batches submitted and not yet finished
    poll_seconds: float = 30.0  # first poll interval; grows x1.5 up to max_poll_seconds
    max_poll_seconds: float = 300.0
    collect_seconds: float = 2.0  # how long a partial batch waits for more rows
    flex_sheds: int = 3  # auto lane: refusals by Flex before a row moves to Batch / Standard
    batch_hours: float = 24.0  # auto lane: Batch only while the deadline is further than this
    stall_seconds: float = 86_400.0  # a batch unfinished this long moves its rows online


@dataclass(frozen=True)
class EscalateSpec:
    """A second model for the rows the first could not answer."""

    model: str
    thinking: str | None = None  # None: the job's own
    on: tuple[str, ...] = ("invalid", "failed")


@dataclass(frozen=True)
class EngineSpec:
    """[engine]: where the online lane runs (this process, or Ray workers)."""

    kind: str = "local"  # local | ray
    address: str = ""  # "" = start a Ray on this machine; else a cluster to join
    workers: int = 0  # 0 = one per CPU of the cluster


@dataclass(frozen=True)
class Limits:
    rpm: int = 4000
    tpm: int = 4_000_000
    rpd: int = 0
    concurrency: int | None = None  # None = auto
    rows_per_request: int = 1
    max_attempts: int = 6
    retry_feedback: bool = True  # a retry after an invalid answer says what was wrong
    auto_pack: bool = False  # rows_per_request = "auto": chosen at the start of each run
    # an outage (provider unreachable or answering nearly all 5xx) pauses the job; past this
    # many minutes the job stops, resumable, with every row still pending
    outage_minutes: float = 15.0
    # a job that ends with more than this share of its rows failed exits 7, not 0
    max_failed_share: float = 0.1


@dataclass(frozen=True)
class ClassifySpec:
    labels: tuple[Label, ...] = ()
    multi_label: bool = False


@dataclass(frozen=True)
class TranslateSpec:
    targets: tuple[str, ...] = ()
    source: str = "auto"
    glossary: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ModerateSpec:
    categories: tuple[str, ...] = DEFAULT_CATEGORIES


@dataclass(frozen=True)
class CustomSpec:
    prompt: str = ""
    schema_json: str = "{}"

    @property
    def schema(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.schema_json)
        return value


@dataclass(frozen=True)
class PricingOverride:
    input_per_m: Decimal
    output_per_m: Decimal
    cached_per_m: Decimal | None = None


@dataclass(frozen=True)
class JobSpec:
    name: str
    task: str
    model: str
    input: InputSpec
    provider: ProviderSpec
    limits: Limits
    max_usd: Decimal | None = None
    classify: ClassifySpec | None = None
    translate: TranslateSpec | None = None
    moderate: ModerateSpec | None = None
    custom: CustomSpec | None = None
    pricing: PricingOverride | None = None
    store_path: str | None = None
    batch: BatchSpec = field(default_factory=BatchSpec)
    dedupe: bool = True  # rows whose request would be identical are sent once
    cache: bool = True  # answers stored by any job are reused, and this job's are kept
    escalate: EscalateSpec | None = None
    engine: EngineSpec = field(default_factory=EngineSpec)
    raw: str = "{}"  # the merged TOML document as JSON, stored with the job

    def identity(self) -> dict[str, Any]:
        """What may not change under the same job name without --restart."""
        task_cfg = getattr(self, self.task)
        return {
            "task": self.task,
            "model": self.model,
            "input": {"path": self.input.path, "id": self.input.id, "text": self.input.text},
            self.task: asdict(task_cfg) if task_cfg is not None else None,
            "rows_per_request": "auto" if self.limits.auto_pack else self.limits.rows_per_request,
        }

    @property
    def spec_hash(self) -> str:
        blob = orjson.dumps(self.identity(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()[:16]


def load_spec(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    document: Mapping[str, Any] | None = None,
) -> JobSpec:
    """Read a job file (or an already-parsed document), apply `key=value` overrides, validate."""
    if document is None:
        if path is None:
            raise SpecError("no job file given")
        p = Path(path)
        try:
            doc: dict[str, Any] = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecError(f"job file {str(p)!r} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SpecError(f"job file {str(p)!r} is not valid TOML: {exc}") from None
        base_dir = p.parent
    else:
        doc = orjson.loads(orjson.dumps(document))
        base_dir = Path(".")
    for item in overrides:
        _apply_override(doc, item)
    return _validate(doc, base_dir)


def _apply_override(doc: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. limits.rpm=600")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = key.split(".")
    node = doc
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {key}: {part!r} is not a table")
        node = child
    node[parts[-1]] = value


def parse_deadline(value: str, start: datetime, key: str = "provider.deadline") -> datetime:
    """ "2026-12-01T08:00Z" (absolute, UTC if no zone) or "6h" / "90m" / "2d" after `start`."""
    text = value.strip()
    units = {"m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        try:
            amount = float(text[:-1])
        except ValueError:
            amount = -1
        if amount > 0:
            return start + timedelta(seconds=amount * units[text[-1]])
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(
            key, value, 'an ISO time like "2026-12-01T08:00Z" or a duration like "6h"'
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _fail(key: str, value: Any, valid: str) -> SpecError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return SpecError(f"{key}: {shown} is not valid; expected {valid}")


def _table(doc: Mapping[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise _fail(key, value, "a table")
    for k in value:
        if k not in allowed:
            raise _fail(f"{key}.{k}", value[k], f"one of the keys {', '.join(sorted(allowed))}")
    return value


def _str(t: Mapping[str, Any], key: str, full: str, default: str | None = None) -> str:
    value = t.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise _fail(full, value, "a non-empty string")
    return value


def _int(t: Mapping[str, Any], key: str, full: str, default: int, minimum: int = 0) -> int:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(full, value, f"an integer >= {minimum}")
    return value


def _num(t: Mapping[str, Any], key: str, full: str, default: float, minimum: float = 0.0) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise _fail(full, value, f"a number >= {minimum}")
    return float(value)


def _bool(t: Mapping[str, Any], key: str, full: str, default: bool) -> bool:
    value = t.get(key, default)
    if not isinstance(value, bool):
        raise _fail(full, value, "true or false")
    return value


def _choice(t: Mapping[str, Any], key: str, full: str, default: str, options: Sequence[str]) -> str:
    value = t.get(key, default)
    if value not in options:
        raise _fail(full, value, "one of " + ", ".join(options))
    return str(value)


def _decimal(value: Any, full: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(full, value, "a number of US dollars")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise _fail(full, value, "a number of US dollars") from None
    if result < 0:
        raise _fail(full, value, "a number >= 0")
    return result


def _validate(doc: dict[str, Any], base_dir: Path) -> JobSpec:
    for k in doc:
        if k not in TOP_KEYS:
            raise _fail(k, doc[k], "a known key: " + ", ".join(sorted(TOP_KEYS)))
    name = _str(doc, "name", "name")
    if any(c in name for c in "\n\r\t"):
        raise _fail("name", name, "a single-line name")
    task = _choice(doc, "task", "task", "", TASKS)
    model = _str(doc, "model", "model", "gemini-3.1-flash-lite-preview")

    inp = _table(doc, "input", {"path", "id", "text", "keep"})
    if "path" not in inp:
        raise SpecError(
            "input.path: missing; expected the input file or glob (.jsonl, .csv, .tsv, .parquet)"
        )
    path = _str(inp, "path", "input.path")
    if not Path(path).is_absolute() and not Path(path).exists() and (base_dir / path).exists():
        path = str(base_dir / path)
    id_field = inp.get("id")
    if id_field is not None and (not isinstance(id_field, str) or not id_field):
        raise _fail("input.id", id_field, "a column name")
    keep = inp.get("keep", [])
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise _fail("input.keep", keep, "a list of column names")
    input_spec = InputSpec(path, id_field, _str(inp, "text", "input.text", "text"), tuple(keep))

    prov = _table(
        doc,
        "provider",
        {
            "api",
            "base_url",
            "api_key_env",
            "thinking",
            "temperature",
            "max_output_tokens",
            "timeout",
            "lane",
            "deadline",
            "channel",
            "project",
            "location",
            "credentials_file",
            "labels",
            "pool",
            "context_cache",
        },
    )
    lane = _choice(prov, "lane", "provider.lane", "standard", LANES)
    api = _choice(prov, "api", "provider.api", "gemini", APIS)
    context_cache = _context_cache(prov, api, lane)
    vertex = _vertex(prov, api, lane)
    timeout = prov.get("timeout", {})
    if not isinstance(timeout, dict):
        raise _fail("provider.timeout", timeout, "a table {connect, read, total}")
    # Flex answers in minutes, not seconds: longer default timeouts there
    slow = lane in ("flex", "auto")
    timeouts = Timeouts(
        _num(timeout, "connect", "provider.timeout.connect", 5.0, 0.001),
        _num(timeout, "read", "provider.timeout.read", 900.0 if slow else 60.0, 0.001),
        _num(timeout, "total", "provider.timeout.total", 960.0 if slow else 120.0, 0.001),
    )
    deadline = prov.get("deadline")
    if deadline is not None:
        if not isinstance(deadline, str):
            deadline = str(deadline)
        parse_deadline(deadline, datetime.now(UTC), "provider.deadline")
    default_base = vertex_base_url(vertex["location"]) if api == "vertex" else DEFAULT_BASE_URL[api]
    base_url = _str(prov, "base_url", "provider.base_url", default_base).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise _fail("provider.base_url", base_url, "an http:// or https:// URL")
    channel = prov.get("channel", "auto")
    if channel != "auto" and channel not in set(Channel):
        raise _fail("provider.channel", channel, '"auto" or one of ' + ", ".join(Channel))
    max_output = _int(prov, "max_output_tokens", "provider.max_output_tokens", 512, 1)
    cap = model_limits(model)
    if max_output > cap.max_output:
        raise _fail(
            "provider.max_output_tokens",
            max_output,
            f"at most {cap.max_output:,}, the output cap of {model} ({cap.source})",
        )
    # Vertex AI takes no key: its bearer tokens come from Application Default Credentials
    key_env = DEFAULT_KEY_ENV[api]
    if api != "vertex":
        key_env = _str(prov, "api_key_env", "provider.api_key_env", key_env)
    provider = ProviderSpec(
        api=api,
        base_url=base_url,
        api_key_env=key_env,
        thinking=_choice(prov, "thinking", "provider.thinking", "minimal", THINKING),
        temperature=_num(prov, "temperature", "provider.temperature", 0.0),
        max_output_tokens=max_output,
        timeout=timeouts,
        lane=lane,
        deadline=deadline,
        channel=None if channel == "auto" else str(channel),
        context_cache=context_cache,
        **vertex,
    )

    lim = _table(
        doc,
        "limits",
        {
            "rpm",
            "tpm",
            "rpd",
            "concurrency",
            "rows_per_request",
            "max_attempts",
            "retry_feedback",
            "outage_minutes",
            "max_failed_share",
        },
    )
    conc = lim.get("concurrency", "auto")
    if conc == "auto":
        concurrency: int | None = None
    elif isinstance(conc, int) and not isinstance(conc, bool) and 1 <= conc <= 4096:
        concurrency = conc
    else:
        raise _fail("limits.concurrency", conc, '"auto" or an integer from 1 to 4096')
    auto_pack = lim.get("rows_per_request") == "auto"
    if auto_pack:
        lim = {k: v for k, v in lim.items() if k != "rows_per_request"}
    limits = Limits(
        rpm=_int(lim, "rpm", "limits.rpm", 4000),
        tpm=_int(lim, "tpm", "limits.tpm", 4_000_000),
        rpd=_int(lim, "rpd", "limits.rpd", 0),
        concurrency=concurrency,
        rows_per_request=_int(lim, "rows_per_request", "limits.rows_per_request", 1, 1),
        max_attempts=_int(lim, "max_attempts", "limits.max_attempts", 6, 1),
        retry_feedback=_bool(lim, "retry_feedback", "limits.retry_feedback", True),
        auto_pack=auto_pack,
        outage_minutes=_num(lim, "outage_minutes", "limits.outage_minutes", 15.0, 0.01),
        max_failed_share=_num(lim, "max_failed_share", "limits.max_failed_share", 0.1),
    )
    if limits.max_failed_share > 1:
        raise _fail("limits.max_failed_share", limits.max_failed_share, "a number from 0 to 1")
    if limits.rows_per_request > 200:
        raise _fail("limits.rows_per_request", limits.rows_per_request, "an integer from 1 to 200")

    budget = _table(doc, "budget", {"max_usd"})
    max_usd = _decimal(budget["max_usd"], "budget.max_usd") if "max_usd" in budget else None

    pr = _table(doc, "pricing", {"input_per_m", "output_per_m", "cached_per_m"})
    pricing = None
    if pr:
        for k in ("input_per_m", "output_per_m"):
            if k not in pr:
                raise SpecError(
                    f"pricing.{k}: missing; [pricing] needs input_per_m and output_per_m"
                )
        pricing = PricingOverride(
            _decimal(pr["input_per_m"], "pricing.input_per_m"),
            _decimal(pr["output_per_m"], "pricing.output_per_m"),
            _decimal(pr["cached_per_m"], "pricing.cached_per_m") if "cached_per_m" in pr else None,
        )

    bt = _table(
        doc,
        "batch",
        {
            "rows_per_batch",
            "inline_max_bytes",
            "max_open",
            "poll_seconds",
            "max_poll_seconds",
            "collect_seconds",
            "flex_sheds",
            "batch_hours",
            "stall_seconds",
        },
    )
    batch = BatchSpec(
        rows_per_batch=_int(bt, "rows_per_batch", "batch.rows_per_batch", 10_000, 1),
        inline_max_bytes=_int(bt, "inline_max_bytes", "batch.inline_max_bytes", 4_000_000, 0),
        max_open=_int(bt, "max_open", "batch.max_open", 8, 1),
        poll_seconds=_num(bt, "poll_seconds", "batch.poll_seconds", 30.0, 0.01),
        max_poll_seconds=_num(bt, "max_poll_seconds", "batch.max_poll_seconds", 300.0, 0.01),
        collect_seconds=_num(bt, "collect_seconds", "batch.collect_seconds", 2.0, 0.0),
        flex_sheds=_int(bt, "flex_sheds", "batch.flex_sheds", 3, 1),
        batch_hours=_num(bt, "batch_hours", "batch.batch_hours", 24.0, 0.0),
        stall_seconds=_num(bt, "stall_seconds", "batch.stall_seconds", 86_400.0, 0.01),
    )

    pools = _pools(prov, api, limits)
    if pools:
        provider = replace(provider, pools=pools)
    eng = _table(doc, "engine", {"kind", "address", "workers"})
    engine = EngineSpec(
        kind=_choice(eng, "kind", "engine.kind", "local", ENGINES),
        address=str(eng.get("address") or ""),
        workers=_int(eng, "workers", "engine.workers", 0),
    )
    if engine.kind == "ray" and lane != "standard":
        raise _fail("engine.kind", "ray", f'"local" with provider.lane = {lane!r}')
    if provider.context_cache == "on" and (pools or engine.kind != "local"):
        raise _fail(
            "provider.context_cache",
            True,
            'false or "auto" with [[provider.pool]] or engine.kind = "ray" (a cache belongs to '
            "one key's project and this process)",
        )

    store = _table(doc, "store", {"path"})
    store_path = _str(store, "path", "store.path") if "path" in store else None

    task_cfg: dict[str, Any] = {}
    for other in TASKS:
        if other != task and other in doc:
            raise _fail(other, doc[other], f"no [{other}] table in a {task!r} job")
    if task == "classify":
        task_cfg["classify"] = _classify(doc)
    elif task == "translate":
        task_cfg["translate"] = _translate(doc)
    elif task == "moderate":
        task_cfg["moderate"] = _moderate(doc)
    else:
        task_cfg["custom"] = _custom(doc, base_dir)

    dedupe = doc.get("dedupe", True)
    if not isinstance(dedupe, bool):
        raise _fail("dedupe", dedupe, "true or false")
    cache = doc.get("cache", True)
    if not isinstance(cache, bool):
        raise _fail("cache", cache, "true or false")
    escalate = _escalate(doc, lane, max_output) if "escalate" in doc else None

    return JobSpec(
        name=name,
        task=task,
        model=model,
        input=input_spec,
        provider=provider,
        limits=limits,
        max_usd=max_usd,
        pricing=pricing,
        store_path=store_path,
        batch=batch,
        dedupe=dedupe,
        cache=cache,
        escalate=escalate,
        engine=engine,
        raw=orjson.dumps(doc).decode(),
        **task_cfg,
    )


def _context_cache(prov: Mapping[str, Any], api: str, lane: str) -> str:
    """provider.context_cache: false (default), true, or "auto"."""
    value = prov.get("context_cache", False)
    if value not in (True, False, "auto"):
        raise _fail("provider.context_cache", value, 'true, false or "auto"')
    if value is True and api != "gemini":
        raise _fail(
            "provider.context_cache",
            value,
            'false with api = "gemini" only (explicit caches are the Gemini API\'s '
            "cachedContents; OpenAI-compatible endpoints cache prompt prefixes on their own)",
        )
    if value is True and lane in ("batch", "auto"):
        raise _fail(
            "provider.context_cache",
            value,
            'false or "auto" with provider.lane = "batch" or "auto" (the cache lives for one '
            "online run)",
        )
    if value == "auto":
        return "auto"
    return "on" if value else "off"


def _escalate(doc: Mapping[str, Any], lane: str, max_output: int) -> EscalateSpec:
    t = _table(doc, "escalate", {"model", "thinking", "on"})
    if "model" not in t:
        raise SpecError(
            'escalate.model: missing; expected the second model, e.g. "gemini-3-flash-preview"'
        )
    model = _str(t, "model", "escalate.model")
    if lane == "batch":
        raise _fail(
            "provider.lane",
            lane,
            '"standard", "flex" or "auto" with [escalate] (escalation runs online)',
        )
    thinking = (
        _choice(t, "thinking", "escalate.thinking", "minimal", THINKING)
        if "thinking" in t
        else None
    )
    on = t.get("on", ["invalid", "failed"])
    if not isinstance(on, list) or not on or not set(on) <= {"invalid", "failed"}:
        raise _fail("escalate.on", on, 'a non-empty list of "invalid" and "failed"')
    cap = model_limits(model)
    if max_output > cap.max_output:
        raise _fail(
            "provider.max_output_tokens",
            max_output,
            f"at most {cap.max_output:,}, the output cap of {model} ({cap.source})",
        )
    return EscalateSpec(model, thinking, tuple(dict.fromkeys(on)))


def _pools(prov: Mapping[str, Any], api: str, limits: Limits) -> tuple[PoolSpec, ...]:
    entries = prov.get("pool")
    if entries is None:
        return ()
    if not isinstance(entries, list) or not entries:
        raise _fail("provider.pool", entries, "[[provider.pool]] tables")
    if api == "vertex":
        raise _fail("provider.pool", "...", 'api = "gemini" or "openai" (Vertex AI has no keys)')
    return group_pools(entries, limits.rpm, limits.tpm)


def _vertex(prov: Mapping[str, Any], api: str, lane: str) -> dict[str, Any]:
    """The Vertex AI keys of [provider]: project and location, credentials, labels."""
    if api != "vertex":
        for k in ("project", "credentials_file", "labels"):
            if k in prov:
                raise _fail(f"provider.{k}", prov[k], 'nothing here unless api = "vertex"')
        return {}
    if lane in ("batch", "auto"):
        raise _fail(
            "provider.lane",
            lane,
            '"standard" or "flex" on Vertex AI (its batch jobs read and write Cloud Storage or '
            'BigQuery); for half price use lane = "flex", or api = "gemini" for Batch Mode',
        )
    if "project" not in prov:
        raise SpecError(
            "provider.project: missing; Vertex AI needs the Google Cloud project id "
            '(api = "vertex", project = "my-project", location = "global")'
        )
    project = _str(prov, "project", "provider.project")
    location = _str(prov, "location", "provider.location", "global")
    if not all(c.isalnum() or c == "-" for c in project + location):
        raise _fail("provider.project", project, "a project id and a location like us-central1")
    labels = prov.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise _fail("provider.labels", labels, "a table of string labels")
    creds = prov.get("credentials_file")
    if creds is not None and (not isinstance(creds, str) or not creds):
        raise _fail("provider.credentials_file", creds, "the path of a credentials JSON file")
    return {
        "project": project,
        "location": location,
        "credentials_file": creds,
        "labels": tuple(sorted(labels.items())),
    }


def _classify(doc: Mapping[str, Any]) -> ClassifySpec:
    t = _table(doc, "classify", {"labels", "multi_label"})
    raw = t.get("labels")
    if not isinstance(raw, list) or not raw:
        raise _fail("classify.labels", raw, "a non-empty list of labels")
    labels: list[Label] = []
    for i, item in enumerate(raw):
        if isinstance(item, str) and item.strip():
            labels.append(Label(item.strip()))
        elif isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"].strip():
            desc = item.get("description", "")
            if not isinstance(desc, str):
                raise _fail(f"classify.labels[{i}].description", desc, "a string")
            labels.append(Label(item["name"].strip(), desc))
        else:
            raise _fail(
                f"classify.labels[{i}]", item, 'a string or {name = "...", description = "..."}'
            )
    names = [label.name for label in labels]
    if len(set(names)) != len(names):
        raise _fail("classify.labels", names, "unique label names")
    multi = t.get("multi_label", False)
    if not isinstance(multi, bool):
        raise _fail("classify.multi_label", multi, "true or false")
    return ClassifySpec(tuple(labels), multi)


def _translate(doc: Mapping[str, Any]) -> TranslateSpec:
    t = _table(doc, "translate", {"target", "targets", "source", "glossary"})
    if "target" in t and "targets" in t:
        raise _fail("translate.targets", t["targets"], "either target or targets, not both")
    targets = t.get("targets", [t["target"]] if "target" in t else None)
    if (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(x, str) and 2 <= len(x) <= 12 for x in targets)
    ):
        raise _fail("translate.target", targets, 'a language code like "de" (or targets = [...])')
    source = t.get("source", "auto")
    if not isinstance(source, str) or not source:
        raise _fail("translate.source", source, '"auto" or a language code')
    glossary = t.get("glossary", {})
    if not isinstance(glossary, dict) or not all(isinstance(v, str) for v in glossary.values()):
        raise _fail("translate.glossary", glossary, "a table of term = translation strings")
    return TranslateSpec(tuple(targets), source, tuple(sorted(glossary.items())))


def _moderate(doc: Mapping[str, Any]) -> ModerateSpec:
    t = _table(doc, "moderate", {"categories"})
    cats = t.get("categories", list(DEFAULT_CATEGORIES))
    if (
        not isinstance(cats, list)
        or not cats
        or not all(isinstance(c, str) and c.isidentifier() for c in cats)
        or len(set(cats)) != len(cats)
    ):
        raise _fail("moderate.categories", cats, "a non-empty list of unique identifier names")
    return ModerateSpec(tuple(cats))


def _custom(doc: Mapping[str, Any], base_dir: Path) -> CustomSpec:
    t = _table(doc, "custom", {"prompt", "schema", "schema_file"})
    prompt = _str(t, "prompt", "custom.prompt")
    if "schema" in t:
        schema = t["schema"]
    elif "schema_file" in t:
        sf = Path(_str(t, "schema_file", "custom.schema_file"))
        if not sf.is_absolute() and not sf.exists():
            sf = base_dir / sf
        try:
            schema = orjson.loads(sf.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise _fail(
                "custom.schema_file", str(sf), f"a readable JSON Schema file ({exc})"
            ) from None
    else:
        raise SpecError("custom.schema: missing; expected schema = {...} or schema_file = '...'")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise _fail("custom.schema", schema, 'a JSON Schema object with type = "object"')
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise _fail("custom.schema", schema, f"a valid JSON Schema ({exc.message})") from None
    return CustomSpec(prompt, orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode())
