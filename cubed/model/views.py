"""Views: named sets of cube members reached through fixed join paths.

A view member is a proxy: it keeps the cube member's definition and records ``alias_of``
(the member it exposes) and ``join_path`` (the cubes joined, in order, to reach it). The
planner resolves view members to their cube members and pins the join path.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping

from cubed.errors import ModelError
from cubed.model.loader import RawDefinition, strip_lines
from cubed.model.schema import Cube

VIEW_KEYS = {"name", "title", "description", "public", "shown", "visible", "meta", "cubes", "folders",
             "measures", "dimensions", "segments"}
VIEW_CUBE_KEYS = {"join_path", "includes", "excludes", "prefix", "alias", "split"}
INCLUDE_KEYS = {"name", "alias", "title", "description", "format", "meta"}


def _where(raw: RawDefinition, view: str) -> str:
    return f"{raw.file}:{raw.line}: view '{view}'"


def _snake(key: str) -> str:
    out = []
    for ch in key:
        out.append("_" + ch.lower() if ch.isupper() else ch)
    return "".join(out).lstrip("_")


def _visibility(body: Mapping[str, Any]) -> bool | None:
    for key in ("public", "visible", "shown"):
        if body.get(key) is not None:
            return bool(body[key])
    return None


def compile_views(cubes: Mapping[str, Cube], raws: Iterable[RawDefinition]) -> dict[str, Cube]:
    """Return the views of ``raws`` as Cube objects (``is_view``) over the compiled ``cubes``."""
    views: dict[str, Cube] = {}
    for raw in raws:
        body = {_snake(k): v for k, v in raw.body.items() if k != "__line__"}
        name = body["name"]
        where = _where(raw, name)
        unknown = sorted(set(body) - VIEW_KEYS)
        if unknown:
            raise ModelError(f"{where}: unknown propert{'y' if len(unknown) == 1 else 'ies'}: {', '.join(unknown)}")
        if name in cubes or name in views:
            raise ModelError(f"{where}: the name '{name}' is already used by a cube or view")
        for own in ("measures", "dimensions", "segments"):
            if body.get(own):
                raise ModelError(f"{where}: a view's own {own} are not supported; include cube members instead")
        entries = body.get("cubes")
        if not isinstance(entries, list) or not entries:
            raise ModelError(f"{where}: 'cubes' must be a non-empty list of {{join_path, includes}}")
        measures: dict[str, Any] = {}
        dimensions: dict[str, Any] = {}
        segments: dict[str, Any] = {}
        data_sources: set[str] = set()
        for entry in entries:
            _add_entry(where, name, entry, cubes, measures, dimensions, segments, data_sources)
        if len(data_sources) > 1:
            raise ModelError(f"{where}: includes cubes of several data sources: {', '.join(sorted(data_sources))}")
        views[name] = Cube(
            name=name, file=raw.file, title=_text(body.get("title")), description=_text(body.get("description")),
            public=_visibility(body), meta=strip_lines(body.get("meta")), measures=measures,
            dimensions=dimensions, segments=segments, data_source=next(iter(data_sources), "default"),
            is_view=True,
        )
    return views


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _add_entry(where: str, view: str, entry: Any, cubes: Mapping[str, Cube], measures: dict[str, Any],
               dimensions: dict[str, Any], segments: dict[str, Any], data_sources: set[str]) -> None:
    if not isinstance(entry, dict):
        raise ModelError(f"{where}: every entry of 'cubes' must be a mapping with join_path")
    item = {_snake(k): v for k, v in entry.items() if k != "__line__"}
    unknown = sorted(set(item) - VIEW_CUBE_KEYS)
    if unknown:
        raise ModelError(f"{where}: unknown propert{'y' if len(unknown) == 1 else 'ies'} in cubes: {', '.join(unknown)}")
    if item.get("prefix") and item.get("split"):
        raise ModelError(f"{where}: Using split together with prefix is not supported")
    path = [part.strip() for part in str(item.get("join_path") or "").split(".") if part.strip()]
    if not path:
        raise ModelError(f"{where}: join_path is required")
    for cube_name in path:
        if cube_name not in cubes:
            raise ModelError(f"{where}: join_path {'.'.join(path)}: cube '{cube_name}' does not exist")
    for source, target in zip(path, path[1:]):
        if not any(j.target == target for j in cubes[source].joins):
            raise ModelError(f"{where}: join_path {'.'.join(path)}: '{source}' has no join to '{target}'")
    cube = cubes[path[-1]]
    data_sources.add(cube.data_source)
    prefix = str(item.get("alias") or cube.name) + "_" if item.get("prefix") else ""
    excludes = set(item.get("excludes") or [])
    includes = item.get("includes", "*")
    chosen: list[tuple[str, dict[str, Any]]] = []
    if includes == "*":
        chosen = [(n, {}) for n in list(cube.measures) + list(cube.dimensions) + list(cube.segments)]
    elif isinstance(includes, list):
        for include in includes:
            if isinstance(include, str):
                chosen.append((include, {}))
            elif isinstance(include, dict) and include.get("name"):
                extra = sorted(set(k for k in include if k != "__line__") - INCLUDE_KEYS)
                if extra:
                    raise ModelError(f"{where}: unknown include properties: {', '.join(extra)}")
                chosen.append((str(include["name"]), include))
            else:
                raise ModelError(f"{where}: includes must be \"*\" or a list of names or {{name, alias}}")
    else:
        raise ModelError(f"{where}: includes must be \"*\" or a list")
    join_path = tuple(path)
    for member_name, options in chosen:
        if member_name in excludes:
            continue
        exposed = str(options.get("alias") or f"{prefix}{member_name}")
        overrides = {k: options[k] for k in ("title", "description", "format", "meta") if options.get(k) is not None}
        for source, target in ((cube.measures, measures), (cube.dimensions, dimensions), (cube.segments, segments)):
            if member_name in source:
                if exposed in measures or exposed in dimensions or exposed in segments:
                    raise ModelError(f"{where}: member '{exposed}' is included twice (use prefix or alias)")
                original = source[member_name]
                target[exposed] = replace(original, cube=view, name=exposed, alias_of=original.path,
                                          join_path=join_path, **overrides)
                break
        else:
            raise ModelError(f"{where}: '{member_name}' is not a member of cube '{cube.name}'")
