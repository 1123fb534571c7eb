"""``/v1/meta`` and the per-member descriptions that ``/v1/load`` annotations are cut from.

Titles follow Cube 0.32: ``inflection.titleize(underscore(camelCase(name, pascal)))`` —
``createdAt`` -> ``Created at``, ``LineItems`` -> ``Line Items``. Fields Cube leaves
undefined (and JSON drops) are left out here too, in Cube's key order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from cubed.model.joins import JoinGraph
from cubed.model.schema import Cube, Dimension, Measure, Model, Segment

_SEPARATORS_AND_IDENTIFIER = re.compile(r"[_.\- ]+([^\W_]|_|$)", re.UNICODE)
_NUMBERS_AND_IDENTIFIER = re.compile(r"\d+([^\W_]|_|$)", re.UNICODE)
_UNDERSCORE_UPPER = re.compile(r"([A-Z])")
NON_TITLECASED_WORDS = frozenset(
    "and or nor a an the so but to of at by from into on onto off out in over with for".split()
)


def _is_lower(ch: str) -> bool:
    return ch.lower() == ch and ch.upper() != ch


def _is_upper(ch: str) -> bool:
    return ch.upper() == ch and ch.lower() != ch


def _preserve_camel_case(text: str) -> str:
    chars = list(text)
    last_lower = last_upper = last_last_upper = False
    i = 0
    while i < len(chars):
        ch = chars[i]
        if last_lower and _is_upper(ch):
            chars.insert(i, "-")
            last_lower = False
            last_last_upper = last_upper
            last_upper = True
            i += 1
        elif last_upper and last_last_upper and _is_lower(ch):
            chars.insert(i - 1, "-")
            last_last_upper = last_upper
            last_upper = False
            last_lower = True
        else:
            last_lower = _is_lower(ch)
            last_last_upper = last_upper
            last_upper = _is_upper(ch)
        i += 1
    return "".join(chars)


def pascal_case(name: str) -> str:
    """Return ``name`` in PascalCase the way the npm ``camelcase`` package (v6) does."""
    text = name.strip()
    if not text:
        return ""
    if len(text) == 1:
        return text.upper()
    if text != text.lower():
        text = _preserve_camel_case(text)
    text = re.sub(r"^[_.\- ]+", "", text).lower()
    text = text[:1].upper() + text[1:]
    text = _SEPARATORS_AND_IDENTIFIER.sub(lambda m: m.group(1).upper(), text)
    return _NUMBERS_AND_IDENTIFIER.sub(lambda m: m.group(0).upper(), text)


def underscore(name: str) -> str:
    """Return ``name`` underscored as ``inflection.underscore`` does (``createdAt`` -> ``created_at``):
    ``_`` before every capital, one leading ``_`` stripped, lowercased."""
    return re.sub(r"^_", "", _UNDERSCORE_UPPER.sub(r"_\1", name)).lower()


def titleize(name: str) -> str:
    """Return Cube's default title for a cube or member name."""
    words = underscore(pascal_case(name)).replace("_", " ").split(" ")
    titled = []
    for word in words:
        parts = [p if p.lower() in NON_TITLECASED_WORDS else p[:1].upper() + p[1:].lower() for p in word.split("-")]
        titled.append("-".join(parts))
    text = " ".join(titled)
    return text[:1].upper() + text[1:]


def alias_name(path: str, cube_sql_alias: str | None = None) -> str:
    """Return Cube's SQL alias of a member path (``Orders.createdAt`` -> ``orders__created_at``)."""
    if cube_sql_alias:
        head, sep, rest = path.partition(".")
        path = cube_sql_alias + sep + rest
    return underscore(path).replace(".", "__")


@dataclass(frozen=True)
class MemberDescription:
    """What annotations and ``/v1/meta`` say about one member."""

    name: str
    kind: str  # measures | dimensions | segments
    title: str
    short_title: str
    type: str | None
    visible: bool
    meta_json: Mapping[str, Any]
    annotation: Mapping[str, Any]


def cube_title(cube: Cube) -> str:
    """Return the cube's title (its ``title`` or the titleized name)."""
    return cube.title or titleize(cube.name)


def measure_data_type(measure: Measure) -> str:
    """Return the data type Cube reports for a measure (``number`` unless calculated)."""
    return measure.type if measure.type in ("number", "string", "time", "boolean") else "number"


_AGG_TYPE_NAMES = {
    "count_distinct": "countDistinct", "count_distinct_approx": "countDistinctApprox",
    "running_total": "runningTotal",
}


def _drop_none(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in items if v is not None}


class ModelMeta:
    """Meta descriptions of a compiled model, computed once per model."""

    def __init__(self, model: Model, joins: JoinGraph) -> None:
        self.model = model
        self.members: dict[str, MemberDescription] = {}
        self.cubes_json: list[tuple[Cube, bool, dict[str, Any]]] = []
        components = joins.connected_components
        for cube in model.cubes.values():
            title = cube_title(cube)
            cube_visible = cube.public if cube.public is not None else True
            measures = [self._measure(cube, title, m, cube_visible) for m in cube.measures.values()]
            dimensions = [self._dimension(cube, title, d, cube_visible) for d in cube.dimensions.values()]
            segments = [self._segment(cube, title, s, cube_visible) for s in cube.segments.values()]
            for description in measures + dimensions + segments:
                self.members[description.name] = description
            header = _drop_none([
                ("name", cube.name), ("type", "view" if cube.is_view else "cube"), ("title", title),
                ("description", cube.description), ("connectedComponent", components.get(cube.name)),
            ])
            self.cubes_json.append((cube, cube_visible, {
                "header": header, "measures": measures, "dimensions": dimensions, "segments": segments,
            }))

    def _drill_members(self, cube: Cube, measure: Measure) -> list[str]:
        result = []
        # A view's measure keeps the drill members of the cube measure it exposes.
        owner = measure.alias_of.partition(".")[0] if measure.alias_of else cube.name
        for ref in measure.drill_members:
            path = ref if "." in ref else f"{owner}.{ref}"
            result.append(path)
        return result

    def _is_measure(self, path: str) -> bool:
        head, _, rest = path.partition(".")
        cube = self.model.cubes.get(head)
        return bool(cube and rest in cube.measures)

    def _measure(self, cube: Cube, cube_title_: str, measure: Measure, cube_visible: bool) -> MemberDescription:
        own = measure.title or titleize(measure.name)
        drill = self._drill_members(cube, measure)
        grouped = {"measures": [d for d in drill if self._is_measure(d)],
                   "dimensions": [d for d in drill if not self._is_measure(d)]}
        data_type = measure_data_type(measure)
        visible = measure.public if measure.public is not None else cube_visible
        meta_json = _drop_none([
            ("name", measure.path), ("title", f"{cube_title_} {own}"), ("description", measure.description),
            ("shortTitle", own), ("format", measure.format), ("cumulativeTotal", measure.cumulative),
            ("cumulative", measure.cumulative), ("type", data_type),
            ("aggType", _AGG_TYPE_NAMES.get(measure.type, measure.type)), ("drillMembers", drill),
            ("drillMembersGrouped", grouped), ("aliasMember", measure.alias_of), ("meta", measure.meta),
            ("isVisible", visible),
        ])
        annotation = _drop_none([
            ("title", f"{cube_title_} {own}"), ("shortTitle", own), ("description", measure.description),
            ("type", data_type), ("format", measure.format), ("meta", measure.meta),
            ("drillMembers", drill), ("drillMembersGrouped", grouped),
        ])
        return MemberDescription(measure.path, "measures", f"{cube_title_} {own}", own, data_type, visible, meta_json, annotation)

    def _dimension(self, cube: Cube, cube_title_: str, dimension: Dimension, cube_visible: bool) -> MemberDescription:
        own = dimension.title or titleize(dimension.name)
        if dimension.public is not None:
            visible = dimension.public
        else:
            visible = cube_visible if not dimension.primary_key else False
            if cube.public is not None and not dimension.primary_key:
                visible = cube.public
        meta_json = _drop_none([
            ("name", dimension.path), ("title", f"{cube_title_} {own}"), ("type", dimension.type),
            ("description", dimension.description), ("shortTitle", own),
            ("suggestFilterValues", True if dimension.suggest_filter_values is None else bool(dimension.suggest_filter_values)),
            ("format", dimension.format), ("aliasMember", dimension.alias_of), ("meta", dimension.meta),
            ("isVisible", visible),
        ])
        annotation = _drop_none([
            ("title", f"{cube_title_} {own}"), ("shortTitle", own), ("description", dimension.description),
            ("type", dimension.type), ("format", dimension.format), ("meta", dimension.meta),
        ])
        return MemberDescription(dimension.path, "dimensions", f"{cube_title_} {own}", own, dimension.type, visible, meta_json, annotation)

    def _segment(self, cube: Cube, cube_title_: str, segment: Segment, cube_visible: bool) -> MemberDescription:
        own = segment.title or titleize(segment.name)
        visible = segment.public if segment.public is not None else cube_visible
        meta_json = _drop_none([
            ("name", segment.path), ("title", f"{cube_title_} {own}"), ("shortTitle", own),
            ("description", segment.description), ("meta", segment.meta), ("isVisible", visible),
        ])
        annotation = _drop_none([
            ("title", f"{cube_title_} {own}"), ("shortTitle", own), ("description", segment.description),
            ("meta", segment.meta),
        ])
        return MemberDescription(segment.path, "segments", f"{cube_title_} {own}", own, None, visible, meta_json, annotation)

    def meta_response(self, show_hidden: bool) -> dict[str, Any]:
        """Return the ``/v1/meta`` body; hidden members (and cubes left empty) are dropped
        unless ``show_hidden`` (dev mode)."""
        cubes = []
        for _cube, visible, parts in self.cubes_json:
            def keep(items: list[MemberDescription]) -> list[Mapping[str, Any]]:
                return [m.meta_json for m in items if show_hidden or m.visible]

            measures, dimensions, segments = keep(parts["measures"]), keep(parts["dimensions"]), keep(parts["segments"])
            if not (measures or dimensions or segments):
                continue
            cubes.append({"public": visible, **parts["header"], "measures": measures,
                          "dimensions": dimensions, "segments": segments})
        return {"cubes": cubes}

    def visible_description(self, path: str, show_hidden: bool) -> MemberDescription | None:
        """Return the description of a member if the client may see it, else None."""
        description = self.members.get(path)
        if description is None or not (show_hidden or description.visible):
            return None
        return description
