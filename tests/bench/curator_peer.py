"""bespokelabs-curator on the simulator's OpenAI endpoint: the peer of `make bench` section 11.

Runs with the Python of the throwaway venv that holds curator (tests/bench/_data/curator-venv),
never with flashpipe's: `python curator_peer.py BASE_URL ROWS.jsonl N CONCURRENCY CACHE_DIR`.
Prints one JSON line: rows answered, seconds.

Two concessions to a machine without internet, neither on the request path: tiktoken cannot
download its cl100k_base file, so curator's token counter (it feeds only curator's own TPM
limiter, set far above this run) counts 4 characters per token; and litellm reads its bundled
model price map instead of fetching one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TELEMETRY_ENABLED", "false")

base_url, path, count, concurrency, cache = sys.argv[1:6]
os.environ["CURATOR_CACHE_DIR"] = cache

from bespokelabs import curator  # noqa: E402
from bespokelabs.curator.request_processor.online import (  # noqa: E402
    openai_online_request_processor as online,
)
from datasets import Dataset  # noqa: E402
from pydantic import BaseModel  # noqa: E402


class _Chars:
    def encode(self, text: str, **_: object) -> list[int]:
        return [0] * (len(text) // 4 + 1)


online.OpenAIOnlineRequestProcessor.get_token_encoding = lambda self: _Chars()  # type: ignore[method-assign]

SYSTEM = (
    "Classify the support ticket into exactly one label: billing, bug, account, "
    "feature_request, other. Answer with JSON."
)


class Answer(BaseModel):
    label: Literal["billing", "bug", "account", "feature_request", "other"]


class Classify(curator.LLM):
    response_format = Answer

    def prompt(self, row: dict[str, str]) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["text"]}]

    def parse(self, row: dict[str, str], response: Answer) -> dict[str, str]:
        return {"id": row["id"], "label": response.label}


rows = []
with open(path) as fh:
    for line in fh:
        item = json.loads(line)
        rows.append({"id": item["id"], "text": item["text"]})
        if len(rows) >= int(count):
            break

llm = Classify(
    model_name="gpt-4o-mini",
    backend="openai",
    generation_params={"max_tokens": 64, "temperature": 0},
    backend_params={
        "base_url": base_url,
        "api_key": "sim-key",
        "max_requests_per_minute": 10_000_000,
        "max_tokens_per_minute": 10_000_000_000,
        "max_concurrent_requests": int(concurrency),
        "max_retries": 2,
        "require_all_responses": False,
    },
)
t0 = time.monotonic()
out = llm(Dataset.from_list(rows))
seconds = time.monotonic() - t0
dataset = getattr(out, "dataset", out)
print(json.dumps({"rows": len(dataset), "seconds": seconds}))
