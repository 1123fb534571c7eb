"""Cube's wire form of database values, and the per-driver conversions that produce it.

Cube 0.32 on PostgreSQL (node-postgres) answers: int2/int4 as numbers, int8 and numeric as
strings with PostgreSQL's exact text (``"500"``, ``"872.00"``), floats as numbers, booleans,
text, ``null``, timestamps/dates as ``YYYY-MM-DDTHH:mm:ss.SSS`` (UTC, no zone), uuid as a
string, json as the JSON value. Drivers return rows already in this form so that the HTTP
layer does no per-value work; this module holds the conversions, built to be cheap since they
run once per value:

* PostgreSQL: psycopg2 typecasters registered on each connection
  (``register_pg_typecasters``), so int8/numeric arrive as the server's text and timestamps as
  the formatted string, with no intermediate Python objects.
* DuckDB: one converter per column chosen from ``cursor.description``
  (``duckdb_columns``), applied only to the columns that need it (``convert_rows``).
"""
from __future__ import annotations

import json
from types import MappingProxyType
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Mapping, Sequence
from uuid import UUID

import psycopg2.extensions

from cubed.drivers.base import Column

Converter = Callable[[Any], Any]

KINDS = ("number", "string", "time", "date", "boolean", "other")


# ---------------------------------------------------------------- formatting helpers


def format_datetime(value: datetime) -> str:
    """Return ``YYYY-MM-DDTHH:mm:ss.SSS`` for a datetime; an aware one is converted to UTC
    first. Milliseconds are truncated, as moment does when Cube parses the driver's text."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds")


def format_date(value: date) -> str:
    """Return ``YYYY-MM-DDT00:00:00.000`` for a date."""
    return value.isoformat() + "T00:00:00.000"


def format_decimal(value: Decimal) -> str:
    """Return a Decimal as PostgreSQL prints numeric: all digits of its scale, never an
    exponent (``Decimal('872.00')`` -> ``"872.00"``, ``Decimal('1E-7')`` -> ``"0.0000001"``)."""
    return format(value, "f")


def format_bytes(value: bytes | bytearray | memoryview) -> str:
    """Return binary data in PostgreSQL's bytea hex text form (``\\x0102``)."""
    return "\\x" + bytes(value).hex()


def wire_value(value: Any) -> Any:
    """Return any Python value from a database in Cube's wire form (a JSON-ready value).

    The generic, slower path: used for nested values (lists, structs) and for drivers that do
    not have a per-column converter. ``int`` stays a number here; per-column converters decide
    when an integer column is sent as a string.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return format_date(value)
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return format_bytes(value)
    if isinstance(value, (list, tuple)):
        return [wire_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): wire_value(item) for key, item in value.items()}
    return str(value)


def convert_rows(rows: list[tuple[Any, ...]], converters: Sequence[Converter | None]) -> list[tuple[Any, ...]]:
    """Return ``rows`` with ``converters[i]`` applied to column ``i`` (``None`` = keep as is).

    Rows are returned untouched when no column needs converting; NULLs are never passed to a
    converter.
    """
    active = [(index, fn) for index, fn in enumerate(converters) if fn is not None]
    if not active or not rows:
        return rows
    if len(active) == 1:
        index, fn = active[0]
        result = []
        for row in rows:
            value = row[index]
            if value is not None:
                row = row[:index] + (fn(value),) + row[index + 1:]
            result.append(row)
        return result
    result = []
    for row in rows:
        values = list(row)
        for index, fn in active:
            value = values[index]
            if value is not None:
                values[index] = fn(value)
        result.append(tuple(values))
    return result


# ---------------------------------------------------------------- PostgreSQL (psycopg2)

# OIDs of the built-in types (pg_type.dat); stable across PostgreSQL versions.
PG_BOOL, PG_BYTEA, PG_INT8, PG_INT2, PG_INT4, PG_TEXT, PG_OID = 16, 17, 20, 21, 23, 25, 26
PG_CHAR, PG_NAME, PG_JSON, PG_FLOAT4, PG_FLOAT8, PG_MONEY = 18, 19, 114, 700, 701, 790
PG_BPCHAR, PG_VARCHAR = 1042, 1043
PG_DATE, PG_TIME, PG_TIMESTAMP, PG_TIMESTAMPTZ, PG_INTERVAL, PG_TIMETZ = 1082, 1083, 1114, 1184, 1186, 1266
PG_NUMERIC, PG_UUID, PG_JSONB = 1700, 2950, 3802

_PG_KINDS: Mapping[int, str] = MappingProxyType({
    PG_INT2: "number", PG_INT4: "number", PG_INT8: "number", PG_OID: "number",
    PG_NUMERIC: "number", PG_FLOAT4: "number", PG_FLOAT8: "number",
    PG_TEXT: "string", PG_VARCHAR: "string", PG_BPCHAR: "string", PG_NAME: "string",
    PG_CHAR: "string", PG_UUID: "string",
    PG_TIMESTAMP: "time", PG_TIMESTAMPTZ: "time",
    PG_DATE: "date",
    PG_BOOL: "boolean",
})


def pg_kind(type_code: int) -> str:
    """Return the Column kind of a PostgreSQL type OID (``other`` for anything unlisted)."""
    return _PG_KINDS.get(type_code, "other")


def pg_columns(description: Sequence[Any] | None) -> tuple[Column, ...]:
    """Return the Columns of a psycopg2 ``cursor.description``."""
    if not description:
        return ()
    return tuple(Column(item.name, _PG_KINDS.get(item.type_code, "other")) for item in description)


def _split_fraction(clock: str) -> str:
    """Return ``HH:MM:SS.mmm`` from PostgreSQL's ``HH:MM:SS[.ffffff]`` (truncating)."""
    if len(clock) == 8:
        return clock + ".000"
    head, _, fraction = clock.partition(".")
    return f"{head}.{(fraction + '000')[:3]}"


def pg_timestamp_text(value: str | None, cursor: Any = None) -> str | None:
    """Return PostgreSQL's ISO text of a ``timestamp`` as ``YYYY-MM-DDTHH:mm:ss.SSS``.

    Special values (``infinity``) and BC dates are returned as the server wrote them.
    """
    if value is None:
        return None
    if len(value) == 19:
        # The common case, 'YYYY-MM-DD HH:MM:SS', decided by length alone.
        return f"{value[:10]}T{value[11:]}.000"
    day, sep, clock = value.partition(" ")
    if not sep or " " in clock or ":" not in clock:
        return value
    return f"{day}T{_split_fraction(clock)}"


def pg_timestamptz_text(value: str | None, cursor: Any = None) -> str | None:
    """Return PostgreSQL's ISO text of a ``timestamptz`` as UTC ``YYYY-MM-DDTHH:mm:ss.SSS``.

    The session runs with TimeZone UTC, so the offset is normally ``+00`` and only sliced off;
    any other offset (a session whose TimeZone was changed) is applied.
    """
    if value is None:
        return None
    if value.endswith("+00"):
        return pg_timestamp_text(value[:-3])
    day, sep, clock = value.partition(" ")
    if not sep or " " in clock:
        return value
    cut = max(clock.rfind("+"), clock.rfind("-"))
    if cut <= 0:
        return pg_timestamp_text(value)
    local, offset = clock[:cut], clock[cut:]
    try:
        parts = [int(part) for part in offset[1:].split(":")]
        seconds = parts[0] * 3600 + (parts[1] * 60 if len(parts) > 1 else 0) + (parts[2] if len(parts) > 2 else 0)
        zone = timezone(timedelta(seconds=seconds if offset[0] == "+" else -seconds))
        moment = datetime.fromisoformat(f"{day}T{local}").replace(tzinfo=zone)
    except (ValueError, IndexError, OverflowError):
        return value
    return format_datetime(moment)


def pg_date_text(value: str | None, cursor: Any = None) -> str | None:
    """Return PostgreSQL's ISO text of a ``date`` as ``YYYY-MM-DDT00:00:00.000``."""
    if value is None:
        return None
    if len(value) == 10:
        return value + "T00:00:00.000"
    return value


def pg_raw_text(value: str | None, cursor: Any = None) -> str | None:
    """Return the server's text form unchanged (int8, numeric, interval, time, bytea)."""
    return value


def _pg_casters() -> tuple[Any, ...]:
    """Return the psycopg2 typecasters (scalars, then their arrays) cubed registers."""
    ext = psycopg2.extensions
    scalars = (
        ((PG_INT8,), "CUBED_INT8", pg_raw_text, (1016,)),
        ((PG_NUMERIC,), "CUBED_NUMERIC", pg_raw_text, (1231,)),
        ((PG_TIMESTAMP,), "CUBED_TIMESTAMP", pg_timestamp_text, (1115,)),
        ((PG_TIMESTAMPTZ,), "CUBED_TIMESTAMPTZ", pg_timestamptz_text, (1185,)),
        ((PG_DATE,), "CUBED_DATE", pg_date_text, (1182,)),
        ((PG_BYTEA,), "CUBED_BYTEA", pg_raw_text, (1001,)),
        ((PG_INTERVAL, PG_TIME, PG_TIMETZ), "CUBED_TEXT", pg_raw_text, (1187, 1183, 1270)),
    )
    casters: list[Any] = []
    for oids, name, fn, array_oids in scalars:
        scalar = ext.new_type(oids, name, fn)
        casters.append(scalar)
        casters.append(ext.new_array_type(array_oids, name + "_ARRAY", scalar))
    return tuple(casters)


# Built once: typecaster objects are immutable once created.
PG_TYPECASTERS: tuple[Any, ...] = _pg_casters()


def register_pg_typecasters(connection: Any) -> None:
    """Register cubed's typecasters on one psycopg2 connection (not globally); returns None.

    After this, int8/numeric/bytea/interval values arrive as the server's text, timestamps,
    timestamptz and dates as ``YYYY-MM-DDTHH:mm:ss.SSS``; other types keep psycopg2's
    defaults, which are already wire values (int, float, bool, str, json).
    """
    for caster in PG_TYPECASTERS:
        psycopg2.extensions.register_type(caster, connection)


# ---------------------------------------------------------------- DuckDB


def _big_integer(value: int) -> str:
    return str(value)


def _duckdb_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else wire_value(value)


def _timestamp(value: Any) -> Any:
    return format_datetime(value) if isinstance(value, datetime) else wire_value(value)


def _date(value: Any) -> Any:
    return format_date(value) if isinstance(value, date) else wire_value(value)


def _uuid(value: Any) -> str:
    return str(value)


# DuckDB type ids (``DuckDBPyType.id``) -> (kind, converter); None keeps the Python value.
_DUCKDB_TYPES: Mapping[str, tuple[str, Converter | None]] = MappingProxyType({
    "boolean": ("boolean", None),
    "tinyint": ("number", None), "smallint": ("number", None), "integer": ("number", None),
    "utinyint": ("number", None), "usmallint": ("number", None), "uinteger": ("number", None),
    "bigint": ("number", _big_integer), "ubigint": ("number", _big_integer),
    "hugeint": ("number", _big_integer), "uhugeint": ("number", _big_integer),
    "bignum": ("number", None), "varint": ("number", None),
    "decimal": ("number", format_decimal),
    "float": ("number", None), "double": ("number", None),
    "varchar": ("string", None), "uuid": ("string", _uuid),
    "timestamp": ("time", _timestamp), "timestamp_s": ("time", _timestamp),
    "timestamp_ms": ("time", _timestamp), "timestamp_ns": ("time", _timestamp),
    "timestamp with time zone": ("time", _timestamp),
    "date": ("date", _date),
    "json": ("other", _duckdb_json),
    "blob": ("other", format_bytes),
})


def duckdb_columns(description: Sequence[Any] | None) -> tuple[tuple[Column, ...], list[Converter | None]]:
    """Return the Columns of a DuckDB ``cursor.description`` and one converter per column
    (``None`` where the Python value already is the wire value)."""
    if not description:
        return (), []
    columns: list[Column] = []
    converters: list[Converter | None] = []
    for item in description:
        type_id = getattr(item[1], "id", None) or str(item[1]).lower()
        if type_id == "varchar" and str(item[1]) == "JSON":
            # JSON is a VARCHAR alias to DuckDB; only its printed name tells them apart.
            type_id = "json"
        kind, converter = _DUCKDB_TYPES.get(type_id, ("other", wire_value))
        columns.append(Column(item[0], kind))
        converters.append(converter)
    return tuple(columns), converters


def first_line(message: str) -> str:
    """Return the first non-empty line of a database message, stripped."""
    for line in message.splitlines():
        if line.strip():
            return line.strip()
    return message.strip()
