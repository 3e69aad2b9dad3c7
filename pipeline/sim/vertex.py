"""Vertex AI as the simulator serves it: an OAuth2 token endpoint and bearer-token checks.

The token endpoint speaks the service-account JWT flow google-auth uses (RFC 7523: a form
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>` posted to the key
file's `token_uri`) and answers `{access_token, expires_in, token_type}`. Tokens live
`token_seconds`; a request with an expired or unknown token gets Vertex's 401. The JWT's
signature is not checked (the simulator has no public key of the caller); its claims are.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from typing import Any

import orjson

from pipeline.sim import envelopes

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs every service-account assertion for Google's token endpoint, whatever the
# key file's token_uri; Google checks `aud` against it
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
EXHAUSTED = (
    "Resource exhausted. Please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details."
)
LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


def unauthenticated() -> Any:
    return envelopes.google(401, "UNAUTHENTICATED", UNAUTHENTICATED)


def exhausted() -> Any:
    """Vertex's 429: RESOURCE_EXHAUSTED with no QuotaFailure and no RetryInfo."""
    return envelopes.google(429, "RESOURCE_EXHAUSTED", EXHAUSTED)


def oauth_error(error: str, description: str) -> Any:
    return {"error": error, "error_description": description}


class Tokens:
    """Access tokens issued by the token endpoint, each with its expiry (monotonic seconds)."""

    def __init__(self, token_seconds: float):
        self.token_seconds = token_seconds
        self.expiry: dict[str, float] = {}
        self.issued = 0

    def grant(self, form: dict[str, str], audience: str) -> tuple[int, Any]:
        """(status, body) for a token request."""
        if form.get("grant_type") != JWT_BEARER:
            return 400, oauth_error("unsupported_grant_type", "Invalid grant_type.")
        claims = _jwt_claims(form.get("assertion", ""))
        if claims is None:
            return 400, oauth_error("invalid_grant", "Invalid JWT: malformed assertion.")
        now = time.time()
        if claims.get("aud") not in (GOOGLE_TOKEN_ENDPOINT, audience):
            return 400, oauth_error("invalid_grant", "Invalid JWT: audience does not match.")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] < now:
            return 400, oauth_error(
                "invalid_grant", "Invalid JWT: Token must be a short-lived token."
            )
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split():
            return 400, oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience.")
        token = "ya29.sim-" + secrets.token_urlsafe(24)
        self.expiry[token] = time.monotonic() + self.token_seconds
        self.issued += 1
        return 200, {
            "access_token": token,
            "expires_in": int(self.token_seconds),
            "token_type": "Bearer",
        }

    def check(self, authorization: str) -> str | None:
        """A short fingerprint of a valid bearer token (for the ledger), None if invalid."""
        if authorization[:7].lower() != "bearer ":
            return None
        token = authorization[7:].strip()
        expires = self.expiry.get(token)
        if expires is None or expires < time.monotonic():
            return None
        return hashlib.blake2b(token.encode(), digest_size=6).hexdigest()


def labels_error(labels: Any) -> str | None:
    """Vertex's rules for request labels; the reason a set is refused, or None."""
    if labels is None:
        return None
    if not isinstance(labels, dict) or len(labels) > 64:
        return "labels must be a map of at most 64 entries"
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL.match(k):
            return f"label key {k!r} is invalid"
        if not isinstance(v, str) or not LABEL_VALUE.match(v):
            return f"label value {v!r} is invalid"
    return None


def _jwt_claims(assertion: str) -> dict[str, Any] | None:
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return claims if isinstance(claims, dict) else None
