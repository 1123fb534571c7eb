"""Pre-aggregation table names and partition ranges.

Physical tables are named as Cube names them (so that an operator who knows Cube recognises
them): ``<logical>_<contentVersion>_<structureVersion>_<lastUpdatedAt>``, where the versions
are Cube's 8-character digests of the load SQL (structure) and of the load SQL with the
refresh-key values (content), and ``lastUpdatedAt`` is the build time in seconds, base 32.
A partition's logical name ends with its range start: ``orders_main20240101``.
"""
from __future__ import annotations

import hashlib
import json
import re
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

HASH_CHARSET = "abcdefghijklmnopqrstuvwxyz012345"
BASE32_DIGITS = "0123456789abcdefghijklmnopqrstuv"
MAX_PARTITIONS = 10000
_TABLE = re.compile(r"^(.+)_([^_]+)_([^_]+)_([^_]+)$")


def version(value: Any) -> str:
    """Return Cube's version of a JSON value: the first 5 bytes of the MD5 of its JSON text,
    5 bits at a time, as 8 characters of ``a-z0-5``."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    digest = hashlib.md5(text.encode("utf-8")).digest()
    result = []
    residue = 0
    shift = 0
    for byte in digest[:5]:
        shift += 8
        residue = (byte << (shift - 8)) | residue
        while residue >> 5:
            result.append(HASH_CHARSET[residue % 32])
            shift -= 5
            residue >>= 5
    result.append(HASH_CHARSET[residue % 32])
    return "".join(result)


def encode_timestamp(seconds: float) -> str:
    """Return whole seconds in base 32 (JavaScript's ``toString(32)``), as Cube's names."""
    value = int(seconds)
    if value <= 0:
        return "0"
    digits = []
    while value:
        value, rest = divmod(value, 32)
        digits.append(BASE32_DIGITS[rest])
    return "".join(reversed(digits))


def decode_timestamp(text: str) -> float:
    """Return the seconds of a name's last part (base 32 seconds, or legacy milliseconds)."""
    if len(text) >= 13 and text.isdigit():
        return int(text) / 1000.0
    return float(int(text, 32))


@dataclass(frozen=True)
class TableVersion:
    """One built table: its logical name (without schema), versions and build time."""

    logical: str
    content: str
    structure: str
    updated_at: float
    physical: str


def parse_table_name(name: str) -> TableVersion | None:
    """Return the TableVersion a physical table name encodes, or None for other tables."""
    match = _TABLE.match(name)
    if match is None:
        return None
    try:
        updated_at = decode_timestamp(match.group(4))
    except ValueError:
        return None
    return TableVersion(match.group(1), match.group(2), match.group(3), updated_at, name)


def physical_name(logical: str, content: str, structure: str, built_at: float) -> str:
    """Return the physical table name of a build."""
    return f"{logical}_{content}_{structure}_{encode_timestamp(built_at)}"


@dataclass(frozen=True)
class Partition:
    """One partition: its name suffix, its local date range (Cube's wire form, inclusive) and
    the epoch seconds at which it ends."""

    suffix: str
    date_range: tuple[str, str]
    end: float


def _start_of(moment: datetime, granularity: str) -> datetime:
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.weekday())
    if granularity == "month":
        return day.replace(day=1)
    if granularity == "quarter":
        return day.replace(day=1, month=(day.month - 1) // 3 * 3 + 1)
    return day.replace(day=1, month=1)


def _next(moment: datetime, granularity: str) -> datetime:
    if granularity == "hour":
        return moment + timedelta(hours=1)
    if granularity == "day":
        return moment + timedelta(days=1)
    if granularity == "week":
        return moment + timedelta(days=7)
    months = {"month": 1, "quarter": 3, "year": 12}[granularity]
    index = moment.month - 1 + months
    return moment.replace(year=moment.year + index // 12, month=index % 12 + 1)


def local_time(text: str) -> datetime:
    """Return a wire-form local time (``YYYY-MM-DDTHH:mm:ss[.SSS]``, a space also accepted) as
    a naive datetime."""
    return datetime.strptime(text[:19].replace(" ", "T"), "%Y-%m-%dT%H:%M:%S")


def _wire(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _epoch(local: datetime, zone: str) -> float:
    return local.replace(tzinfo=zoneinfo.ZoneInfo(zone)).astimezone(timezone.utc).timestamp()


def partitions(start: datetime, end: datetime, granularity: str, zone: str) -> list[Partition]:
    """Return the partitions of ``granularity`` covering local times ``start``..``end``,
    oldest first; ValueError beyond MAX_PARTITIONS."""
    result: list[Partition] = []
    current = _start_of(start, granularity)
    while current <= end:
        following = _next(current, granularity)
        suffix = current.strftime("%Y%m%d%H" if granularity == "hour" else "%Y%m%d")
        last = following - timedelta(milliseconds=1)
        result.append(Partition(suffix, (_wire(current), _wire(last)), _epoch(following, zone)))
        if len(result) > MAX_PARTITIONS:
            raise ValueError(f"more than {MAX_PARTITIONS} partitions")
        current = following
    return result


def overlaps(partition: Partition, date_range: tuple[str, str] | None) -> bool:
    """Return whether a partition holds rows of a local date range (every one when None)."""
    if date_range is None:
        return True
    return partition.date_range[0] <= date_range[1] and date_range[0] <= partition.date_range[1]
