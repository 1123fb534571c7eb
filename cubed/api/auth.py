"""Authorization header -> security context (Cube's default checkAuth).

The token is the header's second word when there are two (``Bearer <jwt>``), else the whole
value; ``x-cube-authorization`` wins over ``Authorization`` (the HTTP layer picks the header).
Outside dev mode a missing token is 403 ``Authorization header isn't set`` and a bad one 403
``Invalid token`` - expired, not yet valid, wrong signature, wrong audience, issuer or subject,
``alg: none``, an algorithm the key does not verify: the same answer, the cause goes to the log
only. With ``CUBEJS_JWK_URL`` the token must name a key: 403 ``Unable to decode JWT key`` when
it cannot be decoded at all, ``JWT without kid inside headers``, ``Unable to verify, JWK with
kid: "<kid>" not found``. In dev mode requests without a token pass with an empty context and
bad tokens are logged and ignored.

Keys (cubed/api/jwk.py): ``CUBEJS_JWT_KEY`` when set, else ``CUBEJS_API_SECRET`` - an HMAC
secret, a PEM or a JWK (set) - or the JWK set at ``CUBEJS_JWK_URL``. A key verifies only the
algorithms of its own type, intersected with ``CUBEJS_JWT_ALGS``.

The security context is the whole payload, or ``payload[CUBEJS_JWT_CLAIMS_NAMESPACE]`` (``{}``
when absent); a legacy ``u`` object is merged over the top level and removed, with a
deprecation warning, as newer Cube does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import jwt

from cubed.api.jwk import JwksFetcher, VerificationKey, load_keys
from cubed.config import Settings
from cubed.errors import AuthError
from cubed.logs import RequestLogger

#: Tokens longer than this are refused unread (an HTTP header cannot carry more anyway).
MAX_TOKEN_LENGTH = 64 * 1024
#: A kid is echoed in the JWK error text; longer ones are cut there.
MAX_KID_SHOWN = 200
#: Claims that must be numbers (NumericDate) when present.
TIME_CLAIMS = ("exp", "nbf", "iat")


@dataclass(frozen=True)
class SecurityContext:
    """The verified token payload (Cube's ``securityContext``), or empty."""

    payload: Mapping[str, Any]
    authenticated: bool


class Authenticator:
    """Verifies tokens with the configured key(s) and JWT options."""

    def __init__(self, settings: Settings, reactor: Any = None, jwks: JwksFetcher | None = None) -> None:
        self.settings = settings
        self.algorithms: tuple[str, ...] = tuple(settings.jwt_algorithms)
        self.jwks = jwks
        if self.jwks is None and settings.jwk_url:
            if reactor is None:
                from twisted.internet import reactor as global_reactor

                reactor = global_reactor
            self.jwks = JwksFetcher(settings.jwk_url, reactor)
        self.keys: tuple[VerificationKey, ...] = ()
        if self.jwks is None and settings.api_secret:
            self.keys = load_keys(settings.api_secret)

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

    async def authenticate(self, header: str | None, log: RequestLogger) -> SecurityContext:
        """Return the security context for an Authorization header; AuthError when refused."""
        token = self.token_from_header(header)
        enforce = not self.settings.dev_mode
        if token is None:
            if enforce:
                raise AuthError("Authorization header isn't set")
            return SecurityContext({}, False)
        try:
            payload = await self.verify(token)
        except AuthError as error:
            log.info("token refused: {cause}", cause=error.message)
            if enforce:
                raise
            return SecurityContext({}, False)
        except jwt.PyJWTError as error:
            log.info("token refused: {cause}", cause=f"{type(error).__name__}: {error}")
            if enforce:
                raise AuthError("Invalid token") from None
            return SecurityContext({}, False)
        return SecurityContext(self.context_of(payload, log), True)

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the payload of a valid token; raises a PyJWTError, or AuthError with one of
        the JWK texts."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise jwt.InvalidTokenError(f"token of {len(token)} characters (at most {MAX_TOKEN_LENGTH})")
        if self.jwks is not None:
            key = await self._jwk_key(token)
        else:
            key = self._static_key(token)
        return self.decode(token, key)

    async def _jwk_key(self, token: str) -> VerificationKey:
        assert self.jwks is not None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("Unable to decode JWT key") from None
        kid = header.get("kid")
        if kid is None or kid == "":
            raise AuthError("JWT without kid inside headers")
        key = await self.jwks.key(kid) if isinstance(kid, str) else None
        if key is None:
            shown = str(kid)
            if len(shown) > MAX_KID_SHOWN:
                shown = shown[:MAX_KID_SHOWN] + "..."
            raise AuthError(f'Unable to verify, JWK with kid: "{shown}" not found')
        return key

    def _static_key(self, token: str) -> VerificationKey:
        if not self.keys:
            raise jwt.InvalidTokenError("no CUBEJS_API_SECRET or CUBEJS_JWT_KEY to verify tokens with")
        if len(self.keys) == 1:
            return self.keys[0]
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self.keys:
            if key.kid == kid:
                return key
        raise jwt.InvalidTokenError(f"no key of CUBEJS_JWT_KEY has the token's kid {kid!r}")

    def decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        """Return the payload of ``token`` verified with ``key``: only the algorithms both
        the key and ``CUBEJS_JWT_ALGS`` allow, then exp, nbf, aud, iss and sub."""
        algorithms = [a for a in self.algorithms if a in key.algorithms]
        if not algorithms:
            raise jwt.InvalidAlgorithmError(f"the key verifies {', '.join(key.algorithms)}; "
                                            f"CUBEJS_JWT_ALGS allows {', '.join(self.algorithms)}")
        kwargs: dict[str, Any] = {"algorithms": algorithms}
        required: list[str] = []
        if self.settings.jwt_audience:
            kwargs["audience"] = self.settings.jwt_audience
            required.append("aud")
        if self.settings.jwt_issuer:
            kwargs["issuer"] = list(self.settings.jwt_issuer)
            required.append("iss")
        if self.settings.jwt_subject:
            # PyJWT lets a token without ``sub`` through; jsonwebtoken (Cube) does not.
            kwargs["subject"] = self.settings.jwt_subject
            required.append("sub")
        payload = jwt.decode(token, key.key, options={"require": required}, **kwargs)
        if not isinstance(payload, dict):
            raise jwt.InvalidTokenError("payload is not an object")
        for claim in TIME_CLAIMS:
            # PyJWT reads "9999999999" as a number; jsonwebtoken refuses anything but a number.
            value = payload.get(claim)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise jwt.InvalidTokenError(f"{claim} must be a number")
        return payload

    def context_of(self, payload: Mapping[str, Any], log: RequestLogger | None = None) -> dict[str, Any]:
        """Return the security context of a verified payload (namespace, legacy ``u``)."""
        namespace = self.settings.jwt_claims_namespace
        context: dict[str, Any] = dict(payload)
        if namespace:
            value = payload.get(namespace)
            context = dict(value) if isinstance(value, Mapping) else {}
        legacy = context.get("u")
        if isinstance(legacy, Mapping):
            if log is not None:
                log.warn("the security context's 'u' claim is deprecated: its keys are merged into the context")
            merged = {key: value for key, value in context.items() if key != "u"}
            merged.update(legacy)
            return merged
        return context
