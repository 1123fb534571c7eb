"""The HTTP API: Klein routes on a class that receives its collaborators.

Handlers are thin: request id, CORS, body limit, auth, then the Gateway; one error mapper
turns exceptions into Cube's bodies. Every log line of a request carries its request id.
"""
from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import parse_qs

from klein import Klein
from twisted.internet import threads
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cubed.api.auth import Authenticator
from cubed.api.errors import error_body
from cubed.api.gateway import Gateway, RequestContext
from cubed.api.health import CachedProbe
from cubed.api.openapi import openapi_document, openapi_paths
from cubed.config import API_SCOPES, Settings
from cubed.errors import AuthError, ContinueWait, UserError
from cubed.query.request import CACHE_MODES
from cubed.hooks import HookError, Hooks, call_hook
from cubed.logs import RequestLogger
from cubed.metrics import Metrics

REQUEST_ID_MAX = 128
_REQUEST_ID = re.compile(r"^[A-Za-z0-9+/=._:\-]{1,%d}$" % REQUEST_ID_MAX)
_SURROGATE = re.compile("[\ud800-\udfff]")
CORS_METHODS = b"GET,HEAD,PUT,PATCH,POST,DELETE"
# Encoding a large answer takes milliseconds; beyond this many rows it goes to a thread.
THREADED_ENCODE_ROWS = 2000

Handler = Callable[[IRequest, RequestContext], Awaitable[Any]]


def _request_dict(request: IRequest) -> dict[str, Any]:
    """Return the request as hooks see it: url, method, headers (lower-case names)."""
    headers = {name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
               for name, values in request.requestHeaders.getAllRawHeaders()}
    return {"url": request.uri.decode("latin-1"), "method": request.method.decode("latin-1"), "headers": headers}


class RequestTooLarge(UserError):
    """The body exceeds CUBEJS_MAX_REQUEST_SIZE: 413."""

    status = 413


def encode_json(body: Any) -> bytes:
    """Return ``body`` as compact UTF-8 JSON; NaN and infinities become null and lone surrogates
    (sent as ``\\udXXX`` escapes, echoed back in a query or an error) are escaped, as in JavaScript."""
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_without_nan(body), ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # found by fuzzing: was a 500
        return _SURROGATE.sub(lambda match: "\\u%04x" % ord(match.group()), text).encode("utf-8")


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return value


def _row_count(body: Any) -> int:
    if isinstance(body, dict):
        data = body.get("data")
        if isinstance(data, list):
            return len(data)
        results = body.get("results")
        if isinstance(results, list):
            return sum(_row_count(r) for r in results)
    return 0


class CubedApi:
    """Cube's REST API routes for one server."""

    log = Logger(namespace="cubed.api")

    def __init__(self, settings: Settings, gateway: Gateway, authenticator: Authenticator,
                 readiness: CachedProbe, liveness: CachedProbe, reactor: Any, hooks: Hooks = Hooks(),
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.gateway = gateway
        self.auth = authenticator
        self.hooks = hooks
        self.metrics = metrics if metrics is not None else Metrics.disabled()
        self.default_scopes = settings.default_api_scopes
        self.readiness = readiness
        self.liveness = liveness
        self.reactor = reactor
        self.debug_enabled = settings.log_level in ("trace", "debug")
        self.app = Klein()
        base = settings.base_path.rstrip("/")
        routes: list[tuple[str, tuple[str, ...], Handler, str]] = [
            ("/v1/load", ("GET", "POST"), self._load, "data"),
            ("/v1/subscribe", ("GET", "POST"), self._load, "data"),
            ("/v1/sql", ("GET", "POST"), self._sql, "sql"),
            ("/v1/dry-run", ("GET", "POST"), self._dry_run, "data"),
            ("/v1/meta", ("GET",), self._meta, "meta"),
            ("/v1/run-scheduled-refresh", ("GET",), self._run_scheduled_refresh, "jobs"),
        ]
        self.known_paths = {b"/readyz", b"/livez"}
        for path, methods, handler, scope in routes:
            self.known_paths.add((base + path).encode())
            self.app.route(base + path, methods=list(methods), endpoint=f"{handler.__name__}{path}")(
                self._wrap(handler, scope, path))
        self.app.route("/readyz", methods=["GET"], endpoint="readyz")(self._probe(self.readiness))
        self.app.route("/livez", methods=["GET"], endpoint="livez")(self._probe(self.liveness))
        if self.metrics.enabled:
            # Prometheus metrics, off the base path; scrapes are not counted as API requests.
            self.known_paths.add(b"/metrics")
            self.app.route("/metrics", methods=["GET"], endpoint="metrics")(self._metrics)
        # The OpenAPI document: no token needed, built once.
        self.openapi = encode_json(openapi_document(settings))
        for number, path in enumerate(openapi_paths(settings)):
            self.known_paths.add(path.encode())
            self.app.route(path, methods=["GET"], endpoint=f"openapi{number}")(
                lambda request: self._respond(request, 200, self.openapi))
        if settings.dev_mode:
            # The Playground (dev mode only): its page at / and its own files under /playground/
            # (an unknown name there answers 404 JSON too).
            from cubed.playground import ASSETS_PATH, Playground

            playground = Playground(api_url=f"{base}/v1")
            self.known_paths.add(b"")  # "/" without its slash, as _unrouted compares
            self.app.route("/", methods=["GET"], endpoint="playground")(playground.index)
            self.app.route(f"{ASSETS_PATH}/<path:name>", methods=["GET"], endpoint="playground_asset")(
                playground.asset)
        self.app.route("/", branch=True, methods=["OPTIONS"], endpoint="preflight")(self._preflight)
        self.app.handle_errors(Exception)(self._unrouted)

    def resource(self) -> Any:
        """Return the twisted.web resource serving the API."""
        return self.app.resource()

    # -- plumbing ------------------------------------------------------------------------
    def _request_id(self, request: IRequest) -> str:
        raw = request.getHeader("x-request-id") or request.getHeader("traceparent")
        if raw is None:
            return f"{uuid.uuid4()}-span-1"
        value = raw.split(",")[0].strip()
        if not _REQUEST_ID.match(value):
            raise UserError(
                f"Request id must be at most {REQUEST_ID_MAX} characters from A-Z, a-z, 0-9, "
                "'+', '/', '=', '.', '_', ':' and '-'"
            )
        return value

    def _respond(self, request: IRequest, status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"access-control-allow-origin", b"*")
        return body

    async def _context(self, request: IRequest, request_id: str, log: RequestLogger, scope: str) -> RequestContext:
        """Return the request's context: authenticated (the check_auth hook or the JWT), extended
        (extend_context), and allowed the route's API scope (context_to_api_scopes)."""
        header = request.getHeader("x-cube-authorization") or request.getHeader("authorization")
        if self.hooks.check_auth is not None:
            security = await self._check_auth_hook(request, header)
        else:
            security = (await self.auth.authenticate(header, log)).payload
        hooks_context: dict[str, Any] = {"securityContext": security, "authInfo": security, "requestId": request_id}
        if self.hooks.extend_context is not None:
            extension = await call_hook("extend_context", self.hooks.extend_context, _request_dict(request))
            if extension is not None and not isinstance(extension, Mapping):
                raise HookError("extend_context hook must return a dict")
            hooks_context.update(extension or {})
        scopes: Any = self.default_scopes
        if self.hooks.context_to_api_scopes is not None:
            scopes = await call_hook("context_to_api_scopes", self.hooks.context_to_api_scopes, dict(hooks_context),
                                     list(self.default_scopes))
            unknown = [s for s in scopes or () if s not in API_SCOPES]
            if unknown:
                raise HookError(f"context_to_api_scopes returned unknown scopes: {', '.join(map(str, unknown))}")
        if scope not in (scopes or ()):
            raise AuthError(f"API scope is missing: {scope}")
        sent_id = request.getHeader("x-request-id") or request.getHeader("traceparent")
        return RequestContext(request_id=request_id, security_context=security, log=log, hooks_context=hooks_context,
                              interaction=None if sent_id else "")

    async def _check_auth_hook(self, request: IRequest, header: str | None) -> Mapping[str, Any]:
        assert self.hooks.check_auth is not None
        token = self.auth.token_from_header(header)
        answer = await call_hook("check_auth", self.hooks.check_auth, _request_dict(request), token)
        if answer is None:
            return {}
        if not isinstance(answer, Mapping):
            raise HookError("check_auth hook must return a dict (the security context) or None")
        context = answer.get("security_context", answer.get("securityContext", answer))
        if not isinstance(context, Mapping):
            raise HookError("check_auth hook returned a security context that is not a dict")
        return context

    def _wrap(self, handler: Handler, scope: str, path: str) -> Callable[[IRequest], Awaitable[bytes]]:
        """Return the Klein route of ``handler``: request id, auth and scope, the handler, the
        one error mapper, the request's log line and its metrics (labelled ``path``, the route
        template without the base path)."""
        metrics = self.metrics

        async def route(request: IRequest) -> bytes:
            started = time.monotonic()
            status = 500
            request_id = f"{uuid.uuid4()}-span-1"
            log = RequestLogger(self.log, request_id, self.debug_enabled)
            try:
                request_id = self._request_id(request)
                log = RequestLogger(self.log, request_id, self.debug_enabled)
                context = await self._context(request, request_id, log, scope)
                body = await handler(request, context)
                status = 200
                if _row_count(body) > THREADED_ENCODE_ROWS:
                    encoded = await threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), encode_json, body)
                else:
                    encoded = encode_json(body)
                return self._respond(request, status, encoded)
            except Exception as error:  # the one mapper: every failure answers in Cube's shape
                status, body, unexpected = error_body(error, request_id, self.settings.dev_mode)
                if isinstance(error, ContinueWait):
                    metrics.continue_wait(path)
                if unexpected or isinstance(error, HookError):
                    log.failure("unexpected error in {path}", path=request.path.decode("latin-1", "replace"))
                else:
                    log.info("{status}: {error}", status=status, error=body.get("error"))
                return self._respond(request, status, encode_json(body))
            finally:
                elapsed = time.monotonic() - started
                method = request.method.decode("latin-1")
                metrics.request(path, method, status, elapsed)
                log.info("{method} {path} {status} {duration:.1f}ms",
                         method=method, path=request.path.decode("latin-1", "replace"),
                         status=status, duration=elapsed * 1000)

        return route

    def _body(self, request: IRequest) -> Mapping[str, Any]:
        """Return the JSON body of a POST (empty when there is none)."""
        limit = self.settings.max_request_size
        length = request.getHeader("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise RequestTooLarge(f"request entity too large: more than {limit} bytes")
        raw = request.content.read(limit + 1) if request.content is not None else b""
        if len(raw) > limit:
            raise RequestTooLarge(f"request entity too large: more than {limit} bytes")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"Unable to decode request body as JSON, error: {error}") from None
        except RecursionError:  # nesting deeper than the interpreter's stack (found by fuzzing: was a 500)
            raise UserError("Unable to decode request body as JSON, error: too deeply nested") from None
        if not isinstance(body, dict):
            raise UserError("Request body must be a JSON object")
        return body

    def _args(self, request: IRequest) -> dict[str, str]:
        query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
        parsed = parse_qs(query.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    def _input(self, request: IRequest) -> tuple[Any, str | None, str | None]:
        """Return the raw ``query``, the ``queryType`` and the ``cache`` mode (validated) of a
        request, from the body or the URL."""
        if request.method == b"POST":
            body = self._body(request)
            query_type, cache = body.get("queryType"), body.get("cache")
            raw = body.get("query")
        else:
            args = self._args(request)
            raw, query_type, cache = args.get("query"), args.get("queryType"), args.get("cache")
        if cache is not None and cache not in CACHE_MODES:
            raise UserError(f'"cache" must be one of [{", ".join(CACHE_MODES)}]')
        return raw, str(query_type) if query_type is not None else None, cache

    # -- routes --------------------------------------------------------------------------
    async def _load(self, request: IRequest, context: RequestContext) -> Any:
        raw, query_type, cache = self._input(request)
        return await self.gateway.load(raw, query_type, context, cache)

    async def _sql(self, request: IRequest, context: RequestContext) -> Any:
        raw, _query_type, _cache = self._input(request)
        return await self.gateway.sql(raw, context)

    async def _dry_run(self, request: IRequest, context: RequestContext) -> Any:
        raw, _query_type, _cache = self._input(request)
        return await self.gateway.dry_run(raw, context)

    async def _meta(self, request: IRequest, context: RequestContext) -> Any:
        return await self.gateway.meta(context)

    async def _run_scheduled_refresh(self, request: IRequest, context: RequestContext) -> Any:
        return await self.gateway.run_scheduled_refresh(self._args(request).get("queryingOptions"), context)

    def _probe(self, probe: CachedProbe) -> Callable[[IRequest], Awaitable[bytes]]:
        async def route(request: IRequest) -> bytes:
            healthy = await probe.healthy()
            body = {"health": "HEALTH" if healthy else "DOWN"}
            return self._respond(request, 200 if healthy else 500, encode_json(body))

        return route

    async def _metrics(self, request: IRequest) -> bytes:
        """Answer a Prometheus scrape: the metrics, or 401/403 when CUBED_METRICS_TOKEN is set
        and the request does not carry ``Authorization: Bearer <token>``."""
        refused = self.metrics.authorized(request.getHeader("authorization"))
        if refused is not None:
            if refused == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="metrics"')
            message = "Authorization header isn't set" if refused == 401 else "Invalid token"
            return self._respond(request, refused, encode_json({"error": message}))
        body, content_type = await self.metrics.exposition(request.getHeader("accept"))
        request.setResponseCode(200)
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        return body

    def _preflight(self, request: IRequest) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"access-control-allow-methods", CORS_METHODS)
        asked = request.getHeader(b"access-control-request-headers")
        if asked:
            request.setHeader(b"access-control-allow-headers", asked)
            request.setHeader(b"vary", b"Access-Control-Request-Headers")
        request.setHeader(b"access-control-max-age", b"86400")
        request.setHeader(b"content-length", b"0")
        return b""

    def _unrouted(self, request: IRequest, failure: Any) -> bytes:
        from werkzeug.exceptions import HTTPException

        error = failure.value
        if isinstance(error, HTTPException):
            status = error.code or 500
            if status == 405 and request.path.rstrip(b"/") not in self.known_paths:
                # The OPTIONS route matches every path, so werkzeug reports a wrong method
                # where there is no route at all.
                status = 404
            message = "Not Found" if status == 404 else (error.name or "Error")
            return self._respond(request, status, encode_json({"error": message}))
        self.log.failure("unhandled error", failure=failure)
        return self._respond(request, 500, encode_json({"error": "Error: Internal Server Error"}))
