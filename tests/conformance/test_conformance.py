"""Replay the recorded Cube answers (``cases/*.json``) against a cubed server on PostgreSQL.

Each case is one test method, ``test_<case id>``. The comparison is compare.py's own
(``compare_answer``, and ``check_accept`` for cases with a ``cube_bug``), imported from its
path; this module only sends each request through the reactor with treq and judges the answer
as compare.py's ``main`` does.

The shop database is loaded once per process (``SHARED_DATABASE``) and dropped in the cleanup
of the last case of the class to run, or at interpreter exit when only some cases ran (a
subset, or ``trial -j``). The server is started per test: trial wants a clean reactor (no
listening port, no open database connection) after every test, and building one costs about
0.1 s.
"""
from __future__ import annotations

import atexit
import importlib.util
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import treq
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial import unittest

from cubed.config import DataSourceSettings, Settings, load_settings
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import drop_database_now, require_postgres
from tests.support.shopdata import shop_database

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
MODEL_DIR = HERE / "model"
REQUEST_TIMEOUT = 30.0


def _load_compare() -> ModuleType:
    """Import compare.py from its path (a stand-alone script, not a package module)."""
    spec = importlib.util.spec_from_file_location("cubed_conformance_compare", HERE / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _load_compare()
CASES: list[dict[str, Any]] = compare.load_cases([str(CASES_DIR)])
CASES_BY_ID: dict[str, dict[str, Any]] = {case["id"]: case for case in CASES}

#: Cases that need features of later issues. They still run: skipped with the reason while
#: they fail, and the test FAILS once one passes, so that its entry gets removed here.
KNOWN_FAILING: dict[str, str] = {}

#: Cases that are not replayed at all, with the reason.
NOT_REPLAYED: dict[str, str] = {}


def _test_name(case_id: str) -> str:
    """Return the test method name of a case: ``test_<id>`` with non-identifier characters as ``_``."""
    return "test_" + "".join(c if c.isalnum() or c == "_" else "_" for c in case_id)


# -- the shared database ------------------------------------------------------------------------
class _CleanupCollector:
    """Stands in for a test case towards shop_database(): keeps the cleanups it registers."""

    def __init__(self) -> None:
        self.cleanups: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def addCleanup(self, function: Callable[..., Any], *args: Any) -> None:
        """Remember a cleanup; returns nothing."""
        self.cleanups.append((function, args))


class SharedShopDatabase:
    """One shop database for the tests named in ``users``: loaded at first use, dropped in the
    cleanup of the last of them to run, or at interpreter exit when some of them never run."""

    def __init__(self, users: set[str]) -> None:
        self.users = frozenset(users)
        self.finished: set[str] = set()
        self.settings: DataSourceSettings | None = None
        self._waiting: list[Deferred[DataSourceSettings]] | None = None
        self._collector = _CleanupCollector()

    def acquire(self, testcase: unittest.TestCase) -> Deferred[DataSourceSettings]:
        """Return a Deferred firing with the database's settings; ``testcase``'s cleanup
        releases it (register it before anything that uses the database)."""
        testcase.addCleanup(self._release, testcase.id().rsplit(".", 1)[-1])
        if self.settings is not None:
            return succeed(self.settings)
        waiter: Deferred[DataSourceSettings] = Deferred()
        if self._waiting is not None:
            self._waiting.append(waiter)
            return waiter
        self._waiting = [waiter]

        def loaded(settings: DataSourceSettings) -> None:
            self.settings = settings
            atexit.register(drop_database_now, str(settings.database))
            self._wake(lambda d: d.callback(settings))

        def failed(failure: Failure) -> Deferred[None]:
            # a database created but not loaded is dropped at once
            return self._teardown().addBoth(lambda _: self._wake(lambda d: d.errback(failure)))

        shop_database(self._collector).addCallbacks(loaded, failed)  # type: ignore[arg-type]
        return waiter

    def _wake(self, fire: Callable[[Deferred[DataSourceSettings]], Any]) -> None:
        waiters, self._waiting = self._waiting or [], None
        for waiter in waiters:
            fire(waiter)

    @inlineCallbacks
    def _release(self, name: str) -> Any:
        self.finished.add(name)
        if self.settings is None or not self.users <= self.finished:
            return
        self.settings = None
        atexit.unregister(drop_database_now)
        yield self._teardown()

    @inlineCallbacks
    def _teardown(self) -> Any:
        """Run the cleanups shop_database() registered (drop the database)."""
        cleanups, self._collector.cleanups = self._collector.cleanups, []
        for function, args in reversed(cleanups):
            yield function(*args)


# -- one request, through the reactor ---------------------------------------------------------
def server_settings(database: DataSourceSettings) -> Settings:
    """Return the Settings of a production-mode server on ``database`` serving the conformance model."""
    environ = {
        "CUBEJS_DB_TYPE": "postgres",
        "CUBEJS_DB_HOST": database.host or "127.0.0.1",
        "CUBEJS_DB_PORT": str(database.port or 5432),
        "CUBEJS_DB_NAME": str(database.database),
        "CUBEJS_DB_USER": database.user or "postgres",
        "CUBEJS_API_SECRET": TEST_SECRET,
        "CUBEJS_SCHEMA_PATH": str(MODEL_DIR),
        # As the recording's Cube was configured: run-scheduled-refresh needs the jobs scope
        # (sql is in cubed's defaults, it was not scoped in Cube 0.32).
        "CUBEJS_DEFAULT_API_SCOPES": "graphql,meta,data,sql,jobs",
    }
    if database.password:
        environ["CUBEJS_DB_PASS"] = database.password
    return load_settings(environ, str(HERE))


async def perform(base_url: str, request: dict[str, Any]) -> Any:
    """Send a case's request as compare.py's ``perform`` does (auth kinds, ``x-request-id:
    <uuid>-span-N``, re-sending on Continue wait for up to its limit) but with treq; return a
    ``compare.Response``."""
    method, target, headers, body = compare.build_request(request, TEST_SECRET)
    has_request_id = any(key.lower() == "x-request-id" for key in headers)
    request_id = str(uuid.uuid4())
    started = time.monotonic()
    attempts: list[tuple[int, float, str]] = []
    first: tuple[int, bytes, float] | None = None
    span = 0
    while True:
        span += 1
        sent = dict(headers)
        if not has_request_id:
            sent["x-request-id"] = f"{request_id}-span-{span}"
        attempt_started = time.monotonic()
        response = await treq.request(method, base_url + target, headers=sent, data=body,
                                      persistent=False, timeout=REQUEST_TIMEOUT)
        raw = await response.content()
        took = time.monotonic() - attempt_started
        attempts.append((response.code, took, raw[:60].decode("utf-8", "replace")))
        if first is None:
            first = (response.code, raw, took)
        if (compare.is_continue_wait(response.code, raw)
                and time.monotonic() - started < compare.CONTINUE_WAIT_LIMIT_S):
            continue
        content_type = (response.headers.getRawHeaders("content-type") or [""])[0]
        return compare.Response(response.code, content_type, raw, attempts, time.monotonic() - started, first)


def judge(case: dict[str, Any], response: Any) -> list[str]:
    """Return the errors of an answer, as compare.py's ``main`` decides them: the recorded
    answer, or for a ``cube_bug`` case its ``accept`` rule instead."""
    errors, _warnings = compare.compare_answer(case, case["expect"]["status"], case["expect"].get("body"), response)
    if errors and case.get("cube_bug"):
        accept_errors = compare.check_accept(case, response, CASES_BY_ID)
        if not accept_errors:
            return []
        errors = errors[:2] + ["and not the corrected behaviour: " + "; ".join(accept_errors[:2])]
    return errors


# -- the tests ------------------------------------------------------------------------------------
REPLAYED = [case for case in CASES if case["id"] not in NOT_REPLAYED]
SHARED_DATABASE = SharedShopDatabase({_test_name(case["id"]) for case in REPLAYED})


class ConformanceTests(unittest.TestCase):
    """One test per recorded case; the methods are added below from ``cases/*.json``."""

    timeout = 120

    def setUp(self) -> None:
        """Skip (or fail under CUBED_REQUIRE_SERVICES=1) without PostgreSQL."""
        require_postgres()

    async def replay(self, case: dict[str, Any]) -> None:
        """Replay ``case`` against a fresh server on the shared database and check the answer."""
        database = await SHARED_DATABASE.acquire(self)
        running: RunningServer = await start_server(self, server_settings(database))
        response = await perform(running.url, case["request"])
        errors = judge(case, response)
        reason = KNOWN_FAILING.get(case["id"])
        if reason is not None:
            if not errors:
                self.fail(f"{case['id']} passes now but is listed in KNOWN_FAILING ({reason}): remove it from the table")
            raise unittest.SkipTest(f"{reason}; fails with: {' | '.join(errors)[:300]}")
        if errors:
            got = response.text if len(response.text) <= 400 else response.text[:400] + "..."
            self.fail(f"{case['id']} ({case.get('title', '')}):\n  " + "\n  ".join(errors) + f"\n  got {response.status}: {got}")


    async def replay_protocol(self, case: dict[str, Any]) -> None:
        """Run a protocol case (continue_wait.json: timing, then the data after polling) with
        compare.py's own blocking client, in a thread while the reactor serves."""
        database = await SHARED_DATABASE.acquire(self)
        running: RunningServer = await start_server(self, server_settings(database))
        errors, _notes = await deferToThread(compare.run_continue_wait, case, running.url, TEST_SECRET, 90.0)
        if errors:
            self.fail(f"{case['id']} ({case.get('title', '')}):\n  " + "\n  ".join(errors))


def _replay_method(case: dict[str, Any]) -> Callable[[ConformanceTests], Deferred[None]]:
    def test(self: ConformanceTests) -> Deferred[None]:
        if "protocol" in case:
            return Deferred.fromCoroutine(self.replay_protocol(case))
        return Deferred.fromCoroutine(self.replay(case))

    test.__name__ = _test_name(case["id"])
    test.__doc__ = f"{case['id']}: {case.get('title', '')}"
    return test


def _skipped_method(case: dict[str, Any], reason: str) -> Callable[[ConformanceTests], None]:
    def test(self: ConformanceTests) -> None:
        raise unittest.SkipTest(reason)

    test.__name__ = _test_name(case["id"])
    test.__doc__ = f"{case['id']}: {case.get('title', '')} (not replayed)"
    return test


for _case in CASES:
    _method = (_skipped_method(_case, NOT_REPLAYED[_case["id"]]) if _case["id"] in NOT_REPLAYED
               else _replay_method(_case))
    setattr(ConformanceTests, _method.__name__, _method)
del _case, _method


class CaseTableTests(unittest.TestCase):
    """The tables above name real cases (a renamed case must not leave a dead entry)."""

    def test_tables_name_existing_cases(self) -> None:
        """Every KNOWN_FAILING and NOT_REPLAYED id is a case in ``cases/``."""
        self.assertEqual(set(KNOWN_FAILING) - set(CASES_BY_ID), set())
        self.assertEqual(set(NOT_REPLAYED) - set(CASES_BY_ID), set())

    def test_every_case_has_a_test(self) -> None:
        """Each case file gives exactly one test method, named after its id."""
        names = {_test_name(case["id"]) for case in CASES}
        self.assertEqual(len(names), len(list(CASES_DIR.glob("*.json"))))
        self.assertTrue(all(callable(getattr(ConformanceTests, name, None)) for name in names))
