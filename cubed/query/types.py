"""The normalized query: what the request parser produces and the planner consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

GRANULARITIES: tuple[str, ...] = ("second", "minute", "hour", "day", "week", "month", "quarter", "year")
#: Filter operators that take no values.
NO_VALUES_OPERATORS = frozenset({"set", "notSet", "measureFilter"})


@dataclass(frozen=True)
class FilterCondition:
    """One leaf filter: ``member operator values`` (values stringified; None kept for null)."""

    member: str
    operator: str
    values: tuple[str | None, ...] | None = None


@dataclass(frozen=True)
class FilterGroup:
    """An ``and`` / ``or`` group of filters, nested arbitrarily."""

    kind: str  # "and" | "or"
    items: tuple["Filter", ...]


Filter = Union[FilterCondition, FilterGroup]


@dataclass(frozen=True)
class TimeDimension:
    """A time dimension of the query. ``date_range`` holds local wall-clock bounds in the query
    timezone formatted ``YYYY-MM-DDTHH:mm:ss.SSS`` (already resolved from relative strings)."""

    dimension: str
    granularity: str | None = None
    date_range: tuple[str, str] | None = None
    compare_date_range: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class OrderItem:
    """One ORDER BY entry: a member id (or alias) and its direction."""

    id: str
    desc: bool = False


@dataclass(frozen=True)
class Query:
    """A validated, normalized query.

    ``order`` is the explicit order (possibly empty); an empty order means Cube's default
    order. ``echo`` is the normalized query as Cube echoes it back in responses.
    """

    measures: tuple[str, ...] = ()
    dimensions: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    time_dimensions: tuple[TimeDimension, ...] = ()
    filters: tuple[Filter, ...] = ()
    order: tuple[OrderItem, ...] = ()
    limit: int | None = 10000
    offset: int | None = None
    timezone: str = "UTC"
    total: bool = False
    ungrouped: bool = False
    renew_query: bool = False
    response_format: str = "default"
    cache_mode: str = "stale-if-slow"
    echo: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
