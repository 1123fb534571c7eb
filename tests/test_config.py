"""cubed.config: where each setting comes from, how ``.env`` reads, and that every bad value
stops start-up with one line naming the setting."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from cubed.config import (
    DataSourceSettings,
    Settings,
    load_settings,
    parse_duration,
    read_dotenv,
)
from cubed.errors import ConfigError

SECRET = {"CUBEJS_API_SECRET": "config-test-secret"}


class ProjectMixin:
    """A fresh project directory per test, with an optional ``.env``."""

    def project(self, dotenv: str | None = None) -> Path:
        directory = Path(self.mktemp())  # type: ignore[attr-defined]
        directory.mkdir(parents=True)
        if dotenv is not None:
            (directory / ".env").write_text(dotenv, encoding="utf-8")
        return directory.resolve()

    def load(self, environ: dict[str, str] | None = None, dotenv: str | None = None,
             options: dict[str, Any] | None = None) -> Settings:
        return load_settings({**SECRET, **(environ or {})}, self.project(dotenv), options or {})


class DefaultsTests(ProjectMixin, unittest.TestCase):
    def test_defaults(self) -> None:
        """With only the secret set, every setting has Cube's default."""
        settings = self.load()
        self.assertEqual(settings.port, 4000)
        self.assertEqual(settings.listen, "tcp:4000:interface=0.0.0.0")
        self.assertFalse(settings.dev_mode)
        self.assertEqual(settings.api_secret, "config-test-secret")
        self.assertEqual(settings.base_path, "/cubejs-api")
        self.assertEqual(settings.schema_path, Path("model"))
        self.assertEqual(settings.data_sources, (DataSourceSettings(),))
        self.assertEqual(settings.default_data_source.db_type, "duckdb")
        self.assertEqual(settings.default_data_source.query_timeout, 600.0)
        self.assertEqual((settings.db_query_limit, settings.db_query_default_limit), (50000, 10000))
        self.assertEqual(settings.default_timezone, "UTC")
        self.assertEqual(settings.cache_and_queue_driver, "memory")
        self.assertEqual(settings.scheduled_refresh_timezones, ("UTC",))
        self.assertFalse(settings.refresh_worker)
        self.assertEqual(settings.jwt_algorithms, ("HS256",))
        self.assertEqual(settings.max_request_size, 1024 * 1024)
        self.assertEqual((settings.log_format, settings.log_level), ("text", "info"))

    def test_dev_mode_needs_no_secret_and_listens_locally(self) -> None:
        settings = load_settings({"CUBEJS_DEV_MODE": "true"}, self.project(), {})
        self.assertTrue(settings.dev_mode)
        self.assertIsNone(settings.api_secret)
        self.assertEqual(settings.listen, "tcp:4000:interface=127.0.0.1")

    def test_dev_option(self) -> None:
        """``--dev`` is dev mode even when the environment says false."""
        settings = load_settings({"CUBEJS_DEV_MODE": "false"}, self.project(), {"dev": True})
        self.assertTrue(settings.dev_mode)

    def test_bool_spellings(self) -> None:
        for value in ("true", "TRUE", "1", "yes", "on"):
            self.assertTrue(self.load({"CUBEJS_DEV_MODE": value}).dev_mode, value)
        for value in ("false", "0", "no", "off", ""):
            self.assertFalse(self.load({"CUBEJS_DEV_MODE": value}).dev_mode, value)

    def test_jwt_key_is_the_secret(self) -> None:
        """As in Cube, CUBEJS_JWT_KEY verifies tokens when set (and satisfies the requirement)."""
        settings = load_settings({"CUBEJS_JWT_KEY": "key-1", "CUBEJS_API_SECRET": "secret-1"}, self.project(), {})
        self.assertEqual(settings.api_secret, "key-1")
        settings = load_settings({"CUBEJS_JWT_KEY": "key-1"}, self.project(), {})
        self.assertEqual(settings.api_secret, "key-1")

    def test_jwt_options(self) -> None:
        settings = self.load({"CUBEJS_JWT_ALGS": "HS256,HS512", "CUBEJS_JWT_AUDIENCE": "aud",
                              "CUBEJS_JWT_ISSUER": "a, b", "CUBEJS_JWT_SUBJECT": "sub",
                              "CUBEJS_JWT_CLAIMS_NAMESPACE": "https://ns"})
        self.assertEqual(settings.jwt_algorithms, ("HS256", "HS512"))
        self.assertEqual(settings.jwt_issuer, ("a", "b"))
        self.assertEqual((settings.jwt_audience, settings.jwt_subject, settings.jwt_claims_namespace),
                         ("aud", "sub", "https://ns"))

    def test_limits_and_sizes(self) -> None:
        settings = self.load({"CUBEJS_DB_QUERY_LIMIT": "100", "CUBEJS_DB_QUERY_DEFAULT_LIMIT": "500",
                              "CUBEJS_MAX_REQUEST_SIZE": "512kb"})
        self.assertEqual(settings.db_query_limit, 100)
        self.assertEqual(settings.db_query_default_limit, 100, "the default limit never exceeds the maximum")
        self.assertEqual(settings.max_request_size, 512 * 1024)
        self.assertEqual(self.load({"CUBEJS_MAX_REQUEST_SIZE": "2048"}).max_request_size, 2048)
        self.assertEqual(self.load({"CUBEJS_MAX_REQUEST_SIZE": "1.5MB"}).max_request_size, 1536 * 1024)

    def test_timezones_are_canonical(self) -> None:
        """Zone names match in any case, as the query's ``timezone`` does, and keep IANA spelling."""
        settings = self.load({"CUBEJS_DEFAULT_TIMEZONE": "america/new_york",
                              "CUBEJS_SCHEDULED_REFRESH_TIMEZONES": "UTC, Europe/Berlin,asia/tokyo"})
        self.assertEqual(settings.default_timezone, "America/New_York")
        self.assertEqual(settings.scheduled_refresh_timezones, ("UTC", "Europe/Berlin", "Asia/Tokyo"))

    def test_redis_driver(self) -> None:
        """A Redis URL selects the redis driver unless memory is asked for; REDIS_URL is the legacy name."""
        settings = self.load({"CUBEJS_REDIS_URL": "redis://127.0.0.1:6379/0"})
        self.assertEqual((settings.cache_and_queue_driver, settings.redis_url), ("redis", "redis://127.0.0.1:6379/0"))
        settings = self.load({"REDIS_URL": "redis://h/1", "CUBEJS_CACHE_AND_QUEUE_DRIVER": "memory"})
        self.assertEqual((settings.cache_and_queue_driver, settings.redis_url), ("memory", "redis://h/1"))

    def test_refresh_worker(self) -> None:
        """CUBEJS_REFRESH_WORKER is a bool or the interval; the legacy names lose to it."""
        self.assertTrue(self.load({"CUBEJS_REFRESH_WORKER": "true"}).refresh_worker)
        settings = self.load({"CUBEJS_REFRESH_WORKER": "2m"})
        self.assertEqual((settings.refresh_worker, settings.scheduled_refresh_timer), (True, 120.0))
        settings = self.load({"CUBEJS_SCHEDULED_REFRESH_TIMER": "true"})
        self.assertEqual((settings.refresh_worker, settings.scheduled_refresh_timer), (True, 30.0))
        settings = self.load({"CUBEJS_SCHEDULED_REFRESH_TIMER": "60", "CUBEJS_REFRESH_WORKER": "false"})
        self.assertEqual((settings.refresh_worker, settings.scheduled_refresh_timer), (False, 60.0))
        self.assertTrue(self.load({"CUBEJS_SCHEDULED_REFRESH": "1"}).refresh_worker)
        # A bare number of the timer is seconds (Cube's asBoolOrTime), not "true".
        settings = self.load({"CUBEJS_SCHEDULED_REFRESH_TIMER": "1"})
        self.assertEqual((settings.refresh_worker, settings.scheduled_refresh_timer), (True, 1.0))

    def test_log_settings(self) -> None:
        settings = self.load({"CUBED_LOG_FORMAT": "json", "CUBEJS_LOG_LEVEL": "WARN"})
        self.assertEqual((settings.log_format, settings.log_level), ("json", "warn"))


class PrecedenceTests(ProjectMixin, unittest.TestCase):
    """twistd options > process environment > ``.env`` > defaults."""

    def test_dotenv_over_defaults(self) -> None:
        settings = self.load(dotenv="PORT=5001\nCUBEJS_DB_QUERY_LIMIT=7\n")
        self.assertEqual(settings.port, 5001)
        self.assertEqual(settings.db_query_limit, 7)

    def test_environment_over_dotenv(self) -> None:
        settings = self.load({"PORT": "5002"}, dotenv="PORT=5001\nCUBEJS_DB_QUERY_LIMIT=7\n")
        self.assertEqual(settings.port, 5002)
        self.assertEqual(settings.db_query_limit, 7, "what the environment does not set still comes from .env")

    def test_options_over_environment(self) -> None:
        settings = self.load({"PORT": "5002"}, dotenv="PORT=5001\n", options={"port": "5003"})
        self.assertEqual(settings.port, 5003)
        self.assertEqual(settings.listen, "tcp:5003:interface=0.0.0.0")

    def test_listen_option_over_port(self) -> None:
        settings = self.load({"PORT": "5002"}, options={"listen": "tcp:5004:interface=127.0.0.1"})
        self.assertEqual(settings.listen, "tcp:5004:interface=127.0.0.1")

    def test_secret_from_dotenv(self) -> None:
        settings = load_settings({}, self.project('CUBEJS_API_SECRET="from dotenv"\n'), {})
        self.assertEqual(settings.api_secret, "from dotenv")

    def test_empty_environment_value_means_default(self) -> None:
        """A variable set but empty in the environment still hides the ``.env`` value (dotenv
        never overrides a set variable) and, being empty, means the default."""
        settings = self.load({"CUBEJS_SCHEMA_PATH": ""}, dotenv="CUBEJS_SCHEMA_PATH=other\n")
        self.assertEqual(settings.schema_path, Path("model"))

    def test_project_dir_option(self) -> None:
        """The project directory comes from the argument, ``--project-dir`` or CUBED_PROJECT_DIR."""
        directory = self.project("CUBEJS_DB_QUERY_LIMIT=11\n")
        self.assertEqual(load_settings(dict(SECRET), None, {"project-dir": str(directory)}).db_query_limit, 11)
        environ = {**SECRET, "CUBED_PROJECT_DIR": str(directory)}
        self.assertEqual(load_settings(environ, None, {}).project_dir, directory)

    def test_process_environment_by_default(self) -> None:
        """Without an ``environ`` mapping the process environment is read."""
        self.patch(os, "environ", {**SECRET, "PORT": "5099"})
        self.assertEqual(load_settings(None, self.project(), {}).port, 5099)


class DotenvTests(ProjectMixin, unittest.TestCase):
    def read(self, text: str) -> dict[str, str]:
        return read_dotenv(self.project(text) / ".env")

    def test_forms(self) -> None:
        text = (
            "# a comment\n"
            "\n"
            "PLAIN=value\n"
            "export EXPORTED=yes\n"
            "  SPACED = padded value  \n"
            'DOUBLE="double # not a comment"\n'
            "SINGLE='single $HOME'\n"
            'COMMENTED="quoted" # a comment after a quoted value\n'
            "INLINE=value # a comment\n"
            "HASH=pa#ss\n"
            "EMPTY=\n"
            'NEWLINE="line1\\nline2"\n'
            "URL=postgres://u:p@h:5432/db?sslmode=require\n"
        )
        self.assertEqual(self.read(text), {
            "PLAIN": "value",
            "EXPORTED": "yes",
            "SPACED": "padded value",
            "DOUBLE": "double # not a comment",
            "SINGLE": "single $HOME",
            "COMMENTED": "quoted",
            "INLINE": "value",
            "HASH": "pa#ss",
            "EMPTY": "",
            "NEWLINE": "line1\nline2",
            "URL": "postgres://u:p@h:5432/db?sslmode=require",
        })

    def test_later_line_wins(self) -> None:
        self.assertEqual(self.read("A=1\nA=2\n"), {"A": "2"})

    def test_byte_order_mark(self) -> None:
        self.assertEqual(self.read("\ufeffA=1\n"), {"A": "1"})

    def test_absent_file(self) -> None:
        self.assertEqual(read_dotenv(self.project() / ".env"), {})

    def assertBadLine(self, text: str, line: int) -> ConfigError:
        directory = self.project(text)
        error = self.assertRaises(ConfigError, read_dotenv, directory / ".env")
        self.assertIn(f"{directory / '.env'}:{line}:", str(error))
        self.assertNotIn("\n", str(error))
        return error

    def test_bad_lines_name_file_and_line(self) -> None:
        self.assertBadLine("A=1\njust words\n", 2)
        self.assertBadLine("# c\n\nexport\n", 3)
        self.assertBadLine("1BAD=x\n", 1)
        self.assertBadLine("BAD-KEY=x\n", 1)
        self.assertIn("unterminated", str(self.assertBadLine('A=1\nB="open\n', 2)))
        self.assertBadLine("A='x' y\n", 1)

    def test_bad_line_stops_load_settings(self) -> None:
        directory = self.project("PORT=1\nnonsense\n")
        error = self.assertRaises(ConfigError, load_settings, dict(SECRET), directory, {})
        self.assertEqual(str(error), f"{directory / '.env'}:2: not a KEY=value line")

    def test_unreadable_file(self) -> None:
        directory = self.project()
        (directory / ".env").mkdir()
        error = self.assertRaises(ConfigError, read_dotenv, directory / ".env")
        self.assertIn(".env: cannot read", str(error))
        (directory / ".env").rmdir()
        (directory / ".env").write_bytes(b"A=\xff\xfe\n")
        self.assertIn(".env: cannot read", str(self.assertRaises(ConfigError, read_dotenv, directory / ".env")))


class InvalidSettingTests(ProjectMixin, unittest.TestCase):
    """Every bad value is a ConfigError of one line that names the setting."""

    def assertRejected(self, environ: dict[str, str], setting: str, options: dict[str, Any] | None = None,
                       secret: bool = True, value: str | None = None) -> str:
        base = dict(SECRET) if secret else {}
        error = self.assertRaises(ConfigError, load_settings, {**base, **environ}, self.project(), options or {})
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertIn(setting, message)
        if value is not None:
            self.assertIn(f'"{value}"', message)
        return message

    def test_port(self) -> None:
        message = self.assertRejected({"PORT": "abc"}, "PORT", value="abc")
        self.assertEqual(message, 'Value "abc" is not valid for PORT. Must be a port number or an endpoint string.')
        self.assertRejected({"PORT": "70000"}, "PORT", value="70000")
        self.assertRejected({"PORT": "-1"}, "PORT", value="-1")
        self.assertRejected({"PORT": "tcp:abc"}, "PORT", value="tcp:abc")
        self.assertRejected({"PORT": "tcp:4000:nonsense=1"}, "PORT")
        self.assertRejected({"PORT": "nosuchtype:4000"}, "PORT")

    def test_port_option(self) -> None:
        self.assertRejected({"PORT": "4000"}, "--port", options={"port": "abc"}, value="abc")

    def test_listen_option(self) -> None:
        self.assertRejected({}, "--listen", options={"listen": "tcp:"})
        self.assertRejected({}, "--listen", options={"listen": "systemd:domain=INET"})
        self.assertRejected({}, "--listen", options={"listen": "systemd:domain=NOPE:index=0"})
        self.assertRejected({}, "--listen", options={"listen": "systemd:domain=INET:index=x"})

    def test_db_type(self) -> None:
        message = self.assertRejected({"CUBEJS_DB_TYPE": "oracle"}, "CUBEJS_DB_TYPE", value="oracle")
        self.assertEqual(message, 'Value "oracle" is not valid for CUBEJS_DB_TYPE. Must be one of: duckdb, postgres, sqlite, mysql.')

    def test_dev_mode(self) -> None:
        message = self.assertRejected({"CUBEJS_DEV_MODE": "maybe"}, "CUBEJS_DEV_MODE", value="maybe")
        self.assertEqual(message, 'Value "maybe" is not valid for CUBEJS_DEV_MODE. Must be true or false.')

    def test_durations(self) -> None:
        message = self.assertRejected({"CUBEJS_DB_QUERY_TIMEOUT": "10x"}, "CUBEJS_DB_QUERY_TIMEOUT", value="10x")
        self.assertEqual(message, 'Value "10x" is not valid for CUBEJS_DB_QUERY_TIMEOUT. '
                                  "Must be a number in seconds or duration string (1s, 1m, 1h).")
        self.assertRejected({"CUBEJS_CONTINUE_WAIT_TIMEOUT": "soon"}, "CUBEJS_CONTINUE_WAIT_TIMEOUT")
        self.assertRejected({"CUBEJS_REFRESH_WORKER": "sometimes"}, "CUBEJS_REFRESH_WORKER")
        self.assertRejected({"CUBEJS_SCHEDULED_REFRESH_TIMER": "1.5m"}, "CUBEJS_SCHEDULED_REFRESH_TIMER")
        self.assertRejected({"CUBEJS_SCHEDULED_REFRESH": "often"}, "CUBEJS_SCHEDULED_REFRESH")

    def test_integers(self) -> None:
        self.assertRejected({"CUBEJS_DB_PORT": "five"}, "CUBEJS_DB_PORT", value="five")
        self.assertRejected({"CUBEJS_DB_PORT": "0"}, "CUBEJS_DB_PORT")
        self.assertRejected({"CUBEJS_CONCURRENCY": "0"}, "CUBEJS_CONCURRENCY")
        self.assertRejected({"CUBEJS_DB_MAX_POOL": "many"}, "CUBEJS_DB_MAX_POOL")
        self.assertRejected({"CUBEJS_DB_QUERY_LIMIT": "1e6"}, "CUBEJS_DB_QUERY_LIMIT")
        self.assertRejected({"CUBEJS_DB_QUERY_DEFAULT_LIMIT": "0"}, "CUBEJS_DB_QUERY_DEFAULT_LIMIT")
        self.assertRejected({"CUBEJS_DB_SSL": "tls"}, "CUBEJS_DB_SSL")

    def test_cache_and_queue_driver(self) -> None:
        self.assertRejected({"CUBEJS_CACHE_AND_QUEUE_DRIVER": "cubestore"}, "CUBEJS_CACHE_AND_QUEUE_DRIVER",
                            value="cubestore")

    def test_redis_driver_without_url(self) -> None:
        message = self.assertRejected({"CUBEJS_CACHE_AND_QUEUE_DRIVER": "redis"}, "CUBEJS_REDIS_URL")
        self.assertIn("CUBEJS_CACHE_AND_QUEUE_DRIVER=redis", message)

    def test_timezones(self) -> None:
        self.assertRejected({"CUBEJS_DEFAULT_TIMEZONE": "Mars/Olympus"}, "CUBEJS_DEFAULT_TIMEZONE", value="Mars/Olympus")
        # A zone database directory, not a zone: must not escape as IsADirectoryError.
        self.assertRejected({"CUBEJS_DEFAULT_TIMEZONE": "America"}, "CUBEJS_DEFAULT_TIMEZONE", value="America")
        self.assertRejected({"CUBEJS_DEFAULT_TIMEZONE": "../../etc/passwd"}, "CUBEJS_DEFAULT_TIMEZONE")
        self.assertRejected({"CUBEJS_SCHEDULED_REFRESH_TIMEZONES": "UTC,Nowhere/Town"},
                            "CUBEJS_SCHEDULED_REFRESH_TIMEZONES", value="Nowhere/Town")

    def test_missing_secret(self) -> None:
        message = self.assertRejected({}, "CUBEJS_API_SECRET", secret=False)
        self.assertIn("dev mode", message)

    def test_jwk_url_not_http(self) -> None:
        self.assertRejected({"CUBEJS_JWK_URL": "file:///etc/jwks.json"}, "CUBEJS_JWK_URL")

    def test_jwt_algorithms(self) -> None:
        self.assertRejected({"CUBEJS_JWT_ALGS": "HS256,RS256"}, "CUBEJS_JWT_ALGS", value="RS256")

    def test_data_sources_without_default(self) -> None:
        message = self.assertRejected({"CUBEJS_DATASOURCES": "extra,other"}, "CUBEJS_DATASOURCES", value="extra,other")
        self.assertIn('"default"', message)

    def test_data_source_names(self) -> None:
        self.assertRejected({"CUBEJS_DATASOURCES": "default,my-db"}, "CUBEJS_DATASOURCES")
        self.assertRejected({"CUBEJS_DATASOURCES": "default,extra,EXTRA"}, "CUBEJS_DATASOURCES")

    def test_data_source_values_name_their_variable(self) -> None:
        environ = {"CUBEJS_DATASOURCES": "default,extra"}
        self.assertRejected({**environ, "CUBEJS_DS_EXTRA_DB_TYPE": "oracle"}, "CUBEJS_DS_EXTRA_DB_TYPE", value="oracle")
        self.assertRejected({**environ, "CUBEJS_DS_EXTRA_DB_PORT": "x"}, "CUBEJS_DS_EXTRA_DB_PORT")
        self.assertRejected({**environ, "CUBEJS_DS_EXTRA_DB_QUERY_TIMEOUT": "10x"}, "CUBEJS_DS_EXTRA_DB_QUERY_TIMEOUT")

    def test_max_request_size(self) -> None:
        for value in ("big", "0", "-1mb", "10tb"):
            self.assertRejected({"CUBEJS_MAX_REQUEST_SIZE": value}, "CUBEJS_MAX_REQUEST_SIZE", value=value)

    def test_default_api_scopes(self) -> None:
        self.assertRejected({"CUBEJS_DEFAULT_API_SCOPES": "meta,dta"}, "CUBEJS_DEFAULT_API_SCOPES", value="dta")
        self.assertEqual(self.load({"CUBEJS_DEFAULT_API_SCOPES": "meta, jobs"}).default_api_scopes, ("meta", "jobs"))
        self.assertEqual(self.load({}).default_api_scopes, ("graphql", "meta", "data", "sql"))

    def test_base_path(self) -> None:
        self.assertRejected({"CUBEJS_BASE_PATH": "api"}, "CUBEJS_BASE_PATH")
        self.assertRejected({"CUBEJS_BASE_PATH": "/api/"}, "CUBEJS_BASE_PATH")

    def test_log_settings(self) -> None:
        self.assertRejected({"CUBED_LOG_FORMAT": "xml"}, "CUBED_LOG_FORMAT", value="xml")
        self.assertRejected({"CUBEJS_LOG_LEVEL": "loud"}, "CUBEJS_LOG_LEVEL", value="loud")

    def test_project_dir(self) -> None:
        missing = Path(self.mktemp()).resolve()
        error = self.assertRaises(ConfigError, load_settings, dict(SECRET), missing, {})
        self.assertIn("--project-dir", str(error))
        self.assertIn(str(missing), str(error))

    def test_value_from_dotenv_is_named_too(self) -> None:
        directory = self.project("CUBEJS_DB_TYPE=mssql\n")
        error = self.assertRaises(ConfigError, load_settings, dict(SECRET), directory, {})
        self.assertEqual(str(error), 'Value "mssql" is not valid for CUBEJS_DB_TYPE. Must be one of: duckdb, postgres, sqlite, mysql.')


class DataSourceTests(ProjectMixin, unittest.TestCase):
    def test_default_postgres(self) -> None:
        settings = self.load({
            "CUBEJS_DB_TYPE": "postgres", "CUBEJS_DB_HOST": "db.example", "CUBEJS_DB_PORT": "5433",
            "CUBEJS_DB_NAME": "shop", "CUBEJS_DB_USER": "cube", "CUBEJS_DB_PASS": "pw", "CUBEJS_DB_SSL": "true",
            "CUBEJS_DB_MAX_POOL": "8", "CUBEJS_DB_QUERY_TIMEOUT": "2m", "CUBEJS_CONCURRENCY": "3",
        })
        self.assertEqual(settings.data_sources, (DataSourceSettings(
            name="default", db_type="postgres", host="db.example", port=5433, database="shop", user="cube",
            password="pw", ssl=True, max_pool=8, query_timeout=120.0, concurrency=3,
        ),))

    def test_multiple_data_sources(self) -> None:
        """CUBEJS_DATASOURCES lists the sources; ``default`` reads CUBEJS_DB_*, the others
        CUBEJS_DS_<NAME>_DB_*."""
        settings = self.load({
            "CUBEJS_DATASOURCES": "default, extra",
            "CUBEJS_DB_TYPE": "postgres", "CUBEJS_DB_HOST": "main-db", "CUBEJS_DB_NAME": "shop",
            "CUBEJS_DS_EXTRA_DB_TYPE": "postgres", "CUBEJS_DS_EXTRA_DB_HOST": "extra-db",
            "CUBEJS_DS_EXTRA_DB_PORT": "6543", "CUBEJS_DS_EXTRA_DB_NAME": "warehouse",
            "CUBEJS_DS_EXTRA_DB_USER": "reader", "CUBEJS_DS_EXTRA_DB_PASS": "s3cret",
            "CUBEJS_DS_EXTRA_DB_QUERY_TIMEOUT": "30s", "CUBEJS_DS_EXTRA_CONCURRENCY": "5",
            "CUBEJS_CONCURRENCY": "2",
        })
        self.assertEqual([ds.name for ds in settings.data_sources], ["default", "extra"])
        default, extra = settings.data_sources
        self.assertEqual((default.db_type, default.host, default.database, default.concurrency),
                         ("postgres", "main-db", "shop", 2))
        self.assertEqual((extra.db_type, extra.host, extra.port, extra.database, extra.user, extra.password),
                         ("postgres", "extra-db", 6543, "warehouse", "reader", "s3cret"))
        self.assertEqual((extra.query_timeout, extra.concurrency), (30.0, 5))
        self.assertIs(settings.default_data_source, default)

    def test_extra_source_falls_back_to_global_concurrency(self) -> None:
        settings = self.load({"CUBEJS_DATASOURCES": "default,extra", "CUBEJS_CONCURRENCY": "4"})
        self.assertEqual([ds.concurrency for ds in settings.data_sources], [4, 4])

    def test_duckdb_path_relative_to_project(self) -> None:
        directory = self.project()
        settings = load_settings({**SECRET, "CUBEJS_DB_DUCKDB_DATABASE_PATH": "var/shop.duckdb"}, directory, {})
        self.assertEqual(settings.default_data_source.duckdb_path, directory / "var/shop.duckdb")
        settings = load_settings({**SECRET, "CUBEJS_DB_DUCKDB_DATABASE_PATH": "/data/shop.duckdb"}, directory, {})
        self.assertEqual(settings.default_data_source.duckdb_path, Path("/data/shop.duckdb"))


class ListenTests(ProjectMixin, unittest.TestCase):
    def test_port_number(self) -> None:
        settings = self.load({"PORT": "4100"})
        self.assertEqual((settings.listen, settings.port), ("tcp:4100:interface=0.0.0.0", 4100))

    def test_host(self) -> None:
        self.assertEqual(self.load({"PORT": "4100", "CUBED_HOST": "10.0.0.5"}).listen, "tcp:4100:interface=10.0.0.5")
        # IPv6 colons are escaped for the endpoint parser.
        self.assertEqual(self.load({"PORT": "4100", "CUBED_HOST": "::"}).listen, "tcp:4100:interface=\\:\\:")

    def test_tcp_endpoint(self) -> None:
        """An endpoint string is used as given: no interface is added."""
        settings = self.load({"PORT": "tcp:4200"})
        self.assertEqual((settings.listen, settings.port), ("tcp:4200", 4200))
        settings = self.load({"PORT": "tcp:4201:interface=127.0.0.1"})
        self.assertEqual((settings.listen, settings.port), ("tcp:4201:interface=127.0.0.1", 4201))
        self.assertEqual(self.load({"PORT": "tcp6:4202:interface=\\:\\:1"}).port, 4202)

    def test_unix_endpoint(self) -> None:
        settings = self.load({"PORT": "unix:/run/cubed/cubed.sock"})
        self.assertEqual((settings.listen, settings.port), ("unix:/run/cubed/cubed.sock", 0))

    def test_systemd_endpoint(self) -> None:
        """systemd endpoints are checked for form only: the socket exists only under systemd."""
        settings = self.load({"PORT": "systemd:domain=INET:index=0"})
        self.assertEqual((settings.listen, settings.port), ("systemd:domain=INET:index=0", 0))
        settings = self.load(options={"listen": "systemd:domain=INET6:name=cubed-http"})
        self.assertEqual(settings.listen, "systemd:domain=INET6:name=cubed-http")

    def test_listen_option(self) -> None:
        settings = self.load({"PORT": "4300"}, options={"listen": "tcp:4301:interface=127.0.0.1"})
        self.assertEqual(settings.listen, "tcp:4301:interface=127.0.0.1")


class SchemaPathTests(ProjectMixin, unittest.TestCase):
    def test_relative_to_project_dir(self) -> None:
        directory = self.project()
        settings = load_settings({**SECRET, "CUBEJS_SCHEMA_PATH": "cube/model"}, directory, {})
        self.assertEqual(settings.schema_path, Path("cube/model"))
        self.assertEqual(settings.resolved_schema_path, directory / "cube" / "model")

    def test_default_is_model_in_project_dir(self) -> None:
        directory = self.project()
        self.assertEqual(load_settings(dict(SECRET), directory, {}).resolved_schema_path, directory / "model")

    def test_absolute(self) -> None:
        settings = load_settings({**SECRET, "CUBEJS_SCHEMA_PATH": "/srv/model"}, self.project(), {})
        self.assertEqual(settings.resolved_schema_path, Path("/srv/model"))

    def test_from_dotenv(self) -> None:
        directory = self.project("CUBEJS_SCHEMA_PATH=schema\n")
        self.assertEqual(load_settings(dict(SECRET), directory, {}).resolved_schema_path, directory / "schema")


class ParseDurationTests(unittest.TestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_duration("10", "K"), 10.0)
        self.assertEqual(parse_duration("10s", "K"), 10.0)
        self.assertEqual(parse_duration("10m", "K"), 600.0)
        self.assertEqual(parse_duration("2h", "K"), 7200.0)
        self.assertEqual(parse_duration(" 5M ", "K"), 300.0)

    def test_invalid(self) -> None:
        for value in ("10x", "", "m", "1.5s", "-1", "1 h"):
            error = self.assertRaises(ConfigError, parse_duration, value, "CUBEJS_X")
            self.assertEqual(str(error), f'Value "{value}" is not valid for CUBEJS_X. '
                                         "Must be a number in seconds or duration string (1s, 1m, 1h).")
