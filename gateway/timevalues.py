"""ISO 8601 time values as a time-enabled layer offers them and ArcGIS asks them: an instant or
an interval ``<start>/<end>``, turned into epoch milliseconds (UTC), the unit of the
exportImage ``time`` parameter (ArcGIS REST "Export Image": ``time=<t>`` or ``<t1>,<t2>``)."""

from __future__ import annotations

from datetime import UTC, date, datetime

TimeSpan = tuple[int, int]
"""``(start, end)`` in epoch milliseconds, UTC; ``start == end`` for an instant."""


def _instant(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 date (its midnight UTC) or date-time (UTC when it
    carries no offset). Raises ``ValueError``."""
    text = text.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    else:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def parse_time(text: str) -> TimeSpan:
    """``text`` (``2020-08-31``, ``2020-08-31T10:00:00Z``, ``2010-01-01/2010-12-31``) as a
    ``TimeSpan``.

    Raises ``ValueError`` for anything else, an interval whose end is before its start
    included.
    """
    if len(text) > 80:
        raise ValueError(f"{text[:40]!r}... is not an ISO 8601 date, date-time or interval")
    start, slash, end = text.partition("/")
    try:
        first = _instant(start)
        last = _instant(end) if slash else first
    except (ValueError, OverflowError):
        raise ValueError(f"{text[:40]!r} is not an ISO 8601 date, date-time or interval") from None
    if last < first:
        raise ValueError(f"{text!r} ends before it starts")
    return first, last


def arcgis_time(span: TimeSpan) -> str:
    """The exportImage ``time`` value of ``span``: ``t`` for an instant, ``t1,t2`` else."""
    start, end = span
    return str(start) if start == end else f"{start},{end}"


def key_part(span: TimeSpan) -> str:
    """``span`` as a cache-key part: ``t`` or ``t1_t2`` (epoch milliseconds)."""
    start, end = span
    return str(start) if start == end else f"{start}_{end}"


def iso_time(epoch_ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC: ``2020-08-31`` at midnight, else
    ``2020-08-31T10:00:00Z`` (with milliseconds when there are some)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    if moment.hour == moment.minute == moment.second == moment.microsecond == 0:
        return moment.date().isoformat()
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"
