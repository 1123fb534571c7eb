"""The request parser: the query parameter, normalization into Query objects, query types,
limits, the pivot query, and every place cubed deliberately answers differently from Cube
0.32.7 (each test names what Cube answered). Recorded Cube answers are replayed in
test_request_reference.py."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from twisted.trial import unittest

from cubed.config import Settings
from cubed.errors import UserError
from cubed.query.request import (
    BLENDING_QUERY, COMPARE_DATE_RANGE_QUERY, REGULAR_QUERY, expand_query, normalize_query,
    parse_query_param, pivot_query, unsupported_query_type_message, validate_post_rewrite,
)
from cubed.query.types import FilterCondition, FilterGroup, OrderItem, Query, TimeDimension

NOW = datetime(2024, 3, 15, 10, 20, 30, 123000, tzinfo=timezone.utc)
SETTINGS = Settings()


def one(raw: Any, settings: Settings = SETTINGS) -> Query:
    query_type, queries = expand_query(raw, settings, NOW)
    assert query_type == REGULAR_QUERY and len(queries) == 1
    return queries[0]


class ErrorAssertions(unittest.TestCase):
    def assertUserError(self, raw: Any, message: str, settings: Settings = SETTINGS) -> None:
        with self.assertRaises(UserError) as raised:
            expand_query(raw, settings, NOW)
        self.assertEqual(raised.exception.message, message)
        self.assertEqual(raised.exception.status, 400)


class QueryParamTests(unittest.TestCase):
    def test_missing_values(self) -> None:
        # Cube tests `!query || query === 'undefined'`, so JavaScript's falsy values count as missing.
        for value in (None, "", "undefined", 0, 0.0, False, float("nan")):
            with self.assertRaises(UserError) as raised:
                parse_query_param(value)
            self.assertEqual(raised.exception.message, "query param is required", repr(value))

    def test_json_text_is_decoded_and_objects_pass(self) -> None:
        self.assertEqual(parse_query_param('{"measures":["Orders.count"]}'), {"measures": ["Orders.count"]})
        self.assertEqual(parse_query_param(b'[{"measures":["A.b"]}]'), [{"measures": ["A.b"]}])
        value = {"measures": ["Orders.count"]}
        self.assertIs(parse_query_param(value), value)
        self.assertEqual(parse_query_param("0"), 0)  # only the raw value is tested for falsiness

    def test_bad_json_is_a_client_error(self) -> None:
        # Deliberate: Cube 0.32.7 answers 500 "SyntaxError: ..." (conformance cases 332, 333).
        for text in ('{"measures":["Orders.count"]', "abc", '{"limit": NaN}', '{"limit": Infinity}', "[" * 100000):
            with self.assertRaises(UserError) as raised:
                parse_query_param(text)
            self.assertTrue(raised.exception.message.startswith("Unable to decode query param as JSON, error: "),
                            raised.exception.message)
            self.assertEqual(raised.exception.status, 400)
        with self.assertRaises(UserError) as raised:
            parse_query_param('{"measures":["Orders.count"]')
        self.assertEqual(raised.exception.message,
                         "Unable to decode query param as JSON, error: Expecting ',' delimiter in JSON at position 28")


class NormalizationTests(unittest.TestCase):
    def test_a_typical_query(self) -> None:
        query = one({
            "measures": ["Orders.count"],
            "dimensions": ["Orders.status", "Orders.createdAt.week"],
            "segments": ["Orders.completed"],
            "timeDimensions": [{"dimension": "Orders.completedAt", "granularity": "day",
                                "dateRange": ["2024-01-01", "2024-01-31"]}],
            "filters": [
                {"dimension": "Orders.status", "operator": "equals", "values": ["shipped", None]},
                {"or": [{"member": "Orders.amount", "operator": "gt", "values": ["10"]},
                        {"and": [{"dimension": "Users.city", "operator": "set"}]}]},
            ],
            "order": [["Orders.count", "desc"], ["Orders.status", "asc"]],
            "limit": 20, "offset": 5, "total": True, "ungrouped": False, "renewQuery": True,
            "timezone": "America/Los_Angeles", "responseFormat": "compact",
        })
        self.assertEqual(query, Query(
            measures=("Orders.count",),
            dimensions=("Orders.status",),
            segments=("Orders.completed",),
            time_dimensions=(
                TimeDimension("Orders.completedAt", "day", ("2024-01-01T00:00:00.000", "2024-01-31T23:59:59.999")),
                TimeDimension("Orders.createdAt", "week"),
            ),
            filters=(
                FilterCondition("Orders.status", "equals", ("shipped", None)),
                FilterGroup("or", (
                    FilterCondition("Orders.amount", "gt", ("10",)),
                    FilterGroup("and", (FilterCondition("Users.city", "set", None),)),
                )),
            ),
            order=(OrderItem("Orders.count", True), OrderItem("Orders.status", False)),
            limit=20, offset=5, timezone="America/Los_Angeles", total=True, ungrouped=False,
            renew_query=True, response_format="compact", cache_mode="stale-if-slow",
        ))

    def test_echo_keeps_keys_as_sent_then_appends_cubes(self) -> None:
        query = one({"limit": 3, "measures": ["Orders.count"],
                     "filters": [{"values": ["a"], "dimension": "Orders.status", "operator": "equals"},
                                 {"or": [{"dimension": "Orders.status", "operator": "equals", "values": ["b"]}]}],
                     "dimensions": ["Orders.createdAt.day"]})
        self.assertEqual(json.dumps(query.echo), json.dumps({
            "limit": 3, "measures": ["Orders.count"],
            "filters": [{"values": ["a"], "operator": "equals", "member": "Orders.status"},
                        {"or": [{"dimension": "Orders.status", "operator": "equals", "values": ["b"]}]}],
            "dimensions": [],
            "rowLimit": 3, "timezone": "UTC", "order": [],
            "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "day"}],
        }))

    def test_order_object(self) -> None:
        query = one({"measures": ["Orders.count"], "order": {"Orders.count": "desc", "Orders.status": "asc"}})
        self.assertEqual(query.order, (OrderItem("Orders.count", True), OrderItem("Orders.status", False)))
        self.assertEqual(query.echo["order"], [{"id": "Orders.count", "desc": True},
                                               {"id": "Orders.status", "desc": False}])
        self.assertEqual(one({"measures": ["Orders.count"], "order": {}}).order, ())

    def test_defaults_come_from_settings(self) -> None:
        settings = Settings(default_timezone="Europe/Berlin", db_query_default_limit=100, db_query_limit=500)
        query = one({"measures": ["Orders.count"]}, settings)
        self.assertEqual((query.timezone, query.limit, query.echo["timezone"], query.echo["limit"]),
                         ("Europe/Berlin", 100, "Europe/Berlin", 100))
        self.assertEqual(one({"measures": ["Orders.count"], "limit": 500}, settings).limit, 500)
        # The default never exceeds the query limit.
        self.assertEqual(one({"measures": ["Orders.count"]}, Settings(db_query_default_limit=900,
                                                                      db_query_limit=500)).limit, 500)

    def test_relative_date_range_uses_the_clock_and_zone(self) -> None:
        query = one({"measures": ["Orders.count"], "timezone": "Europe/Berlin",
                     "timeDimensions": [{"dimension": "Orders.createdAt", "dateRange": "last week"}]})
        self.assertEqual(query.time_dimensions[0].date_range, ("2024-03-04T00:00:00.000", "2024-03-10T23:59:59.999"))
        self.assertEqual(query.echo["timeDimensions"][0]["dateRange"],
                         ["2024-03-04T00:00:00.000", "2024-03-10T23:59:59.999"])

    def test_relative_dates_in_date_filters(self) -> None:
        # Newer Cube resolves them (0.32.7 passes "last week" to the database); the echo keeps
        # the values as sent, as 0.32.7 echoes them.
        query = one({"measures": ["Orders.count"], "filters": [
            {"member": "Orders.createdAt", "operator": "inDateRange", "values": ["last week"]},
            {"or": [{"member": "Orders.createdAt", "operator": "beforeDate", "values": ["yesterday"]},
                    {"member": "Orders.createdAt", "operator": "afterOrOnDate", "values": ["2024-01-01"]}]},
        ]})
        self.assertEqual(query.filters, (
            FilterCondition("Orders.createdAt", "inDateRange", ("2024-03-04T00:00:00.000", "2024-03-10T23:59:59.999")),
            FilterGroup("or", (
                FilterCondition("Orders.createdAt", "beforeDate", ("2024-03-14T00:00:00.000",)),
                FilterCondition("Orders.createdAt", "afterOrOnDate", ("2024-01-01",)),
            )),
        ))
        self.assertEqual(query.echo["filters"][0]["values"], ["last week"])

    def test_relative_date_errors_in_filters(self) -> None:
        with self.assertRaises(UserError) as raised:
            one({"measures": ["Orders.count"],
                 "filters": [{"member": "Orders.createdAt", "operator": "inDateRange", "values": ["last week", "now"]}]})
        self.assertTrue(raised.exception.message.startswith("Relative-date strings are only supported"))
        with self.assertRaises(UserError) as raised:
            one({"measures": ["Orders.count"],
                 "filters": [{"member": "Orders.createdAt", "operator": "onTheDate", "values": ["whenever"]}]})
        self.assertEqual(raised.exception.message, "Can't parse date: 'whenever'")

    def test_cache_mode(self) -> None:
        base = {"measures": ["Orders.count"]}
        self.assertEqual(one(base).cache_mode, "stale-if-slow")
        self.assertEqual(one({**base, "cacheMode": "no-cache"}).cache_mode, "no-cache")
        self.assertEqual(one({**base, "cache": "must-revalidate", "cacheMode": "no-cache"}).cache_mode,
                         "must-revalidate")
        _, queries = expand_query({**base, "cache": "no-cache"}, SETTINGS, NOW, cache_mode="stale-while-revalidate")
        self.assertEqual(queries[0].cache_mode, "stale-while-revalidate")

    def test_normalize_query_reports_the_explicit_limit(self) -> None:
        query, explicit = normalize_query({"measures": ["Orders.count"], "limit": 60000}, SETTINGS, NOW)
        self.assertEqual((query.limit, explicit), (60000, 60000))
        self.assertEqual(normalize_query({"measures": ["Orders.count"]}, SETTINGS, NOW)[1], None)


class LimitTests(unittest.TestCase):
    def test_limit_above_the_query_limit_is_a_400_with_cubes_text(self) -> None:
        """Cube answers 500 (a plain Error); it is the client's error: 400, the same text."""
        with self.assertRaises(UserError) as raised:
            expand_query({"measures": ["Orders.count"], "limit": 50001}, SETTINGS, NOW)
        self.assertEqual(raised.exception.status, 400)
        self.assertEqual(raised.exception.body(), {"error": "The query limit has been exceeded."})
        with self.assertRaises(UserError):
            expand_query({"measures": ["Orders.count"], "limit": 11}, Settings(db_query_limit=10), NOW)

    def test_limit_zero_is_refused_as_by_cube(self) -> None:
        with self.assertRaises(UserError) as raised:
            expand_query({"measures": ["Orders.count"], "limit": 0}, SETTINGS, NOW)
        self.assertEqual(raised.exception.message, 'Invalid query format: "limit" must be greater than or equal to 1')


class DeliberateDifferenceTests(ErrorAssertions):
    """Where cubed answers differently from Cube 0.32.7, on purpose."""

    def test_numbers_and_booleans_sent_as_strings_are_used(self) -> None:
        # Cube's Joi accepts them but Cube ignores the limit (no LIMIT at all) and treats "false" as true.
        query = one({"measures": ["Orders.count"], "limit": "10", "offset": " 5 ", "total": "false",
                     "renewQuery": "TRUE", "ungrouped": "false"})
        self.assertEqual((query.limit, query.offset, query.total, query.renew_query, query.ungrouped),
                         (10, 5, False, True, False))
        self.assertEqual(json.dumps(query.echo), json.dumps({
            "measures": ["Orders.count"], "limit": 10, "offset": 5, "total": False, "renewQuery": True,
            "ungrouped": False, "rowLimit": 10, "timezone": "UTC", "order": [], "filters": [], "dimensions": [],
            "timeDimensions": []}))
        self.assertEqual(one({"measures": ["Orders.count"], "limit": "1e2"}).limit, 100)

    def test_unsafe_number_strings(self) -> None:
        for value in ("9007199254740993", "1e400", "1.00000000000000000001e2"):
            self.assertUserError({"measures": ["Orders.count"], "limit": value},
                                 'Invalid query format: "limit" must be a safe number')
        self.assertUserError({"measures": ["Orders.count"], "limit": float("inf")},
                             'Invalid query format: "limit" cannot be infinity')
        self.assertUserError({"measures": ["Orders.count"], "limit": float("nan")},
                             'Invalid query format: "limit" must be a number')

    def test_newer_cube_keys_and_operators_are_accepted(self) -> None:
        # Cube 0.32.7: '"cache" is not allowed', '"filters[0]" does not match any of the allowed types'.
        query = one({"measures": ["Orders.count"], "cache": "no-cache", "filters": [
            {"member": "Orders.createdAt", "operator": "beforeOrOnDate", "values": ["2024-01-01"]},
            {"member": "Orders.createdAt", "operator": "afterOrOnDate", "values": ["2024-01-01"]}]})
        self.assertEqual([f.operator for f in query.filters], ["beforeOrOnDate", "afterOrOnDate"])
        self.assertEqual(query.echo["cache"], "no-cache")
        self.assertUserError({"measures": ["Orders.count"], "cacheMode": "sometimes"},
                             'Invalid query format: "cacheMode" must be one of '
                             '[stale-if-slow, stale-while-revalidate, must-revalidate, no-cache]')

    def test_timezone_must_be_iana(self) -> None:
        # Cube 0.32.7 leaves it to the database: 400 'time zone "Mars/Olympus" not recognized' (cases 365, 366).
        self.assertUserError({"measures": ["Orders.count"], "timezone": "Mars/Olympus"},
                             'Invalid query format: "timezone" must be a valid IANA time zone, got "Mars/Olympus"')
        query = one({"measures": ["Orders.count"], "timezone": "america/los_angeles"})
        self.assertEqual((query.timezone, query.echo["timezone"]), ("America/Los_Angeles", "america/los_angeles"))

    def test_empty_values(self) -> None:
        # Parsed here; refused by the planner once the member is resolved (test_plan).
        self.assertEqual(one({"measures": ["Orders.count"], "filters": [
            {"member": "Orders.status", "operator": "equals", "values": []}]}).filters[0].values, ())
        self.assertEqual(one({"measures": ["Orders.count"], "filters": [
            {"member": "Orders.status", "operator": "notSet", "values": []}]}).filters[0].values, ())

    def test_filter_objects_inside_values(self) -> None:
        # Cube 0.32.7 lets them through (Joi's link('...')) and fails later.
        self.assertUserError(
            {"measures": ["Orders.count"], "filters": [{"member": "Orders.status", "operator": "equals",
                                                        "values": [{"member": "Orders.status", "operator": "equals",
                                                                    "values": ["a"]}]}]},
            'Invalid query format: "filters[0]" does not match any of the allowed types')

    def test_shapes_that_crash_cube(self) -> None:
        # Cube 0.32.7 answers each with a 500 TypeError.
        cases = (
            ({"measures": ["Orders.count"], "timeDimensions": "x"}, '"timeDimensions" must be an array'),
            ({"measures": ["Orders.count"], "timeDimensions": {}}, '"timeDimensions" must be an array'),
            ({"measures": ["Orders.count"], "timeDimensions": [None]}, '"timeDimensions[0]" must be of type object'),
            ({"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt",
                                                                 "compareDateRange": "x"}]},
             '"timeDimensions[0].compareDateRange" must be an array'),
            ({"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt",
                                                                 "compareDateRange": []}]},
             '"timeDimensions[0].compareDateRange" must contain at least 1 items'),
            (None, '"value" must be of type object'),
        )
        for raw, message in cases:
            self.assertUserError(raw, f"Invalid query format: {message}")

    def test_unparseable_date_ranges(self) -> None:
        # Cube 0.32.7 sends "Invalid date" to the database.
        self.assertUserError({"measures": ["Orders.count"], "timeDimensions": [
            {"dimension": "Orders.createdAt", "dateRange": ["garbage", "2024-02-01"]}]}, "Can't parse date: 'garbage'")
        self.assertUserError({"measures": ["Orders.count"], "timeDimensions": [
            {"dimension": "Orders.createdAt", "compareDateRange": [["2024-01-01", "2024-01-02"], ["2024-01-01", "x"]]}]},
            "Can't parse date: 'x'")

    def test_blending_pivot_skips_missing_measures(self) -> None:
        # Cube 0.32.7 lists null for the query without measures.
        query_type, queries = expand_query([
            {"dimensions": ["Orders.status"], "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month"}]},
            {"measures": ["Users.count"], "timeDimensions": [{"dimension": "Users.createdAt", "granularity": "month"}]},
        ], SETTINGS, NOW)
        self.assertEqual(pivot_query(query_type, queries)["measures"], ["Users.count"])


class QueryTypeTests(ErrorAssertions):
    def test_compare_date_range(self) -> None:
        query_type, queries = expand_query({
            "measures": ["Orders.count"],
            "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "day",
                                "compareDateRange": ["this week", ["2023-01-01"], "from 2022-01-01 to 2022-01-05"]}],
        }, SETTINGS, NOW)
        self.assertEqual(query_type, COMPARE_DATE_RANGE_QUERY)
        self.assertEqual([q.time_dimensions[0].date_range for q in queries], [
            ("2024-03-11T00:00:00.000", "2024-03-17T23:59:59.999"),
            ("2023-01-01T00:00:00.000", "2023-01-01T23:59:59.999"),
            ("2022-01-01T00:00:00.000", "2022-01-05T23:59:59.999"),
        ])
        self.assertTrue(all(q.time_dimensions[0].compare_date_range is None for q in queries))
        pivot = pivot_query(query_type, queries)
        self.assertEqual((pivot["dimensions"], pivot["queryType"]), (["compareDateRange"], COMPARE_DATE_RANGE_QUERY))
        self.assertNotIn("queryType", queries[0].echo)  # the pivot is a copy, the echo stays as it was

    def test_compare_date_range_in_two_time_dimensions(self) -> None:
        # Checked before the schema, as in Cube: the measures error is not reported.
        self.assertUserError({"measures": "bad", "timeDimensions": [
            {"dimension": "Orders.createdAt", "compareDateRange": [["2024-01-01", "2024-01-02"]]},
            {"dimension": "Orders.completedAt", "compareDateRange": [["2024-01-01", "2024-01-02"]]}]},
            "compareDateRange can only exist for one timeDimension")

    def test_blending(self) -> None:
        query_type, queries = expand_query([
            {"measures": ["Orders.count"], "dimensions": ["Orders.status"],
             "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "quarter"}]},
            {"measures": ["Users.count", "Orders.count"], "dimensions": ["Orders.status", "Users.city"],
             "timeDimensions": [{"dimension": "Users.createdAt", "granularity": "quarter"}]},
        ], SETTINGS, NOW)
        self.assertEqual(query_type, BLENDING_QUERY)
        self.assertEqual(pivot_query(query_type, queries), {
            "measures": ["Orders.count", "Users.count"], "dimensions": ["Orders.status", "Users.city"],
            "timeDimensions": [{"dimension": "time", "granularity": "quarter"}], "queryType": BLENDING_QUERY})

    def test_blending_checks(self) -> None:
        day = {"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "day"}]}
        month = {"measures": ["Users.count"], "timeDimensions": [{"dimension": "Users.createdAt", "granularity": "month"}]}
        self.assertUserError([day, month], "Data blending query granularities must match")
        self.assertUserError([], "Data blending query without granularity is not supported")
        self.assertUserError([{"measures": ["Orders.count"]}], "Data blending query without granularity is not supported")
        # A query without granularity may join one that has it.
        self.assertEqual(expand_query([day, {"measures": ["Users.count"]}], SETTINGS, NOW)[0], BLENDING_QUERY)

    def test_unsupported_query_type_message(self) -> None:
        # Conformance case 251, verbatim (no space before "Please").
        self.assertEqual(unsupported_query_type_message(COMPARE_DATE_RANGE_QUERY),
                         "'compareDateRangeQuery' query type is not supported by the client.Please update the client.")

    def test_validate_post_rewrite(self) -> None:
        query = one({"measures": ["Orders.count"]})
        self.assertIs(validate_post_rewrite(query), query)
        for empty in (Query(), Query(time_dimensions=(TimeDimension("Orders.createdAt"),))):
            with self.assertRaises(UserError) as raised:
                validate_post_rewrite(empty)
            self.assertEqual(raised.exception.message, "Query should contain either measures, dimensions or "
                                                       "timeDimensions with granularities in order to be valid")


class JoiOrderTests(ErrorAssertions):
    """Joi reports the first error: schema keys in schema order, then unknown keys as sent."""

    def test_schema_order_wins_over_input_order(self) -> None:
        self.assertUserError({"x": 1, "responseFormat": "table", "measures": "Orders.count"},
                             'Invalid query format: "measures" must be an array')
        self.assertUserError({"offset": -1, "limit": 0, "measures": ["Orders.count"]},
                             'Invalid query format: "limit" must be greater than or equal to 1')

    def test_unknown_keys_come_last_in_input_order(self) -> None:
        self.assertUserError({"y": 1, "x": 1, "measures": ["Orders.count"], "limit": "ten"},
                             'Invalid query format: "limit" must be a number')
        self.assertUserError({"y": 1, "x": 1, "measures": ["Orders.count"]}, 'Invalid query format: "y" is not allowed')

    def test_inside_a_time_dimension(self) -> None:
        self.assertUserError({"measures": ["Orders.count"], "timeDimensions": [
            {"x": 1, "dateRange": 5, "granularity": "fortnight", "dimension": "Orders.createdAt"}]},
            'Invalid query format: "timeDimensions[0].granularity" must be one of '
            '[quarter, day, month, year, week, hour, minute, second, null]')

    def test_order_object_checks_values_before_unknown_keys(self) -> None:
        self.assertUserError({"measures": ["Orders.count"], "order": {"bad": "asc", "Orders.count": "up"}},
                             'Invalid query format: "order.Orders.count" must be one of [asc, desc]')
