"""The shop data set (the conformance tables users, products, orders, line_items) in a test
PostgreSQL database - and in SQLite and MySQL/MariaDB databases for the dialect tests.

The schema is tests/conformance/data/schema.sql (what the real Cube ran on when the
conformance answers were recorded); the rows come from the gzipped CSV copies
bundled in ``cubed/demo/data``, so the tests do not depend on files outside the checkout.
Nothing is cached: each call loads a fresh database.

SQLite and MySQL get the same tables in their own types (SQLite: INTEGER, TEXT, NUMERIC, times
as ``YYYY-MM-DD HH:MM:SS`` text; MySQL: INT, TEXT, DECIMAL, DATETIME), loaded from the same
CSVs with PostgreSQL's CSV rule (an unquoted empty field is NULL, a quoted one an empty string).
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import psycopg2
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from cubed.config import DataSourceSettings
from cubed.demo import DEMO_TABLES, demo_csv
from tests.support.services import create_test_database

SHOP_TABLES = tuple(table.name for table in DEMO_TABLES)
SHOP_ROW_COUNTS = {table.name: table.rows for table in DEMO_TABLES}

#: The conformance schema (what the real Cube ran on when the answers were recorded).
SCHEMA_SQL = (Path(__file__).resolve().parents[1] / "conformance" / "data" / "schema.sql").read_text(encoding="utf-8")


def _connect(settings: DataSourceSettings) -> Any:
    return psycopg2.connect(
        host=settings.host, port=settings.port, dbname=settings.database,
        user=settings.user, password=settings.password, connect_timeout=5,
    )


def load_shop_data_blocking(settings: DataSourceSettings) -> dict[str, int]:
    """Create the four tables in ``settings.database`` and COPY the CSVs into them; return
    ``{table: rows loaded}``. Blocking: run it in a thread."""
    connection = _connect(settings)
    try:
        with connection:
            with connection.cursor() as cursor:
                cursor.execute(SCHEMA_SQL)
                for table in SHOP_TABLES:
                    with gzip.open(demo_csv(table), "rb") as source:
                        cursor.copy_expert(f"COPY public.{table} FROM STDIN WITH (FORMAT csv, HEADER true)", source)
        connection.autocommit = True
        counts: dict[str, int] = {}
        with connection.cursor() as cursor:
            for table in SHOP_TABLES:
                cursor.execute(f"ANALYZE public.{table}")
                cursor.execute(f"SELECT count(*) FROM public.{table}")
                counts[table] = cursor.fetchone()[0]
        return counts
    finally:
        connection.close()


def load_shop_data(settings: DataSourceSettings) -> Deferred[dict[str, int]]:
    """Load the shop tables into the database of ``settings`` off the reactor thread; return a
    Deferred firing with ``{table: rows loaded}``."""
    return deferToThread(load_shop_data_blocking, settings)


def shop_database(testcase: unittest.TestCase, **changes: Any) -> Deferred[DataSourceSettings]:
    """Create a test database (dropped at cleanup), load the shop data into it and return a
    Deferred firing with its DataSourceSettings (``changes`` override fields)."""
    d = create_test_database(testcase, **changes)

    def load(settings: DataSourceSettings) -> Deferred[DataSourceSettings]:
        return load_shop_data(settings).addCallback(lambda _: settings)

    return d.addCallback(load)


# ---------------------------------------------------------------- the CSVs, read as COPY reads them


def parse_csv(text: str) -> list[list[str | None]]:
    """Return the records of CSV ``text`` as PostgreSQL's ``COPY ... (FORMAT csv)`` reads them:
    an unquoted empty field is None (NULL), a quoted one ``""``; ``""`` inside quotes is one quote."""
    records: list[list[str | None]] = []
    record: list[str | None] = []
    field: list[str] = []
    quoted = in_quotes = False
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if in_quotes:
            if char == '"':
                if index + 1 < length and text[index + 1] == '"':
                    field.append('"')
                    index += 1
                else:
                    in_quotes = False
            else:
                field.append(char)
        elif char == '"':
            in_quotes = quoted = True
        elif char in ",\n\r":
            record.append("".join(field) if (field or quoted) else None)
            field, quoted = [], False
            if char != ",":
                if char == "\r" and index + 1 < length and text[index + 1] == "\n":
                    index += 1
                records.append(record)
                record = []
        else:
            field.append(char)
        index += 1
    if field or quoted or record:
        record.append("".join(field) if (field or quoted) else None)
        records.append(record)
    return records


def shop_rows(table: str) -> tuple[list[str], list[list[str | None]]]:
    """Return the header and the rows of one shop table's CSV (values as text, NULL as None)."""
    with gzip.open(demo_csv(table), "rt", encoding="utf-8", newline="") as source:
        records = parse_csv(source.read())
    header = [str(name) for name in records[0]]
    return header, records[1:]


# Column types per table, in CSV order: (column, SQLite type, MySQL type, NOT NULL).
_PORTABLE_SCHEMA: dict[str, tuple[tuple[str, str, str, bool], ...]] = {
    "users": (("id", "INTEGER", "INT", True), ("first_name", "TEXT", "VARCHAR(255)", False),
              ("last_name", "TEXT", "VARCHAR(255)", False), ("city", "TEXT", "VARCHAR(255)", False),
              ("state", "TEXT", "VARCHAR(255)", False), ("gender", "TEXT", "VARCHAR(255)", False),
              ("company", "TEXT", "VARCHAR(255)", False), ("created_at", "TEXT", "DATETIME", True)),
    "products": (("id", "INTEGER", "INT", True), ("name", "TEXT", "VARCHAR(255)", True),
                 ("category", "TEXT", "VARCHAR(255)", False), ("price", "NUMERIC(10,2)", "DECIMAL(10,2)", True),
                 ("created_at", "TEXT", "DATETIME", True)),
    "orders": (("id", "INTEGER", "INT", True), ("user_id", "INTEGER", "INT", False),
               ("status", "TEXT", "VARCHAR(255)", True), ("amount", "NUMERIC(12,2)", "DECIMAL(12,2)", False),
               ("created_at", "TEXT", "DATETIME", True), ("completed_at", "TEXT", "DATETIME", False)),
    "line_items": (("id", "INTEGER", "INT", True), ("order_id", "INTEGER", "INT", True),
                   ("product_id", "INTEGER", "INT", True), ("quantity", "INTEGER", "INT", True),
                   ("price", "NUMERIC(10,2)", "DECIMAL(10,2)", True), ("created_at", "TEXT", "DATETIME", True)),
}
_INDEXES = (("orders", "created_at"), ("orders", "user_id"), ("line_items", "order_id"), ("line_items", "product_id"))


def _ddl(table: str, engine: str) -> str:
    columns = [f"{name} {sqlite_type if engine == 'sqlite' else mysql_type}{' NOT NULL' if not_null else ''}"
               for name, sqlite_type, mysql_type, not_null in _PORTABLE_SCHEMA[table]]
    return f"CREATE TABLE {table} ({', '.join(columns)}, PRIMARY KEY (id))"


# ---------------------------------------------------------------- SQLite


def load_shop_sqlite(path: str) -> dict[str, int]:
    """Create the four tables in the SQLite file ``path`` (created; replaced if it exists) and
    load the CSVs; return ``{table: rows loaded}``. Blocking."""
    import sqlite3

    if os.path.exists(path):
        os.remove(path)
    connection = sqlite3.connect(path)
    try:
        with connection:
            for table in SHOP_TABLES:
                connection.execute(_ddl(table, "sqlite"))
                header, rows = shop_rows(table)
                marks = ", ".join("?" for _ in header)
                connection.executemany(f"INSERT INTO {table} ({', '.join(header)}) VALUES ({marks})", rows)
            for table, column in _INDEXES:
                connection.execute(f"CREATE INDEX {table}_{column}_idx ON {table} ({column})")
        return {table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in SHOP_TABLES}
    finally:
        connection.close()


# ---------------------------------------------------------------- MySQL / MariaDB


def mysql_server() -> dict[str, Any]:
    """Return PyMySQL connection keywords of the test server (``CUBED_TEST_MYSQL_URL``,
    default ``mysql://root@127.0.0.1:3306/``), without a database."""
    parts = urlsplit(os.environ.get("CUBED_TEST_MYSQL_URL") or "mysql://root@127.0.0.1:3306/")
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306, "user": parts.username or "root",
            "password": parts.password or ""}


def _mysql_connect(database: str | None = None) -> Any:
    import pymysql

    return pymysql.connect(**mysql_server(), database=database, charset="utf8mb4", autocommit=True,
                           connect_timeout=5)


def mysql_settings(database: str, **changes: Any) -> DataSourceSettings:
    """Return mysql DataSourceSettings for ``database`` on the test server."""
    server = mysql_server()
    values: dict[str, Any] = {"db_type": "mysql", "host": server["host"], "port": server["port"],
                              "user": server["user"], "password": server["password"] or None,
                              "database": database, "query_timeout": 30.0}
    values.update(changes)
    return DataSourceSettings(**values)


def create_mysql_database_blocking() -> str:
    """Create a uniquely named database on the test server and return its name. Blocking."""
    name = f"cubed_test_{os.getpid()}_{uuid4().hex[:12]}"
    connection = _mysql_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        connection.close()
    return name


def drop_mysql_database_blocking(name: str) -> None:
    """Drop a test database (no error when it is gone). Blocking."""
    connection = _mysql_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        connection.close()


def load_shop_mysql(database: str) -> dict[str, int]:
    """Create the four tables in ``database`` on the test server and load the CSVs; return
    ``{table: rows loaded}``. Blocking."""
    connection = _mysql_connect(database)
    try:
        with connection.cursor() as cursor:
            for table in SHOP_TABLES:
                cursor.execute(_ddl(table, "mysql"))
                header, rows = shop_rows(table)
                marks = ", ".join("%s" for _ in header)
                # PyMySQL sends executemany as multi-row INSERTs.
                cursor.executemany(f"INSERT INTO {table} ({', '.join(header)}) VALUES ({marks})", rows)
            for table, column in _INDEXES:
                cursor.execute(f"CREATE INDEX {table}_{column}_idx ON {table} ({column})")
            counts = {}
            for table in SHOP_TABLES:
                cursor.execute(f"SELECT count(*) FROM {table}")
                counts[table] = cursor.fetchone()[0]
        return counts
    finally:
        connection.close()


def mysql_time_zones_loaded() -> bool:
    """Return whether the test server converts to named zones (its time zone tables are loaded)."""
    connection = _mysql_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT CONVERT_TZ('2024-07-01 12:00:00', '+00:00', 'Europe/Berlin')")
            return cursor.fetchone()[0] is not None
    finally:
        connection.close()


def ensure_mysql_time_zones() -> None:
    """Load the test server's time zone tables from the system's zoneinfo when they are empty
    (``mysql_tzinfo_to_sql /usr/share/zoneinfo | mysql mysql``, as a MariaDB/MySQL install
    does it). A server-wide, idempotent change. Raises RuntimeError when they are missing and
    cannot be loaded here (no ``mysql_tzinfo_to_sql`` or client, or the load failed). Blocking."""
    if mysql_time_zones_loaded():
        return
    converter = shutil.which("mariadb-tzinfo-to-sql") or shutil.which("mysql_tzinfo_to_sql")
    client = shutil.which("mariadb") or shutil.which("mysql")
    if converter is None or client is None or not os.path.isdir("/usr/share/zoneinfo"):
        raise RuntimeError("the server's time zone tables are empty and mysql_tzinfo_to_sql, a mysql client "
                           "or /usr/share/zoneinfo is missing to load them")
    script = subprocess.run([converter, "/usr/share/zoneinfo"], capture_output=True, check=True, timeout=120).stdout
    server = mysql_server()
    environ = dict(os.environ, MYSQL_PWD=server["password"])
    loaded = subprocess.run([client, f"--host={server['host']}", f"--port={server['port']}", f"--user={server['user']}",
                             "--protocol=TCP", "mysql"], input=script, capture_output=True, timeout=300, env=environ)
    if loaded.returncode != 0 or not mysql_time_zones_loaded():
        raise RuntimeError("loading the time zone tables failed: "
                           + loaded.stderr.decode(errors="replace").strip()[-500:])
