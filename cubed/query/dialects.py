"""What differs between databases when a query is rendered: time zones, truncation, casts,
intervals, case-insensitive LIKE, approximate distinct counts.

The planner builds one sqlglot tree through these methods; sqlglot then renders the tree for
the dialect. Where sqlglot's own output would be wrong for an engine, the method builds the
engine's real construct instead.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

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


class DuckDBDialect(SqlDialect):
    """DuckDB: PostgreSQL's constructs (with ICU for zones), plus approx_count_distinct."""

    name = "duckdb"

    def approx_count_distinct(self, value: exp.Expression) -> exp.Expression:
        return exp.ApproxDistinct(this=value)


DIALECTS: Mapping[str, type[SqlDialect]] = MappingProxyType({"postgres": SqlDialect, "duckdb": DuckDBDialect})


def dialect_for(name: str) -> SqlDialect:
    """Return the SqlDialect of a sqlglot dialect name; ValueError for unknown ones."""
    try:
        return DIALECTS[name]()
    except KeyError:
        raise ValueError(f"no SQL dialect {name!r}; known: {', '.join(sorted(DIALECTS))}") from None
