"""The wire form of database values: PostgreSQL text casters and DuckDB/Python converters."""
from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import duckdb
from twisted.trial import unittest

from cubed.drivers.base import Column
from cubed.drivers.values import (
    PG_TYPECASTERS,
    convert_rows,
    duckdb_columns,
    first_line,
    format_datetime,
    format_decimal,
    pg_columns,
    pg_date_text,
    pg_kind,
    pg_timestamp_text,
    pg_timestamptz_text,
    wire_value,
)


class PostgresTextTests(unittest.TestCase):
    """PostgreSQL's ISO text (DateStyle ISO) to ``YYYY-MM-DDTHH:mm:ss.SSS``."""

    def test_timestamp_whole_seconds(self) -> None:
        self.assertEqual(pg_timestamp_text("2024-02-24 02:54:41"), "2024-02-24T02:54:41.000")

    def test_timestamp_fractions_are_truncated_to_milliseconds(self) -> None:
        self.assertEqual(pg_timestamp_text("2024-02-24 02:54:41.5"), "2024-02-24T02:54:41.500")
        self.assertEqual(pg_timestamp_text("2024-02-24 02:54:41.12"), "2024-02-24T02:54:41.120")
        self.assertEqual(pg_timestamp_text("2024-02-24 02:54:41.123456"), "2024-02-24T02:54:41.123")
        self.assertEqual(pg_timestamp_text("2024-02-24 02:54:41.999999"), "2024-02-24T02:54:41.999")

    def test_timestamp_special_values_pass_through(self) -> None:
        self.assertEqual(pg_timestamp_text("infinity"), "infinity")
        self.assertEqual(pg_timestamp_text("-infinity"), "-infinity")
        self.assertEqual(pg_timestamp_text("0044-03-15 12:00:00 BC"), "0044-03-15 12:00:00 BC")
        self.assertIsNone(pg_timestamp_text(None))

    def test_timestamp_five_digit_year(self) -> None:
        self.assertEqual(pg_timestamp_text("10000-01-01 00:00:00"), "10000-01-01T00:00:00.000")

    def test_timestamptz_utc_session(self) -> None:
        self.assertEqual(pg_timestamptz_text("2024-02-24 02:54:41+00"), "2024-02-24T02:54:41.000")
        self.assertEqual(pg_timestamptz_text("2024-02-24 02:54:41.25+00"), "2024-02-24T02:54:41.250")

    def test_timestamptz_other_offsets_are_converted_to_utc(self) -> None:
        self.assertEqual(pg_timestamptz_text("2024-02-24 02:54:41.5+02"), "2024-02-24T00:54:41.500")
        self.assertEqual(pg_timestamptz_text("2024-02-24 02:54:41-05:30"), "2024-02-24T08:24:41.000")
        self.assertEqual(pg_timestamptz_text("2024-01-01 00:10:00+01"), "2023-12-31T23:10:00.000")
        self.assertEqual(pg_timestamptz_text("infinity"), "infinity")

    def test_date(self) -> None:
        self.assertEqual(pg_date_text("2024-02-24"), "2024-02-24T00:00:00.000")
        self.assertEqual(pg_date_text("infinity"), "infinity")
        self.assertIsNone(pg_date_text(None))

    def test_kinds(self) -> None:
        self.assertEqual([pg_kind(oid) for oid in (20, 23, 1700, 701, 25, 2950, 1114, 1184, 1082, 16, 3802, 17)],
                         ["number", "number", "number", "number", "string", "string", "time", "time", "date",
                          "boolean", "other", "other"])

    def test_pg_columns(self) -> None:
        class Desc:
            def __init__(self, name: str, type_code: int) -> None:
                self.name, self.type_code = name, type_code

        self.assertEqual(pg_columns([Desc("n", 20), Desc("t", 1114)]), (Column("n", "number"), Column("t", "time")))
        self.assertEqual(pg_columns(None), ())

    def test_casters_cover_scalars_and_arrays(self) -> None:
        oids = {oid for caster in PG_TYPECASTERS for oid in caster.values}
        for oid in (20, 1016, 1700, 1231, 1114, 1115, 1184, 1185, 1082, 1182, 17, 1186):
            self.assertIn(oid, oids)


class PythonValueTests(unittest.TestCase):
    """Python objects (DuckDB results, nested values) to wire values."""

    def test_decimal_keeps_scale_and_never_uses_exponents(self) -> None:
        self.assertEqual(format_decimal(Decimal("872.00")), "872.00")
        self.assertEqual(format_decimal(Decimal("1E-7")), "0.0000001")
        self.assertEqual(format_decimal(Decimal("1E+2")), "100")
        self.assertEqual(format_decimal(Decimal("-0.50")), "-0.50")
        self.assertEqual(format_decimal(Decimal("0E-10")), "0.0000000000")

    def test_datetimes(self) -> None:
        self.assertEqual(format_datetime(datetime(2024, 2, 24, 2, 54, 41, 123999)), "2024-02-24T02:54:41.123")
        aware = datetime(2024, 2, 24, 2, 54, 41, tzinfo=timezone(timedelta(hours=2)))
        self.assertEqual(format_datetime(aware), "2024-02-24T00:54:41.000")

    def test_wire_value(self) -> None:
        uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
        self.assertEqual(
            wire_value([Decimal("1.50"), date(2024, 1, 2), uid, b"\x01\x02", {"a": time(10, 0)}, None, True, 3, 1.5]),
            ["1.50", "2024-01-02T00:00:00.000", str(uid), "\\x0102", {"a": "10:00:00"}, None, True, 3, 1.5],
        )

    def test_convert_rows_skips_nulls_and_untouched_columns(self) -> None:
        rows = [(1, Decimal("2.50"), "x"), (2, None, "y")]
        self.assertEqual(convert_rows(rows, [str, format_decimal, None]), [("1", "2.50", "x"), ("2", None, "y")])
        self.assertEqual(convert_rows(rows, [None, format_decimal, None]), [(1, "2.50", "x"), (2, None, "y")])
        self.assertIs(convert_rows(rows, [None, None, None]), rows)

    def test_first_line(self) -> None:
        self.assertEqual(first_line('\nrelation "foo" does not exist\nLINE 1: select'), 'relation "foo" does not exist')


class DuckDBColumnTests(unittest.TestCase):
    """Converters picked from a real DuckDB ``cursor.description``."""

    def test_every_kind(self) -> None:
        connection = duckdb.connect(":memory:")
        self.addCleanup(connection.close)
        cursor = connection.execute(
            "SELECT 1::INTEGER i, 2::SMALLINT s, 500::BIGINT b, 7::HUGEINT h, 8::UBIGINT u, 872.00::DECIMAL(10,2) d, "
            "1.5::DOUBLE f, 0.25::FLOAT r, true t, 'it''s' v, NULL::VARCHAR n, "
            "TIMESTAMP '2024-02-24 02:54:41.123456' ts, TIMESTAMPTZ '2024-02-24 02:54:41.5+02' tz, "
            "DATE '2024-02-24' dt, '12345678-1234-5678-1234-567812345678'::UUID id, '{\"a\": [1, 2]}'::JSON j, "
            "'\\x01\\x02'::BLOB bl, [1, 2]::BIGINT[] l"
        )
        columns, converters = duckdb_columns(cursor.description)
        rows = convert_rows(cursor.fetchall(), converters)
        self.assertEqual(
            [c.kind for c in columns],
            ["number"] * 8
            + ["boolean", "string", "string", "time", "time", "date", "string", "other", "other", "other"],
        )
        self.assertEqual(rows, [(
            1, 2, "500", "7", "8", "872.00", 1.5, 0.25, True, "it's", None,
            "2024-02-24T02:54:41.123", "2024-02-24T00:54:41.500", "2024-02-24T00:00:00.000",
            "12345678-1234-5678-1234-567812345678", {"a": [1, 2]}, "\\x0102", [1, 2],
        )])
