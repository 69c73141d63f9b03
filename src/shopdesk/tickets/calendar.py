"""Business-hours arithmetic on a merchant's calendar (service desk §3): pure, no I/O, no clock.

A calendar is weekly opening hours in one IANA time zone, minus holidays, plus make-up working
days (调休, e.g. the Saturday worked to bridge National Day). Every public method takes and
returns aware datetimes; results are in UTC. Opening hours are wall-clock times, so after a DST
change the same 09:00 opening is a different UTC instant, and a 24-hour day can last 23 or 25
hours: business time is always real elapsed time inside the open spans.

Rules, in one place:
- Intervals are half-open, [start, end): a calendar closing at 18:00 is closed at 18:00 sharp.
- "24:00" is allowed as an end, so 00:00–24:00 is a whole day; touching intervals are fine,
  overlapping ones are refused.
- A make-up working day uses Monday's hours (the first weekday with hours when Monday has
  none), whatever weekday it falls on.
- A holiday listed as a make-up working day too is refused: one of them is a typo.
- A wall time that does not exist (the hour skipped in spring) counts from the transition; a
  repeated one (autumn) is taken at its first occurrence.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = timezone.utc
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 24 * 60
SETTINGS_FIELDS = ("time_zone", "hours", "holidays", "workdays")

_HHMM = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d|24:00")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

Interval = tuple[int, int]  # minutes after local midnight, [start, end)


@dataclass(frozen=True)
class BusinessCalendar:
    """Weekly opening hours in one time zone, minus holidays, plus make-up working days."""

    time_zone: str
    hours: tuple[tuple[Interval, ...], ...]  # seven weekdays, Monday first
    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _always_open: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", _load_zone(self.time_zone))
        if len(self.hours) != len(WEEKDAYS):
            raise ValueError("hours: expected seven weekdays, Monday first")
        days = tuple(tuple(sorted(day)) for day in self.hours)
        for key, day in zip(WEEKDAYS, days):
            _check_day(key, day)
        if not any(days):
            # Holidays are a finite list, so weekly hours guarantee a next opening: no endless scan.
            raise ValueError("hours: no working time")
        clash = self.holidays & self.workdays
        if clash:
            raise ValueError(f"workdays: {min(clash).isoformat()} is also a holiday")
        object.__setattr__(self, "hours", days)
        object.__setattr__(self, "holidays", frozenset(self.holidays))
        object.__setattr__(self, "workdays", frozenset(self.workdays))
        # Round the clock with no holidays is plain elapsed time: skip the day-by-day walk.
        always = all(day == ((0, DAY_MINUTES),) for day in days) and not self.holidays
        object.__setattr__(self, "_always_open", always)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> BusinessCalendar:
        """Build a calendar from the `PUT /settings/calendars/{name}` body, naming any bad field."""
        if not isinstance(settings, Mapping):
            raise ValueError("calendar: expected an object")
        unknown = sorted(set(settings) - set(SETTINGS_FIELDS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown field")
        time_zone = settings.get("time_zone")
        if not isinstance(time_zone, str) or not time_zone:
            raise ValueError("time_zone: required, an IANA name such as Asia/Shanghai")
        return cls(
            time_zone=time_zone,
            hours=_parse_hours(settings.get("hours")),
            holidays=_parse_dates("holidays", settings.get("holidays", [])),
            workdays=_parse_dates("workdays", settings.get("workdays", [])),
        )

    def to_settings(self) -> dict[str, Any]:
        """Return the settings body that `from_settings` turns back into this calendar."""
        return {
            "time_zone": self.time_zone,
            "hours": {key: [[_hhmm(s), _hhmm(e)] for s, e in day] for key, day in zip(WEEKDAYS, self.hours)},
            "holidays": sorted(d.isoformat() for d in self.holidays),
            "workdays": sorted(d.isoformat() for d in self.workdays),
        }

    def hours_on(self, day: date) -> tuple[Interval, ...]:
        """Return the opening intervals of one local date."""
        if day in self.holidays:
            return ()
        if day in self.workdays:
            # 调休: a make-up working day is worked like a normal weekday; Monday's hours stand for one.
            return next(hours for hours in self.hours if hours)
        return self.hours[day.weekday()]

    def is_open(self, at: datetime) -> bool:
        """Tell whether the calendar is open at an instant."""
        return self.next_open(at) == at.astimezone(UTC)

    def next_open(self, at: datetime) -> datetime:
        """Return `at` if open then, else the next opening, in UTC."""
        _require_aware(at, "at")
        start, _ = next(self._spans_from(at))
        return start

    def add_business_minutes(self, start: datetime, minutes: int) -> datetime:
        """Return the instant `minutes` of business time after `start`, in UTC."""
        return self.add_business_seconds(start, minutes * 60)

    def add_business_seconds(self, start: datetime, seconds: int) -> datetime:
        """Return the earliest instant `seconds` of business time after `start`, in UTC."""
        _require_aware(start, "start")
        if seconds < 0:
            raise ValueError("seconds: must not be negative")
        # Zero means nothing has to elapse, so even a closed start is its own answer.
        if seconds == 0:
            return start.astimezone(UTC)
        left = timedelta(seconds=seconds)
        if self._always_open:
            return start.astimezone(UTC) + left
        for span_start, span_end in self._spans_from(start):
            if left <= span_end - span_start:
                return span_start + left
            left -= span_end - span_start
        raise AssertionError("unreachable: _spans_from never ends")

    def business_seconds_between(self, a: datetime, b: datetime) -> int:
        """Return whole seconds of business time from `a` to `b` (negative when `b` is earlier)."""
        _require_aware(a, "a")
        _require_aware(b, "b")
        if b < a:
            return -self.business_seconds_between(b, a)
        if self._always_open:
            return (b - a) // timedelta(seconds=1)
        total = timedelta(0)
        for span_start, span_end in self._spans_from(a):
            if span_start >= b:
                break
            total += min(span_end, b) - span_start
        return total // timedelta(seconds=1)

    def _spans_from(self, at: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Yield the open spans in UTC that end after `at`, clipped to start no earlier than it."""
        floor = at.astimezone(UTC)
        if self._always_open:
            yield floor, datetime.max.replace(tzinfo=UTC)
            return
        # Start a day early: a span of the previous local date can reach past a midnight that DST made ambiguous.
        day = at.astimezone(self._zone).date() - timedelta(days=1)
        # Between two openings, each week's open weekday must be a holiday, so a run of closed days
        # is shorter than 7 × (holidays + 1); a 7-day National Day costs 7 cheap iterations.
        limit = 7 * (len(self.holidays) + 2)
        closed_run = 0
        while True:
            found = False
            for start_min, end_min in self.hours_on(day):
                # Clamping to the previous end keeps spans ordered where a DST gap folds wall times back.
                span_start = max(self._instant(day, start_min), floor)
                span_end = self._instant(day, end_min)
                if span_end > span_start:
                    found = True
                    floor = span_end
                    yield span_start, span_end
            closed_run = 0 if found else closed_run + 1
            if closed_run > limit:
                raise AssertionError("unreachable: weekly hours always open again after the holidays")
            day += timedelta(days=1)

    def _instant(self, day: date, minute: int) -> datetime:
        """Return the UTC instant of a wall-clock minute of a local date (24:00 is the next midnight)."""
        # Aware + timedelta is wall-clock arithmetic in Python; the offset is looked up at the result.
        local = datetime.combine(day, time(0), tzinfo=self._zone) + timedelta(minutes=minute)
        return local.astimezone(UTC)


def _load_zone(name: str) -> ZoneInfo:
    """Return the zone of an IANA name, or raise a ValueError naming `time_zone`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"time_zone: unknown time zone {name!r}") from None


def _check_day(key: str, day: tuple[Interval, ...]) -> None:
    """Refuse intervals outside the day, empty or backwards, or overlapping (`day` is sorted)."""
    for start, end in day:
        if not 0 <= start < DAY_MINUTES or not 0 < end <= DAY_MINUTES:
            raise ValueError(f"hours.{key}: {start}–{end} is outside 00:00–24:00")
        if end <= start:
            raise ValueError(f"hours.{key}: end {_hhmm(end)} is not after start {_hhmm(start)}")
    for (s1, e1), (s2, e2) in zip(day, day[1:]):
        if s2 < e1:
            raise ValueError(f"hours.{key}: {_hhmm(s1)}–{_hhmm(e1)} overlaps {_hhmm(s2)}–{_hhmm(e2)}")


def _parse_hours(raw: Any) -> tuple[tuple[Interval, ...], ...]:
    """Turn `{"mon": [["09:00", "18:00"]], …}` into minute intervals; a missing weekday is closed."""
    if not isinstance(raw, Mapping):
        raise ValueError('hours: expected an object such as {"mon": [["09:00", "18:00"]]}')
    for key in raw:
        if key not in WEEKDAYS:
            raise ValueError(f"hours.{key}: unknown weekday, expected one of {', '.join(WEEKDAYS)}")
    days = []
    for key in WEEKDAYS:
        pairs = raw.get(key, [])
        if not isinstance(pairs, list):
            raise ValueError(f'hours.{key}: expected a list of ["HH:MM", "HH:MM"] pairs')
        day = []
        for i, pair in enumerate(pairs):
            where = f"hours.{key}[{i}]"
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f'{where}: expected ["HH:MM", "HH:MM"]')
            start, end = _parse_hhmm(where, pair[0]), _parse_hhmm(where, pair[1])
            if start == DAY_MINUTES:
                raise ValueError(f"{where}: a day cannot open at 24:00")
            if end <= start:
                raise ValueError(f"{where}: end {pair[1]} is not after start {pair[0]}")
            day.append((start, end))
        days.append(tuple(day))
    return tuple(days)


def _parse_hhmm(where: str, value: Any) -> int:
    """Return the minutes after midnight of an "HH:MM" string."""
    if not isinstance(value, str) or not _HHMM.fullmatch(value):
        raise ValueError(f"{where}: bad time {value!r}, expected HH:MM")
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


def _parse_dates(name: str, raw: Any) -> frozenset[date]:
    """Return the dates of a list of "YYYY-MM-DD" strings."""
    if not isinstance(raw, list):
        raise ValueError(f'{name}: expected a list of "YYYY-MM-DD" dates')
    days = set()
    for i, value in enumerate(raw):
        # fromisoformat alone would also take "20261001"; the contract says YYYY-MM-DD.
        try:
            if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
                raise ValueError
            days.add(date.fromisoformat(value))
        except ValueError:
            raise ValueError(f"{name}[{i}]: bad date {value!r}, expected YYYY-MM-DD") from None
    return frozenset(days)


def _hhmm(minute: int) -> str:
    """Format minutes after midnight as "HH:MM"."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _require_aware(value: datetime, name: str) -> None:
    """Refuse a naive datetime: a wall time without a zone is ambiguous."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: expected an aware datetime")


# Calendar time: the calendar a policy without one uses.
TWENTY_FOUR_SEVEN = BusinessCalendar(time_zone="UTC", hours=(((0, DAY_MINUTES),),) * len(WEEKDAYS))
