"""The Driver interface every data source implements, and the plain data it returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from twisted.internet.defer import Deferred


@dataclass(frozen=True)
class Column:
    """One result column: its name and its kind, one of ``number``, ``string``, ``time``,
    ``date``, ``boolean``, ``other``."""

    name: str
    kind: str


@dataclass(frozen=True)
class ResultSet:
    """Rows of one query, values already converted to Cube's wire form (see ``wire_value``)."""

    columns: tuple[Column, ...]
    rows: list[tuple[Any, ...]]


class Driver(Protocol):
    """A data source. ``dialect`` names the sqlglot dialect SQL is rendered in."""

    dialect: str
    db_type: str

    def start(self) -> Deferred[None]:
        """Open connections; fires when the driver can take queries (or failed to)."""

    def execute(self, sql: str, params: Sequence[Any], name: str = "query") -> Deferred[ResultSet]:
        """Run one statement with bound parameters; fire with its ResultSet, or fail with
        ``cubed.errors.DatabaseError`` (the database's message) or ``ServiceUnavailable``."""

    def test_connection(self) -> Deferred[None]:
        """Fire when a trivial round-trip succeeds; fail otherwise."""

    def close(self) -> Deferred[None]:
        """Close every connection; fire when done."""
