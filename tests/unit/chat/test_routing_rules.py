"""Routing rules, table-driven: who gets a chat, the wait estimate, business hours."""
from datetime import datetime, timezone

import pytest

from shopdesk.chat.routing import AgentSlot, check_business_hours, pick_agent, queue_eta, within_hours
from shopdesk.core.errors import ValidationFailed

T = datetime(2026, 11, 6, 4, 0, tzinfo=timezone.utc)  # a Friday, 12:00 in Shanghai
EARLY, LATE = datetime(2026, 11, 6, 1, tzinfo=timezone.utc), datetime(2026, 11, 6, 3, tzinfo=timezone.utc)


@pytest.mark.parametrize("agents, sticky, expected", [
    ([], None, None),
    ([AgentSlot("a", 2, 2), AgentSlot("b", 2, 2)], None, None),  # everyone full → queue
    ([AgentSlot("a", 5, 3), AgentSlot("b", 5, 1)], None, "b"),  # least loaded
    ([AgentSlot("a", 10, 3), AgentSlot("b", 2, 1)], None, "a"),  # 3/10 is lighter than 1/2
    ([AgentSlot("a", 5, 1, LATE), AgentSlot("b", 5, 1, EARLY)], None, "b"),  # round robin among equals
    ([AgentSlot("a", 5, 1, EARLY), AgentSlot("b", 5, 1, None)], None, "b"),  # never assigned goes first
    ([AgentSlot("a", 5, 4), AgentSlot("b", 5, 0)], "a", "a"),  # sticky with room
    ([AgentSlot("a", 5, 5), AgentSlot("b", 5, 0)], "a", "b"),  # sticky but full
    ([AgentSlot("b", 5, 0)], "gone", "b"),  # sticky agent not online
])
def test_pick_agent(agents, sticky, expected):
    assert pick_agent(agents, sticky=sticky) == expected


@pytest.mark.parametrize("position, capacity, avg, expected", [
    (1, 6, 180, 30), (4, 6, 180, 120), (1, 0, 180, 180), (3, 2, 100, 150), (1, 3, 100, 34)])
def test_queue_eta(position, capacity, avg, expected):
    assert queue_eta(position, capacity, avg) == expected


@pytest.mark.parametrize("hours, at, expected", [
    (None, T, True),
    ({"days": [0, 1, 2, 3, 4], "start": "09:00", "end": "18:00"}, T, True),
    ({"days": [0, 1, 2, 3, 4], "start": "09:00", "end": "12:00"}, T, False),  # the end is exclusive
    ({"days": [5, 6], "start": "09:00", "end": "18:00"}, T, False),  # weekends only
    ({"days": [4], "start": "22:00", "end": "02:00"}, datetime(2026, 11, 6, 15, tzinfo=timezone.utc), True),  # Fri 23:00
    ({"days": [4], "start": "22:00", "end": "02:00"}, datetime(2026, 11, 6, 17, tzinfo=timezone.utc), True),  # Sat 01:00
    ({"days": [4], "start": "22:00", "end": "02:00"}, datetime(2026, 11, 5, 17, tzinfo=timezone.utc), False),  # Fri 01:00
])
def test_within_hours_in_the_merchant_zone(hours, at, expected):
    assert within_hours(hours, at, "Asia/Shanghai") is expected


@pytest.mark.parametrize("hours, field", [
    ({"start": "9:00", "end": "18:00"}, "business_hours.start"),
    ({"start": "09:00", "end": "24:00"}, "business_hours.end"),
    ({"start": "09:00", "end": "09:00"}, "business_hours.end"),
    ({"days": [], "start": "09:00", "end": "18:00"}, "business_hours.days"),
    ({"days": [True], "start": "09:00", "end": "18:00"}, "business_hours.days"),
    ({"start": "09:00", "end": "18:00", "tz": "UTC"}, "business_hours"),
])
def test_bad_business_hours_name_the_field(hours, field):
    with pytest.raises(ValidationFailed) as exc:
        check_business_hours(hours)
    assert exc.value.field == field


def test_business_hours_default_to_every_day():
    assert check_business_hours({"start": "09:00", "end": "18:00"})["days"] == [0, 1, 2, 3, 4, 5, 6]
