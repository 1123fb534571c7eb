"""The OpenAPI 3 document of cubed's HTTP API, served at ``<base path>/v1/openapi.json``.

It describes what cubed serves: ``load`` and ``subscribe`` (GET with the query as URL-encoded
JSON in ``query``, POST with a JSON body), ``sql`` and ``dry-run`` (the same inputs), ``meta``,
and the ``readyz``/``livez`` probes, with the query schema cubed validates (measures,
dimensions, segments, time dimensions, filters, order, limit, offset, timezone, total,
ungrouped, responseFormat, renewQuery, cache) and Cube's error bodies. Security: the JWT in the
``Authorization`` header (an ``apiKey`` scheme; ``Bearer <jwt>`` and a bare ``<jwt>`` are both
accepted, ``x-cube-authorization`` wins when sent). The probes and the document itself need no
token. The document is built once per server from its settings (the base path).
"""
from __future__ import annotations

from typing import Any

from cubed.config import Settings
from cubed.query.request import CACHE_MODES, OPERATORS, RESPONSE_FORMATS
from cubed.query.types import GRANULARITIES

OPENAPI_VERSION = "3.0.3"
MEMBER_PATTERN = r"^[a-zA-Z0-9_]+\.[a-zA-Z0-9_]+$"
DIMENSION_PATTERN = r"^[a-zA-Z0-9_]+\.[a-zA-Z0-9_]+(\.(second|minute|hour|day|week|month|year))?$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _schemas() -> dict[str, Any]:
    member = {"type": "string", "pattern": MEMBER_PATTERN, "example": "Orders.count"}
    date_range = {
        "oneOf": [
            {"type": "string", "minLength": 1, "description": "A relative range (`last 7 days`, `this month`) "
                                                             "or one date"},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 2},
        ],
        "example": ["2024-01-01", "2024-01-31"],
    }
    return {
        "Query": {
            "type": "object",
            "description": "A Cube query. At least one measure, dimension, or time dimension with a "
                           "granularity is needed.",
            "additionalProperties": False,
            "properties": {
                "measures": {"type": "array", "items": member},
                "dimensions": {"type": "array",
                               "items": {"type": "string", "pattern": DIMENSION_PATTERN, "example": "Orders.status"}},
                "segments": {"type": "array", "items": member},
                "timeDimensions": {"type": "array", "items": _ref("TimeDimension")},
                "filters": {"type": "array", "items": _ref("Filter")},
                "order": {
                    "oneOf": [
                        {"type": "object", "additionalProperties": _ref("OrderDirection"),
                         "description": "Member name -> direction, in priority order",
                         "example": {"Orders.count": "desc"}},
                        {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2,
                                                    "items": {"type": "string"}},
                         "description": "[member, direction] pairs", "example": [["Orders.count", "desc"]]},
                    ],
                },
                "limit": {"type": "integer", "minimum": 1, "description": "Row limit (default "
                                                                          "CUBEJS_DB_QUERY_DEFAULT_LIMIT, at most "
                                                                          "CUBEJS_DB_QUERY_LIMIT)"},
                "offset": {"type": "integer", "minimum": 0},
                "timezone": {"type": "string", "minLength": 1, "description": "An IANA time zone",
                             "example": "America/Los_Angeles"},
                "total": {"type": "boolean", "description": "Also count the rows without limit and offset"},
                "ungrouped": {"type": "boolean"},
                "responseFormat": {"type": "string", "enum": list(RESPONSE_FORMATS)},
                "renewQuery": {"type": "boolean"},
                "cache": {"type": "string", "enum": list(CACHE_MODES)},
                "cacheMode": {"type": "string", "enum": list(CACHE_MODES), "deprecated": True},
            },
            "example": {"measures": ["Orders.count"], "dimensions": ["Orders.status"]},
        },
        "OrderDirection": {"type": "string", "enum": ["asc", "desc"]},
        "TimeDimension": {
            "type": "object",
            "additionalProperties": False,
            "required": ["dimension"],
            "properties": {
                "dimension": member,
                "granularity": {"type": "string", "enum": list(GRANULARITIES), "nullable": True},
                "dateRange": date_range,
                "compareDateRange": {"type": "array", "minItems": 1, "items": date_range},
            },
        },
        "Filter": {
            "oneOf": [_ref("MemberFilter"), _ref("OrFilter"), _ref("AndFilter")],
        },
        "MemberFilter": {
            "type": "object",
            "additionalProperties": False,
            "required": ["member", "operator"],
            "properties": {
                "member": member,
                "operator": {"type": "string", "enum": list(OPERATORS)},
                "values": {"type": "array", "items": {"type": "string", "nullable": True}},
            },
            "description": "`dimension` is accepted in place of `member` (older clients).",
        },
        "OrFilter": {
            "type": "object", "additionalProperties": False, "required": ["or"],
            "properties": {"or": {"type": "array", "items": _ref("Filter")}},
        },
        "AndFilter": {
            "type": "object", "additionalProperties": False, "required": ["and"],
            "properties": {"and": {"type": "array", "items": _ref("Filter")}},
        },
        "QueryOrQueries": {
            "oneOf": [_ref("Query"), {"type": "array", "items": _ref("Query"), "minItems": 1,
                                      "description": "A blending query"}],
        },
        "QueryBody": {
            "type": "object",
            "required": ["query"],
            "properties": {
                "query": _ref("QueryOrQueries"),
                "queryType": {"type": "string", "enum": ["multi"]},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "type": {"type": "string", "description": "`UserError` for errors found against the model"},
                "stage": {"type": "object", "nullable": True, "description": "Queue stage of a Continue wait"},
                "requestId": {"type": "string", "description": "Dev mode only"},
                "stack": {"type": "string", "description": "Dev mode only"},
            },
        },
        "LoadResponse": {
            "type": "object",
            "description": "The query's data, or `{\"error\": \"Continue wait\"}` (retry the same request), or "
                           "with `queryType=multi` `{queryType, results, pivotQuery}`.",
            "properties": {
                "query": {"type": "object"},
                "data": {"type": "array", "items": {"type": "object"}},
                "annotation": {"type": "object"},
                "lastRefreshTime": {"type": "string"},
                "total": {"type": "integer", "nullable": True},
                "dataSource": {"type": "string"},
                "dbType": {"type": "string"},
                "slowQuery": {"type": "boolean"},
                "queryType": {"type": "string"},
                "results": {"type": "array", "items": {"type": "object"}},
                "pivotQuery": {"type": "object"},
                "error": {"type": "string"},
            },
        },
        "SqlResponse": {
            "description": "An object `{sql: {...}}` for one query, an array of them for a blending query.",
            "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}],
        },
        "DryRunResponse": {
            "type": "object",
            "properties": {
                "queryType": {"type": "string"},
                "normalizedQueries": {"type": "array", "items": {"type": "object"}},
                "queryOrder": {"type": "array", "items": {"type": "object"}},
                "pivotQuery": {"type": "object"},
                "transformedQueries": {"type": "array", "items": {}},
            },
        },
        "MetaResponse": {
            "type": "object",
            "properties": {"cubes": {"type": "array", "items": {"type": "object"}}},
        },
        "Health": {
            "type": "object",
            "required": ["health"],
            "properties": {"health": {"type": "string", "enum": ["HEALTH", "DOWN"]}},
        },
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "A bad query (Cube's message), or a database error"),
    "403": _json(_ref("Error"), "`Authorization header isn't set`, `Invalid token`, a JWK error, or "
                                "`API scope is missing: <scope>`"),
    "413": _json(_ref("Error"), "The body is larger than CUBEJS_MAX_REQUEST_SIZE"),
    "500": _json(_ref("Error"), "An internal error (details in the server log)"),
}

_QUERY_PARAMETER = {
    "name": "query", "in": "query", "required": True,
    "description": "The query as JSON (URL-encoded)",
    "content": {"application/json": {"schema": _ref("QueryOrQueries")}},
}
_QUERY_TYPE_PARAMETER = {
    "name": "queryType", "in": "query", "required": False,
    "description": "`multi` answers every query form (compare date range, blending) as a list of results",
    "schema": {"type": "string", "enum": ["multi"]},
}
_REQUEST_ID_PARAMETER = {
    "name": "x-request-id", "in": "header", "required": False,
    "description": "Request id (`<span id>-span-<n>`): at most 128 characters from A-Z a-z 0-9 + / = . _ : -",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9+/=._:\-]{1,128}$"},
}


def _query_route(name: str, summary: str, response: dict[str, Any], with_query_type: bool) -> dict[str, Any]:
    get_parameters = [_QUERY_PARAMETER, _REQUEST_ID_PARAMETER]
    if with_query_type:
        get_parameters.insert(1, _QUERY_TYPE_PARAMETER)
    body_schema = _ref("QueryBody")
    responses = {"200": response, **_ERRORS}
    return {
        "get": {"operationId": f"{name}Get", "summary": summary, "tags": ["data"], "parameters": get_parameters,
                "responses": responses},
        "post": {"operationId": f"{name}Post", "summary": summary, "tags": ["data"],
                 "parameters": [_REQUEST_ID_PARAMETER],
                 "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
                 "responses": responses},
    }


def openapi_paths(settings: Settings) -> tuple[str, ...]:
    """Return the paths the document is served at (the configured base path, and the default)."""
    base = settings.base_path.rstrip("/")
    paths = [f"{base}/v1/openapi.json"]
    if "/cubejs-api/v1/openapi.json" not in paths:
        paths.append("/cubejs-api/v1/openapi.json")
    return tuple(paths)


def openapi_document(settings: Settings) -> dict[str, Any]:
    """Return the OpenAPI 3 document of a server with ``settings``."""
    base = settings.base_path.rstrip("/")
    probe = {"200": _json(_ref("Health"), "Healthy"), "500": _json(_ref("Health"), "Down")}
    paths: dict[str, Any] = {
        f"{base}/v1/load": _query_route("load", "Run a query and return its data",
                                        _json(_ref("LoadResponse"), "The data, or Continue wait"), True),
        f"{base}/v1/subscribe": _query_route("subscribe", "As load (real-time subscriptions are WebSocket only)",
                                             _json(_ref("LoadResponse"), "The data, or Continue wait"), True),
        f"{base}/v1/sql": _query_route("sql", "The SQL a query runs, without running it",
                                       _json(_ref("SqlResponse"), "The SQL and its parameters"), False),
        f"{base}/v1/dry-run": _query_route("dryRun", "Validate and normalize a query without running it",
                                           _json(_ref("DryRunResponse"), "The normalized queries"), False),
        f"{base}/v1/meta": {"get": {"operationId": "meta", "summary": "The data model's cubes, views and members",
                                    "tags": ["meta"], "parameters": [_REQUEST_ID_PARAMETER],
                                    "responses": {"200": _json(_ref("MetaResponse"), "The model"),
                                                  "403": _ERRORS["403"], "500": _ERRORS["500"]}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Readiness: the default data source and the "
                                                                "cache/queue answer", "tags": ["health"],
                            "security": [], "responses": probe}},
        "/livez": {"get": {"operationId": "livez", "summary": "Liveness: the opened data sources and the "
                                                              "cache/queue answer", "tags": ["health"],
                           "security": [], "responses": probe}},
    }
    paths[f"{base}/v1/openapi.json"] = {
        "get": {"operationId": "openapi", "summary": "This document", "tags": ["meta"], "security": [],
                "responses": {"200": {"description": "The OpenAPI document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}},
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "cubed REST API",
            "version": "1",
            "description": "Cube's REST API as cubed serves it. Send the JWT in the Authorization header "
                           "(`Bearer <jwt>` or the bare token). A query that takes longer than the continue-wait "
                           "timeout answers 200 `{\"error\": \"Continue wait\"}`: send the same request again.",
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "Authorization",
                           "description": "A JWT signed with CUBEJS_API_SECRET (or a key of CUBEJS_JWT_KEY / "
                                          "CUBEJS_JWK_URL), optionally prefixed with `Bearer `"},
            },
            "schemas": _schemas(),
        },
        "paths": paths,
        "tags": [{"name": "data"}, {"name": "meta"}, {"name": "health"}],
    }
