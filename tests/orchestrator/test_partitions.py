"""Pre-aggregation table names and partitions: Cube's version digests and base-32 times,
names parsed back, partition ranges across months, weeks and DST changes."""
from __future__ import annotations

from datetime import datetime

from twisted.trial.unittest import SynchronousTestCase

from cubed.orchestrator.partitions import (decode_timestamp, encode_timestamp, overlaps, parse_table_name, partitions,
                                           physical_name, version)


class VersionTests(SynchronousTestCase):
    def test_cube_digests(self) -> None:
        # Values computed with Cube's own version() (query-orchestrator PreAggregations.js) in node.
        self.assertEqual(version(["CREATE TABLE x AS SELECT 1", []]), "i0insxys")
        self.assertEqual(version([["a", ["b"]], [1, None, "é"]]), "hvfyuwnw")

    def test_timestamps_in_base_32(self) -> None:
        self.assertEqual(encode_timestamp(1764150000.123), "1kiding")  # (1764150000).toString(32) in node
        self.assertEqual(decode_timestamp("1kiding"), 1764150000.0)
        self.assertEqual(decode_timestamp("1764150000123"), 1764150000.123)  # legacy milliseconds

    def test_names_round_trip(self) -> None:
        name = physical_name("orders_main20240101", "abcdefgh", "ijklmnop", 1764150000)
        self.assertEqual(name, "orders_main20240101_abcdefgh_ijklmnop_1kiding")
        parsed = parse_table_name(name)
        assert parsed is not None
        self.assertEqual((parsed.logical, parsed.content, parsed.structure, parsed.updated_at),
                         ("orders_main20240101", "abcdefgh", "ijklmnop", 1764150000.0))
        self.assertIsNone(parse_table_name("orders"))
        self.assertIsNone(parse_table_name("a_b_c_not-base32!"))


class PartitionTests(SynchronousTestCase):
    def test_months(self) -> None:
        found = partitions(datetime(2024, 1, 15, 3), datetime(2024, 3, 2), "month", "UTC")
        self.assertEqual([p.suffix for p in found], ["20240101", "20240201", "20240301"])
        self.assertEqual(found[1].date_range, ("2024-02-01T00:00:00.000", "2024-02-29T23:59:59.999"))
        self.assertEqual(found[0].end, 1706745600.0)  # 2024-02-01T00:00:00Z

    def test_weeks_start_monday_and_hours_have_longer_suffixes(self) -> None:
        weeks = partitions(datetime(2024, 1, 3), datetime(2024, 1, 10), "week", "UTC")
        self.assertEqual([p.suffix for p in weeks], ["20240101", "20240108"])
        hours = partitions(datetime(2024, 1, 1, 22, 30), datetime(2024, 1, 2, 0, 10), "hour", "UTC")
        self.assertEqual([p.suffix for p in hours], ["2024010122", "2024010123", "2024010200"])

    def test_quarters_and_years(self) -> None:
        self.assertEqual([p.suffix for p in partitions(datetime(2023, 11, 5), datetime(2024, 4, 1), "quarter", "UTC")],
                         ["20231001", "20240101", "20240401"])
        self.assertEqual([p.suffix for p in partitions(datetime(2023, 11, 5), datetime(2025, 1, 1), "year", "UTC")],
                         ["20230101", "20240101", "20250101"])

    def test_partition_ends_in_the_zone(self) -> None:
        # Berlin's day of the spring change has 23 hours: its end is 22:00 UTC of that day.
        [day] = partitions(datetime(2024, 3, 31, 12), datetime(2024, 3, 31, 13), "day", "Europe/Berlin")
        self.assertEqual(day.end, 1711922400.0)  # 2024-03-31T22:00:00Z

    def test_overlaps(self) -> None:
        [january] = partitions(datetime(2024, 1, 5), datetime(2024, 1, 6), "month", "UTC")
        self.assertTrue(overlaps(january, None))
        self.assertTrue(overlaps(january, ("2023-12-01T00:00:00.000", "2024-01-01T00:00:00.000")))
        self.assertFalse(overlaps(january, ("2024-02-01T00:00:00.000", "2024-02-10T23:59:59.999")))

    def test_too_many_partitions(self) -> None:
        with self.assertRaises(ValueError):
            partitions(datetime(2000, 1, 1), datetime(2024, 1, 1), "hour", "UTC")
