"""cube.py hooks through real HTTP on the demo (DuckDB): query_rewrite, check_auth,
extend_context, context_to_app_id + repository_factory + COMPILE_CONTEXT, errors in hooks."""
from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent
from typing import Any

import treq
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cubed.config import load_settings
from cubed.demo import build_demo_database, demo_model_dir
from cubed.errors import ConfigError
from cubed.hooks import HookError, load_hooks
from tests.support.server import TEST_SECRET, RunningServer, start_server

QUERY_REWRITE = """
from cubed import config

@config('query_rewrite')
async def rewrite(query, ctx):
    status = ctx['securityContext'].get('status')
    if status == 'boom':
        raise RuntimeError('no such status')
    if status:
        query['filters'].append({'member': 'Orders.status', 'operator': 'equals', 'values': [status]})
    return query

@config('extend_context')
def extend(request):
    return {'client': request['headers'].get('x-client', 'unknown')}
"""

CHECK_AUTH = """
from cubed import config
from cubed.errors import AuthError

@config('check_auth')
def check(request, token):
    if token != 'letmein':
        raise AuthError('Go away')
    return {'security_context': {'user': 'ok'}}
"""

APPS = """
from cubed import config

@config('context_to_app_id')
def app_id(ctx):
    return 'app_' + ctx['securityContext']['shop']

@config('repository_factory')
def repository(ctx):
    return 'models/' + ctx['securityContext']['shop']
"""

SMALL_MODEL = """
cubes:
  - name: {NAME}
    sql_table: public.{COMPILE_TABLE}
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
"""


class HookServer(TestCase):
    """Starts the demo on DuckDB with a project directory holding ``cube.py``."""

    async def server(self, cube_py: str, model_dirs: dict[str, str] | None = None) -> RunningServer:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        (directory / "cube.py").write_text(dedent(cube_py))
        for name, text in (model_dirs or {}).items():
            (directory / "models" / name).mkdir(parents=True)
            (directory / "models" / name / "model.yml").write_text(dedent(text))
        database = directory / "demo.duckdb"
        await deferToThread(build_demo_database, database)
        environ = {"CUBEJS_DB_TYPE": "duckdb", "CUBEJS_DB_DUCKDB_DATABASE_PATH": str(database),
                   "CUBEJS_API_SECRET": TEST_SECRET, "CUBEJS_SCHEMA_PATH": str(demo_model_dir())}
        return await start_server(self, load_settings(environ, str(directory), {}))

    async def get(self, server: RunningServer, route: str, query: Any, token: str,
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
        params = {"query": json.dumps(query)} if query is not None else {}
        response = await treq.get(f"{server.url}/cubejs-api/v1/{route}", params=params,
                                  headers={"Authorization": token, **(headers or {})}, persistent=False)
        return response.code, json.loads(await response.text())


class QueryRewriteTests(HookServer):
    async def test_rewrite_adds_a_filter_from_the_security_context(self) -> None:
        server = await self.server(QUERY_REWRITE)
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"]}
        status, body = await self.get(server, "load", query, server.token({"status": "shipped"}))
        self.assertEqual(status, 200, body)
        self.assertEqual(body["data"], [{"Orders.status": "shipped", "Orders.count": "915"}])
        self.assertEqual(body["query"]["filters"], [{"member": "Orders.status", "operator": "equals", "values": ["shipped"]}])
        status, body = await self.get(server, "load", query, server.token({}))
        self.assertEqual(len(body["data"]), 3)

    async def test_a_failing_hook_is_a_clean_500_logged_with_the_request_id(self) -> None:
        server = await self.server(QUERY_REWRITE)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        response = await treq.get(f"{server.url}/cubejs-api/v1/load",
                                  params={"query": json.dumps({"measures": ["Orders.count"]})},
                                  headers={"Authorization": server.token({"status": "boom"}),
                                           "x-request-id": "hook-test-span-1"}, persistent=False)
        body = json.loads(await response.text())
        self.assertEqual(response.code, 500)
        self.assertEqual(body["error"], "Error: query_rewrite hook failed: RuntimeError: no such status")
        self.assertNotIn("stack", body)
        logged = [e for e in events if e.get("request_id") == "hook-test-span-1" and e.get("log_failure")]
        self.assertTrue(logged, "the failure is logged with the request id")
        self.flushLoggedErrors(HookError)


class CheckAuthTests(HookServer):
    async def test_check_auth_replaces_jwt_verification(self) -> None:
        server = await self.server(CHECK_AUTH)
        status, body = await self.get(server, "load", {"measures": ["Orders.count"]}, "letmein")
        self.assertEqual((status, body["data"]), (200, [{"Orders.count": "3000"}]))
        status, body = await self.get(server, "load", {"measures": ["Orders.count"]}, server.token({}))
        self.assertEqual((status, body), (403, {"error": "Go away"}))


class AppTests(HookServer):
    async def test_each_app_gets_its_own_model(self) -> None:
        models = {"north": SMALL_MODEL.replace("{NAME}", "North").replace("{COMPILE_TABLE}", "orders"),
                  "south": SMALL_MODEL.replace("{NAME}", "South").replace("{COMPILE_TABLE}",
                                                                          "{COMPILE_CONTEXT.securityContext.table}")}
        server = await self.server(APPS, models)
        status, body = await self.get(server, "meta", None, server.token({"shop": "north"}))
        self.assertEqual([c["name"] for c in body["cubes"]], ["North"])
        status, body = await self.get(server, "load", {"measures": ["South.count"]},
                                      server.token({"shop": "south", "table": "users"}))
        self.assertEqual((status, body.get("data")), (200, [{"South.count": "500"}]))
        status, body = await self.get(server, "load", {"measures": ["North.count"]}, server.token({"shop": "south"}))
        self.assertEqual(status, 400)
        self.assertEqual(body["error"], "Cube 'North' not found for path 'North.count'")

    async def test_sighup_compiles_app_models_again_and_keeps_a_broken_one_out(self) -> None:
        """SIGHUP (the ModelReloader) reaches the models compiled per app: a changed model
        answers from the next request; a broken one is refused and the last good one answers."""
        from cubed.model.reload import ModelReloader

        models = {"north": SMALL_MODEL.replace("{NAME}", "North").replace("{COMPILE_TABLE}", "orders")}
        server = await self.server(APPS, models)
        token = server.token({"shop": "north"})
        status, body = await self.get(server, "load", {"measures": ["North.count"]}, token)
        self.assertEqual((status, body.get("data")), (200, [{"North.count": "3000"}]))
        model_file = server.server.settings.project_dir / "models" / "north" / "model.yml"
        model_file.write_text(dedent(SMALL_MODEL.replace("{NAME}", "North").replace("{COMPILE_TABLE}", "users")))

        class Quiet:
            def reloading(self, status: str) -> None:
                pass

            def ready(self, status: str) -> None:
                pass

        reloader = ModelReloader(server.server.registry, Quiet(), reactor, "tcp:0", None, server.server.tenants)
        await reloader.reload()
        status, body = await self.get(server, "load", {"measures": ["North.count"]}, token)
        self.assertEqual((status, body.get("data")), (200, [{"North.count": "500"}]), "the app's new model")
        model_file.write_text("cubes:\n  - name: North\n    sql_table: public.orders\n    measures: [oops\n")
        await reloader.reload()
        status, body = await self.get(server, "load", {"measures": ["North.count"]}, token)
        self.assertEqual((status, body.get("data")), (200, [{"North.count": "500"}]), "the last good model")
        self.flushLoggedErrors()

    async def test_compile_context_values_must_be_identifiers(self) -> None:
        models = {"south": SMALL_MODEL.replace("{NAME}", "South").replace("{COMPILE_TABLE}",
                                                                          "{COMPILE_CONTEXT.securityContext.table}")}
        server = await self.server(APPS, models)
        status, body = await self.get(server, "load", {"measures": ["South.count"]},
                                      server.token({"shop": "south", "table": "users; DROP TABLE orders"}))
        self.assertEqual(status, 500)
        self.assertIn("only letters, digits and _ can be put into a model", body["error"])


class LoadHooksTests(TestCase):
    def test_errors_are_one_line(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "cube.py").write_text("from cubed import config\n\n@config('query_rewrite')\ndef f(:\n")
        with self.assertRaises(ConfigError) as caught:
            load_hooks(directory)
        self.assertIn("cube.py: SyntaxError", str(caught.exception))
        (directory / "cube.py").write_text("from cubed import config\n\n@config('nonsense')\ndef f(q, c):\n    return q\n")
        with self.assertRaises(ConfigError) as caught:
            load_hooks(directory)
        self.assertIn("unknown cubed hook 'nonsense'", str(caught.exception))

    def test_no_cube_py_means_no_hooks(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.assertEqual(load_hooks(directory).defined(), [])
