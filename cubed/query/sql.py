"""Rendering a query's sqlglot tree into the text a driver runs, its bound values, and the
text ``/v1/sql`` shows (``$1``-style placeholders for PostgreSQL, ``?`` elsewhere, as Cube
shows them).

Placeholders are named in the tree (``cubedpN``) so that the bound values follow the order
in which they appear in the text, whatever the generator's traversal order. sqlglot renders a
named placeholder as ``%(cubedpN)s`` for postgres, ``$cubedpN`` for duckdb and ``:cubedpN``
for sqlite and mysql; each becomes what the driver binds:

* postgres (psycopg2): ``%s``, a literal ``%`` doubled;
* duckdb, sqlite: ``?``;
* mysql (PyMySQL, which always %-formats since the driver always passes a tuple): ``%s``, a
  literal ``%`` doubled (``DATE_FORMAT`` patterns, LIKE wildcards, the modulo operator).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from sqlglot import exp

from cubed.query.dialects import DIALECTS

_PG_TOKEN = re.compile(r"%\(cubedp(\d+)\)s|%")
_DUCKDB_TOKEN = re.compile(r"\$cubedp(\d+)\b")
_COLON_TOKEN = re.compile(r":cubedp(\d+)\b")
_MYSQL_TOKEN = re.compile(r":cubedp(\d+)\b|%")


@dataclass(frozen=True)
class RenderedSql:
    """SQL text for the driver (``%s`` or ``?`` placeholders), its values in order, and the
    display form for ``/v1/sql``."""

    text: str
    params: tuple[Any, ...]
    display: str


def render_sql(tree: exp.Expression, values: Sequence[Any], dialect: str, pretty: bool = False) -> RenderedSql:
    """Return the RenderedSql of ``tree`` whose placeholders ``cubedpN`` stand for ``values[N]``."""
    sql_dialect = DIALECTS.get(dialect)
    if sql_dialect is not None:
        tree = sql_dialect().prepare(tree)
    text = tree.sql(dialect=dialect, pretty=pretty)
    ordered: list[Any] = []
    if dialect == "postgres":
        display_parts: list[str] = []

        def to_driver(match: re.Match[str]) -> str:
            if match.group(1) is None:
                display_parts.append("%")
                return "%%"  # psycopg2 reads a lone % as the start of a placeholder
            ordered.append(values[int(match.group(1))])
            display_parts.append(f"${len(ordered)}")
            return "%s"

        driver_text = _PG_TOKEN.sub(to_driver, text)
        iterator = iter(display_parts)
        display = _PG_TOKEN.sub(lambda _m: next(iterator), text)
        return RenderedSql(text=driver_text, params=tuple(ordered), display=display)

    if dialect == "mysql":
        def to_format(match: re.Match[str]) -> str:
            if match.group(1) is None:
                return "%%"
            ordered.append(values[int(match.group(1))])
            return "%s"

        driver_text = _MYSQL_TOKEN.sub(to_format, text)
        return RenderedSql(text=driver_text, params=tuple(ordered), display=_COLON_TOKEN.sub("?", text))

    def to_question_mark(match: re.Match[str]) -> str:
        ordered.append(values[int(match.group(1))])
        return "?"

    driver_text = (_COLON_TOKEN if dialect == "sqlite" else _DUCKDB_TOKEN).sub(to_question_mark, text)
    return RenderedSql(text=driver_text, params=tuple(ordered), display=driver_text)
