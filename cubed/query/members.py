"""Rendering model members into sqlglot expressions for one query.

This is Cube's ``evaluateSymbolSql``: references in templates resolve to cube aliases and
other members' SQL; measures become aggregates (``count(distinct pk)`` when the cube is
multiplied by the join tree); the render context carries the alias prefix of the current
sub-query, the ungrouped mode and the aliases already computed by inner sub-queries.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from sqlglot import exp

from cubed.errors import CompileError
from cubed.model.compile import CONTEXT_REFERENCES
from cubed.model.meta import alias_name
from cubed.model.schema import Cube, Dimension, Measure, Model, Segment, SqlTemplate
from cubed.model.templates import folded_table_name, is_placeholder
from cubed.query.dialects import SqlDialect
from cubed.query.expressions import and_all, paren, quoted

_AGGREGATES = {"count": exp.Count, "sum": exp.Sum, "avg": exp.Avg, "min": exp.Min, "max": exp.Max}


@dataclass(frozen=True)
class RenderContext:
    """Where a member is being rendered: alias prefix of the sub-query, ungrouped rendering
    (raw SQL instead of aggregates) and measures already computed under an alias."""

    prefix: str | None = None
    ungrouped: bool = False
    rendered: Mapping[str, str] = field(default_factory=dict)
    granularity_override: str | None = None
    # Members read from a rollup table: the expression standing for each (a column, or the
    # re-aggregation of one for measures).
    substitutes: Mapping[str, exp.Expression] = field(default_factory=dict)

    def with_prefix(self, prefix: str | None) -> "RenderContext":
        """Return this context with another alias prefix."""
        return replace(self, prefix=prefix)


class MemberRenderer:
    """Member SQL for one query: ``multiplied`` names the cubes the join tree fans out,
    ``query_ungrouped`` is the query's ``ungrouped`` flag, ``sql_dialect`` the target."""

    def __init__(self, model: Model, sql_dialect: SqlDialect, multiplied: frozenset[str] = frozenset(),
                 query_ungrouped: bool = False,
                 context_reference: Callable[[str, str, RenderContext], exp.Expression] | None = None) -> None:
        self.model = model
        self.context_reference = context_reference
        self.sql_dialect = sql_dialect
        self.dialect = sql_dialect.name
        self.multiplied = multiplied
        self.query_ungrouped = query_ungrouped

    # -- cubes ---------------------------------------------------------------------------
    def cube(self, name: str) -> Cube:
        """Return the cube named ``name``."""
        cube = self.model.cubes.get(name)
        if cube is None:
            raise CompileError(f"Cube '{name}' not found")
        return cube

    def cube_alias_name(self, cube_name: str, ctx: RenderContext) -> str:
        """Return the unquoted alias of a cube's table in the current (sub-)query."""
        cube = self.cube(cube_name)
        own = alias_name(cube.sql_alias or cube.name)
        return alias_name(f"{ctx.prefix}__{own}") if ctx.prefix else own

    def cube_alias(self, cube_name: str, ctx: RenderContext) -> exp.Identifier:
        """Return the quoted alias identifier of a cube's table."""
        return quoted(self.cube_alias_name(cube_name, ctx))

    def cube_source(self, cube_name: str, ctx: RenderContext) -> exp.Expression:
        """Return what a cube selects from: a table, or its ``sql`` as a sub-query."""
        cube = self.cube(cube_name)
        if cube.sql_table is not None:
            return exp.to_table(cube.sql_table.source, dialect=self.dialect) if not cube.sql_table.refs \
                else exp.Subquery(this=self.resolve(cube.sql_table, cube_name, ctx))
        assert cube.sql is not None
        table = folded_table_name(cube.sql)
        if table is not None:
            return exp.to_table(table, dialect=self.dialect)
        return exp.Subquery(this=self.resolve(cube.sql, cube_name, ctx))

    def from_item(self, cube_name: str, ctx: RenderContext) -> exp.Expression:
        """Return ``<source> AS "<alias>"`` for FROM/JOIN."""
        source = self.cube_source(cube_name, ctx)
        alias = exp.TableAlias(this=self.cube_alias(cube_name, ctx))
        if isinstance(source, exp.Table):
            source.set("alias", alias)
            return source
        source.set("alias", alias)
        return source

    # -- templates -----------------------------------------------------------------------
    def resolve(self, template: SqlTemplate, cube_name: str, ctx: RenderContext) -> exp.Expression:
        """Return the template's tree with every reference resolved for this context."""
        if template.bare_column:
            return exp.Column(this=exp.to_identifier(template.source), table=self.cube_alias(cube_name, ctx))
        if not template.refs:
            return template.tree.copy()
        refs = template.ref_by_placeholder()

        def substitute(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Column):
                parts = node.parts
                head = parts[0].name if parts else ""
                if is_placeholder(head):
                    return self._resolve_column(refs[head].text, parts[1:], cube_name, ctx)
            if isinstance(node, exp.Identifier) and is_placeholder(node.name):
                raise CompileError(f"Reference {{{refs[node.name].text}}} cannot be used in this position "
                                   f"in {cube_name}: {template.source}")
            return node

        return template.tree.copy().transform(substitute, copy=False)

    def _resolve_column(self, text: str, rest: list[exp.Identifier], cube_name: str,
                        ctx: RenderContext) -> exp.Expression:
        head, _, member = text.partition(".")
        if head in CONTEXT_REFERENCES:
            if self.context_reference is None:
                raise CompileError(f"{head} cannot be used here ({cube_name})")
            return self.context_reference(text, cube_name, ctx)
        if head in ("CUBE", "TABLE"):
            target = cube_name
        elif head in self.model.cubes:
            target = head
        else:
            target, member = cube_name, text
        if member:
            cube = self.cube(target)
            if member in cube.measures or member in cube.dimensions or member in cube.segments:
                if rest:
                    raise CompileError(f"{{{text}}} is a member and cannot be followed by .{rest[0].name}")
                return paren(self.member_sql(target, member, ctx))
            # Not a member: a column of that cube's table.
            return exp.Column(this=exp.to_identifier(member), table=self.cube_alias(target, ctx))
        alias = self.cube_alias(target, ctx)
        if not rest:
            return exp.Column(this=alias)
        if len(rest) == 1:
            return exp.Column(this=rest[0], table=alias)
        return exp.Column(this=rest[-1], table=rest[-2], db=alias)

    # -- members -------------------------------------------------------------------------
    def member_sql(self, cube_name: str, member: str, ctx: RenderContext) -> exp.Expression:
        """Return the SQL of any member (measure, dimension or segment) by name."""
        cube = self.cube(cube_name)
        if member in cube.measures:
            return self.measure_sql(cube.measures[member], ctx)
        if member in cube.dimensions:
            return self.dimension_sql(cube.dimensions[member], ctx)
        return self.segment_sql(cube.segments[member], ctx)

    def dimension_sql(self, dimension: Dimension, ctx: RenderContext) -> exp.Expression:
        """Return a dimension's SQL expression."""
        if dimension.path in ctx.substitutes:
            return ctx.substitutes[dimension.path].copy()
        if dimension.path in ctx.rendered:
            return exp.column(ctx.rendered[dimension.path], quoted=True)
        if dimension.sub_query:
            # The value comes from the dimension's sub-query, joined under this alias.
            return exp.column(alias_name(dimension.path, self.cube(dimension.cube).sql_alias), quoted=True)
        if dimension.case is not None:
            case = exp.Case()
            for branch in dimension.case.when:
                label = (self.resolve(branch.label_sql, dimension.cube, ctx) if branch.label_sql is not None
                         else exp.Literal.string(branch.label or ""))
                case = case.when(self.resolve(branch.sql, dimension.cube, ctx), label, copy=False)
            if dimension.case.else_sql is not None:
                case = case.else_(self.resolve(dimension.case.else_sql, dimension.cube, ctx), copy=False)
            elif dimension.case.else_label is not None:
                case = case.else_(exp.Literal.string(dimension.case.else_label), copy=False)
            return case
        if dimension.sql is None:
            raise CompileError(f"Dimension {dimension.path} has no sql")
        return self.resolve(dimension.sql, dimension.cube, ctx)

    def segment_sql(self, segment: Segment, ctx: RenderContext) -> exp.Expression:
        """Return a segment's boolean SQL expression."""
        if segment.path in ctx.substitutes:
            return ctx.substitutes[segment.path].copy()
        if segment.path in ctx.rendered:
            return exp.column(ctx.rendered[segment.path], quoted=True)
        return self.resolve(segment.sql, segment.cube, ctx)

    def primary_key_sql(self, cube_name: str, ctx: RenderContext) -> exp.Expression | None:
        """Return the primary key's SQL (several keys concatenated as text), or None."""
        cube = self.cube(cube_name)
        keys = cube.primary_keys
        if not keys:
            return None
        if len(keys) == 1:
            return self.dimension_sql(cube.dimensions[keys[0]], ctx)
        parts = [exp.Cast(this=paren(self.dimension_sql(cube.dimensions[k], ctx)), to=exp.DataType.build("text"))
                 for k in keys]
        result: exp.Expression = parts[0]
        for part in parts[1:]:
            result = exp.DPipe(this=result, expression=part)
        return result

    def is_multiplied(self, measure: Measure) -> bool:
        """Return whether a measure must be computed over distinct keys (Cube's ``multiplied``
        measure: its cube is fanned out and plain aggregation would double count)."""
        if measure.cube not in self.multiplied:
            return False
        if measure.type == "count_distinct" or (measure.type == "count" and measure.sql is None):
            return False
        if measure.type == "number" and measure.sql is not None and _is_count_star(measure.sql.tree):
            return False
        return True

    def measure_base_sql(self, measure: Measure, ctx: RenderContext) -> exp.Expression:
        """Return a measure's inner expression (its sql, else the primary key, else ``*``)
        with the measure's ``filters`` applied as ``CASE WHEN ... THEN ... END``."""
        if measure.sql is not None:
            base = self.resolve(measure.sql, measure.cube, ctx)
        else:
            base = self.primary_key_sql(measure.cube, ctx) or exp.Star()
        if measure.filters:
            condition = and_all([paren(self.resolve(f, measure.cube, ctx)) for f in measure.filters])
            then = exp.Literal.number(1) if isinstance(base, exp.Star) else base
            base = exp.Case().when(condition, then, copy=False)
        return base

    def measure_sql(self, measure: Measure, ctx: RenderContext) -> exp.Expression:
        """Return a measure's aggregate expression as Cube renders it (``renderSqlMeasure``)."""
        if measure.path in ctx.substitutes:
            return ctx.substitutes[measure.path].copy()
        if measure.path in ctx.rendered:
            return exp.column(ctx.rendered[measure.path], quoted=True)
        base = self.measure_base_sql(measure, ctx)
        if ctx.ungrouped:
            return exp.Literal.number(1) if isinstance(base, exp.Star) else base
        if self.query_ungrouped:
            if measure.type in ("count", "count_distinct", "count_distinct_approx"):
                return exp.Literal.number(1)
            return base
        multiplied = measure.cube in self.multiplied
        if measure.type == "count_distinct_approx":
            return self.sql_dialect.approx_count_distinct(base)
        if measure.type == "count_distinct" or (measure.type == "count" and measure.sql is None and multiplied):
            return exp.Count(this=exp.Distinct(expressions=[base]))
        if measure.type == "running_total":
            return exp.Sum(this=base)
        if multiplied and measure.type == "number" and _is_count_star(base):
            key = self.primary_key_sql(measure.cube, ctx)
            return exp.Count(this=exp.Distinct(expressions=[key])) if key is not None else base
        if measure.type in ("number", "string", "time", "boolean"):
            return base
        return _AGGREGATES[measure.type](this=base)

    def referenced_measures(self, measure: Measure) -> list[Measure]:
        """Return the measures a calculated measure's SQL refers to, directly, in order."""
        found: list[Measure] = []
        if measure.sql is None:
            return found
        for ref in measure.sql.refs:
            head, _, rest = ref.text.partition(".")
            if head in ("CUBE", "TABLE"):
                target, name = measure.cube, rest
            elif head in self.model.cubes and rest:
                target, name = head, rest
            else:
                target, name = measure.cube, ref.text
            cube = self.model.cubes.get(target)
            if cube is not None and name in cube.measures and cube.measures[name] not in found:
                found.append(cube.measures[name])
        return found


def _is_count_star(node: exp.Expression) -> bool:
    return isinstance(node, exp.Count) and isinstance(node.this, exp.Star)


def referenced_cubes(model: Model, cube_name: str, template: SqlTemplate | None,
                     seen: set[tuple[str, str]] | None = None) -> list[str]:
    """Return the cubes a template reaches, transitively through member references, in the
    order Cube collects them for join hints (the member's own cube first)."""
    result: list[str] = []
    if template is None:
        return result
    seen = seen if seen is not None else set()
    for ref in template.refs:
        head, _, rest = ref.text.partition(".")
        if head in CONTEXT_REFERENCES:
            continue
        if head in ("CUBE", "TABLE"):
            target, member = cube_name, rest
        elif head in model.cubes:
            target, member = head, rest
        else:
            target, member = cube_name, ref.text
        if target not in result:
            result.append(target)
        if member:
            for cube in member_cubes(model, target, member, seen):
                if cube not in result:
                    result.append(cube)
    return result


def subquery_dimensions(model: Model, paths: list[str]) -> list[Dimension]:
    """Return the ``sub_query`` dimensions the given members reach (themselves or through
    references in their SQL), in first-seen order."""
    found: list[Dimension] = []
    seen: set[tuple[str, str]] = set()

    def visit(cube_name: str, member: str) -> None:
        key = (cube_name, member)
        if key in seen:
            return
        seen.add(key)
        cube = model.cubes[cube_name]
        templates: list[SqlTemplate | None] = []
        if member in cube.dimensions:
            dimension = cube.dimensions[member]
            if dimension.sub_query:
                if dimension not in found:
                    found.append(dimension)
                return
            if dimension.case is not None:
                templates = [b.sql for b in dimension.case.when] + [b.label_sql for b in dimension.case.when]
                templates.append(dimension.case.else_sql)
            else:
                templates = [dimension.sql]
        elif member in cube.measures:
            templates = [cube.measures[member].sql, *cube.measures[member].filters]
        elif member in cube.segments:
            templates = [cube.segments[member].sql]
        for template in templates:
            for target, name in _template_members(model, cube_name, template):
                visit(target, name)

    for path in paths:
        cube_name, _, member = path.partition(".")
        if cube_name in model.cubes:
            visit(cube_name, member)
    return found


def _template_members(model: Model, cube_name: str, template: SqlTemplate | None) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = []
    if template is None:
        return result
    for ref in template.refs:
        head, _, rest = ref.text.partition(".")
        if head in CONTEXT_REFERENCES:
            continue
        if head in ("CUBE", "TABLE"):
            target, member = cube_name, rest
        elif head in model.cubes:
            target, member = head, rest
        else:
            target, member = cube_name, ref.text
        cube = model.cubes.get(target)
        if member and cube is not None and (member in cube.dimensions or member in cube.measures or member in cube.segments):
            result.append((target, member))
    return result


def member_cubes(model: Model, cube_name: str, member: str, seen: set[tuple[str, str]] | None = None) -> list[str]:
    """Return the cubes a member needs joined: its own cube, then those its SQL reaches."""
    seen = seen if seen is not None else set()
    key = (cube_name, member)
    result = [cube_name]
    if key in seen:
        return result
    seen.add(key)
    cube = model.cubes[cube_name]
    templates: list[SqlTemplate | None] = []
    if member in cube.measures:
        templates = [cube.measures[member].sql, *cube.measures[member].filters]
        if cube.measures[member].sql is None and cube.primary_keys:
            templates.append(cube.dimensions[cube.primary_keys[0]].sql)
    elif member in cube.dimensions:
        dimension = cube.dimensions[member]
        if dimension.sub_query:
            # Computed in its own sub-query joined on the primary key: what its SQL reaches
            # is joined there, not in the query using it (as Cube collects join hints).
            return result
        if dimension.case is not None:
            for branch in dimension.case.when:
                templates += [branch.sql, branch.label_sql]
            templates.append(dimension.case.else_sql)
        else:
            templates = [dimension.sql]
    elif member in cube.segments:
        templates = [cube.segments[member].sql]
    for template in templates:
        for other in referenced_cubes(model, cube_name, template, seen):
            if other not in result:
                result.append(other)
    return result

