"""Tokens: a table of attacks that must all answer 403, and the keys that must work.

Every attack goes through real HTTP to a server on the demo (DuckDB) and must answer 403 with
``{"error": "Invalid token"}`` - or ``Authorization header isn't set`` for an empty header, or
one of the JWK texts in JWK mode - and the cause must reach the log only. The table covers
``alg: none`` (in several spellings), key confusion (HS256 signed with the RSA public key's PEM
as the HMAC secret while RS256 is configured, in PEM, JWK and JWK-URL modes), expired and
not-yet-valid tokens, a flipped signature byte, a payload swapped under a valid signature,
wrong audience/issuer/subject, garbage, a token for another secret or another RSA key, an
algorithm CUBEJS_JWT_ALGS does not allow, unknown ``crit`` extensions, and a kid not in the JWK
set. A header of 1 MB is cut off by Twisted's header limit (16 KiB: 400 and the connection
closed) at once, never read to the end; a 12 KB token is refused with 403 in well under a
second.

The positive cases: HS256/384/512 as CUBEJS_JWT_ALGS allows, RS256, PS256 and ES256 with
CUBEJS_JWT_KEY as a PEM and as a JWK, a JWK set served by a small Twisted HTTP server in the
test (CUBEJS_JWK_URL: cached, refetched when a new kid appears, at most once per interval for
unknown kids), audience/issuer/subject, the claims namespace and the legacy ``u`` claim (on
the Authenticator's returned context), and ``x-cube-authorization`` winning over
``Authorization``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jwt
import treq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from cubed.api.auth import Authenticator
from cubed.api.jwk import JwksFetcher, load_keys
from cubed.config import load_settings
from cubed.errors import AuthError
from cubed.logs import RequestLogger, format_text
from tests.api.test_http import call
from tests.security import demo_settings as duckdb_settings
from tests.support.server import TEST_SECRET, RunningServer, start_server

META = "/cubejs-api/v1/meta"
INVALID = {"error": "Invalid token"}
NOT_SET = {"error": "Authorization header isn't set"}

# -- keys ------------------------------------------------------------------------------------
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())


def public_pem(key: Any) -> str:
    """Return the PEM (SubjectPublicKeyInfo) of a private key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def public_jwk(key: Any, kid: str | None = None, alg: str | None = None) -> dict[str, Any]:
    """Return the public JWK of a private key (RSA or EC)."""
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    data = json.loads(algorithm.to_jwk(key.public_key()))
    data.pop("key_ops", None)
    if kid is not None:
        data["kid"] = kid
    if alg is not None:
        data["alg"] = alg
    return data


def now() -> int:
    return int(time.time())


def claims(**extra: Any) -> dict[str, Any]:
    """Return a fresh payload (iat now, exp in ten minutes) with ``extra``."""
    return {"iat": now(), "exp": now() + 600, **extra}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: Mapping[str, Any], payload: Any, secret: bytes | None = None,
          digest: Callable[..., Any] = hashlib.sha256) -> str:
    """Return a token built by hand: unsigned when ``secret`` is None, else HMAC-signed with it
    (PyJWT refuses to sign HMAC with a PEM, which is what an attacker does)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    signature = "" if secret is None else b64url(hmac.new(secret, signing_input.encode(), digest).digest())
    return f"{signing_input}.{signature}"


def flip_signature(token: str) -> str:
    head, body, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return f"{head}.{body}.{b64url(bytes(raw))}"


def swap_payload(token: str, payload: Mapping[str, Any]) -> str:
    head, _body, signature = token.split(".")
    return f"{head}.{b64url(json.dumps(payload).encode())}.{signature}"


def hs(payload: Mapping[str, Any], secret: str = TEST_SECRET, algorithm: str = "HS256",
       headers: Mapping[str, Any] | None = None) -> str:
    return jwt.encode(dict(payload), secret, algorithm=algorithm, headers=dict(headers) if headers else None)


def signed(key: Any, algorithm: str, payload: Mapping[str, Any] | None = None, kid: str | None = None) -> str:
    return jwt.encode(dict(payload or claims()), key, algorithm=algorithm, headers={"kid": kid} if kid else None)


# -- HTTP ------------------------------------------------------------------------------------
async def meta(server: RunningServer, token: str | None, header: str = "Authorization",
               extra: Mapping[str, str] | None = None) -> tuple[int, Any, float]:
    """GET /v1/meta with ``token`` in ``header``; return (status, body, seconds)."""
    headers = dict(extra or {})
    if token is not None:
        headers[header] = token
    started = time.monotonic()
    answer = await call("GET", server.url + META, headers)
    elapsed = time.monotonic() - started
    try:
        body = answer.json()
    except ValueError:
        body = answer.text
    return answer.status, body, elapsed


@dataclass
class Attack:
    """One row of the attack table: a token (or header value) and the answer it must get."""

    name: str
    token: str | None
    expected: Any = field(default_factory=lambda: dict(INVALID))
    header: str = "Authorization"


class AttackTableMixin:
    """Runs a table of attacks against one server and fails listing every row that got through."""

    async def run_table(self, server: RunningServer, attacks: list[Attack]) -> list[tuple[str, int, Any, float]]:
        results = []
        wrong = []
        for attack in attacks:
            status, body, elapsed = await meta(server, attack.token, attack.header)
            results.append((attack.name, status, body, elapsed))
            if (status, body) != (403, attack.expected) or elapsed > 3.0:
                wrong.append(f"{attack.name}: {status} {str(body)[:120]} in {elapsed:.2f}s "
                             f"(wanted 403 {attack.expected!r})")
        self.assertEqual(wrong, [], "\n".join(wrong))  # type: ignore[attr-defined]
        return results


class LogCapture:
    """Collects the text of every log event while installed."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        return "\n".join(format_text(event) or "" for event in self.events)


# -- the attack tables -------------------------------------------------------------------------
class SecretAttackTests(AttackTableMixin, unittest.TestCase):
    """A server with an HMAC secret (HS256 only, the default)."""

    async def test_attacks_on_an_hmac_secret(self) -> None:
        logs = LogCapture(self)
        server = await start_server(self, await duckdb_settings())
        valid = hs(claims(user="alice"))
        attacks = [
            Attack("empty header", "", NOT_SET),
            Attack("alg none", forge({"alg": "none", "typ": "JWT"}, claims())),
            Attack("alg None", forge({"alg": "None", "typ": "JWT"}, claims())),
            Attack("alg NONE", forge({"alg": "NONE"}, claims())),
            Attack("alg none with the signature of a valid token", forge({"alg": "none"}, claims())
                   + valid.split(".")[2]),
            Attack("alg none, Bearer", "Bearer " + forge({"alg": "none"}, claims())),
            Attack("expired", hs({"iat": now() - 7200, "exp": now() - 3600})),
            Attack("expired a second ago", hs({"iat": now() - 60, "exp": now() - 1})),
            Attack("not yet valid (nbf)", hs(claims(nbf=now() + 3600))),
            Attack("exp as text", hs({"exp": "9999999999"})),
            Attack("nbf as text", hs(claims(nbf="0"))),
            Attack("exp as a boolean", hs({"exp": True})),
            Attack("bad signature", flip_signature(valid)),
            Attack("no signature", valid.rsplit(".", 1)[0] + "."),
            Attack("payload swapped under a valid signature", swap_payload(valid, claims(user="admin"))),
            Attack("another secret", hs(claims(), secret="another-secret-0123456789abcdef-xyz")),
            Attack("HS384 (CUBEJS_JWT_ALGS allows HS256 only)", hs(claims(), algorithm="HS384")),
            Attack("HS512 (CUBEJS_JWT_ALGS allows HS256 only)", hs(claims(), algorithm="HS512")),
            Attack("RS256 with some RSA key", signed(RSA_KEY, "RS256")),
            Attack("unknown crit extension", hs(claims(), headers={"crit": ["exp"], "exp": 1})),
            Attack("b64=false", hs(claims(), headers={"b64": False, "crit": ["b64"]})),
            Attack("payload is an array", forge({"alg": "HS256"}, [1, 2], TEST_SECRET.encode())),
            Attack("payload is a string", forge({"alg": "HS256"}, "admin", TEST_SECRET.encode())),
            Attack("garbage", "not-a-jwt"),
            Attack("three dots", "..."),
            Attack("empty parts", "a..b"),
            Attack("base64 junk", "eyJhbGciOiJIUzI1NiJ9.!!!.@@@"),
            Attack("unicode", "ünïcødé.tøkén.☃"),
            Attack("Bearer only", "Bearer"),
            Attack("Bearer and spaces", "Bearer    "),
            Attack("Basic auth", "Basic dXNlcjpwYXNz"),
            Attack("JSON instead of a token", json.dumps(claims())),
            Attack("huge token (12 KB)", hs(claims(pad="x" * 9000))[:-2] + "AA"),
            Attack("x-cube-authorization garbage", "garbage", header="x-cube-authorization"),
        ]
        results = await self.run_table(server, attacks)
        self.assertEqual(len(results), len(attacks))
        # The causes are logged, never sent.
        text = logs.text()
        for cause in ("ExpiredSignatureError", "ImmatureSignatureError", "InvalidSignatureError",
                      "InvalidAlgorithmError", "DecodeError"):
            self.assertIn(cause, text)

    async def test_a_valid_token_passes_the_same_server(self) -> None:
        """The table's server itself accepts a valid token (raw and Bearer)."""
        server = await start_server(self, await duckdb_settings())
        for token in (hs(claims()), "Bearer " + hs(claims())):
            status, body, _ = await meta(server, token)
            self.assertEqual(status, 200, body)

    async def test_x_cube_authorization_wins(self) -> None:
        server = await start_server(self, await duckdb_settings())
        good, bad = hs(claims()), hs(claims(), secret="another-secret-0123456789abcdef-xyz")
        status, body, _ = await meta(server, good, "x-cube-authorization", {"Authorization": bad})
        self.assertEqual(status, 200, body)
        status, body, _ = await meta(server, bad, "x-cube-authorization", {"Authorization": good})
        self.assertEqual((status, body), (403, INVALID))

    async def test_audience_issuer_subject(self) -> None:
        server = await start_server(self, await duckdb_settings(
            CUBEJS_JWT_AUDIENCE="cubed-api", CUBEJS_JWT_ISSUER="https://issuer.one, https://issuer.two",
            CUBEJS_JWT_SUBJECT="svc"))
        good = {"aud": "cubed-api", "iss": "https://issuer.two", "sub": "svc"}
        status, body, _ = await meta(server, hs(claims(**good)))
        self.assertEqual(status, 200, body)
        status, body, _ = await meta(server, hs(claims(**{**good, "aud": ["other", "cubed-api"]})))
        self.assertEqual(status, 200, body)
        attacks = [
            Attack("wrong aud", hs(claims(**{**good, "aud": "other-api"}))),
            Attack("no aud", hs(claims(iss=good["iss"], sub="svc"))),
            Attack("wrong iss", hs(claims(**{**good, "iss": "https://evil"}))),
            Attack("no iss", hs(claims(aud="cubed-api", sub="svc"))),
            Attack("wrong sub", hs(claims(**{**good, "sub": "root"}))),
            Attack("no sub", hs(claims(aud="cubed-api", iss=good["iss"]))),
            Attack("aud as a number", hs(claims(**{**good, "aud": 1}))),
        ]
        await self.run_table(server, attacks)

    async def test_hmac_algorithms_as_allowed(self) -> None:
        secret = "a-64-byte-secret-for-hs512-" + "0123456789" * 4
        server = await start_server(self, await duckdb_settings(CUBEJS_API_SECRET=secret,
                                                                CUBEJS_JWT_ALGS="HS256,HS384,HS512"))
        for algorithm in ("HS256", "HS384", "HS512"):
            status, body, _ = await meta(server, hs(claims(), secret, algorithm=algorithm))
            self.assertEqual(status, 200, f"{algorithm}: {body}")
        server = await start_server(self, await duckdb_settings(CUBEJS_API_SECRET=secret, CUBEJS_JWT_ALGS="HS512"))
        self.assertEqual((await meta(server, hs(claims(), secret, algorithm="HS512")))[0], 200)
        await self.run_table(server, [Attack("HS256 with only HS512 allowed", hs(claims(), secret))])

    async def test_dev_mode_ignores_bad_tokens(self) -> None:
        server = await start_server(self, await duckdb_settings(CUBEJS_DEV_MODE="true"))
        for token in (None, "garbage", forge({"alg": "none"}, claims()), hs({"exp": now() - 10})):
            status, body, _ = await meta(server, token)
            self.assertEqual(status, 200, f"{token}: {body}")


class HugeHeaderTests(unittest.TestCase):
    """A header far over the limit is cut off at once (not read to the end, no hang)."""

    def _send(self, port: int, size: int) -> tuple[bytes, float]:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.settimeout(10)
            request = (b"GET " + META.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                       + b"A" * size + b"\r\n\r\n")
            reply = b""
            try:
                sock.sendall(request)
            except OSError:
                pass  # the server closed while the rest was still being sent: that is the point
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
            except OSError:
                pass
        return reply, time.monotonic() - started

    async def test_one_megabyte_header(self) -> None:
        server = await start_server(self, await duckdb_settings())
        port = int(server.url.rsplit(":", 1)[1])
        reply, elapsed = await deferToThread(self._send, port, 1024 * 1024)
        self.assertLess(elapsed, 5.0)
        # Twisted answers a request over its 16 KiB header limit with 400 and closes; the client
        # may see the reset before reading it. Either way nothing is served.
        status = reply.split(b"\r\n", 1)[0]
        self.assertIn(status, (b"", b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 413 Request Entity Too Large",
                               b"HTTP/1.1 431 Request Header Fields Too Large"), reply[:200])
        # The server still serves.
        status_code, body, _ = await meta(server, hs(claims()))
        self.assertEqual(status_code, 200, body)

    async def test_header_just_under_the_limit(self) -> None:
        """A 15 KB token reaches the authenticator and is refused with 403, quickly."""
        server = await start_server(self, await duckdb_settings())
        token = hs(claims(pad="y" * 11000))
        status, body, elapsed = await meta(server, token[:-3] + "AAA")
        self.assertEqual((status, body), (403, INVALID))
        self.assertLess(elapsed, 2.0)


class PublicKeyTests(AttackTableMixin, unittest.TestCase):
    """CUBEJS_JWT_KEY as a PEM or a JWK: RS256, PS256, ES256; key confusion refused."""

    async def test_rsa_pem(self) -> None:
        pem = public_pem(RSA_KEY)
        server = await start_server(self, await duckdb_settings(CUBEJS_JWT_KEY=pem))
        for algorithm in ("RS256", "RS512", "PS256"):
            status, body, _ = await meta(server, signed(RSA_KEY, algorithm))
            self.assertEqual(status, 200, f"{algorithm}: {body}")
        await self.run_table(server, self.rsa_attacks(pem))

    def rsa_attacks(self, pem: str) -> list[Attack]:
        return [
            Attack("key confusion: HS256 with the public PEM as secret", forge({"alg": "HS256", "typ": "JWT"}, claims(),
                                                                              pem.encode())),
            Attack("key confusion: HS256 with the PEM, no trailing newline",
                   forge({"alg": "HS256"}, claims(), pem.strip().encode())),
            Attack("key confusion: HS512 with the public PEM", forge({"alg": "HS512"}, claims(), pem.encode(),
                                                                     hashlib.sha512)),
            Attack("key confusion: HS256 with the DER key", forge({"alg": "HS256"}, claims(),
                   RSA_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))),
            Attack("HS256 with the server's API secret", hs(claims())),
            Attack("alg none", forge({"alg": "none"}, claims())),
            Attack("another RSA key", signed(OTHER_RSA_KEY, "RS256")),
            Attack("an EC key", signed(EC_KEY, "ES256")),
            Attack("expired", signed(RSA_KEY, "RS256", {"exp": now() - 5})),
            Attack("not yet valid", signed(RSA_KEY, "RS256", claims(nbf=now() + 600))),
            Attack("bad signature", flip_signature(signed(RSA_KEY, "RS256"))),
            Attack("payload swapped", swap_payload(signed(RSA_KEY, "RS256"), claims(admin=True))),
        ]

    async def test_rsa_pem_restricted_algorithms(self) -> None:
        server = await start_server(self, await duckdb_settings(CUBEJS_JWT_KEY=public_pem(RSA_KEY),
                                                                CUBEJS_JWT_ALGS="RS256"))
        self.assertEqual((await meta(server, signed(RSA_KEY, "RS256")))[0], 200)
        await self.run_table(server, [Attack("RS512 when only RS256 is allowed", signed(RSA_KEY, "RS512")),
                                      Attack("PS256 when only RS256 is allowed", signed(RSA_KEY, "PS256"))])

    async def test_rsa_jwk(self) -> None:
        key = json.dumps(public_jwk(RSA_KEY))
        server = await start_server(self, await duckdb_settings(CUBEJS_JWT_KEY=key))
        status, body, _ = await meta(server, signed(RSA_KEY, "RS256"))
        self.assertEqual(status, 200, body)
        await self.run_table(server, self.rsa_attacks(public_pem(RSA_KEY)) + [
            Attack("key confusion: HS256 with the JWK text as secret", forge({"alg": "HS256"}, claims(),
                                                                             key.encode())),
        ])

    async def test_ec_pem_and_jwk(self) -> None:
        for key_text in (public_pem(EC_KEY), json.dumps(public_jwk(EC_KEY, alg="ES256"))):
            server = await start_server(self, await duckdb_settings(CUBEJS_JWT_KEY=key_text))
            status, body, _ = await meta(server, signed(EC_KEY, "ES256"))
            self.assertEqual(status, 200, body)
            await self.run_table(server, [
                Attack("key confusion: HS256 with the EC key text", forge({"alg": "HS256"}, claims(),
                                                                          key_text.encode())),
                Attack("another EC key", signed(ec.generate_private_key(ec.SECP256R1()), "ES256")),
                Attack("ES384 with a P-256 key", signed(EC384_KEY, "ES384")),
                Attack("RS256", signed(RSA_KEY, "RS256")),
                Attack("alg none", forge({"alg": "none"}, claims())),
            ])

    async def test_pem_with_escaped_newlines(self) -> None:
        """A PEM put on one line with literal \\n (as in many .env files) works."""
        server = await start_server(self, await duckdb_settings(
            CUBEJS_JWT_KEY=public_pem(RSA_KEY).replace("\n", "\\n")))
        self.assertEqual((await meta(server, signed(RSA_KEY, "RS256")))[0], 200)


# -- JWK URL -----------------------------------------------------------------------------------
class JwksResource(Resource):
    """A JWK set endpoint: counts fetches, serves ``keys`` with a max-age."""

    isLeaf = True

    def __init__(self, keys: list[dict[str, Any]], max_age: int = 600) -> None:
        super().__init__()
        self.keys = keys
        self.max_age = max_age
        self.hits = 0

    def render_GET(self, request: Any) -> bytes:
        self.hits += 1
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", f"public, max-age={self.max_age}".encode())
        return json.dumps({"keys": self.keys}).encode()


def serve_jwks(testcase: unittest.TestCase, resource: Resource) -> str:
    """Serve ``resource`` on a local port for the test; return its URL."""
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}/.well-known/jwks.json"


class JwkUrlTests(AttackTableMixin, unittest.TestCase):
    """CUBEJS_JWK_URL served by a Twisted HTTP server in the test."""

    async def test_jwk_url_attacks_and_rotation(self) -> None:
        jwks = JwksResource([public_jwk(RSA_KEY, kid="rsa-1")])
        url = serve_jwks(self, jwks)
        server = await start_server(self, await duckdb_settings(CUBEJS_JWK_URL=url))
        status, body, _ = await meta(server, signed(RSA_KEY, "RS256", kid="rsa-1"))
        self.assertEqual(status, 200, body)
        self.assertEqual(jwks.hits, 1)
        # Cached: no second fetch.
        status, body, _ = await meta(server, signed(RSA_KEY, "RS256", kid="rsa-1"))
        self.assertEqual((status, jwks.hits), (200, 1), body)

        pem = public_pem(RSA_KEY)
        await self.run_table(server, [
            Attack("kid not in the set", signed(EC_KEY, "ES256", kid="ec-1"),
                   {"error": 'Unable to verify, JWK with kid: "ec-1" not found'}),
            Attack("no kid", signed(RSA_KEY, "RS256"), {"error": "JWT without kid inside headers"}),
            Attack("empty kid", signed(RSA_KEY, "RS256", kid=""), {"error": "JWT without kid inside headers"}),
            Attack("garbage", "not-a-jwt", {"error": "Unable to decode JWT key"}),
            Attack("empty header object", "e30.e30.", {"error": "JWT without kid inside headers"}),
            Attack("alg none with a known kid", forge({"alg": "none", "kid": "rsa-1"}, claims())),
            Attack("key confusion: HS256 with the PEM, known kid", forge({"alg": "HS256", "kid": "rsa-1"}, claims(),
                                                                         pem.encode())),
            Attack("key confusion: HS256 with the JWK's n", forge({"alg": "HS256", "kid": "rsa-1"}, claims(),
                                                                  public_jwk(RSA_KEY)["n"].encode())),
            Attack("known kid, another key", signed(OTHER_RSA_KEY, "RS256", kid="rsa-1")),
            Attack("known kid, expired", signed(RSA_KEY, "RS256", {"exp": now() - 1}, kid="rsa-1")),
            Attack("kid path traversal", signed(RSA_KEY, "RS256", kid="../../etc/passwd"),
                   {"error": 'Unable to verify, JWK with kid: "../../etc/passwd" not found'}),
        ])
        # Unknown kids within the refetch interval cost the key server nothing.
        self.assertEqual(jwks.hits, 1)

        # Rotation: a new key appears; once the interval has passed, its kid triggers a refetch.
        jwks.keys.append(public_jwk(EC_KEY, kid="ec-1", alg="ES256"))
        fetcher = server.server.api.auth.jwks
        status, body, _ = await meta(server, signed(EC_KEY, "ES256", kid="ec-1"))
        self.assertEqual((status, body, jwks.hits), (403, {"error": 'Unable to verify, JWK with kid: "ec-1" not found'}, 1))
        fetcher.min_refetch_interval = 0.0
        status, body, _ = await meta(server, signed(EC_KEY, "ES256", kid="ec-1"))
        self.assertEqual((status, jwks.hits), (200, 2), body)
        status, body, _ = await meta(server, signed(RSA_KEY, "RS256", kid="rsa-1"))
        self.assertEqual((status, jwks.hits), (200, 2), body)
        # The JWK's alg pins the algorithm.
        await self.run_table(server, [Attack("ES256 key used with ES384", signed(EC384_KEY, "ES384", kid="ec-1"))])

    async def test_jwk_url_down(self) -> None:
        """An unreachable key server: the token is refused (403), quickly, and nothing hangs."""
        dead = f"http://127.0.0.1:{_closed_port()}/jwks.json"
        server = await start_server(self, await duckdb_settings(CUBEJS_JWK_URL=dead))
        status, body, elapsed = await meta(server, signed(RSA_KEY, "RS256", kid="rsa-1"))
        self.assertEqual((status, body), (403, {"error": 'Unable to verify, JWK with kid: "rsa-1" not found'}))
        self.assertLess(elapsed, 5.0)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the fetcher on a fake clock -----------------------------------------------------------------
class FakeResponse:
    """Just enough of IResponse for JwksFetcher."""

    def __init__(self, body: bytes, code: int = 200, cache_control: str | None = None) -> None:
        self.code = code
        self.body = body
        self.length = len(body)
        self.headers = Headers({b"cache-control": [cache_control.encode()]} if cache_control else {})

    def deliverBody(self, protocol: Any) -> None:
        class Transport:
            def stopProducing(self) -> None:
                pass

        protocol.makeConnection(Transport())
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class FakeAgent:
    """Answers each request with the next of ``answers`` (a body, or None for never)."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.hang = False
        self.cache_control: str | None = "max-age=300"
        self.pending: list[Deferred[Any]] = []

    def request(self, method: bytes, url: bytes, headers: Any = None) -> Deferred[Any]:
        self.requests += 1
        if self.hang:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        return succeed(FakeResponse(json.dumps({"keys": self.keys}).encode(), cache_control=self.cache_control))


class JwksFetcherTests(unittest.TestCase):
    """Caching, refetch on an unknown kid, rate limit, timeout - on a Clock."""

    def fetcher(self, **options: Any) -> tuple[JwksFetcher, FakeAgent, Clock]:
        clock, agent = Clock(), FakeAgent()
        agent.keys = [public_jwk(RSA_KEY, kid="a")]
        return JwksFetcher("http://keys.example/jwks", clock, agent=agent, **options), agent, clock

    def key(self, fetcher: JwksFetcher, kid: str) -> Any:
        from twisted.internet.defer import ensureDeferred

        return self.successResultOf(ensureDeferred(fetcher.key(kid)))

    def test_cache_and_max_age(self) -> None:
        fetcher, agent, clock = self.fetcher()
        self.assertIsNotNone(self.key(fetcher, "a"))
        self.assertIsNotNone(self.key(fetcher, "a"))
        self.assertEqual(agent.requests, 1)
        clock.advance(301)
        self.assertIsNotNone(self.key(fetcher, "a"))
        self.assertEqual(agent.requests, 2)

    def test_unknown_kid_refetch_is_rate_limited(self) -> None:
        fetcher, agent, clock = self.fetcher(min_refetch_interval=30.0)
        self.assertIsNotNone(self.key(fetcher, "a"))
        for kid in ("x1", "x2", "x3"):
            self.assertIsNone(self.key(fetcher, kid))
        self.assertEqual(agent.requests, 1)
        agent.keys.append(public_jwk(EC_KEY, kid="b"))
        clock.advance(29)
        self.assertIsNone(self.key(fetcher, "b"))
        self.assertEqual(agent.requests, 1)
        clock.advance(1)
        self.assertIsNotNone(self.key(fetcher, "b"))
        self.assertEqual(agent.requests, 2)

    def test_concurrent_lookups_share_one_fetch(self) -> None:
        from twisted.internet.defer import ensureDeferred

        fetcher, agent, clock = self.fetcher()
        agent.hang = True
        lookups = [ensureDeferred(fetcher.key("a")) for _ in range(5)]
        self.assertEqual(agent.requests, 1)
        agent.pending[0].callback(FakeResponse(json.dumps({"keys": agent.keys}).encode()))
        for lookup in lookups:
            self.assertIsNotNone(self.successResultOf(lookup))

    def test_timeout_keeps_old_keys(self) -> None:
        from twisted.internet.defer import ensureDeferred

        fetcher, agent, clock = self.fetcher(timeout=5.0, min_refetch_interval=1.0)
        self.assertIsNotNone(self.key(fetcher, "a"))
        agent.hang = True
        clock.advance(400)  # stale
        lookup = ensureDeferred(fetcher.key("a"))
        self.assertNoResult(lookup)
        clock.advance(5.0)  # the fetch times out; the stale key stays in use
        self.assertIsNotNone(self.successResultOf(lookup))

    def test_bad_documents(self) -> None:
        fetcher, agent, clock = self.fetcher(min_refetch_interval=0.0)
        for body in (b"not json", b"[]", b'{"keys": "x"}', b"\xff\xfe"):
            agent.request = lambda *a, body=body, **k: succeed(FakeResponse(body))  # type: ignore[method-assign]
            self.assertIsNone(self.key(fetcher, "a"))
        # Unusable keys in the set are skipped, the others kept.
        agent.keys = [{"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB"}, {"kty": "oct", "k": ""},
                      {"kty": "RSA", "kid": "enc", "use": "enc", **public_jwk(RSA_KEY)},
                      public_jwk(RSA_KEY, kid="good")]
        del agent.request
        self.assertIsNotNone(self.key(fetcher, "good"))
        self.assertIsNone(self.key(fetcher, "broken"))
        self.assertIsNone(self.key(fetcher, "enc"))

    def test_oversized_body_refused(self) -> None:
        fetcher, agent, clock = self.fetcher(max_body=100)
        self.assertIsNone(self.key(fetcher, "a"))


# -- the Authenticator's context -------------------------------------------------------------
class ContextTests(unittest.TestCase):
    """What security context the Authenticator returns for a verified token."""

    def authenticator(self, **environ: str) -> Authenticator:
        import tempfile

        settings = load_settings({"CUBEJS_API_SECRET": TEST_SECRET, **environ}, tempfile.mkdtemp(), {})
        return Authenticator(settings)

    async def context(self, authenticator: Authenticator, token: str) -> dict[str, Any]:
        log = RequestLogger(Logger(), "test-request")
        return dict((await authenticator.authenticate(token, log)).payload)

    async def test_whole_payload(self) -> None:
        payload = claims(tenant="t1", roles=["a"])
        self.assertEqual(await self.context(self.authenticator(), hs(payload)), payload)

    async def test_legacy_u_is_merged(self) -> None:
        logs = LogCapture(self)
        token = hs({"iat": 1, "u": {"tenant": "t2", "iat": 99}, "other": 1})
        self.assertEqual(await self.context(self.authenticator(), token), {"iat": 99, "tenant": "t2", "other": 1})
        self.assertIn("deprecated", logs.text())

    async def test_claims_namespace(self) -> None:
        authenticator = self.authenticator(CUBEJS_JWT_CLAIMS_NAMESPACE="https://cube.dev/claims")
        token = hs(claims(**{"https://cube.dev/claims": {"tenant": "t3"}, "sub": "x"}))
        self.assertEqual(await self.context(authenticator, token), {"tenant": "t3"})
        self.assertEqual(await self.context(authenticator, hs(claims(tenant="t4"))), {})
        token = hs(claims(**{"https://cube.dev/claims": {"u": {"tenant": "t5"}}}))
        self.assertEqual(await self.context(authenticator, token), {"tenant": "t5"})

    async def test_public_key_contexts(self) -> None:
        for key_text, key, algorithm in ((public_pem(RSA_KEY), RSA_KEY, "RS256"),
                                         (json.dumps(public_jwk(EC_KEY)), EC_KEY, "ES256")):
            authenticator = self.authenticator(CUBEJS_JWT_KEY=key_text)
            payload = claims(tenant="pk")
            self.assertEqual(await self.context(authenticator, signed(key, algorithm, payload)), payload)

    async def test_refusals_raise_auth_errors(self) -> None:
        authenticator = self.authenticator()
        log = RequestLogger(Logger(), "test-request")
        for header, message in ((None, "Authorization header isn't set"), ("", "Authorization header isn't set"),
                                ("x", "Invalid token"), ("A" * 70000, "Invalid token")):
            try:
                await authenticator.authenticate(header, log)
            except AuthError as error:
                self.assertEqual((error.status, error.message), (403, message))
            else:
                self.fail(f"{header!r} passed")

    async def test_jwk_set_in_jwt_key(self) -> None:
        """CUBEJS_JWT_KEY may hold a JWK set; the token's kid picks the key."""
        text = json.dumps({"keys": [public_jwk(RSA_KEY, kid="r"), public_jwk(EC_KEY, kid="e")]})
        self.assertEqual([k.kid for k in load_keys(text)], ["r", "e"])
        authenticator = self.authenticator(CUBEJS_JWT_KEY=text)
        self.assertEqual((await self.context(authenticator, signed(EC_KEY, "ES256", {"t": 1}, kid="e")))["t"], 1)
        self.assertEqual((await self.context(authenticator, signed(RSA_KEY, "RS256", {"t": 2}, kid="r")))["t"], 2)
        for token in (signed(EC_KEY, "ES256", kid="r"), signed(RSA_KEY, "RS256"), signed(RSA_KEY, "RS256", kid="zz")):
            with self.assertRaises(AuthError):
                await self.context(authenticator, token)
