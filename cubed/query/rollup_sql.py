"""SQL of rollup pre-aggregations: the query that builds one (per time zone and partition
range) and the query that answers a matched request from its table.

Both come from the planner's SQL builder. The build query selects every dimension, the time
dimension at the rollup's granularity in the build's time zone, every segment as a boolean
column and every measure, named by Cube's aliases (``orders__status``,
``orders__created_at_day``, ``orders__count``), without ORDER BY or LIMIT.

The read query selects from a placeholder table, swapped for the physical table (or a
``UNION ALL`` of the partitions' tables) once the orchestrator knows which tables are built
(:meth:`RollupRead.render`); it re-aggregates measures (count and sum by ``sum``, min by
``min``, max by ``max``; counts over no rows are 0, as computing them from the cube gives),
re-truncates the time column to the query's granularity and filters on rollup columns, date
ranges against local times (the column already is local time in the build's zone).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from sqlglot import exp

from cubed.model.meta import alias_name
from cubed.model.preaggregations import PreAggregation
from cubed.model.schema import Measure, Model
from cubed.query.expressions import quoted
from cubed.query.filters import combine
from cubed.query.members import RenderContext
from cubed.query.sql import RenderedSql, render_sql

PLACEHOLDER_TABLE = "cubed_rollup_source"
_RENDER_MEMO = 8


def logical_table_name(model: Model, pre_aggregation: PreAggregation) -> str:
    """Return a pre-aggregation's table name without schema or version
    (``orders_orders_by_status_daily``: cube and pre-aggregation, or their ``sql_alias``)."""
    cube = model.cubes[pre_aggregation.cube]
    return f"{alias_name(cube.sql_alias or cube.name)}_{alias_name(pre_aggregation.sql_alias or pre_aggregation.name)}"


def column_name(model: Model, path: str) -> str:
    """Return the rollup column of a member path (the alias Cube gives it in queries)."""
    cube = model.cubes[path.partition(".")[0]]
    return alias_name(path, cube.sql_alias)


def time_column_name(model: Model, pre_aggregation: PreAggregation) -> str | None:
    """Return the rollup's time column (``<time dimension alias>_<granularity>``), if any."""
    if pre_aggregation.time_dimension is None:
        return None
    return f"{column_name(model, pre_aggregation.time_dimension)}_{pre_aggregation.granularity}"


def reaggregate(measure: Measure, column: exp.Expression, additive: bool) -> exp.Expression:
    """Return the aggregate that combines a measure's rollup column over rollup rows."""
    if measure.type in ("count", "sum") and additive:
        total: exp.Expression = exp.Sum(this=column)
        if measure.type == "count":
            total = exp.Coalesce(this=total, expressions=[exp.Literal.number(0)])
        return total
    if measure.type == "min":
        return exp.Min(this=column)
    # max, and non-additive measures read where each query group is one rollup row.
    return exp.Max(this=column)


def table_source(tables: Sequence[str], alias: str, dialect: str) -> exp.Expression:
    """Return what a read query selects from: one table, or the UNION ALL of several
    (partitions), under ``alias``."""
    table_alias = exp.TableAlias(this=quoted(alias))
    if len(tables) == 1:
        table = exp.to_table(tables[0], dialect=dialect)
        table.set("alias", table_alias)
        return table
    union: exp.Expression = exp.select(exp.Star()).from_(exp.to_table(tables[0], dialect=dialect))
    for name in tables[1:]:
        union = exp.Union(this=union, expression=exp.select(exp.Star()).from_(exp.to_table(name, dialect=dialect)),
                          distinct=False)
    return exp.Subquery(this=union, alias=table_alias)


@dataclass
class RollupRead:
    """A request answered from a rollup: the pre-aggregation, the time zone its table must
    be built in, the date range the request reads (to pick partitions), and the read SQL
    trees over the placeholder table with their bound values."""

    pre_aggregation: PreAggregation
    timezone: str
    date_range: tuple[str, str] | None
    dialect: str
    table_alias: str
    select: exp.Select
    params: tuple[Any, ...]
    total_select: exp.Select | None = None
    total_params: tuple[Any, ...] = ()
    reasons: Mapping[str, str] = field(default_factory=dict)
    _memo: "OrderedDict[tuple[str, ...], tuple[RenderedSql, RenderedSql | None]]" = field(
        default_factory=OrderedDict, repr=False, compare=False)

    def render(self, tables: Sequence[str]) -> tuple[RenderedSql, RenderedSql | None]:
        """Return the read SQL (and total SQL) over the given tables (schema-qualified),
        from a small memo since the same tables serve many requests."""
        key = tuple(tables)
        found = self._memo.get(key)
        if found is not None:
            return found
        main = render_sql(self._over(self.select, tables), list(self.params), self.dialect)
        total = None
        if self.total_select is not None:
            total = render_sql(self._over(self.total_select, tables), list(self.total_params), self.dialect)
        self._memo[key] = (main, total)
        while len(self._memo) > _RENDER_MEMO:
            self._memo.popitem(last=False)
        return main, total

    def _over(self, tree: exp.Select, tables: Sequence[str]) -> exp.Select:
        copy = tree.copy()
        for node in list(copy.find_all(exp.Table)):
            if node.name == PLACEHOLDER_TABLE:
                node.replace(table_source(tables, self.table_alias, self.dialect))
        return copy


def read_builder_class(base: type) -> type:
    """Return the read-query builder: the planner's SQL builder (``base``) reading members
    from rollup columns. Made from the planner's class to keep one way of shaping queries."""

    class RollupReadBuilder(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, pre_aggregation: PreAggregation, additive: bool, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.pre_aggregation = pre_aggregation
            self.table_alias = alias_name(pre_aggregation.id)
            substitutes: dict[str, exp.Expression] = {}
            for path in pre_aggregation.dimensions + pre_aggregation.segments:
                substitutes[path] = self._column(column_name(self.model, path))
            for path in pre_aggregation.measures:
                cube_name, _, name = path.partition(".")
                measure = self.model.cubes[cube_name].measures[name]
                substitutes[path] = reaggregate(measure, self._column(column_name(self.model, path)), additive)
            self.context = RenderContext(substitutes=substitutes)
            time_column = time_column_name(self.model, pre_aggregation)
            self.time_column = self._column(time_column) if time_column else None

        def _column(self, name: str) -> exp.Expression:
            return exp.column(name, quoted=True)

        def _time_sql(self, td: Any, ctx: RenderContext) -> exp.Expression:
            assert self.time_column is not None
            return self.sql_dialect.truncate(self.time_column.copy(), td.query.granularity)

        def _where_conditions(self, ctx: RenderContext, time_ranges: bool = True) -> list[exp.Expression]:
            conditions: list[exp.Expression] = []
            for td in self.m.time_dimensions:
                if td.query.date_range and time_ranges:
                    assert self.time_column is not None
                    low = self.sql_dialect.local_timestamp(self.params.allocate(td.query.date_range[0]))
                    high = self.sql_dialect.local_timestamp(self.params.allocate(td.query.date_range[1]))
                    conditions.append(exp.And(this=exp.GTE(this=self.time_column.copy(), expression=low),
                                              expression=exp.LTE(this=self.time_column.copy(), expression=high)))
            for segment in self.m.segments:
                conditions.append(self.renderer.segment_sql(segment, ctx))
            for item in self.m.dimension_filters:
                condition = self._filter(item, ctx, measure=False)
                if condition is not None:
                    conditions.append(condition)
            return conditions

        def build(self) -> exp.Select:
            ctx = self.context
            selects = self._dimension_selects(ctx)
            selects += [exp.alias_(self.renderer.measure_sql(m, ctx), quoted(self._alias(m.path)), copy=False)
                        for m in self.m.measures]
            source = exp.to_table(PLACEHOLDER_TABLE)
            select = exp.select(*selects, copy=False).from_(source, copy=False)
            select = self._where(select, self._where_conditions(ctx))
            select = self._group_by(select, len(self.dimension_aliases), False)
            having = self._measure_filter_conditions(ctx)
            if having:
                select = select.having(combine("and", having), copy=False)
            return self._order_limit(select)

    return RollupReadBuilder


def total_of(inner: exp.Select) -> exp.Select:
    """Return ``SELECT count(*) "total_count" FROM (<inner>) "original_query"``."""
    return exp.select(exp.Count(this=exp.Star()).as_(quoted("total_count"), copy=False), copy=False).from_(
        exp.Subquery(this=inner, alias=exp.TableAlias(this=quoted("original_query"))), copy=False)
