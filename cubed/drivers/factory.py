"""Builds the Driver of a data source from its settings."""
from __future__ import annotations

from typing import Any

from cubed.config import DataSourceSettings
from cubed.drivers.base import Driver
from cubed.errors import ConfigError

SUPPORTED_DB_TYPES = ("duckdb", "postgres", "sqlite", "mysql")


def make_driver(settings: DataSourceSettings, reactor: Any) -> Driver:
    """Return an unstarted Driver for ``settings.db_type`` (call ``start()`` on it).

    Raises ConfigError naming the setting when the type is not supported or the connection
    settings do not parse.
    """
    if settings.db_type == "postgres":
        from cubed.drivers.postgres import PostgresDriver

        return PostgresDriver(settings, reactor)
    if settings.db_type == "duckdb":
        from cubed.drivers.duckdb import DuckDBDriver

        return DuckDBDriver(settings, reactor)
    if settings.db_type == "sqlite":
        from cubed.drivers.sqlite import SQLiteDriver

        return SQLiteDriver(settings, reactor)
    if settings.db_type == "mysql":
        from cubed.drivers.mysql import MySQLDriver

        return MySQLDriver(settings, reactor)
    variable = "CUBEJS_DB_TYPE" if settings.name == "default" else f"CUBEJS_DS_{settings.name.upper()}_DB_TYPE"
    raise ConfigError(
        f'Value "{settings.db_type}" is not valid for {variable}. '
        f"Supported database types: {', '.join(SUPPORTED_DB_TYPES)}."
    )
