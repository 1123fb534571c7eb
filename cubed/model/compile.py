"""Raw YAML definitions -> a validated, compiled ``Model``.

Validation rules are small functions; every error names the file, the cube and the member.
Keys may be snake_case (Cube's YAML) or camelCase (Cube's JS); both are normalised to
snake_case here, as are enum values (``countDistinct`` -> ``count_distinct``,
``belongsTo`` -> ``many_to_one``).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from cubed.errors import ModelError
from cubed.model.intervals import parse_every
from cubed.model.loader import RawDefinition, strip_lines
from cubed.model.schema import (
    CALCULATED_MEASURE_TYPES,
    DIMENSION_TYPES,
    MEASURE_TYPES,
    CaseWhen,
    Cube,
    Dimension,
    DimensionCase,
    Join,
    Measure,
    Model,
    Segment,
    SqlTemplate,
)
from cubed.model.templates import FILTER_PARAMS, SECURITY_CONTEXT, parse_template
from cubed.model.preaggregations import compile_pre_aggregations
from cubed.model.views import compile_views

IDENTIFIER = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z])")

RELATIONSHIP_ALIASES = {
    "many_to_one": "many_to_one", "belongs_to": "many_to_one", "belongsTo": "many_to_one",
    "manyToOne": "many_to_one",
    "one_to_many": "one_to_many", "has_many": "one_to_many", "hasMany": "one_to_many",
    "oneToMany": "one_to_many",
    "one_to_one": "one_to_one", "has_one": "one_to_one", "hasOne": "one_to_one", "oneToOne": "one_to_one",
}

CUBE_KEYS = {
    "name", "sql", "sql_table", "sql_alias", "data_source", "extends", "title", "description",
    "public", "shown", "visible", "meta", "refresh_key", "rewrite_queries", "joins", "measures",
    "dimensions", "segments", "pre_aggregations", "hierarchies", "access_policy", "folders",
}
MEASURE_KEYS = {
    "name", "type", "sql", "filters", "format", "title", "description", "public", "shown", "visible",
    "drill_members", "drill_filters", "rolling_window", "cumulative", "meta", "multi_stage",
    "time_shift", "group_by", "reduce_by", "add_group_by", "order_by", "aliases",
}
DIMENSION_KEYS = {
    "name", "type", "sql", "case", "primary_key", "public", "shown", "visible", "sub_query",
    "propagate_filters_to_sub_query", "title", "description", "format", "meta",
    "suggest_filter_values", "granularities", "latitude", "longitude", "field_type", "aliases",
}
SEGMENT_KEYS = {"name", "sql", "title", "description", "public", "shown", "visible", "meta"}
JOIN_KEYS = {"name", "relationship", "sql"}
MEASURE_FORMATS = ("percent", "currency", "number")


def snake_case(key: str) -> str:
    """Return ``key`` in snake_case (``sqlTable`` -> ``sql_table``; snake input unchanged)."""
    return _CAMEL_BOUNDARY.sub(lambda m: "_" + m.group(1).lower(), key)


def _normalise_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {snake_case(k): v for k, v in mapping.items() if k != "__line__"}


def _visibility(body: Mapping[str, Any]) -> bool | None:
    for key in ("public", "visible", "shown"):
        if body.get(key) is not None:
            return bool(body[key])
    return None


def _where(raw: RawDefinition, cube: str, member: str | None = None, line: int | None = None) -> str:
    place = f"{raw.file}:{line or raw.line}"
    return f"{place}: cube '{cube}'" + (f", member '{member}'" if member else "")


def _check_keys(body: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ModelError(f"{where}: unknown propert{'y' if len(unknown) == 1 else 'ies'}: {', '.join(unknown)}")


def _members(raw: RawDefinition, cube: str, body: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    """Return a member list as normalised dicts, accepting Cube's YAML list or JS object form."""
    value = body.get(kind)
    if value is None:
        return []
    items: list[dict[str, Any]] = []
    if isinstance(value, dict):
        for name, member in value.items():
            if name == "__line__":
                continue
            if not isinstance(member, dict):
                raise ModelError(f"{_where(raw, cube)}: {kind}.{name} must be a mapping")
            items.append({**member, "name": name})
    elif isinstance(value, list):
        for member in value:
            if not isinstance(member, dict) or not member.get("name"):
                raise ModelError(f"{_where(raw, cube)}: every entry of {kind} must be a mapping with a name")
            items.append(member)
    else:
        raise ModelError(f"{_where(raw, cube)}: {kind} must be a list")
    return items


class ModelCompiler:
    """Compiles raw definitions; ``dialect_for`` maps a data source name to its sqlglot dialect."""

    def __init__(self, dialect_for: Callable[[str], str]) -> None:
        self.dialect_for = dialect_for

    def compile(self, definitions: Iterable[RawDefinition], compile_context: Mapping[str, Any] | None = None) -> Model:
        """Return the compiled Model; raises ModelError at the first invalid definition.

        ``{COMPILE_CONTEXT.<path>}`` in any string of the model is replaced first by that value
        of ``compile_context`` (the request context of the app the model is compiled for)."""
        definitions = [replace(raw, body=substitute_compile_context(raw.body, compile_context or {},
                                                                      f"{raw.file}:{raw.line}"))
                       for raw in definitions]
        raw_cubes: dict[str, RawDefinition] = {}
        raw_views: list[RawDefinition] = []
        for raw in definitions:
            name = raw.body.get("name")
            if not isinstance(name, str) or not IDENTIFIER.match(name):
                raise ModelError(f"{raw.file}:{raw.line}: a {raw.kind} needs a name matching {IDENTIFIER.pattern}, got {name!r}")
            if raw.kind == "view":
                raw_views.append(raw)
                continue
            if name in raw_cubes:
                other = raw_cubes[name]
                raise ModelError(f"{raw.file}:{raw.line}: cube '{name}' is already defined in {other.file}:{other.line}")
            raw_cubes[name] = raw
        bodies = {name: self._resolve_extends(name, raw_cubes, ()) for name in raw_cubes}
        cubes = {name: self._cube(raw_cubes[name], bodies[name]) for name in raw_cubes}
        _validate_references(Model(cubes=cubes, version=""), raw_cubes)
        _validate_joins(Model(cubes=cubes, version=""), raw_cubes)
        views = compile_views(cubes, raw_views)
        pre_aggregations = compile_pre_aggregations(Model(cubes=cubes, version=""),
                                                    {name: f"{raw.file}:{raw.line}" for name, raw in raw_cubes.items()})
        return Model(cubes={**cubes, **views}, version=_version(definitions), pre_aggregations=pre_aggregations)

    def _resolve_extends(self, name: str, raw_cubes: Mapping[str, RawDefinition], seen: tuple[str, ...]) -> dict[str, Any]:
        raw = raw_cubes[name]
        body = _normalise_keys(raw.body)
        parent = body.get("extends")
        if not parent:
            return body
        parent_name = str(parent).strip("{} ")
        if parent_name in seen or parent_name == name:
            raise ModelError(f"{_where(raw, name)}: circular extends: {' -> '.join(seen + (name, parent_name))}")
        if parent_name not in raw_cubes:
            raise ModelError(f"{_where(raw, name)}: extends unknown cube '{parent_name}'")
        base = self._resolve_extends(parent_name, raw_cubes, seen + (name,))
        merged = {k: v for k, v in base.items() if k not in ("name", "title", "extends", "public", "shown", "visible")}
        for kind in ("measures", "dimensions", "segments", "joins", "pre_aggregations"):
            inherited = {m["name"]: m for m in _members(raw_cubes[parent_name], parent_name, base, kind)}
            own = {m["name"]: m for m in _members(raw, name, body, kind)}
            if inherited or own:
                merged[kind] = list({**inherited, **own}.values())
        for key, value in body.items():
            if key not in ("measures", "dimensions", "segments", "joins", "pre_aggregations", "extends"):
                merged[key] = value
        if "sql" in body and "sql_table" not in body:
            merged.pop("sql_table", None)
        if "sql_table" in body and "sql" not in body:
            merged.pop("sql", None)
        return merged

    def _cube(self, raw: RawDefinition, body: dict[str, Any]) -> Cube:
        name = body["name"]
        where = _where(raw, name)
        _check_keys(body, CUBE_KEYS, where)
        data_source = str(body.get("data_source") or "default")
        try:
            dialect = self.dialect_for(data_source)
        except KeyError:
            raise ModelError(f"{where}: unknown data_source '{data_source}'") from None
        if body.get("sql") is not None and body.get("sql_table") is not None:
            raise ModelError(f"{where}: You must use either sql or sqlTable within a model, but not both")
        sql = sql_table = None
        if body.get("sql") is not None:
            sql = parse_template(str(body["sql"]), dialect, f"{where}, sql", statement=True)
        elif body.get("sql_table") is not None:
            sql_table = parse_template(str(body["sql_table"]), dialect, f"{where}, sql_table")
        else:
            raise ModelError(f"{where}: sql or sql_table is required")
        refresh_key = body.get("refresh_key")
        if refresh_key is not None:
            _check_refresh_key(refresh_key, where)
        sql_alias = body.get("sql_alias")
        if sql_alias is not None and not IDENTIFIER.match(str(sql_alias)):
            raise ModelError(f"{where}: sql_alias must match {IDENTIFIER.pattern}")

        measures: dict[str, Measure] = {}
        dimensions: dict[str, Dimension] = {}
        segments: dict[str, Segment] = {}
        member_names: set[str] = set()

        def claim(member: Mapping[str, Any], kind: str) -> tuple[str, str, dict[str, Any]]:
            member_name = str(member.get("name"))
            line = member.get("__line__") if isinstance(member, dict) else None
            member_where = _where(raw, name, member_name, line)
            if not IDENTIFIER.match(member_name):
                raise ModelError(f"{member_where}: {kind} name must match {IDENTIFIER.pattern}")
            if member_name in member_names:
                raise ModelError(f"{member_where}: '{member_name}' is defined twice in cube '{name}'")
            member_names.add(member_name)
            return member_name, member_where, _normalise_keys(member)

        for member in _members(raw, name, body, "measures"):
            member_name, member_where, m = claim(member, "measure")
            measures[member_name] = self._measure(name, member_name, m, dialect, member_where)
        for member in _members(raw, name, body, "dimensions"):
            member_name, member_where, d = claim(member, "dimension")
            dimensions[member_name] = self._dimension(name, member_name, d, dialect, member_where)
        for member in _members(raw, name, body, "segments"):
            member_name, member_where, s = claim(member, "segment")
            _check_keys(s, SEGMENT_KEYS, member_where)
            if s.get("sql") is None:
                raise ModelError(f"{member_where}: segment sql is required")
            segments[member_name] = Segment(
                cube=name, name=member_name,
                sql=parse_template(str(s["sql"]), dialect, member_where),
                title=_opt_str(s.get("title")), description=_opt_str(s.get("description")),
                public=_visibility(s), meta=strip_lines(s.get("meta")),
            )

        joins: list[Join] = []
        for member in _members(raw, name, body, "joins"):
            j = _normalise_keys(member)
            target = str(j.get("name"))
            join_where = f"{_where(raw, name, line=member.get('__line__'))}, join '{target}'"
            _check_keys(j, JOIN_KEYS, join_where)
            relationship = RELATIONSHIP_ALIASES.get(str(j.get("relationship")))
            if relationship is None:
                raise ModelError(
                    f"{join_where}: relationship must be one of many_to_one, one_to_many, one_to_one "
                    f"(or belongs_to, has_many, has_one), got {j.get('relationship')!r}"
                )
            if j.get("sql") is None:
                raise ModelError(f"{join_where}: join sql is required")
            joins.append(Join(source=name, target=target, relationship=relationship,
                              sql=parse_template(str(j["sql"]), dialect, join_where)))

        return Cube(
            name=name, file=raw.file, sql=sql, sql_table=sql_table,
            sql_alias=str(sql_alias) if sql_alias is not None else None, data_source=data_source,
            title=_opt_str(body.get("title")), description=_opt_str(body.get("description")),
            public=_visibility(body), meta=strip_lines(body.get("meta")),
            measures=measures, dimensions=dimensions, segments=segments, joins=tuple(joins),
            refresh_key=strip_lines(body.get("refresh_key")),
            pre_aggregations=tuple(strip_lines(p) for p in _members(raw, name, body, "pre_aggregations")),
        )

    def _measure(self, cube: str, name: str, m: dict[str, Any], dialect: str, where: str) -> Measure:
        _check_keys(m, MEASURE_KEYS, where)
        measure_type = snake_case(str(m.get("type", "")))
        if measure_type not in MEASURE_TYPES:
            raise ModelError(f"{where}: measure type must be one of {', '.join(MEASURE_TYPES)}, got {m.get('type')!r}")
        sql = parse_template(str(m["sql"]), dialect, where) if m.get("sql") is not None else None
        if sql is None and measure_type not in ("count",):
            raise ModelError(f"{where}: sql is required for a measure of type {measure_type}")
        filters: list[SqlTemplate] = []
        for item in m.get("filters") or []:
            if not isinstance(item, dict) or item.get("sql") is None:
                raise ModelError(f"{where}: every measure filter needs sql")
            filters.append(parse_template(str(item["sql"]), dialect, f"{where}, filter"))
        measure_format = m.get("format")
        if measure_format is not None and measure_format not in MEASURE_FORMATS:
            raise ModelError(f"{where}: format must be one of {', '.join(MEASURE_FORMATS)}")
        rolling = m.get("rolling_window")
        if rolling is not None:
            if not isinstance(rolling, dict):
                raise ModelError(f"{where}: rolling_window must be a mapping")
            rolling = {snake_case(k): v for k, v in rolling.items() if k != "__line__"}
        drill = m.get("drill_members") or []
        if not isinstance(drill, list) or not all(isinstance(x, str) for x in drill):
            raise ModelError(f"{where}: drill_members must be a list of member names")
        return Measure(
            cube=cube, name=name, type=measure_type, sql=sql, filters=tuple(filters),
            title=_opt_str(m.get("title")), description=_opt_str(m.get("description")),
            format=measure_format, public=_visibility(m), drill_members=tuple(drill),
            rolling_window=rolling, meta=strip_lines(m.get("meta")),
        )

    def _dimension(self, cube: str, name: str, d: dict[str, Any], dialect: str, where: str) -> Dimension:
        _check_keys(d, DIMENSION_KEYS, where)
        dimension_type = str(d.get("type", ""))
        if dimension_type not in DIMENSION_TYPES:
            raise ModelError(f"{where}: dimension type must be one of {', '.join(DIMENSION_TYPES)}, got {d.get('type')!r}")
        case = None
        sql = None
        if d.get("case") is not None:
            case = self._case(d["case"], dialect, where)
        elif d.get("sql") is not None:
            sql = parse_template(str(d["sql"]), dialect, where)
        elif dimension_type != "geo":
            raise ModelError(f"{where}: sql or case is required for a dimension")
        return Dimension(
            cube=cube, name=name, type=dimension_type, sql=sql, case=case,
            primary_key=bool(d.get("primary_key", False)), sub_query=bool(d.get("sub_query", False)),
            propagate_filters_to_sub_query=bool(d.get("propagate_filters_to_sub_query", False)),
            title=_opt_str(d.get("title")), description=_opt_str(d.get("description")),
            format=strip_lines(d.get("format")), public=_visibility(d),
            suggest_filter_values=d.get("suggest_filter_values"), field_type=d.get("field_type"),
            meta=strip_lines(d.get("meta")),
        )

    def _case(self, value: Any, dialect: str, where: str) -> DimensionCase:
        if not isinstance(value, dict) or not isinstance(value.get("when"), list) or not value["when"]:
            raise ModelError(f"{where}: case needs a non-empty 'when' list")
        branches: list[CaseWhen] = []
        for branch in value["when"]:
            if not isinstance(branch, dict) or branch.get("sql") is None or "label" not in branch:
                raise ModelError(f"{where}: every case.when entry needs sql and label")
            label = branch["label"]
            if isinstance(label, dict):
                if label.get("sql") is None:
                    raise ModelError(f"{where}: a case label mapping needs sql")
                branches.append(CaseWhen(sql=parse_template(str(branch["sql"]), dialect, where),
                                         label_sql=parse_template(str(label["sql"]), dialect, where)))
            else:
                branches.append(CaseWhen(sql=parse_template(str(branch["sql"]), dialect, where), label=str(label)))
        else_label = else_sql = None
        otherwise = value.get("else")
        if isinstance(otherwise, dict) and "label" in otherwise:
            label = otherwise["label"]
            if isinstance(label, dict):
                else_sql = parse_template(str(label.get("sql")), dialect, where)
            elif label is not None:
                else_label = str(label)
        return DimensionCase(when=tuple(branches), else_label=else_label, else_sql=else_sql)


REFRESH_KEY_KEYS = {"every", "sql", "timezone", "immutable", "incremental", "update_window"}


def _check_refresh_key(value: Any, where: str) -> None:
    """A refresh_key is a mapping of every/sql/timezone whose ``every`` parses."""
    if not isinstance(value, dict):
        raise ModelError(f"{where}: refresh_key must be a mapping with every and/or sql")
    keys = {snake_case(k) for k in value if k != "__line__"}
    unknown = sorted(keys - REFRESH_KEY_KEYS)
    if unknown:
        raise ModelError(f"{where}: unknown refresh_key propert{'y' if len(unknown) == 1 else 'ies'}: {', '.join(unknown)}")
    if value.get("every") is not None:
        parse_every(str(value["every"]), value.get("timezone"), f"{where}, refresh_key")


_COMPILE_CONTEXT = re.compile(r"\{\s*COMPILE_CONTEXT\.([_a-zA-Z][_a-zA-Z0-9]*(?:\.[_a-zA-Z][_a-zA-Z0-9]*)*)\s*\}")
_SAFE_COMPILE_VALUE = re.compile(r"^[A-Za-z0-9_]*$")


def substitute_compile_context(value: Any, context: Mapping[str, Any], where: str) -> Any:
    """Return ``value`` (a YAML tree) with ``{COMPILE_CONTEXT.path}`` replaced in every string.

    Values go into SQL text, so only identifier characters are allowed; a missing path is
    empty (the model is still checked when compiled without a context)."""
    if isinstance(value, str):
        if "COMPILE_CONTEXT" not in value:
            return value

        def replace_one(match: re.Match[str]) -> str:
            found: Any = context
            for part in match.group(1).split("."):
                found = found.get(part) if isinstance(found, Mapping) else None
            text = "" if found is None else str(found)
            if not _SAFE_COMPILE_VALUE.match(text):
                raise ModelError(f"{where}: COMPILE_CONTEXT.{match.group(1)} is {text!r}: only letters, digits "
                                 "and _ can be put into a model")
            return text

        return _COMPILE_CONTEXT.sub(replace_one, value)
    if isinstance(value, dict):
        return {k: substitute_compile_context(v, context, where) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_compile_context(v, context, where) for v in value]
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _version(definitions: list[RawDefinition]) -> str:
    digest = hashlib.sha1()
    for raw in definitions:
        digest.update(raw.file.encode())
        digest.update(json.dumps(strip_lines(raw.body), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


CONTEXT_REFERENCES = ("FILTER_PARAMS", "SECURITY_CONTEXT", "COMPILE_CONTEXT", "SQL_UTILS", "USER_CONTEXT")


def member_templates(cube: Cube) -> Iterable[tuple[str, SqlTemplate]]:
    """Yield (member name, template) for every SQL snippet a cube owns, joins included."""
    for source in (cube.sql, cube.sql_table):
        if source is not None:
            yield "sql", source
    for measure in cube.measures.values():
        if measure.sql is not None:
            yield measure.name, measure.sql
        for template in measure.filters:
            yield measure.name, template
    for dimension in cube.dimensions.values():
        if dimension.sql is not None:
            yield dimension.name, dimension.sql
        if dimension.case is not None:
            for branch in dimension.case.when:
                yield dimension.name, branch.sql
                if branch.label_sql is not None:
                    yield dimension.name, branch.label_sql
            if dimension.case.else_sql is not None:
                yield dimension.name, dimension.case.else_sql
    for segment in cube.segments.values():
        yield segment.name, segment.sql
    for join in cube.joins:
        yield f"join {join.target}", join.sql


def _validate_references(model: Model, raw_cubes: Mapping[str, RawDefinition]) -> None:
    """Every ``{...}`` must name CUBE/TABLE, a cube, a member, ``Cube.member`` or a context
    variable; member references must not loop."""
    for cube in model.cubes.values():
        raw = raw_cubes[cube.name]
        for member, template in member_templates(cube):
            for ref in template.refs:
                head, _, rest = ref.text.partition(".")
                if head == "FILTER_PARAMS":
                    _check_filter_params(model, ref.text, _where(raw, cube.name, member))
                    continue
                if head == "SECURITY_CONTEXT" and not SECURITY_CONTEXT.match(ref.text):
                    raise ModelError(f"{_where(raw, cube.name, member)}: {{{ref.text}}} must read "
                                     "{SECURITY_CONTEXT.<key>.filter('<sql>')}, requiredFilter('<sql>') or unsafeValue()")
                if head in ("CUBE", "TABLE") or head in CONTEXT_REFERENCES:
                    continue
                if not rest and (head in model.cubes or _member_exists(cube, head)):
                    continue
                if rest and head in model.cubes:
                    continue
                raise ModelError(
                    f"{_where(raw, cube.name, member)}: unknown reference {{{ref.text}}}"
                    " (expected CUBE, a cube name, a member of this cube, or Cube.member)"
                )
    _check_cycles(model, raw_cubes)


def _check_filter_params(model: Model, text: str, where: str) -> None:
    match = FILTER_PARAMS.match(text)
    if match is None:
        raise ModelError(f"{where}: {{{text}}} must read {{FILTER_PARAMS.<cube>.<dimension>.filter('<sql>')}}")
    cube_name, dimension = match.group(1), match.group(2)
    target = model.cubes.get(cube_name)
    if target is None or dimension not in target.dimensions:
        raise ModelError(f"{where}: {{{text}}} refers to an unknown dimension {cube_name}.{dimension}")


def _member_exists(cube: Cube, name: str) -> bool:
    return name in cube.measures or name in cube.dimensions or name in cube.segments


def _member_refs(model: Model, cube: Cube, template: SqlTemplate | None) -> list[tuple[str, str]]:
    """Return the (cube, member) pairs a template refers to."""
    found: list[tuple[str, str]] = []
    if template is None:
        return found
    for ref in template.refs:
        head, _, rest = ref.text.partition(".")
        if head in ("CUBE", "TABLE"):
            if rest and _member_exists(cube, rest):
                found.append((cube.name, rest))
        elif head in model.cubes and rest:
            target = model.cubes[head]
            if _member_exists(target, rest):
                found.append((head, rest))
        elif not rest and _member_exists(cube, head):
            found.append((cube.name, head))
    return found


def _check_cycles(model: Model, raw_cubes: Mapping[str, RawDefinition]) -> None:
    def templates_of(cube: Cube, name: str) -> list[SqlTemplate | None]:
        if name in cube.measures:
            measure = cube.measures[name]
            return [measure.sql, *measure.filters]
        if name in cube.dimensions:
            dimension = cube.dimensions[name]
            if dimension.case is not None:
                return [b.sql for b in dimension.case.when] + [b.label_sql for b in dimension.case.when] + [dimension.case.else_sql]
            return [dimension.sql]
        return [cube.segments[name].sql]

    state: dict[tuple[str, str], int] = {}

    def visit(key: tuple[str, str], path: tuple[tuple[str, str], ...]) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            loop = " -> ".join(f"{c}.{m}" for c, m in path + (key,))
            raise ModelError(f"{_where(raw_cubes[key[0]], key[0], key[1])}: circular reference: {loop}")
        state[key] = 1
        cube = model.cubes[key[0]]
        for template in templates_of(cube, key[1]):
            for ref in _member_refs(model, cube, template):
                visit(ref, path + (key,))
        state[key] = 2

    for cube in model.cubes.values():
        for name in list(cube.measures) + list(cube.dimensions) + list(cube.segments):
            visit((cube.name, name), ())


def _validate_joins(model: Model, raw_cubes: Mapping[str, RawDefinition]) -> None:
    """Join targets must exist; both sides need a primary key when they have aggregates
    (Cube: ``primary key for '<cube>' is required when join is defined ...``)."""
    for cube in model.cubes.values():
        raw = raw_cubes[cube.name]
        for join in cube.joins:
            if join.target not in model.cubes:
                raise ModelError(f"{_where(raw, cube.name)}: join to '{join.target}': Cube {join.target} doesn't exist")
            for side in (cube, model.cubes[join.target]):
                aggregating = [m for m in side.measures.values()
                               if m.type in ("sum", "avg", "count", "number")]
                if aggregating and not side.primary_keys:
                    raise ModelError(
                        f"{_where(raw, cube.name)}: join to '{join.target}': primary key for '{side.name}' "
                        "is required when join is defined in order to make aggregates work properly"
                    )


def is_calculated(measure: Measure) -> bool:
    """Return whether a measure's SQL is used as written (number/string/time/boolean)."""
    return measure.type in CALCULATED_MEASURE_TYPES
