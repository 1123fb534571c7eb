"""The Playground's routes: served at / in dev mode only, its own files only, JSON 404s kept."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import treq
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from cubed.config import load_settings
from cubed.demo import demo_model_dir
from cubed.playground import CONTENT_SECURITY_POLICY, HERE, Playground, load_assets
from tests.support.server import start_server

NOT_FOUND = {"error": "Not Found"}
VENDORED = HERE / "vendor" / "chart.umd.min.js"


@dataclass
class Answer:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


async def call(method: str, url: str, headers: Mapping[str, str] | None = None) -> Answer:
    response = await treq.request(method, url, headers=dict(headers or {}), persistent=False, timeout=20)
    return Answer(response.code, response.headers, await response.content())


class AssetTests(unittest.TestCase):
    """The files the package serves."""

    def test_assets_are_the_static_files_only(self) -> None:
        self.assertEqual(sorted(load_assets()), [
            "playground.css", "playground.js", "vendor/LICENSE.chart.js.md", "vendor/LICENSE.kurkle-color.md",
            "vendor/README.md", "vendor/chart.umd.min.js",
        ])

    def test_vendored_chart_js_with_its_licences(self) -> None:
        script = VENDORED.read_text(encoding="utf-8")
        self.assertTrue(script.startswith("/*!\n * Chart.js v4.6.1\n"), script[:80])
        self.assertIn("Released under the MIT License", script)
        for licence in ("LICENSE.chart.js.md", "LICENSE.kurkle-color.md"):
            self.assertIn("Permission is hereby granted, free of charge", (HERE / "vendor" / licence).read_text())
        self.assertIn("chart.js@4.6.1", (HERE / "vendor" / "README.md").read_text())

    def test_page_names_the_api(self) -> None:
        playground = Playground("/custom/base/v1")
        page = playground.page.body.decode()
        self.assertIn('<meta name="cubed-api-url" content="/custom/base/v1">', page)
        self.assertNotIn("__CUBED_API_URL__", page)
        self.assertIn('src="/playground/playground.js"', page)
        self.assertIn('src="/playground/vendor/chart.umd.min.js"', page)
        self.assertIn('content="/cubed/api/v1?x=&quot;"', Playground('/cubed/api/v1?x="').page.body.decode())


class RouteTests(unittest.TestCase):
    """Through a listening server (no data needed: DuckDB in memory, the demo model)."""

    async def start(self, **environ: str) -> str:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        settings = load_settings({"CUBEJS_DB_TYPE": "duckdb", "CUBEJS_SCHEMA_PATH": str(demo_model_dir()),
                                  "CUBEJS_API_SECRET": "playground-test-secret-0123456789abcdef", **environ},
                                 str(directory), {})
        return (await start_server(self, settings)).url

    async def test_page_in_dev_mode(self) -> None:
        url = await self.start(CUBEJS_DEV_MODE="true")
        answer = await call("GET", f"{url}/")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("content-type"), "text/html; charset=utf-8")
        self.assertEqual(answer.header("content-security-policy"), CONTENT_SECURITY_POLICY)
        self.assertEqual(answer.header("x-content-type-options"), "nosniff")
        self.assertEqual(answer.header("cache-control"), "no-cache")
        self.assertIn(b'<meta name="cubed-api-url" content="/cubejs-api/v1">', answer.body)
        head = await call("HEAD", f"{url}/")
        self.assertEqual((head.status, head.body), (200, b""))

    async def test_assets_in_dev_mode(self) -> None:
        url = await self.start(CUBEJS_DEV_MODE="true")
        script = await call("GET", f"{url}/playground/vendor/chart.umd.min.js")
        self.assertEqual(script.status, 200)
        self.assertEqual(script.header("content-type"), "text/javascript; charset=utf-8")
        self.assertEqual(script.body, VENDORED.read_bytes())
        etag = script.header("etag")
        self.assertIsNotNone(etag)
        again = await call("GET", f"{url}/playground/vendor/chart.umd.min.js", {"If-None-Match": etag})
        self.assertEqual((again.status, again.body), (304, b""))
        css = await call("GET", f"{url}/playground/playground.css")
        self.assertEqual((css.status, css.header("content-type")), (200, "text/css; charset=utf-8"))
        module = await call("GET", f"{url}/playground/playground.js")
        self.assertEqual((module.status, module.header("content-type")), (200, "text/javascript; charset=utf-8"))

    async def test_other_names_under_the_assets_path_are_json_404s(self) -> None:
        url = await self.start(CUBEJS_DEV_MODE="true")
        for path in ("/playground/__init__.py", "/playground/index.html", "/playground/vendor/update.sh",
                     "/playground/vendor/", "/playground/", "/playground", "/playground/%2e%2e/setup.py",
                     "/playground/nope.js"):
            answer = await call("GET", f"{url}{path}")
            self.assertEqual((answer.status, answer.json()), (404, NOT_FOUND), path)
            self.assertEqual(answer.header("content-type"), "application/json; charset=utf-8", path)

    async def test_api_routes_unchanged_in_dev_mode(self) -> None:
        url = await self.start(CUBEJS_DEV_MODE="true")
        for path in ("/nope", "/index.html", "/cubejs-api/v1/nope"):
            answer = await call("GET", f"{url}{path}")
            self.assertEqual((answer.status, answer.json()), (404, NOT_FOUND), path)
        post = await call("POST", f"{url}/")
        self.assertEqual((post.status, post.json()), (405, {"error": "Method Not Allowed"}))
        preflight = await call("OPTIONS", f"{url}/", {"Access-Control-Request-Method": "GET"})
        self.assertEqual(preflight.status, 204)
        meta = await call("GET", f"{url}/cubejs-api/v1/meta")
        self.assertEqual(meta.status, 200)
        self.assertIn("Orders", [cube["name"] for cube in meta.json()["cubes"]])

    async def test_base_path(self) -> None:
        url = await self.start(CUBEJS_DEV_MODE="true", CUBEJS_BASE_PATH="/analytics")
        answer = await call("GET", f"{url}/")
        self.assertIn(b'<meta name="cubed-api-url" content="/analytics/v1">', answer.body)

    async def test_no_playground_outside_dev_mode(self) -> None:
        url = await self.start()
        for path in ("/", "/playground/playground.js", "/playground/vendor/chart.umd.min.js"):
            answer = await call("GET", f"{url}{path}")
            self.assertEqual((answer.status, answer.json()), (404, NOT_FOUND), path)
        preflight = await call("OPTIONS", f"{url}/", {"Access-Control-Request-Method": "GET"})
        self.assertEqual(preflight.status, 204)
