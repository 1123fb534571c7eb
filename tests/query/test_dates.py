"""The date module: moment's parsing, dateRange normalization, filter bounds, UTC parameters,
granularity arithmetic and time zones. Expected values come from the real Cube 0.32.7 (its
moment, moment-timezone, dateParser and time-series code, and its ``/v1/sql`` parameters)
unless a test says it checks a deliberate difference."""
from __future__ import annotations

from datetime import datetime, timezone

from twisted.trial import unittest

from cubed.errors import UserError
from cubed.query import dates

UTC = timezone.utc
NOW = datetime(2024, 3, 15, 10, 20, 30, 123000, tzinfo=UTC)

# moment.utc(text) as Cube 0.32.7's moment formats it (None: moment's Invalid date).
MOMENT_UTC: tuple[tuple[str, str | None], ...] = (
    ("2024", "2024-01-01T00:00:00.000"),
    ("2024-01", "2024-01-01T00:00:00.000"),
    ("20240101", "2024-01-01T00:00:00.000"),
    ("202401", "2024-01-01T00:00:00.000"),
    ("2024-01-01T10", "2024-01-01T10:00:00.000"),
    ("2024-01-01T10:00", "2024-01-01T10:00:00.000"),
    ("2024-01-01 10:00:00", "2024-01-01T10:00:00.000"),
    ("2024-01-01T10:00:00.5", "2024-01-01T10:00:00.500"),
    ("2024-01-01T10:00:00.123456", "2024-01-01T10:00:00.123"),
    ("2024-01-01T10:00:00,29", "2024-01-01T10:00:00.290"),
    ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00.000"),
    ("2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00.000"),
    ("2024-01-01T10:00:00-0530", "2024-01-01T15:30:00.000"),
    ("2024-01-01T10:00:00+05", "2024-01-01T05:00:00.000"),
    ("2024-01-01T10:00Z", "2024-01-01T10:00:00.000"),
    ("2024-01-01T10:00 Z", "2024-01-01T10:00:00.000"),
    ("2024-W05", "2024-01-29T00:00:00.000"),
    ("2024-W05-3", "2024-01-31T00:00:00.000"),
    ("2024-W53", None),
    ("2020-W53-7", "2021-01-03T00:00:00.000"),
    ("2024-W00", None),
    ("2024-W05-8", None),
    ("2024-032", "2024-02-01T00:00:00.000"),
    ("2024-366", "2024-12-31T00:00:00.000"),
    ("2023-366", None),
    ("2024-000", None),
    ("2024032", "2024-02-01T00:00:00.000"),
    ("2024W053", "2024-01-31T00:00:00.000"),
    ("20240101T1000", "2024-01-01T10:00:00.000"),
    ("20240101T100000.5Z", "2024-01-01T10:00:00.500"),
    ("2024-13-01", None),
    ("2024-02-30", None),
    ("2024-02-29", "2024-02-29T00:00:00.000"),
    ("2023-02-29", None),
    ("2024-01-01T24:00:00", "2024-01-02T00:00:00.000"),
    ("2024-01-01T24:00:01", None),
    ("2024-01-01T23:60", None),
    ("2024-01-01T23:59:60", None),
    (" 2024-01-01", "2024-01-01T00:00:00.000"),
    ("+002024-01-01", "2024-01-01T00:00:00.000"),
    ("2024-01-01T10:00:00.000+0100", "2024-01-01T09:00:00.000"),
    ("2024-01-01t10:00", None),
    ("2024/01/05", "2024-01-05T00:00:00.000"),
    ("01/05/2024", "2024-01-05T00:00:00.000"),
    ("1/5/24", "2024-01-05T00:00:00.000"),
    ("01-05-2024", "2024-01-05T00:00:00.000"),
    ("Jan 5, 2024", "2024-01-05T00:00:00.000"),
    ("5 Jan 2024", "2024-01-05T00:00:00.000"),
    ("January 5 2024 10:00", "2024-01-05T10:00:00.000"),
    ("jan 5 2024", "2024-01-05T00:00:00.000"),
    ("Jan. 5, 2024", "2024-01-05T00:00:00.000"),
    ("Friday, January 5, 2024", "2024-01-05T00:00:00.000"),
    ("2024-1-5", "2024-01-05T00:00:00.000"),
    ("2024-1-5 10:00", "2024-01-05T10:00:00.000"),
    ("2024/1/5 10:00:30", "2024-01-05T10:00:30.000"),
    ("2024/01/05 10:00:30.250", "2024-01-05T10:00:30.250"),
    ("1/5/2024 10:00 pm", "2024-01-05T22:00:00.000"),
    ("2024-01-05 10:00 PM", "2024-01-05T22:00:00.000"),
    ("Jan 2024", "2024-01-01T00:00:00.000"),
    ("Mon, 01 Jan 2024 10:00:00 GMT", "2024-01-01T10:00:00.000"),
    ("Mon, 01 Jan 2024 10:00 +0100", "2024-01-01T09:00:00.000"),
    ("01 Jan 2024 10:00:00 PST", "2024-01-01T18:00:00.000"),
    ("1 Jan 24 10:00 Z", "2024-01-01T10:00:00.000"),
    ("Tue, 01 Jan 2024 10:00 +0100", None),
    ("garbage", None),
    ("2024-03-31T02:30:00", "2024-03-31T02:30:00.000"),
    ("2024-03-10T02:30:00", "2024-03-10T02:30:00.000"),
    ("2024-10-27T02:30:00", "2024-10-27T02:30:00.000"),
    ("2024-11-03T01:30:00", "2024-11-03T01:30:00.000"),
    ("2024-03-31T02:30:00Z", "2024-03-31T02:30:00.000"),
    ("2024-10-27T02:30:00+05:00", "2024-10-26T21:30:00.000"),
    ("/Date(1704067200000)/", "2024-01-01T00:00:00.000"),
    ("Date(1704067200000)", "2024-01-01T00:00:00.000"),
)

# moment.tz(text, zone) formatted as a local time: Cube's date filter bound for text that is
# neither a local timestamp with milliseconds nor a bare date.
MOMENT_TZ: tuple[tuple[str, str, str], ...] = (
    ("2024-01-05T10:00:00", "Europe/Berlin", "2024-01-05T10:00:00.000"),
    ("2024-01-05T10:00:00", "America/Los_Angeles", "2024-01-05T10:00:00.000"),
    ("2024-01-05 10:00", "Europe/Berlin", "2024-01-05T10:00:00.000"),
    ("2024-01-05 10:00", "America/Los_Angeles", "2024-01-05T10:00:00.000"),
    ("2024-01-05T10:00:00Z", "Europe/Berlin", "2024-01-05T11:00:00.000"),
    ("2024-01-05T10:00:00Z", "America/Los_Angeles", "2024-01-05T02:00:00.000"),
    ("2024-01-05T10:00:00+05:30", "Europe/Berlin", "2024-01-05T05:30:00.000"),
    ("2024-01-05T10:00:00+05:30", "America/Los_Angeles", "2024-01-04T20:30:00.000"),
    ("Jan 5, 2024", "Europe/Berlin", "2024-01-05T01:00:00.000"),
    ("Jan 5, 2024", "America/Los_Angeles", "2024-01-04T16:00:00.000"),
    ("2024-03-31T02:30:00", "Europe/Berlin", "2024-03-31T03:30:00.000"),
    ("2024-03-31T02:30:00", "America/Los_Angeles", "2024-03-31T02:30:00.000"),
    ("2024-10-27T02:30:00", "Europe/Berlin", "2024-10-27T02:30:00.000"),
    ("2024-10-27T02:30:00", "America/Los_Angeles", "2024-10-27T02:30:00.000"),
    ("2024-03-10T02:30:00", "Europe/Berlin", "2024-03-10T02:30:00.000"),
    ("2024-03-10T02:30:00", "America/Los_Angeles", "2024-03-10T03:30:00.000"),
    ("20240705T1000", "Europe/Berlin", "2024-07-05T10:00:00.000"),
    ("20240705T1000", "America/Los_Angeles", "2024-07-05T10:00:00.000"),
    ("2024-W27-5", "Europe/Berlin", "2024-07-05T00:00:00.000"),
    ("2024-W27-5", "America/Los_Angeles", "2024-07-05T00:00:00.000"),
)

# (zone, value, inDateRange "from" parameter, "to" parameter) as Cube 0.32.7 bound them in SQL
# for a filter {"operator": "inDateRange", "values": [value, value]}.
SQL_FILTER_PARAMS: tuple[tuple[str, str, str, str], ...] = (
    ("UTC", "2024-01-05", "2024-01-05T00:00:00.000Z", "2024-01-05T23:59:59.999Z"),
    ("UTC", "2024-01-05T10:00:00.000", "2024-01-05T10:00:00.000Z", "2024-01-05T10:00:00.000Z"),
    ("UTC", "2024-01-05T10:00:00", "2024-01-05T10:00:00.000Z", "2024-01-05T10:00:00.000Z"),
    ("UTC", "2024-01-05 10:00", "2024-01-05T10:00:00.000Z", "2024-01-05T10:00:00.000Z"),
    ("UTC", "2024-01-05T10:00:00Z", "2024-01-05T10:00:00.000Z", "2024-01-05T10:00:00.000Z"),
    ("UTC", "2024-01-05T10:00:00+05:30", "2024-01-05T04:30:00.000Z", "2024-01-05T04:30:00.000Z"),
    ("UTC", "Jan 5, 2024", "2024-01-05T00:00:00.000Z", "2024-01-05T00:00:00.000Z"),
    ("UTC", "2024-07-05T10:00:00.000", "2024-07-05T10:00:00.000Z", "2024-07-05T10:00:00.000Z"),
    ("UTC", "2024-07-05", "2024-07-05T00:00:00.000Z", "2024-07-05T23:59:59.999Z"),
    ("UTC", "2024-W27-5", "2024-07-05T00:00:00.000Z", "2024-07-05T00:00:00.000Z"),
    ("Europe/Berlin", "2024-01-05", "2024-01-04T23:00:00.000Z", "2024-01-05T22:59:59.999Z"),
    ("Europe/Berlin", "2024-01-05T10:00:00.000", "2024-01-05T09:00:00.000Z", "2024-01-05T09:00:00.000Z"),
    ("Europe/Berlin", "2024-01-05T10:00:00", "2024-01-05T09:00:00.000Z", "2024-01-05T09:00:00.000Z"),
    ("Europe/Berlin", "2024-01-05 10:00", "2024-01-05T09:00:00.000Z", "2024-01-05T09:00:00.000Z"),
    ("Europe/Berlin", "2024-01-05T10:00:00Z", "2024-01-05T10:00:00.000Z", "2024-01-05T10:00:00.000Z"),
    ("Europe/Berlin", "2024-01-05T10:00:00+05:30", "2024-01-05T04:30:00.000Z", "2024-01-05T04:30:00.000Z"),
    ("Europe/Berlin", "Jan 5, 2024", "2024-01-05T00:00:00.000Z", "2024-01-05T00:00:00.000Z"),
    ("Europe/Berlin", "2024-07-05T10:00:00.000", "2024-07-05T08:00:00.000Z", "2024-07-05T08:00:00.000Z"),
    ("Europe/Berlin", "2024-07-05", "2024-07-04T22:00:00.000Z", "2024-07-05T21:59:59.999Z"),
    ("Europe/Berlin", "2024-W27-5", "2024-07-04T22:00:00.000Z", "2024-07-04T22:00:00.000Z"),
    ("America/Los_Angeles", "2024-01-05", "2024-01-05T08:00:00.000Z", "2024-01-06T07:59:59.999Z"),
    ("America/Los_Angeles", "2024-01-05T10:00:00.000", "2024-01-05T18:00:00.000Z", "2024-01-05T18:00:00.000Z"),
    ("America/Los_Angeles", "2024-01-05T10:00:00", "2024-01-05T18:00:00.000Z", "2024-01-05T18:00:00.000Z"),
    ("America/Los_Angeles", "2024-01-05 10:00", "2024-01-05T18:00:00.000Z", "2024-01-05T18:00:00.000Z"),
    ("America/Los_Angeles", "2024-01-05T10:00:00Z", "2024-01-05T10:00:00.000Z", "2024-01-05T10:00:00.000Z"),
    ("America/Los_Angeles", "2024-01-05T10:00:00+05:30", "2024-01-05T04:30:00.000Z", "2024-01-05T04:30:00.000Z"),
    ("America/Los_Angeles", "Jan 5, 2024", "2024-01-05T00:00:00.000Z", "2024-01-05T00:00:00.000Z"),
    ("America/Los_Angeles", "2024-07-05T10:00:00.000", "2024-07-05T17:00:00.000Z", "2024-07-05T17:00:00.000Z"),
    ("America/Los_Angeles", "2024-07-05", "2024-07-05T07:00:00.000Z", "2024-07-06T06:59:59.999Z"),
    ("America/Los_Angeles", "2024-W27-5", "2024-07-05T07:00:00.000Z", "2024-07-05T07:00:00.000Z"),
    ("Asia/Kolkata", "2024-01-05", "2024-01-04T18:30:00.000Z", "2024-01-05T18:29:59.999Z"),
    ("Asia/Kolkata", "2024-01-05T10:00:00.000", "2024-01-05T04:30:00.000Z", "2024-01-05T04:30:00.000Z"),
    ("Asia/Kolkata", "2024-01-05T10:00:00", "2024-01-05T04:30:00.000Z", "2024-01-05T04:30:00.000Z"),
    ("Asia/Kolkata", "2024-01-05 10:00", "2024-01-05T04:30:00.000Z", "2024-01-05T04:30:00.000Z"),
    ("Asia/Kolkata", "2024-01-05T10:00:00Z", "2024-01-05T10:00:00.000Z", "2024-01-05T10:00:00.000Z"),
    ("Asia/Kolkata", "2024-01-05T10:00:00+05:30", "2024-01-05T04:30:00.000Z", "2024-01-05T04:30:00.000Z"),
    ("Asia/Kolkata", "Jan 5, 2024", "2024-01-05T00:00:00.000Z", "2024-01-05T00:00:00.000Z"),
    ("Asia/Kolkata", "2024-07-05T10:00:00.000", "2024-07-05T04:30:00.000Z", "2024-07-05T04:30:00.000Z"),
    ("Asia/Kolkata", "2024-07-05", "2024-07-04T18:30:00.000Z", "2024-07-05T18:29:59.999Z"),
    ("Asia/Kolkata", "2024-W27-5", "2024-07-04T18:30:00.000Z", "2024-07-04T18:30:00.000Z"),
)

# Cube's time series (moment-range), as Cube 0.32.7 returned them.
TIME_SERIES: tuple[tuple[str, str, str, list[list[str]]], ...] = (
    ("week", "2024-01-03T00:00:00.000", "2024-01-24T23:59:59.999", [
        ["2024-01-01T00:00:00.000", "2024-01-07T23:59:59.999"], ["2024-01-08T00:00:00.000", "2024-01-14T23:59:59.999"],
        ["2024-01-15T00:00:00.000", "2024-01-21T23:59:59.999"], ["2024-01-22T00:00:00.000", "2024-01-28T23:59:59.999"]]),
    ("month", "2024-01-31T00:00:00.000", "2024-04-02T00:00:00.000", [
        ["2024-01-01T00:00:00.000", "2024-01-31T23:59:59.999"], ["2024-02-01T00:00:00.000", "2024-02-29T23:59:59.999"],
        ["2024-03-01T00:00:00.000", "2024-03-31T23:59:59.999"], ["2024-04-01T00:00:00.000", "2024-04-30T23:59:59.999"]]),
    ("quarter", "2024-02-15T00:00:00.000", "2024-08-01T00:00:00.000", [
        ["2024-01-01T00:00:00.000", "2024-03-31T23:59:59.999"], ["2024-04-01T00:00:00.000", "2024-06-30T23:59:59.999"],
        ["2024-07-01T00:00:00.000", "2024-09-30T23:59:59.999"]]),
    ("year", "2023-06-01T00:00:00.000", "2024-01-01T00:00:00.000", [
        ["2023-01-01T00:00:00.000", "2023-12-31T23:59:59.999"], ["2024-01-01T00:00:00.000", "2024-12-31T23:59:59.999"]]),
    ("day", "2024-02-28T12:00:00.000", "2024-03-01T00:00:00.000", [
        ["2024-02-28T00:00:00.000", "2024-02-28T23:59:59.999"], ["2024-02-29T00:00:00.000", "2024-02-29T23:59:59.999"],
        ["2024-03-01T00:00:00.000", "2024-03-01T23:59:59.999"]]),
    ("hour", "2024-10-27T00:30:00.000", "2024-10-27T03:00:00.000", [
        ["2024-10-27T00:00:00.000", "2024-10-27T00:59:59.999"], ["2024-10-27T01:00:00.000", "2024-10-27T01:59:59.999"],
        ["2024-10-27T02:00:00.000", "2024-10-27T02:59:59.999"], ["2024-10-27T03:00:00.000", "2024-10-27T03:59:59.999"]]),
    ("minute", "2024-01-01T10:58:30.000", "2024-01-01T11:01:00.000", [
        ["2024-01-01T10:58:00.000", "2024-01-01T10:58:59.999"], ["2024-01-01T10:59:00.000", "2024-01-01T10:59:59.999"],
        ["2024-01-01T11:00:00.000", "2024-01-01T11:00:59.999"], ["2024-01-01T11:01:00.000", "2024-01-01T11:01:59.999"]]),
    ("second", "2024-01-01T10:59:58.500", "2024-01-01T11:00:00.000", [
        ["2024-01-01T10:59:58.000", "2024-01-01T10:59:58.999"], ["2024-01-01T10:59:59.000", "2024-01-01T10:59:59.999"],
        ["2024-01-01T11:00:00.000", "2024-01-01T11:00:00.999"]]),
)


class MomentParsingTests(unittest.TestCase):
    """Strings are read the way moment.utc() and moment.tz() read them."""

    def test_moment_utc_table(self) -> None:
        for text, expected in MOMENT_UTC:
            parsed = dates.parse_moment_utc(text)
            self.assertEqual(dates.format_local(parsed) if parsed else None, expected, text)

    def test_moment_tz_table(self) -> None:
        for text, zone_name, expected in MOMENT_TZ:
            self.assertEqual(dates.filter_bound(text, zone_name, end=False), expected, (text, zone_name))

    def test_years_outside_the_calendar_are_refused(self) -> None:
        # moment reads "-002024-01-01" as the year -2024; Python's calendar starts at year 1.
        self.assertIsNone(dates.parse_moment_utc("-002024-01-01"))
        self.assertIsNone(dates.parse_moment_utc("+010000-01-01"))


class NormalizeDateRangeTests(unittest.TestCase):
    """A time dimension's dateRange, as Cube's normalizeQuery formats it."""

    def test_bare_dates_cover_whole_days(self) -> None:
        self.assertEqual(dates.normalize_date_range(["2024-01-01", "2024-03-31"], "UTC"),
                         ("2024-01-01T00:00:00.000", "2024-03-31T23:59:59.999"))

    def test_one_element_is_duplicated(self) -> None:
        self.assertEqual(dates.normalize_date_range(["2024-02-29"], "Europe/Berlin"),
                         ("2024-02-29T00:00:00.000", "2024-02-29T23:59:59.999"))
        self.assertEqual(dates.normalize_date_range(["2024-01-05T10:00:00"], "UTC"),
                         ("2024-01-05T10:00:00.000", "2024-01-05T10:00:00.000"))

    def test_timestamps_keep_their_time(self) -> None:
        # Conformance cases 067 and 217: an end without milliseconds is not stretched to .999.
        self.assertEqual(dates.normalize_date_range(["2024-06-01T00:00:00", "2024-06-02T23:59:59"], "UTC"),
                         ("2024-06-01T00:00:00.000", "2024-06-02T23:59:59.000"))
        self.assertEqual(dates.normalize_date_range(["2024-01-01", "2024-01-07T23:59:59"], "UTC"),
                         ("2024-01-01T00:00:00.000", "2024-01-07T23:59:59.000"))

    def test_offsets_become_utc_wall_time(self) -> None:
        # Cube drops the zone: "Z" and offsets are converted to UTC wall time, whatever the query zone.
        self.assertEqual(dates.normalize_date_range(["2024-01-01T10:00:00Z", "2024-01-02T10:00:00+02:00"],
                                                    "America/Los_Angeles"),
                         ("2024-01-01T10:00:00.000", "2024-01-02T08:00:00.000"))

    def test_every_moment_form_is_accepted_in_an_array(self) -> None:
        for text, expected in MOMENT_UTC:
            if expected is None or dates._DATE_ONLY.fullmatch(text):
                continue
            self.assertEqual(dates.normalize_date_range([text, text], "UTC"), (expected, expected), text)

    def test_a_string_goes_through_the_relative_parser(self) -> None:
        self.assertEqual(dates.normalize_date_range("last 7 days", "UTC", NOW),
                         ("2024-03-08T00:00:00.000", "2024-03-14T23:59:59.999"))
        self.assertEqual(dates.normalize_date_range("from 2024-01-01 to 2024-01-31", "UTC", NOW),
                         ("2024-01-01T00:00:00.000", "2024-01-31T23:59:59.999"))

    def test_unparseable_bounds_are_a_client_error(self) -> None:
        # Deliberate: Cube 0.32.7 formats these as "Invalid date" and the database then fails.
        cases = (
            (["garbage", "2024-02-01"], "Can't parse date: 'garbage'"),
            (["2024-01-01", "x"], "Can't parse date: 'x'"),
            (["2024-02-30", "2024-03-01"], "Can't parse date: '2024-02-30'"),
            (["2024-13-01"], "Can't parse date: '2024-13-01'"),
            ("2024", "Can't parse date: '2024'"),
            ("Garbage", "Can't parse date: 'garbage'"),
        )
        for value, message in cases:
            with self.assertRaises(UserError) as raised:
                dates.normalize_date_range(value, "UTC", NOW)
            self.assertEqual(raised.exception.message, message, value)
            self.assertEqual(raised.exception.status, 400)


class RelativeDateRangeTests(unittest.TestCase):
    """Rules and quirks of Cube's dateParser that the reference table does not spell out."""

    def test_the_clock_is_injectable_and_defaults_to_now(self) -> None:
        start, end = dates.parse_relative_date_range("today", "UTC")
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        self.assertEqual((start[:10], end[:10]), (today, today))
        naive = datetime(2024, 3, 15, 23, 30)
        self.assertEqual(dates.parse_relative_date_range("today", "Europe/Berlin", naive),
                         ("2024-03-16T00:00:00.000", "2024-03-16T23:59:59.999"))

    def test_rule_precedence_quirks(self) -> None:
        # "this|last|next <unit>" anywhere wins, then "last|next N", then today/yesterday/tomorrow.
        self.assertEqual(dates.parse_relative_date_range("from last week to now", "UTC", NOW),
                         ("2024-03-04T00:00:00.000", "2024-03-10T23:59:59.999"))
        self.assertEqual(dates.parse_relative_date_range("from yesterday to now", "UTC", NOW),
                         ("2024-03-14T00:00:00.000", "2024-03-14T23:59:59.999"))
        self.assertEqual(dates.parse_relative_date_range("last 7 days", "UTC", NOW)[1], "2024-03-14T23:59:59.999")

    def test_hour_units_move_the_instant_across_dst(self) -> None:
        # 03:30 CEST on 2024-03-31 is 01:30 UTC: an hour earlier is 01:30 CET (the wall clock
        # jumped from 02:00 to 03:00), so "last hour" is 01:00-01:59.
        spring = datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
        self.assertEqual(dates.parse_relative_date_range("last hour", "Europe/Berlin", spring),
                         ("2024-03-31T01:00:00.000", "2024-03-31T01:59:59.999"))
        # 02:30 CET (second time) on 2024-10-27: an hour earlier is 02:30 CEST (first time).
        autumn = datetime(2024, 10, 27, 1, 30, tzinfo=UTC)
        self.assertEqual(dates.parse_relative_date_range("last hour", "Europe/Berlin", autumn),
                         ("2024-10-27T02:00:00.000", "2024-10-27T02:59:59.999"))

    def test_from_to_with_an_unparseable_end_is_a_client_error(self) -> None:
        # Deliberate: Cube 0.32.7 crashes here with a TypeError (500).
        for phrase, bad in (("from now to garbage", "garbage"),
                            ("from 10 seconds ago to 5 secs ago second", "5 secs ago second")):
            with self.assertRaises(UserError) as raised:
                dates.parse_relative_date_range(phrase, "UTC", NOW)
            self.assertEqual(raised.exception.message, f"Can't parse date: '{bad}'")

    def test_out_of_range_years_are_a_client_error(self) -> None:
        for phrase in ("last 100000 years", "next 9999999999999999999999 days", "from 9999999 days ago to now"):
            with self.assertRaises(UserError):
                dates.parse_relative_date_range(phrase, "UTC", NOW)

    def test_unknown_zone(self) -> None:
        with self.assertRaises(UserError):
            dates.parse_relative_date_range("today", "Mars/Olympus", NOW)


class UtcParameterTests(unittest.TestCase):
    """Local bounds in the query zone -> the UTC instants bound into SQL."""

    def test_filter_bounds_as_cube_binds_them(self) -> None:
        for zone_name, value, start, end in SQL_FILTER_PARAMS:
            self.assertEqual(dates.local_to_utc_param(dates.filter_bound(value, zone_name, end=False), zone_name),
                             start, (zone_name, value))
            self.assertEqual(dates.local_to_utc_param(dates.filter_bound(value, zone_name, end=True), zone_name),
                             end, (zone_name, value))

    def test_dst_gaps_and_overlaps_follow_moment_timezone(self) -> None:
        # moment.tz(local, zone): a time in the spring gap moves forward by the gap, an
        # ambiguous autumn time takes the earlier (summer-time) offset.
        cases = (
            ("2024-03-31T02:30:00.000", "Europe/Berlin", "2024-03-31T01:30:00.000Z"),
            ("2024-10-27T02:30:00.000", "Europe/Berlin", "2024-10-27T00:30:00.000Z"),
            ("2024-10-27T01:59:59.999", "Europe/Berlin", "2024-10-26T23:59:59.999Z"),
            ("2024-10-27T03:00:00.000", "Europe/Berlin", "2024-10-27T02:00:00.000Z"),
            ("2024-03-10T02:30:00.000", "America/Los_Angeles", "2024-03-10T10:30:00.000Z"),
            ("2024-11-03T01:30:00.000", "America/Los_Angeles", "2024-11-03T08:30:00.000Z"),
        )
        for local, zone_name, expected in cases:
            self.assertEqual(dates.local_to_utc_param(local, zone_name), expected, (local, zone_name))

    def test_hours_after_a_change_use_the_new_offset(self) -> None:
        # Deliberate: Cube 0.32's inDbTimeZone reads the offset at the wall time taken as UTC
        # and binds 2024-03-30T23:30:00.000Z and 2024-03-10T13:00:00.000Z here, an hour off.
        self.assertEqual(dates.local_to_utc_param("2024-03-31T01:30:00.000", "Europe/Berlin"),
                         "2024-03-31T00:30:00.000Z")
        self.assertEqual(dates.local_to_utc_param("2024-03-10T05:00:00.000", "America/Los_Angeles"),
                         "2024-03-10T12:00:00.000Z")

    def test_a_missing_filter_value_is_today(self) -> None:
        self.assertEqual(dates.filter_bound(None, "America/Los_Angeles", end=False, now=NOW), "2024-03-15T00:00:00.000")
        self.assertEqual(dates.filter_bound("", "America/Los_Angeles", end=True, now=NOW), "2024-03-15T23:59:59.999")

    def test_an_unreadable_filter_value_is_a_client_error(self) -> None:
        with self.assertRaises(UserError) as raised:
            dates.filter_bound("next tuesday-ish", "UTC", end=False)
        self.assertEqual(raised.exception.message, "Can't parse date: 'next tuesday-ish'")


class DateFilterValueTests(unittest.TestCase):
    """Relative dates in date filters are resolved as newer Cube resolves them."""

    def test_range_operators_take_the_whole_range(self) -> None:
        for operator in ("inDateRange", "notInDateRange", "onTheDate"):
            self.assertEqual(dates.resolve_date_filter_values(operator, ["last week"], "UTC", NOW),
                             ["2024-03-04T00:00:00.000", "2024-03-10T23:59:59.999"])
        self.assertEqual(dates.resolve_date_filter_values("onTheDate", ["2024-01-05"], "UTC", NOW),
                         ["2024-01-05T00:00:00.000", "2024-01-05T23:59:59.999"])

    def test_before_and_after_take_one_end(self) -> None:
        resolved = {op: dates.resolve_date_filter_values(op, ["yesterday"], "Europe/Berlin", NOW)
                    for op in ("beforeDate", "afterOrOnDate", "beforeOrOnDate", "afterDate")}
        self.assertEqual(resolved, {
            "beforeDate": ["2024-03-14T00:00:00.000"], "afterOrOnDate": ["2024-03-14T00:00:00.000"],
            "beforeOrOnDate": ["2024-03-14T23:59:59.999"], "afterDate": ["2024-03-14T23:59:59.999"],
        })

    def test_absolute_values_are_left_alone(self) -> None:
        self.assertIsNone(dates.resolve_date_filter_values("beforeDate", ["2024-01-05T10:00:00Z"], "UTC", NOW))
        self.assertIsNone(dates.resolve_date_filter_values("inDateRange", ["2024-01-01", "2024-01-31"], "UTC", NOW))
        self.assertIsNone(dates.resolve_date_filter_values("afterDate", [None], "UTC", NOW))

    def test_relative_strings_among_several_range_values_are_refused(self) -> None:
        with self.assertRaises(UserError) as raised:
            dates.resolve_date_filter_values("inDateRange", ["last week", "2024-01-01"], "UTC", NOW)
        self.assertEqual(raised.exception.message,
                         "Relative-date strings are only supported when `values` has a single element for "
                         "operator `inDateRange`. Pass an absolute two-element [start, end] pair, or a single "
                         "relative string like [\"last 2 weeks\"]. Got: [\"last week\",\"2024-01-01\"]")


class GranularityTests(unittest.TestCase):
    """Truncation, period ends, calendar arithmetic and Cube's time series."""

    def test_truncate_local(self) -> None:
        value = datetime(2024, 8, 14, 13, 45, 30, 250000)  # a Wednesday
        expected = {
            "second": datetime(2024, 8, 14, 13, 45, 30), "minute": datetime(2024, 8, 14, 13, 45),
            "hour": datetime(2024, 8, 14, 13), "day": datetime(2024, 8, 14), "week": datetime(2024, 8, 12),
            "month": datetime(2024, 8, 1), "quarter": datetime(2024, 7, 1), "year": datetime(2024, 1, 1),
        }
        self.assertEqual({g: dates.truncate_local(value, g) for g in dates.GRANULARITIES}, expected)

    def test_end_of_local(self) -> None:
        value = datetime(2024, 2, 14, 13, 45)
        self.assertEqual(dates.format_local(dates.end_of_local(value, "month")), "2024-02-29T23:59:59.999")
        self.assertEqual(dates.format_local(dates.end_of_local(value, "week")), "2024-02-18T23:59:59.999")
        self.assertEqual(dates.format_local(dates.end_of_local(value, "quarter")), "2024-03-31T23:59:59.999")

    def test_add_local_clamps_month_ends(self) -> None:
        self.assertEqual(dates.add_local(datetime(2024, 1, 31), "month", 1), datetime(2024, 2, 29))
        self.assertEqual(dates.add_local(datetime(2024, 2, 29), "year", 1), datetime(2025, 2, 28))
        self.assertEqual(dates.add_local(datetime(2024, 11, 30), "quarter", 1), datetime(2025, 2, 28))

    def test_time_series_as_cube(self) -> None:
        for granularity, start, end, expected in TIME_SERIES:
            self.assertEqual([list(pair) for pair in dates.time_series(start, end, granularity)], expected,
                             granularity)

    def test_time_series_limit(self) -> None:
        with self.assertRaises(UserError):
            dates.time_series("2024-01-01T00:00:00.000", "2024-12-31T23:59:59.999", "second", max_periods=1000)
        self.assertEqual(len(dates.time_series("2024-01-01", "2024-12-31", "day", max_periods=366)), 366)


class TimeZoneTests(unittest.TestCase):
    def test_is_valid_timezone(self) -> None:
        for name in ("UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata", "Etc/GMT+5"):
            self.assertTrue(dates.is_valid_timezone(name), name)
        for name in ("Mars/Olympus", "", "../etc/passwd", "Europe/", "+01:00"):
            self.assertFalse(dates.is_valid_timezone(name), name)

    def test_canonical_spelling(self) -> None:
        self.assertEqual(dates.canonical_timezone("america/los_angeles"), "America/Los_Angeles")
        self.assertEqual(dates.canonical_timezone("utc"), "UTC")
        self.assertIsNone(dates.canonical_timezone("Nowhere/Land"))

    def test_local_and_back(self) -> None:
        local = dates.local_now("Asia/Kolkata", NOW)
        self.assertEqual(dates.format_local(local), "2024-03-15T15:50:30.123")
        self.assertEqual(dates.local_to_utc(local, "Asia/Kolkata"), NOW)
        self.assertEqual(dates.format_utc(NOW), "2024-03-15T10:20:30.123Z")
