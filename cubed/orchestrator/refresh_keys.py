"""Refresh keys: the values that say when a cube's cached results are out of date.

Per cube, from its ``refresh_key``: ``every`` (an interval or an equal-interval cron) is
computed here from the clock, with no database round-trip; ``sql`` runs on the cube's data
source and its value is kept for the renewal threshold (the ``every`` given with it, else
10 s); a cube without one gets Cube's default, ``every: 10 seconds``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

import sqlglot

from cubed.model.intervals import Every, parse_every, renewal_threshold
from cubed.model.schema import Cube, Model
from cubed.query.sql import RenderedSql, render_sql

DEFAULT_EVERY = 10.0


@dataclass(frozen=True)
class RefreshKey:
    """How one cube's refresh key is evaluated."""

    cube: str
    data_source: str
    every: Every | None
    sql: RenderedSql | None
    renewal_threshold: float

    def cache_key_query(self) -> list[Any]:
        """Return this key as an entry of ``/v1/sql``'s ``cacheKeyQueries`` (Cube's shape; an
        ``every`` key is shown as the SQL Cube would run for it)."""
        if self.sql is not None:
            return [self.sql.display, list(self.sql.params), {"external": False, "renewalThreshold": self.renewal_threshold}]
        seconds = int(self.every.seconds) if self.every else int(DEFAULT_EVERY)
        return [f"SELECT FLOOR((EXTRACT(EPOCH FROM NOW())) / {seconds}) as refresh_key", [],
                {"external": False, "renewalThreshold": self.renewal_threshold}]

    def sql_cache_key(self) -> str:
        """Return the cache key under which an ``sql`` key's last value is kept."""
        assert self.sql is not None
        digest = hashlib.sha256(json.dumps([self.data_source, self.sql.text, list(self.sql.params)]).encode())
        return f"refresh_key:{digest.hexdigest()}"


def refresh_key_of(cube: Cube, dialect: str) -> RefreshKey:
    """Return the RefreshKey of a cube (its own, or Cube's default)."""
    definition: Mapping[str, Any] = cube.refresh_key or {}
    every = None
    if definition.get("every") is not None:
        every = parse_every(str(definition["every"]), definition.get("timezone"), f"cube '{cube.name}', refresh_key")
    sql = None
    if definition.get("sql") is not None:
        sql = render_sql(sqlglot.parse_one(str(definition["sql"]), read=dialect), [], dialect)
        threshold = every.seconds if every is not None else DEFAULT_EVERY
    elif every is not None:
        threshold = renewal_threshold(every.seconds)
    else:
        every = Every(DEFAULT_EVERY)
        threshold = DEFAULT_EVERY
    return RefreshKey(cube=cube.name, data_source=cube.data_source, every=every if sql is None else None,
                      sql=sql, renewal_threshold=threshold)


class RefreshKeys:
    """The refresh keys of every cube of one compiled model, computed once."""

    def __init__(self, model: Model, dialect_for: Any) -> None:
        self.keys = {name: refresh_key_of(cube, dialect_for(cube.data_source))
                     for name, cube in model.cubes.items() if not cube.is_view}

    def for_cubes(self, cubes: tuple[str, ...]) -> list[RefreshKey]:
        """Return the keys of the cubes a query reads, in order (views read their cubes)."""
        return [self.keys[c] for c in cubes if c in self.keys]
