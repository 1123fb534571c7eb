"""make_driver: the right driver per database type, a clear error otherwise."""
from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from cubed.config import DataSourceSettings
from cubed.drivers.duckdb import DuckDBDriver
from cubed.drivers.factory import make_driver
from cubed.drivers.mysql import MySQLDriver
from cubed.drivers.sqlite import SQLiteDriver
from cubed.drivers.postgres import PostgresDriver
from cubed.errors import ConfigError


class MakeDriverTests(unittest.TestCase):
    def test_postgres(self) -> None:
        driver = make_driver(DataSourceSettings(db_type="postgres", host="127.0.0.1"), reactor)
        self.assertIsInstance(driver, PostgresDriver)
        self.assertEqual((driver.dialect, driver.db_type), ("postgres", "postgres"))

    def test_duckdb(self) -> None:
        driver = make_driver(DataSourceSettings(db_type="duckdb", duckdb_path=Path("x.duckdb")), reactor)
        assert isinstance(driver, DuckDBDriver)
        self.assertEqual((driver.dialect, driver.db_type), ("duckdb", "duckdb"))
        self.assertEqual(driver.path, "x.duckdb")

    def test_duckdb_in_memory_without_a_path(self) -> None:
        driver = make_driver(DataSourceSettings(db_type="duckdb"), reactor)
        assert isinstance(driver, DuckDBDriver)
        self.assertEqual(driver.path, ":memory:")

    def test_sqlite_file_is_the_database_name(self) -> None:
        driver = make_driver(DataSourceSettings(db_type="sqlite", database="shop.sqlite"), reactor)
        assert isinstance(driver, SQLiteDriver)
        self.assertEqual((driver.dialect, driver.db_type, driver.path), ("sqlite", "sqlite", "shop.sqlite"))

    def test_mysql(self) -> None:
        driver = make_driver(DataSourceSettings(db_type="mysql", host="127.0.0.1", database="shop"), reactor)
        assert isinstance(driver, MySQLDriver)
        self.assertEqual((driver.dialect, driver.db_type, driver.label), ("mysql", "mysql", "127.0.0.1:3306/shop"))

    def test_unsupported_type(self) -> None:
        error = self.assertRaises(ConfigError, make_driver, DataSourceSettings(db_type="oracle"), reactor)
        self.assertEqual(
            str(error),
            'Value "oracle" is not valid for CUBEJS_DB_TYPE. Supported database types: duckdb, postgres, sqlite, mysql.',
        )

    def test_unsupported_type_of_a_named_data_source(self) -> None:
        error = self.assertRaises(ConfigError, make_driver,
                                  DataSourceSettings(name="events", db_type="mssql"), reactor)
        self.assertIn("CUBEJS_DS_EVENTS_DB_TYPE", str(error))
