"""Query filters -> SQL conditions, with every value a bound parameter (Cube's BaseFilter).

LIKE wildcards (``%``, ``_``) and the escape character in contains/startsWith/endsWith
values are escaped, for every like-operator (Cube 0.32 escapes only contains/notContains).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from cubed.errors import UserError
from cubed.query import dates
from cubed.query.dialects import SqlDialect
from cubed.query.expressions import and_all as _and
from cubed.query.expressions import or_all as _or
from cubed.query.expressions import paren as _paren
from cubed.query.types import FilterCondition

DATE_OPERATORS = frozenset({"inDateRange", "notInDateRange", "onTheDate", "beforeDate", "afterDate",
                            "beforeOrOnDate", "afterOrOnDate"})
COMPARISON_OPERATORS = frozenset({"equals", "notEquals", "in", "notIn", "gt", "gte", "lt", "lte"})
LIKE_OPERATORS = {
    "contains": (False, True, True), "notContains": (True, True, True),
    "startsWith": (False, False, True), "notStartsWith": (True, False, True),
    "endsWith": (False, True, False), "notEndsWith": (True, True, False),
}


@dataclass
class ParamAllocator:
    """Collects bound values; each allocation returns a named placeholder node."""

    values: list[Any] = field(default_factory=list)

    def allocate(self, value: Any) -> exp.Placeholder:
        """Return a placeholder bound to ``value``."""
        self.values.append(value)
        return exp.Placeholder(this=f"cubedp{len(self.values) - 1}")


def escape_like(value: str) -> str:
    """Return ``value`` with LIKE wildcards and the backslash escape character escaped."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def filter_json(condition: FilterCondition) -> str:
    """Return the filter as Cube's JSON.stringify shows it in error messages."""
    body: dict[str, Any] = {"member": condition.member, "operator": condition.operator}
    if condition.values is not None:
        body["values"] = list(condition.values)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class FilterBuilder:
    """Builds the condition for one leaf filter against an already-rendered column."""

    def __init__(self, params: ParamAllocator, timezone: str, sql_dialect: SqlDialect) -> None:
        self.params = params
        self.timezone = timezone
        self.sql_dialect = sql_dialect

    def condition(self, condition: FilterCondition, column: exp.Expression,
                  string_time: bool = False, member_type: str | None = None) -> exp.Expression | None:
        """Return the SQL condition of ``condition`` on ``column`` (None when it filters nothing).

        ``string_time`` marks a time dimension stored as text: date bounds are then compared
        without a timestamp cast. ``member_type`` is the filtered member's type (a dimension's,
        or a measure's): equality and comparison values go through the dialect's
        ``filter_value`` (1/0 for booleans and numbers for numeric text where the engine does
        not convert text itself), both sides of a comparison with a ``time`` dimension
        through its ``time_value`` (text times normalised on SQLite).
        """
        op = condition.operator
        values = list(condition.values or ())
        has_null = None in values
        present = [v for v in values if v is not None]
        column = _paren(column)
        if op in DATE_OPERATORS:
            return self._date(op, values, column, string_time)
        if op in COMPARISON_OPERATORS:
            present = [self.sql_dialect.filter_value(v, member_type) for v in present]
        allocate = self.params.allocate
        if member_type == "time" and not string_time and op in COMPARISON_OPERATORS:
            column = self.sql_dialect.time_value(column)
            allocate = lambda value: self.sql_dialect.time_value(self.params.allocate(value))  # noqa: E731

        if op in ("set", "notSet"):
            return exp.Not(this=exp.Is(this=column, expression=exp.Null())) if op == "set" else exp.Is(this=column, expression=exp.Null())
        if op in LIKE_OPERATORS:
            negate, leading, trailing = LIKE_OPERATORS[op]
            if not present:
                return self._null_check(column, negate, has_null) if has_null else None
            parts = []
            for value in present:
                pattern: exp.Expression = self.params.allocate(escape_like(value))
                if leading:
                    pattern = self.sql_dialect.concat(exp.Literal.string("%"), pattern)
                if trailing:
                    pattern = self.sql_dialect.concat(pattern, exp.Literal.string("%"))
                like = self.sql_dialect.ilike(column, pattern)
                parts.append(exp.Not(this=like) if negate else like)
            joined = _and(parts) if negate else _or(parts)
            add_null = (not has_null) if negate else has_null
            return exp.Or(this=joined, expression=exp.Is(this=column, expression=exp.Null())) if add_null else joined
        if op in ("equals", "notEquals", "in", "notIn"):
            negate = op in ("notEquals", "notIn")
            multi = op in ("in", "notIn") or len(values) > 1
            if not values:
                raise UserError(f"Values required for filter: {filter_json(condition)}")
            if not multi and has_null:
                return exp.Not(this=exp.Is(this=column, expression=exp.Null())) if negate else exp.Is(this=column, expression=exp.Null())
            if not present:
                null_test = exp.Is(this=column, expression=exp.Null())
                return exp.Not(this=null_test) if negate else null_test
            if multi:
                test: exp.Expression = exp.In(this=column, expressions=[allocate(v) for v in present])
                if negate:
                    test = exp.Not(this=test)
            else:
                placeholder = allocate(present[0])
                test = exp.NEQ(this=column, expression=placeholder) if negate else exp.EQ(this=column, expression=placeholder)
            add_null = (not has_null) if negate else has_null
            return exp.Or(this=test, expression=exp.Is(this=column, expression=exp.Null())) if add_null else test
        if op in ("gt", "gte", "lt", "lte"):
            if not present:
                raise UserError(f"Values required for filter: {filter_json(condition)}")
            node = {"gt": exp.GT, "gte": exp.GTE, "lt": exp.LT, "lte": exp.LTE}[op]
            return node(this=column, expression=allocate(present[0]))
        raise UserError(f"Operator {op} not supported for filter: {filter_json(condition)}")

    def _null_check(self, column: exp.Expression, negate: bool, has_null: bool) -> exp.Expression:
        null_test = exp.Is(this=column, expression=exp.Null())
        return exp.Not(this=null_test) if negate else null_test

    def timestamp_param(self, value: str, string_time: bool) -> exp.Expression:
        """Return a bound UTC timestamp, cast unless the column is text."""
        placeholder = self.params.allocate(value)
        return placeholder if string_time else self.sql_dialect.utc_instant(placeholder)

    def _date(self, op: str, values: list[Any], column: exp.Expression, string_time: bool) -> exp.Expression:
        if not string_time:
            column = self.sql_dialect.time_value(column)
        start = dates.local_to_utc_param(dates.filter_bound(values[0] if values else None, self.timezone, end=False), self.timezone)
        if op in ("beforeDate", "afterDate", "beforeOrOnDate", "afterOrOnDate"):
            node = {"beforeDate": exp.LT, "afterDate": exp.GT, "beforeOrOnDate": exp.LTE, "afterOrOnDate": exp.GTE}[op]
            return node(this=column, expression=self.timestamp_param(start, string_time))
        end_value = values[1] if len(values) > 1 else None
        if op == "onTheDate" and end_value is None:
            end_value = values[0] if values else None
        end = dates.local_to_utc_param(dates.filter_bound(end_value, self.timezone, end=True), self.timezone)
        low, high = self.timestamp_param(start, string_time), self.timestamp_param(end, string_time)
        if op == "notInDateRange":
            return exp.Or(this=exp.LT(this=column, expression=low), expression=exp.GT(this=column, expression=high))
        return exp.And(this=exp.GTE(this=column, expression=low), expression=exp.LTE(this=column, expression=high))

    def range(self, column: exp.Expression, date_range: tuple[str, str], string_time: bool = False) -> exp.Expression:
        """Return the condition of a time dimension's (already normalized) date range."""
        start = dates.local_to_utc_param(date_range[0], self.timezone)
        end = dates.local_to_utc_param(date_range[1], self.timezone)
        column = _paren(column) if string_time else self.sql_dialect.time_value(_paren(column))
        return exp.And(this=exp.GTE(this=column, expression=self.timestamp_param(start, string_time)),
                       expression=exp.LTE(this=column, expression=self.timestamp_param(end, string_time)))


def combine(kind: str, parts: list[exp.Expression]) -> exp.Expression:
    """Return ``parts`` joined with AND (``kind == "and"``) or OR, each parenthesised."""
    wrapped = [exp.Paren(this=p) for p in parts]
    return _and(wrapped) if kind == "and" else _or(wrapped)
