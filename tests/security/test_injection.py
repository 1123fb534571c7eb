"""Injection: hostile strings in every place a query takes text never become SQL.

The corpus (``HOSTILE``) holds quotes, ``--`` and ``/* */`` comments, ``;`` with a second
statement, backslashes, LIKE wildcards, NUL bytes, psycopg2/libpq placeholder look-alikes
(``$1``, ``%s``, ``%(x)s``), dollar quoting, unicode (combining marks, right-to-left override,
astral characters) and classic payloads (``'; DROP TABLE users; --``, ``' OR '1'='1``,
``pg_sleep``). Each goes:

- as the value of every value-taking filter operator (equals ... lte) on a string dimension:
  the answer must be 200 with exactly the rows an independent reference selects (a
  psycopg2-parameterized query that uses no LIKE, see ``REFERENCE``) - the corpus strings are
  stored in the table as users' first names, so an equals filter must find exactly that one
  row - or, for strings PostgreSQL cannot hold (NUL bytes), 400;
- as the value of every date operator, as a member name (measures, dimensions, segments,
  filter member, time dimension, order key), an order direction, the timezone, a granularity,
  a dateRange, a compareDateRange, limit and offset, and the boolean and enum flags: 400 (the
  planner test puts every string in every place; over HTTP six representative strings go to
  every place and each other string to six rotating places).

How "never SQL" is verified, at three layers:

1. The planner (``PlannerInjectionTests``, no database): for every operator, the SQL text of the
   query with a hostile value is *identical* to the text with the value ``benign``; only the
   bound parameters differ, and they carry the hostile value (LIKE-escaped for the like
   operators).
2. pg_stat_statements, on a private PostgreSQL started for the test with
   ``shared_preload_libraries=pg_stat_statements`` (the shared server cannot load it): cubed
   connects as its own role; every statement that role ran while the hostile corpus went
   through has a query id already produced by the benign run of the same query shapes. Values
   inlined as literals would normalise to the same id - but any literal that broke out of its
   quotes, a comment or a second statement makes a new id.
3. The server log (``log_statement=all`` on the same instance): every statement of cubed's role
   is lexed (quotes, E-strings, dollar quotes, comments); none has a comment or a ``;`` outside
   a literal, each is one SELECT/BEGIN/COMMIT, and its skeleton (literals replaced by ``?``) is
   one the benign run produced. psycopg2 interpolates parameters on the client, so the hostile
   text does reach the server - but only inside correctly quoted literals, which is what this
   proves. At the end every table still has its rows.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Mapping

import psycopg2
import treq
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial import unittest

from cubed.config import DataSourceSettings
from cubed.errors import CubedError
from cubed.model.registry import CompiledModel, compile_directory
from cubed.query.filters import escape_like
from cubed.query.request import expand_query, parse_query_param
from tests.api.test_http import CONFORMANCE_MODEL, postgres_settings
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import PostgresInstance, new_private_postgres, service_absent
from tests.support.shopdata import SHOP_ROW_COUNTS, SHOP_TABLES, load_shop_data_blocking

HOSTILE: tuple[str, ...] = (
    "'", "''", "'''", '"', '""', "O'Brien", "D\"Artagnan",
    "'; DROP TABLE users; --", "'; DROP TABLE users CASCADE; SELECT '", "\"; DROP TABLE users; --",
    "' OR '1'='1", "' OR 1=1 --", "') OR ('1'='1", "admin'--", "x' UNION SELECT usename FROM pg_user --",
    "1; SELECT pg_sleep(5)", "'; SELECT pg_sleep(5); --", "'||pg_sleep(5)||'", "'||(SELECT current_user)||'",
    "--", "-- comment", "/*", "*/", "/* comment */", "*/ OR 1=1 /*", "a/*b*/c",
    ";", "; COMMIT; DROP TABLE orders; BEGIN;",
    "\\", "\\\\", "\\'", "a\\", "\\' OR 1=1 --", "\\x27", "E'\\x27'", "\\0",
    "%", "%%", "_", "%_%", "50%", "a_b", "\\%", "\\_", "[a-z]%",
    "$1", "$2::text", "$$", "$$; DROP TABLE users; $$", "$tag$x$tag$",
    "%s", "%(x)s", "%(cubedp0)s", "%d", "{0}", "{}", "${x}", "#{x}", ":param", "?", "@p",
    "NULL", "null", "None", "true", "1e999", "-0", "0x41",
    "é", "É", "ünïcödé ☃", "中文", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "e\u0301", "\u202eevil", "\ufeffbom", "\u2028",
    "tab\there", "new\nline", "cr\rhere", " leading", "trailing ", "",
    "x" * 5000,
    "\x00", "a\x00b", "'\x00; DROP TABLE users; --",
)
#: Strings PostgreSQL can store in a text column (no NUL).
STORABLE = tuple(dict.fromkeys(s for s in HOSTILE if "\x00" not in s))
HOSTILE_ID_BASE = 900000

VALUE_OPERATORS = ("equals", "notEquals", "in", "notIn", "contains", "notContains", "startsWith",
                   "notStartsWith", "endsWith", "notEndsWith", "gt", "gte", "lt", "lte")
LIKE_OPERATORS = {"contains", "notContains", "startsWith", "notStartsWith", "endsWith", "notEndsWith"}
DATE_OPERATORS = ("inDateRange", "notInDateRange", "onTheDate", "beforeDate", "afterDate", "beforeOrOnDate",
                  "afterOrOnDate")

#: The reference: what each operator means, in plain PostgreSQL without LIKE (so that the
#: reference does not share cubed's wildcard escaping), with the value bound by psycopg2.
REFERENCE = {
    "equals": "first_name = %(v)s",
    "notEquals": "(first_name <> %(v)s OR first_name IS NULL)",
    "in": "first_name IN (%(v)s)",
    "notIn": "(first_name NOT IN (%(v)s) OR first_name IS NULL)",
    "contains": "strpos(lower(first_name), lower(%(v)s)) > 0",
    "notContains": "(NOT strpos(lower(first_name), lower(%(v)s)) > 0 OR first_name IS NULL)",
    "startsWith": "starts_with(lower(first_name), lower(%(v)s))",
    "notStartsWith": "(NOT starts_with(lower(first_name), lower(%(v)s)) OR first_name IS NULL)",
    "endsWith": "right(lower(first_name), char_length(lower(%(v)s))) = lower(%(v)s)",
    "notEndsWith": "(NOT right(lower(first_name), char_length(lower(%(v)s))) = lower(%(v)s) OR first_name IS NULL)",
    "gt": "first_name > %(v)s",
    "gte": "first_name >= %(v)s",
    "lt": "first_name < %(v)s",
    "lte": "first_name <= %(v)s",
}


def filter_query(operator: str, value: Any, member: str = "Users.firstName", **extra: Any) -> dict[str, Any]:
    return {"measures": ["Users.count"], "filters": [{"member": member, "operator": operator, "values": [value]}],
            **extra}


def refused_queries(s: str) -> list[tuple[str, Any]]:
    """Return (place, query) pairs that put ``s`` where only names, enums, dates or numbers go."""
    count = ["Users.count"]
    td = "Users.createdAt"
    return [
        ("measures", {"measures": [s]}),
        ("measures member-like", {"measures": [f"Users.{s}"]}),
        ("dimensions", {"measures": count, "dimensions": [s]}),
        ("dimensions granularity suffix", {"measures": count, "dimensions": [f"Users.createdAt.{s}"]}),
        ("segments", {"measures": count, "segments": [s]}),
        ("filter member", {"measures": count, "filters": [{"member": s, "operator": "equals", "values": ["x"]}]}),
        ("filter dimension", {"measures": count, "filters": [{"dimension": s, "operator": "set"}]}),
        ("filter operator", {"measures": count, "filters": [{"member": "Users.firstName", "operator": s,
                                                             "values": ["x"]}]}),
        ("time dimension", {"measures": count, "timeDimensions": [{"dimension": s, "granularity": "day"}]}),
        ("granularity", {"measures": count, "timeDimensions": [{"dimension": td, "granularity": s}]}),
        ("dateRange string", {"measures": count, "timeDimensions": [{"dimension": td, "dateRange": s}]}),
        ("dateRange pair", {"measures": count, "timeDimensions": [{"dimension": td, "dateRange": [s, s]}]}),
        ("dateRange end", {"measures": count, "timeDimensions": [{"dimension": td,
                                                                  "dateRange": ["2024-01-01", s]}]}),
        ("compareDateRange", {"measures": count, "timeDimensions": [{"dimension": td,
                                                                     "compareDateRange": [s, "last week"]}]}),
        ("order key", {"measures": count, "order": {s: "asc"}}),
        ("order array", {"measures": count, "order": [[s, "asc"]]}),
        ("order direction", {"measures": count, "order": {"Users.count": s}}),
        ("timezone", {"measures": count, "timezone": s}),
        ("limit", {"measures": count, "limit": s}),
        ("offset", {"measures": count, "offset": s}),
        ("total", {"measures": count, "total": s}),
        ("ungrouped", {"measures": count, "ungrouped": s}),
        ("renewQuery", {"measures": count, "renewQuery": s}),
        ("responseFormat", {"measures": count, "responseFormat": s}),
        ("cache", {"measures": count, "cache": s}),
        ("unknown key", {"measures": count, s: 1}),
    ] + [(f"{operator} value", filter_query(operator, s, "Users.createdAt")) for operator in DATE_OPERATORS] + [
        (f"{operator} pair", filter_query(operator, s, "Users.createdAt") | {
            "filters": [{"member": "Users.createdAt", "operator": operator, "values": ["2024-01-01", s]}]})
        for operator in ("inDateRange", "notInDateRange")
    ]


def legitimate(place: str, s: str) -> bool:
    """Return whether ``s`` is a valid value at ``place`` (the corpus has ``"true"`` and ``"-0"``)."""
    if place in ("total", "renewQuery", "ungrouped"):
        return s.lower() in ("true", "false")
    if place in ("limit", "offset"):
        return re.fullmatch(r"\s*[+-]?\d+\s*", s) is not None
    return False


# -- 1. the planner ---------------------------------------------------------------------------
class PlannerInjectionTests(unittest.TestCase):
    """Hostile values change only the bound parameters, never the SQL text."""

    model: CompiledModel | None = None

    def compiled(self) -> CompiledModel:
        if PlannerInjectionTests.model is None:
            PlannerInjectionTests.model = compile_directory(CONFORMANCE_MODEL, lambda _ds: "postgres",
                                                            lambda _ds: "postgres")
        return PlannerInjectionTests.model

    def settings(self) -> Any:
        from cubed.config import load_settings

        return load_settings({"CUBEJS_API_SECRET": TEST_SECRET, "CUBEJS_DB_TYPE": "postgres"},
                             str(CONFORMANCE_MODEL.parent), {})

    def plan(self, query: Mapping[str, Any]) -> Any:
        _type, queries = expand_query(parse_query_param(json.dumps(query)), self.settings())
        return self.compiled().plan(queries[0])

    def test_values_are_parameters(self) -> None:
        wrong: list[str] = []
        for operator in VALUE_OPERATORS:
            benign = self.plan(filter_query(operator, "benign", dimensions=["Users.city"]))
            for s in HOSTILE:
                plan = self.plan(filter_query(operator, s, dimensions=["Users.city"]))
                expected = escape_like(s) if operator in LIKE_OPERATORS else s
                if plan.sql.text != benign.sql.text:
                    wrong.append(f"{operator} {s!r}: the SQL text changed")
                if expected not in plan.sql.params:
                    wrong.append(f"{operator} {s!r}: not among the parameters {plan.sql.params!r}")
                if len(s) >= 3 and s in plan.sql.text and s not in benign.sql.text:
                    wrong.append(f"{operator} {s!r}: appears in the SQL text")
        self.assertEqual(wrong, [], "\n".join(wrong[:20]))

    def test_hostile_strings_elsewhere_are_refused(self) -> None:
        wrong: list[str] = []
        checked = 0
        for s in HOSTILE:
            for place, query in refused_queries(s):
                if legitimate(place, s):
                    continue
                checked += 1
                try:
                    plan = self.plan(query)
                except CubedError as error:
                    if error.status != 400:
                        wrong.append(f"{place} {s!r}: {error.status} {error.message}")
                    continue
                wrong.append(f"{place} {s!r}: accepted, SQL {plan.sql.text[:200]!r}")
        self.assertEqual(wrong, [], "\n".join(wrong[:30]))
        self.assertGreater(checked, 2500)

    def test_limit_and_offset_are_numbers_in_sql(self) -> None:
        """Numeric strings for limit/offset become integers; anything else is refused."""
        plan = self.plan({"measures": ["Users.count"], "dimensions": ["Users.city"], "limit": "10", "offset": " 5 "})
        self.assertRegex(plan.sql.text, r"LIMIT (10|%s)")
        for bad in ("10; DROP TABLE users", "10 --", "1e999", "0x10", "10)", "-1"):
            with self.assertRaises(CubedError):
                self.plan({"measures": ["Users.count"], "limit": bad})


# -- 2 and 3: a private PostgreSQL with pg_stat_statements and the statement log ---------------
CUBED_ROLE = "cubed_app"
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[\d+\] (\S*) (\S*): ", re.MULTILINE)


def lex_skeleton(sql: str) -> tuple[str, bool]:
    """Return (the statement with every literal replaced by ``?``, whether it has a comment or
    a ``;`` outside literals). Knows PostgreSQL's '...' (with '' doubling, standard conforming
    strings), E'...' (backslash escapes), "..." identifiers, $tag$...$tag$ and comments."""
    out: list[str] = []
    suspicious = False
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "eE" and i + 1 < n and sql[i + 1] == "'" and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            i += 2
            while i < n:
                if sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == "'":
                    if i + 1 < n and sql[i + 1] == "'":
                        i += 2
                        continue
                    break
                i += 1
            out.append("?")
            i += 1
        elif c == "'":
            i += 1
            while i < n:
                if sql[i] == "'":
                    if i + 1 < n and sql[i + 1] == "'":
                        i += 2
                        continue
                    break
                i += 1
            out.append("?")
            i += 1
        elif c == '"':
            end = sql.find('"', i + 1)
            end = n if end == -1 else end
            out.append(sql[i:end + 1])
            i = end + 1
        elif c == "$" and (match := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])):
            tag = match.group(0)
            end = sql.find(tag, i + len(tag))
            end = n if end == -1 else end
            out.append("?")
            i = end + len(tag)
        elif sql.startswith("--", i) or sql.startswith("/*", i):
            suspicious = True
            out.append(sql[i:i + 2])
            i += 2
        elif c == ";":
            suspicious = True
            out.append(c)
            i += 1
        else:
            out.append(c)
            i += 1
    skeleton = re.sub(r"\s+", " ", "".join(out)).strip()
    skeleton = re.sub(r"\b\d+(\.\d+)?\b", "?", skeleton)
    return skeleton, suspicious


def log_statements(text: str, role: str) -> list[str]:
    """Return the statements ``role`` sent, from a log with prefix ``%m [%p] %u %a: ``."""
    statements = []
    starts = list(LOG_PREFIX.finditer(text))
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        entry = text[match.end():end]
        if match.group(1) == role and entry.startswith("LOG:  statement: "):
            statements.append(entry[len("LOG:  statement: "):].rstrip("\n"))
    return statements


def _connect(instance: PostgresInstance, user: str = "postgres", application: str = "reference") -> Any:
    connection = psycopg2.connect(host="127.0.0.1", port=instance.port, dbname="postgres", user=user,
                                  connect_timeout=5, application_name=application)
    connection.autocommit = True
    return connection


def prepare_database(instance: PostgresInstance) -> None:
    """Load the shop data, add one user per storable hostile string, create cubed's role and
    pg_stat_statements (blocking)."""
    load_shop_data_blocking(instance.settings())
    connection = _connect(instance)
    try:
        with connection.cursor() as cursor:
            for index, value in enumerate(STORABLE):
                cursor.execute("INSERT INTO public.users (id, first_name, last_name, city, state, gender, company, "
                               "created_at) VALUES (%s, %s, 'Hostile', 'Nowhere', 'XX', 'other', 'Acme', "
                               "'2024-01-01 00:00:00')", (HOSTILE_ID_BASE + index, value))
            cursor.execute(f"CREATE ROLE {CUBED_ROLE} LOGIN")
            cursor.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {CUBED_ROLE}")
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        connection.close()


def references(instance: PostgresInstance, value: str) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Return the reference answers for ``value``: {operator: count} for every value operator
    and {operator: ids} for equals and in, over one connection (blocking)."""
    connection = _connect(instance)
    try:
        with connection.cursor() as cursor:
            counts = {}
            for operator in VALUE_OPERATORS:
                cursor.execute(f"SELECT count(*) FROM public.users WHERE {REFERENCE[operator]}", {"v": value})
                counts[operator] = int(cursor.fetchone()[0])
            ids = {}
            for operator in ("equals", "in"):
                cursor.execute(f"SELECT id FROM public.users WHERE {REFERENCE[operator]} ORDER BY id", {"v": value})
                ids[operator] = [int(row[0]) for row in cursor.fetchall()]
            return counts, ids
    finally:
        connection.close()


#: Over HTTP every name/enum/date/number place gets these strings; every other string gets a
#: rotating few places (the planner test above puts every string in every place).
EVERY_PLACE = ("'; DROP TABLE users; --", "' OR '1'='1", "/* comment */", "\\' OR 1=1 --", "%(x)s", "\x00")
PLACES_PER_STRING = 6


def http_refused_queries(index: int, s: str) -> list[tuple[str, Any]]:
    """Return the refused-place queries sent over HTTP for the ``index``-th corpus string."""
    places = [(place, query) for place, query in refused_queries(s) if not legitimate(place, s)]
    if s in EVERY_PLACE:
        return places
    start = (index * PLACES_PER_STRING) % len(places)
    return (places + places)[start:start + PLACES_PER_STRING]


def reference_count(instance: PostgresInstance, operator: str, value: str) -> int:
    connection = _connect(instance)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM public.users WHERE {REFERENCE[operator]}", {"v": value})
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def reference_ids(instance: PostgresInstance, operator: str, value: str) -> list[int]:
    connection = _connect(instance)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM public.users WHERE {REFERENCE[operator]} ORDER BY id", {"v": value})
            return [int(row[0]) for row in cursor.fetchall()]
    finally:
        connection.close()


def statement_ids(instance: PostgresInstance) -> dict[int, str]:
    """Return pg_stat_statements' {queryid: normalized text} for cubed's role."""
    connection = _connect(instance)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT s.queryid, s.query FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
                           "WHERE r.rolname = %s", (CUBED_ROLE,))
            return {int(queryid): query for queryid, query in cursor.fetchall()}
    finally:
        connection.close()


def reset_statements(instance: PostgresInstance) -> None:
    connection = _connect(instance)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_statements_reset()")
    finally:
        connection.close()


def table_counts(instance: PostgresInstance) -> dict[str, int]:
    connection = _connect(instance)
    try:
        with connection.cursor() as cursor:
            counts = {}
            for table in SHOP_TABLES:
                cursor.execute(f"SELECT count(*) FROM public.{table}")
                counts[table] = int(cursor.fetchone()[0])
            return counts
    finally:
        connection.close()


async def private_postgres(testcase: unittest.TestCase) -> PostgresInstance:
    """Start a private PostgreSQL with pg_stat_statements loaded and every statement logged."""
    instance = new_private_postgres(testcase)
    try:
        await instance.init()
        with open(instance.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# cubed injection tests\n"
                       "shared_preload_libraries = 'pg_stat_statements'\n"
                       "pg_stat_statements.track = all\n"
                       "pg_stat_statements.max = 10000\n"
                       "log_statement = 'all'\n"
                       "log_line_prefix = '%m [%p] %u %a: '\n")
        await instance.start()
    except RuntimeError as error:
        raise service_absent(f"could not start a private PostgreSQL with pg_stat_statements: {error}") from None
    return instance


class PostgresInjectionTests(unittest.TestCase):
    """The corpus through HTTP against PostgreSQL; what reached the server is checked."""

    timeout = 300

    async def load(self, server: RunningServer, token: str, query: Any) -> tuple[int, Any]:
        body = json.dumps({"query": query}).encode("utf-8")
        for _attempt in range(20):
            response = await treq.post(f"{server.url}/cubejs-api/v1/load", body, persistent=False, timeout=30,
                                       headers={"Content-Type": "application/json", "Authorization": token})
            text = (await response.content()).decode("utf-8")
            parsed = json.loads(text)
            if response.code == 200 and parsed.get("error") == "Continue wait":
                continue
            return response.code, parsed
        self.fail(f"still waiting: {query!r}")

    async def test_corpus_over_http(self) -> None:
        instance = await private_postgres(self)
        await deferToThread(prepare_database, instance)
        before = await deferToThread(table_counts, instance)
        self.assertEqual(before["users"], SHOP_ROW_COUNTS["users"] + len(STORABLE))
        database = DataSourceSettings(db_type="postgres", host="127.0.0.1", port=instance.port, database="postgres",
                                      user=CUBED_ROLE)
        server = await start_server(self, postgres_settings(database))
        token = server.token({"iat": int(time.time()), "exp": int(time.time()) + 3600})
        log_path = Path(instance.root) / "server.log"

        # The benign run: every query shape once, with the value "benign".
        await deferToThread(reset_statements, instance)
        log_start = log_path.stat().st_size
        shapes = [filter_query(op, "benign") for op in VALUE_OPERATORS] + [
            filter_query(op, "benign", dimensions=["Users.id"], order={"Users.id": "asc"}) for op in ("equals", "in")]
        for query in shapes:
            status, body = await self.load(server, token, query)
            self.assertEqual(status, 200, body)
        benign_ids = await deferToThread(statement_ids, instance)
        benign_log = log_path.read_text(encoding="utf-8", errors="replace")[log_start:]
        benign_skeletons = {lex_skeleton(s)[0] for s in log_statements(benign_log, CUBED_ROLE)}
        self.assertTrue(benign_skeletons)

        # The hostile run.
        log_start = log_path.stat().st_size
        wrong: list[str] = []
        answered: dict[str, int] = {}

        def count(kind: str, status: int) -> None:
            answered[f"{kind} {status}"] = answered.get(f"{kind} {status}", 0) + 1
        started = time.monotonic()
        for index, s in enumerate(HOSTILE):
            expected_counts, expected_id_lists = (await deferToThread(references, instance, s)) \
                if "\x00" not in s else ({}, {})
            for operator in VALUE_OPERATORS:
                status, body = await self.load(server, token, filter_query(operator, s))
                count("value with NUL" if "\x00" in s else "value", status)
                if "\x00" in s:
                    if status not in (200, 400) or (status == 200 and int(body["data"][0]["Users.count"]) != 0):
                        wrong.append(f"{operator} {s!r}: {status} {str(body)[:200]}")
                    continue
                expected = expected_counts[operator]
                if status != 200 or int(body["data"][0]["Users.count"]) != expected:
                    wrong.append(f"{operator} {s[:40]!r}: {status} {str(body)[:200]} (expected count {expected})")
            if "\x00" not in s:
                for operator in ("equals", "in"):
                    status, body = await self.load(server, token, filter_query(operator, s, dimensions=["Users.id"],
                                                                               order={"Users.id": "asc"}))
                    count("equals/in ids", status)
                    ids = [int(row["Users.id"]) for row in body.get("data", [])] if status == 200 else None
                    expected_ids = expected_id_lists[operator]
                    if ids != expected_ids or len(expected_ids) != 1:
                        wrong.append(f"{operator} ids {s[:40]!r}: {status} {ids} (expected {expected_ids})")
            for place, query in http_refused_queries(index, s):
                status, body = await self.load(server, token, query)
                count("name/enum/date/number place", status)
                if status != 400 or not isinstance(body.get("error"), str):
                    wrong.append(f"{place} {s[:40]!r}: {status} {str(body)[:200]}")
        elapsed = time.monotonic() - started
        Logger().info("injection corpus: {strings} strings, answers {answered}, {elapsed:.1f} s",
                      strings=len(HOSTILE), answered=json.dumps(answered), elapsed=elapsed)
        self.assertEqual(wrong, [], "\n".join(wrong[:40]))
        # That no payload's pg_sleep ran is shown below by the statements the server saw (no
        # timing assertion: the suite's speed depends on the machine and its load).

        # 2. pg_stat_statements: no statement shape the benign run did not have.
        hostile_ids = await deferToThread(statement_ids, instance)
        # A value psycopg2 cannot send (a NUL byte) ends its transaction with a rollback.
        new = {queryid: text for queryid, text in hostile_ids.items()
               if queryid not in benign_ids and text.strip().lower() != "rollback"}
        self.assertEqual(new, {}, "\n".join(list(new.values())[:10]))
        for text in hostile_ids.values():
            self.assertRegex(text.strip(), r"^(?i:select|begin|commit|rollback)\b", text)

        # 3. The statement log: one statement each, no comment or ; outside literals, known skeletons.
        hostile_log = log_path.read_text(encoding="utf-8", errors="replace")[log_start:]
        statements = log_statements(hostile_log, CUBED_ROLE)
        Logger().info("injection corpus: {statements} statements logged, {ids} pg_stat_statements ids",
                      statements=len(statements), ids=len(hostile_ids))
        self.assertGreater(len(statements), len(STORABLE) * len(VALUE_OPERATORS))
        bad = []
        for statement in statements:
            skeleton, suspicious = lex_skeleton(statement)
            if suspicious or (skeleton not in benign_skeletons and skeleton.lower() != "rollback"):
                bad.append(statement[:300])
        self.assertEqual(bad, [], "\n".join(bad[:10]))
        # The hostile strings did reach the server - inside literals (the client interpolates).
        self.assertIn("DROP TABLE users", hostile_log)
        after = await deferToThread(table_counts, instance)
        self.assertEqual(after, before)


class LexerTests(unittest.TestCase):
    """The little lexer the log check relies on."""

    def test_literals_and_comments(self) -> None:
        cases = {
            "SELECT 'a''b' FROM t": ("SELECT ? FROM t", False),
            "SELECT 'a\\' FROM t": ("SELECT ? FROM t", False),
            "SELECT E'a\\'b' FROM t": ("SELECT ? FROM t", False),
            "SELECT $$x'y$$, $q$z$q$": ("SELECT ?, ?", False),
            "SELECT 'x' -- c": ("SELECT ? -- c", True),
            "SELECT 'x'; DROP TABLE t": ("SELECT ?; DROP TABLE t", True),
            "SELECT '--', '/*', ';'": ("SELECT ?, ?, ?", False),
            "SELECT \"we;ird\" FROM t WHERE a = 10": ("SELECT \"we;ird\" FROM t WHERE a = ?", False),
        }
        for sql, expected in cases.items():
            self.assertEqual(lex_skeleton(sql), expected, sql)

    def test_log_statements(self) -> None:
        text = ("2024-01-01 00:00:00.123 UTC [42] cubed_app x: LOG:  statement: SELECT 1\n"
                "\tFROM t\n"
                "2024-01-01 00:00:00.124 UTC [43] postgres reference: LOG:  statement: SELECT 2\n"
                "2024-01-01 00:00:00.125 UTC [42] cubed_app x: LOG:  statement: commit\n")
        self.assertEqual(log_statements(text, "cubed_app"), ["SELECT 1\n\tFROM t", "commit"])
