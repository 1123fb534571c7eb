"""Settings from the environment, a ``.env`` file in the project directory and twistd options.

Cube's variable names are used so that a Cube project moves over unchanged. Precedence:
twistd options > process environment > ``.env`` > defaults. A bad value raises
``ConfigError`` with one line naming the setting; start-up stops on it.
"""
from __future__ import annotations

import os
import sys
import types
import re
import socket
import zoneinfo
from functools import lru_cache
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from cubed.errors import ConfigError

DB_TYPES = ("duckdb", "postgres", "sqlite", "mysql")
CACHE_AND_QUEUE_DRIVERS = ("memory", "redis")
LOG_FORMATS = ("text", "json")
API_SCOPES = ("graphql", "meta", "data", "sql", "jobs")
DEFAULT_API_SCOPES = ("graphql", "meta", "data", "sql")

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")
_DURATION = re.compile(r"^(\d+)([smh]?)$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATA_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
#: The JWT algorithms cubed verifies: HMAC with a shared secret (CUBEJS_API_SECRET), RSA and EC
#: with a public key (CUBEJS_JWT_KEY as a PEM or JWK, or the keys at CUBEJS_JWK_URL). Never "none".
JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                  "ES256", "ES384", "ES512")
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")


@dataclass(frozen=True)
class DataSourceSettings:
    """Connection settings of one data source (``default`` or one of ``CUBEJS_DATASOURCES``)."""

    name: str = "default"
    db_type: str = "duckdb"
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password: str | None = None
    url: str | None = None
    ssl: bool = False
    max_pool: int | None = None
    duckdb_path: Path | None = None
    query_timeout: float = 600.0
    concurrency: int | None = None


@dataclass(frozen=True)
class Settings:
    """Every setting cubed reads, resolved and validated."""

    project_dir: Path = Path(".")
    listen: str = "tcp:4000:interface=127.0.0.1"
    port: int = 4000
    base_path: str = "/cubejs-api"
    dev_mode: bool = False
    api_secret: str | None = None
    schema_path: Path = Path("model")
    data_sources: tuple[DataSourceSettings, ...] = (DataSourceSettings(),)
    db_query_limit: int = 50000
    db_query_default_limit: int = 10000
    default_timezone: str = "UTC"
    continue_wait_timeout: float = 5.0
    orphaned_timeout: float = 120.0
    heartbeat_interval: float = 30.0
    result_grace: float = 60.0
    cache_and_queue_driver: str = "memory"
    redis_url: str | None = None
    refresh_worker: bool = False
    scheduled_refresh_timer: float = 30.0
    scheduled_refresh_timezones: tuple[str, ...] = ("UTC",)
    pre_aggregations_schema: str | None = None
    rollup_only: bool = False
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: tuple[str, ...] = ()
    jwt_subject: str | None = None
    jwt_claims_namespace: str | None = None
    jwk_url: str | None = None
    max_request_size: int = 1024 * 1024
    log_format: str = "text"
    log_level: str = "info"
    metrics_enabled: bool = True
    metrics_token: str | None = None
    default_api_scopes: tuple[str, ...] = DEFAULT_API_SCOPES
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def default_data_source(self) -> DataSourceSettings:
        """Return the settings of the ``default`` data source."""
        for ds in self.data_sources:
            if ds.name == "default":
                return ds
        return self.data_sources[0]

    @property
    def pre_aggregations_schema_name(self) -> str:
        """Return the schema pre-aggregation tables are built in (Cube's defaults by mode)."""
        if self.pre_aggregations_schema:
            return self.pre_aggregations_schema
        return "dev_pre_aggregations" if self.dev_mode else "prod_pre_aggregations"

    @property
    def resolved_schema_path(self) -> Path:
        """Return the model directory as an absolute path."""
        path = self.schema_path
        return path if path.is_absolute() else (self.project_dir / path).resolve()

    def with_overrides(self, **changes: object) -> "Settings":
        """Return a copy with some fields replaced (used by tests)."""
        return replace(self, **changes)


def read_dotenv(path: Path) -> dict[str, str]:
    """Return the variables of a ``.env`` file; an absent file gives an empty dict.

    The format is the one Cube's dotenv reads: ``KEY=value`` lines, an optional ``export ``
    prefix, values in single, double or back quotes (``\\n`` in double quotes is a newline),
    ``#`` comment lines and `` #`` comments after a value. A line that is not of that form,
    or a file that cannot be read, raises ConfigError naming ``file:line``.
    """
    result: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return result
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(f"{path}: cannot read: {reason}") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export"):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ConfigError(f"{path}:{number}: not a KEY=value line")
        result[key] = _dotenv_value(value, f"{path}:{number}")
    return result


def _dotenv_value(value: str, where: str) -> str:
    """Return the value part of one ``.env`` line (quotes removed, comment dropped)."""
    value = value.rstrip()
    if value.lstrip()[:1] in ("'", '"', "`"):
        value = value.lstrip()
        quote = value[0]
        end = value.find(quote, 1)
        while quote == '"' and end != -1 and _escaped(value, end):
            end = value.find(quote, end + 1)
        if end == -1:
            raise ConfigError(f"{where}: unterminated {quote} quote")
        rest = value[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise ConfigError(f"{where}: unexpected text after the closing {quote} quote")
        inner = value[1:end]
        if quote == '"':
            inner = inner.replace("\\n", "\n").replace('\\"', '"')
        return inner
    # A comment starts at a "#" after white space; "a#b" (a password, say) keeps its "#".
    match = re.search(r"\s#", value)
    return (value[:match.start()] if match else value).strip()


def _escaped(text: str, index: int) -> bool:
    """Return whether the character at ``index`` follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1


class _Reader:
    """Typed access to one merged variable mapping; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, key: str, default: str | None = None) -> str | None:
        value = self.env.get(key)
        return default if value is None or value == "" else value

    def bool(self, key: str, default: bool) -> bool:
        value = self.env.get(key)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f'Value "{value}" is not valid for {key}. Must be true or false.')

    def int(self, key: str, default: int | None, minimum: int = 0, maximum: int | None = None) -> int | None:
        value = self.env.get(key)
        if value is None or value == "":
            return default
        try:
            number = int(value.strip())
        except ValueError:
            raise ConfigError(f'Value "{value}" is not valid for {key}. Must be an integer.') from None
        if number < minimum or (maximum is not None and number > maximum):
            bound = f" between {minimum} and {maximum}" if maximum is not None else f" >= {minimum}"
            raise ConfigError(f'Value "{value}" is not valid for {key}. Must be an integer{bound}.')
        return number

    def duration(self, key: str, default: float) -> float:
        value = self.env.get(key)
        if value is None or value == "":
            return default
        return parse_duration(value, key)

    def choice(self, key: str, default: str, choices: tuple[str, ...], fold: bool = False) -> str:
        value = self.str(key, default)
        assert value is not None
        if fold and value.strip().lower() in choices:
            return value.strip().lower()
        if value not in choices:
            raise ConfigError(f'Value "{value}" is not valid for {key}. Must be one of: {", ".join(choices)}.')
        return value

    def list(self, key: str) -> tuple[str, ...]:
        value = self.env.get(key) or ""
        return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_duration(value: str, key: str) -> float:
    """Return seconds from ``N``, ``Ns``, ``Nm`` or ``Nh``; ConfigError naming ``key`` otherwise."""
    match = _DURATION.match(value.strip().lower())
    if not match:
        raise ConfigError(
            f'Value "{value}" is not valid for {key}. '
            "Must be a number in seconds or duration string (1s, 1m, 1h)."
        )
    number, unit = int(match.group(1)), match.group(2)
    return float(number * {"": 1, "s": 1, "m": 60, "h": 3600}[unit])


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    names = {name.lower(): name for name in zoneinfo.available_timezones()}
    names.setdefault("utc", "UTC")
    return names


def _timezone(value: str, key: str) -> str:
    """Return the IANA spelling of the zone ``value`` (any case, as the query's ``timezone``);
    ConfigError naming ``key`` when it names no zone."""
    canonical = _zone_names().get(value.strip().lower())
    if canonical is None:
        raise ConfigError(f'Value "{value}" is not valid for {key}. Must be an IANA time zone.')
    return canonical


def _data_source(reader: _Reader, name: str, project_dir: Path) -> DataSourceSettings:
    prefix = "CUBEJS_" if name == "default" else f"CUBEJS_DS_{name.upper()}_"
    db_type = reader.choice(f"{prefix}DB_TYPE", "duckdb", DB_TYPES)
    duckdb_path: Path | None = None
    if db_type == "duckdb":
        raw = reader.str(f"{prefix}DB_DUCKDB_DATABASE_PATH")
        if raw:
            duckdb_path = Path(raw) if Path(raw).is_absolute() else (project_dir / raw)
    database = reader.str(f"{prefix}DB_NAME")
    if db_type == "sqlite" and database and database != ":memory:" and not Path(database).is_absolute():
        # SQLite's CUBEJS_DB_NAME is the database file (as Cube reads it), found from the project.
        database = str(project_dir / database)
    return DataSourceSettings(
        name=name,
        db_type=db_type,
        host=reader.str(f"{prefix}DB_HOST"),
        port=reader.int(f"{prefix}DB_PORT", None, minimum=1, maximum=65535),
        database=database,
        user=reader.str(f"{prefix}DB_USER"),
        password=reader.str(f"{prefix}DB_PASS"),
        url=reader.str(f"{prefix}DB_URL"),
        ssl=reader.bool(f"{prefix}DB_SSL", False),
        max_pool=reader.int(f"{prefix}DB_MAX_POOL", None, minimum=1),
        duckdb_path=duckdb_path,
        query_timeout=reader.duration(f"{prefix}DB_QUERY_TIMEOUT", 600.0),
        concurrency=reader.int(f"{prefix}CONCURRENCY", reader.int("CUBEJS_CONCURRENCY", None, minimum=1), minimum=1),
    )


def _listen_endpoint(port: str, key: str) -> tuple[str, int]:
    """Return (endpoint description, numeric port) from a port number or an endpoint string."""
    value = port.strip()
    if value.isdigit():
        number = int(value)
        if not 0 <= number <= 65535:
            raise ConfigError(f'Value "{port}" is not valid for {key}. Should be lower or equal than 65535.')
        return f"tcp:{number}", number
    if ":" not in value:
        raise ConfigError(f'Value "{port}" is not valid for {key}. Must be a port number or an endpoint string.')
    _check_endpoint(value, key)
    match = re.match(r"^(?:tcp6?|ssl):(?:port=)?(\d+)", value)
    return value, int(match.group(1)) if match else 0


def _check_endpoint(value: str, key: str) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` is a server endpoint description
    Twisted can listen on (``tcp:4000:interface=127.0.0.1``, ``unix:/run/cubed.sock``,
    ``systemd:domain=INET:index=0``, ``ssl:...``). Nothing is opened."""
    prefix, _, rest = value.partition(":")
    if prefix == "systemd":
        # The descriptors systemd passes exist only under systemd: check the form here; a
        # missing socket is reported when the listener is made.
        args = dict(part.partition("=")[::2] for part in rest.split(":") if part)
        domain, index, name = args.pop("domain", ""), args.pop("index", None), args.pop("name", None)
        if not domain or not hasattr(socket, f"AF_{domain}"):
            reason = "systemd needs domain=INET, INET6 or UNIX"
        elif (index is None) == (name is None) or (index is not None and not index.isdigit()):
            reason = "systemd needs exactly one of index=N or name=NAME"
        elif args:
            reason = f"unknown systemd argument {sorted(args)[0]}"
        else:
            return
        raise ConfigError(f'Value "{value}" is not valid for {key}. Not an endpoint: {reason}.')
    from twisted.internet.endpoints import serverFromString

    try:
        # Parsing needs no reactor: the endpoint only keeps it for listen().
        serverFromString(object(), value)
    except Exception as error:  # Twisted's parsers raise ValueError, TypeError, KeyError, OSError
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f'Value "{value}" is not valid for {key}. Not an endpoint: {reason}.') from None


def _interface(host: str) -> str:
    """Return ``host`` escaped for an endpoint description (IPv6 colons)."""
    return host.replace("\\", "\\\\").replace(":", "\\:")


def load_settings(
    environ: Mapping[str, str] | None = None,
    project_dir: str | Path | None = None,
    options: Mapping[str, object] | None = None,
) -> Settings:
    """Return validated Settings from the environment, ``<project_dir>/.env`` and options.

    ``options`` holds twistd options that win over both (``port``, ``listen``, ``dev``).
    Raises ConfigError with one line naming the bad setting.
    """
    environ = dict(os.environ if environ is None else environ)
    options = dict(options or {})
    directory = Path(project_dir or options.get("project-dir") or environ.get("CUBED_PROJECT_DIR") or ".")
    directory = directory.resolve()
    if not directory.is_dir():
        raise ConfigError(f'Value "{directory}" is not valid for --project-dir. Not a directory.')
    merged: dict[str, str] = {**read_dotenv(directory / ".env"), **environ}
    reader = _Reader(merged)

    dev_mode = bool(options.get("dev")) or reader.bool("CUBEJS_DEV_MODE", False)
    port_value = options.get("port") or reader.str("PORT", "4000")
    listen, port = _listen_endpoint(str(port_value), "--port" if options.get("port") else "PORT")
    if options.get("listen"):
        listen = str(options["listen"]).strip()
        _check_endpoint(listen, "--listen")
    elif str(port_value).strip().isdigit():
        host = reader.str("CUBED_HOST", "127.0.0.1" if dev_mode else "0.0.0.0")
        assert host is not None
        listen = f"{listen}:interface={_interface(host.strip())}"

    base_path = reader.str("CUBEJS_BASE_PATH", "/cubejs-api") or "/cubejs-api"
    if not base_path.startswith("/") or base_path.endswith("/") and base_path != "/":
        raise ConfigError(f'Value "{base_path}" is not valid for CUBEJS_BASE_PATH. Must start with / and not end with /.')

    api_secret, jwk_url, jwt_algorithms = _jwt_keys(reader, dev_mode)

    names = reader.list("CUBEJS_DATASOURCES")
    listed = ",".join(names)
    if names and "default" not in names:
        raise ConfigError(f'Value "{listed}" is not valid for CUBEJS_DATASOURCES. It must list "default".')
    for name in names:
        if not _DATA_SOURCE_NAME.match(name):
            raise ConfigError(f'Value "{listed}" is not valid for CUBEJS_DATASOURCES. '
                              f'"{name}" is not a data source name (letters, digits, _).')
        if names.count(name) > 1 or [n.upper() for n in names].count(name.upper()) > 1:
            raise ConfigError(f'Value "{listed}" is not valid for CUBEJS_DATASOURCES. "{name}" is listed twice.')
    data_sources = tuple(_data_source(reader, name, directory) for name in (names or ("default",)))

    db_query_limit = reader.int("CUBEJS_DB_QUERY_LIMIT", 50000, minimum=1)
    db_query_default_limit = reader.int("CUBEJS_DB_QUERY_DEFAULT_LIMIT", 10000, minimum=1)
    assert db_query_limit is not None and db_query_default_limit is not None

    timezones = tuple(
        _timezone(tz, "CUBEJS_SCHEDULED_REFRESH_TIMEZONES") for tz in reader.list("CUBEJS_SCHEDULED_REFRESH_TIMEZONES")
    ) or ("UTC",)
    # CUBEJS_REFRESH_WORKER and its legacy names (CUBEJS_SCHEDULED_REFRESH, then
    # CUBEJS_SCHEDULED_REFRESH_TIMER, which lose to it) are true/false or the loop's interval,
    # which also turns the loop on.
    # Off by default in production; in dev mode on, as Cube's (it keeps the rollups the
    # developer is trying out built).
    refresh_worker = dev_mode
    refresh_timer = 30.0
    for key in ("CUBEJS_SCHEDULED_REFRESH_TIMER", "CUBEJS_SCHEDULED_REFRESH", "CUBEJS_REFRESH_WORKER"):
        raw = reader.str(key)
        if raw is None:
            continue
        lowered = raw.strip().lower()
        # As Cube's asBoolOrTime: only the words are booleans; a number is the interval.
        if lowered in ("true", "false"):
            refresh_worker = lowered == "true"
        elif key == "CUBEJS_REFRESH_WORKER" and (lowered in _TRUE or lowered in _FALSE):
            refresh_worker = lowered in _TRUE
        else:
            refresh_timer, refresh_worker = parse_duration(raw, key), True

    redis_url = reader.str("CUBEJS_REDIS_URL", reader.str("REDIS_URL"))
    driver_default = "redis" if redis_url else "memory"
    driver = reader.choice("CUBEJS_CACHE_AND_QUEUE_DRIVER", driver_default, CACHE_AND_QUEUE_DRIVERS)
    if driver == "redis" and not redis_url:
        raise ConfigError("CUBEJS_REDIS_URL is required when CUBEJS_CACHE_AND_QUEUE_DRIVER=redis.")

    max_request_size = _size(reader.str("CUBEJS_MAX_REQUEST_SIZE", "1mb") or "1mb")

    return Settings(
        project_dir=directory,
        listen=listen,
        port=port,
        base_path=base_path,
        dev_mode=dev_mode,
        api_secret=api_secret,
        schema_path=Path(reader.str("CUBEJS_SCHEMA_PATH", "model") or "model"),
        data_sources=data_sources,
        db_query_limit=db_query_limit,
        db_query_default_limit=min(db_query_default_limit, db_query_limit),
        default_timezone=_timezone(reader.str("CUBEJS_DEFAULT_TIMEZONE", "UTC") or "UTC", "CUBEJS_DEFAULT_TIMEZONE"),
        continue_wait_timeout=reader.duration("CUBEJS_CONTINUE_WAIT_TIMEOUT", 5.0),
        orphaned_timeout=reader.duration("CUBED_ORPHANED_TIMEOUT", 120.0),
        heartbeat_interval=reader.duration("CUBED_HEARTBEAT_INTERVAL", 30.0),
        result_grace=reader.duration("CUBED_RESULT_GRACE", 60.0),
        cache_and_queue_driver=driver,
        redis_url=redis_url,
        refresh_worker=refresh_worker,
        scheduled_refresh_timer=refresh_timer,
        scheduled_refresh_timezones=timezones,
        pre_aggregations_schema=_identifier(reader.str("CUBEJS_PRE_AGGREGATIONS_SCHEMA"), "CUBEJS_PRE_AGGREGATIONS_SCHEMA"),
        rollup_only=reader.bool("CUBEJS_ROLLUP_ONLY", False),
        jwt_algorithms=jwt_algorithms,
        jwt_audience=reader.str("CUBEJS_JWT_AUDIENCE"),
        jwt_issuer=reader.list("CUBEJS_JWT_ISSUER"),
        jwt_subject=reader.str("CUBEJS_JWT_SUBJECT"),
        jwt_claims_namespace=reader.str("CUBEJS_JWT_CLAIMS_NAMESPACE"),
        jwk_url=jwk_url,
        max_request_size=max_request_size,
        log_format=reader.choice("CUBED_LOG_FORMAT", "text", LOG_FORMATS),
        log_level=reader.choice("CUBEJS_LOG_LEVEL", "info", LOG_LEVELS, fold=True),
        metrics_enabled=reader.bool("CUBED_METRICS", True),
        metrics_token=reader.str("CUBED_METRICS_TOKEN"),
        default_api_scopes=_api_scopes(reader.list("CUBEJS_DEFAULT_API_SCOPES")),
        extra=merged,
    )


def _api_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """Return the scopes of CUBEJS_DEFAULT_API_SCOPES (Cube's defaults when unset); a name
    that is no scope stops start-up rather than silently closing routes."""
    if not scopes:
        return DEFAULT_API_SCOPES
    for scope in scopes:
        if scope not in API_SCOPES:
            raise ConfigError(f'Value "{scope}" is not valid for CUBEJS_DEFAULT_API_SCOPES. '
                              f'Must be a comma-separated list of: {", ".join(API_SCOPES)}.')
    return scopes


def _identifier(value: str | None, key: str) -> str | None:
    """Return ``value`` when it is a plain SQL identifier (it names a schema in SQL)."""
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
        raise ConfigError(f"{key} must be a plain identifier (letters, digits, _), got {value!r}")
    return value


def _jwt_keys(reader: _Reader, dev_mode: bool) -> tuple[str | None, str | None, tuple[str, ...]]:
    """Return (verification key text, JWK URL, algorithms) from CUBEJS_JWT_KEY,
    CUBEJS_API_SECRET, CUBEJS_JWK_URL and CUBEJS_JWT_ALGS.

    As in Cube, CUBEJS_JWT_KEY is the verification key when set, else CUBEJS_API_SECRET; it may
    be an HMAC secret, a PEM or a JWK (set). CUBEJS_JWK_URL, when set, supplies the keys instead.
    The algorithms default to HS256 for a secret and to what the key verifies otherwise; HMAC
    and public-key algorithms cannot be mixed (a public key must never serve as an HMAC secret),
    and every listed algorithm must fit the key.
    """
    from cubed.api.jwk import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, KeyFormatError, check_algorithms, \
        default_algorithms, load_keys

    key_name = "CUBEJS_JWT_KEY" if reader.str("CUBEJS_JWT_KEY") else "CUBEJS_API_SECRET"
    api_secret = reader.str(key_name)
    jwk_url = reader.str("CUBEJS_JWK_URL")
    if jwk_url is not None:
        jwk_url = jwk_url.strip()
        if not re.match(r"^https?://[^\s/]+", jwk_url):
            raise ConfigError(f'Value "{jwk_url}" is not valid for CUBEJS_JWK_URL. Must be an http(s) URL.')
    if not dev_mode and not api_secret and not jwk_url:
        raise ConfigError("CUBEJS_API_SECRET is required outside dev mode (set it, or CUBEJS_DEV_MODE=true).")
    listed = reader.list("CUBEJS_JWT_ALGS")
    for algorithm in listed:
        if algorithm not in JWT_ALGORITHMS:
            raise ConfigError(f'Value "{algorithm}" is not valid for CUBEJS_JWT_ALGS. '
                              f'Must be one of: {", ".join(JWT_ALGORITHMS)}.')
    hmac = [a for a in listed if a in HMAC_ALGORITHMS]
    public = [a for a in listed if a in ASYMMETRIC_ALGORITHMS]
    if hmac and public:
        raise ConfigError(f'Value "{public[0]}" is not valid for CUBEJS_JWT_ALGS. HMAC ({hmac[0]}) and '
                          "public-key algorithms cannot be mixed.")
    if jwk_url:
        if hmac:
            raise ConfigError(f'Value "{hmac[0]}" is not valid for CUBEJS_JWT_ALGS. The keys of '
                              "CUBEJS_JWK_URL verify public-key algorithms only.")
        return api_secret, jwk_url, tuple(listed) or ASYMMETRIC_ALGORITHMS
    if not api_secret:
        return None, None, tuple(listed) or ("HS256",)
    try:
        keys = load_keys(api_secret)
    except KeyFormatError as error:
        raise ConfigError(f"{key_name} is not valid: {error}.") from None
    if public and all(key.symmetric for key in keys):
        raise ConfigError(f'Value "{public[0]}" is not valid for CUBEJS_JWT_ALGS. It needs a public key '
                          "(CUBEJS_JWT_KEY as a PEM or JWK, or CUBEJS_JWK_URL).")
    try:
        check_algorithms(keys, listed or default_algorithms(keys))
    except KeyFormatError as error:
        raise ConfigError(f'Value "{",".join(listed)}" is not valid for CUBEJS_JWT_ALGS. The {key_name} {error}.') \
            from None
    return api_secret, None, tuple(listed) or default_algorithms(keys)


def _size(value: str) -> int:
    """Return bytes from ``CUBEJS_MAX_REQUEST_SIZE`` (``1048576``, ``512kb``, ``1.5mb``)."""
    match = re.match(r"^(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?$", value.strip().lower())
    size = int(float(match.group(1)) * {"b": 1, None: 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}[match.group(2)]) \
        if match else 0
    if size < 1:
        raise ConfigError(f'Value "{value}" is not valid for CUBEJS_MAX_REQUEST_SIZE. Must be a size like 1mb or 512kb.')
    return size


class _ConfigModule(types.ModuleType):
    """This module, callable: ``from cubed import config`` in a project's ``cube.py`` finds the
    module (the package attribute ``config`` is this submodule), and ``@config('hook')`` must
    mark hooks the way Cube's Python config does."""

    def __call__(self, name: str) -> Any:
        from cubed.hooks import config as mark_hook

        return mark_hook(name)


sys.modules[__name__].__class__ = _ConfigModule
