"""SLA on a business calendar with a frozen clock: due times, one warning and one breach per target."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from shopdesk.core.db import transaction
from shopdesk.tickets.actions import sweep_sla
from shopdesk.tickets.models import TicketEvent

WORKWEEK = {"time_zone": "Asia/Shanghai", "holidays": ["2026-10-01"],
            "hours": {d: [["09:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}}
FRIDAY_1750_SHANGHAI = datetime(2026, 11, 6, 9, 50, tzinfo=timezone.utc)


async def sla_events(ticket_id: str) -> list[tuple[str, dict]]:
    async with transaction() as session:
        rows = (await session.execute(select(TicketEvent.action, TicketEvent.data).where(
            TicketEvent.ticket_id == ticket_id, TicketEvent.action.like("sla_%")).order_by(TicketEvent.at))).all()
    return [(a, d) for a, d in rows]


async def merchant_of(shop) -> str:
    """The shop's merchant id: the sweeps are run for this test's merchant only (the database is shared)."""
    return (await shop.get("/auth/me")).json()["merchant_id"]


async def relogin(shop) -> None:
    """Staff tokens last 12 hours of the app clock: take a new one after moving the clock days ahead."""
    r = await shop.client.post("/api/v1/auth/token", json={"email": shop.agent_email, "password": "agent-pass-1"})
    shop.agent_token = r.json()["token"]


async def setup_policy(shop, **targets) -> None:
    put = shop.client.put
    r = await put("/api/v1/settings/calendars/workweek", json=WORKWEEK, headers=shop.h(shop.admin_token))
    assert r.status_code == 200, r.text
    r = await put("/api/v1/settings/sla-policies/standard", json={"calendar": "workweek", **targets},
                  headers=shop.h(shop.admin_token))
    assert r.status_code == 200, r.text


async def test_friday_evening_ticket_is_due_monday_and_breaches_once(shop, frozen_clock):
    # Given a 1-business-hour first response on a 09:00–18:00 Mon–Fri calendar
    await setup_policy(shop, first_response_minutes=60)
    frozen_clock.freeze(FRIDAY_1750_SHANGHAI)
    r = await shop.post("/tickets", {"subject": "发错颜色了", "priority": "normal", "channel": "api"})
    t = r.json()
    # Then it is due Monday 09:50 Shanghai
    assert t["sla"]["policy"] == "standard"
    assert t["sla"]["first_response_due_at"] == "2026-11-09T01:50:00Z"
    # When the sweeper runs over the weekend, nothing is raised
    frozen_clock.freeze(datetime(2026, 11, 8, 12, 0, tzinfo=timezone.utc))
    assert await sweep_sla(merchant_id=await merchant_of(shop)) == 0
    # At 80 % of the hour (Monday 09:38) one warning goes out, once
    frozen_clock.freeze(datetime(2026, 11, 9, 1, 40, tzinfo=timezone.utc))
    assert await sweep_sla(merchant_id=await merchant_of(shop)) == 1
    assert await sweep_sla(merchant_id=await merchant_of(shop)) == 0
    # After 09:50 one breach, and running the sweeper again raises nothing more
    frozen_clock.freeze(datetime(2026, 11, 9, 2, 30, tzinfo=timezone.utc))
    assert await sweep_sla(merchant_id=await merchant_of(shop)) == 1
    assert await sweep_sla(merchant_id=await merchant_of(shop)) == 0
    events = await sla_events(t["id"])
    assert [(a, d["target"]) for a, d in events] == [("sla_warning", "first_response"),
                                                     ("sla_breach", "first_response")]
    r = await shop.get(f"/tickets/{t['id']}")
    assert r.json()["sla"]["breaches"] == [{"target": "first_response", "at": "2026-11-09T01:50:00Z"}]
    # A late reply does not undo the breach, nor raise another one
    await relogin(shop)
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "抱歉久等"}, shop.agent_token)
    assert r.status_code == 201, r.text
    frozen_clock.advance(timedelta(days=3))
    await sweep_sla(merchant_id=await merchant_of(shop))
    assert [a for a, _ in await sla_events(t["id"])].count("sla_breach") == 1


async def test_a_reply_in_time_means_no_breach_and_notes_do_not_count(shop, frozen_clock):
    await setup_policy(shop, first_response_minutes=60)
    frozen_clock.freeze(datetime(2026, 11, 9, 1, 0, tzinfo=timezone.utc))  # Monday 09:00
    t = (await shop.post("/tickets", {"subject": "发票", "channel": "api"})).json()
    await relogin(shop)
    frozen_clock.advance(timedelta(minutes=20))
    await shop.post(f"/tickets/{t['id']}/replies", {"body": "内部备注", "public": False}, shop.agent_token)
    r = await shop.get(f"/tickets/{t['id']}")
    assert r.json()["sla"]["first_response_due_at"] == "2026-11-09T02:00:00Z"  # a note is no response
    frozen_clock.advance(timedelta(minutes=20))
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "已开票"}, shop.agent_token)
    assert r.status_code == 201, r.text
    assert r.json()["sla"]["first_response_due_at"] is None
    frozen_clock.advance(timedelta(days=2))
    assert await sweep_sla(merchant_id=await merchant_of(shop)) == 0
    assert await sla_events(t["id"]) == []


async def test_pending_pauses_resolution_and_next_response_starts_on_a_shopper_reply(shop, frozen_clock):
    r = await shop.client.put("/api/v1/settings/sla-policies/urgent-247", json={
        "match": {"priority": ["urgent"]}, "first_response_minutes": 30, "next_response_minutes": 60,
        "resolution_minutes": 240}, headers=shop.h(shop.admin_token))
    assert r.status_code == 200, r.text
    order = await shop.order()
    shopper = await shop.shopper(order)
    start = datetime(2026, 11, 7, 2, 0, tzinfo=timezone.utc)  # a Saturday: no calendar means 24/7
    frozen_clock.freeze(start)
    t = (await shop.post("/tickets", {"subject": "订单被拆了", "priority": "urgent", "channel": "web"},
                         shopper)).json()
    await relogin(shop)
    assert t["sla"]["policy"] == "urgent-247"
    assert t["sla"]["resolution_due_at"] == "2026-11-07T06:00:00Z"
    frozen_clock.advance(timedelta(minutes=10))
    await shop.post(f"/tickets/{t['id']}/replies", {"body": "请提供截图"}, shop.agent_token)
    patch = shop.client.patch
    r = await patch(f"/api/v1/tickets/{t['id']}", json={"status": "pending"}, headers=shop.h(shop.agent_token))
    assert r.json()["sla"]["resolution_due_at"] is None  # paused: no timer runs
    frozen_clock.advance(timedelta(hours=5))
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "截图在这"}, shopper)
    after = r.json()
    # The shopper's answer reopens it; 10 minutes were used, the 5 paused hours are not counted
    assert after["status_group"] == "open"
    assert after["sla"]["resolution_due_at"] == "2026-11-07T11:00:00Z"
    assert after["sla"]["next_response_due_at"] == "2026-11-07T08:10:00Z"


async def test_bad_calendar_and_policy_name_the_field(shop):
    put = shop.client.put
    bad = {**WORKWEEK, "hours": {"mon": [["18:00", "09:00"]]}}
    r = await put("/api/v1/settings/calendars/x", json=bad, headers=shop.h(shop.admin_token))
    assert r.status_code == 422 and r.json()["field"].startswith("hours"), r.text
    r = await put("/api/v1/settings/calendars/x", json={**WORKWEEK, "time_zone": "Mars/Olympus"},
                  headers=shop.h(shop.admin_token))
    assert r.status_code == 422 and r.json()["field"] == "time_zone", r.text
    r = await put("/api/v1/settings/sla-policies/p", json={"calendar": "missing", "first_response_minutes": 5},
                  headers=shop.h(shop.admin_token))
    assert r.status_code == 422 and r.json()["field"] == "calendar"
    r = await put("/api/v1/settings/sla-policies/p", json={"first_response_minutes": 5},
                  headers=shop.h(shop.agent_token))
    assert r.status_code == 403
    r = await shop.get("/settings/sla-policies")
    assert r.json()["items"] == []


async def test_merging_an_older_ticket_into_a_newer_one_under_a_policy(shop, frozen_clock):
    await setup_policy(shop, first_response_minutes=60, resolution_minutes=600)
    frozen_clock.freeze(datetime(2026, 11, 9, 1, 0, tzinfo=timezone.utc))
    older = (await shop.post("/tickets", {"subject": "先来的", "channel": "api"})).json()
    await shop.post(f"/tickets/{older['id']}/replies", {"body": "补充说明"}, None)
    frozen_clock.advance(timedelta(hours=1))
    newer = (await shop.post("/tickets", {"subject": "后来的", "channel": "api"})).json()
    r = await shop.post(f"/tickets/{older['id']}/merge", {"into": newer["id"]})
    assert r.status_code == 200, r.text
    target = (await shop.get(f"/tickets/{newer['id']}")).json()
    # The moved history is on the ticket, but the newer ticket's own clock is unchanged
    assert any("先来的" in x["body"] for x in target["replies"])
    assert target["sla"]["first_response_due_at"] == "2026-11-09T03:00:00Z"
