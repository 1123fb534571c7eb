"""The official Cube client, ``@cubejs-client/core`` (npm), against cubed on PostgreSQL.

The test's set-up installs the client from the npm registry into tests/orchestrator/js
(``npm install --no-audit --no-fund``, versions pinned by package-lock.json; node_modules is
not committed), once per checkout. Without node/npm, or when the install fails, the tests are
skipped with the reason - or fail under ``CUBED_REQUIRE_SERVICES=1``.

``js/load.mjs`` loads a query the way a front end does: ``cube(token, {apiUrl}).load(query)``.
The client repeats the request by itself while cubed answers Continue wait (each one reaches
its progressCallback), then gets the rows.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import utils
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.orchestrator.test_orchestrator_pg import (
    BASE, cube, probe_runs, probed, server_environment, settings_of, setup_database, token, write_model,
)
from tests.support.server import start_server
from tests.support.services import require_postgres, service_absent

JS_DIR = Path(__file__).resolve().parent / "js"
CLIENT_PACKAGE = JS_DIR / "node_modules" / "@cubejs-client" / "core" / "package.json"
INSTALL_TIMEOUT = 300


def install_client() -> str:
    """Install @cubejs-client/core under js/ unless it is there (blocking; one installer at a
    time across processes); return its version. Raises SkipTest/ServiceMissing when node or
    npm is missing or the install fails."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise service_absent("node and npm are needed for the @cubejs-client/core tests (apt-get install nodejs npm)")
    lock_path = Path(tempfile.gettempdir()) / "cubed-js-client-install.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not CLIENT_PACKAGE.exists():
            try:
                done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIR,
                                      capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise service_absent(f"npm install of @cubejs-client/core took over {INSTALL_TIMEOUT} s") from None
            if done.returncode != 0 or not CLIENT_PACKAGE.exists():
                reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
                raise service_absent(f"npm install of @cubejs-client/core failed: {reason[0]}")
    return str(json.loads(CLIENT_PACKAGE.read_text())["version"])


async def node_load(api_url: str, query: dict[str, Any]) -> dict[str, Any]:
    """Run js/load.mjs for ``query``; return what it printed (rows and stages, or the error)."""
    node = shutil.which("node")
    assert node is not None
    out, err, code = await utils.getProcessOutputAndValue(
        node, ["load.mjs", api_url, token(), json.dumps(query)], env=dict(os.environ), path=str(JS_DIR))
    lines = out.decode().strip().splitlines()
    if not lines:
        raise AssertionError(f"node printed nothing (exit {code}): {err.decode()[-2000:]}")
    return json.loads(lines[-1])


class CubeJsClientTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> Any:
        require_postgres()
        return deferToThread(install_client).addCallback(lambda version: setattr(self, "client_version", version))

    async def start(self, cubes: list[dict[str, Any]], **environ: str) -> Any:
        self.database = await setup_database(self)
        project = Path(self.mktemp()).resolve()
        environment = server_environment(self.database, write_model(project, cubes), **environ)
        server = await start_server(self, settings_of(environment, project))
        return f"{server.url}{BASE}"

    async def test_slow_query_through_continue_wait(self) -> None:
        """Three clients load a 3 s query while cubed answers Continue wait after 1 s: each
        client retries by itself (its progressCallback sees ``Executing query``) and gets the
        rows; PostgreSQL ran the query once."""
        api_url = await self.start([cube("Slow", probed("slow", 3))])
        query = {"measures": ["Slow.count", "Slow.total"], "dimensions": ["Slow.category"],
                 "order": {"Slow.category": "asc"}}
        outputs = await gatherResults([Deferred.fromCoroutine(node_load(api_url, query)) for _ in range(3)],
                                      consumeErrors=True)
        for output in outputs:
            self.assertNotIn("error", output, output)
            self.assertEqual(output["rows"], [
                {"Slow.category": "even", "Slow.count": "5", "Slow.total": "30"},
                {"Slow.category": "odd", "Slow.count": "5", "Slow.total": "25"},
            ])
            self.assertGreaterEqual(len(output["stages"]), 1, output)
            self.assertEqual(output["stages"][0]["stage"], "Executing query", output)
            self.assertIsInstance(output["stages"][0]["timeElapsed"], int)
            self.assertGreaterEqual(output["ms"], 2500, output)
            self.assertTrue(output["lastRefreshTime"].endswith("Z"), output)
            self.assertIs(output["slowQuery"], False)
        self.assertEqual(await probe_runs(self.database, "slow"), 1)
        cached = await node_load(api_url, query)
        self.assertEqual((cached["rows"], cached["stages"]), (outputs[0]["rows"], []))

    async def test_errors_reach_the_client(self) -> None:
        """A query with an unknown member rejects the client's promise with cubed's message."""
        api_url = await self.start([cube("Fast", "SELECT * FROM items")])
        output = await node_load(api_url, {"measures": ["Fast.nope"]})
        self.assertEqual(output["status"], 400, output)
        self.assertIn("'nope' not found for path 'Fast.nope'", output["error"])
