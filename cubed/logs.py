"""Log output for cubed: one line per event on stdout (journald), as text or as JSON.

Everything logs through ``twisted.logger``; this module only decides how events look and
which ones are written. Text lines read::

    2026-11-26T07:30:00.123Z INFO  cubed.api.app [3f2a9c] GET /cubejs-api/v1/load 200

(the ``[request id]`` part only when the event carries ``request_id``; a failure's traceback
follows on the next lines). With ``CUBED_LOG_FORMAT=json`` each event is one JSON object per
line with ``time``, ``level``, ``namespace``, ``request_id``, ``message``, ``exception`` and
``traceback`` for failures, plus the event's own JSON-serialisable fields.

Wiring under twistd: call :func:`install_for_twistd` at the end of the plugin's
``Options.postOptions``. It selects :func:`twistd_observer` as twistd's ``--logger`` unless the
operator chose ``--logger``, ``--logfile`` or ``--syslog`` on the command line, so twistd itself
starts the logging system with this observer through ``globalLogBeginner`` exactly once.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from constantly import NamedConstant
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogLevel,
    PredicateResult,
    eventAsText,
    formatEvent,
)
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from twisted.python.usage import Options
from zope.interface import implementer

from cubed.config import LOG_FORMATS, read_dotenv
from cubed.errors import ConfigError

#: Cube's level names (``CUBEJS_LOG_LEVEL``) mapped to Twisted's; Twisted has no ``trace``,
#: so it is the same as ``debug``.
LOG_LEVELS: Mapping[str, NamedConstant] = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

#: The dotted name twistd's ``--logger`` option is given (twistd resolves it with namedAny).
TWISTD_LOGGER = "cubed.logs.twistd_observer"

# Keys that the legacy twisted.python.log bridge adds to every event; they repeat what
# time/level/message already say (or hold non-JSON objects) and would clutter each line.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "failure", "why", "printed"})
_LEVELS = frozenset(LogLevel.iterconstants())
_RECORD_KEYS = ("time", "level", "namespace", "request_id", "message", "exception", "traceback")


def _timestamp(event: Mapping[str, Any]) -> str:
    """Return the event's time as ISO 8601 UTC with milliseconds (``...T07:30:00.123Z``)."""
    when = event.get("log_time")
    if not isinstance(when, (int, float)):
        when = time.time()
    seconds = int(when)
    millis = int(round((when - seconds) * 1000))
    if millis == 1000:
        seconds, millis = seconds + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _level_name(event: Mapping[str, Any]) -> str:
    """Return the event's level name (``info``), or ``-`` when it has none."""
    level = event.get("log_level")
    return level.name if level in _LEVELS else "-"


def _namespace(event: Mapping[str, Any]) -> str:
    """Return the event's namespace; legacy ``log.msg`` events get their system instead."""
    namespace = event.get("log_namespace") or "-"
    if namespace == "log_legacy" and event.get("log_system"):
        return str(event["log_system"])
    return str(namespace)


def _traceback(failure: Failure) -> str:
    """Return the failure's traceback text; never raises."""
    try:
        return failure.getTraceback()
    except Exception as error:  # a broken failure must not stop the log line
        return f"(traceback unavailable: {error!r})"


def format_text(event: Mapping[str, Any]) -> str | None:
    """Return one text line for ``event`` (with its traceback, if any), or None when the
    event has nothing to say."""
    text = eventAsText(event, includeTraceback=True, includeTimestamp=False, includeSystem=False)
    if not text:
        return None
    request_id = event.get("request_id")
    tag = f" [{request_id}]" if request_id is not None else ""
    return f"{_timestamp(event)} {_level_name(event).upper():<5} {_namespace(event)}{tag} {text}\n"


def _json_safe(value: object) -> bool:
    """Return whether ``value`` serialises to strict JSON (no NaN or infinity)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (str, int, type(None))):
        return True
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def format_json(event: Mapping[str, Any]) -> str:
    """Return ``event`` as one JSON object followed by a newline."""
    record: dict[str, Any] = {
        "time": _timestamp(event),
        "level": _level_name(event),
        "namespace": _namespace(event),
        "request_id": event.get("request_id"),
        "message": formatEvent(event),
    }
    if not _json_safe(record["request_id"]):
        record["request_id"] = str(record["request_id"])
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        exception_type = qual(failure.type) if failure.type is not None else "unknown"
        record["exception"] = f"{exception_type}: {failure.getErrorMessage()}"
        record["traceback"] = _traceback(failure)
    for key, value in event.items():
        if (
            not isinstance(key, str)
            or key.startswith("log_")
            or key in _RECORD_KEYS
            or key in _LEGACY_KEYS
            or not _json_safe(value)
        ):
            continue
        record[key] = value
    # ensure_ascii keeps every line valid whatever encoding stdout has under systemd.
    return json.dumps(record, ensure_ascii=True, allow_nan=False) + "\n"


@implementer(ILogFilterPredicate)
class _MinimumLevel:
    """Drop events below a level; keep events that carry no level at all, so that nothing
    unusual disappears silently (Twisted's LogLevelFilterPredicate drops those)."""

    def __init__(self, minimum: NamedConstant) -> None:
        self._minimum = minimum

    def __call__(self, event: Mapping[str, Any]) -> PredicateResult:
        """Return ``no`` for an event below the minimum level, ``maybe`` otherwise."""
        level = event.get("log_level")
        if level in _LEVELS and level < self._minimum:
            return PredicateResult.no
        return PredicateResult.maybe


def parse_level(level: str) -> NamedConstant:
    """Return the Twisted level for a ``CUBEJS_LOG_LEVEL`` value; raise ConfigError naming
    the variable for an unknown one."""
    try:
        return LOG_LEVELS[level.strip().lower()]
    except KeyError:
        raise ConfigError(
            f'Value "{level}" is not valid for CUBEJS_LOG_LEVEL. Must be one of: {", ".join(LOG_LEVELS)}.'
        ) from None


def make_log_observer(format: str, stream: IO[Any], level: str) -> ILogObserver:
    """Return an observer writing events of ``level`` and above to ``stream``, one line
    each, as ``text`` or ``json`` (``format``); raise ConfigError for a bad format or level."""
    if format not in LOG_FORMATS:
        raise ConfigError(
            f'Value "{format}" is not valid for CUBED_LOG_FORMAT. Must be one of: {", ".join(LOG_FORMATS)}.'
        )
    minimum = parse_level(level)
    def encodable_text(event: Any) -> str | None:
        # A lone surrogate from a request (valid as a JSON escape) would make the stream's
        # strict UTF-8 writer drop the whole line: escape it instead. (JSON lines are ASCII.)
        line = format_text(event)
        return line.encode("utf-8", "backslashreplace").decode("utf-8") if line else line

    writer = FileLogObserver(stream, format_json if format == "json" else encodable_text)
    return FilteringLogObserver(writer, [_MinimumLevel(minimum)])


def observer_from_environment(environ: Mapping[str, str], stream: IO[Any]) -> ILogObserver:
    """Return the observer configured by ``CUBED_LOG_FORMAT`` and ``CUBEJS_LOG_LEVEL`` in
    ``environ``, over the ``.env`` file of ``CUBED_PROJECT_DIR`` (default: the current
    directory), the same precedence cubed.config uses."""
    project_dir = Path(environ.get("CUBED_PROJECT_DIR") or ".")
    merged = {**read_dotenv(project_dir / ".env"), **environ}
    return make_log_observer(
        merged.get("CUBED_LOG_FORMAT", "text") or "text",
        stream,
        merged.get("CUBEJS_LOG_LEVEL", "info") or "info",
    )


def twistd_observer() -> ILogObserver:
    """Return the observer for twistd's ``--logger`` option, configured from the process
    environment, writing to the process's real stdout."""
    # twistd calls this factory before globalLogBeginner redirects sys.stdout into the log
    # system, so this is the real stdout; writing to the redirected one would loop.
    return observer_from_environment(os.environ, sys.stdout)


def install_for_twistd(options: Options) -> bool:
    """Make twistd log through cubed's observer; return whether it was selected.

    Call it at the end of the cubed plugin's ``Options.postOptions``. twistd parses the
    subcommand's options before its own ``postOptions`` and builds its AppLogger after both,
    so setting the parent's ``logger`` option here is exactly ``twistd --logger=...``. An
    explicit ``--logger``, ``--logfile`` (other than ``-``) or ``--syslog`` is left alone.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return False
    if parent.get("logger") is not None or parent.get("syslog"):
        return False
    if parent.get("logfile") not in (None, "", "-"):
        return False
    parent["logger"] = TWISTD_LOGGER
    return True


class RequestLogger:
    """A Logger bound to one request: every event it emits carries ``request_id``.

    The methods take a PEP 3101 format string and keyword fields, as twisted.logger.Logger's.
    """

    def __init__(self, logger: Logger, request_id: str, debug_enabled: bool = True) -> None:
        self._logger = logger
        self.request_id = request_id
        # Debug events of every request cost measurable CPU to build when nobody keeps them.
        self.debug_enabled = debug_enabled

    def _fields(self, fields: dict[str, object]) -> dict[str, object]:
        """Return ``fields`` with this request's id added (it wins over a passed one)."""
        fields["request_id"] = self.request_id
        return fields

    def debug(self, format: str | None = None, **fields: object) -> None:
        """Emit a debug event (unless debug logging is off); returns nothing."""
        if self.debug_enabled:
            self._logger.debug(format, **self._fields(fields))

    def info(self, format: str | None = None, **fields: object) -> None:
        """Emit an info event; returns nothing."""
        self._logger.info(format, **self._fields(fields))

    def warn(self, format: str | None = None, **fields: object) -> None:
        """Emit a warning event; returns nothing."""
        self._logger.warn(format, **self._fields(fields))

    def error(self, format: str | None = None, **fields: object) -> None:
        """Emit an error event; returns nothing."""
        self._logger.error(format, **self._fields(fields))

    def failure(
        self,
        format: str,
        failure: Failure | None = None,
        level: NamedConstant = LogLevel.error,
        **fields: object,
    ) -> None:
        """Emit ``failure`` (default: the exception being handled) with its traceback;
        returns nothing.

        The default level is ``error``, not Logger.failure's ``critical``: a failed request
        is the request's problem, not the process's.
        """
        if failure is None:
            failure = Failure()
        self._logger.failure(format, failure, level, **self._fields(fields))
