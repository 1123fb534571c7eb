"""What the client compatibility tests share: installing the clients, running them, a live cubed
on PostgreSQL, direct HTTP answers to compare with, and cubed's request log.

The clients come from the registries at test set-up, pinned by files committed here:

- ``@cubejs-client/core`` twice, as the npm aliases ``core1`` (newest 1.x) and ``core032``
  (0.32.x), pinned by package-lock.json; ``npm ci`` into tests/clients/node_modules, redone only
  when package.json or package-lock.json change (their hash is kept in node_modules).
- ``cube-http-client`` (PyPI) pinned with its dependencies by requirements.txt; ``pip install
  --target`` into tests/clients/python_packages/<hash of requirements.txt and the Python
  version>, outside the project's venv; the client runs in a child process with that
  directory on its PYTHONPATH.

Without node/npm, or when the registry cannot be reached, the tests are skipped with the
reason - and fail under ``CUBED_REQUIRE_SERVICES=1``. One installer at a time (a file lock), so
trial's parallel workers share one install.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import treq
from twisted.internet import utils
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from cubed.config import DataSourceSettings, Settings, load_settings
from cubed.logs import format_text
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import drop_database_now, require_postgres, service_absent
from tests.support.shopdata import shop_database

HERE = Path(__file__).resolve().parent
CONFORMANCE = HERE.parent / "conformance"
CONFORMANCE_MODEL = CONFORMANCE / "model"
CASES_DIR = CONFORMANCE / "cases"
NODE_MODULES = HERE / "node_modules"
NODE_STAMP = NODE_MODULES / ".cubed-installed"
PYTHON_PACKAGES = HERE / "python_packages"
BASE = "/cubejs-api/v1"
INSTALL_TIMEOUT = 600
CLIENT_TIMEOUT = 240
JS_CLIENTS = ("core1", "core032")


# -- the pinned versions ------------------------------------------------------------------------
def pinned_js_versions() -> dict[str, str]:
    """Return ``{alias: version}`` of the JS clients as package-lock.json pins them."""
    lock = json.loads((HERE / "package-lock.json").read_text())
    return {alias: str(lock["packages"][f"node_modules/{alias}"]["version"]) for alias in JS_CLIENTS}


def pinned_python_version() -> str:
    """Return the version of cube-http-client that requirements.txt pins."""
    for line in (HERE / "requirements.txt").read_text().splitlines():
        if line.strip().startswith("cube-http-client=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError("requirements.txt pins no cube-http-client")


# -- installing ---------------------------------------------------------------------------------
class _InstallLock:
    """An exclusive lock across processes (trial -j workers) for the installs."""

    def __enter__(self) -> None:
        self.file = open(Path(tempfile.gettempdir()) / "cubed-client-compat-install.lock", "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def _digest(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part)
        sha.update(b"\0")
    return sha.hexdigest()


def _reason(done: subprocess.CompletedProcess[str]) -> str:
    """Return the gist of a failed npm/pip run: its first error lines, without stack frames and
    the pointer to npm's log file."""
    lines = []
    for line in (done.stderr or done.stdout or "").splitlines():
        text = line.strip()
        for prefix in ("npm error", "npm ERR!", "ERROR:"):
            if text.startswith(prefix):
                text = text[len(prefix):].strip()
        if text and not text.startswith(("at ", "A complete log", "WARNING:", "{", "}")) and "Location 'file:" not in text:
            lines.append(text)
    return "; ".join(lines[:3])[:400] or f"exit status {done.returncode}"


def _node_major(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def install_js_clients() -> dict[str, str]:
    """Install the JS clients (``npm ci``) unless the install matches package-lock.json; return
    ``{alias: installed version}``. Blocking. Raises SkipTest/ServiceMissing when node (20 or
    newer: @cubejs-client/core 1.x needs it) or npm is missing or the install fails."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise service_absent("node and npm are needed for the JS client tests (apt-get install nodejs npm)")
    if _node_major(node) < 20:
        raise service_absent("node 20 or newer is needed for @cubejs-client/core 1.x")
    wanted = _digest((HERE / "package.json").read_bytes(), (HERE / "package-lock.json").read_bytes())
    with _InstallLock():
        if not (NODE_STAMP.exists() and NODE_STAMP.read_text().strip() == wanted):
            try:
                done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                                      capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise service_absent(f"npm ci in tests/clients took over {INSTALL_TIMEOUT} s") from None
            if done.returncode != 0:
                raise service_absent(f"npm ci in tests/clients failed (is the npm registry reachable?): {_reason(done)}")
            NODE_STAMP.write_text(wanted + "\n")
    return {alias: str(json.loads((NODE_MODULES / alias / "package.json").read_text())["version"])
            for alias in JS_CLIENTS}


def python_client_path() -> Path:
    """Return the directory the pinned Python client is (or will be) installed in."""
    key = _digest((HERE / "requirements.txt").read_bytes(), sys.version.encode(), platform.machine().encode())
    return PYTHON_PACKAGES / key[:16]


def install_python_client() -> Path:
    """Install requirements.txt with ``pip install --target`` unless done; return the directory.
    Blocking. Raises SkipTest/ServiceMissing when the install fails."""
    target = python_client_path()
    with _InstallLock():
        if not (target / ".complete").exists():
            PYTHON_PACKAGES.mkdir(exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix="staging-", dir=PYTHON_PACKAGES))
            try:
                try:
                    done = subprocess.run(
                        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                         "--quiet", "--target", str(staging), "-r", str(HERE / "requirements.txt")],
                        capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
                except subprocess.TimeoutExpired:
                    raise service_absent(f"pip install of cube-http-client took over {INSTALL_TIMEOUT} s") from None
                if done.returncode != 0:
                    raise service_absent(f"pip install of cube-http-client failed (is PyPI reachable?): {_reason(done)}")
                (staging / ".complete").write_text("\n")
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


# -- running the clients --------------------------------------------------------------------------
async def _run_child(executable: str, script: str, job: Mapping[str, Any], testcase: unittest.TestCase,
                     env: Mapping[str, str]) -> list[dict[str, Any]]:
    job_file = Path(testcase.mktemp() + ".json").resolve()
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job))
    out, err, code = await utils.getProcessOutputAndValue(executable, [script, str(job_file)], env=dict(env),
                                                          path=str(HERE))
    lines = out.decode("utf-8", "replace").strip().splitlines()
    if code != 0 or not lines:
        raise AssertionError(f"{Path(script).name} failed (exit {code}): {err.decode('utf-8', 'replace')[-3000:]}")
    return list(json.loads(lines[-1])["results"])


async def run_js(testcase: unittest.TestCase, server: RunningServer, tasks: list[dict[str, Any]],
                 token: str | None = None) -> list[dict[str, Any]]:
    """Run ``tasks`` with run.mjs against ``server`` (with a valid token unless ``token``);
    return one ``{"ok": ...}`` or ``{"error": ...}`` per task."""
    node = shutil.which("node")
    assert node is not None
    job = {"apiUrl": server.url + BASE, "token": token or server.token(), "tasks": tasks}
    return await _run_child(node, str(HERE / "run.mjs"), job, testcase, os.environ)


async def run_python_client(testcase: unittest.TestCase, server: RunningServer | None,
                            tasks: list[dict[str, Any]], token: str | None = None) -> list[dict[str, Any]]:
    """Run ``tasks`` with py_client.py (the pinned cube-http-client) against ``server`` (None:
    tasks that need no server), with a valid token unless ``token``."""
    environ = dict(os.environ, PYTHONPATH=str(python_client_path()), PYTHONNOUSERSITE="1")
    url = server.url + "/cubejs-api" if server is not None else "http://127.0.0.1:9/cubejs-api"
    token = token or (server.token() if server is not None else "unused")
    job = {"url": url, "token": token, "tasks": tasks}
    return await _run_child(sys.executable, str(HERE / "py_client.py"), job, testcase, environ)


def ok(result: dict[str, Any]) -> Any:
    """Return a task's value, failing the test with the client's error when it failed."""
    if "error" in result:
        raise unittest.FailTest(f"the client failed: {json.dumps(result)[:3000]}")
    return result["ok"]


# -- a live cubed ---------------------------------------------------------------------------------
def server_settings(database: DataSourceSettings, model: Path = CONFORMANCE_MODEL, **environ: str) -> Settings:
    """Return the Settings of a production-mode cubed on ``database`` serving ``model``."""
    values = {
        "CUBEJS_DB_TYPE": "postgres",
        "CUBEJS_DB_HOST": database.host or "127.0.0.1",
        "CUBEJS_DB_PORT": str(database.port or 5432),
        "CUBEJS_DB_NAME": str(database.database),
        "CUBEJS_DB_USER": database.user or "postgres",
        "CUBEJS_API_SECRET": TEST_SECRET,
        "CUBEJS_SCHEMA_PATH": str(model),
    }
    if database.password:
        values["CUBEJS_DB_PASS"] = database.password
    values.update(environ)
    return load_settings(values, str(model.parent))


class _Cleanups:
    """Stands in for a test case towards shop_database(): keeps the cleanups it registers."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def addCleanup(self, function: Any, *args: Any) -> None:
        """Remember a cleanup (run at interpreter exit instead)."""
        self.calls.append((function, args))


_shared: dict[str, Any] = {}


def shared_database() -> Deferred[DataSourceSettings]:
    """Return a Deferred firing with the settings of the shop database the tests of this
    package share in one process: loaded at first use, dropped at interpreter exit."""
    if "settings" in _shared:
        return succeed(_shared["settings"])

    def loaded(settings: DataSourceSettings) -> DataSourceSettings:
        _shared["settings"] = settings
        atexit.register(drop_database_now, str(settings.database))
        return settings

    return shop_database(_Cleanups()).addCallback(loaded)  # type: ignore[arg-type]


async def live_server(testcase: unittest.TestCase, **environ: str) -> RunningServer:
    """Start cubed on the shared shop database, serving the conformance model."""
    require_postgres()
    database = await shared_database()
    return await start_server(testcase, server_settings(database, **environ))


SLOW_MODEL = """\
# A cube whose every query sleeps 3 s in PostgreSQL: longer than CUBEJS_CONTINUE_WAIT_TIMEOUT.
cubes:
  - name: SlowOrders
    sql: "SELECT o.* FROM public.orders o WHERE (SELECT pg_sleep(3)::text) = ''"
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
      - name: status
        sql: status
        type: string
"""


async def slow_server(testcase: unittest.TestCase) -> RunningServer:
    """Start cubed on the shared shop database serving only SLOW_MODEL, answering Continue wait
    after 1 s (``CUBEJS_CONTINUE_WAIT_TIMEOUT=1``)."""
    require_postgres()
    model = Path(testcase.mktemp()).resolve() / "model"
    model.mkdir(parents=True)
    (model / "slow_orders.yml").write_text(SLOW_MODEL)
    database = await shared_database()
    return await start_server(testcase, server_settings(database, model, CUBEJS_CONTINUE_WAIT_TIMEOUT="1"))


#: The rows of SLOW_QUERY.
SLOW_QUERY = {"measures": ["SlowOrders.count"], "dimensions": ["SlowOrders.status"],
              "order": {"SlowOrders.status": "asc"}}
SLOW_ROWS = [
    {"SlowOrders.status": "completed", "SlowOrders.count": "1489"},
    {"SlowOrders.status": "processing", "SlowOrders.count": "596"},
    {"SlowOrders.status": "shipped", "SlowOrders.count": "915"},
]


# -- direct HTTP ----------------------------------------------------------------------------------
@dataclass
class Answer:
    """A direct HTTP answer."""

    status: int
    body: Any


async def http(server: RunningServer, method: str, path: str, params: Mapping[str, Any] | None = None,
               body: Any = None) -> Answer:
    """Send one request to ``server`` (``Authorization: <token>``); GET parameters that are not
    strings are JSON-encoded, as the clients do."""
    headers = {"Authorization": server.token()}
    query = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}
    kwargs: dict[str, Any] = {"headers": headers, "params": query, "persistent": False, "timeout": 60}
    if body is not None:
        kwargs["json"] = body
    response = await treq.request(method, server.url + BASE + path, **kwargs)
    raw = await response.content()
    return Answer(response.code, json.loads(raw))


# -- cubed's log --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedRequest:
    """One request line of cubed's log."""

    method: str
    path: str
    status: int
    request_id: str
    line: str


class RequestLog:
    """Collects cubed's request log lines (``{method} {path} {status} {duration}ms`` events of
    the cubed.api namespaces, each carrying ``request_id``) while a test runs."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("cubed.api") and "request_id" in event \
                and str(event.get("log_format", "")).startswith("{method} {path} {status}"):
            self.events.append(dict(event))

    def requests(self, path_suffix: str = "") -> list[LoggedRequest]:
        """Return the logged requests whose path ends with ``path_suffix``, in order."""
        return [LoggedRequest(str(e["method"]), str(e["path"]), int(e["status"]), str(e["request_id"]),
                              format_text(e) or "")
                for e in self.events if str(e["path"]).endswith(path_suffix)]


# -- the conformance cases ------------------------------------------------------------------------
def load_cases() -> list[dict[str, Any]]:
    """Return the conformance cases (tests/conformance/cases/*.json), sorted by file name."""
    return [json.loads(path.read_text()) for path in sorted(CASES_DIR.glob("*.json"))]


def case_query(case: dict[str, Any]) -> Any:
    """Return the query a case sent."""
    request = case["request"]
    return (request.get("body") or request.get("params") or {})["query"]


def case_kind(case: dict[str, Any]) -> str:
    """Return the kind of a /v1/load case: compact, blending, compare_date_range, time or regular."""
    tags = set(case.get("tags", ()))
    for kind in ("compact", "blending", "compare_date_range", "time"):
        if kind in tags:
            return kind
    return "regular"


def _successful_load(case: dict[str, Any]) -> bool:
    request = case.get("request", {})
    return (request.get("path", "").endswith("/v1/load") and case.get("expect", {}).get("status") == 200
            and not case.get("cube_bug") and not case.get("clock_dependent")
            and "continue_wait" not in case.get("tags", ())
            and not isinstance(case_query(case), str))


#: The recorded successful /v1/load exchanges (no Cube bug, not clock dependent, not the
#: Continue-wait description) - the answers the clients read from the real Cube.
RESULTSET_CASES = [case for case in load_cases() if _successful_load(case)]


def envelope(body: dict[str, Any]) -> dict[str, Any]:
    """Return a /v1/load answer as a client that sent queryType=multi receives it: a single
    recorded answer wrapped in the envelope of a regular query (run.mjs does the same)."""
    if body.get("queryType") is not None and isinstance(body.get("results"), list):
        return body
    return {"queryType": "regularQuery", "results": [body],
            "pivotQuery": {**body.get("query", {}), "queryType": "regularQuery"},
            "slowQuery": bool(body.get("slowQuery"))}


def sorted_rows(rows: list[Any]) -> list[str]:
    """Return ``rows`` as a sorted list of canonical JSON texts (a multiset)."""
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def compact_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Return compact ``{members, dataset}`` data as row objects."""
    return [dict(zip(data["members"], values)) for values in data["dataset"]]
