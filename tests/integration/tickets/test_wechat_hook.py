"""The WeChat official-account hook: URL verification, signed callbacks, tickets, replays, and 客服消息 out.

Callbacks are signed as WeChat signs them (sha1 of the sorted token, timestamp and nonce) and carry the XML
of Tencent's 接收普通消息 / 接收事件推送 pages. Tencent's API is a stub HTTP server on loopback.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import threading
import xml.etree.ElementTree as ElementTree
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import func, select

from shopdesk.config import get_settings
from shopdesk.core.db import transaction
from shopdesk.core.outbox import OutboxItem
from shopdesk.customers.models import Customer
from shopdesk.jobs.runner import deliver_outbox
from shopdesk.tickets.channel_models import WechatMessage
from shopdesk.tickets.models import Ticket, TicketReply

ORIGINAL_ID = "gh_3f1a2b4c5d6e"
APP_ID = "wx7d1c3e5a9b2f4c6d"


def text_xml(openid: str, content: str, msg_id: str, create_time: int) -> bytes:
    return (f"<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName>"
            f"<FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{create_time}</CreateTime>"
            f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>"
            f"<MsgId>{msg_id}</MsgId></xml>").encode()


def event_xml(openid: str, event: str, create_time: int) -> bytes:
    return (f"<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName>"
            f"<FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{create_time}</CreateTime>"
            f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event></xml>").encode()


def signed(token: str, timestamp: int, **extra) -> dict:
    nonce = str(secrets.randbelow(10**9))
    signature = hashlib.sha1("".join(sorted([token, str(timestamp), nonce])).encode()).hexdigest()
    return {"signature": signature, "timestamp": str(timestamp), "nonce": nonce, **extra}


class Account:
    def __init__(self, shop, token: str, clock) -> None:
        self.shop, self.token, self.clock = shop, token, clock

    @property
    def ts(self) -> int:
        return int(self.clock.now().timestamp())

    async def post(self, body: bytes, *, params: dict | None = None, openid: str = ""):
        query = params if params is not None else signed(self.token, self.ts, openid=openid)
        return await self.shop.client.post("/api/v1/hooks/wechat/main", content=body,
                                           params={"merchant": self.shop.slug, **query},
                                           headers={"Content-Type": "text/xml"})

    async def text(self, openid: str, content: str, msg_id: str | None = None):
        return await self.post(text_xml(openid, content, msg_id or str(secrets.randbelow(10**16)), self.ts),
                               openid=openid)


@pytest.fixture
async def wechat(shop, frozen_clock) -> Account:
    token = f"tk{secrets.token_hex(8)}"
    r = await shop.client.put("/api/v1/settings/wechat/main", headers=shop.h(shop.admin_token),
                              json={"app_id": APP_ID, "app_secret": "app-secret-value", "token": token,
                                    "original_id": ORIGINAL_ID})
    assert r.status_code == 200, r.text
    return Account(shop, token, frozen_clock)


async def merchant_of(shop) -> str:
    return (await shop.get("/auth/me")).json()["merchant_id"]


async def wechat_tickets(merchant_id: str) -> list[Ticket]:
    async with transaction() as session:
        return list((await session.execute(select(Ticket).where(Ticket.merchant_id == merchant_id,
                                                                Ticket.channel == "wechat")
                                           .order_by(Ticket.created_at, Ticket.id))).scalars())


async def stored(merchant_id: str) -> list[WechatMessage]:
    async with transaction() as session:
        return list((await session.execute(select(WechatMessage).where(WechatMessage.merchant_id == merchant_id)
                                           .order_by(WechatMessage.received_at, WechatMessage.id))).scalars())


async def replies_on(ticket_id: str) -> list[TicketReply]:
    async with transaction() as session:
        return list((await session.execute(select(TicketReply).where(TicketReply.ticket_id == ticket_id)
                                           .order_by(TicketReply.created_at, TicketReply.id))).scalars())


def parse_reply(body: bytes) -> dict[str, str]:
    root = ElementTree.fromstring(body)
    return {child.tag: child.text or "" for child in root}


async def test_settings_need_an_admin_and_never_show_the_secret(shop, wechat):
    # When an agent tries to change the account
    r = await shop.client.put("/api/v1/settings/wechat/main", headers=shop.h(shop.agent_token),
                              json={"app_id": APP_ID, "token": "abc123"})
    # Then it is refused
    assert r.status_code == 403
    # When the admin reads it back
    r = await shop.get("/settings/wechat/main", shop.admin_token)
    # Then neither the secret nor the token is shown, and the callback URL names the merchant
    out = r.json()
    assert r.status_code == 200 and out["app_id"] == APP_ID and out["original_id"] == ORIGINAL_ID
    assert out["app_secret_set"] is True and out["token_set"] is True
    assert "app-secret-value" not in r.text and wechat.token not in r.text
    assert out["callback_url"].endswith(f"/api/v1/hooks/wechat/main?merchant={shop.slug}")
    # When it is saved again without a secret, the stored secret stays
    r = await shop.client.put("/api/v1/settings/wechat/main", headers=shop.h(shop.admin_token),
                              json={"app_id": APP_ID, "token": wechat.token, "original_id": ORIGINAL_ID})
    assert r.json()["app_secret_set"] is True
    # And a token WeChat would not accept is refused
    r = await shop.client.put("/api/v1/settings/wechat/main", headers=shop.h(shop.admin_token),
                              json={"app_id": APP_ID, "token": "no spaces!"})
    assert r.status_code == 422 and r.json()["field"] == "token"


async def test_url_verification_echoes_only_for_the_right_signature(shop, wechat):
    # When WeChat verifies the URL with the account's token
    q = signed(wechat.token, wechat.ts, echostr="5838479218127813673")
    r = await shop.client.get("/api/v1/hooks/wechat/main", params={"merchant": shop.slug, **q})
    # Then the echostr comes back as it is
    assert r.status_code == 200 and r.text == "5838479218127813673"
    # When the signature is made with another token
    q = signed("wrongtoken", wechat.ts, echostr="5838479218127813673")
    r = await shop.client.get("/api/v1/hooks/wechat/main", params={"merchant": shop.slug, **q})
    # Then it is refused
    assert r.status_code == 401 and "5838479218127813673" not in r.text


async def test_messages_open_a_ticket_then_append_and_a_replay_writes_nothing(shop, wechat, frozen_clock):
    merchant_id = await merchant_of(shop)
    openid = "oFoll" + secrets.token_hex(6)
    # When a follower sends a text message
    r = await wechat.text(openid, "耳机左耳没声音，怎么办？", msg_id="1234567890123456")
    # Then a wechat ticket is opened for them and the passive reply acknowledges it, from the account to them
    assert r.status_code == 200, r.text
    reply = parse_reply(r.content)
    [ticket] = await wechat_tickets(merchant_id)
    assert (reply["ToUserName"], reply["FromUserName"], reply["MsgType"]) == (openid, ORIGINAL_ID, "text")
    assert ticket.number in reply["Content"] and int(reply["CreateTime"]) == wechat.ts
    assert ticket.description == "耳机左耳没声音，怎么办？" and ticket.subject.startswith("微信：耳机左耳没声音")
    async with transaction() as session:
        customer = await session.get(Customer, ticket.customer_id)
    assert customer.external_id == f"wechat:{openid}"
    # When they write again
    frozen_clock.advance(timedelta(minutes=2))
    r = await wechat.text(openid, "补充：是新买的", msg_id="1234567890123457")
    # Then it is their reply on the same ticket, and WeChat gets "success"
    assert r.status_code == 200 and r.text == "success"
    assert [t.id for t in await wechat_tickets(merchant_id)] == [ticket.id]
    [added] = await replies_on(ticket.id)
    assert (added.body, added.public, added.author_type, added.channel) == ("补充：是新买的", True, "shopper", "wechat")
    before = len(await stored(merchant_id))
    # When WeChat retries (or someone replays) the same MsgId
    r = await wechat.text(openid, "补充：是新买的", msg_id="1234567890123457")
    # Then the answer is "success" and nothing is written
    assert r.status_code == 200 and r.text == "success"
    assert len(await stored(merchant_id)) == before == 2
    assert len(await replies_on(ticket.id)) == 1


async def test_bad_signature_and_stale_timestamp_are_refused_and_write_nothing(shop, wechat, frozen_clock):
    merchant_id = await merchant_of(shop)
    body = text_xml("oStale", "你好", "99", wechat.ts)
    # When the signature is not the account's
    r = await wechat.post(body, params=signed("notthetoken", wechat.ts))
    assert r.status_code == 401
    # When a parameter was changed after signing
    q = signed(wechat.token, wechat.ts)
    r = await wechat.post(body, params={**q, "nonce": q["nonce"] + "1"})
    assert r.status_code == 401
    # When there is no signature at all
    r = await wechat.post(body, params={})
    assert r.status_code == 401
    # When it is signed right but ten minutes old (a captured request replayed later)
    r = await wechat.post(body, params=signed(wechat.token, wechat.ts - 600))
    assert r.status_code == 403 and r.json()["code"] == "stale_request"
    # Then nothing was written
    assert await stored(merchant_id) == [] and await wechat_tickets(merchant_id) == []
    # And an unsafe body (a DTD) is refused even when signed
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><xml><ToUserName>&a;</ToUserName></xml>'
    r = await wechat.post(evil)
    assert r.status_code == 400 and await stored(merchant_id) == []


async def test_subscribe_is_welcomed_and_unsubscribe_recorded(shop, wechat, frozen_clock):
    merchant_id = await merchant_of(shop)
    openid = "oSub" + secrets.token_hex(6)
    r = await wechat.post(event_xml(openid, "subscribe", wechat.ts), openid=openid)
    assert r.status_code == 200
    reply = parse_reply(r.content)
    assert reply["ToUserName"] == openid and "感谢关注旗舰店" in reply["Content"]
    # A retry of the same event (same FromUserName + CreateTime) is answered "success" only
    r = await wechat.post(event_xml(openid, "subscribe", wechat.ts), openid=openid)
    assert r.text == "success"
    frozen_clock.advance(timedelta(seconds=5))
    r = await wechat.post(event_xml(openid, "unsubscribe", wechat.ts), openid=openid)
    assert r.status_code == 200 and r.text == "success"
    assert [(m.msg_type, m.content) for m in await stored(merchant_id)] == [("event", "subscribe"),
                                                                              ("event", "unsubscribe")]
    assert await wechat_tickets(merchant_id) == []


@pytest.fixture
def tencent():
    """Tencent's API, played by a stub on loopback: /cgi-bin/token and /cgi-bin/message/custom/send."""
    seen: dict[str, list] = {"token": [], "send": []}
    plan = {"send_errors": []}  # errcodes to answer the next sends with

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path != "/cgi-bin/token":
                self.send_response(404)
                self.end_headers()
                return
            q = parse_qs(url.query)
            seen["token"].append(q)
            if q.get("secret") != ["app-secret-value"]:
                return self._answer({"errcode": 40125, "errmsg": "invalid appsecret"})
            self._answer({"access_token": f"ACCESS{len(seen['token'])}", "expires_in": 7200})

        def do_POST(self):
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen["send"].append((parse_qs(url.query), json.loads(body.decode("utf-8")), self.headers["Content-Type"]))
            if plan["send_errors"]:
                code = plan["send_errors"].pop(0)
                return self._answer({"errcode": code, "errmsg": "access_token expired"})
            self._answer({"errcode": 0, "errmsg": "ok"})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = get_settings()
    before = settings.wechat_api_base
    settings.wechat_api_base = f"http://127.0.0.1:{server.server_address[1]}"
    yield seen, plan
    settings.wechat_api_base = before
    server.shutdown()


async def agent_reply(shop, ticket_id: str, body: str) -> str:
    """The shop answers in public; do_reply queues it as a 客服消息 (tickets.wechat.queue_wechat_reply)."""
    # With the merchant key: a staff login would have expired over the hours these tests skip.
    r = await shop.post(f"/tickets/{ticket_id}/replies", {"body": body, "public": True})
    assert r.status_code == 201, r.text
    return r.json()["reply"]["id"]


async def wechat_items(merchant_id: str) -> list[OutboxItem]:
    async with transaction() as session:
        return list((await session.execute(select(OutboxItem).where(OutboxItem.kind == "wechat",
                                                                    OutboxItem.merchant_id == merchant_id)
                                           .order_by(OutboxItem.created_at, OutboxItem.id))).scalars())


async def test_agent_replies_go_out_as_customer_service_messages_within_48_hours(shop, wechat, tencent,
                                                                                 frozen_clock):
    seen, plan = tencent
    merchant_id = await merchant_of(shop)
    openid = "oOut" + secrets.token_hex(6)
    await wechat.text(openid, "什么时候发货？")
    [ticket] = await wechat_tickets(merchant_id)
    # When an agent answers 47 hours later
    frozen_clock.advance(timedelta(hours=47))
    reply_id = await agent_reply(shop, ticket.id, "您好，今天下午发出，单号稍后同步给您。")
    # Then one 客服消息 is queued
    [item] = await wechat_items(merchant_id)
    assert item.status == "pending" and item.payload["reply_id"] == reply_id and "app-secret" not in json.dumps(item.payload)
    # When the outbox is delivered
    await deliver_outbox()
    # Then the stub got one token request and one message, in WeChat's shape, with that token
    [item] = await wechat_items(merchant_id)
    assert item.status == "sent", item.last_error
    assert [q["appid"] for q in seen["token"]] == [[APP_ID]]
    [(query, payload, content_type)] = seen["send"]
    assert query["access_token"] == ["ACCESS1"]
    assert payload == {"touser": openid, "msgtype": "text", "text": {"content": "您好，今天下午发出，单号稍后同步给您。"}}
    assert content_type.startswith("application/json")
    # When WeChat says the token expired on the next message
    plan["send_errors"] = [42001]
    await agent_reply(shop, ticket.id, "已发出。")
    await deliver_outbox()
    # Then a new token is fetched and the message sent once with it
    assert [i.status for i in await wechat_items(merchant_id)] == ["sent", "sent"]
    assert len(seen["token"]) == 2 and [q["access_token"] for q, _, _ in seen["send"][1:]] == [["ACCESS1"], ["ACCESS2"]]


async def test_no_customer_service_message_outside_the_48_hour_window(shop, wechat, tencent, frozen_clock):
    seen, _ = tencent
    merchant_id = await merchant_of(shop)
    openid = "oLate" + secrets.token_hex(6)
    await wechat.text(openid, "在吗？")
    [ticket] = await wechat_tickets(merchant_id)
    # Given a reply queued 47 h 30 min after the follower's message, but delivered only after 48 h
    frozen_clock.advance(timedelta(hours=47, minutes=30))
    await agent_reply(shop, ticket.id, "您好，在的。")
    frozen_clock.advance(timedelta(hours=1))
    await deliver_outbox()
    # Then nothing reached WeChat, and the item says why
    [item] = await wechat_items(merchant_id)
    assert seen["send"] == [] and item.status == "pending" and "48-hour" in (item.last_error or "")
    # When an agent answers now, 48 h 30 min after the follower's last message
    await agent_reply(shop, ticket.id, "请问还需要帮助吗？")
    # Then nothing more is queued, and a private note tells the agents it was not sent
    assert len(await wechat_items(merchant_id)) == 1
    notes = [r for r in await replies_on(ticket.id) if not r.public]
    assert len(notes) == 1 and "48 小时" in notes[0].body
    # When the follower writes again, the window opens again
    await wechat.text(openid, "需要，谢谢")
    await agent_reply(shop, ticket.id, "好的，马上处理。")
    assert len(await wechat_items(merchant_id)) == 2
    # And after unfollowing, nothing is queued
    frozen_clock.advance(timedelta(seconds=1))
    await wechat.post(event_xml(openid, "unsubscribe", wechat.ts), openid=openid)
    frozen_clock.advance(timedelta(seconds=1))
    await agent_reply(shop, ticket.id, "还在吗？")
    assert len(await wechat_items(merchant_id)) == 2


async def test_two_messages_of_a_new_follower_at_once_open_one_ticket(shop, wechat):
    import asyncio

    merchant_id = await merchant_of(shop)
    openid = "oRace" + secrets.token_hex(6)
    results = await asyncio.gather(*(wechat.text(openid, f"消息 {i}") for i in range(4)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    [ticket] = await wechat_tickets(merchant_id)
    assert len(await replies_on(ticket.id)) == 3
    async with transaction() as session:
        n = (await session.execute(select(func.count()).select_from(WechatMessage)
                                   .where(WechatMessage.merchant_id == merchant_id))).scalar_one()
    assert n == 4
