"""What differs between databases when a query is rendered: time zones, truncation, casts,
intervals, case-insensitive LIKE, approximate distinct counts, booleans, null ordering.

The planner builds one sqlglot tree through these methods; sqlglot then renders the tree for
the dialect. Where sqlglot's own output would be wrong for an engine, the method builds the
engine's real construct instead:

* SQLite has no time zones, no date_trunc and no interval type; sqlglot renders
  ``TIMESTAMP_TRUNC``/``AT TIME ZONE`` verbatim (invalid SQLite). Times are ISO-8601 text; every
  time value a query computes is normalised to the text ``YYYY-MM-DDTHH:MM:SS.SSS`` (Cube's wire
  form, so text comparisons are chronological) with ``strftime``; zone conversion and month
  arithmetic are Python functions the SQLite driver registers on each connection
  (``cubed_tz``, ``cubed_add_months``: ``cubed.drivers.sqlite``).
* MySQL/MariaDB: sqlglot drops ``AT TIME ZONE`` (with a warning), renders ``date_trunc`` as a
  ``TIMESTAMPDIFF`` from year 0 (wrong for weeks), drops ``NULLS FIRST/LAST`` on positional
  ``ORDER BY`` (another warning) and reads ``||`` as OR. Zones use ``CONVERT_TZ`` with the zone's
  name (exact across DST; needs the server's time zone tables), truncation ``DATE_FORMAT``
  forms cast back to DATETIME, intervals ``DATE_ADD``/``DATE_SUB``.
"""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any, Mapping

from sqlglot import exp

from cubed.errors import CompileError
from cubed.query.expressions import paren


class SqlDialect:
    """PostgreSQL's constructs; the base other dialects override."""

    name = "postgres"

    def in_zone(self, value: exp.Expression, timezone: str) -> exp.Expression:
        """Return a UTC timestamp column as local wall-clock time in ``timezone``."""
        return exp.Paren(this=exp.AtTimeZone(this=exp.Cast(this=paren(value), to=exp.DataType.build("timestamptz")),
                                             zone=exp.Literal.string(timezone)))

    def truncate(self, value: exp.Expression, granularity: str) -> exp.Expression:
        """Return local time ``value`` truncated to ``granularity`` (week starts Monday)."""
        return exp.TimestampTrunc(this=value, unit=exp.var(granularity))

    def utc_instant(self, value: exp.Expression) -> exp.Expression:
        """Return a bound ``YYYY-MM-DDTHH:mm:ss.SSSZ`` value as a timestamp comparable with the
        stored (UTC) columns."""
        return exp.Cast(this=value, to=exp.DataType.build("timestamptz"))

    def local_timestamp(self, value: exp.Expression) -> exp.Expression:
        """Return a ``YYYY-MM-DDTHH:mm:ss.SSS`` text (literal or parameter) as a local timestamp."""
        return exp.Cast(this=value, to=exp.DataType.build("timestamp"))

    def shift(self, value: exp.Expression, interval: str, sign: int) -> exp.Expression:
        """Return ``value`` plus (``sign`` 1) or minus (-1) an interval like ``7 day``."""
        node = exp.Add if sign > 0 else exp.Sub
        return node(this=value, expression=exp.Interval(this=exp.Literal.string(interval)))

    def ilike(self, value: exp.Expression, pattern: exp.Expression) -> exp.Expression:
        """Return a case-insensitive LIKE of ``value`` against ``pattern`` (``\\`` escapes)."""
        return exp.ILike(this=value, expression=pattern)

    def concat(self, left: exp.Expression, right: exp.Expression) -> exp.Expression:
        """Return the string concatenation of two expressions."""
        return exp.DPipe(this=left, expression=right)

    def approx_count_distinct(self, value: exp.Expression) -> exp.Expression:
        """Return an approximate distinct count, or raise Cube's error where there is none."""
        raise CompileError("Approximate distinct count is not supported by this DB")

    def time_value(self, value: exp.Expression) -> exp.Expression:
        """Return a stored (UTC, zone-less) time value - a time dimension's column or a bound
        time text compared with one - in the form the engine compares times in. PostgreSQL
        compares timestamp columns with cast values as they are: unchanged."""
        return value

    def filter_value(self, value: Any, member_type: str | None) -> Any:
        """Return the value bound for one value of an equality or comparison filter on a
        member of ``member_type`` (a dimension's type, or a measure's: ``count``, ``sum``, ...).
        Filter values arrive as text; PostgreSQL casts text to the column's type itself
        (``'true'`` to boolean, ``'10'`` to a number): unchanged."""
        return value

    def prepare(self, tree: exp.Expression) -> exp.Expression:
        """Return the finished tree of a whole query, rewritten where sqlglot's rendering of a
        construct is wrong for the engine (called once, just before rendering; the tree may
        be changed in place). Nothing to rewrite for PostgreSQL."""
        return tree


class DuckDBDialect(SqlDialect):
    """DuckDB: PostgreSQL's constructs (with ICU for zones), plus approx_count_distinct."""

    name = "duckdb"

    def ilike(self, value: exp.Expression, pattern: exp.Expression) -> exp.Expression:
        # DuckDB's LIKE has no default escape character: escaped wildcards need ESCAPE.
        return exp.Escape(this=exp.ILike(this=value, expression=pattern), expression=_text("\\"))

    def approx_count_distinct(self, value: exp.Expression) -> exp.Expression:
        return exp.ApproxDistinct(this=value)

    def filter_value(self, value: Any, member_type: str | None) -> Any:
        # DuckDB casts a text parameter to the column's type before comparing: '34.795' against
        # DECIMAL(12,2) became 34.80 and '2.5' against INTEGER became 3. Bound as numbers, the
        # comparison happens in the wider type, as PostgreSQL's numeric comparison does.
        if member_type in NUMBER_MEMBER_TYPES:
            return text_number(value)
        return value


# -- helpers shared by the engines without native zones or intervals -----------------------------

_INTERVAL_PART = re.compile(r"\s*(-?\d+)\s*([a-z]+?)s?(?![a-z])\s*", re.IGNORECASE)
_INTERVAL_UNITS = {"second": "SECOND", "sec": "SECOND", "minute": "MINUTE", "min": "MINUTE", "hour": "HOUR",
                   "day": "DAY", "week": "WEEK", "month": "MONTH", "mon": "MONTH", "quarter": "QUARTER",
                   "year": "YEAR"}
_TRUE_TEXT = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE_TEXT = frozenset({"false", "f", "no", "n", "off", "0"})
#: Zone names that are UTC itself: converting to them changes nothing.
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "Etc/Universal", "Etc/Zulu", "UCT", "Universal", "Zulu",
                       "Etc/GMT", "Etc/GMT+0", "Etc/GMT-0", "Etc/GMT0", "GMT", "GMT+0", "GMT-0", "GMT0",
                       "Etc/Greenwich", "Greenwich"})


def interval_parts(interval: str) -> list[tuple[int, str]]:
    """Return ``(amount, UNIT)`` pairs of a Cube interval (``7 day``, ``2 weeks``,
    ``1 month 2 days``); units are SECOND, MINUTE, HOUR, DAY, WEEK, MONTH, QUARTER, YEAR.
    CompileError for text that is not such an interval."""
    parts: list[tuple[int, str]] = []
    position = 0
    text = interval.strip()
    while position < len(text):
        match = _INTERVAL_PART.match(text, position)
        unit = _INTERVAL_UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None or match.end() == position:
            raise CompileError(f"Invalid interval: {interval}")
        parts.append((int(match.group(1)), unit))
        position = match.end()
    if not parts:
        raise CompileError(f"Invalid interval: {interval}")
    return parts


def boolean_number(value: Any) -> Any:
    """Return 1/0 for PostgreSQL's boolean texts (``true``, ``f``, ``yes``, ``0``, ...), the
    value itself otherwise: what a boolean dimension is compared with on engines whose
    booleans are the integers 1 and 0."""
    if isinstance(value, str):
        folded = value.strip().lower()
        if folded in _TRUE_TEXT:
            return 1
        if folded in _FALSE_TEXT:
            return 0
    return value


_NUMBER_TEXT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
#: Member types whose filter values are numbers: number dimensions and numeric measures.
NUMBER_MEMBER_TYPES = frozenset({"number", "count", "count_distinct", "count_distinct_approx", "sum", "avg",
                                 "min", "max", "running_total"})


def text_number(value: Any) -> Any:
    """Return numeric text as an int (integral text) or a float, anything else unchanged."""
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return float(text)
    return value


def _fn(name: str, *args: exp.Expression) -> exp.Expression:
    """Return the call ``name(args)``, rendered verbatim in every dialect."""
    return exp.Anonymous(this=name, expressions=list(args))


def _text(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def _values_columns(values: exp.Values) -> list[exp.Identifier] | None:
    alias = values.args.get("alias")
    columns = alias.columns if isinstance(alias, exp.TableAlias) else None
    return list(columns) if columns else None


def _has_aggregate(node: exp.Expression) -> bool:
    """Return whether ``node`` computes an aggregate of its own query (not of a sub-query)."""
    if isinstance(node, exp.AggFunc):
        return True
    return any(_has_aggregate(child) for child in node.iter_expressions() if not isinstance(child, exp.Subquery))


class SQLiteDialect(SqlDialect):
    """SQLite: times are ISO-8601 text in UTC (``YYYY-MM-DD HH:MM:SS``, as Cube's SQLite driver
    expects); every time the query computes is the text ``YYYY-MM-DDTHH:MM:SS.SSS``.

    * zones: ``cubed_tz(ts, 'Zone/Name')``, a Python function (zoneinfo) the driver registers
      on every connection - SQLite's own ``'localtime'`` knows only the host's zone; UTC is
      SQLite's ``strftime`` alone.
    * truncation: ``strftime`` forms (week: ``'weekday 0', '-6 days'`` = Monday; quarter:
      ``'start of month'`` minus 0-2 months).
    * comparisons: both sides of a time comparison go through the same ``strftime`` form, so
      ``T``/space separators, a ``Z`` suffix or missing milliseconds cannot break text order.
    * intervals: ``strftime`` modifiers; months, quarters and years through
      ``cubed_add_months``, which keeps the day in range as PostgreSQL does (SQLite's
      ``'+1 months'`` turns Jan 31 into Mar 2).
    """

    name = "sqlite"
    TIME_FORMAT = "%Y-%m-%dT%H:%M:%f"
    _TRUNCATE_FORMATS = {
        "second": "%Y-%m-%dT%H:%M:%S.000", "minute": "%Y-%m-%dT%H:%M:00.000", "hour": "%Y-%m-%dT%H:00:00.000",
        "day": "%Y-%m-%dT00:00:00.000", "month": "%Y-%m-01T00:00:00.000", "year": "%Y-01-01T00:00:00.000",
    }

    def _strftime(self, value: exp.Expression, fmt: str | None = None, *modifiers: exp.Expression) -> exp.Expression:
        return _fn("STRFTIME", _text(fmt or self.TIME_FORMAT), value, *modifiers)

    def in_zone(self, value: exp.Expression, timezone: str) -> exp.Expression:
        if timezone in UTC_NAMES:
            return self._strftime(value)
        return _fn("cubed_tz", value, _text(timezone))

    def truncate(self, value: exp.Expression, granularity: str) -> exp.Expression:
        if granularity in self._TRUNCATE_FORMATS:
            return self._strftime(value, self._TRUNCATE_FORMATS[granularity])
        day = "%Y-%m-%dT00:00:00.000"
        if granularity == "week":
            return self._strftime(value, day, _text("weekday 0"), _text("-6 days"))
        if granularity == "quarter":
            month = exp.Cast(this=_fn("STRFTIME", _text("%m"), value.copy()), to=exp.DataType.build("integer"))
            back = exp.Mod(this=exp.Paren(this=exp.Sub(this=month, expression=exp.Literal.number(1))),
                           expression=exp.Literal.number(3))
            return self._strftime(value, day, _text("start of month"), _fn("PRINTF", _text("-%d months"), back))
        raise CompileError(f"Unsupported granularity: {granularity}")

    def utc_instant(self, value: exp.Expression) -> exp.Expression:
        return self._strftime(value)

    def local_timestamp(self, value: exp.Expression) -> exp.Expression:
        return self._strftime(value)

    def time_value(self, value: exp.Expression) -> exp.Expression:
        return self._strftime(value)

    def shift(self, value: exp.Expression, interval: str, sign: int) -> exp.Expression:
        months = 0
        modifiers: list[exp.Expression] = []
        for amount, unit in interval_parts(interval):
            amount *= sign
            if unit in ("MONTH", "QUARTER", "YEAR"):
                months += amount * {"MONTH": 1, "QUARTER": 3, "YEAR": 12}[unit]
            elif unit == "WEEK":
                modifiers.append(_text(f"{amount * 7:+d} days"))
            else:
                modifiers.append(_text(f"{amount:+d} {unit.lower()}s"))
        if months:
            value = _fn("cubed_add_months", value, exp.Literal.number(months))
            if not modifiers:
                return value
        return self._strftime(value, None, *modifiers)

    def ilike(self, value: exp.Expression, pattern: exp.Expression) -> exp.Expression:
        # The driver makes LOWER Unicode-aware (SQLite's own folds ASCII only).
        return exp.Escape(this=exp.Like(this=exp.Lower(this=value), expression=exp.Lower(this=pattern)),
                          expression=_text("\\"))

    def filter_value(self, value: Any, member_type: str | None) -> Any:
        # SQLite compares text with a number only where a column's affinity converts it (not
        # with COUNT(...) or any other expression: there text is greater than every number).
        if member_type == "boolean":
            return boolean_number(value)
        if member_type in NUMBER_MEMBER_TYPES:
            return text_number(value)
        return value

    def prepare(self, tree: exp.Expression) -> exp.Expression:
        # sqlglot renders VALUES ... AS t(a, b) without the column names (SQLite has no
        # column list on a table alias): name them from column1, column2, ... instead.
        for values in list(tree.find_all(exp.Values)):
            columns = _values_columns(values)
            if columns is None:
                continue
            alias = values.args["alias"]
            bare = exp.Values(expressions=values.expressions)
            select = exp.select(*[exp.alias_(exp.column(f"column{i + 1}"), exp.to_identifier(c.name, quoted=c.quoted),
                                             copy=False) for i, c in enumerate(columns)], copy=False
                                ).from_(exp.Subquery(this=bare), copy=False)
            values.replace(exp.Subquery(this=select, alias=exp.TableAlias(this=alias.this)))
        return tree


class MySQLDialect(SqlDialect):
    """MySQL 8 / MariaDB 10.11: DATETIME columns hold UTC.

    * zones: ``CONVERT_TZ(ts, '+00:00', 'Zone/Name')`` - exact across DST changes, unlike the
      fixed offset Cube 0.32 computes for the whole query; it needs the server's time zone
      tables (``mysql_tzinfo_to_sql``), which the driver checks (without them CONVERT_TZ
      answers NULL, and the driver fails such a query with how to load them). UTC needs no
      conversion and no tables.
    * truncation: ``DATE_FORMAT``/``DATE`` forms cast to DATETIME (week: ``DATE_SUB(d,
      INTERVAL WEEKDAY(d) DAY)``, Monday; quarter: ``MAKEDATE(year, 1) + INTERVAL
      QUARTER(d) - 1 QUARTER``).
    * bound times: ``YYYY-MM-DDTHH:mm:ss.SSSZ`` text becomes ``CAST(REPLACE(?, 'Z', '') AS
      DATETIME(3))`` (MariaDB reads the ``Z`` only with a truncation warning).
    * booleans are 1/0: boolean filters bind 1/0.
    * ILIKE: ``LOWER(x) LIKE LOWER(p) COLLATE utf8mb4_bin`` - case-insensitive through LOWER,
      but accent-sensitive as PostgreSQL's (the default ``*_general_ci`` collations equate
      ``ü`` with ``u``).
    * ``ORDER BY n`` with PostgreSQL's null order (ASC last, DESC first; MySQL sorts NULL
      lowest) gets a leading ``alias IS NULL`` key.
    """

    name = "mysql"

    def _datetime(self, value: exp.Expression) -> exp.Expression:
        """Return bound text (or a string literal) as DATETIME(3); other values unchanged."""
        if isinstance(value, exp.Placeholder) or (isinstance(value, exp.Literal) and value.is_string):
            return self.utc_instant(value)
        return value

    def in_zone(self, value: exp.Expression, timezone: str) -> exp.Expression:
        value = self._datetime(value)
        if timezone in UTC_NAMES:
            return value
        return _fn("CONVERT_TZ", value, _text("+00:00"), _text(timezone))

    def truncate(self, value: exp.Expression, granularity: str) -> exp.Expression:
        formats = {"second": "%Y-%m-%d %H:%i:%s", "minute": "%Y-%m-%d %H:%i:00", "hour": "%Y-%m-%d %H:00:00",
                   "month": "%Y-%m-01", "year": "%Y-01-01"}
        if granularity in formats:
            truncated = _fn("DATE_FORMAT", value, _text(formats[granularity]))
        elif granularity == "day":
            truncated = _fn("DATE", value)
        elif granularity == "week":
            truncated = _fn("DATE_SUB", _fn("DATE", value),
                            exp.Interval(this=_fn("WEEKDAY", value.copy()), unit=exp.var("DAY")))
        elif granularity == "quarter":
            quarter = exp.Sub(this=_fn("QUARTER", value.copy()), expression=exp.Literal.number(1))
            truncated = _fn("DATE_ADD", _fn("MAKEDATE", _fn("YEAR", value), exp.Literal.number(1)),
                            exp.Interval(this=quarter, unit=exp.var("QUARTER")))
        else:
            raise CompileError(f"Unsupported granularity: {granularity}")
        return exp.Cast(this=truncated, to=exp.DataType.build("datetime"))

    def utc_instant(self, value: exp.Expression) -> exp.Expression:
        return exp.Cast(this=_fn("REPLACE", value, _text("Z"), _text("")),
                        to=exp.DataType.build("DATETIME(3)", dialect="mysql"))

    def local_timestamp(self, value: exp.Expression) -> exp.Expression:
        return exp.Cast(this=value, to=exp.DataType.build("DATETIME(3)", dialect="mysql"))

    def time_value(self, value: exp.Expression) -> exp.Expression:
        return self._datetime(value)

    def shift(self, value: exp.Expression, interval: str, sign: int) -> exp.Expression:
        for amount, unit in interval_parts(interval):
            value = _fn("DATE_ADD" if amount * sign >= 0 else "DATE_SUB", value,
                        exp.Interval(this=exp.Literal.number(abs(amount)), unit=exp.var(unit)))
        return value

    def ilike(self, value: exp.Expression, pattern: exp.Expression) -> exp.Expression:
        # LIKE's default escape character is the backslash here.
        return exp.Like(this=exp.Lower(this=value),
                        expression=exp.Collate(this=exp.Lower(this=pattern), expression=exp.var("utf8mb4_bin")))

    def concat(self, left: exp.Expression, right: exp.Expression) -> exp.Expression:
        return _fn("CONCAT", left, right)

    def filter_value(self, value: Any, member_type: str | None) -> Any:
        # Booleans are the integers 1/0 (text compares as a number, 'true' as 0). Numbers
        # compare with numeric text as numbers already.
        return boolean_number(value) if member_type == "boolean" else value

    def prepare(self, tree: exp.Expression) -> exp.Expression:
        for select in list(tree.find_all(exp.Select)):
            order = select.args.get("order")
            if order is None:
                continue
            names = [e.alias_or_name for e in select.expressions]
            values = [e.unalias() for e in select.expressions]
            keys: list[exp.Ordered] = []
            for item in order.expressions:
                position = item.this
                if (isinstance(item, exp.Ordered) and isinstance(position, exp.Literal) and not position.is_string
                        and item.args.get("nulls_first") is not None and 0 < int(position.name) <= len(names)):
                    desc = bool(item.args.get("desc"))
                    nulls_first = bool(item.args.get("nulls_first"))
                    if nulls_first != desc or not names[int(position.name) - 1]:
                        # MySQL's own order already (NULL lowest) or nothing to name: as is.
                        keys.append(exp.Ordered(this=position, desc=desc, nulls_first=not desc))
                        continue
                    index = int(position.name) - 1
                    # The alias, except for an aggregate: MySQL refuses a reference to a group
                    # function inside an expression, so the aggregate itself is repeated.
                    key = values[index].copy() if _has_aggregate(values[index]) else exp.column(names[index], quoted=True)
                    keys.append(exp.Ordered(this=exp.Is(this=paren(key), expression=exp.Null()), desc=nulls_first,
                                            nulls_first=not nulls_first))
                    keys.append(exp.Ordered(this=position, desc=desc, nulls_first=not desc))
                else:
                    keys.append(item)
            order.set("expressions", keys)
        return tree


DIALECTS: Mapping[str, type[SqlDialect]] = MappingProxyType({
    "postgres": SqlDialect, "duckdb": DuckDBDialect, "sqlite": SQLiteDialect, "mysql": MySQLDialect,
})


def dialect_for(name: str) -> SqlDialect:
    """Return the SqlDialect of a sqlglot dialect name; ValueError for unknown ones."""
    try:
        return DIALECTS[name]()
    except KeyError:
        raise ValueError(f"no SQL dialect {name!r}; known: {', '.join(sorted(DIALECTS))}") from None
