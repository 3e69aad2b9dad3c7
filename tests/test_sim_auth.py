"""The simulator's one key check, route by route: each API's refusal in its own shape, the
paths Gemini and OpenAI share answered in the dialect the credentials name."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.simproc import SimProcess

GOOGLE = {"x-goog-api-key": "sim-key"}
BEARER = {"authorization": "Bearer sim-key"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess() as started:
        yield started


def call(sim: SimProcess, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(sim.url + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def error_of(body: Any) -> str:
    """Google's status word, or OpenAI's error code (else its type)."""
    error = (body[0] if isinstance(body, list) else body)["error"]
    return str(error.get("status") or error.get("code") or error.get("type"))


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "error"),
    [
        ("GET", "/v1beta/batches", {}, 403, "PERMISSION_DENIED"),
        ("GET", "/v1beta/batches", {"x-goog-api-key": "nope"}, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1beta/batches?key=nope", {}, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1beta/files/abc", {}, 403, "PERMISSION_DENIED"),
        ("GET", "/v1beta/files/abc", GOOGLE, 404, "NOT_FOUND"),
        ("DELETE", "/v1beta/batches/abc", {}, 403, "PERMISSION_DENIED"),
        ("GET", "/v1/batches", {"authorization": "Bearer sk-wrong"}, 401, "invalid_api_key"),
        ("POST", "/v1/batches", {}, 401, "invalid_api_key"),
        ("GET", "/v1/files/file-x/content", BEARER, 404, "invalid_request_error"),
        ("GET", "/v1/batches/batch_x", BEARER, 404, "invalid_request_error"),
        ("GET", "/v1/batches/abc", GOOGLE, 404, "NOT_FOUND"),
        ("POST", "/v1/chat/completions", {"x-goog-api-key": "sim-key"}, 401, "invalid_api_key"),
        ("POST", "/v1beta/openai/chat/completions", {}, 403, "PERMISSION_DENIED"),
        ("GET", "/v1beta/models", {}, 403, "PERMISSION_DENIED"),
        # an unknown method is a 404 before a missing key; an upload's chunks carry no key
        ("POST", "/v1beta/models/gemini-2.5-flash:nope", {}, 404, "NOT_FOUND"),
        ("POST", "/upload/v1beta/files?upload_id=gone", {}, 404, "NOT_FOUND"),
    ],
)
def test_a_refused_or_missing_call_gets_its_apis_error(
    sim: SimProcess, method: str, path: str, headers: dict[str, str], status: int, error: str
) -> None:
    got, body = call(sim, method, path, headers)
    assert (got, error_of(body)) == (status, error)


def test_the_shared_batch_paths_answer_in_the_dialect_the_credentials_name(
    sim: SimProcess,
) -> None:
    assert call(sim, "GET", "/v1/batches", GOOGLE) == (200, {"operations": []})
    status, page = call(sim, "GET", "/v1/batches", BEARER)
    assert status == 200 and page["object"] == "list" and page["data"] == []
