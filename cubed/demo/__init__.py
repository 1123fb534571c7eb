"""The bundled demo data set (a small shop: users, products, orders, line items) and its model.

The data is the conformance data set, gzipped CSVs byte for byte; the model is its Cube YAML.
``build_demo_database`` turns the CSVs into a DuckDB file whose tables live in ``main`` and are
also visible as ``public.<table>`` (views), so the model's ``SELECT * FROM public.orders``
works on DuckDB as it does on PostgreSQL. Column types follow the PostgreSQL schema (integer,
text, numeric(10,2)/(12,2) -> DECIMAL, timestamp without time zone -> TIMESTAMP).
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

# Bump when the data or the layout of the built file changes: an older file is rebuilt.
DEMO_VERSION = 1
_META_SCHEMA = "cubed_demo"


@dataclass(frozen=True)
class DemoTable:
    """One demo table: its name, ``(column, DuckDB type, NOT NULL)`` triples and row count."""

    name: str
    columns: tuple[tuple[str, str, bool], ...]
    rows: int

    def ddl(self, schema: str = "main") -> str:
        """Return the DuckDB CREATE TABLE statement (primary key ``id``)."""
        parts = [f"{col} {typ}{' NOT NULL' if not_null else ''}" for col, typ, not_null in self.columns]
        parts.append("PRIMARY KEY (id)")
        return f"CREATE TABLE {schema}.{self.name} ({', '.join(parts)})"


DEMO_TABLES: tuple[DemoTable, ...] = (
    DemoTable("users", (
        ("id", "INTEGER", True), ("first_name", "VARCHAR", False), ("last_name", "VARCHAR", False),
        ("city", "VARCHAR", False), ("state", "VARCHAR", False), ("gender", "VARCHAR", False),
        ("company", "VARCHAR", False), ("created_at", "TIMESTAMP", True),
    ), 500),
    DemoTable("products", (
        ("id", "INTEGER", True), ("name", "VARCHAR", True), ("category", "VARCHAR", False),
        ("price", "DECIMAL(10,2)", True), ("created_at", "TIMESTAMP", True),
    ), 100),
    DemoTable("orders", (
        ("id", "INTEGER", True), ("user_id", "INTEGER", False), ("status", "VARCHAR", True),
        ("amount", "DECIMAL(12,2)", False), ("created_at", "TIMESTAMP", True),
        ("completed_at", "TIMESTAMP", False),
    ), 3000),
    DemoTable("line_items", (
        ("id", "INTEGER", True), ("order_id", "INTEGER", True), ("product_id", "INTEGER", True),
        ("quantity", "INTEGER", True), ("price", "DECIMAL(10,2)", True), ("created_at", "TIMESTAMP", True),
    ), 10000),
)

log = Logger()


def demo_dir() -> Path:
    """Return the directory of the installed demo package."""
    return Path(__file__).resolve().parent


def demo_model_dir() -> Path:
    """Return the directory holding the demo model (``*.yml``)."""
    return demo_dir() / "model"


def demo_data_dir() -> Path:
    """Return the directory holding the demo data (``<table>.csv.gz``)."""
    return demo_dir() / "data"


def demo_csv(table: str) -> Path:
    """Return the gzipped CSV of one demo table (header line; empty unquoted field = NULL)."""
    return demo_data_dir() / f"{table}.csv.gz"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _is_current_demo(path: Path) -> bool:
    """Return True when ``path`` is a complete demo database of this version, False when it
    is one of an older version; raise FileExistsError when it is something else."""
    try:
        connection = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            # Another process (a running cubed) holds it; it only ever opens complete files.
            return True
        raise FileExistsError(f"{path} exists and is not a cubed demo database: {exc}") from None
    except duckdb.Error as exc:
        raise FileExistsError(f"{path} exists and is not a cubed demo database: {exc}") from None
    try:
        row = connection.execute(f"SELECT max(version) FROM {_META_SCHEMA}.build").fetchone()
    except duckdb.CatalogException:
        raise FileExistsError(f"{path} exists and is not a cubed demo database") from None
    finally:
        connection.close()
    return row is not None and row[0] == DEMO_VERSION


def _count(connection: Any, table: str) -> int:
    row = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def _load(connection: Any) -> None:
    for table in DEMO_TABLES:
        connection.execute(table.ddl())
        # Empty unquoted fields are NULL, a quoted "" stays an empty string - as COPY CSV
        # does in PostgreSQL, where the conformance answers were recorded.
        connection.execute(
            f"COPY main.{table.name} FROM {_sql_string(str(demo_csv(table.name)))} "
            "(FORMAT csv, HEADER true, DELIMITER ',', QUOTE '\"', ESCAPE '\"', NULL '', "
            "ALLOW_QUOTED_NULLS false, COMPRESSION gzip)"
        )
    connection.execute("CREATE SCHEMA public")
    for table in DEMO_TABLES:
        connection.execute(f"CREATE VIEW public.{table.name} AS SELECT * FROM main.{table.name}")
    connection.execute(f"CREATE SCHEMA {_META_SCHEMA}")
    connection.execute(f"CREATE TABLE {_META_SCHEMA}.build (version INTEGER NOT NULL)")
    connection.execute(f"INSERT INTO {_META_SCHEMA}.build VALUES (?)", [DEMO_VERSION])
    for table in DEMO_TABLES:
        count = _count(connection, f"main.{table.name}")
        if count != table.rows:
            raise RuntimeError(f"demo table {table.name}: loaded {count} rows, expected {table.rows}")
    connection.execute("CHECKPOINT")


def build_demo_database(path: Path) -> Path:
    """Create the demo DuckDB file at ``path`` unless a complete one is already there; return
    ``path``. Blocking (call it off the reactor thread, see ``ensure_demo_database``).

    The file is built under a temporary name next to ``path`` and renamed into place, so a
    file at ``path`` is always complete. Raises FileExistsError when ``path`` holds some other
    DuckDB database rather than overwriting it.
    """
    path = Path(path)
    if path.exists():
        if _is_current_demo(path):
            return path
        log.info("rebuilding the demo database {path} (older version)", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        connection = duckdb.connect(str(temporary))
        try:
            _load(connection)
        finally:
            connection.close()
        os.replace(temporary, path)
    finally:
        for leftover in (temporary, temporary.with_name(temporary.name + ".wal")):
            if leftover.exists():
                leftover.unlink()
    log.info("demo database built at {path}", path=path)
    return path


def ensure_demo_database(path: Path, reactor: Any) -> Deferred[Path]:
    """Return a Deferred firing with ``path`` once the demo database exists there (built on
    the reactor's thread pool, never on the reactor thread)."""
    return deferToThreadPool(reactor, reactor.getThreadPool(), build_demo_database, Path(path))


def demo_row_counts(path: Path) -> dict[str, int]:
    """Return ``{table: row count}`` of a demo database file (blocking; opens it read-only)."""
    connection = duckdb.connect(str(path), read_only=True)
    try:
        return {table.name: _count(connection, f"public.{table.name}") for table in DEMO_TABLES}
    finally:
        connection.close()
