"""Error bodies exactly as the real services send them (see tests/fixtures/reference/)."""

from __future__ import annotations

from typing import Any

RATE_DOCS = "https://ai.google.dev/gemini-api/docs/rate-limits"
HELP = {
    "@type": "type.googleapis.com/google.rpc.Help",
    "links": [{"description": "Learn more about Gemini API quotas", "url": RATE_DOCS}],
}
INTERNAL = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
KEY_INVALID = "API key not valid. Please pass a valid API key."
UNREGISTERED = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)


def google(code: int, status: str, message: str, details: list[Any] | None = None) -> Any:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def api_key_invalid() -> Any:
    return google(
        400,
        "INVALID_ARGUMENT",
        KEY_INVALID,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": KEY_INVALID,
            },
        ],
    )


def unregistered() -> Any:
    return google(403, "PERMISSION_DENIED", UNREGISTERED)


def service_disabled() -> Any:
    url = (
        "https://console.developers.google.com/apis/api/generativelanguage.googleapis.com/"
        "overview?project=000000000000"
    )
    return google(
        403,
        "PERMISSION_DENIED",
        "Generative Language API has not been used in project 000000000000 before or it is "
        f"disabled. Enable it by visiting {url} then retry. If you enabled this API recently, "
        "wait a few minutes for the action to propagate to our systems and retry.",
        [
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Google developers console API activation", "url": url}],
            },
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "SERVICE_DISABLED",
                "domain": "googleapis.com",
                "metadata": {
                    "consumer": "projects/000000000000",
                    "service": "generativelanguage.googleapis.com",
                },
            },
        ],
    )


def not_found(model: str, version: str, method: str) -> Any:
    return google(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version {version}, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported "
        "methods.",
    )


def invalid_argument(message: str = "Request contains an invalid argument.") -> Any:
    return google(400, "INVALID_ARGUMENT", message)


def field_violations(violations: list[tuple[str | None, str]]) -> Any:
    listed = []
    for where, description in violations:
        one = {"description": description}
        if where:
            one = {"field": where, **one}
        listed.append(one)
    return google(
        400,
        "INVALID_ARGUMENT",
        "\n".join(d for _, d in violations),
        [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": listed}],
    )


def bad_json_payload(detail: str) -> Any:
    return field_violations([(None, f"Invalid JSON payload received. {detail}")])


def quota(model: str, *, per: str, limit: int, retry_s: float) -> Any:
    """429 RESOURCE_EXHAUSTED; per is 'minute', 'day' or 'tokens' (input tokens per minute)."""
    if per == "tokens":
        metric = "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
        quota_id = "GenerateContentInputTokensPerModelPerMinute-FreeTier"
    else:
        metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
        span = "PerDay" if per == "day" else "PerMinute"
        quota_id = f"GenerateRequests{span}PerProjectPerModel-FreeTier"
    delay = max(0, round(retry_s))
    message = (
        "You exceeded your current quota, please check your plan and billing details. For more "
        f"information on this error, head to: {RATE_DOCS}. To monitor your current usage, head "
        f"to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: {metric}, limit: {limit}, "
        f"model: {model}\nPlease retry in {retry_s:.6f}s."
    )
    return google(
        429,
        "RESOURCE_EXHAUSTED",
        message,
        [
            HELP,
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": metric,
                        "quotaId": quota_id,
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": str(limit),
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"},
        ],
    )


GOOGLE_FAULTS: dict[str, Any] = {
    "400": invalid_argument(),
    "403": service_disabled(),
    "500": google(500, "INTERNAL", INTERNAL),
    "503": google(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "504": google(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


# --- OpenAI ------------------------------------------------------------------------------------


def openai(message: str, type_: str, code: str | None = None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def masked(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


def openai_bad_key(key: str | None) -> Any:
    if not key:
        return openai(
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
            "field (with blank username) if you're accessing the API from your browser and are "
            "prompted for a username and password. You can obtain an API key from "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )
    return openai(
        f"Incorrect API key provided: {masked(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    )


def openai_rate_limit(model: str, *, per: str, limit: int, used: int, retry_s: float) -> Any:
    what = {
        "tokens": "tokens per min (TPM)",
        "day": "requests per day (RPD)",
    }.get(per, "requests per min (RPM)")
    wait = f"{round(retry_s * 1000)}ms" if retry_s < 1 else f"{retry_s:.3g}s"
    return openai(
        f"Rate limit reached for {model} in organization org-simulator on {what}: Limit {limit}, "
        f"Used {used}, Requested 1. Please try again in {wait}. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        "tokens" if per == "tokens" else "requests",
        "rate_limit_exceeded",
    )


INSUFFICIENT_QUOTA = openai(
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "insufficient_quota",
    "insufficient_quota",
)

OPENAI_FAULTS: dict[str, Any] = {
    "400": openai(
        "Invalid parameter: the request could not be processed.", "invalid_request_error"
    ),
    "403": openai(
        "Country, region, or territory not supported",
        "request_forbidden",
        "unsupported_country_region_territory",
    ),
    "500": openai(
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
    ),
    "503": openai("The engine is currently overloaded, please try again later", "server_error"),
    "504": openai("Gateway timeout. Please try again later.", "server_error"),
}


def openai_not_found(model: str) -> Any:
    return openai(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )


OPENAI_BAD_JSON = openai(
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
    "not valid JSON. If you have trouble figuring out how to fix this, please contact us through "
    "our help center at help.openai.com.)",
    "invalid_request_error",
)
