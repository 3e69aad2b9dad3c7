"""Building a job's lanes from its spec: the provider, the credentials, the online lane (with
its escalation model) and the Batch API. The engine and the Ray workers both build here."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from pipeline.auth import Auth, GoogleAuth, KeyAuth
from pipeline.catalog import label_value, model_limits, vertex_model_path
from pipeline.core.retry import RetryPolicy
from pipeline.core.verdict import Judge, Rules
from pipeline.errors import SpecError
from pipeline.escalate import escalation_spec, triggers
from pipeline.lanes.api import BatchApi
from pipeline.lanes.gemini_batch import GeminiBatchApi
from pipeline.lanes.online import Asking, Client, Gates, OnlineLane, Routing
from pipeline.lanes.requests import Requests, TaskChecks
from pipeline.pricing import resolve_prices
from pipeline.providers.base import Provider
from pipeline.providers.gemini import GeminiProvider
from pipeline.providers.openai import OpenAIProvider
from pipeline.spec import JobSpec
from pipeline.tasks.base import Task
from pipeline.transport import Transport


def build_provider(spec: JobSpec, run_no: int = 0) -> Provider:
    p = spec.provider
    if p.api == "vertex":
        assert p.project is not None  # the spec requires it on Vertex AI
        # every request carries the job and run, so the GCP bill breaks down by job
        labels = {"flashpipe-job": label_value(spec.name), "flashpipe-run": str(run_no)}
        labels.update(p.labels)
        return GeminiProvider(
            p.base_url,
            spec.model,
            p.thinking,
            p.temperature,
            model_path=vertex_model_path(p.project, p.location, spec.model),
            labels=labels,
        )
    if p.api == "gemini":
        return GeminiProvider(p.base_url, spec.model, p.thinking, p.temperature)
    return OpenAIProvider(p.base_url, spec.model, p.thinking, p.temperature)


def build_auth(spec: JobSpec, api_key: str | None) -> Auth:
    """The API key from the environment, or Vertex AI's credentials; read before anything
    opens, so a missing one is a one-line error with nothing sent."""
    p = spec.provider
    if p.pools:  # every pool's keys are read when its client is built; check them now
        from pipeline.poolflow import PooledAuth, pool_headers

        for pool in p.pools:
            pool_headers(pool, lambda key: {})
        return PooledAuth({})
    if p.api == "vertex":
        return GoogleAuth.from_environment(p.credentials_file, {"content-type": "application/json"})
    key = api_key if api_key is not None else os.environ.get(p.api_key_env)
    if not key:
        raise SpecError(
            f"provider.api_key_env: the environment variable {p.api_key_env} is not set "
            "(export your key, or use --sim)"
        )
    headers = build_provider(spec).headers(key)
    return KeyAuth(headers, key)


def build_batch_api(spec: JobSpec, transport: Transport, auth: Auth) -> BatchApi:
    p = spec.provider
    if not isinstance(auth, KeyAuth):  # the spec refuses the Batch lane on Vertex AI
        raise SpecError(f"provider.lane: {p.lane!r} needs an API key")
    if p.api == "gemini":
        return GeminiBatchApi(transport, p.base_url, spec.model, auth.key)
    from pipeline.lanes.openai_batch import OpenAIBatchApi

    return OpenAIBatchApi(transport, p.base_url, spec.model, auth.key)


def asking(spec: JobSpec, task: Task, call_prefix: str, seed: int = 0) -> Asking:
    """How the lanes ask the job's model: prompts, the judge's rules, prices."""
    cap = model_limits(spec.model).max_output
    rules = Rules(
        checks=TaskChecks(task),
        policy=RetryPolicy(max_attempts=spec.limits.max_attempts),
        model=spec.model,
        output_cap=cap,
        feedback=spec.limits.retry_feedback,
        keep=spec.input.keep,
    )
    requests = Requests(task, spec.model, spec.provider.max_output_tokens, cap, call_prefix)
    return Asking(requests, Judge(rules, random.Random(seed)), resolve_prices(spec))


def online_lane(
    spec: JobSpec,
    task: Task,
    wiring: tuple[Client, Gates, Routing],
    stopping: Callable[[], bool],
    run_no: int,
    *,
    call_prefix: str | None = None,
    seed: int = 0,
) -> OnlineLane:
    """The job's online lane, and its escalation model's lane when `[escalate]` names one."""
    client, gates, routing = wiring
    prefix = call_prefix or str(run_no)
    lane = OnlineLane(asking(spec, task, prefix, seed), client, gates, routing, stopping, seed)
    if spec.escalate is not None:
        up = escalation_spec(spec)
        second = asking(up, task, f"{prefix}e", seed)
        lane.escalate_to = lane.for_model(second, build_provider(up, run_no))
        lane.escalate_on = triggers(spec.escalate.on)
    return lane
