"""Pre-aggregation definitions of the model: ``rollup`` and ``original_sql``, validated at
compile time with errors naming the file, the cube and the pre-aggregation.

Member references (``measures: [count, Users.state]``, ``time_dimension: createdAt``) are
resolved to member paths here; references are sorted as Cube's evaluator sorts them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from cubed.errors import ModelError
from cubed.model.intervals import Every, parse_every
from cubed.model.schema import Cube, Model

PRE_AGGREGATION_TYPES = ("rollup", "original_sql")
GRANULARITIES = ("second", "minute", "hour", "day", "week", "month", "quarter", "year")
PARTITION_GRANULARITIES = ("hour", "day", "week", "month", "quarter", "year")
KEYS = {
    "name", "type", "measures", "dimensions", "segments", "time_dimension", "granularity",
    "partition_granularity", "refresh_key", "build_range_start", "build_range_end", "indexes",
    "scheduled_refresh", "external", "sql_alias", "allow_non_strict_date_range_match",
}
# Cube features that need Cube Store or streaming sources: refused rather than ignored, so
# that a model never silently means something else here. (``external`` is accepted: tables
# are always built in the data source itself.)
UNSUPPORTED_KEYS = {"use_original_sql_pre_aggregations", "unique_key_columns", "read_only", "union_with_source_data",
                    "rollup_references", "rollups", "lambda"}
REFRESH_KEYS = {"every", "sql", "timezone", "incremental", "update_window"}
_UPDATE_WINDOW = re.compile(r"^\s*(\d+)\s+(second|minute|hour|day|week)s?\s*$", re.IGNORECASE)
_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


@dataclass(frozen=True)
class PreAggregationRefresh:
    """A pre-aggregation's refresh key: ``every`` (evaluated from the clock) and/or ``sql``;
    ``incremental`` freezes partitions older than ``update_window`` seconds."""

    every: Every | None = None
    sql: str | None = None
    incremental: bool = False
    update_window: float | None = None


@dataclass(frozen=True)
class PreAggregation:
    """One pre-aggregation of a cube, its members as paths (sorted, as Cube compares them)."""

    cube: str
    name: str
    type: str
    measures: tuple[str, ...] = ()
    dimensions: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    time_dimension: str | None = None
    granularity: str | None = None
    partition_granularity: str | None = None
    refresh: PreAggregationRefresh = field(default_factory=PreAggregationRefresh)
    build_range_start: str | None = None
    build_range_end: str | None = None
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    scheduled_refresh: bool = True
    sql_alias: str | None = None
    allow_non_strict_date_range_match: bool = False

    @property
    def id(self) -> str:
        """Return ``Cube.preAggregation``."""
        return f"{self.cube}.{self.name}"

    @property
    def references_dimensions(self) -> tuple[str, ...]:
        """Return dimensions and segments together, sorted (Cube's references.dimensions)."""
        return tuple(sorted(self.dimensions + self.segments))


def _snake(key: str) -> str:
    return _CAMEL.sub(lambda m: "_" + m.group(1).lower(), key)


def _member_list(value: Any, cube: Cube, model: Model, kind: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelError(f"{where}: {kind} must be a list of member names")
    return tuple(sorted(_member(v, cube, model, kind, where) for v in value))


def _member(reference: str, cube: Cube, model: Model, kind: str, where: str) -> str:
    text = reference.strip().strip("{}").strip()
    head, _, rest = text.partition(".")
    if head in ("CUBE", "TABLE"):
        target, name = cube.name, rest
    elif rest:
        target, name = head, rest
    else:
        target, name = cube.name, head
    owner = model.cubes.get(target)
    members = getattr(owner, kind, None) if owner is not None else None
    if not members or name not in members:
        raise ModelError(f"{where}: {kind[:-1]} '{reference}' not found")
    return f"{target}.{name}"


def compile_pre_aggregations(model: Model, where_of: Mapping[str, str]) -> dict[str, PreAggregation]:
    """Return every pre-aggregation of the model by id; ModelError at the first invalid one.

    ``where_of`` maps a cube name to its ``file:line`` for messages."""
    result: dict[str, PreAggregation] = {}
    for cube in model.cubes.values():
        for raw in cube.pre_aggregations:
            body = {_snake(k): v for k, v in raw.items()}
            name = str(body.get("name"))
            where = f"{where_of.get(cube.name, cube.file)}: cube '{cube.name}', pre-aggregation '{name}'"
            result[f"{cube.name}.{name}"] = _pre_aggregation(cube, model, body, where)
    return result


def _pre_aggregation(cube: Cube, model: Model, body: dict[str, Any], where: str) -> PreAggregation:
    for key in ("name", "sql_alias"):
        value = body.get(key)
        if (key == "name" or value is not None) and not (isinstance(value, str) and _IDENTIFIER.match(value)):
            raise ModelError(f"{where}: {key} must be an identifier (letters, digits, _), got {value!r}")
    unsupported = sorted(set(body) & UNSUPPORTED_KEYS)
    if unsupported:
        raise ModelError(f"{where}: {', '.join(unsupported)} {'is' if len(unsupported) == 1 else 'are'} not supported "
                         "by cubed (pre-aggregations are built in the data source, without Cube Store)")
    unknown = sorted(set(body) - KEYS)
    if unknown:
        raise ModelError(f"{where}: unknown propert{'y' if len(unknown) == 1 else 'ies'}: {', '.join(unknown)}")
    kind = _snake(str(body.get("type") or "rollup"))
    if kind in ("rollup_join", "rollup_lambda"):
        raise ModelError(f"{where}: type {body.get('type')} needs Cube Store and is not supported by cubed")
    if kind not in PRE_AGGREGATION_TYPES:
        raise ModelError(f"{where}: type must be one of {', '.join(PRE_AGGREGATION_TYPES)}, got {body.get('type')!r}")
    time_dimension = None
    if body.get("time_dimension") is not None:
        time_dimension = _member(str(body["time_dimension"]), cube, model, "dimensions", where)
        owner, _, dim = time_dimension.partition(".")
        if model.cubes[owner].dimensions[dim].type != "time":
            raise ModelError(f"{where}: time_dimension '{body['time_dimension']}' is not a time dimension")
    granularity = body.get("granularity")
    if granularity is not None and granularity not in GRANULARITIES:
        raise ModelError(f"{where}: granularity must be one of {', '.join(GRANULARITIES)}")
    if kind == "rollup" and (time_dimension is None) != (granularity is None):
        raise ModelError(f"{where}: time_dimension and granularity go together")
    partition = body.get("partition_granularity")
    if partition is not None:
        if partition not in PARTITION_GRANULARITIES:
            raise ModelError(f"{where}: partition_granularity must be one of {', '.join(PARTITION_GRANULARITIES)}")
        if time_dimension is None:
            raise ModelError(f"{where}: partition_granularity needs a time_dimension")
    if kind == "original_sql" and any(body.get(k) for k in ("measures", "dimensions", "segments")):
        raise ModelError(f"{where}: an original_sql pre-aggregation has no measures, dimensions or segments")
    measures = _member_list(body.get("measures"), cube, model, "measures", where)
    for path in measures:
        owner, _, name = path.partition(".")
        measure = model.cubes[owner].measures[name]
        if measure.cumulative:
            raise ModelError(f"{where}: measure '{path}' is a rolling window / running total and cannot be pre-aggregated")
    indexes: list[tuple[str, tuple[str, ...]]] = []
    raw_indexes = body.get("indexes") or []
    if isinstance(raw_indexes, dict):
        raw_indexes = [{"name": k, **(v or {})} for k, v in raw_indexes.items() if k != "__line__"]
    for index in raw_indexes:
        if not isinstance(index, dict) or not index.get("name") or not isinstance(index.get("columns"), list):
            raise ModelError(f"{where}: every index needs a name and a list of columns")
        columns = tuple(_index_column(c, cube, model, where) for c in index["columns"])
        indexes.append((str(index["name"]), columns))
    return PreAggregation(
        cube=cube.name, name=str(body["name"]), type=kind, measures=measures,
        dimensions=_member_list(body.get("dimensions"), cube, model, "dimensions", where),
        segments=_member_list(body.get("segments"), cube, model, "segments", where),
        time_dimension=time_dimension, granularity=granularity, partition_granularity=partition,
        refresh=_refresh(body.get("refresh_key"), where),
        build_range_start=_range_sql(body.get("build_range_start"), where, "build_range_start"),
        build_range_end=_range_sql(body.get("build_range_end"), where, "build_range_end"),
        indexes=tuple(indexes), scheduled_refresh=bool(body.get("scheduled_refresh", True)),
        sql_alias=body.get("sql_alias"),
        allow_non_strict_date_range_match=bool(body.get("allow_non_strict_date_range_match", False)),
    )


def _index_column(reference: Any, cube: Cube, model: Model, where: str) -> str:
    text = str(reference)
    try:
        return _member(text, cube, model, "dimensions", where)
    except ModelError:
        return _member(text, cube, model, "measures", where)


def _range_sql(value: Any, where: str, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value.get("sql"):
        raise ModelError(f"{where}: {key} must be a mapping with sql")
    return str(value["sql"])


def _refresh(value: Any, where: str) -> PreAggregationRefresh:
    if value is None:
        return PreAggregationRefresh()
    if not isinstance(value, dict):
        raise ModelError(f"{where}: refresh_key must be a mapping")
    body = {_snake(k): v for k, v in value.items() if k != "__line__"}
    unknown = sorted(set(body) - REFRESH_KEYS)
    if unknown:
        raise ModelError(f"{where}: unknown refresh_key propert{'y' if len(unknown) == 1 else 'ies'}: {', '.join(unknown)}")
    every = parse_every(str(body["every"]), body.get("timezone"), f"{where}, refresh_key") if body.get("every") else None
    window = None
    if body.get("update_window") is not None:
        match = _UPDATE_WINDOW.match(str(body["update_window"]))
        if match is None:
            raise ModelError(f"{where}: update_window must be like '7 day', got {body['update_window']!r}")
        window = float(int(match.group(1)) * _SECONDS[match.group(2).lower()])
    return PreAggregationRefresh(every=every, sql=str(body["sql"]) if body.get("sql") else None,
                                 incremental=bool(body.get("incremental", False)), update_window=window)
