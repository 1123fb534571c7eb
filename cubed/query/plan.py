"""Query + Model -> QueryPlan: member resolution, join tree, fan-out analysis, and the SQL
tree (Cube's BaseQuery), rendered per dialect by cubed/query/sql.py.

Shapes, as Cube builds them:
- simple: ``SELECT dims, measures FROM root LEFT JOIN ... WHERE ... GROUP BY ... HAVING ...``
- fan-out: measures of cubes the join tree multiplies are computed over a ``keys`` sub-query
  of distinct (dimensions, primary key) joined back to the cube, one sub-query per such cube,
  the rest in a ``main`` sub-query; the sub-queries are joined on the dimensions and measure
  filters become an outer WHERE.
"""
from __future__ import annotations

import zoneinfo

import sqlglot
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlglot import exp

from cubed.errors import CompileError, UserError
from cubed.model.joins import JoinGraph, JoinTree
from cubed.model.meta import alias_name
from cubed.model.templates import FILTER_PARAMS
from cubed.model.schema import ADDITIVE_MEASURE_TYPES, Dimension, Measure, Model, Segment
from cubed.query import dates
from cubed.query.filters import FilterBuilder, ParamAllocator, combine, filter_json
from cubed.query.dialects import SqlDialect, dialect_for
from cubed.query.expressions import and_all, paren, quoted
from cubed.query.security import render_security_context, splice_in_lists
from cubed.query.members import MemberRenderer, RenderContext, member_cubes, referenced_cubes, subquery_dimensions
from cubed.query.rollup_sql import RollupRead, logical_table_name, read_builder_class, total_of
from cubed.query.rollups import find_rollup, leaf_measures, query_shape
from cubed.query.sql import RenderedSql, render_sql
from cubed.query.types import NO_VALUES_OPERATORS, FilterCondition, FilterGroup, OrderItem, Query, TimeDimension

KEYS_ALIAS = "keys"
# A rolling window's date series is part of the SQL text: beyond this many periods (the
# default query row limit) the query is refused instead of building a text of megabytes
# on the reactor thread (Cube would try).
MAX_SERIES_PERIODS = 50000
IANA_ZONES = frozenset(zoneinfo.available_timezones()) | {"UTC"}


@dataclass(frozen=True)
class SelectedColumn:
    """One column of the result: its SQL alias and the member it answers
    (``Orders.createdAt.day`` for a time dimension with granularity)."""

    alias: str
    member: str
    kind: str  # measure | dimension | time


@dataclass(frozen=True)
class QueryPlan:
    """Everything needed to run one normalized query and shape its answer."""

    query: Query
    data_source: str
    db_type: str
    dialect: str
    sql: RenderedSql
    columns: tuple[SelectedColumn, ...]
    order: tuple[OrderItem, ...]
    cubes: tuple[str, ...]
    total_sql: RenderedSql | None = None
    time_dimension_alias: str | None = None
    time_dimension_field: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    rollup: RollupRead | None = None
    # Why each pre-aggregation of the query's cubes could not answer it (dev-mode /v1/sql).
    rollup_reasons: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def alias_to_member(self) -> dict[str, str]:
        """Return Cube's ``aliasNameToMember`` map (measures, dimensions, time dimensions)."""
        ordered = [c for c in self.columns if c.kind == "measure"] + [c for c in self.columns if c.kind != "measure"]
        return {c.alias: c.member for c in ordered}


@dataclass(frozen=True)
class BuildSelect:
    """The SELECT that builds a pre-aggregation's table, with its bound values and dialect."""

    tree: exp.Select
    params: tuple[Any, ...]
    dialect: str

    def render(self, wrap: Any = None) -> RenderedSql:
        """Return the SELECT rendered, or ``wrap(select)`` (a CREATE TABLE around it)."""
        tree = self.tree.copy()
        return render_sql(wrap(tree) if wrap is not None else tree, list(self.params), self.dialect)


@dataclass(frozen=True)
class _TimeDim:
    query: TimeDimension
    dimension: Dimension


@dataclass
class _Members:
    """The query's members resolved against the model, in Cube's collection order."""

    measures: list[Measure]
    dimensions: list[Dimension]
    segments: list[Segment]
    time_dimensions: list[_TimeDim]
    dimension_filters: list[Any]  # FilterCondition | FilterGroup on dimensions/segments
    measure_filters: list[Any]    # on measures (HAVING)


@dataclass
class _Classified:
    """The measures a query computes, by how they are computed."""

    regular: list[Measure]
    multiplied: dict[str, list[Measure]]
    cumulative: list[tuple[Measure, bool]]
    composite: list[Measure]


class QueryPlanner:
    """Plans queries against one compiled model for one data source dialect."""

    def __init__(self, model: Model, joins: JoinGraph, dialect_for: Any, db_type_for: Any,
                 pre_aggregations_schema: str = "prod_pre_aggregations") -> None:
        self.model = model
        self.joins = joins
        self.dialect_for = dialect_for
        self.db_type_for = db_type_for
        self.pre_aggregations_schema = pre_aggregations_schema
        self._read_builder = read_builder_class(_SqlBuilder)

    # -- member resolution ---------------------------------------------------------------
    def _by_path(self, kind: str, path: str) -> Any:
        cube_name, _, name = path.partition(".")
        cube = self.model.cubes.get(cube_name)
        if cube is None:
            raise CompileError(f"Cube '{cube_name}' not found for path '{path}'")
        # A YAML cube always has its member collections (empty ones too): Cube's
        # "<kind> not defined for path" comes only from JavaScript models without them.
        member = getattr(cube, kind).get(name)
        if member is None:
            raise CompileError(f"'{name}' not found for path '{path}'")
        return member

    def _is_measure(self, path: str) -> bool:
        cube_name, _, name = path.partition(".")
        cube = self.model.cubes.get(cube_name)
        return bool(cube and name in cube.measures)

    def _split_filters(self, filters: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        dimension_filters, measure_filters = [], []
        for item in filters:
            if isinstance(item, FilterGroup):
                leaves = list(_leaves(item))
                kinds = {self._is_measure(leaf.member) for leaf in leaves}
                if len(kinds) > 1:
                    raise CompileError(f"You cannot use dimension and measure in same condition: {group_json(item)}")
                if kinds == {True}:
                    measure_filters.append(item)
                else:
                    dimension_filters.append(item)
            elif self._is_measure(item.member) and item.operator != "measureFilter":
                measure_filters.append(item)
            else:
                dimension_filters.append(item)
        return dimension_filters, measure_filters

    def _resolve(self, query: Query) -> _Members:
        dimension_filters, measure_filters = self._split_filters(query.filters)
        measures = [self._by_path("measures", m) for m in query.measures]
        dimensions = [self._dimension_or_segment(d) for d in query.dimensions]
        segments = [self._by_path("segments", s) for s in query.segments]
        for item in dimension_filters:
            for leaf in _leaves(item):
                if leaf.operator == "measureFilter":
                    self._by_path("measures", leaf.member)
                elif not self._segment_exists(leaf.member):
                    self._by_path("dimensions", leaf.member)
        for item in measure_filters:
            for leaf in _leaves(item):
                self._by_path("measures", leaf.member)
        time_dimensions = [_TimeDim(td, self._dimension_or_segment(td.dimension)) for td in query.time_dimensions]
        for item in query.filters:
            for leaf in _leaves(item):
                if not leaf.values and leaf.operator not in NO_VALUES_OPERATORS:
                    # Cube 0.32.7 fails later with a 500 (or drops the filter); newer Cube's 400.
                    raise UserError(f"Values required for filter: {filter_json(leaf)}")
        return _Members(measures, dimensions, segments, time_dimensions, dimension_filters, measure_filters)

    def _dimension_or_segment(self, path: str) -> Dimension:
        """Return the dimension at ``path``; a segment there is taken as a dimension of its
        SQL, as Cube resolves it: selected, it has no annotation, so rows of it are refused
        as a hidden member (and no rows are not), and as a time dimension with neither
        granularity nor date range it changes nothing."""
        cube_name, _, name = path.partition(".")
        cube = self.model.cubes.get(cube_name)
        segment = cube.segments.get(name) if cube is not None and name not in cube.dimensions else None
        if segment is None:
            return self._by_path("dimensions", path)
        return Dimension(cube=segment.cube, name=segment.name, type="string", sql=segment.sql, public=False,
                         alias_of=segment.alias_of, join_path=segment.join_path)

    def _segment_exists(self, path: str) -> bool:
        cube_name, _, name = path.partition(".")
        cube = self.model.cubes.get(cube_name)
        return bool(cube and name in cube.segments)

    def _join_hints(self, members: _Members, join_paths: dict[str, tuple[str, ...]]) -> list[Any]:
        hints: list[Any] = []

        def add(path: str) -> None:
            cube_name, _, name = path.partition(".")
            join_path = join_paths.get(path)
            if join_path and len(join_path) > 1 and join_path not in hints:
                hints.append(join_path)
            for cube in member_cubes(self.model, cube_name, name):
                if cube not in hints and not (join_path and cube in join_path):
                    hints.append(cube)

        for m in members.measures:
            add(m.path)
        for d in members.dimensions:
            add(d.path)
        for s in members.segments:
            add(s.path)
        for item in members.dimension_filters + members.measure_filters:
            for leaf in _leaves(item):
                add(leaf.member)
        for td in members.time_dimensions:
            add(td.dimension.path)
        return hints

    # -- planning ------------------------------------------------------------------------
    def _unview(self, query: Query) -> tuple[Query, dict[str, str], dict[str, tuple[str, ...]]]:
        """Return the query with view members replaced by the cube members they expose, the
        exposed name of each, and each one's join path."""
        exposed: dict[str, str] = {}
        join_paths: dict[str, tuple[str, ...]] = {}

        def swap(path: str) -> str:
            cube_name, _, name = path.partition(".")
            cube = self.model.cubes.get(cube_name)
            if cube is None or not cube.is_view:
                return path
            member = cube.measures.get(name) or cube.dimensions.get(name) or cube.segments.get(name)
            if member is None or member.alias_of is None:
                return path  # unknown: reported with the name the client used
            previous = exposed.get(member.alias_of)
            if previous is not None and previous != path:
                raise CompileError(f"'{path}' and '{previous}' expose the same member {member.alias_of}: query one of them")
            exposed[member.alias_of] = path
            join_paths[member.alias_of] = member.join_path
            return member.alias_of

        def swap_filter(item: Any) -> Any:
            if isinstance(item, FilterGroup):
                return FilterGroup(item.kind, tuple(swap_filter(child) for child in item.items))
            return replace(item, member=swap(item.member))

        names = list(query.measures) + list(query.dimensions) + list(query.segments)
        names += [td.dimension for td in query.time_dimensions] + [leaf.member for f in query.filters for leaf in _leaves(f)]
        if not any(self.model.cubes.get(n.partition(".")[0]) is not None and self.model.cubes[n.partition(".")[0]].is_view
                   for n in names):
            return query, exposed, join_paths
        rewritten = replace(
            query,
            measures=tuple(swap(m) for m in query.measures),
            dimensions=tuple(swap(d) for d in query.dimensions),
            segments=tuple(swap(s) for s in query.segments),
            time_dimensions=tuple(replace(td, dimension=swap(td.dimension)) for td in query.time_dimensions),
            filters=tuple(swap_filter(f) for f in query.filters),
        )
        return rewritten, exposed, join_paths

    def plan(self, query: Query, security_context: Mapping[str, Any] | None = None,
             rollups: bool = True) -> QueryPlan:
        """Return the QueryPlan of a normalized query for a request's security context (read
        from a rollup when one matches, unless ``rollups`` is False); CompileError/UserError
        for bad queries."""
        planned, exposed, join_paths = self._unview(query)
        members = self._resolve(planned)
        hints = self._join_hints(members, join_paths)
        if not hints:
            raise UserError("Query should contain either measures, dimensions or timeDimensions with granularities in order to be valid")
        data_sources = []
        for cube_name in dict.fromkeys(c for h in hints for c in (h if isinstance(h, tuple) else (h,))):
            source = self.model.cubes[cube_name].data_source
            if source not in data_sources:
                data_sources.append(source)
        if len(data_sources) > 1:
            raise CompileError(
                "To join across data sources use rollupJoin with Cube Store. If rollupJoin is defined, this error "
                "indicates it doesn't match the query. Please use Rollup Designer to verify it's definition. "
                f"Found data sources: {', '.join(data_sources)}"
            )
        data_source = data_sources[0]
        dialect = self.dialect_for(data_source)
        tree = self.joins.build(tuple(hints))
        if query.ungrouped:
            self._check_ungrouped(tree, members)
        reasons: dict[str, str] = {}
        if rollups and self.model.pre_aggregations and not query.ungrouped:
            rollup_plan = self._rollup_plan(query, planned, members, tree, exposed, data_source, dialect,
                                            security_context, reasons)
            if rollup_plan is not None:
                return rollup_plan
        builder = _SqlBuilder(self.model, tree, members, planned, dialect, self.joins, exposed=exposed,
                              security_context=security_context)
        order = builder.order
        select = splice_in_lists(builder.build())
        rendered = render_sql(select, builder.params.values, dialect)
        total_sql = None
        if query.total:
            total_builder = _SqlBuilder(self.model, tree, members, planned, dialect, self.joins, total=True,
                                        exposed=exposed, security_context=security_context)
            inner = splice_in_lists(total_builder.build())
            total_tree = exp.select(exp.Count(this=exp.Star()).as_(quoted("total_count"), copy=False), copy=False).from_(
                exp.Subquery(this=inner, alias=exp.TableAlias(this=quoted("original_query"))), copy=False)
            total_sql = render_sql(total_tree, total_builder.params.values, dialect)
        first_td = next((td for td in members.time_dimensions if td.query.granularity), None)
        return QueryPlan(
            query=query, data_source=data_source, db_type=self.db_type_for(data_source), dialect=dialect,
            sql=rendered, columns=tuple(builder.columns), order=order, cubes=tuple(tree.cubes),
            total_sql=total_sql,
            time_dimension_alias=builder.time_alias(first_td) if first_td else None,
            time_dimension_field=builder.public(first_td.query.dimension) if first_td else None,
            rollup_reasons=reasons,
        )

    def _rollup_plan(self, query: Query, planned: Query, members: _Members, tree: JoinTree, exposed: dict[str, str],
                     data_source: str, dialect: str, security_context: Mapping[str, Any] | None,
                     reasons: dict[str, str]) -> QueryPlan | None:
        """Return the plan reading the first rollup that can answer the query, or None (with
        why each candidate could not in ``reasons``)."""
        measures = list(members.measures)
        for item in members.measure_filters:
            for leaf in _leaves(item):
                cube_name, _, name = leaf.member.partition(".")
                measure = self.model.cubes[cube_name].measures[name]
                if measure not in measures:
                    measures.append(measure)
        # Stricter than Cube: a count turned into count(distinct key) by a fan-out is not
        # summable across rollup rows either (Cube would double count it).
        multiplied = any(leaf.cube in tree.multiplied for m in measures for leaf in leaf_measures(self.model, m))
        shape = query_shape(
            self.model, list(members.measures), [d.path for d in members.dimensions], [s.path for s in members.segments],
            [(td.dimension.path, td.query.granularity, td.query.date_range) for td in members.time_dimensions],
            members.dimension_filters, members.measure_filters, multiplied)
        pre_aggregation, found_reasons = find_rollup(self.model, tree.cubes, shape)
        reasons.update(found_reasons)
        if pre_aggregation is None:
            return None
        additive = shape.leaf_measures_additive and not multiplied
        builder = self._read_builder(self.model, tree, members, planned, dialect, self.joins, exposed=exposed,
                                     security_context=security_context, pre_aggregation=pre_aggregation,
                                     additive=additive)
        select = splice_in_lists(builder.build())
        total_select, total_params = None, ()
        if query.total:
            total_builder = self._read_builder(self.model, tree, members, planned, dialect, self.joins, total=True,
                                               exposed=exposed, security_context=security_context,
                                               pre_aggregation=pre_aggregation, additive=additive)
            total_select = total_of(splice_in_lists(total_builder.build()))
            total_params = tuple(total_builder.params.values)
        ranges = [td.query.date_range for td in members.time_dimensions
                  if td.query.date_range and td.dimension.path == pre_aggregation.time_dimension]
        date_range = (max(r[0] for r in ranges), min(r[1] for r in ranges)) if ranges else None
        read = RollupRead(pre_aggregation=pre_aggregation, timezone=query.timezone, date_range=date_range,
                          dialect=dialect, table_alias=builder.table_alias, select=select,
                          params=tuple(builder.params.values), total_select=total_select, total_params=total_params,
                          reasons=dict(reasons))
        logical = f"{self.pre_aggregations_schema}.{logical_table_name(self.model, pre_aggregation)}"
        rendered, total_sql = read.render([logical])
        first_td = next((td for td in members.time_dimensions if td.query.granularity), None)
        return QueryPlan(
            query=query, data_source=data_source, db_type=self.db_type_for(data_source), dialect=dialect,
            sql=rendered, columns=tuple(builder.columns), order=builder.order, cubes=tuple(tree.cubes),
            total_sql=total_sql,
            time_dimension_alias=builder.time_alias(first_td) if first_td else None,
            time_dimension_field=builder.public(first_td.query.dimension) if first_td else None,
            rollup=read, rollup_reasons=reasons,
        )

    def plan_rollup_build(self, pre_aggregation: Any, timezone: str, date_range: tuple[str, str] | None = None,
                          security_context: Mapping[str, Any] | None = None) -> "BuildSelect":
        """Return the SELECT that builds a rollup's table in ``timezone`` (one partition when
        ``date_range`` is given: local bounds of the time dimension) for a security context
        (``SECURITY_CONTEXT`` in the cubes' SQL becomes bound values, as in a query)."""
        if pre_aggregation.type == "original_sql":
            return self._original_sql_select(pre_aggregation, security_context)
        time_dimensions: tuple[TimeDimension, ...] = ()
        if pre_aggregation.time_dimension is not None:
            time_dimensions = (TimeDimension(pre_aggregation.time_dimension, pre_aggregation.granularity, date_range),)
        query = Query(measures=pre_aggregation.measures, dimensions=pre_aggregation.dimensions,
                      segments=pre_aggregation.segments, time_dimensions=time_dimensions, limit=None,
                      timezone=timezone)
        members = self._resolve(query)
        hints = self._join_hints(members, {})
        tree = self.joins.build(tuple(hints))
        dialect = self.dialect_for(self.model.cubes[pre_aggregation.cube].data_source)
        builder = _SqlBuilder(self.model, tree, members, query, dialect, self.joins, ordered=False,
                              segment_columns=True, security_context=security_context)
        return BuildSelect(splice_in_lists(builder.build()), tuple(builder.params.values), dialect)

    def _original_sql_select(self, pre_aggregation: Any, security_context: Mapping[str, Any] | None) -> "BuildSelect":
        """Return ``SELECT * FROM <the cube's sql>``: an original_sql pre-aggregation."""
        cube_name = pre_aggregation.cube
        dialect = self.dialect_for(self.model.cubes[cube_name].data_source)
        params = ParamAllocator()
        renderer = MemberRenderer(self.model, dialect_for(dialect),
                                  context_reference=_security_reference(security_context, params, dialect))
        select = exp.select(exp.Star(), copy=False).from_(renderer.from_item(cube_name, RenderContext()), copy=False)
        return BuildSelect(splice_in_lists(select), tuple(params.values), dialect)

    def plan_rollup_bounds(self, pre_aggregation: Any, timezone: str,
                           security_context: Mapping[str, Any] | None = None) -> RenderedSql:
        """Return ``SELECT min(t), max(t)`` of a rollup's time dimension as local time in
        ``timezone`` (the range its partitions cover when it has no build range), over the
        rows of a security context."""
        cube_name = pre_aggregation.time_dimension.partition(".")[0]
        dialect = self.dialect_for(self.model.cubes[cube_name].data_source)
        sql_dialect = dialect_for(dialect)
        params = ParamAllocator()
        renderer = MemberRenderer(self.model, sql_dialect,
                                  context_reference=_security_reference(security_context, params, dialect))
        ctx = RenderContext()
        dimension = self._by_path("dimensions", pre_aggregation.time_dimension)
        local = sql_dialect.in_zone(renderer.dimension_sql(dimension, ctx), timezone)
        select = exp.select(exp.Min(this=local), exp.Max(this=local.copy()), copy=False).from_(
            renderer.from_item(cube_name, ctx), copy=False)
        return render_sql(splice_in_lists(select), params.values, dialect)

    def _check_ungrouped(self, tree: JoinTree, members: _Members) -> None:
        selected = {d.path for d in members.dimensions}
        missing = []
        for cube_name in tree.cubes:
            cube = self.model.cubes[cube_name]
            if not cube.primary_keys:
                raise CompileError(f"One or more Primary key is required for '{cube_name}'")
            missing += [f"{cube_name}.{k}" for k in cube.primary_keys if f"{cube_name}.{k}" not in selected]
        if missing:
            names = ", ".join(f"'{m}'" for m in missing)
            raise CompileError(
                f"Ungrouped query requires primary keys to be present in dimensions: {names}. "
                "Pass allowUngroupedWithoutPrimaryKey option to disable this check."
            )
        if members.measure_filters:
            raise CompileError("Measure filters aren't allowed in ungrouped query")


def _security_reference(security_context: Mapping[str, Any] | None, params: ParamAllocator,
                        dialect: str) -> Callable[[str, str, RenderContext], exp.Expression]:
    """Return the context-reference renderer of SQL built outside a query (a pre-aggregation's
    original SQL, its time bounds): ``SECURITY_CONTEXT`` only, as bound values in ``params``."""
    def reference(text: str, cube_name: str, ctx: RenderContext) -> exp.Expression:
        if text.startswith("SECURITY_CONTEXT."):
            return render_security_context(text, security_context or {}, params, dialect)
        raise CompileError(f"{text.partition('.')[0]} cannot be used here ({cube_name})")

    return reference


def _leaves(item: Any) -> Iterable[FilterCondition]:
    if isinstance(item, FilterGroup):
        for child in item.items:
            yield from _leaves(child)
    else:
        yield item


def group_json(item: Any) -> str:
    """Return a filter (leaf or group) as Cube's JSON.stringify shows it."""
    if isinstance(item, FilterGroup):
        inner = ",".join(group_json(child) for child in item.items)
        return f'{{"{item.kind}":[{inner}]}}'
    return filter_json(item)


class _SqlBuilder:
    """Builds the SELECT tree of one query (or of its total count when ``total``)."""

    def __init__(self, model: Model, tree: JoinTree, members: _Members, query: Query, dialect: str,
                 joins: JoinGraph, total: bool = False, params: ParamAllocator | None = None,
                 alias_prefix: str | None = None, ordered: bool = True,
                 exposed: dict[str, str] | None = None, security_context: Mapping[str, Any] | None = None,
                 segment_columns: bool = False) -> None:
        self.model = model
        # Date series by (start, end, granularity): each rolling measure reads its bounds and
        # the series table its periods; up to MAX_SERIES_PERIODS each, built once.
        self._series_memo: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
        # A rollup's build query selects segments as boolean columns instead of filtering.
        self.segment_columns = segment_columns
        self.security_context = security_context or {}
        self.joins = joins
        self.exposed = exposed or {}
        self.tree = tree
        self.m = members
        self.query = query
        self.dialect = dialect
        self.total = total
        self.alias_prefix = alias_prefix
        self.ordered = ordered
        self.sql_dialect: SqlDialect = dialect_for(dialect)
        self.params = params or ParamAllocator()
        self.filters = FilterBuilder(self.params, query.timezone, self.sql_dialect)
        self.renderer = MemberRenderer(model, self.sql_dialect, tree.multiplied, query.ungrouped,
                                       context_reference=self._context_reference)
        self.columns: list[SelectedColumn] = []
        for d in members.dimensions:
            self.columns.append(SelectedColumn(self._alias(d.path), self.public(d.path), "dimension"))
        for td in members.time_dimensions:
            if td.query.granularity:
                self.columns.append(SelectedColumn(self.time_alias(td), f"{self.public(td.dimension.path)}.{td.query.granularity}", "time"))
        if segment_columns:
            for segment in members.segments:
                self.columns.append(SelectedColumn(self._alias(segment.path), segment.path, "segment"))
        for measure in members.measures:
            self.columns.append(SelectedColumn(self._alias(measure.path), self.public(measure.path), "measure"))
        self.order = self._effective_order()
        # A sub_query dimension's own sub-query computes it as a measure: skip that one.
        paths = [m.path for m in members.measures if m.name in model.cubes[m.cube].measures]
        paths += [d.path for d in members.dimensions]
        paths += [s.path for s in members.segments] + [td.dimension.path for td in members.time_dimensions]
        for item in members.dimension_filters + members.measure_filters:
            paths += [leaf.member for leaf in _leaves(item)]
        self.subquery_dimensions = subquery_dimensions(model, paths)

    # -- pieces --------------------------------------------------------------------------
    def _context_reference(self, text: str, cube_name: str, ctx: RenderContext) -> exp.Expression:
        """Return the SQL of a context variable in a template: ``FILTER_PARAMS`` renders the
        query's own filters on a dimension against the given column (``1 = 1`` without any);
        ``SECURITY_CONTEXT`` the request's security context (cubed/query/security.py)."""
        if text.startswith("SECURITY_CONTEXT."):
            return render_security_context(text, self.security_context, self.params, self.dialect)
        match = FILTER_PARAMS.match(text)
        if match is None:
            raise CompileError(f"{{{text}}} is not supported in {cube_name}")
        path = f"{match.group(1)}.{match.group(2)}"
        column = sqlglot.parse_one(match.group(4), read=self.dialect)
        conditions: list[exp.Expression] = []
        for td in self.m.time_dimensions:
            if td.dimension.path == path and td.query.date_range:
                conditions.append(self.filters.range(column.copy(), td.query.date_range))
        for item in self.m.dimension_filters:
            if isinstance(item, FilterCondition) and item.member == path and item.operator not in ("set", "notSet", "measureFilter"):
                condition = self.filters.condition(item, column.copy())
                if condition is not None:
                    conditions.append(condition)
        if not conditions:
            return exp.EQ(this=exp.Literal.number(1), expression=exp.Literal.number(1))
        return exp.Paren(this=and_all([exp.Paren(this=c) for c in conditions]))

    @property
    def dimension_aliases(self) -> list[str]:
        return [c.alias for c in self.columns if c.kind != "measure"]

    def _dimension_selects(self, ctx: RenderContext) -> list[exp.Expression]:
        selects: list[exp.Expression] = []
        for d in self.m.dimensions:
            selects.append(exp.alias_(self.renderer.dimension_sql(d, ctx), quoted(self._alias(d.path)), copy=False))
        for td in self.m.time_dimensions:
            if td.query.granularity:
                selects.append(exp.alias_(self._time_sql(td, ctx), quoted(self.time_alias(td)), copy=False))
        if self.segment_columns:
            for segment in self.m.segments:
                selects.append(exp.alias_(self.renderer.segment_sql(segment, ctx), quoted(self._alias(segment.path)),
                                          copy=False))
        return selects

    def public(self, path: str) -> str:
        """Return the name the client used for a member (a view's member, or the member)."""
        return self.exposed.get(path, path)

    def _alias(self, path: str) -> str:
        public = self.public(path)
        cube = self.model.cubes[public.partition(".")[0]]
        return alias_name(public, cube.sql_alias)

    def time_alias(self, td: _TimeDim) -> str:
        """Return the SQL alias of a time dimension's column (``<dimension alias>_<granularity>``)."""
        return f"{self._alias(td.dimension.path)}_{td.query.granularity}"

    def _in_query_zone(self, value: exp.Expression) -> exp.Expression:
        """Return ``value`` (a UTC instant) as local time in the query's zone."""
        # The zone is inlined as Cube does (it counts in /v1/sql's params otherwise); it is
        # safe as a literal only because it was checked against the IANA database.
        if self.query.timezone not in IANA_ZONES:
            raise UserError(f"Invalid time zone: {self.query.timezone}")
        return self.sql_dialect.in_zone(value, self.query.timezone)

    def _converted(self, td: _TimeDim, ctx: RenderContext) -> exp.Expression:
        return self._in_query_zone(self.renderer.dimension_sql(td.dimension, ctx))

    def _time_sql(self, td: _TimeDim, ctx: RenderContext) -> exp.Expression:
        converted = self._converted(td, ctx)
        if ctx.ungrouped:
            return converted
        granularity = ctx.granularity_override or td.query.granularity
        return self.sql_dialect.truncate(converted, granularity)

    def _where_conditions(self, ctx: RenderContext, time_ranges: bool = True) -> list[exp.Expression]:
        conditions: list[exp.Expression] = []
        for td in self.m.time_dimensions:
            if td.query.date_range and time_ranges:
                column = self.renderer.dimension_sql(td.dimension, ctx)
                conditions.append(self.filters.range(column, td.query.date_range, td.dimension.field_type == "string"))
        if not self.segment_columns:
            for segment in self.m.segments:
                conditions.append(self.renderer.segment_sql(segment, ctx))
        for item in self.m.dimension_filters:
            condition = self._filter(item, ctx, measure=False)
            if condition is not None:
                conditions.append(condition)
        return conditions

    def _filter(self, item: Any, ctx: RenderContext, measure: bool) -> exp.Expression | None:
        if isinstance(item, FilterGroup):
            parts = [p for p in (self._filter(child, ctx, measure) for child in item.items) if p is not None]
            return combine(item.kind, parts) if parts else None
        cube_name, _, name = item.member.partition(".")
        cube = self.model.cubes[cube_name]
        if item.operator == "measureFilter":
            target = cube.measures.get(name)
            if target is None or not target.filters:
                return None
            parts = [paren(self.renderer.resolve(f, cube_name, ctx)) for f in target.filters]
            return combine("and", parts) if len(parts) > 1 else parts[0]
        string_time = False
        member_type = None
        if measure:
            column = self.renderer.measure_sql(cube.measures[name], ctx)
            member_type = cube.measures[name].type
        elif name in cube.segments:
            column = self.renderer.segment_sql(cube.segments[name], ctx)
        else:
            dimension = cube.dimensions[name]
            column = self.renderer.dimension_sql(dimension, ctx)
            string_time = dimension.field_type == "string"
            member_type = dimension.type
        return self.filters.condition(item, column, string_time, member_type)

    def _measure_filter_conditions(self, ctx: RenderContext) -> list[exp.Expression]:
        return [c for c in (self._filter(item, ctx, measure=True) for item in self.m.measure_filters) if c is not None]

    def _from(self, select: exp.Select, ctx: RenderContext, tree: JoinTree | None = None) -> exp.Select:
        tree = tree or self.tree
        select = select.from_(self.renderer.from_item(tree.root, ctx), copy=False)
        select = self._subquery_joins(select, tree.root, ctx)
        for join in tree.joins:
            on = self.renderer.resolve(join.sql, join.source, ctx)
            select = select.join(self.renderer.from_item(join.target, ctx), on=on, join_type="left", copy=False)
            select = self._subquery_joins(select, join.target, ctx)
        return select

    def _subquery_joins(self, select: exp.Select, cube_name: str, ctx: RenderContext) -> exp.Select:
        """Return ``select`` with the sub-queries of the cube's ``sub_query`` dimensions joined
        on its primary key (Cube's subQueryJoin)."""
        for dimension in self.subquery_dimensions:
            if dimension.cube != cube_name:
                continue
            prefix = f"{dimension.cube}_{dimension.name}_subquery"
            alias = alias_name(prefix)
            cube = self.model.cubes[cube_name]
            if not cube.primary_keys:
                raise CompileError(f"One or more Primary key is required for '{cube_name}'")
            subquery = self._subquery_for_dimension(dimension, prefix)
            on = and_all([exp.EQ(this=exp.column(self._alias(f"{cube_name}.{key}"), table=alias, quoted=True),
                                 expression=self.renderer.dimension_sql(cube.dimensions[key], ctx))
                          for key in cube.primary_keys])
            select = select.join(exp.Subquery(this=subquery, alias=exp.TableAlias(this=quoted(alias))),
                                 on=on, join_type="left", copy=False)
        return select

    def _subquery_for_dimension(self, dimension: Dimension, prefix: str) -> exp.Select:
        """Return the per-primary-key sub-query computing a ``sub_query`` dimension's SQL
        (a measure expression, usually over another cube)."""
        if dimension.sql is None:
            raise CompileError(f"Sub query dimension {dimension.path} needs sql")
        measure = Measure(cube=dimension.cube, name=dimension.name, type="number", sql=dimension.sql)
        cube = self.model.cubes[dimension.cube]
        keys = [cube.dimensions[k] for k in cube.primary_keys]
        hints = [c for c in referenced_cubes(self.model, dimension.cube, dimension.sql)]
        if dimension.cube not in hints:
            hints.append(dimension.cube)
        filters: list[Any] = []
        segments: list[Segment] = []
        time_dimensions: list[_TimeDim] = []
        if dimension.propagate_filters_to_sub_query:
            # The query's own filters apply inside, except those on sub-query dimensions.
            subquery_paths = {d.path for d in self.subquery_dimensions}
            filters = [f for f in self.m.dimension_filters
                       if not any(leaf.member in subquery_paths for leaf in _leaves(f))]
            segments = list(self.m.segments)
            time_dimensions = [_TimeDim(TimeDimension(td.query.dimension, None, td.query.date_range), td.dimension)
                               for td in self.m.time_dimensions if td.query.date_range]
            for path in [leaf.member for f in filters for leaf in _leaves(f)] + [s.path for s in segments] + \
                    [td.dimension.path for td in time_dimensions]:
                cube_name, _, name = path.partition(".")
                for extra in member_cubes(self.model, cube_name, name):
                    if extra not in hints:
                        hints.append(extra)
        tree = self.joins.build(tuple(hints))
        members = _Members(measures=[measure], dimensions=keys, segments=segments, time_dimensions=time_dimensions,
                           dimension_filters=filters, measure_filters=[])
        inner_query = Query(dimensions=tuple(k.path for k in keys), limit=None, timezone=self.query.timezone)
        builder = _SqlBuilder(self.model, tree, members, inner_query, self.dialect, self.joins,
                              params=self.params, alias_prefix=prefix, ordered=False,
                              security_context=self.security_context)
        return builder.build()

    def _where(self, select: exp.Select, conditions: list[exp.Expression]) -> exp.Select:
        if conditions:
            select = select.where(combine("and", conditions), copy=False)
        return select

    def _group_by(self, select: exp.Select, count: int, ungrouped: bool) -> exp.Select:
        if count and not ungrouped:
            select = select.group_by(*[exp.Literal.number(i + 1) for i in range(count)], copy=False)
        return select

    def _effective_order(self) -> tuple[OrderItem, ...]:
        if not self.ordered:
            return ()
        if self.query.order:
            return self.query.order
        if self.total:
            return ()
        first_td = next((td for td in self.m.time_dimensions if td.query.granularity), None)
        if first_td is not None:
            return (OrderItem(self.public(first_td.query.dimension), False),)
        if self.m.measures and self.m.dimensions:
            return (OrderItem(self.public(self.m.measures[0].path), True),)
        if self.m.dimensions:
            return (OrderItem(self.public(self.m.dimensions[0].path), False),)
        return ()

    def _order_limit(self, select: exp.Select) -> exp.Select:
        if not self.total:
            dimension_columns = [c for c in self.columns if c.kind != "measure"]
            measure_columns = [c for c in self.columns if c.kind == "measure"]
            for item in self.order:
                position = self._position(item.id, dimension_columns, measure_columns)
                if position is not None:
                    select = select.order_by(exp.Ordered(this=exp.Literal.number(position), desc=item.desc,
                                                         nulls_first=item.desc), copy=False)
            if self.query.limit is not None:
                select = select.limit(exp.Literal.number(self.query.limit), copy=False)
            if self.query.offset:
                select = select.offset(exp.Literal.number(self.query.offset), copy=False)
        return select

    def _position(self, member: str, dimension_columns: list[SelectedColumn],
                  measure_columns: list[SelectedColumn]) -> int | None:
        wanted = member.upper()
        for index, column in enumerate(dimension_columns):
            base = column.member.rsplit(".", 1)[0] if column.kind == "time" else column.member
            if base.upper() == wanted or column.member.upper() == wanted:
                return index + 1
        for index, column in enumerate(measure_columns):
            if column.member.upper() == wanted:
                return len(dimension_columns) + index + 1
        return None

    # -- query shapes --------------------------------------------------------------------
    def build(self) -> exp.Select:
        """Return the SELECT tree for the query."""
        measures = self._classify_measures()
        if not measures.multiplied and not measures.cumulative:
            return self._simple_query()
        return self._full_key_query(measures)

    def _simple_query(self) -> exp.Select:
        ctx = RenderContext(prefix=self.alias_prefix)
        selects = self._dimension_selects(ctx)
        selects += [exp.alias_(self.renderer.measure_sql(m, ctx), quoted(self._alias(m.path)), copy=False)
                    for m in self.m.measures]
        select = exp.select(*selects, copy=False) if selects else exp.select(exp.Literal.number(1), copy=False)
        select = self._from(select, ctx)
        select = self._where(select, self._where_conditions(ctx))
        select = self._group_by(select, len(self.dimension_aliases), self.query.ungrouped)
        having = self._measure_filter_conditions(ctx)
        if having:
            select = select.having(combine("and", having), copy=False)
        return self._order_limit(select)

    def _classify_measures(self) -> "_Classified":
        """Split the measures to compute (query measures and measure-filter measures) into
        regular ones, multiplied ones per cube, cumulative ones (with their multiplied flag),
        and composite ones computed in the outer query from their parts (Cube's
        ``collectRootMeasureToHieararchy``)."""
        roots: list[Measure] = list(self.m.measures)
        for item in self.m.measure_filters:
            for leaf in _leaves(item):
                measure = self._measure(leaf.member)
                if measure not in roots:
                    roots.append(measure)
        regular: list[Measure] = []
        multiplied: dict[str, list[Measure]] = {}
        cumulative: list[tuple[Measure, bool]] = []
        composite: list[Measure] = []

        def place(measure: Measure) -> None:
            if measure.cumulative:
                entry = (measure, self.renderer.is_multiplied(measure))
                if entry not in cumulative:
                    cumulative.append(entry)
            elif self.renderer.is_multiplied(measure):
                bucket = multiplied.setdefault(measure.cube, [])
                if measure not in bucket:
                    bucket.append(measure)
            elif measure not in regular:
                regular.append(measure)

        for root in roots:
            parts = self._composite_parts(root)
            if parts is None:
                place(root)
            else:
                composite.append(root)
                for part in parts:
                    place(part)
        return _Classified(regular, multiplied, cumulative, composite)

    def _measure(self, path: str) -> Measure:
        cube_name, _, name = path.partition(".")
        return self.model.cubes[cube_name].measures[name]

    def _composite_parts(self, root: Measure) -> list[Measure] | None:
        """Return the measures a calculated measure must be assembled from when they live in
        other cubes (or are cumulative); None when it is computed in one piece."""
        if root.type not in ("number", "string", "time", "boolean"):
            return None
        parts: list[Measure] = []
        is_composite = False

        def walk(measure: Measure, seen: tuple[str, ...]) -> None:
            nonlocal is_composite
            for child in self.renderer.referenced_measures(measure):
                if child.path in seen:
                    continue
                if child.cube != measure.cube or child.cumulative:
                    is_composite = True
                if child.type in ("number", "string", "time", "boolean") and self.renderer.referenced_measures(child):
                    walk(child, seen + (child.path,))
                elif child not in parts:
                    parts.append(child)

        walk(root, (root.path,))
        return parts if is_composite else None

    def _full_key_query(self, measures: "_Classified") -> exp.Select:
        regular, multiplied, composite = measures.regular, measures.multiplied, measures.composite
        subqueries: list[exp.Select] = []
        computed: dict[str, str] = {}
        multiplied_cubes = sorted(multiplied)
        regular_cubes = sorted({m.cube for m in regular})
        if regular and multiplied and not measures.cumulative and regular_cubes == multiplied_cubes:
            # Cube: when both sets involve the same cubes, one scan per cube is cheaper.
            merged: dict[str, list[Measure]] = {}
            order = {m.path: i for i, m in enumerate(self.m.measures)}
            for measure in sorted(regular + [m for ms in multiplied.values() for m in ms],
                                  key=lambda m: order.get(m.path, len(order))):
                merged.setdefault(measure.cube, []).append(measure)
            for cube_name, cube_measures in merged.items():
                subqueries.append(self._aggregate_subquery(cube_name, cube_measures, f"{cube_name}_key"))
                computed.update({m.path: self._alias(m.path) for m in cube_measures})
        else:
            if regular:
                subqueries.append(self._regular_subquery(regular))
                computed.update({m.path: self._alias(m.path) for m in regular})
            for cube_name, cube_measures in multiplied.items():
                prefix = f"{alias_name(cube_name)}_key"
                subqueries.append(self._aggregate_subquery(cube_name, cube_measures, prefix))
                computed.update({m.path: self._alias(m.path) for m in cube_measures})
        for measure, is_multiplied in measures.cumulative:
            subqueries.append(self._cumulative_subquery(measure, is_multiplied))
            computed[measure.path] = self._alias(measure.path)

        has_measure_filters = bool(self.m.measure_filters)
        if len(subqueries) == 1 and not has_measure_filters and not composite and not measures.cumulative:
            return self._order_limit(subqueries[0])

        outer_ctx = RenderContext(rendered=computed)
        aliases = self.dimension_aliases
        selects: list[exp.Expression] = [
            exp.alias_(exp.column(a, table="q_0", quoted=True), quoted(a), copy=False) for a in aliases
        ]
        for measure in self.m.measures:
            selects.append(exp.alias_(self.renderer.measure_sql(measure, outer_ctx), quoted(self._alias(measure.path)), copy=False))
        select = exp.select(*selects, copy=False).from_(
            exp.Subquery(this=subqueries[0], alias=exp.TableAlias(this=exp.to_identifier("q_0"))), copy=False)
        for index, sub in enumerate(subqueries[1:], start=1):
            target = exp.Subquery(this=sub, alias=exp.TableAlias(this=exp.to_identifier(f"q_{index}")))
            if aliases:
                conditions = []
                for a in aliases:
                    left = exp.column(a, table=f"q_{index - 1}", quoted=True)
                    right = exp.column(a, table=f"q_{index}", quoted=True)
                    conditions.append(exp.Paren(this=exp.Or(
                        this=exp.EQ(this=left, expression=right),
                        expression=exp.Paren(this=exp.And(this=exp.Is(this=left.copy(), expression=exp.Null()),
                                                          expression=exp.Is(this=right.copy(), expression=exp.Null()))))))
                select = select.join(target, on=and_all(conditions), join_type="inner", copy=False)
            else:
                select = select.join(target, join_type="cross", copy=False)
        outer_filters = self._measure_filter_conditions(outer_ctx)
        select = self._where(select, outer_filters)
        return self._order_limit(select)

    def _regular_subquery(self, measures: list[Measure], ctx: RenderContext | None = None,
                          conditions: list[exp.Expression] | None = None) -> exp.Select:
        ctx = ctx or RenderContext(prefix="main")
        selects = self._dimension_selects(ctx)
        selects += [exp.alias_(self.renderer.measure_sql(m, ctx), quoted(self._alias(m.path)), copy=False) for m in measures]
        select = self._from(exp.select(*selects, copy=False), ctx)
        select = self._where(select, self._where_conditions(ctx) if conditions is None else conditions)
        return self._group_by(select, len(self.dimension_aliases), self.query.ungrouped or ctx.ungrouped)

    def _aggregate_subquery(self, cube_name: str, measures: list[Measure], prefix: str,
                            ctx: RenderContext | None = None,
                            conditions: list[exp.Expression] | None = None) -> exp.Select:
        ctx = ctx or RenderContext(prefix=prefix)
        cube = self.model.cubes[cube_name]
        if not cube.primary_keys:
            raise CompileError(f"One or more Primary key is required for '{cube_name}'")
        for measure in measures:
            reached = [c for c in member_cubes(self.model, cube_name, measure.name) if c != cube_name]
            if reached:
                raise CompileError(f"'{measure.path}' references cubes that lead to row multiplication. "
                                   "Please rewrite it using sub query.")
        pk_dimensions = [cube.dimensions[k] for k in cube.primary_keys]
        # keys: distinct (dimensions, primary key) over the full join, with every filter.
        key_selects = self._dimension_selects(ctx)
        selected_paths = {d.path for d in self.m.dimensions}
        pk_aliases = []
        for pk in pk_dimensions:
            pk_alias = self._alias(pk.path)
            pk_aliases.append(pk_alias)
            if pk.path not in selected_paths:
                key_selects.append(exp.alias_(self.renderer.dimension_sql(pk, ctx), quoted(pk_alias), copy=False))
        keys = self._from(exp.select(*key_selects, copy=False).distinct(copy=False), ctx)
        keys = self._where(keys, self._where_conditions(ctx) if conditions is None else conditions)
        selects: list[exp.Expression] = [
            exp.alias_(exp.column(a, table=KEYS_ALIAS, quoted=True), quoted(a), copy=False) for a in self.dimension_aliases
        ]
        selects += [exp.alias_(self.renderer.measure_sql(m, ctx), quoted(self._alias(m.path)), copy=False) for m in measures]
        on_parts = [exp.EQ(this=exp.column(pk_alias, table=KEYS_ALIAS, quoted=True),
                           expression=self.renderer.dimension_sql(pk, ctx))
                    for pk, pk_alias in zip(pk_dimensions, pk_aliases)]
        select = exp.select(*selects, copy=False).from_(
            exp.Subquery(this=keys, alias=exp.TableAlias(this=quoted(KEYS_ALIAS))), copy=False)
        select = select.join(self.renderer.from_item(cube_name, ctx), on=and_all(on_parts), join_type="left", copy=False)
        return self._group_by(select, len(self.dimension_aliases), self.query.ungrouped or ctx.ungrouped)

    # -- cumulative measures (running_total, rolling_window) -----------------------------
    def _cumulative_subquery(self, measure: Measure, multiplied: bool) -> exp.Select:
        """Return the sub-query of one cumulative measure: a date series per granular time
        dimension LEFT JOINed to the measure grouped at the finer of the window and query
        granularities, then re-aggregated per series period (Cube's overTimeSeriesQuery)."""
        prefix = f"{alias_name(measure.path.replace('.', '_'))}_cumulative"
        ctx = RenderContext(prefix=prefix)
        granular = [td for td in self.m.time_dimensions if td.query.granularity]
        window = measure.rolling_window or {}

        def base_query(base_ctx: RenderContext, conditions: list[exp.Expression]) -> exp.Select:
            if multiplied:
                return self._aggregate_subquery(measure.cube, [measure], prefix, base_ctx, conditions)
            return self._regular_subquery([measure], base_ctx, conditions)

        conditions = self._where_conditions(ctx, time_ranges=False)
        for td in self.m.time_dimensions:
            date_range = self._series_range(td)
            field = self._converted(td, ctx)
            series = self._time_series(date_range[0], date_range[1], td.query.granularity) \
                if td.query.granularity else [date_range]
            start_to_end = bool(granular)
            utc_from = lambda r=date_range: self.params.allocate(dates.local_to_utc_param(r[0], self.query.timezone))  # noqa: E731
            utc_to = lambda r=date_range: self.params.allocate(dates.local_to_utc_param(r[1], self.query.timezone))  # noqa: E731
            if start_to_end:
                date_from = lambda s=series: self.sql_dialect.local_timestamp(self.params.allocate(s[0][0]))  # noqa: E731
                date_to = lambda s=series: self.sql_dialect.local_timestamp(self.params.allocate(s[-1][1]))  # noqa: E731
            else:
                date_from = lambda f=utc_from: self._in_query_zone(f())  # noqa: E731
                date_to = lambda f=utc_to: self._in_query_zone(f())  # noqa: E731
            conditions.append(self._window_condition(
                measure, window, date_from, date_to, field,
                lambda f=utc_from: self._in_query_zone(f()), start_to_end))
        if not granular:
            return base_query(ctx, conditions)

        ungroup = bool(measure.rolling_window) and measure.type not in ADDITIVE_MEASURE_TYPES
        override = None if ungroup else min_granularity(window_granularity(window), granular[0].query.granularity)
        base = base_query(RenderContext(prefix=prefix, ungrouped=ungroup, granularity_override=override), conditions)
        base_alias = alias_name(f"{prefix}__base")
        selects: list[exp.Expression] = [exp.column(self._alias(d.path), quoted=True) for d in self.m.dimensions]
        on_parts: list[exp.Expression] = []
        select_from: list[exp.Expression] = []
        for td in granular:
            series_alias = f"{td.dimension.path}_series"
            date_range = self._series_range(td)
            select_from.append(self._series_table(td, series_alias))
            selects.append(exp.alias_(exp.column("date_from", table=series_alias, quoted=True), quoted(self.time_alias(td)), copy=False))
            on_parts.append(self._window_condition(
                measure, window,
                lambda a=series_alias: exp.column("date_from", table=a, quoted=True),
                lambda a=series_alias: exp.column("date_to", table=a, quoted=True),
                exp.column(self.time_alias(td), table=base_alias, quoted=True),
                lambda r=date_range: exp.Literal.string(r[0]), False))
        column = exp.column(self._alias(measure.path), table=base_alias, quoted=True)
        selects.append(exp.alias_(self._reaggregate(measure, column, ungroup), quoted(self._alias(measure.path)), copy=False))
        select = exp.select(*selects, copy=False).from_(select_from[0], copy=False)
        for extra in select_from[1:]:
            select = select.join(extra, join_type="cross", copy=False)
        select = select.join(exp.Subquery(this=base, alias=exp.TableAlias(this=quoted(base_alias))),
                             on=and_all(on_parts), join_type="left", copy=False)
        return self._group_by(select, len(self.m.dimensions) + len(granular), False)

    def _time_series(self, start: str, end: str, granularity: str) -> list[tuple[str, str]]:
        key = (start, end, granularity)
        series = self._series_memo.get(key)
        if series is None:
            series = self._series_memo[key] = dates.time_series(start, end, granularity, MAX_SERIES_PERIODS)
        return series

    def _series_range(self, td: _TimeDim) -> tuple[str, str]:
        if not td.query.date_range:
            raise CompileError("Time series queries without dateRange aren't supported")
        return td.query.date_range

    def _series_table(self, td: _TimeDim, alias: str) -> exp.Expression:
        assert td.query.granularity and td.query.date_range
        periods = self._time_series(td.query.date_range[0], td.query.date_range[1], td.query.granularity)
        values = exp.Values(
            expressions=[exp.Tuple(expressions=[exp.Literal.string(a), exp.Literal.string(b)]) for a, b in periods],
            alias=exp.TableAlias(this=exp.to_identifier("dates"),
                                 columns=[exp.to_identifier("date_from"), exp.to_identifier("date_to")]))
        inner = exp.select(
            exp.alias_(self.sql_dialect.local_timestamp(exp.column("date_from")), quoted("date_from"), copy=False),
            exp.alias_(self.sql_dialect.local_timestamp(exp.column("date_to")), quoted("date_to"), copy=False),
            copy=False).from_(values, copy=False)
        return exp.Subquery(this=inner, alias=exp.TableAlias(this=quoted(alias)))

    def _window_condition(self, measure: Measure, window: Any, date_from: Any, date_to: Any,
                          field: exp.Expression, dimension_from: Any, start_to_end: bool) -> exp.Expression:
        """Return Cube's date join condition of a cumulative measure; the date arguments are
        thunks so that only the bounds the condition uses allocate parameters."""
        if measure.type == "running_total" and not measure.rolling_window:
            return exp.And(this=exp.GTE(this=field.copy(), expression=dimension_from()),
                           expression=exp.LTE(this=field.copy(), expression=date_to()))
        trailing, leading = window.get("trailing"), window.get("leading")
        offset = window.get("offset") or "end"
        conditions: list[exp.Expression] = []
        if trailing != "unbounded":
            start = date_from() if (start_to_end or offset == "start") else date_to()
            if trailing:
                start = self.sql_dialect.shift(start, str(trailing), -1)
            node = exp.GTE if offset == "start" else exp.GT
            conditions.append(node(this=field.copy(), expression=start))
        if leading != "unbounded":
            end = date_to() if (start_to_end or offset == "end") else date_from()
            if leading:
                end = self.sql_dialect.shift(end, str(leading), 1)
            node = exp.LTE if offset == "end" else exp.LT
            conditions.append(node(this=field.copy(), expression=end))
        if not conditions:
            return exp.EQ(this=exp.Literal.number(1), expression=exp.Literal.number(1))
        return and_all(conditions)

    def _reaggregate(self, measure: Measure, column: exp.Expression, ungrouped: bool) -> exp.Expression:
        """Return the aggregate over per-period values of a cumulative measure."""
        if ungrouped:
            if measure.type == "count_distinct":
                return exp.Count(this=exp.Distinct(expressions=[column]))
            if measure.type in ("avg", "sum", "min", "max", "count"):
                return {"avg": exp.Avg, "sum": exp.Sum, "min": exp.Min, "max": exp.Max, "count": exp.Count}[measure.type](this=column)
            return column
        if measure.type in ("count", "sum", "running_total"):
            return exp.Sum(this=column)
        if measure.type in ("min", "max"):
            return (exp.Min if measure.type == "min" else exp.Max)(this=column)
        raise CompileError(f"Measure {measure.path} of type {measure.type} can't be aggregated over a time series")


_GRANULARITY_PARENTS = {
    "year": ["year", "quarter", "month", "month", "day", "hour", "minute", "second"],
    "quarter": ["quarter", "month", "day", "hour", "minute", "second"],
    "month": ["month", "day", "hour", "minute", "second"],
    "week": ["week", "day", "hour", "minute", "second"],
    "day": ["day", "hour", "minute", "second"],
    "hour": ["hour", "minute", "second"],
    "minute": ["minute", "second"],
    "second": ["second"],
}


def min_granularity(a: str | None, b: str | None) -> str | None:
    """Return the finest granularity both ``a`` and ``b`` can be rolled up from (Cube's
    ``minGranularity``: ``day`` for day and month, ``day`` for week and month)."""
    if not a:
        return b
    if not b or a == b:
        return a
    a_chain = list(reversed(_GRANULARITY_PARENTS[a]))
    b_chain = list(reversed(_GRANULARITY_PARENTS[b]))

    def first_difference(x: list[str], y: list[str]) -> int:
        for index, value in enumerate(x):
            if index >= len(y) or value != y[index]:
                return index
        return -1

    last = max(first_difference(a_chain, b_chain), first_difference(b_chain, a_chain))
    if last == -1 and len(a_chain) == len(b_chain):
        last = len(a_chain) - 1
    if last <= 0:
        raise CompileError(f"Can't find common parent for '{a}' and '{b}'")
    return a_chain[last - 1]


def window_granularity(window: Any) -> str | None:
    """Return the granularity a rolling window's intervals are counted in (Cube's rule)."""
    def of(interval: Any) -> str | None:
        if not interval:
            return None
        text = str(interval)
        for unit in ("day", "month", "year", "week", "hour"):
            if unit in text:
                return unit
        return None

    if not window:
        return None
    return min_granularity(of(window.get("leading")), of(window.get("trailing")))
