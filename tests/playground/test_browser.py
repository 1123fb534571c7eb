"""The Playground end to end: headless Chromium (Debian's ``chromium``) clicks through the page.

The test starts cubed in-process on the bundled demo (DuckDB, dev mode) with
``CUBEJS_CONTINUE_WAIT_TIMEOUT=0``, so the first /v1/load answers Continue wait and the page
has to show its progress line and ask again. ``playground.mjs`` (playwright-core, installed
from the npm registry into tests/playground by the set-up, versions pinned by
package-lock.json, node_modules not committed) builds a query by clicking, reads the chart,
the table, the JSON query, the SQL and both copied snippets, and takes the screenshots. The
'Copy as curl' snippet is then run with sh and curl, and the 'Copy as JS' snippet with node and
@cubejs-client/core: both must get the rows the page showed.

The screenshot path is printed (under _trial_temp); with ``CUBED_UPDATE_SCREENSHOT=1`` the
picture is also copied to docs/playground.png. Without chromium, node or npm (or when the npm install
fails) the test is skipped with the reason - or fails under ``CUBED_REQUIRE_SERVICES=1``.
Chromium: ``CUBED_CHROMIUM`` or ``chromium`` on the PATH (``apt-get install chromium``).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet import utils
from twisted.internet.threads import deferToThread
from twisted.python import log
from twisted.trial import unittest

from cubed.config import load_settings
from cubed.demo import build_demo_database, demo_model_dir
from tests.support.server import start_server
from tests.support.services import service_absent

HERE = Path(__file__).resolve().parent
DOCS_SCREENSHOT = HERE.parents[1] / "docs" / "playground.png"
NODE_MODULES = HERE / "node_modules"
NEEDED_PACKAGES = ("playwright-core", "@cubejs-client/core")
INSTALL_TIMEOUT = 300
SCRIPT_TIMEOUT = 120

EXPECTED_QUERY = {
    "measures": ["Orders.count"],
    "dimensions": ["Orders.status"],
    "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month",
                        "dateRange": ["2024-01-01", "2024-12-31"]}],
    "filters": [{"member": "Orders.amount", "operator": "gte", "values": ["50"]}],
    "order": {"Orders.createdAt": "asc"},
}
MONTHS = [f"2024-{month:02d}" for month in range(1, 13)]
STATUSES = ["completed", "processing", "shipped"]


def find_chromium() -> str:
    """Return the Chromium executable, or raise SkipTest/ServiceMissing."""
    path = os.environ.get("CUBED_CHROMIUM") or shutil.which("chromium")
    if not path or not os.access(path, os.X_OK):
        raise service_absent("chromium is needed for the Playground browser test (apt-get install chromium)")
    return path


def _installed() -> bool:
    stamp = NODE_MODULES / ".package-lock.json"  # npm's record of what it installed
    return (all((NODE_MODULES / name / "package.json").exists() for name in NEEDED_PACKAGES)
            and stamp.exists() and stamp.stat().st_mtime >= (HERE / "package-lock.json").stat().st_mtime)


def install_packages() -> None:
    """Install playwright-core and @cubejs-client/core into tests/playground/node_modules
    (``npm ci``: the versions of package-lock.json) unless they are there; blocking, one
    installer at a time across processes. Raises SkipTest/ServiceMissing on failure."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise service_absent("node and npm are needed for the Playground browser test (apt-get install nodejs npm)")
    with open(Path(tempfile.gettempdir()) / "cubed-playground-npm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            return
        try:
            done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                                  capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise service_absent(f"npm ci in tests/playground took over {INSTALL_TIMEOUT} s") from None
        if done.returncode != 0 or not _installed():
            reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            raise service_absent(f"npm ci in tests/playground failed: {reason[0]}")


async def run_process(executable: str, args: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, str, int]:
    """Run a process without blocking the reactor (the server under test runs on it)."""
    out, err, code = await utils.getProcessOutputAndValue(executable, args, env=env, path=str(cwd))
    return out.decode(), err.decode(), code


def copy_if_changed(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` unless it holds the same bytes; return True when copied."""
    if target.exists() and target.read_bytes() == source.read_bytes():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return True


class PlaygroundBrowserTests(unittest.TestCase):
    timeout = 240

    def setUp(self) -> Any:
        self.chromium = find_chromium()
        return deferToThread(install_packages)

    async def start_demo(self) -> str:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        database = await deferToThread(build_demo_database, directory / "demo.duckdb")
        environ = {
            "CUBEJS_DEV_MODE": "true",
            "CUBEJS_DB_TYPE": "duckdb",
            "CUBEJS_DB_DUCKDB_DATABASE_PATH": str(database),
            "CUBEJS_SCHEMA_PATH": str(demo_model_dir()),
            "CUBEJS_CONTINUE_WAIT_TIMEOUT": "0",
        }
        server = await start_server(self, load_settings(environ, str(directory), {}))
        return server.url

    async def test_build_a_query_by_clicking(self) -> None:
        """Orders per status and month of 2024: Continue wait shown, then a line chart of the
        demo data with its table, JSON query and SQL; without the time dimension a bar chart;
        the copied curl and JS snippets fetch the same rows; the URL keeps the query."""
        url = await self.start_demo()
        shots = Path(self.mktemp()).resolve()
        shots.mkdir(parents=True)
        env = {**os.environ, "CUBED_CHROMIUM": self.chromium}
        out, err, code = await run_process(shutil.which("node") or "node", ["playground.mjs", url, str(shots)], HERE, env)
        lines = out.strip().splitlines()
        self.assertTrue(lines, f"playground.mjs printed nothing (exit {code}): {err[-3000:]}")
        page = json.loads(lines[-1])
        self.assertNotIn("error", page, page.get("error"))
        self.assertEqual(code, 0, err[-3000:])

        screenshot = shots / "playground.png"
        print(f"\nPlayground screenshot: {screenshot}")
        log.msg(f"Playground screenshot: {screenshot}")
        self.assertEqual(page["screenshots"], [str(screenshot), str(shots / "playground-bar.png")])
        self.assertEqual(screenshot.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        # Every run renders a few pixels differently: the committed picture is replaced only on
        # request, so that a test run leaves the checkout as it was.
        if os.environ.get("CUBED_UPDATE_SCREENSHOT") == "1":
            try:
                if copy_if_changed(screenshot, DOCS_SCREENSHOT):
                    log.msg(f"copied to {DOCS_SCREENSHOT}")
            except OSError as error:
                log.msg(f"not copied to {DOCS_SCREENSHOT}: {error}")

        self.assertEqual(page["title"], "cubed Playground")
        self.assertEqual(page["consoleErrors"], [])
        self.assertEqual(page["chips"], ["Orders Count×", "Orders Status×"])
        # Continue wait: the server asked to poll again, the page said so and asked again.
        self.assertGreaterEqual(page["continueWaits"], 1, page)
        self.assertGreater(page["loadRequests"], page["continueWaits"])
        self.assertIsNotNone(page["progressText"], "the Continue wait progress line never showed")
        self.assertIn("Continue wait", page["progressText"])
        self.assertRegex(page["progressText"], r"Executing query|in queue")
        self.assertGreaterEqual(int(page["waitsShown"]), 1)
        self.assertEqual(page["status"], "36 rows")

        # The line chart: one series per status, twelve months, the table's numbers.
        line = page["line"]
        self.assertEqual(line["type"], "line")
        self.assertEqual(line["labels"], MONTHS)
        self.assertEqual([d["label"] for d in line["datasets"]], STATUSES)
        self.assertGreater(line["width"], 600)
        self.assertEqual(line["height"], 320)
        table = page["table"]
        self.assertEqual(table["headers"], ["Orders Status", "Orders Created at (month)", "Orders Count"])
        self.assertEqual(len(table["rows"]), 36)
        cells = {(status, month): int(count.replace(",", "")) for status, month, count in table["rows"]}
        for dataset in line["datasets"]:
            self.assertEqual(dataset["data"], [cells[(dataset["label"], month)] for month in MONTHS])
        self.assertEqual([month for _s, month, _c in table["rows"]], sorted(month for _s, month, _c in table["rows"]))

        self.assertEqual(page["json"], EXPECTED_QUERY)
        self.assertIn('FROM public.orders AS "orders"', page["sql"])
        self.assertIn("DATE_TRUNC('MONTH'", page["sql"])
        self.assertIn("-- parameters:", page["sql"])

        # Without the time dimension: a bar per status, the 2024-wide numbers gone (all time).
        bar = page["bar"]
        self.assertEqual(bar["type"], "bar")
        self.assertEqual(sorted(bar["labels"]), STATUSES)
        self.assertEqual(len(bar["datasets"]), 1)
        bar_counts = dict(zip(bar["labels"], bar["datasets"][0]["data"]))
        self.assertEqual(page["barTable"]["headers"], ["Orders Status", "Orders Count"])
        self.assertEqual({s: int(c.replace(",", "")) for s, c in page["barTable"]["rows"]}, bar_counts)
        for status in STATUSES:
            self.assertGreater(bar_counts[status], sum(cells[(status, month)] for month in MONTHS))

        self.assertEqual(page["afterReload"], {
            "chips": ["Orders Count×", "Orders Status×"],
            "checked": ["Orders.count", "Orders.status"],
            "filterValues": "50",
        })

        self.assertEqual(page["errorStatus"], "400: Can't parse date: 'someday'")
        self.assertEqual(page["rowsAfterError"], 0)
        self.assertEqual(set(page["errorStepConsole"]),
                         {"Failed to load resource: the server responded with a status of 400 (Bad Request)"})

        # The copied snippets work as they are.
        self.assertIn("-H 'Authorization: pasted.jwt.token'", page["curlWithToken"])
        self.assertEqual(page["curl"], page["curlShown"])
        expected_rows = Counter((status, f"{month}-01T00:00:00.000", str(cells[(status, month)]))
                                for status in STATUSES for month in MONTHS)
        await self.check_curl(page["curl"], expected_rows)
        await self.check_js(page["js"], expected_rows, env)

    async def check_curl(self, snippet: str, expected: Counter[tuple[str, str, str]]) -> None:
        self.assertTrue(snippet.startswith("curl -X POST 'http://127.0.0.1:"), snippet)
        self.assertNotIn("Authorization", snippet)  # dev mode, no token pasted
        if shutil.which("curl") is None:
            log.msg("curl is not installed: the copied curl snippet was not run")
            return
        out, err, code = await run_process("/bin/sh", ["-c", snippet + " --silent --show-error"], HERE, dict(os.environ))
        self.assertEqual(code, 0, err)
        answer = json.loads(out)
        self.assertEqual(Counter((r["Orders.status"], r["Orders.createdAt.month"], r["Orders.count"])
                                 for r in answer["data"]), expected)

    async def check_js(self, snippet: str, expected: Counter[tuple[str, str, str]], env: dict[str, str]) -> None:
        self.assertTrue(snippet.startswith("import cube from '@cubejs-client/core';"), snippet)
        self.assertIn("cubeApi.load(", snippet)
        program = snippet.replace("console.log(resultSet.tablePivot());",
                                  "console.log(JSON.stringify(resultSet.tablePivot()));")
        node = shutil.which("node") or "node"
        # Run from tests/playground, where node finds @cubejs-client/core.
        out, err, code = await run_process(node, ["--input-type=module", "-e", program], HERE, env)
        self.assertEqual(code, 0, err[-3000:])
        rows = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(Counter((r["Orders.status"], r["Orders.createdAt.month"], str(r["Orders.count"]))
                                 for r in rows), expected)
