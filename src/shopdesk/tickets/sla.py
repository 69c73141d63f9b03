"""The SLA clock of a ticket (service desk §3): pure, recomputed from the ticket's history.

`evaluate(policy, facts, now)` replays the facts (creation, status-group changes, replies) and
returns, for each target, when it is due, when it was met, and whether and when it was breached.
Nothing is stored between calls except the keys of the events already emitted, which
`pending_events` uses so that each warning and each breach goes out exactly once.

Decisions:
- Only a public reply by staff (a person) is a response. Bot, system and automation replies and
  private notes never are; a shopper's public reply is what starts a next-response target.
- Business time comes from the policy's calendar; no calendar means calendar time (24/7).
- first_response: starts at creation; due = created + first_response_minutes of business time;
  met by the first staff public reply. Its clock does not pause on pending. If the ticket is
  solved or closed before any such reply, the target stops (no breach after that) for good.
- next_response: once the first response is met (or stopped), a shopper public reply starts a new
  target unless one is already running, so it is timed from the oldest unanswered shopper
  message. Met by the next staff public reply; stopped when the ticket enters solved or closed.
  Its clock runs only while the status group is new or open: pending pauses it and pushes the
  due later by the paused business time. Each instance has a stable key,
  "next_response@<start, RFC 3339>", so its one breach is never emitted twice.
- resolution: one per ticket. Business time counts while the status group is new or open;
  pending pauses it. Entering solved meets it; entering closed straight from an open state
  (e.g. a merge) stops it; a reopen clears both and the clock resumes where it was. A breach
  stays a breach after a solve and a reopen, and is emitted once (key "resolution").
- due_at is the crossing instant if the clock already reached the target, else the projection
  while the clock runs at the target's last moment (now, or when it was met or stopped), else
  None (paused: no timer to set). Met exactly at due is in time; still open at due is a breach.
- warning_at is when warning_percent (default 80) of the target's business time has elapsed,
  found the same way; a warning is emitted only while the target is still open and not breached.
- Facts later than `now` are ignored, so a history can be evaluated as of any moment.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from shopdesk.tickets.calendar import TWENTY_FOUR_SEVEN, BusinessCalendar

UTC = timezone.utc

Target = Literal["first_response", "next_response", "resolution"]
StatusGroup = Literal["new", "open", "pending", "solved", "closed"]
AuthorType = Literal["staff", "shopper", "system", "bot", "automation"]
EventKind = Literal["warning", "breach"]

STATUS_GROUPS: tuple[str, ...] = ("new", "open", "pending", "solved", "closed")
AUTHOR_TYPES: tuple[str, ...] = ("staff", "shopper", "system", "bot", "automation")
RUNNING = frozenset({"new", "open"})
FINISHED = frozenset({"solved", "closed"})

Segment = tuple[datetime, datetime | None]  # a span the clock runs; None = still running


@dataclass(frozen=True)
class SlaPolicy:
    """Targets in business minutes (None = no target) on a calendar (None = 24/7)."""

    calendar: BusinessCalendar | None = None
    first_response_minutes: int | None = None
    next_response_minutes: int | None = None
    resolution_minutes: int | None = None
    warning_percent: int | None = 80

    def __post_init__(self) -> None:
        for name in ("first_response_minutes", "next_response_minutes", "resolution_minutes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name}: expected a whole number of minutes, 0 or more")
        if self.warning_percent is not None and not 0 < self.warning_percent < 100:
            raise ValueError("warning_percent: expected 1 to 99")


@dataclass(frozen=True)
class TicketCreated:
    """The ticket was opened; every clock starts here."""

    at: datetime
    status_group: StatusGroup = "new"


@dataclass(frozen=True)
class StatusGroupChanged:
    """The ticket's status moved into another status group."""

    at: datetime
    group: StatusGroup


@dataclass(frozen=True)
class ReplyAdded:
    """A reply or a private note (public=False) was added."""

    at: datetime
    author: AuthorType
    public: bool = True


Fact = TicketCreated | StatusGroupChanged | ReplyAdded


@dataclass(frozen=True)
class TargetState:
    """One target instance as of `now`."""

    target: Target
    key: str
    started_at: datetime
    due_at: datetime | None
    warning_at: datetime | None
    achieved_at: datetime | None
    stopped_at: datetime | None
    breached: bool
    breached_at: datetime | None
    paused: bool

    @property
    def active(self) -> bool:
        """Tell whether the target is still waiting to be met."""
        return self.achieved_at is None and self.stopped_at is None


@dataclass(frozen=True)
class SlaState:
    """Every target of one ticket as of `now`."""

    first_response: TargetState | None
    next_responses: tuple[TargetState, ...]
    resolution: TargetState | None

    @property
    def next_response(self) -> TargetState | None:
        """Return the latest next-response instance, the one a ticket page shows."""
        return self.next_responses[-1] if self.next_responses else None

    @property
    def targets(self) -> tuple[TargetState, ...]:
        """Return every target instance, first response first."""
        found = [self.first_response] if self.first_response else []
        found += self.next_responses
        if self.resolution:
            found.append(self.resolution)
        return tuple(found)

    @property
    def breaches(self) -> list[tuple[Target, datetime]]:
        """Return (target, at) for every breach, in time order, as the API's `sla.breaches`."""
        found = [(t.target, t.breached_at) for t in self.targets if t.breached_at is not None]
        return sorted(found, key=lambda pair: pair[1])


@dataclass(frozen=True)
class SlaEvent:
    """A warning or breach to emit once."""

    kind: EventKind
    target: Target
    target_key: str
    at: datetime

    @property
    def key(self) -> str:
        """Return the key the caller stores so this event is never emitted twice."""
        return f"{self.kind}:{self.target_key}"


@dataclass
class _Window:
    """A target instance while the history is replayed."""

    started_at: datetime
    key: str
    achieved_at: datetime | None = None
    stopped_at: datetime | None = None

    @property
    def running(self) -> bool:
        """Tell whether the instance is neither met nor stopped."""
        return self.achieved_at is None and self.stopped_at is None


def evaluate(policy: SlaPolicy, facts: Iterable[Fact], now: datetime) -> SlaState:
    """Replay a ticket's facts up to `now` and return the state of every SLA target."""
    _require_aware(now, "now")
    replay = _replay(_ordered(facts, now))
    calendar = policy.calendar or TWENTY_FOUR_SEVEN

    def measure(target: Target, window: _Window, minutes: int | None, pausable: bool) -> TargetState | None:
        """Measure one target instance; None when the policy sets no such target."""
        if minutes is None:
            return None
        if pausable:
            segments = _running_segments(replay.timeline, window.started_at, window.achieved_at or window.stopped_at)
        else:
            segments = [(window.started_at, None)]
        return _target_state(target, window, calendar, segments, minutes * 60, policy.warning_percent, now)

    next_responses = [measure("next_response", w, policy.next_response_minutes, pausable=True)
                      for w in replay.next_responses]
    return SlaState(
        first_response=measure("first_response", replay.first_response, policy.first_response_minutes,
                               pausable=False),
        next_responses=tuple(state for state in next_responses if state is not None),
        resolution=measure("resolution", replay.resolution, policy.resolution_minutes, pausable=True),
    )


def pending_events(state: SlaState, already_emitted_keys: Iterable[str], now: datetime) -> list[SlaEvent]:
    """Return the warnings and breaches that are due by `now` and not yet emitted, oldest first."""
    _require_aware(now, "now")
    emitted = set(already_emitted_keys)
    events = []
    for t in state.targets:
        if t.breached_at is not None:
            events.append(SlaEvent("breach", t.target, t.key, t.breached_at))
        elif t.active and t.warning_at is not None and t.warning_at <= now:
            # A warning after the breach is noise, hence elif: a late sweep sends the breach alone.
            events.append(SlaEvent("warning", t.target, t.key, t.warning_at))
    return sorted((e for e in events if e.key not in emitted), key=lambda e: e.at)


def next_check_at(state: SlaState, already_emitted_keys: Iterable[str]) -> datetime | None:
    """Return when `pending_events` next has something to emit, for the ticket's deadline column."""
    emitted = set(already_emitted_keys)
    moments = []
    for t in state.targets:
        if t.due_at is not None and (t.active or t.breached) and f"breach:{t.key}" not in emitted:
            moments.append(t.due_at)
        if t.active and not t.breached and t.warning_at is not None and f"warning:{t.key}" not in emitted:
            moments.append(t.warning_at)
    return min(moments, default=None)


@dataclass
class _Replay:
    """What one pass over the facts learns."""

    timeline: list[tuple[datetime, str]]  # (since, status group), one entry per change of group
    first_response: _Window
    next_responses: list[_Window]
    resolution: _Window


def _replay(history: Sequence[Fact]) -> _Replay:
    """Walk the ordered facts once: the status timeline and when each target started and ended."""
    created = history[0]
    timeline: list[tuple[datetime, str]] = [(created.at, created.status_group)]
    first = _Window(created.at, "first_response")
    replies: list[_Window] = []
    waiting: _Window | None = None  # the next-response instance still running, if any
    for fact in history[1:]:
        if isinstance(fact, StatusGroupChanged):
            if fact.group == timeline[-1][1]:
                continue  # a custom status of the same group moves no clock
            timeline.append((fact.at, fact.group))
            if fact.group in FINISHED:
                # Solving answers whoever was waiting: no breach can follow for these targets.
                if first.running:
                    first.stopped_at = fact.at
                if waiting is not None:
                    waiting.stopped_at, waiting = fact.at, None
        elif isinstance(fact, ReplyAdded) and fact.public:
            if fact.author == "staff":
                if first.running:
                    first.achieved_at = fact.at
                if waiting is not None:
                    waiting.achieved_at, waiting = fact.at, None
            elif fact.author == "shopper" and not first.running and waiting is None:
                # Timed from the oldest unanswered message: later ones join the running instance.
                waiting = _Window(fact.at, _unique_key(replies, fact.at))
                replies.append(waiting)
    return _Replay(timeline, first, replies, _resolution_window(timeline, created.at))


def _target_state(target: Target, window: _Window, calendar: BusinessCalendar, segments: Sequence[Segment],
                  seconds: int, warning_percent: int | None, now: datetime) -> TargetState:
    """Measure one target instance against its running segments."""
    due_at = _reach(calendar, segments, seconds)
    warning_at = None
    if warning_percent is not None:
        warning_at = _reach(calendar, segments, seconds * warning_percent // 100)
    end = window.achieved_at or window.stopped_at
    # Met exactly at the due instant is in time; still open at it is already late.
    breached = due_at is not None and (due_at < end if end is not None else due_at <= now)
    return TargetState(
        target=target,
        key=window.key,
        started_at=window.started_at,
        due_at=due_at,
        warning_at=warning_at,
        achieved_at=window.achieved_at,
        stopped_at=window.stopped_at,
        breached=breached,
        breached_at=due_at if breached else None,
        paused=end is None and not (segments and segments[-1][1] is None),
    )


def _reach(calendar: BusinessCalendar, segments: Sequence[Segment], seconds: int) -> datetime | None:
    """Return when the clock, running only in `segments`, has counted `seconds`; None if it never does."""
    left = seconds
    for start, end in segments:
        if end is None:
            return calendar.add_business_seconds(start, left)
        span = calendar.business_seconds_between(start, end)
        if left <= span:
            return calendar.add_business_seconds(start, left)
        left -= span
    return None


def _running_segments(timeline: Sequence[tuple[datetime, str]], start: datetime,
                      end: datetime | None) -> list[Segment]:
    """Return the spans from `start` in which the status group runs the clock, cut at `end`."""
    segments: list[Segment] = []
    for i, (at, group) in enumerate(timeline):
        if end is not None and at >= end:
            break
        if group not in RUNNING:
            continue
        until = timeline[i + 1][0] if i + 1 < len(timeline) else None
        if end is not None and (until is None or until >= end):
            # Running when the target was met or stopped: project on, so due_at shows the deadline it had.
            until = None
        since = max(at, start)
        if until is None or until > since:
            segments.append((since, until))
    return segments


def _resolution_window(timeline: Sequence[tuple[datetime, str]], created: datetime) -> _Window:
    """Return the resolution target: met by the latest solve, stopped by a close that skipped solved."""
    window = _Window(created, "resolution")
    at, group = timeline[-1]
    if group == "solved":
        window.achieved_at = at
    elif group == "closed":
        before = timeline[-2] if len(timeline) > 1 else None
        if before is not None and before[1] == "solved":
            window.achieved_at = before[0]
        else:
            window.stopped_at = at
    return window


def _ordered(facts: Iterable[Fact], now: datetime) -> list[Fact]:
    """Check the facts and return those up to `now` in time order, creation first."""
    facts = list(facts)
    for i, fact in enumerate(facts):
        _require_aware(fact.at, f"facts[{i}].at")
        if isinstance(fact, (TicketCreated, StatusGroupChanged)) and _group(fact) not in STATUS_GROUPS:
            raise ValueError(f"facts[{i}]: unknown status group {_group(fact)!r}")
        if isinstance(fact, ReplyAdded) and fact.author not in AUTHOR_TYPES:
            raise ValueError(f"facts[{i}].author: unknown author type {fact.author!r}")
    created = [f for f in facts if isinstance(f, TicketCreated)]
    if len(created) != 1:
        raise ValueError("facts: expected exactly one TicketCreated")
    if created[0].at > now:
        raise ValueError("now: before the ticket was created")
    if any(f.at < created[0].at for f in facts):
        raise ValueError("facts: a fact is older than the ticket")
    # sorted() is stable: facts stored at the same instant keep the order they happened in.
    later = sorted((f for f in facts if not isinstance(f, TicketCreated) and f.at <= now), key=lambda f: f.at)
    return [created[0], *later]


def _group(fact: TicketCreated | StatusGroupChanged) -> str:
    """Return the status group a fact puts the ticket in."""
    return fact.status_group if isinstance(fact, TicketCreated) else fact.group


def _unique_key(windows: Sequence[_Window], started_at: datetime) -> str:
    """Return "next_response@<start>", suffixed when an earlier instance started at the same instant."""
    key = f"next_response@{_rfc3339(started_at)}"
    taken = {w.key for w in windows}
    n = 1
    while (candidate := key if n == 1 else f"{key}#{n}") in taken:
        n += 1
    return candidate


def _rfc3339(value: datetime) -> str:
    """Format an instant in UTC with a Z, keeping microseconds when there are any."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _require_aware(value: datetime, name: str) -> None:
    """Refuse a naive datetime: a wall time without a zone is ambiguous."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: expected an aware datetime")
