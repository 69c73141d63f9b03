"""Business-hours arithmetic (service desk §3): table-driven vectors on the pure calendar."""
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from shopdesk.tickets.calendar import TWENTY_FOUR_SEVEN, BusinessCalendar

UTC = timezone.utc
SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
WEEK = ("mon", "tue", "wed", "thu", "fri")

# National Day 2026: Thu 1 – Wed 7 October off, Saturday 10 October worked (调休).
OFFICE = BusinessCalendar.from_settings({
    "time_zone": "Asia/Shanghai",
    "hours": {day: [["09:00", "18:00"]] for day in WEEK},
    "holidays": [f"2026-10-0{d}" for d in range(1, 8)],
    "workdays": ["2026-10-10"],
})
LUNCH = BusinessCalendar.from_settings({
    "time_zone": "Asia/Shanghai",
    "hours": {**{day: [["13:00", "18:00"], ["09:00", "12:00"]] for day in WEEK}, "sat": [["10:00", "14:00"]]},
    "workdays": ["2026-10-11"],
})
BERLIN_OFFICE = BusinessCalendar.from_settings({
    "time_zone": "Europe/Berlin", "hours": {day: [["09:00", "17:00"]] for day in WEEK},
})


def sh(*args: int) -> datetime:
    """Return a Shanghai wall time as an aware UTC instant."""
    return datetime(*args, tzinfo=SHANGHAI).astimezone(UTC)


def be(*args: int) -> datetime:
    """Return a Berlin wall time as an aware UTC instant."""
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)


def round_the_clock(time_zone: str, holidays: list[str]) -> BusinessCalendar:
    return BusinessCalendar.from_settings({
        "time_zone": time_zone,
        "hours": {day: [["00:00", "24:00"]] for day in (*WEEK, "sat", "sun")},
        "holidays": holidays,
    })


def test_issue_vector_friday_1750_plus_one_business_hour_is_monday_0950():
    # Given a Mon–Fri 09:00–18:00 Shanghai calendar, when a ticket opens Friday 17:50 with a
    # 1-business-hour target, then it is due Monday 09:50
    due = OFFICE.add_business_minutes(sh(2026, 11, 6, 17, 50), 60)
    assert due == sh(2026, 11, 9, 9, 50)
    assert due.tzinfo == UTC


@pytest.mark.parametrize("case, start, minutes, expected", [
    ("inside hours", sh(2026, 11, 9, 10, 0), 90, sh(2026, 11, 9, 11, 30)),
    ("before opening rolls forward", sh(2026, 11, 9, 7, 0), 30, sh(2026, 11, 9, 9, 30)),
    ("exactly at close rolls to next day", sh(2026, 11, 6, 18, 0), 60, sh(2026, 11, 9, 10, 0)),
    ("after close", sh(2026, 11, 9, 21, 0), 60, sh(2026, 11, 10, 10, 0)),
    ("ends exactly at close stays that day", sh(2026, 11, 9, 9, 0), 540, sh(2026, 11, 9, 18, 0)),
    ("spills over the evening", sh(2026, 11, 9, 17, 0), 120, sh(2026, 11, 10, 10, 0)),
    ("weekend start", sh(2026, 11, 7, 12, 0), 60, sh(2026, 11, 9, 10, 0)),
    ("zero minutes inside hours", sh(2026, 11, 9, 10, 0), 0, sh(2026, 11, 9, 10, 0)),
    ("zero minutes when closed is the start itself", sh(2026, 11, 7, 12, 0), 0, sh(2026, 11, 7, 12, 0)),
    ("five business days from opening", sh(2026, 11, 9, 9, 0), 5 * 540, sh(2026, 11, 13, 18, 0)),
    ("five business days mid-day", sh(2026, 11, 11, 14, 0), 5 * 540, sh(2026, 11, 18, 14, 0)),
    ("National Day is skipped", sh(2026, 9, 30, 17, 0), 120, sh(2026, 10, 8, 10, 0)),
    ("start inside the holidays", sh(2026, 10, 3, 11, 0), 30, sh(2026, 10, 8, 9, 30)),
    ("调休 Saturday is worked", sh(2026, 10, 9, 17, 0), 120, sh(2026, 10, 10, 10, 0)),
    ("the Sunday after it is not", sh(2026, 10, 10, 17, 30), 60, sh(2026, 10, 12, 9, 30)),
    ("four days with the holidays between", sh(2026, 9, 28, 9, 0), 4 * 540, sh(2026, 10, 8, 18, 0)),
])
def test_add_business_minutes_office(case, start, minutes, expected):
    assert OFFICE.add_business_minutes(start, minutes) == expected, case


@pytest.mark.parametrize("case, start, minutes, expected", [
    ("runs into lunch and resumes at 13:00", sh(2026, 11, 9, 11, 30), 60, sh(2026, 11, 9, 13, 30)),
    ("starts during lunch", sh(2026, 11, 9, 12, 15), 30, sh(2026, 11, 9, 13, 30)),
    ("ends exactly at lunch", sh(2026, 11, 9, 11, 0), 60, sh(2026, 11, 9, 12, 0)),
    ("a full day is eight hours", sh(2026, 11, 9, 9, 0), 480, sh(2026, 11, 9, 18, 0)),
    ("Saturday has its own hours", sh(2026, 11, 6, 17, 30), 60, sh(2026, 11, 7, 10, 30)),
    ("调休 Sunday uses Monday's hours, lunch included", sh(2026, 10, 10, 13, 30), 120, sh(2026, 10, 11, 10, 30)),
])
def test_add_business_minutes_with_lunch_break(case, start, minutes, expected):
    assert LUNCH.add_business_minutes(start, minutes) == expected, case


def test_make_up_working_day_takes_mondays_hours():
    # Given a Saturday with hours of its own, when it is a 调休 day, then Monday's hours apply
    assert LUNCH.hours_on(date(2026, 10, 11)) == LUNCH.hours_on(date(2026, 10, 12)) == ((540, 720), (780, 1080))
    assert OFFICE.hours_on(date(2026, 10, 10)) == ((540, 1080),)
    assert OFFICE.hours_on(date(2026, 10, 1)) == ()


def test_make_up_working_day_when_monday_is_closed_takes_the_first_open_weekday():
    shop = BusinessCalendar.from_settings({
        "time_zone": "Asia/Shanghai",
        "hours": {"tue": [["10:00", "20:00"]], "sat": [["10:00", "16:00"]]},
        "workdays": ["2026-10-11"],
    })
    assert shop.hours_on(date(2026, 10, 11)) == ((600, 1200),)


@pytest.mark.parametrize("case, start, minutes, expected", [
    # CET → CEST on Sunday 29 March 2026: Monday's 09:00 is 07:00 UTC, Friday's was 08:00 UTC.
    ("over the spring change", be(2026, 3, 27, 16, 0), 120, be(2026, 3, 30, 10, 0)),
    ("over the autumn change", be(2026, 10, 23, 16, 0), 120, be(2026, 10, 26, 10, 0)),
])
def test_add_business_minutes_across_dst(case, start, minutes, expected):
    assert BERLIN_OFFICE.add_business_minutes(start, minutes) == expected, case


def test_dst_wall_times_are_different_utc_instants():
    assert be(2026, 3, 30, 10, 0) == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)
    assert be(2026, 10, 26, 10, 0) == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize("holidays", [[], ["2030-01-01"]], ids=["fast path", "day by day"])
@pytest.mark.parametrize("case, a, b, hours", [
    ("spring Sunday lasts 23 hours", be(2026, 3, 29, 0, 0), be(2026, 3, 30, 0, 0), 23),
    ("autumn Sunday lasts 25 hours", be(2026, 10, 25, 0, 0), be(2026, 10, 26, 0, 0), 25),
    ("a normal day", be(2026, 5, 10, 0, 0), be(2026, 5, 11, 0, 0), 24),
])
def test_round_the_clock_counts_real_elapsed_time_over_dst(holidays, case, a, b, hours):
    calendar = round_the_clock("Europe/Berlin", holidays)
    assert calendar.business_seconds_between(a, b) == hours * 3600, case
    assert calendar.add_business_minutes(a, hours * 60) == b, case


def test_interval_across_the_spring_gap_counts_only_real_time():
    # 01:00–04:00 on the night the clocks skip 02:00–03:00 is two real hours
    night = BusinessCalendar.from_settings({"time_zone": "Europe/Berlin", "hours": {"sun": [["01:00", "04:00"]]}})
    assert night.business_seconds_between(be(2026, 3, 29, 0, 0), be(2026, 3, 29, 12, 0)) == 2 * 3600
    assert night.business_seconds_between(be(2026, 10, 25, 0, 0), be(2026, 10, 25, 12, 0)) == 4 * 3600


@pytest.mark.parametrize("case, a, b, seconds", [
    ("same instant", sh(2026, 11, 9, 10, 0), sh(2026, 11, 9, 10, 0), 0),
    ("inside one day", sh(2026, 11, 9, 10, 0), sh(2026, 11, 9, 11, 30), 5400),
    ("over the weekend", sh(2026, 11, 6, 17, 0), sh(2026, 11, 9, 10, 0), 7200),
    ("both while closed", sh(2026, 11, 7, 10, 0), sh(2026, 11, 8, 10, 0), 0),
    ("over National Day", sh(2026, 9, 30, 9, 0), sh(2026, 10, 8, 18, 0), 2 * 9 * 3600),
    ("including the 调休 Saturday", sh(2026, 10, 9, 9, 0), sh(2026, 10, 12, 9, 0), 2 * 9 * 3600),
    ("backwards is negative", sh(2026, 11, 9, 11, 30), sh(2026, 11, 9, 10, 0), -5400),
    ("sub-second remainders are dropped", sh(2026, 11, 9, 10, 0),
     sh(2026, 11, 9, 10, 0) + timedelta(seconds=1, microseconds=500_000), 1),
])
def test_business_seconds_between(case, a, b, seconds):
    assert OFFICE.business_seconds_between(a, b) == seconds, case


@pytest.mark.parametrize("calendar", [OFFICE, LUNCH, BERLIN_OFFICE], ids=["office", "lunch", "berlin"])
@pytest.mark.parametrize("minutes", [0, 1, 59, 180, 540, 2700, 10_000])
def test_adding_then_measuring_gives_the_minutes_back(calendar, minutes):
    for start in (sh(2026, 9, 30, 16, 59), sh(2026, 10, 10, 3, 0), be(2026, 3, 27, 12, 0), be(2026, 10, 24, 9, 0)):
        due = calendar.add_business_minutes(start, minutes)
        assert calendar.business_seconds_between(start, due) == minutes * 60


@pytest.mark.parametrize("case, at, is_open, next_open", [
    ("at opening", sh(2026, 11, 9, 9, 0), True, sh(2026, 11, 9, 9, 0)),
    ("at close it is closed", sh(2026, 11, 9, 18, 0), False, sh(2026, 11, 10, 9, 0)),
    ("during lunch", sh(2026, 11, 9, 12, 30), False, sh(2026, 11, 9, 13, 0)),
    ("Sunday", sh(2026, 11, 8, 12, 0), False, sh(2026, 11, 9, 9, 0)),
    ("National Day, Sunday 4 October", sh(2026, 10, 4, 10, 0), False, sh(2026, 10, 8, 9, 0)),
])
def test_is_open_and_next_open(case, at, is_open, next_open):
    calendar = LUNCH if case == "during lunch" else OFFICE
    assert calendar.is_open(at) is is_open, case
    assert calendar.next_open(at) == next_open, case


def test_make_up_working_day_is_open():
    assert OFFICE.is_open(sh(2026, 10, 10, 10, 0))
    assert not OFFICE.is_open(sh(2026, 10, 1, 10, 0))


def test_a_year_of_holidays_is_skipped_day_by_day_not_minute_by_minute():
    # Given every day of 2027 a holiday, when a target spans it, then it lands on the first 2028 working day
    year = [(date(2027, 1, 1) + timedelta(days=n)).isoformat() for n in range(365)]
    closed_2027 = BusinessCalendar.from_settings({
        "time_zone": "Asia/Shanghai", "hours": {day: [["09:00", "18:00"]] for day in WEEK}, "holidays": year,
    })
    assert closed_2027.add_business_minutes(sh(2026, 12, 31, 17, 0), 120) == sh(2028, 1, 3, 10, 0)
    assert closed_2027.business_seconds_between(sh(2026, 12, 31, 17, 0), sh(2028, 1, 3, 10, 0)) == 7200


def test_twenty_four_seven_is_calendar_time():
    start = sh(2026, 11, 6, 17, 50)
    assert TWENTY_FOUR_SEVEN.add_business_minutes(start, 60) == start + timedelta(hours=1)
    assert TWENTY_FOUR_SEVEN.business_seconds_between(start, start + timedelta(days=3)) == 3 * 86400
    assert TWENTY_FOUR_SEVEN.is_open(start)
    assert TWENTY_FOUR_SEVEN == round_the_clock("UTC", [])


def test_settings_round_trip():
    for calendar in (OFFICE, LUNCH, BERLIN_OFFICE, TWENTY_FOUR_SEVEN):
        assert BusinessCalendar.from_settings(calendar.to_settings()) == calendar
    settings = LUNCH.to_settings()
    assert settings["hours"]["mon"] == [["09:00", "12:00"], ["13:00", "18:00"]]  # sorted
    assert settings["hours"]["sun"] == []
    assert settings["workdays"] == ["2026-10-11"]
    assert OFFICE.to_settings()["holidays"][0] == "2026-10-01"


def test_touching_intervals_are_one_stretch():
    split = BusinessCalendar.from_settings({"time_zone": "Asia/Shanghai", "hours": {
        day: [["09:00", "12:00"], ["12:00", "18:00"]] for day in WEEK}})
    assert split.add_business_minutes(sh(2026, 11, 9, 11, 30), 60) == sh(2026, 11, 9, 12, 30)
    assert split.is_open(sh(2026, 11, 9, 12, 0))


def settings(**changes) -> dict:
    base = {"time_zone": "Asia/Shanghai", "hours": {"mon": [["09:00", "18:00"]]}}
    return {**base, **changes}


@pytest.mark.parametrize("case, body, message", [
    ("not an object", [], "calendar: expected an object"),
    ("unknown field", settings(holiday=["2026-10-01"]), "holiday: unknown field"),
    ("no time zone", {"hours": {"mon": [["09:00", "18:00"]]}}, "time_zone: required"),
    ("unknown time zone", settings(time_zone="Mars/Olympus"), "time_zone: unknown time zone 'Mars/Olympus'"),
    ("path-like time zone", settings(time_zone="../etc/passwd"), "time_zone: unknown time zone"),
    ("hours not an object", settings(hours=[["09:00", "18:00"]]), "hours: expected an object"),
    ("unknown weekday", settings(hours={"monday": [["09:00", "18:00"]]}), "hours.monday: unknown weekday"),
    ("day not a list", settings(hours={"mon": "09:00-18:00"}), "hours.mon: expected a list"),
    ("not a pair", settings(hours={"mon": [["09:00"]]}), 'hours.mon[0]: expected ["HH:MM", "HH:MM"]'),
    ("single digit hour", settings(hours={"mon": [["9:00", "18:00"]]}),
     "hours.mon[0]: bad time '9:00', expected HH:MM"),
    ("hour 25", settings(hours={"mon": [["09:00", "25:00"]]}), "hours.mon[0]: bad time '25:00'"),
    ("minute 60", settings(hours={"tue": [["09:60", "18:00"]]}), "hours.tue[0]: bad time '09:60'"),
    ("not a string", settings(hours={"mon": [[900, "18:00"]]}), "hours.mon[0]: bad time 900"),
    ("opens at 24:00", settings(hours={"mon": [["24:00", "24:00"]]}), "hours.mon[0]: a day cannot open at 24:00"),
    ("end before start", settings(hours={"mon": [["18:00", "09:00"]]}),
     "hours.mon[0]: end 09:00 is not after start 18:00"),
    ("empty interval", settings(hours={"mon": [["09:00", "09:00"]]}),
     "hours.mon[0]: end 09:00 is not after start 09:00"),
    ("overlap", settings(hours={"wed": [["13:00", "18:00"], ["09:00", "13:30"]]}),
     "hours.wed: 09:00–13:30 overlaps 13:00–18:00"),
    ("no working time", settings(hours={}), "hours: no working time"),
    ("only empty days", settings(hours={day: [] for day in WEEK}), "hours: no working time"),
    ("bad holiday", settings(holidays=["2026-10-01", "2026-13-01"]),
     "holidays[1]: bad date '2026-13-01', expected YYYY-MM-DD"),
    ("compact date", settings(holidays=["20261001"]), "holidays[0]: bad date '20261001'"),
    ("holidays not a list", settings(holidays="2026-10-01"), "holidays: expected a list"),
    ("bad workday", settings(workdays=["2026-02-30"]), "workdays[0]: bad date '2026-02-30'"),
    ("holiday and workday", settings(holidays=["2026-10-01"], workdays=["2026-10-01"]),
     "workdays: 2026-10-01 is also a holiday"),
])
def test_from_settings_refuses_bad_input_naming_the_field(case, body, message):
    with pytest.raises(ValueError) as error:
        BusinessCalendar.from_settings(body)
    assert str(error.value).startswith(message), case


@pytest.mark.parametrize("case, call, message", [
    ("naive start", lambda: OFFICE.add_business_minutes(datetime(2026, 11, 9, 10), 60), "start: expected an aware"),
    ("negative minutes", lambda: OFFICE.add_business_minutes(sh(2026, 11, 9, 10, 0), -1),
     "seconds: must not be negative"),
    ("naive at", lambda: OFFICE.is_open(datetime(2026, 11, 9, 10)), "at: expected an aware"),
    ("naive b", lambda: OFFICE.business_seconds_between(sh(2026, 11, 9, 10, 0), datetime(2026, 11, 9)), "b: expected"),
    ("seven weekdays", lambda: BusinessCalendar("UTC", (((540, 1080),),)), "hours: expected seven weekdays"),
])
def test_calls_refuse_bad_arguments(case, call, message):
    with pytest.raises(ValueError, match=message):
        call()
