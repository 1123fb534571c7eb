"""Dates and time zones: Cube's date ranges, relative dates, filter bounds and granularities.

Local times are naive ``datetime`` wall-clock values in the query time zone; as strings they
use Cube's ``YYYY-MM-DDTHH:mm:ss.SSS`` form. Instants bound into SQL are UTC strings
``YYYY-MM-DDTHH:mm:ss.SSSZ``.

What Cube does, and what this module reproduces:

- ``dateRange`` arrays are read the way ``moment.utc()`` reads a string (ISO 8601 in all of
  moment's forms, RFC 2822, a trailing ``Z`` or offset converted to UTC wall time); a bare
  ``YYYY-MM-DD`` start becomes ``T00:00:00.000`` and an end ``T23:59:59.999``.
- A ``dateRange`` string goes through Cube's ``dateParser`` rules, in Cube's order: (1)
  ``this|last|next <unit>`` anywhere in the text, (2) ``last|next N <unit>``, (3) the words
  today/yesterday/tomorrow anywhere, (4) ``from X to Y``, (5) a single expression. Rules 1-3
  are moment arithmetic in the query zone (hours, minutes and seconds move the instant; days
  and longer move the wall clock); rules 4-5 snap to second/minute/hour when that word
  appears anywhere in the text, else to whole days. Cube's quirks are kept on purpose:
  ``last 7 days`` is the seven whole days *before* today, ``next 7 days`` starts tomorrow,
  ``this weekend`` is ``this week``, ``from 7 days ago to today`` is just today (rule 3 wins),
  dates without a time are noon when snapping to hours (chrono's implied 12:00).

Deliberate differences from Cube 0.32.7:

- An unparseable bound answers 400 ``Can't parse date: '<value>'``; Cube formats it as
  ``Invalid date`` and the database then fails (or, for ``from X to <bad>``, crashes with 500).
- Cube hands rules 4-5 to chrono-node, a free-text parser that takes the first date it finds
  in the text. cubed reads the same way (the earliest expression wins, the longest of those
  starting at one place; other words are ignored) but knows only these expressions, with
  chrono's meaning: ``now``, ``tonight``, ``tmr``/``tmrw``, ``overmorrow``, ``last night``,
  ``morning``/``afternoon``/``evening``/``night``/``noon``/``midday``/``midnight``; times of
  day (``10:30``, ``10am``, ``10:30:15 pm``, alone or right after a date); ISO dates and
  date-times (``2024-01-05``, ``2024-01-05T10:30[:15[.250]]``, a space instead of ``T``; an
  offset is ignored, as chrono's components ignore it); ``2024/01/05``, ``2024.01.05``;
  ``1/5/2024``, ``1/5/24``, ``01-05-2024``, ``1/5``; month names (``jan 5``, ``January 5th,
  2024``, ``5 jan 2024``, ``the 5th of june``, ``june``, ``june 2024``); weekdays, ``weekend``
  and ``weekday`` with an optional this/last/past/next; durations ``N <unit>
  ago|before|earlier``, ``N <unit> later|after|from now``, ``in|within|for N <unit>``,
  ``+N <unit>``, ``-N <unit>``, ``past N <unit>`` (N an integer, a decimal, a number word
  one..twelve, a/an/the, few, several, a couple of, half; units combine: ``1 day and 2 hours
  ago``). chrono's other forms (ranges inside one side such as ``jan 5 - 10``, ``ten
  o'clock``, other languages) give ``Can't parse date``. Where a phrase is read, the result is
  Cube's, DST changes included (moment's step-by-step setting of the parsed fields is
  reproduced, so a time inside a spring-forward gap lands where Cube puts it).
- moment's last-resort parse of other strings with the JavaScript ``Date`` parser is limited
  to ``2024/1/5``, ``2024-1-5``, ``1/5/2024``, ``01-05-2024``, ``Jan 5, 2024``, ``5 January
  2024`` and ``Jan 2024`` (optionally with a weekday and a ``H:mm[:ss[.SSS]] [am|pm]`` time),
  read as UTC as moment reads them; impossible dates (``2/30/2024``) are refused instead of
  rolled over, and years outside 1-9999 are refused.
- ``local_to_utc_param`` converts with the zone's real rules, as moment-timezone does (a wall
  time in a spring-forward gap moves forward by the gap; an ambiguous autumn time takes the
  earlier, summer-time offset). Cube 0.32's ``inDbTimeZone`` looks the offset up at the wall
  time read as if it were UTC, which is an hour off for local times between the transition's
  local and UTC clock readings (Berlin 01:00-02:00, Los Angeles 02:00-10:00 on change days).
"""
from __future__ import annotations

import calendar
import json
import math
import re
import zoneinfo
from datetime import date, datetime, timedelta, timezone as _tz
from functools import lru_cache
from typing import Callable, Iterable

from cubed.errors import UserError

UTC = _tz.utc
GRANULARITIES: tuple[str, ...] = ("second", "minute", "hour", "day", "week", "month", "quarter", "year")

_LOCAL_MS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}")
_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MS = timedelta(milliseconds=1)


# ---------------------------------------------------------------------------------------------
# Formatting and time zones


def format_local(value: datetime) -> str:
    """Return ``value`` as ``YYYY-MM-DDTHH:mm:ss.SSS`` (milliseconds truncated)."""
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03d" % (
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond // 1000)


def format_utc(value: datetime) -> str:
    """Return an aware ``value`` as the UTC string ``YYYY-MM-DDTHH:mm:ss.SSSZ``."""
    return format_local(value.astimezone(UTC)) + "Z"


def parse_local(text: str) -> datetime:
    """Return the naive datetime of ``YYYY-MM-DDTHH:mm:ss.SSS`` or ``YYYY-MM-DD`` text.

    Raises ValueError on anything else (a programming error: callers pass normalized bounds).
    """
    if _LOCAL_MS.fullmatch(text):
        return datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                        int(text[14:16]), int(text[17:19]), int(text[20:23]) * 1000)
    if _DATE_ONLY.fullmatch(text):
        return datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    raise ValueError(f"not a local timestamp: {text!r}")


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def canonical_timezone(name: str) -> str | None:
    """Return the IANA spelling of ``name`` (matched case-insensitively, as moment-timezone and
    PostgreSQL do), or None when it names no zone."""
    if not isinstance(name, str):
        return None
    return _zone_names().get(name.lower())


def is_valid_timezone(name: str) -> bool:
    """Return whether ``name`` is an IANA time zone known to the zone database."""
    return canonical_timezone(name) is not None


def zone(name: str) -> zoneinfo.ZoneInfo:
    """Return the ZoneInfo of a zone name (any case); UserError for an unknown zone."""
    canonical = canonical_timezone(name)
    if canonical is None:
        raise UserError(f'Invalid query format: "timezone" must be a valid IANA time zone, got "{name}"')
    return zoneinfo.ZoneInfo(canonical)


def utc_now(now: datetime | None = None) -> datetime:
    """Return ``now`` (the injectable clock; naive means UTC) or the current time, aware in UTC."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def local_now(timezone: str, now: datetime | None = None) -> datetime:
    """Return the wall-clock time in ``timezone`` at ``now`` (default: the current time)."""
    return to_local(utc_now(now), timezone)


def to_local(instant: datetime, timezone: str) -> datetime:
    """Return the naive wall-clock time in ``timezone`` of an aware (or naive UTC) instant."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(zone(timezone)).replace(tzinfo=None)


def local_to_utc(local: datetime, timezone: str) -> datetime:
    """Return the aware UTC instant of a wall-clock time, by moment-timezone's rules: a time in
    a spring-forward gap moves forward by the gap; an ambiguous time takes the earlier offset."""
    # fold=0 reads a gap time with the offset before the change (so it lands after the gap)
    # and an ambiguous time with the first (summer) offset: exactly moment-timezone's choice.
    return local.replace(tzinfo=zone(timezone), fold=0).astimezone(UTC)


def resolve_wall_time(local: datetime, timezone: str) -> datetime:
    """Return ``local`` unchanged, or moved forward past a spring-forward gap it falls in."""
    return local_to_utc(local, timezone).astimezone(zone(timezone)).replace(tzinfo=None)


def local_to_utc_param(local: str, timezone: str) -> str:
    """Return the UTC instant ``YYYY-MM-DDTHH:mm:ss.SSSZ`` of a local ``YYYY-MM-DDTHH:mm:ss.SSS``
    wall-clock time in ``timezone`` (what is bound into SQL for date ranges and date filters)."""
    return format_local(local_to_utc(parse_local(local), timezone)) + "Z"


# ---------------------------------------------------------------------------------------------
# moment.utc(string): ISO 8601, RFC 2822, and a subset of the JavaScript Date fallback

_ISO_EXTENDED = re.compile(
    r"^\s*((?:[+-][0-9]{6}|[0-9]{4})-(?:[0-9]{2}-[0-9]{2}|W[0-9]{2}-[0-9]|W[0-9]{2}|[0-9]{3}|[0-9]{2}))"
    r"(?:(T| )([0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?)?)([+-][0-9]{2}(?::?[0-9]{2})?|\s*Z)?)?\Z")
_ISO_BASIC = re.compile(
    r"^\s*((?:[+-][0-9]{6}|[0-9]{4})(?:[0-9]{4}|W[0-9]{3}|W[0-9]{2}|[0-9]{3}|[0-9]{2}|))"
    r"(?:(T| )([0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[.,][0-9]+)?)?)?)([+-][0-9]{2}(?::?[0-9]{2})?|\s*Z)?)?\Z")
# moment's table of ISO date shapes, searched in this order; the flag says whether a time may follow.
_ISO_DATES: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    ("signed-ymd", re.compile(r"[+-][0-9]{6}-[0-9]{2}-[0-9]{2}"), True),
    ("ymd", re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), True),
    ("week-day", re.compile(r"[0-9]{4}-W[0-9]{2}-[0-9]"), True),
    ("week", re.compile(r"[0-9]{4}-W[0-9]{2}"), False),
    ("ordinal", re.compile(r"[0-9]{4}-[0-9]{3}"), True),
    ("ym", re.compile(r"[0-9]{4}-[0-9]{2}"), False),
    ("signed-ymd", re.compile(r"[+-][0-9]{10}"), True),
    ("ymd", re.compile(r"[0-9]{8}"), True),
    ("week-day", re.compile(r"[0-9]{4}W[0-9]{3}"), True),
    ("week", re.compile(r"[0-9]{4}W[0-9]{2}"), False),
    ("ordinal", re.compile(r"[0-9]{7}"), True),
    ("ym", re.compile(r"[0-9]{6}"), False),
    ("y", re.compile(r"[0-9]{4}"), False),
)
_ISO_TZ = re.compile(r"Z|([+-])([0-9]{2}):?([0-9]{2})?")
_RFC2822 = re.compile(
    r"(?:(Mon|Tue|Wed|Thu|Fri|Sat|Sun),?\s)?([0-9]{1,2})\s(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s"
    r"([0-9]{2,4})\s([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?\s(?:(UT|GMT|[ECMP][SD]T)|([Zz])|([+-][0-9]{4}))")
_RFC_OFFSETS = {"UT": 0, "GMT": 0, "EDT": -240, "EST": -300, "CDT": -300, "CST": -360,
                "MDT": -360, "MST": -420, "PDT": -420, "PST": -480}
_SHORT_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SHORT_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_ASP_NET = re.compile(r"^/?Date\((-?[0-9]+)", re.IGNORECASE)

_FALLBACK_MONTH = (r"(january|february|march|april|may|june|july|august|september|october|november|december"
                   r"|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\.?")
_FALLBACK_TIME = r"(?:\s+([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?(?:\s*(am|pm))?)?"
_FALLBACK_WEEKDAY = r"(?:(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*\.?,?\s+)?"
_FALLBACK_YMD = re.compile(r"([0-9]{4})[-/]([0-9]{1,2})[-/]([0-9]{1,2})" + _FALLBACK_TIME, re.IGNORECASE)
_FALLBACK_MDY = re.compile(r"([0-9]{1,2})([-/])([0-9]{1,2})\2([0-9]{4}|[0-9]{2})" + _FALLBACK_TIME, re.IGNORECASE)
_FALLBACK_NAMED_MDY = re.compile(
    _FALLBACK_WEEKDAY + _FALLBACK_MONTH + r"\s+([0-9]{1,2}),?\s+([0-9]{4})" + _FALLBACK_TIME, re.IGNORECASE)
_FALLBACK_NAMED_DMY = re.compile(
    _FALLBACK_WEEKDAY + r"([0-9]{1,2})\s+" + _FALLBACK_MONTH + r",?\s+([0-9]{4})" + _FALLBACK_TIME, re.IGNORECASE)
_FALLBACK_NAMED_MY = re.compile(_FALLBACK_WEEKDAY + _FALLBACK_MONTH + r"\s+([0-9]{4})" + _FALLBACK_TIME,
                                re.IGNORECASE)

_MONTH_NUMBERS: dict[str, int] = {
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7, "august": 8,
    "september": 9, "october": 10, "november": 11, "december": 12, "jan": 1, "feb": 2, "mar": 3, "apr": 4,
    "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9, "oct": 10, "nov": 11, "dec": 12,
}


def _moment_fraction_ms(digits: str) -> int:
    # moment reads fractional seconds as toInt(('0.' + digits) * 1000): a double product, truncated.
    return int(float("0." + digits) * 1000)


def _ymd(year: int, month: int, day: int) -> datetime | None:
    if not 1 <= year <= 9999 or not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return datetime(year, month, day)


def _iso_week_date(year: int, week: int, weekday: int) -> datetime | None:
    if not 1 <= weekday <= 7 or week < 1 or week > date(year, 12, 28).isocalendar()[1]:
        return None
    try:
        return datetime.fromisocalendar(year, week, weekday)
    except ValueError:
        return None


def _iso_date_part(kind: str, text: str) -> datetime | None:
    digits = text.replace("-", "").replace("W", "")
    if kind == "signed-ymd":
        sign = -1 if text[0] == "-" else 1
        year = sign * int(digits[1:7])
        return _ymd(year, int(digits[7:9]), int(digits[9:11]))
    year = int(digits[0:4])
    if not 1 <= year <= 9999:
        return None
    if kind == "ymd":
        return _ymd(year, int(digits[4:6]), int(digits[6:8]))
    if kind == "ym":
        return _ymd(year, int(digits[4:6]), 1)
    if kind == "y":
        return datetime(year, 1, 1)
    if kind == "ordinal":
        day_of_year = int(digits[4:7])
        if not 1 <= day_of_year <= (366 if calendar.isleap(year) else 365):
            return None
        return datetime(year, 1, 1) + timedelta(days=day_of_year - 1)
    if kind == "week":
        return _iso_week_date(year, int(digits[4:6]), 1)
    return _iso_week_date(year, int(digits[4:6]), int(digits[6:7]))


def _iso_time_part(text: str) -> tuple[int, int, int, int] | None:
    fraction = ""
    for separator in ".,":
        if separator in text:
            text, fraction = text.split(separator, 1)
    clock = text.replace(":", "")
    hour = int(clock[0:2])
    minute = int(clock[2:4]) if len(clock) >= 4 else 0
    second = int(clock[4:6]) if len(clock) >= 6 else 0
    millisecond = _moment_fraction_ms(fraction) if fraction else 0
    if hour == 24 and minute == second == millisecond == 0:
        return 24, 0, 0, 0
    if hour > 23 or minute > 59 or second > 59:
        return None
    return hour, minute, second, millisecond


def _parse_iso(text: str) -> tuple[datetime, int | None] | None:
    match = _ISO_EXTENDED.match(text) or _ISO_BASIC.match(text)
    if match is None:
        return None
    date_text, _, time_text, tz_text = match.groups()
    for kind, pattern, allow_time in _ISO_DATES:
        if pattern.search(date_text):
            break
    else:
        return None
    if time_text is not None and not allow_time:
        return None
    day = _iso_date_part(kind, date_text)
    if day is None:
        return None
    if time_text is not None:
        clock = _iso_time_part(time_text)
        if clock is None:
            return None
        hour, minute, second, millisecond = clock
        day = day + timedelta(hours=hour, minutes=minute, seconds=second, milliseconds=millisecond)
    offset: int | None = None
    if tz_text is not None:
        tz_match = _ISO_TZ.search(tz_text)
        if tz_match is None:
            return None
        if tz_match.group(0) == "Z":
            offset = 0
        else:
            minutes = int(tz_match.group(2)) * 60 + int(tz_match.group(3) or 0)
            offset = -minutes if tz_match.group(1) == "-" else minutes
    return day, offset


def _parse_rfc2822(text: str) -> tuple[datetime, int | None] | None:
    cleaned = re.sub(r"\s\s+", " ", re.sub(r"\([^()]*\)|[\n\t]", " ", text)).strip()
    match = _RFC2822.fullmatch(cleaned)
    if match is None:
        return None
    weekday, day, month, year_text, hour, minute, second, obsolete, military, numeric = match.groups()
    year = int(year_text)
    year = 2000 + year if year <= 49 else 1900 + year if year <= 999 else year
    parsed = _ymd(year, _SHORT_MONTHS.index(month) + 1, int(day))
    if parsed is None or int(hour) > 23 or int(minute) > 59 or int(second or 0) > 59:
        return None
    if weekday and _SHORT_WEEKDAYS[parsed.weekday()] != weekday:
        return None
    if obsolete:
        offset = _RFC_OFFSETS[obsolete]
    elif military:
        offset = 0
    else:
        sign = -1 if numeric[0] == "-" else 1
        offset = sign * (int(numeric[1:3]) * 60 + int(numeric[3:5]))
    return parsed.replace(hour=int(hour), minute=int(minute), second=int(second or 0)), offset


def _fallback_time(day: datetime, hour: str | None, minute: str | None, second: str | None,
                   fraction: str | None, meridiem: str | None) -> datetime | None:
    if hour is None:
        return day
    h, m, s = int(hour), int(minute or 0), int(second or 0)
    if meridiem:
        if not 1 <= h <= 12:
            return None
        h = h % 12 + (12 if meridiem.lower() == "pm" else 0)
    if h > 23 or m > 59 or s > 59:
        return None
    ms = int((fraction or "0")[:3].ljust(3, "0"))
    return day.replace(hour=h, minute=m, second=s, microsecond=ms * 1000)


def _parse_fallback(text: str) -> datetime | None:
    text = text.strip()
    match = _FALLBACK_YMD.fullmatch(text)
    if match:
        y, mo, d, *clock = match.groups()
        day = _ymd(int(y), int(mo), int(d))
        return _fallback_time(day, *clock) if day else None
    match = _FALLBACK_MDY.fullmatch(text)
    if match:
        mo, _, d, y, *clock = match.groups()
        year = int(y) if len(y) == 4 else (2000 + int(y) if int(y) < 50 else 1900 + int(y))
        day = _ymd(year, int(mo), int(d))
        return _fallback_time(day, *clock) if day else None
    match = _FALLBACK_NAMED_MDY.fullmatch(text)
    if match:
        name, d, y, *clock = match.groups()
        day = _ymd(int(y), _MONTH_NUMBERS[name.lower()], int(d))
        return _fallback_time(day, *clock) if day else None
    match = _FALLBACK_NAMED_DMY.fullmatch(text)
    if match:
        d, name, y, *clock = match.groups()
        day = _ymd(int(y), _MONTH_NUMBERS[name.lower()], int(d))
        return _fallback_time(day, *clock) if day else None
    match = _FALLBACK_NAMED_MY.fullmatch(text)
    if match:
        name, y, *clock = match.groups()
        day = _ymd(int(y), _MONTH_NUMBERS[name.lower()], 1)
        return _fallback_time(day, *clock) if day else None
    return None


def parse_moment(text: str) -> tuple[datetime, int | None] | None:
    """Return ``(wall time as written, UTC offset in minutes or None)`` for a string moment
    accepts, or None when moment would make an invalid date of it."""
    asp = _ASP_NET.match(text)
    if asp:
        try:
            instant = datetime(1970, 1, 1) + timedelta(milliseconds=int(asp.group(1)))
        except OverflowError:
            return None
        return instant, 0
    parsed = _parse_iso(text) or _parse_rfc2822(text)
    if parsed is not None:
        return parsed
    fallback = _parse_fallback(text)
    # moment hands these to JavaScript's Date with " UTC" appended: they are UTC instants.
    return (fallback, 0) if fallback is not None else None


def parse_moment_utc(text: str) -> datetime | None:
    """Return the naive UTC datetime ``moment.utc(text)`` gives (an offset is applied), or None
    when moment would answer ``Invalid date``."""
    parsed = parse_moment(text)
    if parsed is None:
        return None
    value, offset = parsed
    if offset:
        try:
            value = value - timedelta(minutes=offset)
        except OverflowError:
            return None
    return value


def _cant_parse(text: str) -> UserError:
    return UserError(f"Can't parse date: '{text}'")


# ---------------------------------------------------------------------------------------------
# Calendar arithmetic: moment's (month ends clamp) and JavaScript Date's (month ends overflow)


def _days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _add_months_clamped(value: datetime, months: int) -> datetime:
    index = value.year * 12 + value.month - 1 + months
    year, month = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise OverflowError("year out of range")
    return value.replace(year=year, month=month + 1, day=min(value.day, _days_in_month(year, month + 1)))


def add_local(value: datetime, granularity: str, amount: int) -> datetime:
    """Return ``value`` moved by ``amount`` granularity units on the wall clock, as moment's
    ``add`` does (a month from Jan 31 is the end of February; a quarter is three months)."""
    if granularity == "second":
        return value + timedelta(seconds=amount)
    if granularity == "minute":
        return value + timedelta(minutes=amount)
    if granularity == "hour":
        return value + timedelta(hours=amount)
    if granularity == "day":
        return value + timedelta(days=amount)
    if granularity == "week":
        return value + timedelta(weeks=amount)
    if granularity == "month":
        return _add_months_clamped(value, amount)
    if granularity == "quarter":
        return _add_months_clamped(value, 3 * amount)
    if granularity == "year":
        return _add_months_clamped(value, 12 * amount)
    raise ValueError(f"unknown granularity {granularity!r}")


def truncate_local(value: datetime, granularity: str) -> datetime:
    """Return the start of the ``granularity`` period holding ``value`` (week: ISO, Monday)."""
    if granularity == "second":
        return value.replace(microsecond=0)
    if granularity == "minute":
        return value.replace(second=0, microsecond=0)
    if granularity == "hour":
        return value.replace(minute=0, second=0, microsecond=0)
    day = value.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.weekday())
    if granularity == "month":
        return day.replace(day=1)
    if granularity == "quarter":
        return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
    if granularity == "year":
        return day.replace(month=1, day=1)
    raise ValueError(f"unknown granularity {granularity!r}")


def end_of_local(value: datetime, granularity: str) -> datetime:
    """Return the last millisecond of the ``granularity`` period holding ``value``."""
    return add_local(truncate_local(value, granularity), granularity, 1) - _MS


def time_series(start: str, end: str, granularity: str, max_periods: int | None = None) -> list[tuple[str, str]]:
    """Return the ``(from, to)`` local bounds of every ``granularity`` period from the one
    holding ``start`` to the one holding ``end``, as Cube's date series for rolling windows
    (``YYYY-MM-DDTHH:mm:ss.SSS`` / ``...59.999``). UserError when more than ``max_periods``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}")
    first = truncate_local(parse_local(start), granularity)
    last = parse_local(end)
    series: list[tuple[str, str]] = []
    step = 0
    current = first
    # At least the first period, as moment-range yields it even when the range is reversed.
    while current <= last or not series:
        if max_periods is not None and len(series) >= max_periods:
            raise UserError(f"Time series of {granularity} periods from {start} to {end} "
                            f"exceeds {max_periods} periods")
        series.append((format_local(current), format_local(add_local(current, granularity, 1) - _MS)))
        step += 1
        # From the first period each time, as moment-range does, so month ends never drift.
        current = add_local(first, granularity, step)
    return series


def _js_set_month(value: datetime, month_index: int) -> datetime:
    # JavaScript Date.setMonth: any month index; a day past the month's end rolls into the next.
    year, month0 = divmod(month_index, 12)
    year += value.year
    if not 1 <= year <= 9999:
        raise OverflowError("year out of range")
    last = _days_in_month(year, month0 + 1)
    if value.day <= last:
        return value.replace(year=year, month=month0 + 1)
    return value.replace(year=year, month=month0 + 1, day=last) + timedelta(days=value.day - last)


def _js_set_year(value: datetime, year: int) -> datetime:
    if not 1 <= year <= 9999:
        raise OverflowError("year out of range")
    if value.month == 2 and value.day == 29 and not calendar.isleap(year):
        return value.replace(year=year, day=28) + timedelta(days=1)
    return value.replace(year=year)


def _js_round(value: float) -> int:
    return math.floor(value + 0.5)


def _chrono_add(reference: datetime, duration: dict[str, float]) -> datetime:
    """chrono's addDuration: JavaScript Date setters in order, fractions cascading down."""
    result = reference
    rest = dict(duration)
    if "year" in rest:
        whole = math.floor(rest["year"])
        result = _js_set_year(result, result.year + whole)
        if rest["year"] - whole > 0:
            rest["month"] = rest.get("month", 0) + (rest["year"] - whole) * 12
    if "quarter" in rest:
        whole = math.floor(rest["quarter"])
        result = _js_set_month(result, result.month - 1 + whole * 3)
        if rest["quarter"] - whole > 0:
            rest["month"] = rest.get("month", 0) + (rest["quarter"] - whole) * 3
    if "month" in rest:
        whole = math.floor(rest["month"])
        result = _js_set_month(result, result.month - 1 + whole)
        if rest["month"] - whole > 0:
            rest["week"] = rest.get("week", 0) + (rest["month"] - whole) * 4
    if "week" in rest:
        whole = math.floor(rest["week"])
        result = result + timedelta(days=whole * 7)
        if rest["week"] - whole > 0:
            rest["day"] = rest.get("day", 0) + _js_round((rest["week"] - whole) * 7)
    if "day" in rest:
        whole = math.floor(rest["day"])
        result = result + timedelta(days=whole)
        if rest["day"] - whole > 0:
            rest["hour"] = rest.get("hour", 0) + _js_round((rest["day"] - whole) * 24)
    if "hour" in rest:
        whole = math.floor(rest["hour"])
        result = result + timedelta(hours=whole)
        if rest["hour"] - whole > 0:
            rest["minute"] = rest.get("minute", 0) + _js_round((rest["hour"] - whole) * 60)
    if "minute" in rest:
        whole = math.floor(rest["minute"])
        result = result + timedelta(minutes=whole)
        if rest["minute"] - whole > 0:
            rest["second"] = rest.get("second", 0) + _js_round((rest["minute"] - whole) * 60)
    if "second" in rest:
        whole = math.floor(rest["second"])
        result = result + timedelta(seconds=whole)
        if rest["second"] - whole > 0:
            rest["millisecond"] = rest.get("millisecond", 0) + _js_round((rest["second"] - whole) * 1000)
    if "millisecond" in rest:
        result = result + timedelta(milliseconds=math.floor(rest["millisecond"]))
    return result


# ---------------------------------------------------------------------------------------------
# The chrono-node subset (rules 4 and 5 of the date parser)

_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
_UNITS = {"s": "second", "sec": "second", "second": "second", "seconds": "second",
          "m": "minute", "min": "minute", "mins": "minute", "minute": "minute", "minutes": "minute",
          "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour", "hours": "hour",
          "d": "day", "day": "day", "days": "day", "w": "week", "week": "week", "weeks": "week",
          "mo": "month", "mon": "month", "mos": "month", "month": "month", "months": "month",
          "qtr": "quarter", "quarter": "quarter", "quarters": "quarter",
          "y": "year", "yr": "year", "year": "year", "years": "year"}
_ORDINAL_WORDS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
    "twentieth": 20, "twenty first": 21, "twenty-first": 21, "twenty second": 22, "twenty-second": 22,
    "twenty third": 23, "twenty-third": 23, "twenty fourth": 24, "twenty-fourth": 24,
    "twenty fifth": 25, "twenty-fifth": 25, "twenty sixth": 26, "twenty-sixth": 26,
    "twenty seventh": 27, "twenty-seventh": 27, "twenty eighth": 28, "twenty-eighth": 28,
    "twenty ninth": 29, "twenty-ninth": 29, "thirtieth": 30, "thirty first": 31, "thirty-first": 31,
}
_WEEKDAYS = {"sunday": 0, "sun": 0, "monday": 1, "mon": 1, "tuesday": 2, "tue": 2, "wednesday": 3,
             "wed": 3, "thursday": 4, "thurs": 4, "thur": 4, "thu": 4, "friday": 5, "fri": 5,
             "saturday": 6, "sat": 6}


def _alternation(words: Iterable[str]) -> str:
    # Longest first, as chrono's matchAnyPattern, so "days" is tried before "d".
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_NUMBER = (r"(?:" + _alternation(_NUMBER_WORDS)[3:-1] + r"|[0-9]+(?:\.[0-9]+)?|half(?:\s{0,2}an?)?"
           r"|an?\b(?:\s{0,2}few)?|few|several|the|a?\s{0,2}couple\s{0,2}(?:of)?)")
_UNIT = _alternation(_UNITS)
_SINGLE_DURATION = re.compile(rf"({_NUMBER})\s{{0,3}}({_UNIT})")
_DURATION = rf"{_NUMBER}\s{{0,3}}{_UNIT}(?:\s{{0,5}},?(?:\s*and)?\s{{0,5}}{_NUMBER}\s{{0,3}}{_UNIT}){{0,10}}"
_FULL_MONTHS = frozenset(("january", "february", "march", "april", "may", "june", "july", "august",
                          "september", "october", "november", "december"))
_MONTH = _alternation(list(_MONTH_NUMBERS) + [m + "." for m in _MONTH_NUMBERS if len(m) <= 4])
_ORDINAL = rf"(?:{_alternation(_ORDINAL_WORDS)[3:-1]}|[0-9]{{1,2}}(?:st|nd|rd|th)?)"
# chrono's year: four digits, or two digits that do not start a time or precede a month name.
_YEAR = (r"(?:[1-9][0-9]{3}(?![A-Za-z0-9_])|[0-9]{2}(?![A-Za-z0-9_]|:[0-9]"
         r"|\s+(?:am|pm|o\s*clock|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)))")
_CLOCK = r"([0-9]{1,2}):([0-9]{1,2})(?::([0-9]{1,2})(?:\.[0-9]{1,4})?)?(?:z|[+-][0-9]{2}:?(?:[0-9]{2})?)?"
_LEFT = r"(?<![A-Za-z0-9_])"
_RIGHT = r"(?![A-Za-z0-9_])"


def _word(pattern: str) -> re.Pattern[str]:
    # chrono parsers match only at word boundaries: (\W|^) before, (?=\W|$) after.
    return re.compile(_LEFT + pattern + _RIGHT)


_P_YEAR_FIRST = _word(rf"([0-9]{{4}})([-./])([0-9]{{1,2}})\2([0-9]{{1,2}})(?:[t ]\s*{_CLOCK})?")
# chrono's slash dates need only a non-digit before them ("sales1/5/2024" is read).
_P_SLASH = re.compile(r"(?<![0-9])([0-3]?[0-9])[/.-]([0-3]?[0-9])(?:[/.-]([0-9]{4}|[0-9]{2}))?" + _RIGHT)
_P_MIDDLE_ENDIAN = re.compile(_LEFT + rf"({_MONTH})(?:-|/|\s*,?\s*)({_ORDINAL})(?!\s*(?:am|pm))"
                              rf"(?:(?:-|/|\s*,\s*|\s+)({_YEAR}))?" + _RIGHT + r"(?!:[0-9])")
_P_LITTLE_ENDIAN = _word(rf"(?:on\s{{0,3}})?({_ORDINAL})(?:-|/|\s{{0,3}}(?:of)?\s{{0,3}})({_MONTH})"
                         rf"(?:(?:-|/|,?\s{{0,3}})({_YEAR}))?")
# A month name alone must not be followed by a number ("june 10:30" is a time, not June).
_P_MONTH_YEAR = re.compile(_LEFT + rf"(in\s*)?({_MONTH})(?:\s*(?:,|-|of)?\s*({_YEAR}))?"
                           r"(?=[^\s\w]|\s+[^0-9]|\s+$|$)")
_P_WEEKDAY = _word(rf"(?:on\s*)?(?:(this|last|past|next)\s*)?({_alternation(list(_WEEKDAYS) + ['weekend', 'weekday'])})")
_P_CASUAL_DATE = _word(r"(now|tonight|tmrw|tmr|overmorrow|last\s*night)")
_P_CASUAL_TIME = _word(r"(?:this)?\s{0,3}(morning|afternoon|evening|night|midnight|midday|noon)")
_P_AGO = _word(rf"(?:(?:about|around)\s{{0,3}})?({_DURATION})\s{{0,5}}(?:ago|before|earlier)")
_P_LATER = _word(rf"(?:(?:about|around)\s{{0,3}})?({_DURATION})\s{{0,5}}"
                 r"(?:later|after|from now|henceforth|forward|out)")
_P_WITHIN = _word(rf"(?:within|in|for)\s*(?:(?:about|around|roughly|approximately|just)\s*(?:~\s*)?)?"
                  rf"({_DURATION})")
_P_CASUAL_RELATIVE = _word(rf"(this|last|past|next|after|\+|-)\s*({_DURATION})")
_TIME_OF_DAY = (r"(?:at\s*)?([0-9]{1,2})(?::([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{1,6})?)?)?"
                r"(?:\s*(a\.m\.|p\.m\.|am|pm))?")
_P_TIME = _word(_TIME_OF_DAY)
_FOLLOWING_TIME = re.compile(r"\s*(?:,\s*)?(?:t\s*)?" + _TIME_OF_DAY + _RIGHT)


def _number_value(text: str) -> float:
    word = text.strip()
    if word in _NUMBER_WORDS:
        return _NUMBER_WORDS[word]
    if word in ("a", "an", "the"):
        return 1
    if "few" in word:
        return 3
    if "half" in word:
        return 0.5
    if "couple" in word:
        return 2
    if "several" in word:
        return 7
    return float(word)


def _duration(text: str, sign: int) -> dict[str, float]:
    fragments: dict[str, float] = {}
    for match in _SINGLE_DURATION.finditer(text):
        if match.group(0).isalpha():
            continue
        fragments[_UNITS[match.group(2)]] = sign * _number_value(match.group(1))
    return fragments


def _ordinal_value(text: str) -> int:
    if text in _ORDINAL_WORDS:
        return _ORDINAL_WORDS[text]
    return int(text.rstrip("stndrh"))


def _two_digit_year(year: int) -> int:
    if year < 100:
        return year + 1900 if year > 50 else year + 2000
    return year


def _year_closest_to(reference: datetime, day: int, month: int) -> int:
    # chrono's findYearClosestToRef, including JavaScript's setMonth/setDate roll-over.
    candidate = _js_set_month(reference, month - 1)
    candidate = candidate.replace(day=1) + timedelta(days=day - 1)
    later = _js_set_year(candidate, candidate.year + 1)
    earlier = _js_set_year(candidate, candidate.year - 1)
    distance = abs(candidate - reference)
    if abs(later - reference) < distance:
        return later.year
    if abs(earlier - reference) < distance:
        return earlier.year
    return candidate.year


def _days_to_weekday(reference: datetime, weekday: int, modifier: str | None) -> int:
    ref_weekday = (reference.weekday() + 1) % 7  # JavaScript numbering: Sunday is 0
    forward = weekday - ref_weekday
    if forward < 0:
        forward += 7
    backward = weekday - ref_weekday
    if backward >= 0:
        backward -= 7
    if modifier == "this":
        return forward
    if modifier == "last":
        return backward
    if modifier == "next":
        if ref_weekday == 0:
            return 7 if weekday == 0 else weekday
        if ref_weekday == 6:
            return 7 if weekday == 6 else 8 if weekday == 0 else 1 + weekday
        return forward if weekday < ref_weekday and weekday != 0 else forward + 7
    return forward if forward < -backward else backward


# A reader's answer for text chrono does read, into an impossible date (2024-02-30, feb 29
# of a common year): the match still claims its words, so nothing else is read there.
_INVALID = datetime.min


def _at_noon(value: datetime | None) -> datetime:
    # chrono implies 12:00 for a date given without a time of day.
    return value.replace(hour=12) if value is not None else _INVALID


def _clock(hour: str | None, minute: str | None, second: str | None,
           meridiem: str | None = None) -> tuple[int, int, int] | None:
    if hour is None:
        return None
    h, m, s = int(hour), int(minute or 0), int(second or 0)
    if meridiem:
        if not 1 <= h <= 12:
            return None
        h = h % 12 + (12 if meridiem[0] == "p" else 0)
    if h > 23 or m > 59 or s > 59:
        return None
    return h, m, s


def _with_clock(value: datetime, clock: tuple[int, int, int]) -> datetime:
    return value.replace(hour=clock[0], minute=clock[1], second=clock[2], microsecond=0)


def _year_first(match: re.Match[str], reference: datetime) -> datetime | None:
    year, _, first, second, hour, minute, sec = match.groups()
    month, day = int(first), int(second)
    if month > 12 and 1 <= day <= 12:
        month, day = day, month
    parsed = _ymd(int(year), month, day)
    if parsed is None or hour is None:
        return _at_noon(parsed)
    clock = _clock(hour, minute, sec)
    return _with_clock(parsed, clock) if clock else _INVALID


def _slash(match: re.Match[str], reference: datetime) -> datetime | None:
    first, second, year = match.groups()
    text = match.group(0)
    # chrono's guards: not part of a longer number run, not "1.5", and without a year only "/".
    if re.search(r"[0-9]/?$", match.string[:match.start()]) or re.match(r"/?[0-9]", match.string[match.end():]):
        return None
    if re.fullmatch(r"[0-9]\.[0-9]", text) or re.fullmatch(r"[0-9]\.[0-9]{1,2}\.[0-9]{1,2}\s*", text):
        return None
    if year is None and "/" not in text:
        return None
    month, day = int(first), int(second)
    if month > 12:
        if not (1 <= day <= 12 and month <= 31):
            return None
        month, day = day, month
    if not 1 <= day <= 31:
        return None
    resolved = _two_digit_year(int(year)) if year else _year_closest_to(reference, day, month)
    return _at_noon(_ymd(resolved, month, day))


def _named_date(name: str, ordinal: str, year: str | None, reference: datetime) -> datetime | None:
    day = _ordinal_value(ordinal)
    if day > 31:
        return None
    month = _MONTH_NUMBERS[name.rstrip(".")]
    resolved = _two_digit_year(int(year)) if year else _year_closest_to(reference, day, month)
    return _at_noon(_ymd(resolved, month, day))


def _middle_endian(match: re.Match[str], reference: datetime) -> datetime | None:
    name, ordinal, year = match.groups()
    return _named_date(name, ordinal, year, reference)


def _little_endian(match: re.Match[str], reference: datetime) -> datetime | None:
    ordinal, name, year = match.groups()
    return _named_date(name, ordinal, year, reference)


def _month_year(match: re.Match[str], reference: datetime) -> datetime | None:
    prefix, name, year = match.groups()
    # chrono refuses a lone abbreviation ("jan"), which is too likely to be another word.
    if len(match.group(0)) <= 3 and name not in _FULL_MONTHS:
        return None
    month = _MONTH_NUMBERS[name.rstrip(".")]
    resolved = _two_digit_year(int(year)) if year else _year_closest_to(reference, 1, month)
    return _at_noon(_ymd(resolved, month, 1))


def _weekday(match: re.Match[str], reference: datetime) -> datetime | None:
    modifier, name = match.groups()
    if modifier == "past":
        modifier = "last"
    if name == "weekend":
        weekday = 0 if modifier == "last" else 6
    elif name == "weekday":
        ref_weekday = (reference.weekday() + 1) % 7
        if ref_weekday in (0, 6):
            weekday = 5 if modifier == "last" else 1
        else:
            shifted = ref_weekday - 1 + (-1 if modifier == "last" else 1)
            weekday = int(math.fmod(shifted, 5)) + 1  # JavaScript's %, negative for negatives
    else:
        weekday = _WEEKDAYS[name]
    days = _days_to_weekday(reference, weekday, modifier)
    return (reference + timedelta(days=days)).replace(hour=12, minute=0, second=0, microsecond=0)


def _casual_date(match: re.Match[str], reference: datetime) -> datetime | None:
    word = match.group(1)
    if word == "now":
        return reference
    if word == "tonight":
        return reference.replace(hour=22, minute=0, second=0, microsecond=0)
    if word in ("tmr", "tmrw"):
        return reference + timedelta(days=1)
    if word == "overmorrow":
        return reference + timedelta(days=2)
    previous = reference - timedelta(days=1) if reference.hour > 6 else reference
    return previous.replace(hour=0, minute=0, second=0, microsecond=0)


_CASUAL_HOURS = {"morning": 6, "afternoon": 15, "evening": 20, "night": 20, "midday": 12, "noon": 12}


def _casual_time(match: re.Match[str], reference: datetime) -> datetime | None:
    word = match.group(1)
    if word == "midnight":
        day = reference + timedelta(days=1) if reference.hour > 2 else reference
        return day.replace(hour=0, minute=0, second=0, microsecond=0)
    return reference.replace(hour=_CASUAL_HOURS[word], minute=0, second=0, microsecond=0)


def _time_of_day(match: re.Match[str], reference: datetime) -> datetime | None:
    hour, minute, second, meridiem = match.groups()
    if minute is None and meridiem is None:
        return None  # a bare number is not a time
    clock = _clock(hour, minute, second, meridiem)
    return _with_clock(reference, clock) if clock else _INVALID


def _ago(match: re.Match[str], reference: datetime) -> datetime | None:
    return _chrono_add(reference, _duration(match.group(1), -1))


def _later(match: re.Match[str], reference: datetime) -> datetime | None:
    return _chrono_add(reference, _duration(match.group(1), 1))


def _within(match: re.Match[str], reference: datetime) -> datetime | None:
    if re.match(r"for\s*the\s*\w+", match.group(0)):
        return None
    return _chrono_add(reference, _duration(match.group(1), 1))


def _casual_relative(match: re.Match[str], reference: datetime) -> datetime | None:
    word, duration = match.groups()
    backwards = word in ("last", "past", "-")
    return _chrono_add(reference, _duration(duration, -1 if backwards else 1))


_Reader = Callable[[re.Match[str], datetime], "datetime | None"]
# (pattern, reader, whether a time of day written right after the match completes it)
_CHRONO_PARSERS: tuple[tuple[re.Pattern[str], _Reader, bool], ...] = (
    (_P_YEAR_FIRST, _year_first, True),
    (_P_SLASH, _slash, True),
    (_P_MIDDLE_ENDIAN, _middle_endian, True),
    (_P_LITTLE_ENDIAN, _little_endian, True),
    (_P_MONTH_YEAR, _month_year, True),
    (_P_WEEKDAY, _weekday, True),
    (_P_CASUAL_DATE, _casual_date, False),
    (_P_CASUAL_TIME, _casual_time, False),
    (_P_AGO, _ago, False),
    (_P_LATER, _later, False),
    (_P_WITHIN, _within, False),
    (_P_CASUAL_RELATIVE, _casual_relative, False),
    (_P_TIME, _time_of_day, False),
)


def _chrono(text: str, reference: datetime) -> datetime | None:
    """Return the start of the first date chrono-node finds in ``text`` (lower case) at
    ``reference`` (the naive local now), for the expressions listed in the module docstring.

    As chrono: every reader's matches are collected in text order; of two overlapping matches
    the longer stays; impossible dates are dropped only after that; the first one left wins,
    completed by a time of day written right after it."""
    found: list[tuple[int, int, int, datetime, bool]] = []
    for order, (pattern, reader, takes_time) in enumerate(_CHRONO_PARSERS):
        for match in pattern.finditer(text):
            value = reader(match, reference)
            if value is not None:
                complete = reader is _year_first and match.group(5) is not None
                found.append((match.start(), match.end(), order, value, takes_time and not complete))
    found.sort(key=lambda item: (item[0], item[2]))
    kept: list[tuple[int, int, int, datetime, bool]] = []
    for item in found:
        if kept and item[0] < kept[-1][1]:
            if item[1] - item[0] > kept[-1][1] - kept[-1][0]:
                kept[-1] = item
            continue
        kept.append(item)
    for _, end, _, value, takes_time in kept:
        if value is _INVALID:
            continue
        if takes_time:
            following = _FOLLOWING_TIME.match(text, end)
            if following and (following.group(2) is not None or following.group(4) is not None):
                clock = _clock(*following.groups())
                if clock is not None:
                    value = _with_clock(value, clock)
        return value
    return None


# ---------------------------------------------------------------------------------------------
# Cube's dateParser

_UNIT_WORDS = r"(day|week|month|year|quarter|hour|minute|second)"
_RULE_THIS_LAST_NEXT = re.compile(r"(this|last|next)\s+" + _UNIT_WORDS)
_RULE_LAST_NEXT_N = re.compile(r"(last|next)\s+([0-9]+)\s+" + _UNIT_WORDS)
_RULE_FROM_TO = re.compile(r"from ([^\n\r\u2028\u2029]*) to ([^\n\r\u2028\u2029]*)")
_ABSOLUTE_UNITS = ("hour", "minute", "second")


class _Moment:
    """A moment-timezone moment, step by step: a wall-clock time and the offset moment believes
    it has. moment re-derives the offset after every change, keeping either the wall time or
    the instant; around a DST change the order of the steps decides where a time lands, so
    Cube's answers there can only be reproduced by taking the same steps."""

    __slots__ = ("wall", "offset", "zone")

    def __init__(self, instant: datetime, zone_info: zoneinfo.ZoneInfo) -> None:
        self.zone = zone_info
        self.offset = self._offset_at(instant.replace(tzinfo=None))
        self.wall = instant.replace(tzinfo=None) + timedelta(minutes=self.offset)

    def _offset_at(self, instant: datetime) -> int:
        delta = instant.replace(tzinfo=UTC).astimezone(self.zone).utcoffset()
        return int(delta.total_seconds() // 60) if delta is not None else 0

    def _update_offset(self, keep_time: bool) -> None:
        # moment-timezone's updateOffset: take the zone's offset at the instant the wall time
        # and the old offset give, then keep either the wall time (even one inside a DST gap)
        # or the instant. (Its inner re-check never runs: utcOffset() clears the zone first.)
        offset = self._offset_at(self.wall - timedelta(minutes=self.offset))
        if offset != self.offset:
            if not keep_time:
                self.wall += timedelta(minutes=offset - self.offset)
            self.offset = offset

    def add(self, unit: str, amount: int) -> "_Moment":
        if amount:
            keep_time = unit not in _ABSOLUTE_UNITS
            self.wall = add_local(self.wall, unit, amount)
            self._update_offset(keep_time)
        return self

    def start_of(self, unit: str) -> "_Moment":
        self.wall = truncate_local(self.wall, unit)
        self._update_offset(True)
        return self

    def end_of(self, unit: str) -> "_Moment":
        self.wall = end_of_local(self.wall, unit)
        self._update_offset(True)
        return self

    def set_components(self, value: datetime) -> "_Moment":
        # chrono's result copied in as Cube's momentFromResult does: year, month, date, hour
        # (each keeping the wall time), then minute, second, millisecond (each keeping the instant).
        wall = self.wall
        if wall.month == 2 and wall.day == 29:
            wall = wall.replace(year=value.year, day=_days_in_month(value.year, 2))
        else:
            wall = wall.replace(year=value.year)
        self.wall = wall
        self._update_offset(True)
        self.wall = self.wall.replace(month=value.month, day=min(self.wall.day, _days_in_month(self.wall.year, value.month)))
        self._update_offset(True)
        self.wall = self.wall.replace(day=value.day)
        self._update_offset(True)
        self.wall = self.wall.replace(hour=value.hour)
        self._update_offset(True)
        self.wall = self.wall.replace(minute=value.minute)
        self._update_offset(False)
        self.wall = self.wall.replace(second=value.second)
        self._update_offset(False)
        self.wall = self.wall.replace(microsecond=value.microsecond // 1000 * 1000)
        self._update_offset(False)
        return self

    def format(self) -> str:
        return format_local(self.wall)


def parse_relative_date_range(text: str, timezone: str, now: datetime | None = None) -> tuple[str, str]:
    """Return the local ``(from, to)`` bounds of a ``dateRange`` string by Cube's dateParser rules
    (see the module docstring), evaluated in ``timezone`` at ``now``; UserError
    ``Can't parse date: '<text>'`` when nothing fits."""
    lowered = text.lower()
    now_utc = utc_now(now)
    zone_info = zone(timezone)

    def moment() -> _Moment:
        return _Moment(now_utc, zone_info)

    try:
        match = _RULE_THIS_LAST_NEXT.search(lowered)
        if match:
            direction, unit = match.groups()
            amount = {"this": 0, "last": -1, "next": 1}[direction]
            return (moment().add(unit, amount).start_of(unit).format(),
                    moment().add(unit, amount).end_of(unit).format())
        match = _RULE_LAST_NEXT_N.search(lowered)
        if match:
            direction, count, unit = match.groups()
            n = int(count)
            first, last = (-n, -1) if direction == "last" else (1, n)
            return moment().add(unit, first).start_of(unit).format(), moment().add(unit, last).end_of(unit).format()
        for word, days in (("today", 0), ("yesterday", -1), ("tomorrow", 1)):
            if word in lowered:
                return (moment().start_of("day").add("day", days).format(),
                        moment().end_of("day").add("day", days).format())
        granularity = next((g for g in ("second", "minute", "hour") if g in lowered), "day")
        local = moment().wall
        match = _RULE_FROM_TO.fullmatch(lowered)
        sides = match.groups() if match else (lowered,)
        parsed = []
        for side in sides:
            value = _chrono(side, local)
            if value is None:
                raise _cant_parse(side)
            parsed.append(value)
        return (moment().set_components(parsed[0]).start_of(granularity).format(),
                moment().set_components(parsed[-1]).end_of(granularity).format())
    except (OverflowError, ValueError):
        # Years beyond 1..9999 ("last 100000 years"): moment gives Invalid date.
        raise _cant_parse(lowered) from None


# ---------------------------------------------------------------------------------------------
# dateRange and filter bounds


def _bound(value: str, end: bool) -> str:
    if _DATE_ONLY.fullmatch(value):
        if _ymd(int(value[0:4]), int(value[5:7]), int(value[8:10])) is None:
            raise _cant_parse(value)
        return value + ("T23:59:59.999" if end else "T00:00:00.000")
    parsed = parse_moment_utc(value)
    if parsed is None:
        raise _cant_parse(value)
    return format_local(parsed)


def normalize_date_range(value: str | list[str] | tuple[str, ...], timezone: str,
                         now: datetime | None = None) -> tuple[str, str]:
    """Return the local ``(from, to)`` bounds of a time dimension's ``dateRange`` as Cube
    normalizes it: a string through the relative date parser, a one-element list duplicated,
    each bound formatted ``YYYY-MM-DDTHH:mm:ss.SSS`` (a bare date starts at ``T00:00:00.000``
    and ends at ``T23:59:59.999``). UserError ``Can't parse date: '<value>'`` for a bad bound."""
    if isinstance(value, str):
        return parse_relative_date_range(value, timezone, now)
    if len(value) == 1:
        return _bound(value[0], False), _bound(value[0], True)
    return _bound(value[0], False), _bound(value[1], True)


def filter_bound(value: str | None, timezone: str, end: bool, now: datetime | None = None) -> str:
    """Return the local ``YYYY-MM-DDTHH:mm:ss.SSS`` bound Cube's BaseFilter makes of one date
    filter value: a local timestamp as is, a bare date padded to the start (or ``end``) of the
    day, a timestamp with an offset moved to ``timezone``'s wall clock, no value at all the start
    (or end) of today. UserError ``Can't parse date: '<value>'`` when unreadable."""
    if value and _LOCAL_MS.fullmatch(value):
        return value
    if not value:
        today = local_now(timezone, now)
        return format_local(end_of_local(today, "day") if end else truncate_local(today, "day"))
    if _DATE_ONLY.fullmatch(value):
        return _bound(value, end)
    parsed = parse_moment(value)
    if parsed is None:
        raise _cant_parse(value)
    wall, offset = parsed
    try:
        if offset is not None:
            wall = to_local((wall - timedelta(minutes=offset)).replace(tzinfo=UTC), timezone)
        else:
            wall = resolve_wall_time(wall, timezone)
    except OverflowError:
        raise _cant_parse(value) from None
    return format_local(wall)


_RANGE_OPERATORS = frozenset({"inDateRange", "notInDateRange", "onTheDate"})
_START_OPERATORS = frozenset({"beforeDate", "afterOrOnDate"})
_END_OPERATORS = frozenset({"beforeOrOnDate", "afterDate"})
_ABSOLUTE_DATE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?")


def resolve_date_filter_values(operator: str, values: list[str | None], timezone: str,
                               now: datetime | None = None) -> list[str | None] | None:
    """Return the values a date filter uses once a relative date in it is resolved, as newer
    Cube does, or None when nothing changes: a single string for inDateRange/notInDateRange/
    onTheDate becomes its ``[from, to]`` range; a single non-absolute string for
    beforeDate/afterOrOnDate its start, for beforeOrOnDate/afterDate its end."""
    if operator in _RANGE_OPERATORS and len(values) > 1:
        if any(isinstance(v, str) and not _ABSOLUTE_DATE.fullmatch(v) for v in values):
            raise UserError(
                "Relative-date strings are only supported when `values` has a single element for operator "
                f"`{operator}`. Pass an absolute two-element [start, end] pair, or a single relative string "
                f"like [\"last 2 weeks\"]. Got: {_js_list(values)}")
        return None
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    value = values[0]
    if operator in _RANGE_OPERATORS:
        return list(normalize_date_range(value, timezone, now))
    if _ABSOLUTE_DATE.fullmatch(value):
        return None
    if operator in _START_OPERATORS:
        return [normalize_date_range(value, timezone, now)[0]]
    if operator in _END_OPERATORS:
        return [normalize_date_range(value, timezone, now)[1]]
    return None


def _js_list(values: list[str | None]) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))

