"""Refresh intervals of the model: ``every: 1 hour`` or an equal-interval cron string.

Cube evaluates an ``every`` key as ``floor((now - offset) / interval)``: a new value at each
interval boundary (for a cron, at each fire time). Crons firing at unequal intervals
(``0 9 * * 1-5``) cannot be written that way and are refused, with Cube's text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cubed.errors import ModelError

_INTERVAL = re.compile(r"^\s*(\d+)\s+(second|minute|hour|day|week)s?\s*$", re.IGNORECASE)
_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
# Mondays at midnight UTC: a reference for cron offsets that every weekly cron also aligns to.
_REFERENCE = datetime(2020, 1, 6, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Every:
    """A refresh interval: a new key value every ``seconds``, shifted by ``offset`` seconds."""

    seconds: float
    offset: float = 0.0

    def value(self, now: float) -> str:
        """Return the key value at ``now`` (epoch seconds)."""
        return str(int((now - self.offset) // self.seconds))


def parse_every(text: str, zone: str | None = None, where: str = "refresh_key") -> Every:
    """Return the Every of ``N unit(s)`` or of a cron string (in ``zone``, default UTC);
    ModelError naming ``where`` when it is neither or the cron's intervals are unequal."""
    match = _INTERVAL.match(str(text))
    if match:
        return Every(seconds=float(int(match.group(1)) * _SECONDS[match.group(2).lower()]))
    try:
        from apscheduler.triggers.cron import CronTrigger

        trigger = CronTrigger.from_crontab(str(text), timezone=zone or "UTC")
    except (ValueError, KeyError) as error:
        raise ModelError(f"{where}: every '{text}' is neither an interval like '1 hour' nor a cron string: {error}") from None
    fires: list[datetime] = []
    previous = None
    moment = _REFERENCE
    for _ in range(12):
        upcoming = trigger.get_next_fire_time(previous, moment)
        if upcoming is None:
            break
        fires.append(upcoming)
        previous = upcoming
        moment = upcoming + timedelta(microseconds=1)
    gaps = {(b - a).total_seconds() for a, b in zip(fires, fires[1:])}
    if len(fires) < 2 or len(gaps) != 1:
        raise ModelError(f"{where}: Your cron string ('{text}') is correct, but we support only equal time intervals.")
    seconds = gaps.pop()
    offset = fires[0].timestamp() % seconds
    return Every(seconds=seconds, offset=offset)


def renewal_threshold(every_seconds: float) -> int:
    """Return Cube's renewal threshold of an ``every`` key: a tenth of it, between 1 and 300 s."""
    return int(max(1, min(300, round(every_seconds / 10))))
