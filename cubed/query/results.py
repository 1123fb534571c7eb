"""Rows from the driver -> Cube's ``data`` and ``annotation`` JSON (transformData,
prepareAnnotation of Cube 0.32).

Values arrive already in wire form from the driver (numbers from PostgreSQL as strings,
timestamps ``YYYY-MM-DDTHH:mm:ss.SSS``), so formatting is a key mapping per row.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Sequence

from cubed.errors import UserError
from cubed.model.meta import ModelMeta
from cubed.query.plan import QueryPlan
from cubed.query.types import Query

_WIRE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")

HIDDEN_MEMBER = (
    "You requested hidden member: '{alias}'. Please make it visible using `shown: true`. "
    "Please note primaryKey fields are `shown: false` by default: "
    "https://cube.dev/docs/schema/reference/joins#setting-a-primary-key."
)


def annotation_for(query: Query, meta: ModelMeta, show_hidden: bool) -> dict[str, dict[str, Any]]:
    """Return the ``annotation`` object of a query (visible members only)."""
    def describe(path: str, kind: str) -> dict[str, Any] | None:
        base = ".".join(path.split(".")[:2])
        description = meta.visible_description(base, show_hidden)
        # A member of another kind asked for here (a segment in dimensions: Cube plans its
        # SQL) has no annotation, as in Cube.
        if description is None or description.kind != kind:
            return None
        return dict(description.annotation)

    measures = {m: a for m in query.measures if (a := describe(m, "measures")) is not None}
    dimensions = {d: a for d in query.dimensions if (a := describe(d, "dimensions")) is not None}
    segments = {s: a for s in query.segments if (a := describe(s, "segments")) is not None}
    time_dimensions: dict[str, Any] = {}
    for td in query.time_dimensions:
        if not td.granularity:
            continue
        described = describe(td.dimension, "dimensions")
        if described is None:
            continue
        time_dimensions[f"{td.dimension}.{td.granularity}"] = described
        if td.dimension not in query.dimensions:
            time_dimensions[td.dimension] = dict(described)
    return {"measures": measures, "dimensions": dimensions, "segments": segments, "timeDimensions": time_dimensions}


def _flat_annotation(annotation: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**annotation["measures"], **annotation["dimensions"], **annotation["timeDimensions"]}


def _time_value(value: Any) -> Any:
    if not value:
        return value
    if isinstance(value, str):
        if _WIRE_TIME.match(value):
            return value
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
        return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}"
    return value


def format_data(plan: QueryPlan, rows: Sequence[Sequence[Any]], annotation: dict[str, dict[str, Any]],
                query_type: str, response_format: str) -> Any:
    """Return the ``data`` of one result: a list of row objects, or ``{members, dataset}``
    for the compact format. A selected member missing from the annotation (hidden) is
    a 400, as in Cube, when there are rows to show."""
    query = plan.query
    flat = _flat_annotation(annotation)
    if not rows:
        return {"members": [], "dataset": []} if response_format == "compact" else []
    # (key, column index, is time) in Cube's key order, with the granularity-less copy.
    keys: list[tuple[str, int, bool]] = []
    for index, column in enumerate(plan.columns):
        described = flat.get(column.member)
        if described is None:
            raise UserError(HIDDEN_MEMBER.format(alias=column.alias))
        is_time = described.get("type") == "time"
        keys.append((column.member, index, is_time))
        if column.kind == "time":
            base = column.member.rsplit(".", 1)[0]
            if base not in query.dimensions:
                keys.append((base, index, is_time))
    extra_key = extra_value = None
    if query_type == "compareDateRangeQuery" and query.time_dimensions and query.time_dimensions[0].date_range:
        extra_key, extra_value = "compareDateRange", " - ".join(query.time_dimensions[0].date_range)
    blend_source = None
    if query_type == "blendingQuery" and query.time_dimensions and query.time_dimensions[0].granularity:
        td = query.time_dimensions[0]
        extra_key = f"time.{td.granularity}"
        blend_source = next((i for k, i, _ in keys if k == f"{td.dimension}.{td.granularity}"), None)
    any_time = any(is_time for _, _, is_time in keys)

    if response_format == "compact":
        members = [k for k, _, _ in keys]
        if query_type == "compareDateRangeQuery":
            members.append("compareDateRange")
        elif query_type == "blendingQuery" and extra_key:
            members.append(extra_key)
        dataset = []
        for row in rows:
            values = [_time_value(row[i]) if is_time and any_time else row[i] for _, i, is_time in keys]
            if extra_key is not None:
                values.append(extra_value if blend_source is None else _time_value(row[blend_source]))
            dataset.append(values)
        return {"members": members, "dataset": dataset}

    data = []
    for row in rows:
        item = {key: (_time_value(row[i]) if is_time else row[i]) for key, i, is_time in keys}
        if extra_key is not None:
            item[extra_key] = extra_value if blend_source is None else _time_value(row[blend_source])
        data.append(item)
    return data
