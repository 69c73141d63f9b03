"""The PBX hook (POST /hooks/cti/{store}): signatures, the call log, the caller's card, the call ticket."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from shopdesk.core.db import transaction
from shopdesk.core.pubsub import get_broker
from shopdesk.tickets.channel_models import CallLog
from shopdesk.tickets.models import Ticket, TicketReply


class Listener:
    """A stand-in for a staff member's socket on the broker."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(8)
        self.frames: list[dict] = []

    def deliver(self, event) -> None:
        self.frames.append(json.loads(event.frame))

    def drop(self, code: int, reason: str) -> None:
        pass


@pytest.fixture
def sockets():
    made: list[Listener] = []

    def listen(*topics: str) -> Listener:
        sub = Listener()
        get_broker().subscribe(sub, *topics)
        made.append(sub)
        return sub

    yield listen
    for sub in made:
        get_broker().unsubscribe(sub)


async def me(shop, token: str | None = None) -> dict:
    r = await shop.get("/auth/me", token)
    assert r.status_code == 200, r.text
    return r.json()


async def secret_of(shop) -> str:
    r = await shop.get("/stores")
    return next(s for s in r.json()["items"] if s["code"] == "main")["identity_secret"]


def sign(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


async def cti(shop, secret: str | None, body: dict, *, signature: str | None = None, merchant: bool = True):
    raw = json.dumps(body, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Shopdesk-Signature"] = signature
    elif secret is not None:
        headers["X-Shopdesk-Signature"] = sign(secret, raw)
    return await shop.client.post("/api/v1/hooks/cti/main", content=raw, headers=headers,
                                  params={"merchant": shop.slug} if merchant else {})


async def calls_of(merchant_id: str) -> list[CallLog]:
    async with transaction() as session:
        return list((await session.execute(select(CallLog).where(CallLog.merchant_id == merchant_id)
                                           .order_by(CallLog.created_at, CallLog.id))).scalars())


async def phone_tickets(merchant_id: str) -> list[Ticket]:
    async with transaction() as session:
        return list((await session.execute(select(Ticket).where(Ticket.merchant_id == merchant_id,
                                                                Ticket.channel == "phone")
                                           .order_by(Ticket.created_at, Ticket.id))).scalars())


async def notes_on(ticket_id: str) -> list[TicketReply]:
    async with transaction() as session:
        return list((await session.execute(select(TicketReply).where(TicketReply.ticket_id == ticket_id)
                                           .order_by(TicketReply.created_at, TicketReply.id))).scalars())


@pytest.mark.parametrize("raw, normal, masked", [
    ("13800000000", "13800000000", "138****0000"),
    ("+86 138-0000-0000", "13800000000", "138****0000"),
    ("0086 138 0000 0000", "13800000000", "138****0000"),
    ("8613800000000", "13800000000", "138****0000"),
    ("021-5555 0000", "02155550000", "021****0000"),
    ("+86 21 5555 0000", "02155550000", "021****0000"),
    ("+1 415 555 0100", "+14155550100", "+14****0100"),
    ("anonymous", "", "未知号码"),
])
def test_numbers_are_normalised_and_masked(raw, normal, masked):
    from shopdesk.tickets.phone import mask_phone, normalise_phone

    assert normalise_phone(raw) == normal
    assert mask_phone(normal) == masked


async def test_unsigned_or_badly_signed_calls_are_refused_and_write_nothing(shop, other_shop):
    merchant_id = (await me(shop))["merchant_id"]
    secret, others = await secret_of(shop), await secret_of(other_shop)
    body = {"event": "ringing", "call_id": "c-unsigned", "caller": "13800000000"}
    # When the call carries no signature, a malformed one, a wrong one, or another store's
    for sig in (None, "sha256=" + "0" * 64, "md5=abc", sign(secret, b"{}"), sign(others, json.dumps(body).encode())):
        r = await cti(shop, None, body, signature=sig)
        # Then it is refused
        assert r.status_code == 401, (sig, r.text)
    # And nothing was written
    assert await calls_of(merchant_id) == []
    # When the store is unknown
    r = await shop.client.post("/api/v1/hooks/cti/nope", content=b"{}", headers={"X-Shopdesk-Signature": "sha256=00"})
    assert r.status_code == 404
    # When the body is signed right but is not a call event: 422, and still nothing written
    r = await cti(shop, secret, {"event": "hangup", "call_id": "c1", "caller": "1"})
    assert r.status_code == 422 and r.json()["field"] == "event"
    assert await calls_of(merchant_id) == []


async def test_the_signature_picks_the_store_among_merchants_sharing_its_code(shop, other_shop):
    # Given two merchants whose stores are both "main", and a call signed with the second's secret, no ?merchant=
    r = await cti(other_shop, await secret_of(other_shop), {"event": "ringing", "call_id": "c-shared",
                                                            "caller": "13900000000"}, merchant=False)
    # Then it lands on the second merchant only
    assert r.status_code == 200, r.text
    assert [c.call_id for c in await calls_of((await me(other_shop))["merchant_id"])] == ["c-shared"]
    assert await calls_of((await me(shop))["merchant_id"]) == []


async def test_ringing_answered_ended_make_one_call_log_one_ticket_and_pop_the_card(shop, sockets, frozen_clock):
    # Given a customer with an order and a phone number, and the agent's and the admin's sockets
    order = await shop.order()
    agent, admin = await me(shop, shop.agent_token), await me(shop, shop.admin_token)
    agent_socket, admin_socket = sockets(f"s:{agent['id']}"), sockets(f"s:{admin['id']}")
    secret, merchant_id = await secret_of(shop), agent["merchant_id"]
    call = {"call_id": "c-100", "caller": "+86 138-0000-0000"}
    # When the phone rings
    r = await cti(shop, secret, {"event": "ringing", **call})
    assert r.status_code == 200, r.text
    assert r.json()["applied"] is True and r.json()["call"]["state"] == "ringing"
    assert r.json()["call"]["caller"] == "138****0000" and r.json()["call"]["customer_id"]
    # And the agent answers 10 s later
    frozen_clock.advance(timedelta(seconds=10))
    r = await cti(shop, secret, {"event": "answered", "agent_email": shop.agent_email, **call})
    assert r.status_code == 200 and r.json()["call"]["state"] == "answered"
    # Then the caller's card pops in that agent's console, and nobody else's
    assert admin_socket.frames == []
    [card] = agent_socket.frames
    assert card["type"] == "phone.card"
    assert card["call"]["caller"] == "138****0000" and card["call"]["store"] == "main"
    assert card["customer"]["name"] == "张三" and card["customer"]["phone"] == "138****0000"
    assert [o["order_no"] for o in card["orders"]] == [order["order_no"]]
    assert card["cases"] == [] and card["tickets"] == []
    # When the call ends 3 min 25 s later, with a recording
    frozen_clock.advance(timedelta(minutes=3, seconds=25))
    r = await cti(shop, secret, {"event": "ended", "recording_url": "https://pbx.example.com/rec/c-100.mp3", **call})
    assert r.status_code == 200, r.text
    # Then there is one call log, ended, on the customer and on one new phone ticket
    [log] = await calls_of(merchant_id)
    assert (log.state, log.caller, log.customer_id) == ("ended", "13800000000", card["customer"]["id"])
    assert log.data["missed"] is False and log.agent_id == agent["id"]
    [ticket] = await phone_tickets(merchant_id)
    assert log.ticket_id == ticket.id
    assert ticket.subject == "来电 138****0000" and ticket.customer_id == log.customer_id
    assert ticket.assignee_id == agent["id"]
    # And the call summary is a private note: duration, agent, recording
    [note] = await notes_on(ticket.id)
    assert note.public is False and note.author_type == "system" and note.channel == "phone"
    assert "通话时长：3 分 25 秒" in note.body and shop.agent_email in note.body
    assert "https://pbx.example.com/rec/c-100.mp3" in note.body
    # And the ticket API shows it to staff
    r = await shop.get(f"/tickets/{ticket.id}")
    assert r.json()["channel"] == "phone" and [x["public"] for x in r.json()["replies"]] == [False]
    # And the customer's call log lists it, number masked for an agent
    r = await shop.get("/calls", shop.agent_token, params={"customer_id": log.customer_id})
    assert [(c["call_id"], c["caller"], c["ticket_id"]) for c in r.json()["items"]] == [
        ("c-100", "138****0000", ticket.id)]


async def test_twice_delivered_and_out_of_order_events_move_the_call_forward_only(shop, sockets, frozen_clock):
    agent = await me(shop, shop.agent_token)
    agent_socket = sockets(f"s:{agent['id']}")
    secret, merchant_id = await secret_of(shop), agent["merchant_id"]
    call = {"call_id": "c-200", "caller": "13800000000"}
    answered = {"event": "answered", "agent_email": shop.agent_email.upper(), **call}
    # Given "answered" arrives before "ringing"
    r = await cti(shop, secret, answered)
    assert r.json()["applied"] is True
    r = await cti(shop, secret, {"event": "ringing", **call})
    # Then the late ringing changes nothing
    assert r.status_code == 200 and r.json()["applied"] is False and r.json()["call"]["state"] == "answered"
    # When "answered" comes again
    r = await cti(shop, secret, answered)
    # Then it is a no-op: the card popped once
    assert r.json()["applied"] is False and len(agent_socket.frames) == 1
    # When "ended" is delivered twice
    frozen_clock.advance(timedelta(seconds=42))
    for _ in range(2):
        r = await cti(shop, secret, {"event": "ended", **call})
        assert r.status_code == 200
    assert r.json()["applied"] is False
    # Then one call log, one ticket, one note
    [log] = await calls_of(merchant_id)
    assert log.state == "ended" and log.ringing_at is None and log.data["missed"] is False
    assert [e["applied"] for e in log.data["events"]] == [True, False, False, True, False]
    [ticket] = await phone_tickets(merchant_id)
    [note] = await notes_on(ticket.id)
    assert "通话时长：42 秒" in note.body


async def test_a_missed_call_opens_a_call_back_ticket_and_later_calls_append(shop, frozen_clock):
    secret, merchant_id = await secret_of(shop), (await me(shop))["merchant_id"]
    # Given a number nobody in the shop has
    caller = "+86 139 1234 5678"
    # When it rings for 30 s and hangs up
    await cti(shop, secret, {"event": "ringing", "call_id": "m-1", "caller": caller})
    frozen_clock.advance(timedelta(seconds=30))
    r = await cti(shop, secret, {"event": "ended", "call_id": "m-1", "caller": caller})
    assert r.status_code == 200 and r.json()["call"]["missed"] is True
    # Then a high-priority ticket asks someone to call back
    [ticket] = await phone_tickets(merchant_id)
    assert ticket.subject == "未接来电 139****5678" and ticket.priority == "high" and ticket.tags == ["未接来电"]
    assert ticket.customer_id is None and ticket.assignee_id is None
    [note] = await notes_on(ticket.id)
    assert "未接来电" in note.body and "振铃时长：30 秒" in note.body
    # When an "answered" for that call straggles in after its end
    r = await cti(shop, secret, {"event": "answered", "call_id": "m-1", "caller": caller,
                                 "agent_email": shop.agent_email})
    # Then the missed call stays missed
    assert r.json()["applied"] is False and r.json()["call"]["missed"] is True
    # When the same number calls again an hour later and is answered
    frozen_clock.advance(timedelta(hours=1))
    for event in ("ringing", "answered", "ended"):
        await cti(shop, secret, {"event": event, "call_id": "m-2", "caller": "13912345678",
                                 "agent_email": shop.agent_email})
    # Then the call is noted on the same open phone ticket, not a new one
    assert [t.id for t in await phone_tickets(merchant_id)] == [ticket.id]
    assert ["未接来电" in n.body for n in await notes_on(ticket.id)] == [True, False]
    # When it calls a day later
    frozen_clock.advance(timedelta(hours=25))
    await cti(shop, secret, {"event": "ended", "call_id": "m-3", "caller": caller})
    # Then that is a new ticket
    assert len(await phone_tickets(merchant_id)) == 2


async def test_the_cards_button_opens_the_calls_ticket_and_the_end_notes_it_there(shop, other_shop, sockets):
    await shop.order()
    agent = await me(shop, shop.agent_token)
    agent_socket = sockets(f"s:{agent['id']}")
    secret, merchant_id = await secret_of(shop), agent["merchant_id"]
    call = {"call_id": "c-300", "caller": "138 0000 0000", "agent_email": shop.agent_email}
    await cti(shop, secret, {"event": "answered", **call})
    call_id = agent_socket.frames[0]["call"]["id"]
    # When the agent presses the card's button during the call
    r = await shop.post(f"/calls/{call_id}/ticket", token=shop.agent_token)
    assert r.status_code == 200, r.text
    ticket = r.json()["ticket"]
    assert ticket["channel"] == "phone" and ticket["assignee"]["id"] == agent["id"]
    # And presses it again
    r = await shop.post(f"/calls/{call_id}/ticket", token=shop.agent_token)
    # Then it is the same ticket
    assert r.json()["ticket"]["id"] == ticket["id"]
    # And another merchant's staff cannot reach the call
    r = await other_shop.post(f"/calls/{call_id}/ticket", token=other_shop.agent_token)
    assert r.status_code == 404
    # When the call ends
    await cti(shop, secret, {"event": "ended", **call})
    # Then the summary is noted on that ticket
    assert [t.id for t in await phone_tickets(merchant_id)] == [ticket["id"]]
    [note] = await notes_on(ticket["id"])
    assert note.public is False and "电话已接听" in note.body
    # And the next card for this caller lists the open ticket
    await cti(shop, secret, {"event": "answered", **{**call, "call_id": "c-301"}})
    assert [t["id"] for t in agent_socket.frames[-1]["tickets"]] == [ticket["id"]]


async def test_call_counts_per_merchant_and_call_id_are_unique(shop):
    """The (merchant, call_id) key holds when many events of one call arrive at once."""
    import asyncio

    secret, merchant_id = await secret_of(shop), (await me(shop))["merchant_id"]
    call = {"call_id": "c-race", "caller": "13800000000"}
    results = await asyncio.gather(*(cti(shop, secret, {"event": e, **call})
                                     for e in ("ringing", "answered", "ringing", "ended", "ended")))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    async with transaction() as session:
        n = (await session.execute(select(func.count()).select_from(CallLog)
                                   .where(CallLog.merchant_id == merchant_id))).scalar_one()
    assert n == 1
    [log] = await calls_of(merchant_id)
    assert log.state == "ended"
    assert len(await phone_tickets(merchant_id)) == 1
