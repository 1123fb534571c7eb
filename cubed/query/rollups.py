"""Matching a query to a rollup pre-aggregation (Cube's canUsePreAggregation), with the
reason each candidate does not match (for ``/v1/sql`` in dev mode).

Two rules, as Cube's:
- additive (every leaf measure is count/sum/min/max/count_distinct_approx, none multiplied by
  a join): the rollup holds every leaf measure, every dimension the query uses (selected,
  filtered, segments) and each time dimension at a granularity the query's can be rolled up
  from (a date range that does not align to the query's granularity needs a finer rollup);
- otherwise the rollup must hold exactly the query's dimensions and time dimensions, every
  filter must be on a selected dimension (or all of them single-value equals), and no time
  dimension may lack a granularity.
Unlike Cube 0.32, members filtered inside ``and``/``or`` groups count as used (Cube looked at
the first one only, and built SQL that failed: conformance cases 157, 160).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from cubed.model.preaggregations import PreAggregation
from cubed.model.schema import Measure, Model
from cubed.query.types import FilterCondition, FilterGroup

# Measures a rollup can re-aggregate. Cube also counts count_distinct_approx, merging HLL
# sketches in Cube Store; a rollup in the source database holds only the estimate, which
# cannot be summed, so here it must match exactly like count_distinct.
ROLLUP_ADDITIVE_TYPES = ("count", "sum", "min", "max")

GRANULARITY_PARENTS = {
    "year": ["year", "quarter", "month", "month", "day", "hour", "minute", "second"],
    "quarter": ["quarter", "month", "day", "hour", "minute", "second"],
    "month": ["month", "day", "hour", "minute", "second"],
    "week": ["week", "day", "hour", "minute", "second"],
    "day": ["day", "hour", "minute", "second"],
    "hour": ["hour", "minute", "second"],
    "minute": ["minute", "second"],
    "second": ["second"],
}


@dataclass(frozen=True)
class QueryShape:
    """What matching looks at in a query (Cube's transformed query)."""

    sorted_dimensions: tuple[str, ...]
    selected_dimensions: tuple[str, ...]
    time_dimensions: tuple[tuple[str, str | None], ...]          # (dimension, granularity) sorted
    rollup_time_dimensions: tuple[tuple[str, str | None], ...]   # (dimension, granularity the range allows)
    measures: tuple[str, ...]
    leaf_measures: tuple[str, ...]
    leaf_measures_additive: bool
    measures_additive: bool
    has_multiplied_measures: bool
    has_cumulative_measures: bool
    no_time_dimension_without_granularity: bool
    filters_within_selected_dimensions: bool
    single_value_equal_dimensions: frozenset[str] | None


def granularity_of_instant(local: str) -> str:
    """Return the coarsest granularity a local ``YYYY-MM-DDTHH:mm:ss.SSS`` instant starts."""
    moment = datetime.strptime(local[:19], "%Y-%m-%dT%H:%M:%S")
    millis = int(local[20:23]) if len(local) >= 23 else 0
    if millis:
        return "second"
    if moment.second:
        return "second"
    if moment.minute:
        return "minute"
    if moment.hour:
        return "hour"
    if moment.day == 1 and moment.month == 1:
        return "year"
    if moment.day == 1:
        return "month"
    if moment.isoweekday() == 1:
        return "week"
    return "day"


def _after(local: str) -> str:
    """Return the local instant one millisecond after ``local`` (the end of an inclusive range)."""
    from datetime import timedelta

    moment = datetime.strptime(local[:23], "%Y-%m-%dT%H:%M:%S.%f") + timedelta(milliseconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def min_granularity(a: str | None, b: str | None) -> str | None:
    """Return the finest granularity both can be rolled up from (Cube's minGranularity)."""
    from cubed.query.plan import min_granularity as plan_min

    return plan_min(a, b)


def rollup_granularity(granularity: str | None, date_range: tuple[str, str] | None) -> str | None:
    """Return the granularity a rollup needs for a time dimension: the query's, made finer
    when its date range does not start and end on that granularity's boundaries."""
    if date_range is None:
        return granularity
    range_granularity = min_granularity(granularity_of_instant(date_range[0]), granularity_of_instant(_after(date_range[1])))
    return min_granularity(granularity, range_granularity)


def _leaves(items: Iterable[Any]) -> Iterable[FilterCondition]:
    for item in items:
        if isinstance(item, FilterGroup):
            yield from _leaves(item.items)
        else:
            yield item


def leaf_measures(model: Model, measure: Measure, seen: frozenset[str] = frozenset()) -> list[Measure]:
    """Return the measures a measure is computed from (itself unless it is calculated from others)."""
    if measure.type not in ("number", "string", "time", "boolean") or measure.sql is None:
        return [measure]
    found: list[Measure] = []
    for ref in measure.sql.refs:
        head, _, rest = ref.text.partition(".")
        if head in ("CUBE", "TABLE"):
            target, name = measure.cube, rest
        elif head in model.cubes and rest:
            target, name = head, rest
        else:
            target, name = measure.cube, ref.text
        cube = model.cubes.get(target)
        if cube is not None and name in cube.measures and f"{target}.{name}" not in seen:
            for leaf in leaf_measures(model, cube.measures[name], seen | {measure.path}):
                if leaf not in found:
                    found.append(leaf)
    return found or [measure]


def _single_value_equal(filters: Iterable[Any], selected: Iterable[str]) -> frozenset[str] | None:
    counts = {d: 1 for d in selected}
    for item in filters:
        if isinstance(item, FilterGroup):
            if item.kind != "and":
                return None
            nested = _single_value_equal(item.items, [])
            if nested is None:
                return None
            for d in nested:
                counts[d] = min(counts.get(d, 2), 1)
            continue
        if item.operator != "equals":
            return None
        counts[item.member] = min(counts.get(item.member, 2), len(item.values or ()))
    return frozenset(counts) if all(v == 1 for v in counts.values()) else None


def query_shape(model: Model, measures: list[Measure], dimensions: list[str], segments: list[str],
                time_dimensions: list[tuple[str, str | None, tuple[str, str] | None]], dimension_filters: list[Any],
                measure_filters: list[Any], has_multiplied_measures: bool) -> QueryShape:
    """Return the QueryShape of a resolved query."""
    filter_members = [leaf.member for leaf in _leaves(dimension_filters)]
    all_measures = list(measures)
    for leaf in _leaves(measure_filters):
        cube_name, _, name = leaf.member.partition(".")
        measure = model.cubes[cube_name].measures[name]
        if measure not in all_measures:
            all_measures.append(measure)
    leaves: list[Measure] = []
    for measure in all_measures:
        for leaf in leaf_measures(model, measure):
            if leaf not in leaves:
                leaves.append(leaf)
    return QueryShape(
        sorted_dimensions=tuple(sorted(set(dimensions) | set(filter_members) | set(segments))),
        selected_dimensions=tuple(sorted(set(dimensions))),
        time_dimensions=tuple(sorted(((d, g) for d, g, _r in time_dimensions), key=_td_order)),
        rollup_time_dimensions=tuple(sorted(((d, rollup_granularity(g, r)) for d, g, r in time_dimensions),
                                            key=_td_order)),
        measures=tuple(dict.fromkeys(m.path for m in all_measures)),
        leaf_measures=tuple(m.path for m in leaves),
        leaf_measures_additive=all(m.type in ROLLUP_ADDITIVE_TYPES for m in leaves),
        measures_additive=all(m.type in ROLLUP_ADDITIVE_TYPES for m in measures),
        has_multiplied_measures=has_multiplied_measures,
        has_cumulative_measures=any(m.cumulative for m in leaves),
        no_time_dimension_without_granularity=all(g for _d, g, _r in time_dimensions),
        filters_within_selected_dimensions=all(m in dimensions for m in filter_members),
        single_value_equal_dimensions=_single_value_equal(dimension_filters, list(dimensions) + list(segments)),
    )


def _td_order(item: tuple[str, str | None]) -> tuple[str, str]:
    return item[0], item[1] or ""


def _expand(granularity: str | None) -> list[str]:
    return GRANULARITY_PARENTS.get(granularity or "day", [granularity or "day"])


def why_not(shape: QueryShape, pre_aggregation: PreAggregation) -> str | None:
    """Return why the query cannot be answered from ``pre_aggregation``, or None when it can."""
    if pre_aggregation.type != "rollup":
        return "only rollup pre-aggregations answer queries"
    references = pre_aggregation.references_dimensions
    rollup_tds = ((pre_aggregation.time_dimension, pre_aggregation.granularity),) if pre_aggregation.time_dimension else ()
    if shape.has_cumulative_measures:
        return "the query has rolling window or running total measures"
    additive_reason = None
    if shape.leaf_measures_additive and not shape.has_multiplied_measures:
        additive_reason = _why_not_additive(shape, pre_aggregation, references, rollup_tds)
        if additive_reason is None:
            return None
    elif shape.has_multiplied_measures:
        additive_reason = "measures are multiplied by a join (fan-out): they cannot be re-aggregated"
    else:
        additive_reason = "not every measure is additive (count, sum, min, max)"
    reason = _why_not_exact(shape, pre_aggregation, references, rollup_tds)
    if reason is None:
        return None
    return f"{additive_reason}; and {reason}"


def _why_not_additive(shape: QueryShape, pre_aggregation: PreAggregation, references: tuple[str, ...],
                      rollup_tds: tuple[tuple[str | None, str | None], ...]) -> str | None:
    missing = [m for m in shape.leaf_measures if m not in pre_aggregation.measures]
    if missing:
        return f"measures not in the rollup: {', '.join(missing)}"
    missing = [d for d in shape.sorted_dimensions if d not in references]
    if missing:
        return f"dimensions, filters or segments not in the rollup: {', '.join(missing)}"
    query_tds = shape.time_dimensions if pre_aggregation.allow_non_strict_date_range_match else shape.rollup_time_dimensions
    for dimension, granularity in query_tds:
        if not any(rd == dimension and rg in _expand(granularity) for rd, rg in rollup_tds):
            wanted = granularity or "day"
            return (f"time dimension {dimension} by {wanted} (or a date range not aligned to it) cannot be "
                    f"rolled up from {', '.join(f'{d} by {g}' for d, g in rollup_tds) or 'no time dimension'}")
    return None


def _why_not_exact(shape: QueryShape, pre_aggregation: PreAggregation, references: tuple[str, ...],
                   rollup_tds: tuple[tuple[str | None, str | None], ...]) -> str | None:
    if not shape.no_time_dimension_without_granularity:
        return "a time dimension without granularity needs an additive query"
    query_tds = shape.time_dimensions if pre_aggregation.allow_non_strict_date_range_match else shape.rollup_time_dimensions
    if tuple(query_tds) != tuple((d, g or "day") for d, g in rollup_tds):
        return "time dimensions differ from the rollup's"
    if not shape.measures_additive and tuple(shape.time_dimensions) != tuple(rollup_tds):
        return "time dimensions differ from the rollup's"
    single = shape.single_value_equal_dimensions
    # With every filter on a selected dimension, the query's dimensions and segments must be
    # the rollup's exactly (segments count: a rollup without the segment has its rows too).
    dimensions_ok = (single is not None and len(references) == len(single) and all(d in single for d in references)) or (
        shape.filters_within_selected_dimensions and tuple(references) == tuple(shape.sorted_dimensions))
    if not dimensions_ok:
        return "dimensions differ from the rollup's exactly"
    if not (all(m in pre_aggregation.measures for m in shape.measures)
            or all(m in pre_aggregation.measures for m in shape.leaf_measures)):
        return "measures not in the rollup"
    return None


def find_rollup(model: Model, cubes: Iterable[str], shape: QueryShape) -> tuple[PreAggregation | None, dict[str, str]]:
    """Return the first rollup of the query's cubes (definition order) that can answer it, and
    why each earlier candidate could not."""
    reasons: dict[str, str] = {}
    for cube_name in cubes:
        for pre_aggregation in model.pre_aggregations.values():
            if pre_aggregation.cube != cube_name or pre_aggregation.type != "rollup":
                continue
            reason = why_not(shape, pre_aggregation)
            if reason is None:
                return pre_aggregation, reasons
            reasons[pre_aggregation.id] = reason
    return None, reasons
