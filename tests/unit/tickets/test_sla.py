"""The SLA clock (service desk §3): given a ticket's history, when evaluated at `now`, then these dues and breaches."""
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from shopdesk.tickets.calendar import BusinessCalendar
from shopdesk.tickets.sla import (ReplyAdded, SlaPolicy, StatusGroupChanged, TicketCreated, evaluate,
                                  next_check_at, pending_events)

UTC = timezone.utc
SHANGHAI = ZoneInfo("Asia/Shanghai")
OFFICE = BusinessCalendar.from_settings({
    "time_zone": "Asia/Shanghai",
    "hours": {day: [["09:00", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")},
})
POLICY = SlaPolicy(calendar=OFFICE, first_response_minutes=60, next_response_minutes=30, resolution_minutes=240)


def sh(*args: int) -> datetime:
    """Return a Shanghai wall time as an aware UTC instant."""
    return datetime(*args, tzinfo=SHANGHAI).astimezone(UTC)


def mon(hour: int, minute: int = 0, second: int = 0) -> datetime:
    """Return a time on Monday 9 November 2026, Shanghai."""
    return sh(2026, 11, 9, hour, minute, second)


def created(at: datetime) -> TicketCreated:
    return TicketCreated(at)


def status(at: datetime, group: str) -> StatusGroupChanged:
    return StatusGroupChanged(at, group)


def staff(at: datetime, public: bool = True) -> ReplyAdded:
    return ReplyAdded(at, "staff", public)


def shopper(at: datetime) -> ReplyAdded:
    return ReplyAdded(at, "shopper")


def sweep(policy: SlaPolicy, facts: list, moments: list[datetime]) -> list[tuple[str, str, datetime]]:
    """Run the sweeper at each moment, storing emitted keys as a caller would; return what went out."""
    emitted: set[str] = set()
    sent = []
    for now in moments:
        for event in pending_events(evaluate(policy, facts, now), emitted, now):
            emitted.add(event.key)
            sent.append((event.kind, event.target, event.at))
    return sent


def test_issue_vector_friday_1750_is_due_monday_0950():
    # Given a 1-business-hour first-response target on Mon–Fri 09:00–18:00, when a ticket opens
    # Friday 17:50, then it is due Monday 09:50 and breached from then on
    facts = [created(sh(2026, 11, 6, 17, 50))]
    before = evaluate(POLICY, facts, mon(9, 49)).first_response
    assert before.due_at == mon(9, 50)
    assert before.warning_at == mon(9, 38)  # 80 % of 60 business minutes: 10 on Friday, 38 on Monday
    assert not before.breached and before.active and not before.paused
    after = evaluate(POLICY, facts, mon(9, 50)).first_response
    assert after.breached and after.breached_at == mon(9, 50)


@pytest.mark.parametrize("case, replies, achieved_at, breached", [
    ("staff public reply", [staff(mon(9, 30))], mon(9, 30), False),
    ("private note does not count", [staff(mon(9, 30), public=False)], None, True),
    ("bot reply does not count", [ReplyAdded(mon(9, 10), "bot")], None, True),
    ("system reply does not count", [ReplyAdded(mon(9, 10), "system")], None, True),
    ("automation reply does not count", [ReplyAdded(mon(9, 10), "automation")], None, True),
    ("shopper reply does not count", [shopper(mon(9, 20))], None, True),
    ("bot first, then a late person", [ReplyAdded(mon(9, 10), "bot"), staff(mon(10, 30))], mon(10, 30), True),
    ("exactly at due is in time", [staff(mon(10, 0))], mon(10, 0), False),
    ("one second late", [staff(mon(10, 0, 1))], mon(10, 0, 1), True),
])
def test_first_response_is_met_only_by_a_person_in_public(case, replies, achieved_at, breached):
    state = evaluate(POLICY, [created(mon(9)), *replies], mon(12)).first_response
    assert state.due_at == mon(10), case
    assert state.achieved_at == achieved_at, case
    assert state.breached is breached, case
    assert state.breached_at == (mon(10) if breached else None), case


def test_first_response_does_not_pause_while_pending():
    state = evaluate(POLICY, [created(mon(9)), status(mon(9, 10), "pending")], mon(12)).first_response
    assert state.due_at == mon(10) and state.breached and not state.paused


@pytest.mark.parametrize("case, facts, stopped_at, breached", [
    ("solved before any reply stops it", [status(mon(9, 20), "solved")], mon(9, 20), False),
    ("closed before any reply stops it", [status(mon(9, 20), "closed")], mon(9, 20), False),
    ("solved after the due keeps the breach", [status(mon(10, 30), "solved")], mon(10, 30), True),
    ("a reply after a reopen does not revive it",
     [status(mon(9, 20), "solved"), status(mon(9, 40), "open"), staff(mon(11))], mon(9, 20), False),
])
def test_first_response_stops_when_solved_without_a_reply(case, facts, stopped_at, breached):
    state = evaluate(POLICY, [created(mon(9)), *facts], mon(12)).first_response
    assert state.stopped_at == stopped_at and state.achieved_at is None and not state.active, case
    assert state.breached is breached, case


def test_next_response_is_timed_from_the_oldest_unanswered_shopper_message():
    # Given a first response at 09:10, when the shopper writes at 10:00 and 10:05, an agent answers
    # at 10:20 and the shopper writes again at 11:00, then two next-response targets exist
    facts = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10)), shopper(mon(10, 5)), staff(mon(10, 20)),
             shopper(mon(11))]
    answered, waiting = evaluate(POLICY, facts, mon(12)).next_responses
    assert (answered.started_at, answered.due_at, answered.achieved_at, answered.breached) == (
        mon(10), mon(10, 30), mon(10, 20), False)
    assert (waiting.started_at, waiting.due_at, waiting.achieved_at, waiting.breached_at) == (
        mon(11), mon(11, 30), None, mon(11, 30))
    assert answered.key == "next_response@2026-11-09T02:00:00Z"
    assert waiting.key == "next_response@2026-11-09T03:00:00Z"


@pytest.mark.parametrize("case, facts, started", [
    ("shopper messages before the first response are its business",
     [shopper(mon(9, 5)), shopper(mon(9, 20)), staff(mon(9, 30))], []),
    ("no shopper message after the answer", [staff(mon(9, 30)), staff(mon(9, 40))], []),
    ("a bot answer is not the first response",
     [ReplyAdded(mon(9, 5), "bot"), shopper(mon(9, 20))], []),
    ("after a solve without a reply, the shopper's message starts one",
     [status(mon(9, 20), "solved"), shopper(mon(10)), status(mon(10), "open")], [mon(10)]),
])
def test_when_a_next_response_target_starts(case, facts, started):
    state = evaluate(POLICY, [created(mon(9)), *facts], mon(12))
    assert [t.started_at for t in state.next_responses] == started, case


@pytest.mark.parametrize("case, reply, achieved_at", [
    ("a person answers", staff(mon(10, 10)), mon(10, 10)),
    ("a bot does not", ReplyAdded(mon(10, 10), "bot"), None),
    ("a private note does not", staff(mon(10, 10), public=False), None),
])
def test_next_response_is_met_only_by_a_person_in_public(case, reply, achieved_at):
    facts = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10)), reply]
    assert evaluate(POLICY, facts, mon(12)).next_response.achieved_at == achieved_at, case


PENDING_HALF_HOUR = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10)), status(mon(10, 10), "pending"),
                     status(mon(10, 40), "open")]


@pytest.mark.parametrize("case, now, due_at, warning_at, paused", [
    ("running", mon(10, 5), mon(10, 30), mon(10, 24), False),
    ("pending: no deadline while paused", mon(10, 20), None, None, True),
    ("resumed: pushed back by the paused 30 minutes", mon(10, 45), mon(11), mon(10, 54), False),
])
def test_next_response_pauses_while_pending(case, now, due_at, warning_at, paused):
    state = evaluate(POLICY, PENDING_HALF_HOUR, now).next_response
    assert (state.due_at, state.warning_at, state.paused) == (due_at, warning_at, paused), case


def test_next_response_stops_when_solved():
    facts = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10)), status(mon(10, 10), "solved")]
    state = evaluate(POLICY, facts, mon(12)).next_response
    assert state.stopped_at == mon(10, 10) and not state.breached and not state.active
    assert pending_events(evaluate(POLICY, facts, mon(12)), set(), mon(12)) == []


def test_next_response_on_business_hours():
    facts = [created(sh(2026, 11, 6, 16)), staff(sh(2026, 11, 6, 17)), shopper(sh(2026, 11, 6, 17, 50))]
    assert evaluate(POLICY, facts, sh(2026, 11, 7, 12)).next_response.due_at == mon(9, 20)


# Resolution 240 business minutes: 09–10 open, 10–12 pending, 12–14 open, solved 14:00, reopened 16:00.
RESOLUTION_STORY = [created(mon(9)), status(mon(10), "pending"), status(mon(12), "open"),
                    status(mon(14), "solved"), status(mon(16), "open")]


@pytest.mark.parametrize("case, now, due_at, warning_at, achieved_at, breached, paused", [
    ("running from creation", mon(9, 30), mon(13), mon(12, 12), None, False, False),
    ("pending: no deadline", mon(11), None, None, None, False, True),
    ("resumed: due later by the two pending hours", mon(12, 30), mon(15), mon(14, 12), None, False, False),
    ("solved: met, due as it stood", mon(14, 30), mon(15), mon(14, 12), mon(14), False, False),
    ("reopened: the clock resumes with 3 hours used", mon(16, 30), mon(17), mon(16, 12), None, False, False),
    ("then breached", mon(17, 30), mon(17), mon(16, 12), None, True, False),
])
def test_resolution_counts_only_open_business_time(case, now, due_at, warning_at, achieved_at, breached, paused):
    state = evaluate(POLICY, RESOLUTION_STORY, now).resolution
    assert (state.due_at, state.warning_at, state.achieved_at, state.breached, state.paused) == (
        due_at, warning_at, achieved_at, breached, paused), case


@pytest.mark.parametrize("case, facts, achieved_at, stopped_at", [
    ("solved", [status(mon(10), "solved")], mon(10), None),
    ("solved then closed: met when solved", [status(mon(10), "solved"), status(mon(11), "closed")], mon(10), None),
    ("closed straight from open (a merge): stopped", [status(mon(10), "closed")], None, mon(10)),
    ("a custom status of the same group changes nothing", [status(mon(9, 30), "open"), status(mon(9, 40), "open")],
     None, None),
])
def test_resolution_ends(case, facts, achieved_at, stopped_at):
    state = evaluate(POLICY, [created(mon(9)), *facts], mon(12)).resolution
    assert (state.achieved_at, state.stopped_at) == (achieved_at, stopped_at), case


def test_a_resolution_breach_survives_solve_and_reopen_and_is_emitted_once():
    policy = SlaPolicy(calendar=OFFICE, resolution_minutes=60)
    facts = [created(mon(9)), status(mon(10, 30), "solved"), status(mon(11), "open"), status(mon(11, 30), "solved")]
    state = evaluate(policy, facts, mon(12)).resolution
    assert state.achieved_at == mon(11, 30) and state.breached and state.breached_at == mon(10)
    moments = [mon(9, 30), mon(9, 50), mon(10, 5), mon(10, 45), mon(11, 15), mon(12)]
    assert sweep(policy, facts, moments) == [("warning", "resolution", mon(9, 48)), ("breach", "resolution", mon(10))]


def test_sweeping_emits_each_warning_and_breach_once():
    # Given the issue's ticket, when a sweeper runs again and again, then one warning and one breach go out
    facts = [created(sh(2026, 11, 6, 17, 50))]
    policy = SlaPolicy(calendar=OFFICE, first_response_minutes=60)
    moments = [sh(2026, 11, 6, 17, 55), sh(2026, 11, 6, 18, 30), sh(2026, 11, 7, 12), mon(9), mon(9, 37), mon(9, 38),
               mon(9, 39), mon(9, 49), mon(9, 50), mon(9, 51), mon(10, 30)]
    assert sweep(policy, facts, moments) == [("warning", "first_response", mon(9, 38)),
                                             ("breach", "first_response", mon(9, 50))]


def test_each_next_response_instance_breaches_once():
    facts = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10)), staff(mon(10, 45)), shopper(mon(11))]
    policy = SlaPolicy(calendar=OFFICE, next_response_minutes=30, warning_percent=None)
    moments = [mon(10, 29), mon(10, 31), mon(10, 50), mon(11, 31), mon(12), mon(13)]
    assert sweep(policy, facts, moments) == [("breach", "next_response", mon(10, 30)),
                                             ("breach", "next_response", mon(11, 30))]


@pytest.mark.parametrize("case, facts, now, expected", [
    ("a late sweep sends the breach without the stale warning", [], mon(10, 30),
     [("breach", "first_response", mon(10))]),
    ("a reply after the due still owes its breach", [staff(mon(10, 20))], mon(11),
     [("breach", "first_response", mon(10))]),
    ("a target met in time sends nothing, even past its warning", [staff(mon(9, 55))], mon(11), []),
])
def test_pending_events(case, facts, now, expected):
    policy = SlaPolicy(calendar=OFFICE, first_response_minutes=60)
    events = pending_events(evaluate(policy, [created(mon(9)), *facts], now), set(), now)
    assert [(e.kind, e.target, e.at) for e in events] == expected, case


def test_event_keys_name_the_kind_and_the_target_instance():
    facts = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10))]
    events = pending_events(evaluate(POLICY, facts, mon(13)), set(), mon(13))
    assert [e.key for e in events] == ["breach:next_response@2026-11-09T02:00:00Z", "breach:resolution"]


@pytest.mark.parametrize("case, facts, now, emitted, expected", [
    ("the first-response warning comes first", [], mon(9, 45), set(), mon(9, 48)),
    ("then its breach", [], mon(9, 45), {"warning:first_response"}, mon(10)),
    ("then the resolution warning", [], mon(9, 45), {"warning:first_response", "breach:first_response"},
     mon(12, 12)),
    ("answered: the resolution warning", [staff(mon(9, 30))], mon(9, 45), set(), mon(12, 12)),
    ("answered and pending: nothing to wake up for", [staff(mon(9, 30)), status(mon(9, 40), "pending")],
     mon(9, 45), set(), None),
    ("a late answer still owes its breach", [staff(mon(10, 30)), status(mon(10, 40), "pending")],
     mon(10, 50), set(), mon(10)),
])
def test_next_check_at(case, facts, now, emitted, expected):
    state = evaluate(POLICY, [created(mon(9)), *facts], now)
    assert next_check_at(state, emitted) == expected, case


def test_no_calendar_means_calendar_time():
    policy = SlaPolicy(first_response_minutes=60)
    state = evaluate(policy, [created(sh(2026, 11, 6, 17, 50))], sh(2026, 11, 6, 18))
    assert state.first_response.due_at == sh(2026, 11, 6, 18, 50)


def test_a_policy_without_targets_measures_nothing():
    facts = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10))]
    state = evaluate(SlaPolicy(calendar=OFFICE), facts, mon(12))
    assert (state.first_response, state.next_responses, state.resolution) == (None, (), None)
    assert pending_events(state, set(), mon(12)) == [] and next_check_at(state, set()) is None


@pytest.mark.parametrize("percent, warning_at", [(None, None), (50, mon(9, 30)), (90, mon(9, 54))])
def test_warning_percent(percent, warning_at):
    policy = SlaPolicy(calendar=OFFICE, first_response_minutes=60, warning_percent=percent)
    assert evaluate(policy, [created(mon(9))], mon(9, 5)).first_response.warning_at == warning_at


def test_zero_minute_target_is_due_at_once():
    policy = SlaPolicy(calendar=OFFICE, first_response_minutes=0)
    state = evaluate(policy, [created(mon(9))], mon(9)).first_response
    assert state.due_at == mon(9) and state.breached


def test_facts_after_now_are_ignored():
    facts = [created(mon(9)), staff(mon(11))]
    assert evaluate(POLICY, facts, mon(10, 30)).first_response.achieved_at is None
    assert evaluate(POLICY, facts, mon(11)).first_response.achieved_at == mon(11)


def test_instance_keys_are_stable_as_history_grows():
    facts = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10)), staff(mon(10, 10)), shopper(mon(11)),
             staff(mon(11, 5)), shopper(mon(15))]
    earlier = [t.key for t in evaluate(POLICY, facts, mon(11, 30)).next_responses]
    later = [t.key for t in evaluate(POLICY, facts, mon(16)).next_responses]
    assert later[:len(earlier)] == earlier and len(later) == 3


def test_same_instant_instances_get_distinct_keys():
    facts = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10)), staff(mon(10)), shopper(mon(10))]
    keys = [t.key for t in evaluate(POLICY, facts, mon(12)).next_responses]
    assert keys == ["next_response@2026-11-09T02:00:00Z", "next_response@2026-11-09T02:00:00Z#2"]


def test_breaches_in_time_order_for_the_api():
    facts = [created(mon(9)), staff(mon(10, 30)), shopper(mon(11))]
    state = evaluate(POLICY, facts, mon(17))
    assert state.breaches == [("first_response", mon(10)), ("next_response", mon(11, 30)),
                              ("resolution", mon(13))]


@pytest.mark.parametrize("case, facts, now, message", [
    ("naive now", [created(mon(9))], datetime(2026, 11, 9, 12), "now: expected an aware"),
    ("naive fact", [created(mon(9)), staff(datetime(2026, 11, 9, 10))], mon(12), r"facts\[1\].at: expected an aware"),
    ("no creation", [staff(mon(9))], mon(12), "facts: expected exactly one TicketCreated"),
    ("two creations", [created(mon(9)), created(mon(10))], mon(12), "facts: expected exactly one TicketCreated"),
    ("unknown author", [created(mon(9)), ReplyAdded(mon(10), "agent")], mon(12), r"facts\[1\].author: unknown"),
    ("unknown group", [created(mon(9)), status(mon(10), "waiting")], mon(12), r"facts\[1\]: unknown status group"),
    ("now before creation", [created(mon(9))], mon(8), "now: before the ticket was created"),
    ("fact before creation", [created(mon(9)), staff(mon(8))], mon(12), "facts: a fact is older than the ticket"),
])
def test_evaluate_refuses_bad_history(case, facts, now, message):
    with pytest.raises(ValueError, match=message):
        evaluate(POLICY, facts, now)


@pytest.mark.parametrize("changes, message", [
    ({"first_response_minutes": -1}, "first_response_minutes: expected a whole number"),
    ({"resolution_minutes": 1.5}, "resolution_minutes: expected a whole number"),
    ({"warning_percent": 100}, "warning_percent: expected 1 to 99"),
    ({"warning_percent": 0}, "warning_percent: expected 1 to 99"),
])
def test_policy_refuses_bad_targets(changes, message):
    with pytest.raises(ValueError, match=message):
        SlaPolicy(calendar=OFFICE, **changes)


def test_evaluation_is_pure():
    facts = [created(mon(9)), staff(mon(9, 10)), shopper(mon(10))]
    snapshot = list(facts)
    assert evaluate(POLICY, facts, mon(12)) == evaluate(POLICY, facts, mon(12))
    assert facts == snapshot
    assert evaluate(POLICY, reversed(facts), mon(12)) == evaluate(POLICY, facts, mon(12))
