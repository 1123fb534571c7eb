"""cubed.logs: text and JSON lines, level filter, RequestLogger, and the twistd wiring."""
from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import TestCase
from zope.interface import implementer

import cubed
from cubed.errors import ConfigError
from cubed.logs import (
    TWISTD_LOGGER,
    RequestLogger,
    install_for_twistd,
    make_log_observer,
    observer_from_environment,
    twistd_observer,
)

PROJECT_ROOT = Path(cubed.__file__).resolve().parents[1]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Unserialisable:
    def __repr__(self) -> str:
        return "<Unserialisable>"


def emit(format: str, level: str = "info") -> tuple[io.StringIO, Logger]:
    """Return a stream and a Logger whose events are written to it in ``format``."""
    stream = io.StringIO()
    return stream, Logger(namespace="cubed.test", observer=make_log_observer(format, stream, level))


class TextFormatTests(TestCase):
    def test_line_has_time_level_namespace_request_id_and_message(self) -> None:
        stream, log = emit("text")
        log.info("GET {path} answered {code}", path="/v1/load", code=200, request_id="req-1")
        line = stream.getvalue()
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        stamp, rest = line.rstrip("\n").split(" ", 1)
        self.assertRegex(stamp, TIME)
        self.assertEqual(rest, "INFO  cubed.test [req-1] GET /v1/load answered 200")

    def test_no_brackets_without_request_id(self) -> None:
        stream, log = emit("text")
        log.warn("pool is {state}", state="down")
        self.assertRegex(stream.getvalue(), r"^\S+ WARN  cubed\.test pool is down\n$")

    def test_failure_is_rendered_with_its_traceback(self) -> None:
        stream, log = emit("text")
        try:
            raise ValueError("boom")
        except ValueError:
            log.failure("query {name} failed", name="q1", request_id="r9")
        text = stream.getvalue()
        first, rest = text.split("\n", 1)
        self.assertTrue(first.endswith(" CRITICAL cubed.test [r9] query q1 failed"), first)
        self.assertIn("Traceback (most recent call last):", rest)
        self.assertIn("builtins.ValueError: boom", rest)
        self.assertIn("test_failure_is_rendered_with_its_traceback", rest)

    def test_event_with_nothing_to_say_writes_nothing(self) -> None:
        stream, log = emit("text")
        log.info()
        self.assertEqual(stream.getvalue(), "")

    def test_bad_format_string_still_logs(self) -> None:
        stream, log = emit("text")
        log.info("missing {field}")
        self.assertIn("Unable to format event", stream.getvalue())

    def test_timestamp_is_utc_milliseconds(self) -> None:
        stream = io.StringIO()
        observer = make_log_observer("text", stream, "info")
        observer({"log_time": 0.9996, "log_level": LogLevel.info, "log_namespace": "n", "log_format": "x"})
        observer({"log_time": 86400.25, "log_level": LogLevel.info, "log_namespace": "n", "log_format": "y"})
        self.assertEqual(
            stream.getvalue().splitlines(),
            ["1970-01-01T00:00:01.000Z INFO  n x", "1970-01-02T00:00:00.250Z INFO  n y"],
        )


class JsonFormatTests(TestCase):
    def lines(self, stream: io.StringIO) -> list[dict[str, Any]]:
        text = stream.getvalue()
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()]

    def test_one_object_per_line_with_own_fields(self) -> None:
        stream, log = emit("json")
        log.info("loaded {rows} rows", rows=3, request_id="req-1", tags=["a", "b"], obj=Unserialisable())
        log.info("second")
        first, second = self.lines(stream)
        self.assertRegex(first.pop("time"), TIME)
        self.assertEqual(
            first,
            {
                "level": "info",
                "namespace": "cubed.test",
                "request_id": "req-1",
                "message": "loaded 3 rows",
                "rows": 3,
                "tags": ["a", "b"],
            },
        )
        self.assertIsNone(second["request_id"])
        self.assertEqual(second["message"], "second")

    def test_internal_and_non_json_fields_are_left_out(self) -> None:
        stream, log = emit("json")
        log.info("x", nan=float("nan"), nested={"ok": [1, {"k": object()}]}, fine={"a": 1})
        (record,) = self.lines(stream)
        self.assertEqual({key for key in record if key.startswith("log_")}, set())
        self.assertNotIn("nan", record)
        self.assertNotIn("nested", record)
        self.assertEqual(record["fine"], {"a": 1})

    def test_own_field_cannot_overwrite_the_record(self) -> None:
        stream, log = emit("json")
        log.info("real message", namespace="fake", time="fake", message="fake", traceback="fake")
        (record,) = self.lines(stream)
        self.assertEqual((record["namespace"], record["message"]), ("cubed.test", "real message"))
        self.assertNotIn("traceback", record)
        self.assertRegex(record["time"], TIME)

    def test_failure_is_serialised(self) -> None:
        stream, log = emit("json")
        try:
            {}["missing"]
        except KeyError:
            log.failure("lookup failed", request_id="r2")
        (record,) = self.lines(stream)
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["request_id"], "r2")
        self.assertEqual(record["message"], "lookup failed")
        self.assertEqual(record["exception"], "builtins.KeyError: 'missing'")
        self.assertIn("Traceback (most recent call last):", record["traceback"])
        self.assertIn("test_failure_is_serialised", record["traceback"])
        self.assertNotIn("Traceback", record["message"])

    def test_non_ascii_is_escaped(self) -> None:
        stream, log = emit("json")
        log.info("caf\u00e9 {city}", city="K\u00f6ln")
        self.assertTrue(stream.getvalue().isascii())
        self.assertEqual(self.lines(stream)[0]["city"], "K\u00f6ln")


class LevelTests(TestCase):
    def test_levels_filter_lower_events(self) -> None:
        stream, log = emit("json", level="warn")
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")
        log.critical("c")
        self.assertEqual([json.loads(line)["message"] for line in stream.getvalue().splitlines()], ["w", "e", "c"])

    def test_trace_and_debug_show_debug_events(self) -> None:
        for level in ("trace", "debug", "TRACE"):
            stream, log = emit("json", level=level)
            log.debug("d")
            self.assertEqual(len(stream.getvalue().splitlines()), 1, level)

    def test_error_level(self) -> None:
        stream, log = emit("json", level="error")
        log.warn("w")
        log.error("e")
        self.assertEqual([json.loads(line)["message"] for line in stream.getvalue().splitlines()], ["e"])

    def test_events_without_level_are_kept(self) -> None:
        stream = io.StringIO()
        make_log_observer("json", stream, "error")({"log_format": "no level", "log_namespace": "n"})
        self.assertEqual(json.loads(stream.getvalue())["level"], "-")

    def test_bad_settings_name_the_variable(self) -> None:
        error = self.assertRaises(ConfigError, make_log_observer, "text", io.StringIO(), "verbose")
        self.assertIn("CUBEJS_LOG_LEVEL", str(error))
        error = self.assertRaises(ConfigError, make_log_observer, "xml", io.StringIO(), "info")
        self.assertIn("CUBED_LOG_FORMAT", str(error))

    def test_observer_provides_the_interface(self) -> None:
        self.assertTrue(ILogObserver.providedBy(make_log_observer("text", io.StringIO(), "info")))


class RequestLoggerTests(TestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.log = RequestLogger(Logger(namespace="cubed.api", observer=self.events.append), "req-7")

    def test_every_method_binds_the_request_id(self) -> None:
        self.log.debug("d {n}", n=1)
        self.log.info("i {n}", n=2)
        self.log.warn("w {n}", n=3)
        self.log.error("e {n}", n=4, request_id="other")
        self.assertEqual([event["request_id"] for event in self.events], ["req-7"] * 4)
        self.assertEqual(
            [event["log_level"] for event in self.events],
            [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error],
        )
        self.assertEqual([event["n"] for event in self.events], [1, 2, 3, 4])
        self.assertEqual({event["log_namespace"] for event in self.events}, {"cubed.api"})

    def test_failure_defaults_to_the_exception_in_flight_at_error_level(self) -> None:
        try:
            raise RuntimeError("db down")
        except RuntimeError:
            self.log.failure("query failed")
        (event,) = self.events
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertEqual(event["request_id"], "req-7")
        self.assertTrue(event["log_failure"].check(RuntimeError))

    def test_request_id_reaches_both_formats(self) -> None:
        for format, expected in (("text", "[req-9] hello"), ("json", '"request_id": "req-9"')):
            stream = io.StringIO()
            observer = make_log_observer(format, stream, "info")
            log = RequestLogger(Logger(namespace="cubed.api", observer=observer), "req-9")
            log.info("hello")
            self.assertIn(expected, stream.getvalue())


class EnvironmentTests(TestCase):
    def test_dotenv_of_the_project_dir_under_the_environment(self) -> None:
        project = Path(self.mktemp())
        project.mkdir()
        (project / ".env").write_text("CUBED_LOG_FORMAT=json\nCUBEJS_LOG_LEVEL=error\n")
        stream = io.StringIO()
        log = Logger(namespace="n", observer=observer_from_environment({"CUBED_PROJECT_DIR": str(project)}, stream))
        log.warn("dropped")
        log.error("kept")
        self.assertEqual([json.loads(line)["message"] for line in stream.getvalue().splitlines()], ["kept"])

        stream = io.StringIO()
        environ = {"CUBED_PROJECT_DIR": str(project), "CUBED_LOG_FORMAT": "text", "CUBEJS_LOG_LEVEL": "warn"}
        Logger(namespace="n", observer=observer_from_environment(environ, stream)).warn("shown")
        self.assertRegex(stream.getvalue(), r" WARN  n shown\n$")

    def test_defaults_are_text_at_info(self) -> None:
        stream = io.StringIO()
        log = Logger(namespace="n", observer=observer_from_environment({"CUBED_PROJECT_DIR": self.mktemp()}, stream))
        log.debug("hidden")
        log.info("shown")
        self.assertRegex(stream.getvalue(), r"^\S+ INFO  n shown\n$")


class FakeOptions(usage.Options):
    """Stands in for cubed's plugin Options, which call install_for_twistd the same way."""

    def postOptions(self) -> None:
        install_for_twistd(self)


@implementer(IServiceMaker)
class FakeMaker:
    tapname = "fake"
    description = "a plugin for the tests"
    options = FakeOptions

    def makeService(self, options: usage.Options) -> Any:
        raise NotImplementedError("only options are parsed in these tests")


def parse_twistd(*argv: str) -> ServerOptions:
    """Return twistd's own options parsed from ``argv`` with the fake plugin available."""
    config = ServerOptions()
    config._getPlugins = lambda interface: [FakeMaker()]
    config.parseOptions(list(argv))
    return config


class InstallForTwistdTests(TestCase):
    def test_selects_cubed_observer_by_default(self) -> None:
        config = parse_twistd("-n", "--pidfile=", "fake")
        self.assertIs(config["logger"], twistd_observer)
        self.assertEqual(TWISTD_LOGGER, f"{twistd_observer.__module__}.{twistd_observer.__name__}")

    def test_logfile_dash_still_means_stdout(self) -> None:
        self.assertIs(parse_twistd("-n", "--logfile=-", "fake")["logger"], twistd_observer)

    def test_operator_choices_win(self) -> None:
        self.assertIsNone(parse_twistd("-n", "--logfile=/tmp/x.log", "fake")["logger"])
        self.assertIsNone(parse_twistd("-n", "--syslog", "fake")["logger"])
        chosen = parse_twistd("-n", "--logger=twisted.logger.textFileLogObserver", "fake")["logger"]
        self.assertEqual(chosen.__name__, "textFileLogObserver")

    def test_options_without_parent_are_left_alone(self) -> None:
        self.assertFalse(install_for_twistd(FakeOptions()))

    def test_twistd_observer_reads_the_environment(self) -> None:
        self.assertTrue(ILogObserver.providedBy(twistd_observer()))


# A real twistd run: twistd's AppLogger starts logging with whatever --logger resolved to.
TWISTD_SCRIPT = """
from twisted.application.service import IServiceMaker, Service
from twisted.internet import reactor
from twisted.logger import Logger
from twisted.python import usage
from twisted.scripts import twistd
from zope.interface import implementer
from cubed.logs import RequestLogger, install_for_twistd

class Options(usage.Options):
    def postOptions(self):
        install_for_twistd(self)

class Demo(Service):
    def startService(self):
        log = RequestLogger(Logger(namespace="cubed.demo"), "req-42")
        log.info("hello {who}", who="world")
        log.debug("not shown at info")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("division failed")
        print("printed to stdout")
        reactor.callLater(0, reactor.stop)

@implementer(IServiceMaker)
class Maker:
    tapname, description, options = "demo", "", Options
    def makeService(self, options):
        return Demo()

config = twistd.ServerOptions()
config._getPlugins = lambda interface: [Maker()]
config.parseOptions(["-n", "--pidfile=", "demo"])
twistd.runApp(config)
"""


class TwistdRunTests(TestCase):
    def run_twistd(self, log_format: str) -> Any:
        environ = {
            key: value
            for key, value in os.environ.items()
            if key not in ("CUBED_LOG_FORMAT", "CUBEJS_LOG_LEVEL", "CUBED_PROJECT_DIR")
        }
        environ.update(
            PYTHONPATH=str(PROJECT_ROOT),
            CUBED_LOG_FORMAT=log_format,
            CUBEJS_LOG_LEVEL="info",
            CUBED_PROJECT_DIR=self.mktemp(),
        )
        return getProcessOutputAndValue(sys.executable, ["-c", TWISTD_SCRIPT], env=environ, path=str(PROJECT_ROOT))

    async def test_json_lines_under_twistd(self) -> None:
        out, err, code = await self.run_twistd("json")
        self.assertEqual(code, 0, err.decode())
        records = [json.loads(line) for line in out.decode().splitlines()]
        messages = [record["message"] for record in records]
        self.assertTrue(any(message.startswith("twistd ") and "starting up" in message for message in messages))
        hello = next(record for record in records if record["message"] == "hello world")
        self.assertEqual((hello["request_id"], hello["namespace"], hello["who"]), ("req-42", "cubed.demo", "world"))
        failed = next(record for record in records if record["message"] == "division failed")
        self.assertEqual(failed["request_id"], "req-42")
        self.assertIn("ZeroDivisionError", failed["traceback"])
        self.assertIn("printed to stdout", messages)
        self.assertNotIn("not shown at info", messages)
        self.assertIn("Server Shut Down.", messages)

    async def test_text_lines_under_twistd(self) -> None:
        out, err, code = await self.run_twistd("text")
        self.assertEqual(code, 0, err.decode())
        text = out.decode()
        self.assertRegex(text, r"(?m)^\S+ INFO  cubed\.demo \[req-42\] hello world$")
        self.assertRegex(text, r"(?m)^\S+ ERROR cubed\.demo \[req-42\] division failed$")
        self.assertIn("ZeroDivisionError", text)
        self.assertNotIn("not shown at info", text)
