"""The catalog: where a model is bought (the channel) and what each model accepts; pure tables.

The same Gemini wire format is sold through the Gemini API (an API key), Vertex AI (OAuth2,
project and region in the URL) and gateways such as CometAPI (the native Gemini API at their own
base URL, at their own prices). The price of a token and the quota behind it depend on the
channel, not on the wire format, so the channel is read from the host of `base_url` (or named
in `provider.channel`). Sources: ../shared/reference/channels.md.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit


class Channel(StrEnum):
    GEMINI_API = "gemini"  # Google AI Studio / the Gemini API, incl. its OpenAI-compatible path
    VERTEX = "vertex"  # Vertex AI (Google Cloud): OAuth2 bearer, per project and region
    OPENAI = "openai"  # api.openai.com
    COMETAPI = "cometapi"  # the CometAPI gateway (native Gemini API and OpenAI-compatible)
    GATEWAY = "gateway"  # any other host: a gateway or proxy whose prices flashpipe does not know


HOME_CHANNEL = {"gemini": Channel.GEMINI_API, "openai": Channel.OPENAI, "vertex": Channel.VERTEX}


def _host(base_url: str) -> str:
    return (urlsplit(base_url).hostname or "").lower()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_of(api: str, base_url: str, declared: str | None = None) -> Channel:
    """The channel a job buys through: `provider.channel` when set, else read from the host.

    A loopback host (the simulator, or a local proxy in front of the service) stands for the
    wire format's own service; `flashpipe run --sim` names the channel of the real base URL.
    """
    if declared:
        return Channel(declared)
    if api == "vertex":
        return Channel.VERTEX
    host = _host(base_url)
    if host == "generativelanguage.googleapis.com":
        return Channel.GEMINI_API
    if host == "aiplatform.googleapis.com" or host.endswith("-aiplatform.googleapis.com"):
        return Channel.VERTEX
    if host == "api.openai.com":
        return Channel.OPENAI
    if host == "cometapi.com" or host.endswith(".cometapi.com"):
        return Channel.COMETAPI
    if is_loopback(host):
        return HOME_CHANNEL[api]
    return Channel.GATEWAY


@dataclass(frozen=True)
class ModelLimits:
    """Tokens one request may hold: the prompt (context) and the answer (output cap).

    `cache_min`: the fewest tokens an explicit context cache (Gemini's cachedContents) may
    hold; the API refuses a smaller one. The caching docs list 4,096 for the Gemini 3.x
    models and 2,048 for 2.5 Flash (ai.google.dev/gemini-api/docs/caching, 2026).
    """

    context: int
    max_output: int
    source: str
    cache_min: int = 4096


_GEMINI_FL = ModelLimits(1_048_576, 65_536, "channels.md: Gemini 3.1 Flash-Lite, 1M in / 64K out")
MODEL_LIMITS: dict[str, ModelLimits] = {
    "gemini-3.1-flash-lite-preview": _GEMINI_FL,
    "gemini-3.1-flash-lite": _GEMINI_FL,
    "gemini-2.5-flash-lite": ModelLimits(1_048_576, 65_536, "Gemini model card", 2048),
    "gemini-2.5-flash": ModelLimits(1_048_576, 65_536, "Gemini model card", 2048),
    "gemini-3-flash-preview": ModelLimits(1_048_576, 65_536, "Gemini model card"),
    "gpt-5.3-chat-latest": ModelLimits(128_000, 16_384, "channels.md: GPT-5.3 Chat, 128K / 16K"),
    "gpt-5-mini": ModelLimits(400_000, 128_000, "OpenAI model page"),
}
# a model flashpipe has no limits for (priced through [pricing]): the largest it knows
DEFAULT_LIMITS = ModelLimits(1_048_576, 65_536, "default (model not in the table)")

# Gateway model ids that name a model of the table (CometAPI lists the thinking variants of
# Flash-Lite under their own ids; same model, same limits, the gateway's price).
GATEWAY_ALIASES: dict[str, str] = {
    "gemini-3.1-flash-lite-preview-thinking": "gemini-3.1-flash-lite-preview",
    "gemini-3.1-flash-lite-thinking": "gemini-3.1-flash-lite-preview",
}


def canonical_model(model: str) -> str:
    """`google/gemini-3.1-flash-lite-preview`, `models/x`, `openai/gpt-5.3-chat-latest` -> bare id."""
    return model.rsplit("/", 1)[-1].strip().lower()


def model_limits(model: str) -> ModelLimits:
    name = canonical_model(model)
    return MODEL_LIMITS.get(GATEWAY_ALIASES.get(name, name), DEFAULT_LIMITS)


def vertex_base_url(location: str) -> str:
    """Vertex AI's host for a region; `global` has a host of its own."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def vertex_model_path(project: str, location: str, model: str) -> str:
    """The resource path the google-genai SDK calls (v1beta1, publishers/google)."""
    model_id = canonical_model(model)
    return f"/v1beta1/projects/{project}/locations/{location}/publishers/google/models/{model_id}"


_LABEL_BAD = re.compile(r"[^a-z0-9_-]+")


def label_value(text: str) -> str:
    """A Google Cloud label value: lowercase letters, digits, `_` and `-`, at most 63 chars."""
    return _LABEL_BAD.sub("-", text.lower()).strip("-")[:63] or "job"
