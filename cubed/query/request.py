"""From the HTTP ``query`` value to normalized queries, with Cube 0.32.7's checks and texts.

The stages are Cube's: ``parse_query_param`` (JSON text -> value), ``expand_query`` (an array
is a blending query; one time dimension with ``compareDateRange`` becomes one query per range),
then per query the Joi schema of Cube's ``query.js``, Cube's own checks, and normalizeQuery +
processQueryLimit. Validation visits keys as Joi does: the schema's keys in schema order, then
keys the schema does not know in the order they were sent, stopping at the first error; every
message is Joi's, prefixed ``Invalid query format: ``. ``Query.echo`` is the normalized query
exactly as Cube 0.32.7 echoes it (the keys sent, in the order sent, then ``rowLimit``,
``timezone``, ``order``, ``filters``, ``dimensions``, ``timeDimensions`` and ``limit`` where
they were not sent).

Accepted beyond Cube 0.32.7's schema (newer Cube clients send them): ``cache`` and
``cacheMode`` (``stale-if-slow``, ``stale-while-revalidate``, ``must-revalidate``,
``no-cache``) and the operators ``beforeOrOnDate`` / ``afterOrOnDate``.

Deliberate differences from Cube 0.32.7:

- Malformed JSON answers 400 ``Unable to decode query param as JSON, error: ...`` (Cube: 500).
- ``timezone`` must name an IANA zone (any letter case):
  ``"timezone" must be a valid IANA time zone, got "<tz>"``, newer Cube's text (Cube 0.32.7
  leaves it to the database).
- A number sent as a string (``"limit": "10"``) is used as that number; Cube's Joi accepts it
  but Cube then ignores it (no LIMIT at all). Likewise ``"true"``/``"false"`` for the boolean
  flags are real booleans (Cube would treat ``"false"`` as true). The echo shows the numbers
  and booleans used.
- Filter ``values`` may hold only strings and nulls: Joi's ``link('...')`` in Cube's schema
  also lets whole filter objects through, which Cube cannot use.
- A filter with an empty ``values`` list (where values are needed) answers ``Values required
  for filter`` as newer Cube does (Cube 0.32.7 fails later with a 500).
- A relative date in a date filter is resolved as newer Cube does: one string for
  inDateRange/notInDateRange/onTheDate becomes its range, one relative string for
  beforeDate/afterOrOnDate its start and for beforeOrOnDate/afterDate its end; a relative
  string among several range values is refused with newer Cube's text. The echo keeps the
  values as sent, as 0.32.7 does.
- Shapes that crash Cube with a TypeError (500) answer a 400 in Joi's words instead:
  ``timeDimensions`` that is not an array, a null time dimension, a ``compareDateRange`` that
  is not a non-empty array, ``null`` as the whole query.
- The blending pivot query skips queries without ``measures`` instead of listing ``null``.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any, NoReturn

from cubed.config import Settings
from cubed.errors import UserError
from cubed.query import dates
from cubed.query.types import (
    GRANULARITIES, NO_VALUES_OPERATORS, Filter, FilterCondition, FilterGroup, OrderItem, Query, TimeDimension,
)

REGULAR_QUERY = "regularQuery"
COMPARE_DATE_RANGE_QUERY = "compareDateRangeQuery"
BLENDING_QUERY = "blendingQuery"

OPERATORS: tuple[str, ...] = (
    "equals", "notEquals", "contains", "notContains", "startsWith", "notStartsWith", "endsWith",
    "notEndsWith", "in", "notIn", "gt", "gte", "lt", "lte", "set", "notSet", "inDateRange",
    "notInDateRange", "onTheDate", "beforeDate", "afterDate", "beforeOrOnDate", "afterOrOnDate",
    "measureFilter",
)
DATE_OPERATORS = frozenset({"inDateRange", "notInDateRange", "onTheDate", "beforeDate", "afterDate",
                            "beforeOrOnDate", "afterOrOnDate"})
MAX_COMPARE_DATE_RANGES = 100
CACHE_MODES: tuple[str, ...] = ("stale-if-slow", "stale-while-revalidate", "must-revalidate", "no-cache")
RESPONSE_FORMATS: tuple[str, ...] = ("default", "compact")

_OPERATOR_SET = frozenset(OPERATORS)
_GRANULARITY_CHOICES = frozenset(GRANULARITIES)
_ID = re.compile(r"[a-zA-Z0-9_]+\.[a-zA-Z0-9_]+")
_ID_TEXT = r"/^[a-zA-Z0-9_]+\.[a-zA-Z0-9_]+$/"
_DIMENSION = re.compile(r"[a-zA-Z0-9_]+\.[a-zA-Z0-9_]+(\.(second|minute|hour|day|week|month|year))?")
_DIMENSION_TEXT = r"/^[a-zA-Z0-9_]+\.[a-zA-Z0-9_]+(\.(second|minute|hour|day|week|month|year))?$/"
_JOI_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*")
_MAX_SAFE_INTEGER = 2 ** 53 - 1
_GRANULARITY_VALID_TEXT = "[quarter, day, month, year, week, hour, minute, second, null]"
_TIME_DIMENSION_KEYS = frozenset({"dimension", "granularity", "dateRange", "compareDateRange"})
_ROOT_KEYS = frozenset({"measures", "dimensions", "filters", "timeDimensions", "order", "segments", "timezone",
                        "limit", "offset", "total", "renewQuery", "cacheMode", "cache", "ungrouped",
                        "responseFormat"})
_MAX_FILTER_DEPTH = 64
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _fail(message: str) -> NoReturn:
    raise UserError(f"Invalid query format: {message}")


# ---------------------------------------------------------------------------------------------
# The query parameter


def parse_query_param(value: Any) -> Any:
    """Return the query object (or array) from the raw ``query`` parameter: JSON text is
    decoded, an object or array is returned as is. UserError ``query param is required`` for a
    missing (or JavaScript-falsy, or ``"undefined"``) value, ``Unable to decode query param as
    JSON, error: <reason>`` for bad JSON."""
    if value is None or value is False or value == "" or value == "undefined" or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and (value == 0 or value != value)):
        raise UserError("query param is required")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"Unable to decode query param as JSON, error: {error.reason}") from None
    if isinstance(value, str):
        try:
            return json.loads(value, parse_constant=_reject_constant)
        except json.JSONDecodeError as error:
            raise UserError(f"Unable to decode query param as JSON, error: {error.msg} in JSON at position "
                            f"{error.pos}") from None
        except ValueError as error:
            raise UserError(f"Unable to decode query param as JSON, error: {error}") from None
        except RecursionError:
            raise UserError("Unable to decode query param as JSON, error: too deeply nested") from None
    return value


def _reject_constant(name: str) -> Any:
    # JSON has no NaN or Infinity (Python's decoder would accept them).
    raise ValueError(f"Unexpected token '{name[0]}', \"{name}\" is not valid JSON")


# ---------------------------------------------------------------------------------------------
# Joi's schema, key by key


def _check_string(value: Any, label: str, pattern: re.Pattern[str], pattern_text: str) -> None:
    if not isinstance(value, str):
        _fail(f'"{label}" must be a string')
    if not value:
        _fail(f'"{label}" is not allowed to be empty')
    if pattern.fullmatch(value) is None:
        _fail(f'"{label}" with value "{value}" fails to match the required pattern: {pattern_text}')


def _check_members(value: Any, label: str, pattern: re.Pattern[str], pattern_text: str) -> None:
    if not isinstance(value, list):
        _fail(f'"{label}" must be an array')
    for index, item in enumerate(value):
        if not isinstance(item, str) or pattern.fullmatch(item) is None:
            _check_string(item, f"{label}[{index}]", pattern, pattern_text)


def _is_leaf_filter(item: dict[str, Any]) -> bool:
    for key, value in item.items():
        if key == "member" or key == "dimension":
            if not isinstance(value, str) or _ID.fullmatch(value) is None:
                return False
        elif key == "operator":
            if not isinstance(value, str) or value not in _OPERATOR_SET:
                return False
        elif key == "values":
            if not isinstance(value, list):
                return False
            for element in value:
                if element is not None and not isinstance(element, str):
                    return False
        else:
            return False
    return "operator" in item and (("member" in item) != ("dimension" in item))


def _is_filter(item: Any, depth: int) -> bool:
    # Joi's oneFilter or oneCondition; Cube reports any mismatch inside as the top-level item's.
    if not isinstance(item, dict) or depth > _MAX_FILTER_DEPTH:
        return False
    if "or" in item or "and" in item:
        if len(item) != 1:
            return False
        children = item.get("or", item.get("and"))
        return isinstance(children, list) and all(_is_filter(child, depth + 1) for child in children)
    return _is_leaf_filter(item)


def _check_filters(value: Any) -> None:
    if not isinstance(value, list):
        _fail('"filters" must be an array')
    for index, item in enumerate(value):
        if not _is_filter(item, 0):
            _fail(f'"filters[{index}]" does not match any of the allowed types')


def _check_date_range(value: Any, label: str) -> None:
    # Joi alternatives [array of 1-2 strings, string]: a value of either type gets that type's
    # own error; anything else gets the list of types.
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                _fail(f'"{label}[{index}]" must be a string')
            if not item:
                _fail(f'"{label}[{index}]" is not allowed to be empty')
        if not value:
            _fail(f'"{label}" must contain at least 1 items')
        if len(value) > 2:
            _fail(f'"{label}" must contain less than or equal to 2 items')
    elif isinstance(value, str):
        if not value:
            _fail(f'"{label}" is not allowed to be empty')
    else:
        _fail(f'"{label}" must be one of [array, string]')


def _check_time_dimension(value: Any, label: str) -> None:
    if not isinstance(value, dict):
        _fail(f'"{label}" must be of type object')
    if "dimension" not in value:
        _fail(f'"{label}.dimension" is required')
    dimension = value["dimension"]
    if not isinstance(dimension, str) or _ID.fullmatch(dimension) is None:
        _check_string(dimension, f"{label}.dimension", _ID, _ID_TEXT)
    if "granularity" in value:
        granularity = value["granularity"]
        if granularity is not None and (not isinstance(granularity, str) or granularity not in _GRANULARITY_CHOICES):
            _fail(f'"{label}.granularity" must be one of {_GRANULARITY_VALID_TEXT}')
    if "dateRange" in value:
        _check_date_range(value["dateRange"], f"{label}.dateRange")
    if "compareDateRange" in value and not isinstance(value["compareDateRange"], list):
        _fail(f'"{label}.compareDateRange" must be an array')
    for key in value:
        if key not in _TIME_DIMENSION_KEYS:
            _fail(f'"{label}.{key}" is not allowed')
    if "dateRange" in value and "compareDateRange" in value:
        _fail(f'"{label}" contains a conflict between optional exclusive peers [dateRange, compareDateRange]')


def _check_time_dimensions(value: Any) -> None:
    if not isinstance(value, list):
        _fail('"timeDimensions" must be an array')
    for index, item in enumerate(value):
        _check_time_dimension(item, f"timeDimensions[{index}]")


def _check_order(value: Any) -> None:
    if isinstance(value, dict):
        unknown: str | None = None
        for key, direction in value.items():
            if isinstance(key, str) and key and _ID.fullmatch(key):
                if direction != "asc" and direction != "desc":
                    _fail(f'"order.{key}" must be one of [asc, desc]')
            elif unknown is None:
                unknown = key
        if unknown is not None:
            _fail(f'"order.{unknown}" is not allowed')
    elif isinstance(value, list):
        for index, item in enumerate(value):
            label = f"order[{index}]"
            if not isinstance(item, list):
                _fail(f'"{label}" must be an array')
            for position, element in enumerate(item):
                if position == 0:
                    if not isinstance(element, str) or _ID.fullmatch(element) is None:
                        _check_string(element, f"{label}[0]", _ID, _ID_TEXT)
                elif position == 1:
                    if element != "asc" and element != "desc":
                        _fail(f'"{label}[1]" must be one of [asc, desc]')
                else:
                    _fail(f'"{label}" must contain at most 2 items')
            if len(item) < 2:
                _fail(f'"{label}" must contain at least 2 items')
    else:
        _fail('"order" must be one of [object, array]')


def _js_number_text(number: float) -> str:
    if number == int(number) and abs(number) < 1e21:
        return str(int(number))
    return repr(number)


def _normalize_decimal(text: str) -> str:
    # Joi's normalizeDecimal: the canonical spelling a safe decimal string must match.
    text = re.sub(r"^\+", "", text)
    text = re.sub(r"\.0*$", "", text)
    text = re.sub(r"^(-?)\.([^.]*)$", r"\g<1>0.\2", text)
    text = re.sub(r"^(-?)0+([0-9])", r"\1\2", text)
    if "." in text and text.endswith("0"):
        text = text.rstrip("0")
    return "0" if text == "-0" else text


def _significant_digits(text: str) -> str:
    text = re.sub(r"[eE][+-]?[0-9]+$", "", text)
    text = text.replace(".", "", 1).rstrip("0")
    return re.sub(r"^[+-]?0*", "", text)


def _integer(value: Any, label: str, minimum: int) -> int:
    """Joi's number().integer().min(minimum), with its string conversion."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        _fail(f'"{label}" must be a number')
    number: float | int
    if isinstance(value, str):
        match = _JOI_NUMBER.fullmatch(value)
        if match is None:
            _fail(f'"{label}" must be a number')
        text = value.strip()
        number = float(text)
        if match.group(1) is not None:
            if math.isinf(number) or _significant_digits(text) != _significant_digits(_js_number_text(number)):
                _fail(f'"{label}" must be a safe number')
        elif "e" not in (shown := _js_number_text(number)) and shown != _normalize_decimal(text):
            _fail(f'"{label}" must be a safe number')
    else:
        number = value
    if isinstance(number, float):
        if math.isnan(number):
            _fail(f'"{label}" must be a number')
        if math.isinf(number):
            _fail(f'"{label}" cannot be infinity')
    if number > _MAX_SAFE_INTEGER or number < -_MAX_SAFE_INTEGER:
        _fail(f'"{label}" must be a safe number')
    if number != int(number):
        _fail(f'"{label}" must be an integer')
    if number < minimum:
        _fail(f'"{label}" must be greater than or equal to {minimum}')
    return int(number)


def _boolean(value: Any, label: str) -> bool:
    if value is True or value is False:
        return value
    if isinstance(value, str):
        lowered = value.lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    _fail(f'"{label}" must be a boolean')


def _check_timezone(value: Any) -> str:
    if not isinstance(value, str):
        _fail('"timezone" must be a string')
    if not value:
        _fail('"timezone" is not allowed to be empty')
    canonical = dates.canonical_timezone(value)
    if canonical is None:
        _fail(f'"timezone" must be a valid IANA time zone, got "{value}"')
    return canonical


def _check_choice(value: Any, label: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        _fail(f'"{label}" must be one of [{", ".join(choices)}]')
    return value


def _validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Check ``raw`` against Cube's query schema in Joi's order; return the converted scalar
    fields (limit, offset, flags, timezone) that are present."""
    converted: dict[str, Any] = {}
    if "measures" in raw:
        _check_members(raw["measures"], "measures", _ID, _ID_TEXT)
    if "dimensions" in raw:
        _check_members(raw["dimensions"], "dimensions", _DIMENSION, _DIMENSION_TEXT)
    if "filters" in raw:
        _check_filters(raw["filters"])
    if "timeDimensions" in raw:
        _check_time_dimensions(raw["timeDimensions"])
    if "order" in raw:
        _check_order(raw["order"])
    if "segments" in raw:
        _check_members(raw["segments"], "segments", _ID, _ID_TEXT)
    if "timezone" in raw:
        converted["timezone"] = _check_timezone(raw["timezone"])
    if "limit" in raw:
        converted["limit"] = _integer(raw["limit"], "limit", 1)
    if "offset" in raw:
        converted["offset"] = _integer(raw["offset"], "offset", 0)
    for flag in ("total", "renewQuery"):
        if flag in raw:
            converted[flag] = _boolean(raw[flag], flag)
    for key in ("cacheMode", "cache"):
        if key in raw:
            converted[key] = _check_choice(raw[key], key, CACHE_MODES)
    if "ungrouped" in raw:
        converted["ungrouped"] = _boolean(raw["ungrouped"], "ungrouped")
    if "responseFormat" in raw:
        converted["responseFormat"] = _check_choice(raw["responseFormat"], "responseFormat", RESPONSE_FORMATS)
    for key in raw:
        if key not in _ROOT_KEYS:
            _fail(f'"{key or "value"}" is not allowed')
    return converted


# ---------------------------------------------------------------------------------------------
# Cube's checks after the schema


def _has_members(measures: Any, dimensions: Any, time_dimensions: Any) -> bool:
    return bool(measures) or bool(dimensions) or any(
        isinstance(td, dict) and td.get("granularity") for td in time_dimensions or ())


def _js_json(value: Any) -> str:
    """Return ``JSON.stringify(value)``: no spaces, non-ASCII as is, lone surrogates escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _SURROGATE.sub(lambda match: "\\u%04x" % ord(match.group()), text)


def _check_filter_values(filters: list[Any]) -> None:
    for item in filters:
        if "or" in item or "and" in item:
            _check_filter_values(item.get("or", item.get("and")))
        elif item.get("values") is None and item["operator"] not in NO_VALUES_OPERATORS:
            # An empty list is refused by the planner, after the members are resolved (an
            # unknown member is reported first, as by Cube).
            raise UserError(f"Values required for filter: {_js_json(item)}")


def validate_post_rewrite(query: Query) -> Query:
    """Return ``query`` after Cube's check that a (rewritten) query still selects something:
    UserError when it has no measures, no dimensions and no time dimension with a granularity."""
    if not (query.measures or query.dimensions or any(td.granularity for td in query.time_dimensions)):
        raise UserError("Query should contain either measures, dimensions or timeDimensions with "
                        "granularities in order to be valid")
    return query


# ---------------------------------------------------------------------------------------------
# Normalization


def _filter(item: dict[str, Any], timezone: str, now: datetime) -> Filter:
    for kind in ("or", "and"):
        if kind in item:
            return FilterGroup(kind, tuple(_filter(child, timezone, now) for child in item[kind]))
    operator = item["operator"]
    values = item.get("values")
    if values is not None and operator in DATE_OPERATORS:
        values = dates.resolve_date_filter_values(operator, values, timezone, now) or values
    return FilterCondition(
        member=item.get("member") or item["dimension"],
        operator=operator,
        values=tuple(values) if values is not None else None,
    )


def _echo_filter(item: dict[str, Any]) -> dict[str, Any]:
    if "member" not in item and "dimension" not in item:
        return dict(item)
    echoed = {key: value for key, value in item.items() if key != "member" and key != "dimension"}
    echoed["member"] = item.get("member") or item.get("dimension")
    return echoed


def _time_dimension(item: dict[str, Any], label: str, timezone: str,
                    now: datetime) -> tuple[TimeDimension, dict[str, Any]]:
    echoed = dict(item)
    date_range: tuple[str, str] | None = None
    if "dateRange" in item:
        date_range = dates.normalize_date_range(item["dateRange"], timezone, now)
        echoed["dateRange"] = list(date_range)
    compare: tuple[tuple[str, str], ...] | None = None
    if "compareDateRange" in item:
        # Only a blending query keeps compareDateRange here (a single query was expanded).
        echoed_ranges: list[Any] = []
        normalized: list[tuple[str, str]] = []
        for index, entry in enumerate(item["compareDateRange"]):
            if isinstance(entry, str):
                pair = dates.parse_relative_date_range(entry, timezone, now)
                echoed_ranges.append(list(pair))
            else:
                _check_date_range(entry, f"{label}.compareDateRange[{index}]")
                pair = dates.normalize_date_range(entry, timezone, now)
                echoed_ranges.append(entry)
            normalized.append(pair)
        echoed["compareDateRange"] = echoed_ranges
        compare = tuple(normalized)
    time_dimension = TimeDimension(
        dimension=item["dimension"],
        granularity=item.get("granularity"),
        date_range=date_range,
        compare_date_range=compare,
    )
    return time_dimension, echoed


def normalize_query(raw: Any, settings: Settings, now: datetime | None = None,
                    cache_mode: str | None = None) -> tuple[Query, int | None]:
    """Return one query validated and normalized as Cube's normalizeQuery does, with the
    explicit ``limit`` it asked for (None when it asked for none; the caller checks it against
    the query limit, as processQueryLimit does after every query is normalized)."""
    if not isinstance(raw, dict):
        _fail('"value" must be of type object')
    converted = _validate(raw)
    measures = raw.get("measures") or []
    dimensions = raw.get("dimensions") or []
    time_dimensions = raw.get("timeDimensions") or []
    if not _has_members(measures, dimensions, time_dimensions):
        raise UserError("Query should contain either measures, dimensions or timeDimensions with "
                        "granularities in order to be valid")
    filters = raw.get("filters") or []
    if filters:
        _check_filter_values(filters)
    now_utc = dates.utc_now(now)
    timezone = converted.get("timezone") or dates.canonical_timezone(settings.default_timezone) or "UTC"

    plain_dimensions: list[str] = []
    moved: list[TimeDimension] = []
    moved_echo: list[dict[str, Any]] = []
    for dimension in dimensions:
        if dimension.count(".") == 2:
            member, _, granularity = dimension.rpartition(".")
            moved.append(TimeDimension(dimension=member, granularity=granularity))
            moved_echo.append({"dimension": member, "granularity": granularity})
        else:
            plain_dimensions.append(dimension)

    order_raw = raw.get("order")
    if isinstance(order_raw, dict):
        order = tuple(OrderItem(key, direction == "desc") for key, direction in order_raw.items())
    elif order_raw:
        order = tuple(OrderItem(pair[0], pair[1] == "desc") for pair in order_raw)
    else:
        order = ()

    query_filters = tuple(_filter(item, timezone, now_utc) for item in filters)
    normalized_tds: list[TimeDimension] = []
    echo_tds: list[dict[str, Any]] = []
    for index, item in enumerate(time_dimensions):
        time_dimension, echoed = _time_dimension(item, f"timeDimensions[{index}]", timezone, now_utc)
        normalized_tds.append(time_dimension)
        echo_tds.append(echoed)

    explicit_limit = converted.get("limit")
    default_limit = min(settings.db_query_default_limit, settings.db_query_limit)
    limit = explicit_limit if explicit_limit is not None else default_limit

    echo = dict(raw)
    for key in ("limit", "offset", "total", "renewQuery", "ungrouped"):
        if key in converted:
            echo[key] = converted[key]
    if explicit_limit is not None:
        echo["rowLimit"] = explicit_limit
    echo["timezone"] = raw.get("timezone") or timezone
    echo["order"] = [{"id": item.id, "desc": item.desc} for item in order]
    echo["filters"] = [_echo_filter(item) for item in filters]
    echo["dimensions"] = plain_dimensions if moved else (dimensions if "dimensions" in raw else [])
    echo["timeDimensions"] = echo_tds + moved_echo
    echo["limit"] = limit

    query = Query(
        measures=tuple(measures),
        dimensions=tuple(plain_dimensions),
        segments=tuple(raw.get("segments") or ()),
        time_dimensions=tuple(normalized_tds) + tuple(moved),
        filters=query_filters,
        order=order,
        limit=limit,
        offset=converted.get("offset"),
        timezone=timezone,
        total=converted.get("total", False),
        ungrouped=converted.get("ungrouped", False),
        renew_query=converted.get("renewQuery", False),
        response_format=converted.get("responseFormat", "default"),
        cache_mode=cache_mode or converted.get("cache") or converted.get("cacheMode") or "stale-if-slow",
        echo=echo,
    )
    return query, explicit_limit


def _compare_date_range_queries(raw: Any) -> list[dict[str, Any]] | None:
    """Return one query per ``compareDateRange`` entry (Cube's compareDateRangeTransformer),
    or None when no time dimension has one."""
    if not isinstance(raw, dict):
        return None
    time_dimensions = raw.get("timeDimensions")
    if not isinstance(time_dimensions, list):
        return None
    position: int | None = None
    for index, item in enumerate(time_dimensions):
        if isinstance(item, dict) and item.get("compareDateRange") is not None:
            if position is not None:
                raise UserError("compareDateRange can only exist for one timeDimension")
            position = index
    if position is None:
        return None
    ranges = time_dimensions[position]["compareDateRange"]
    label = f"timeDimensions[{position}].compareDateRange"
    if not isinstance(ranges, list):
        _fail(f'"{label}" must be an array')
    if not ranges:
        _fail(f'"{label}" must contain at least 1 items')
    if len(ranges) > MAX_COMPARE_DATE_RANGES:
        # Beyond Cube (no bound there): each range is a whole query, planned and run.
        _fail(f'"{label}" must contain less than or equal to {MAX_COMPARE_DATE_RANGES} items')
    base = {key: value for key, value in time_dimensions[position].items() if key != "compareDateRange"}
    queries = []
    for date_range in ranges:
        time_dimension = dict(base)
        time_dimension["dateRange"] = date_range
        replaced = list(time_dimensions)
        replaced[position] = time_dimension
        query = dict(raw)
        query["timeDimensions"] = replaced
        queries.append(query)
    return queries


def expand_query(raw: Any, settings: Settings, now: datetime | None = None,
                 cache_mode: str | None = None) -> tuple[str, list[Query]]:
    """Return ``(query type, normalized queries)`` for a parsed query value, as Cube's
    getNormalizedQueries: an array is a blending query, a query whose time dimension has
    ``compareDateRange`` becomes one query per range, anything else is a regular query.
    ``now`` fixes the clock for relative dates; ``cache_mode`` is the request's ``cache``
    parameter, which wins over the query's. Raises UserError (400) with Cube's texts, also
    ``The query limit has been exceeded.`` for a limit above the query limit (Cube throws a
    plain Error there, a 500: a client error answered as a server error)."""
    now_utc = dates.utc_now(now)
    if isinstance(raw, list):
        query_type, items = BLENDING_QUERY, raw
    else:
        expanded = _compare_date_range_queries(raw)
        query_type, items = (COMPARE_DATE_RANGE_QUERY, expanded) if expanded is not None else (REGULAR_QUERY, [raw])
    normalized = [normalize_query(item, settings, now_utc, cache_mode) for item in items]
    for _, explicit_limit in normalized:
        if explicit_limit is not None and explicit_limit > settings.db_query_limit:
            raise UserError("The query limit has been exceeded.")
    queries = [query for query, _ in normalized]
    if query_type == BLENDING_QUERY:
        granularities = _blending_granularities(queries)
        if len(granularities) > 1:
            raise UserError("Data blending query granularities must match")
        if not granularities:
            raise UserError("Data blending query without granularity is not supported")
    return query_type, queries


def check_blending_time_dimension(query: Query) -> None:
    """Refuse a query of a blending ``/v1/load`` whose rows cannot be keyed by
    ``time.<granularity>``: it needs a first time dimension with a granularity. Cube checks
    this while shaping each query's rows, so only a query that returned rows is refused, and
    /v1/sql and /v1/dry-run never are. Raises UserError; returns nothing.

    Cube 0.32 answers a query without any time dimension with a 500 TypeError (its check
    tests the array for being present, and the normalized array is only empty): cubed answers
    the 400 Cube meant to give."""
    if not query.time_dimensions:
        raise UserError("QueryTimeDimension should be specified for the blending query.")
    if not query.time_dimensions[0].granularity:
        # Cube interpolates the time dimension object into the text: "[object Object]".
        raise UserError("Inconsistent QueryTimeDimension configuration for the blending query, "
                        "granularity required: [object Object]")


def _blending_granularities(queries: list[Query]) -> list[str]:
    found: list[str] = []
    for query in queries:
        granularity = query.time_dimensions[0].granularity if query.time_dimensions else None
        if granularity and granularity not in found:
            found.append(granularity)
    return found


def pivot_query(query_type: str, queries: list[Query]) -> dict[str, Any]:
    """Return the ``pivotQuery`` of a multi response, as Cube's getPivotQuery: for a blending
    query the union of measures and dimensions with one ``time`` dimension at the common
    granularity; otherwise the first query's echo (with a leading ``compareDateRange``
    dimension for a compareDateRange query); ``queryType`` added. Cube builds it by changing
    the first normalized query in place, so its multi and dry-run answers show this dict as
    the first query too."""
    if query_type == BLENDING_QUERY:
        measures: list[str] = []
        dimensions: list[str] = []
        for query in queries:
            measures.extend(m for m in query.measures if m not in measures)
            dimensions.extend(d for d in query.dimensions if d not in dimensions)
        granularities = _blending_granularities(queries)
        time_dimension: dict[str, Any] = {"dimension": "time"}
        if granularities:
            time_dimension["granularity"] = granularities[0]
        return {"measures": measures, "dimensions": dimensions, "timeDimensions": [time_dimension],
                "queryType": query_type}
    pivot = dict(queries[0].echo)
    if query_type == COMPARE_DATE_RANGE_QUERY:
        pivot["dimensions"] = ["compareDateRange", *(pivot.get("dimensions") or [])]
    pivot["queryType"] = query_type
    return pivot


def unsupported_query_type_message(query_type: str) -> str:
    """Return Cube's error text for a blending or compareDateRange result asked for without
    ``queryType=multi`` (verbatim, with no space before "Please")."""
    return f"'{query_type}' query type is not supported by the client.Please update the client."


def rewrite_input(query: Query) -> dict[str, Any]:
    """Return the query as the ``query_rewrite`` hook receives it: Cube's normalized form (the
    echoed query: filters with ``member``, resolved date ranges, order as ``{id, desc}``), a
    fresh copy the hook may change."""
    return json.loads(json.dumps(query.echo))


def rewrite_output(rewritten: Any) -> Any:
    """Return what a ``query_rewrite`` hook returned in the form the request parser reads
    (order back to ``[member, direction]`` pairs, normalized-only keys dropped)."""
    if not isinstance(rewritten, dict):
        return rewritten
    raw = {key: value for key, value in rewritten.items() if key not in ("rowLimit", "queryType")}
    order = raw.get("order")
    if isinstance(order, list) and all(isinstance(item, dict) and "id" in item for item in order):
        raw["order"] = [[item["id"], "desc" if item.get("desc") else "asc"] for item in order]
    return raw
