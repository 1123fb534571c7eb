"""JWT verification keys: a shared secret, a PEM, a JWK or JWK set, or a JWK set at a URL.

``load_keys(text)`` reads ``CUBEJS_JWT_KEY`` (or ``CUBEJS_API_SECRET``): a PEM (public key,
certificate or private key, whose public half is kept), a JWK (``{"kty": ...}``), a JWK set
(``{"keys": [...]}``), or else an HMAC secret. Every key carries the algorithms it may verify,
fixed by its type (and its JWK ``alg`` when there is one): an HMAC secret verifies only
HS256/384/512, an RSA key only RS*/PS*, an EC key only the ES algorithm of its curve. So a token
signed with HS256 using an RSA public key's PEM as the secret ("key confusion") is refused
whatever ``CUBEJS_JWT_ALGS`` says, and ``alg: none`` never verifies.

``JwksFetcher`` serves ``CUBEJS_JWK_URL``: the set is fetched on the reactor with Twisted's
Agent (connect and overall timeouts, a body size cap), cached for the response's
``Cache-Control: max-age`` (default five minutes), refetched when a token names a ``kid`` the
cached set lacks - at most once per ``min_refetch_interval`` seconds, so tokens with made-up
kids cannot make cubed hammer the key server - and concurrent lookups share one fetch. When a
refetch fails the keys already known stay in use.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

HMAC_ALGORITHMS: tuple[str, ...] = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "ES512")
#: Every algorithm cubed verifies (those of Cube's jsonwebtoken, less ``none``).
SUPPORTED_ALGORITHMS: tuple[str, ...] = HMAC_ALGORITHMS + RSA_ALGORITHMS + EC_ALGORITHMS
ASYMMETRIC_ALGORITHMS: tuple[str, ...] = RSA_ALGORITHMS + EC_ALGORITHMS
_CURVE_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
#: RSA keys shorter than this are refused (as jsonwebtoken 9 does).
MIN_RSA_BITS = 2048
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


class KeyFormatError(ValueError):
    """A key that cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class VerificationKey:
    """One key and the JWT algorithms it may verify."""

    key: Any
    algorithms: tuple[str, ...]
    kid: str | None = None
    kind: str = "hmac"

    @property
    def symmetric(self) -> bool:
        """Return whether this is an HMAC secret."""
        return self.kind == "hmac"


# -- keys from text ---------------------------------------------------------------------------
def _public_key_algorithms(key: Any) -> tuple[str, tuple[str, ...]]:
    """Return (kind, algorithms) of a cryptography public key; KeyFormatError otherwise."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFormatError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
        return "rsa", RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _CURVE_ALGORITHM.get(key.curve.name)
        if algorithm is None:
            raise KeyFormatError(f"elliptic curve {key.curve.name} is not supported (P-256, P-384, P-521)")
        return "ec", (algorithm,)
    raise KeyFormatError(f"{type(key).__name__} keys are not supported (RSA or EC)")


def load_pem(text: str) -> VerificationKey:
    """Return the public key of a PEM text (public key, certificate, or private key)."""
    data = text.strip().encode("ascii", "replace")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        elif b"PRIVATE KEY-----" in data:
            key = load_pem_private_key(data, password=None).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise KeyFormatError(f"not a usable PEM key: {reason}") from None
    kind, algorithms = _public_key_algorithms(key)
    return VerificationKey(key=key, algorithms=algorithms, kind=kind)


def load_jwk(data: Mapping[str, Any]) -> VerificationKey:
    """Return the key of one JWK (``kty`` RSA, EC or oct); KeyFormatError when unusable."""
    if not isinstance(data, Mapping):
        raise KeyFormatError("a JWK must be a JSON object")
    kty = data.get("kty")
    use = data.get("use")
    if use is not None and use != "sig":
        raise KeyFormatError(f'JWK "use" is {use!r}, not "sig"')
    kid = data.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyFormatError("JWK kid must be a string")
    try:
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(dict(data))
            if isinstance(key, rsa.RSAPrivateKey):
                key = key.public_key()
            kind, algorithms = _public_key_algorithms(key)
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(dict(data))
            if isinstance(key, ec.EllipticCurvePrivateKey):
                key = key.public_key()
            kind, algorithms = _public_key_algorithms(key)
        elif kty == "oct":
            key = HMACAlgorithm.from_jwk(dict(data))
            if not key:
                raise KeyFormatError("JWK oct key is empty")
            kind, algorithms = "hmac", HMAC_ALGORITHMS
        else:
            raise KeyFormatError(f"JWK kty {kty!r} is not supported (RSA, EC, oct)")
    except KeyFormatError:
        raise
    except Exception as error:  # PyJWT's InvalidKeyError, cryptography's ValueError, bad base64
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise KeyFormatError(f"not a usable JWK: {reason}") from None
    alg = data.get("alg")
    if alg is not None:
        if alg not in algorithms:
            raise KeyFormatError(f"JWK alg {alg!r} does not fit a {kty} key")
        algorithms = (alg,)
    return VerificationKey(key=key, algorithms=algorithms, kid=kid, kind=kind)


def jwk_set(data: Any, log: Logger | None = None) -> dict[str, VerificationKey]:
    """Return the usable keys of a JWK set by kid; keys without a kid or unusable are left out
    (and logged when ``log`` is given). KeyFormatError when ``data`` is not a JWK set."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise KeyFormatError('a JWK set must be a JSON object with a "keys" array')
    keys: dict[str, VerificationKey] = {}
    for index, item in enumerate(data["keys"]):
        try:
            key = load_jwk(item)
        except KeyFormatError as error:
            if log is not None:
                log.warn("JWK set: key {index} skipped: {reason}", index=index, reason=str(error))
            continue
        if key.kid is None:
            if log is not None:
                log.warn("JWK set: key {index} skipped: no kid", index=index)
            continue
        keys.setdefault(key.kid, key)
    return keys


def unescape_pem(text: str) -> str:
    """Return ``text`` with literal ``\\n`` turned into newlines when it is a one-line PEM
    (as PEMs are often put in environment variables)."""
    if "-----BEGIN" in text and "\n" not in text.strip() and "\\n" in text:
        return text.replace("\\n", "\n")
    return text


def load_keys(text: str) -> tuple[VerificationKey, ...]:
    """Return the keys of ``CUBEJS_JWT_KEY``/``CUBEJS_API_SECRET`` text: one for a secret, a
    PEM or a JWK; one per usable key (with a kid) of a JWK set. KeyFormatError when the text
    looks like a PEM or a JWK but is not a usable one."""
    stripped = unescape_pem(text).strip()
    if stripped.startswith("-----BEGIN"):
        return (load_pem(stripped),)
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict) and "keys" in data:
            keys = jwk_set(data)
            if not keys:
                raise KeyFormatError("the JWK set has no usable key with a kid")
            return tuple(keys.values())
        if isinstance(data, dict) and "kty" in data:
            return (load_jwk(data),)
    if not text:
        raise KeyFormatError("the secret is empty")
    return (VerificationKey(key=text, algorithms=HMAC_ALGORITHMS, kind="hmac"),)


def check_algorithms(keys: Iterable[VerificationKey], algorithms: Iterable[str]) -> None:
    """Raise KeyFormatError unless every key can verify one of ``algorithms``."""
    wanted = set(algorithms)
    for key in keys:
        if not wanted.intersection(key.algorithms):
            what = "an HMAC secret" if key.symmetric else f"an {key.kind.upper()} key"
            raise KeyFormatError(f"is {what}, which verifies only {', '.join(key.algorithms)}")


def default_algorithms(keys: Iterable[VerificationKey]) -> tuple[str, ...]:
    """Return the algorithms accepted when ``CUBEJS_JWT_ALGS`` is not set: HS256 for a secret
    (cubed's default), else what the keys themselves verify."""
    found: list[str] = []
    for key in keys:
        for algorithm in (("HS256",) if key.symmetric else key.algorithms):
            if algorithm not in found:
                found.append(algorithm)
    return tuple(found) or ("HS256",)


# -- the JWK set at a URL ---------------------------------------------------------------------
class JwksFetchError(Exception):
    """The JWK set could not be fetched or read."""


class _LimitedBody(Protocol):
    """Collects a response body up to ``limit`` bytes; more aborts the connection."""

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.transport: Any = None
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.finished.errback(JwksFetchError(f"JWK set larger than {self.limit} bytes"))
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


class _Discard(Protocol):
    """Drops a response body by closing the connection at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class JwksFetcher:
    """The JWK set at ``CUBEJS_JWK_URL``, cached and refetched on demand."""

    log = Logger(namespace="cubed.auth")

    def __init__(self, url: str, reactor: Any, *, timeout: float = 10.0, min_refetch_interval: float = 10.0,
                 default_max_age: float = 300.0, max_age_limit: float = 86400.0, max_body: int = 1024 * 1024,
                 agent: Any = None) -> None:
        self.url = url
        self.reactor = reactor
        self.timeout = timeout
        self.min_refetch_interval = min_refetch_interval
        self.default_max_age = default_max_age
        self.max_age_limit = max_age_limit
        self.max_body = max_body
        self.agent = agent if agent is not None else Agent(reactor, connectTimeout=timeout)
        self._keys: dict[str, VerificationKey] | None = None
        self._expires = 0.0
        self._last_attempt: float | None = None
        self._waiters: list[Deferred[None]] | None = None
        #: How many fetches were started (for tests and logs).
        self.fetches = 0

    @property
    def keys(self) -> Mapping[str, VerificationKey]:
        """Return the keys known now (empty before the first successful fetch)."""
        return dict(self._keys or {})

    def prefetch(self) -> Deferred[None]:
        """Start a fetch now (at start-up) so that the first token need not wait; failures are
        logged only. Returns a Deferred firing when the fetch is over."""
        return ensureDeferred(self._refresh())

    async def key(self, kid: str) -> VerificationKey | None:
        """Return the key with ``kid``, fetching the set when it is stale, or when the kid is
        unknown and no fetch happened in the last ``min_refetch_interval`` seconds."""
        now = self.reactor.seconds()
        if self._keys is None or now >= self._expires:
            if self._may_fetch(now):
                await self._refresh()
        key = (self._keys or {}).get(kid)
        if key is None and self._may_fetch(self.reactor.seconds()):
            await self._refresh()
            key = (self._keys or {}).get(kid)
        return key

    def _may_fetch(self, now: float) -> bool:
        if self._waiters is not None:
            return True  # one is running: waiting for it costs the key server nothing
        return self._last_attempt is None or now - self._last_attempt >= self.min_refetch_interval

    async def _refresh(self) -> None:
        """Fetch the set once for every concurrent caller; never raises."""
        if self._waiters is not None:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            await waiter
            return
        self._waiters = []
        self._last_attempt = self.reactor.seconds()
        self.fetches += 1
        try:
            keys, max_age = await self._fetch()
        except Exception as error:  # network, timeout, status, JSON: the old keys stay
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            self.log.warn("JWK set {url} not fetched: {reason}", url=self.url, reason=f"{type(error).__name__}: {reason}")
            self._expires = self.reactor.seconds() + self.min_refetch_interval
        else:
            self._keys = keys
            self._expires = self.reactor.seconds() + max_age
            self.log.info("JWK set {url} fetched: {count} key(s), kept {max_age:.0f} s", url=self.url,
                          count=len(keys), max_age=max_age)
        finally:
            waiters, self._waiters = self._waiters, None
            for waiter in waiters or ():
                waiter.callback(None)

    async def _fetch(self) -> tuple[dict[str, VerificationKey], float]:
        d = self._get()
        d.addTimeout(self.timeout, self.reactor)
        status, headers, body = await d
        if status != 200:
            raise JwksFetchError(f"HTTP status {status}")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise JwksFetchError(f"not JSON: {error}") from None
        try:
            keys = jwk_set(data, self.log)
        except KeyFormatError as error:
            raise JwksFetchError(str(error)) from None
        return keys, self._max_age(headers)

    def _get(self) -> Deferred[tuple[int, Headers, bytes]]:
        async def get() -> tuple[int, Headers, bytes]:
            response = await self.agent.request(
                b"GET", self.url.encode("utf-8"),
                Headers({b"accept": [b"application/json"], b"user-agent": [b"cubed"]}))
            if isinstance(response.length, int) and response.length > self.max_body:
                response.deliverBody(_Discard())
                raise JwksFetchError(f"JWK set larger than {self.max_body} bytes")

            def cancel(_: Deferred[bytes]) -> None:
                if reader.transport is not None:
                    reader.transport.stopProducing()

            finished: Deferred[bytes] = Deferred(cancel)
            reader = _LimitedBody(finished, self.max_body)
            response.deliverBody(reader)
            body = await finished
            return response.code, response.headers, body

        return ensureDeferred(get())

    def _max_age(self, headers: Headers) -> float:
        for value in headers.getRawHeaders(b"cache-control", []):
            text = value.decode("latin-1")
            if "no-store" in text.lower() or "no-cache" in text.lower():
                return 0.0
            match = _MAX_AGE.search(text)
            if match:
                return float(min(int(match.group(1)), self.max_age_limit))
        return self.default_max_age
