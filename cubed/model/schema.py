"""The compiled data model as frozen dataclasses: cubes, measures, dimensions, segments, joins.

SQL snippets are held as ``SqlTemplate`` (a sqlglot tree parsed once at load, with the
``{...}`` references of Cube's template syntax kept as ``Ref`` entries); rendering them into a
query is the planner's job (cubed/query/render.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from sqlglot import exp

MEASURE_TYPES = (
    "count", "count_distinct", "count_distinct_approx", "sum", "avg", "min", "max",
    "number", "string", "time", "boolean", "running_total",
)
ADDITIVE_MEASURE_TYPES = ("count", "sum", "count_distinct_approx", "min", "max")
CALCULATED_MEASURE_TYPES = ("number", "string", "time", "boolean")
DIMENSION_TYPES = ("string", "number", "time", "boolean", "geo")
RELATIONSHIPS = ("many_to_one", "one_to_many", "one_to_one")


@dataclass(frozen=True)
class Ref:
    """One ``{...}`` reference inside a SQL template, as written (``CUBE``, ``Users.id``...)."""

    text: str
    placeholder: str


@dataclass(frozen=True)
class SqlTemplate:
    """A SQL snippet parsed once: ``tree`` has placeholder identifiers where ``refs`` stood.

    ``bare_column`` is set when the whole snippet is a bare identifier, which Cube prefixes
    with the cube's alias (``status`` -> ``"orders".status``).
    """

    source: str
    tree: exp.Expression
    refs: tuple[Ref, ...]
    bare_column: bool = False

    def ref_by_placeholder(self) -> dict[str, Ref]:
        """Return the references keyed by their placeholder name."""
        return {ref.placeholder: ref for ref in self.refs}


@dataclass(frozen=True)
class CaseWhen:
    """One ``when`` branch of a dimension's ``case``: a condition and a label."""

    sql: SqlTemplate
    label: str | None = None
    label_sql: SqlTemplate | None = None


@dataclass(frozen=True)
class DimensionCase:
    """A ``case`` dimension: branches and the ``else`` label (a string or SQL)."""

    when: tuple[CaseWhen, ...]
    else_label: str | None = None
    else_sql: SqlTemplate | None = None


@dataclass(frozen=True)
class Measure:
    """A measure of a cube. In a view, ``alias_of`` names the cube member it exposes and
    ``join_path`` the cubes joined to reach it (the same two fields on Dimension and Segment)."""

    cube: str
    name: str
    type: str
    sql: SqlTemplate | None = None
    filters: tuple[SqlTemplate, ...] = ()
    title: str | None = None
    description: str | None = None
    format: str | None = None
    public: bool | None = None
    drill_members: tuple[str, ...] = ()
    rolling_window: Mapping[str, Any] | None = None
    meta: Any = None
    alias_of: str | None = None
    join_path: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """Return ``Cube.member``."""
        return f"{self.cube}.{self.name}"

    @property
    def cumulative(self) -> bool:
        """Return whether the measure is computed over a time series (running total, rolling)."""
        return self.type == "running_total" or self.rolling_window is not None


@dataclass(frozen=True)
class Dimension:
    """A dimension of a cube."""

    cube: str
    name: str
    type: str
    sql: SqlTemplate | None = None
    case: DimensionCase | None = None
    primary_key: bool = False
    sub_query: bool = False
    propagate_filters_to_sub_query: bool = False
    title: str | None = None
    description: str | None = None
    format: Any = None
    public: bool | None = None
    suggest_filter_values: bool | None = None
    field_type: str | None = None
    meta: Any = None
    alias_of: str | None = None
    join_path: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """Return ``Cube.member``."""
        return f"{self.cube}.{self.name}"


@dataclass(frozen=True)
class Segment:
    """A named boolean filter of a cube."""

    cube: str
    name: str
    sql: SqlTemplate
    title: str | None = None
    description: str | None = None
    public: bool | None = None
    meta: Any = None
    alias_of: str | None = None
    join_path: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """Return ``Cube.member``."""
        return f"{self.cube}.{self.name}"


@dataclass(frozen=True)
class Join:
    """A directed join from ``source`` to ``target`` with its ON condition."""

    source: str
    target: str
    relationship: str  # many_to_one | one_to_many | one_to_one
    sql: SqlTemplate


@dataclass(frozen=True)
class Cube:
    """A cube: where its rows come from and its members, in definition order."""

    name: str
    file: str
    sql: SqlTemplate | None = None
    sql_table: SqlTemplate | None = None
    sql_alias: str | None = None
    data_source: str = "default"
    title: str | None = None
    description: str | None = None
    public: bool | None = None
    meta: Any = None
    measures: Mapping[str, Measure] = field(default_factory=dict)
    dimensions: Mapping[str, Dimension] = field(default_factory=dict)
    segments: Mapping[str, Segment] = field(default_factory=dict)
    joins: tuple[Join, ...] = ()
    refresh_key: Mapping[str, Any] | None = None
    pre_aggregations: tuple[Mapping[str, Any], ...] = ()
    is_view: bool = False

    @property
    def primary_keys(self) -> tuple[str, ...]:
        """Return the names of the primary-key dimensions, in definition order."""
        return tuple(d.name for d in self.dimensions.values() if d.primary_key)


@dataclass(frozen=True)
class Model:
    """A whole compiled model: cubes by name in definition order, and the join graph."""

    cubes: Mapping[str, Cube]
    version: str
    pre_aggregations: Mapping[str, Any] = field(default_factory=dict)  # id -> PreAggregation

    def cube(self, name: str) -> Cube | None:
        """Return the cube named ``name`` or None."""
        return self.cubes.get(name)
