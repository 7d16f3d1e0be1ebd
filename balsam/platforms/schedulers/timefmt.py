"""Pure parsers for the time formats batch schedulers print, and helpers to make them UTC-aware.

Schedulers print local wall-clock times without a zone. Every parser here takes ``tz``: the zone those times
are in (``None`` means this machine's local zone, which is right when the adapter runs on the cluster's
login node) and returns aware UTC datetimes, so the rest of Balsam never sees a naive time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Optional

NOT_SET = frozenset({"", "N/A", "NONE", "None", "(null)", "Unknown", "INVALID", "NOT_SET", "-", "--"})

# A wall-time limit that is not limited; large enough to compare with any real window.
UNLIMITED_MIN = 1_000_000


def to_utc(naive: datetime, tz: Optional[tzinfo] = None) -> datetime:
    """Interpret a naive wall-clock time in ``tz`` (None: this machine's zone) and return it in UTC."""
    if naive.tzinfo is not None:
        return naive.astimezone(timezone.utc)
    if tz is None:
        return naive.astimezone(timezone.utc)  # a naive datetime's astimezone() assumes local time
    return naive.replace(tzinfo=tz).astimezone(timezone.utc)


def from_epoch(value: float) -> datetime:
    """A UTC datetime from seconds since the epoch."""
    return datetime.fromtimestamp(value, tz=timezone.utc)


def parse_iso(text: str, tz: Optional[tzinfo] = None) -> Optional[datetime]:
    """``2026-11-24T09:04:16`` (Slurm, SGE XML) to UTC; None for N/A, Unknown, empty."""
    text = text.strip()
    if text in NOT_SET:
        return None
    try:
        return to_utc(datetime.fromisoformat(text), tz)
    except ValueError:
        return None


def parse_ctime(text: str, tz: Optional[tzinfo] = None) -> Optional[datetime]:
    """``Tue Nov 24 09:04:16 2026`` (PBS, SGE qacct, Cobalt logs; runs of spaces allowed) to UTC."""
    text = " ".join(text.split())
    if text in NOT_SET:
        return None
    try:
        return to_utc(datetime.strptime(text, "%a %b %d %H:%M:%S %Y"), tz)
    except ValueError:
        return None


_HMS = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_hms_minutes(text: str) -> Optional[float]:
    """``HH:MM:SS`` (hours may exceed 24), ``D-HH:MM:SS``, ``HH:MM`` to minutes; None for N/A.

    Used for PBS, Cobalt and SGE durations, which always put hours first.
    """
    text = text.strip()
    if text in NOT_SET:
        return None
    m = _HMS.match(text)
    if not m:
        return None
    days, a, b, c = m.groups()
    if c is not None:
        hours, minutes, seconds = int(a), int(b), int(c)
    elif b is not None:
        hours, minutes, seconds = int(a), int(b), 0
    else:
        hours, minutes, seconds = 0, int(a), 0
    return (int(days or 0) * 24 + hours) * 60 + minutes + seconds / 60.0


def parse_slurm_duration_minutes(text: str) -> Optional[float]:
    """Slurm's ``[D-]H:MM:SS``, ``M:SS`` and ``M`` forms to minutes; UNLIMITED to :data:`UNLIMITED_MIN`.

    Slurm prints two fields as minutes:seconds (``5:00`` is five minutes), unlike PBS.
    """
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return float(UNLIMITED_MIN)
    if text in NOT_SET:
        return None
    m = _HMS.match(text)
    if not m:
        return None
    days, a, b, c = m.groups()
    if c is not None:
        hours, minutes, seconds = int(a), int(b), int(c)
    elif b is not None:
        hours, minutes, seconds = 0, int(a), int(b)
    elif days is not None:  # "D-H"
        hours, minutes, seconds = int(a), 0, 0
    else:
        hours, minutes, seconds = 0, int(a), 0
    return (int(days or 0) * 24 + hours) * 60 + minutes + seconds / 60.0


def format_hms(minutes: int) -> str:
    """Minutes to ``HH:MM:00`` (hours may exceed 24), the walltime form PBS and SGE accept."""
    if minutes < 0:
        raise ValueError(f"negative wall time: {minutes} minutes")
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def minutes_between(start: Optional[datetime], end: Optional[datetime]) -> Optional[float]:
    """Minutes from ``start`` to ``end`` (never negative); None if either is missing."""
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds() / 60.0)


_LSF_TIME = re.compile(r"^([A-Z][a-z]{2})\s+(\d{1,2})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s+(\d{4}))?(?:\s+[A-Z])?$")


def parse_lsf_time(text: str, now: datetime, tz: Optional[tzinfo] = None) -> Optional[datetime]:
    """LSF's ``Dec 28 19:56`` (no year), ``Dec 28 19:56:02 2018`` or with a trailing state letter (``L``, ``E``).

    Without a year, the year is taken from ``now`` (the poll time), and the previous year when that would
    put the time more than a day in the future (a job submitted in December, polled in January).
    """
    text = " ".join(text.split())
    if text in NOT_SET:
        return None
    m = _LSF_TIME.match(text)
    if not m:
        return None
    mon, day, hour, minute, second, year = m.groups()
    local_now = now.astimezone(tz) if tz is not None else now.astimezone()
    guess_year = int(year) if year else local_now.year
    try:
        naive = datetime.strptime(f"{mon} {day} {guess_year} {hour}:{minute}:{second or '00'}", "%b %d %Y %H:%M:%S")
    except ValueError:
        return None
    result = to_utc(naive, tz)
    if not year and result > now + timedelta(days=1):
        result = to_utc(naive.replace(year=guess_year - 1), tz)
    return result


_LSF_RUNTIME = re.compile(r"(\d+)\s*(day|hour|minute|second)s?", re.IGNORECASE)


def parse_words_minutes(text: str) -> Optional[float]:
    """``1 hour 30 minutes 15 seconds`` (LSF bslots) to minutes; UNLIMITED to :data:`UNLIMITED_MIN`."""
    text = text.strip()
    if text.upper() == "UNLIMITED":
        return float(UNLIMITED_MIN)
    units = {"day": 1440.0, "hour": 60.0, "minute": 1.0, "second": 1 / 60.0}
    found = _LSF_RUNTIME.findall(text)
    if not found:
        return None
    return sum(int(n) * units[u.lower()] for n, u in found)
