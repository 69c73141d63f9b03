"""WeChat official account (公众号): followers' messages become tickets, agents' replies go back as 客服消息.

In: the callback (plaintext mode) is signature-checked by the route, de-duplicated here by its dedupe key
(WeChat retries an unanswered callback three times), and answered at once: a short passive reply the first
time a message opens a ticket, "success" otherwise. Out: a public agent reply on a WeChat ticket is queued
in the outbox (kind "wechat") while the follower's 48-hour customer-service window is open, and the job
runner posts it to message/custom/send with a cached access token. Protocol details: integrations/wechat_mp.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import httpx
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Store
from shopdesk.core.audit import record
from shopdesk.core.clock import isoformat, now, parse_instant
from shopdesk.core.errors import NotFound
from shopdesk.core.outbox import OutboxItem, enqueue
from shopdesk.customers.actions import do_upsert_customer
from shopdesk.customers.models import Customer
from shopdesk.integrations import wechat_mp
from shopdesk.tickets import actions
from shopdesk.tickets.channel_models import WechatAccount, WechatMessage
from shopdesk.tickets.models import Ticket, TicketReply
from shopdesk.tickets.schemas import CustomerRef, TicketIn

OPEN_GROUPS = ("new", "open", "pending")
# Message kinds that become ticket text; events never do.
CONTENT_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link"})
# 客服消息: the events that (re)open the 48-hour window besides a message (subscribe, menu click, QR scan).
WINDOW_EVENTS = ("subscribe", "click", "scan", "scancode_push", "scancode_waitmsg")
MAX_TEXT = 2000  # WeChat cuts a customer-service text at 2048 bytes of its own counting; stay under it
ACK_OPENED = "您好，已收到您的消息（工单号 {number}），客服会尽快在这里回复您。"
WELCOME = "感谢关注{name}！有任何问题直接在这里留言，客服会尽快回复您。"
TOKEN_ERRORS = {40001, 40014, 42001}  # invalid, malformed or expired access_token: fetch a new one once


class WechatAccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    app_id: str = Field(min_length=1, max_length=64)
    # Omitted or empty: keep the secret already stored.
    app_secret: str | None = Field(default=None, max_length=128)
    # 接入指南: the token is 3–32 letters or digits.
    token: str = Field(pattern=r"^[A-Za-z0-9]{3,32}$")
    original_id: str = Field(default="", max_length=64)


# --------------------------------------------------------------------------------------------
# Accounts and settings
# --------------------------------------------------------------------------------------------
async def accounts_for(session: AsyncSession, store_code: str, merchant_slug: str | None) -> list[tuple[WechatAccount, Store]]:
    """The official accounts configured on stores with this code (several merchants may share a code)."""
    from shopdesk.accounts.models import Merchant

    stmt = select(WechatAccount, Store).join(Store, Store.id == WechatAccount.store_id).where(Store.code == store_code)
    if merchant_slug:
        stmt = stmt.join(Merchant, Merchant.id == Store.merchant_id).where(Merchant.slug == merchant_slug)
    return [(a, s) for a, s in (await session.execute(stmt.order_by(WechatAccount.id).limit(1000))).all()]


async def _store(session: AsyncSession, merchant_id: str, code: str) -> Store:
    store = (await session.execute(select(Store).where(Store.merchant_id == merchant_id, Store.code == code))
             ).scalar_one_or_none()
    if store is None:
        raise NotFound(f"no store '{code}'")
    return store


async def account_out(session: AsyncSession, store: Store, account: WechatAccount | None) -> dict:
    """The account as settings show it: never the app secret, nor the callback token."""
    from shopdesk.accounts.queries import merchant_of
    from shopdesk.config import get_settings

    merchant = await merchant_of(session, store.merchant_id)
    out = {"store": store.code, "configured": account is not None,
           "callback_url": f"{get_settings().base_url}/api/v1/hooks/wechat/{store.code}?merchant={merchant.slug}"}
    if account is not None:
        out.update(app_id=account.app_id, original_id=account.original_id, token_set=bool(account.token),
                   app_secret_set=bool(account.app_secret))
    return out


async def get_account(session: AsyncSession, principal: Principal, store_code: str) -> dict:
    merchant_id = principal.require_merchant_side()
    principal.require_role("admin")
    store = await _store(session, merchant_id, store_code)
    account = (await session.execute(select(WechatAccount).where(WechatAccount.store_id == store.id))
               ).scalar_one_or_none()
    return await account_out(session, store, account)


async def do_put_account(session: AsyncSession, principal: Principal, store_code: str, body: WechatAccountIn) -> dict:
    """Connect (or reconnect) a store's official account (admin)."""
    merchant_id = principal.require_merchant_side()
    principal.require_role("admin")
    store = await _store(session, merchant_id, store_code)
    account = (await session.execute(select(WechatAccount).where(WechatAccount.store_id == store.id)
                                     .with_for_update())).scalar_one_or_none()
    if account is None:
        account = WechatAccount(merchant_id=merchant_id, store_id=store.id, app_secret="", created_at=now())
        session.add(account)
    account.app_id, account.token, account.original_id = body.app_id.strip(), body.token, body.original_id.strip()
    if body.app_secret:
        account.app_secret = body.app_secret
    forget_token(account.app_id)
    record(session, merchant_id=merchant_id, actor_type=principal.actor, actor_id=principal.actor_id,
           action="settings.wechat", object_type="store", object_id=store.id,
           data={"app_id": account.app_id, "original_id": account.original_id,
                 "app_secret_changed": bool(body.app_secret)})
    await session.flush()
    return await account_out(session, store, account)


# --------------------------------------------------------------------------------------------
# In: the callback
# --------------------------------------------------------------------------------------------
def message_text(msg: wechat_mp.WechatMessage) -> str:
    """What a follower's message says, as ticket text."""
    f = msg.fields
    if msg.msg_type == "text":
        return msg.content or ""
    if msg.msg_type == "image":
        return f"[图片] {msg.pic_url or ''}".strip()
    if msg.msg_type == "voice":
        said = f.get("Recognition", "").strip()
        return f"[语音] {said}".strip() if said else f"[语音] MediaId: {msg.media_id or ''}"
    if msg.msg_type in ("video", "shortvideo"):
        return f"[视频] MediaId: {msg.media_id or ''}"
    if msg.msg_type == "location":
        return f"[位置] {f.get('Label', '')} ({f.get('Location_X', '')}, {f.get('Location_Y', '')})".strip()
    if msg.msg_type == "link":
        return f"[链接] {f.get('Title', '')} {f.get('Url', '')}".strip()
    return f"[{msg.msg_type}]"


def _subject(text: str, msg_type: str) -> str:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if msg_type != "text" or not first:
        return {"image": "微信消息（图片）", "voice": "微信消息（语音）"}.get(msg_type, "微信消息")
    return f"微信：{first[:60]}"


async def _follower(session: AsyncSession, merchant_id: str, openid: str) -> Customer:
    customer = await do_upsert_customer(session, merchant_id, external_id=f"wechat:{openid}")
    # One follower's messages are handled one at a time, so two quick ones do not open two tickets.
    await session.execute(select(Customer.id).where(Customer.id == customer.id).with_for_update())
    return customer


async def _open_ticket(session: AsyncSession, merchant_id: str, customer_id: str) -> Ticket | None:
    return (await session.execute(select(Ticket).where(
        Ticket.merchant_id == merchant_id, Ticket.customer_id == customer_id, Ticket.channel == "wechat",
        Ticket.merged_into_id.is_(None), Ticket.status_group.in_(OPEN_GROUPS))
        .order_by(Ticket.updated_at.desc(), Ticket.id.desc()).limit(1))).scalar_one_or_none()


async def do_receive(session: AsyncSession, account: WechatAccount, store: Store,
                     msg: wechat_mp.WechatMessage) -> bytes:
    """Take one signed callback in, once; return the passive reply (XML) or "success"."""
    # The account's id keeps two merchants' keys apart even if both configured the same account.
    key = f"{account.id}:{wechat_mp.dedupe_key(msg)}"[:255]
    if (await session.execute(select(WechatMessage.id).where(WechatMessage.dedupe_key == key))).first():
        return wechat_mp.NO_REPLY  # WeChat's retry, or a replay: answered already
    is_event = msg.msg_type == "event"
    row = WechatMessage(merchant_id=account.merchant_id, store_id=store.id, dedupe_key=key, openid=msg.from_user[:64],
                        msg_type="event" if is_event else msg.msg_type[:16],
                        content=(msg.event or "") if is_event else message_text(msg), received_at=now())
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:  # the same callback, delivered twice at once: the other one answers it
        return wechat_mp.NO_REPLY
    customer = await _follower(session, account.merchant_id, msg.from_user)
    row.customer_id = customer.id
    if is_event:
        if msg.event == "subscribe":
            return wechat_mp.build_text_reply(msg.from_user, msg.to_user, WELCOME.format(name=store.name), now())
        return wechat_mp.NO_REPLY  # unsubscribe and the rest are recorded only
    if msg.msg_type not in CONTENT_TYPES:
        return wechat_mp.NO_REPLY
    ticket = await _open_ticket(session, account.merchant_id, customer.id)
    if ticket is not None:
        requester = Principal("ticket_link", account.merchant_id, ticket_id=ticket.id)
        await actions.do_reply(session, requester, ticket.id, row.content or "[空消息]", public=True,
                               channel="wechat", author_type="shopper")
        row.ticket_id = ticket.id
        return wechat_mp.NO_REPLY
    body = TicketIn(subject=_subject(row.content, msg.msg_type), description=row.content, channel="wechat",
                    customer=CustomerRef(external_id=customer.external_id),
                    requester_name=(customer.name or f"微信用户 {msg.from_user[-4:]}")[:100])
    ticket = await actions.do_create_ticket(session, Principal("merchant_key", account.merchant_id), body,
                                            actor=("shopper", customer.id), store_id=store.id)
    row.ticket_id = ticket.id
    return wechat_mp.build_text_reply(msg.from_user, msg.to_user, ACK_OPENED.format(number=ticket.number), now())


# --------------------------------------------------------------------------------------------
# Out: agents' replies as 客服消息
# --------------------------------------------------------------------------------------------
async def last_interaction(session: AsyncSession, merchant_id: str, openid: str) -> datetime | None:
    """When the follower last opened the customer-service window; None once they unfollowed."""
    row = (await session.execute(select(WechatMessage.received_at, WechatMessage.msg_type, WechatMessage.content)
                                 .where(WechatMessage.merchant_id == merchant_id, WechatMessage.openid == openid,
                                        or_(WechatMessage.msg_type != "event",
                                            WechatMessage.content.in_((*WINDOW_EVENTS, "unsubscribe"))))
                                 .order_by(WechatMessage.received_at.desc(), WechatMessage.id.desc()).limit(1))).first()
    if row is None or (row.msg_type == "event" and row.content == "unsubscribe"):
        return None
    return row.received_at


async def queue_wechat_reply(session: AsyncSession, ticket: Ticket, reply: TicketReply) -> OutboxItem | None:
    """Queue a public staff reply on a WeChat ticket for the follower, if their 48-hour window is open.

    Called by tickets.actions.do_reply after the reply is added, in its transaction. Outside the
    window WeChat refuses 客服消息, so the reply stays in the ticket and a private note says it was not sent.
    """
    if ticket.channel != "wechat" or not reply.public or reply.author_type != "staff":
        return None
    origin = (await session.execute(select(WechatMessage.openid, WechatMessage.store_id).where(
        WechatMessage.merchant_id == ticket.merchant_id, WechatMessage.ticket_id == ticket.id)
        .order_by(WechatMessage.received_at.desc()).limit(1))).first()
    if origin is None:
        return None
    account = (await session.execute(select(WechatAccount).where(WechatAccount.store_id == origin.store_id))
               ).scalar_one_or_none()
    if account is None:
        return None
    last = await last_interaction(session, ticket.merchant_id, origin.openid)
    at = now()
    if not wechat_mp.within_customer_service_window(last, at):
        await actions.do_reply(session, Principal("merchant_key", ticket.merchant_id), ticket.id,
                               "此回复未发送到微信：客户 48 小时内没有与公众号互动（或已取消关注），"
                               "微信不允许再发送客服消息。请通过其他方式联系客户。",
                               public=False, channel="wechat", author_type="system")
        return None
    assert last is not None
    text = reply.body if len(reply.body) <= MAX_TEXT else reply.body[:MAX_TEXT - 1] + "…"
    return enqueue(session, "wechat", {
        "account_id": account.id, "openid": origin.openid, "text": text, "ticket_id": ticket.id,
        "reply_id": reply.id, "window_ends_at": isoformat(last + wechat_mp.CUSTOMER_SERVICE_WINDOW)},
        ticket.merchant_id)


class WechatApiError(Exception):
    """WeChat answered with an error code (never carries the access token or the app secret)."""


# app id → (access token, good until). Per process: every node fetches its own token (docs/phone-and-wechat.md).
_TOKENS: dict[tuple[str, str], tuple[str, datetime]] = {}


def forget_token(app_id: str) -> None:
    for key in [k for k in _TOKENS if k[1] == app_id]:
        _TOKENS.pop(key, None)


def _api_base() -> str:
    from shopdesk.config import get_settings

    return get_settings().wechat_api_base.rstrip("/")


def _json(response: httpx.Response, what: str) -> dict:
    # Say what failed without the URL: it holds the access token or the app secret.
    if response.status_code >= 400:
        raise WechatApiError(f"{what}: HTTP {response.status_code}")
    try:
        data = response.json()
    except ValueError as exc:
        raise WechatApiError(f"{what}: not JSON") from exc
    if not isinstance(data, dict):
        raise WechatApiError(f"{what}: unexpected answer")
    return data


async def access_token(client: httpx.AsyncClient, account: WechatAccount) -> str:
    """The account's access token, fetched from /cgi-bin/token and cached until shortly before it expires."""
    base = _api_base()
    key = (base, account.app_id)
    cached = _TOKENS.get(key)
    if cached and cached[1] > now():
        return cached[0]
    if not account.app_secret:
        raise WechatApiError("the official account has no app secret: set it in the WeChat settings")
    data = _json(await client.get(f"{base}/cgi-bin/token", params={
        "grant_type": "client_credential", "appid": account.app_id, "secret": account.app_secret}), "token")
    token = data.get("access_token")
    if not token:
        raise WechatApiError(f"token: errcode {data.get('errcode')} {str(data.get('errmsg', ''))[:200]}")
    # Refresh five minutes early (WeChat keeps the old token valid that long after a new one is issued).
    ttl = max(60, int(data.get("expires_in") or 7200) - 300)
    _TOKENS[key] = (token, now() + timedelta(seconds=ttl))
    return token


async def send_customer_service_message(payload: dict, client: httpx.AsyncClient) -> str:
    """Deliver one "wechat" outbox item: POST the 客服消息 to WeChat; raise to have it retried."""
    from shopdesk.core.db import transaction

    async with transaction() as session:
        account = await session.get(WechatAccount, payload["account_id"])
    if account is None:
        return "wechat account removed"
    if now() >= parse_instant(payload["window_ends_at"]):
        raise WechatApiError("the 48-hour customer-service window has closed")
    body = json.dumps(wechat_mp.customer_service_text_payload(payload["openid"], payload["text"]),
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    for attempt in (1, 2):
        token = await access_token(client, account)
        data = _json(await client.post(f"{_api_base()}/cgi-bin/message/custom/send", params={"access_token": token},
                                       content=body, headers={"Content-Type": "application/json; charset=utf-8"}),
                     "message/custom/send")
        code = int(data.get("errcode") or 0)
        if code == 0:
            return "wechat ok"
        if code in TOKEN_ERRORS and attempt == 1:
            forget_token(account.app_id)  # revoked or rotated elsewhere: fetch a fresh one and try again
            continue
        said = re.sub(r"\s+", " ", str(data.get("errmsg", "")))[:200]
        raise WechatApiError(f"message/custom/send: errcode {code} {said}")
    raise AssertionError("unreachable")
