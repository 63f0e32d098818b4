"""API keys: every `/v1/*` route needs `Authorization: Bearer KEY` with one of the configured keys.

`/health` and `/metrics` stay open (probes and scrapers). Keys come from `--api-key` (repeatable) and the
`PDPAIR_API_KEY` environment variable (comma-separated); none configured means no check.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence

from aiohttp import web
from pdpair.router.errors import ApiError

ENV_VAR = "PDPAIR_API_KEY"
PROTECTED_PREFIX = "/v1/"


def collect_keys(flags: Sequence[str] | None, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """--api-key values (each may be comma-separated) plus PDPAIR_API_KEY's, without blanks or repeats."""
    env = os.environ if environ is None else environ
    raw = [*(flags or ()), env.get(ENV_VAR, "")]
    keys = [k.strip() for item in raw for k in item.split(",") if k.strip()]
    return tuple(dict.fromkeys(keys))


def _bearer(request: web.Request) -> bytes | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode()


def key_matches(token: bytes, keys: Sequence[bytes]) -> bool:
    """Constant-time comparison against every key (no early exit on the first match)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(token, key)
    return found


def api_key_middleware(keys: Sequence[str]):
    """aiohttp middleware answering 401 in OpenAI's error shape on /v1/* without a matching bearer key."""
    encoded = [k.encode() for k in keys]

    @web.middleware
    async def check_api_key(request: web.Request, handler) -> web.StreamResponse:
        if request.path.startswith(PROTECTED_PREFIX):
            token = _bearer(request)
            if token is None:
                raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
            if not key_matches(token, encoded):
                raise ApiError(401, "incorrect API key provided", code="invalid_api_key")
        return await handler(request)

    return check_api_key
