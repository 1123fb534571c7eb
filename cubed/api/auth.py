"""Authorization header -> security context (Cube's default checkAuth).

The token is the header's second word when there are two (``Bearer <jwt>``), else the whole
value. Outside dev mode a missing token is 403 ``Authorization header isn't set`` and a bad
one 403 ``Invalid token`` (the cause goes to the log only). In dev mode requests without a
token pass with an empty context and bad tokens are logged and ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import jwt

from cubed.config import Settings
from cubed.errors import AuthError
from cubed.logs import RequestLogger

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")


@dataclass(frozen=True)
class SecurityContext:
    """The verified token payload (Cube's ``securityContext``), or empty."""

    payload: Mapping[str, Any]
    authenticated: bool


class Authenticator:
    """Verifies tokens with the configured secret and JWT options."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.algorithms = [a for a in settings.jwt_algorithms if a in HMAC_ALGORITHMS] or ["HS256"]
        self.options = {"require": []}

    @staticmethod
    def token_from_header(header: str | None) -> str | None:
        """Return the token of an Authorization header value, or None when empty."""
        if header is None:
            return None
        value = header.strip()
        if not value:
            return None
        parts = value.split(" ", 1)
        return parts[1].strip() if len(parts) == 2 else parts[0]

    def authenticate(self, header: str | None, log: RequestLogger) -> SecurityContext:
        """Return the security context for an Authorization header; AuthError when refused."""
        token = self.token_from_header(header)
        enforce = not self.settings.dev_mode
        if token is None:
            if enforce:
                raise AuthError("Authorization header isn't set")
            return SecurityContext({}, False)
        try:
            payload = self.verify(token)
        except jwt.PyJWTError as error:
            log.info("token refused: {cause}", cause=f"{type(error).__name__}: {error}")
            if enforce:
                raise AuthError("Invalid token") from None
            return SecurityContext({}, False)
        return SecurityContext(self._context(payload), True)

    def verify(self, token: str) -> dict[str, Any]:
        """Return the payload of a valid token; raises a PyJWTError otherwise."""
        secret = self.settings.api_secret
        if not secret:
            raise jwt.InvalidTokenError("no CUBEJS_API_SECRET to verify tokens with")
        kwargs: dict[str, Any] = {"algorithms": self.algorithms}
        if self.settings.jwt_audience:
            kwargs["audience"] = self.settings.jwt_audience
        if self.settings.jwt_issuer:
            kwargs["issuer"] = list(self.settings.jwt_issuer)
        if self.settings.jwt_subject:
            kwargs["subject"] = self.settings.jwt_subject
        payload = jwt.decode(token, secret, **kwargs)
        if not isinstance(payload, dict):
            raise jwt.InvalidTokenError("payload is not an object")
        return payload

    def _context(self, payload: dict[str, Any]) -> dict[str, Any]:
        namespace = self.settings.jwt_claims_namespace
        if namespace:
            value = payload.get(namespace)
            return value if isinstance(value, dict) else {}
        legacy = payload.get("u")
        if isinstance(legacy, dict):
            merged = {**payload, **legacy}
            merged.pop("u", None)
            return merged
        return payload
