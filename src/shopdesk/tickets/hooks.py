"""Routes: the inbound channel hooks (PBX call events, the WeChat official account), calls and WeChat settings.

The hooks carry no bearer token: a PBX signs its body with the store's identity secret, WeChat signs its
query with the account's token. Nothing is read from the body, and nothing written, before that check.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from shopdesk.accounts.models import Merchant, Store
from shopdesk.core.clock import now
from shopdesk.core.db import transaction
from shopdesk.core.errors import Conflict, Forbidden, NotFound, TooLarge, Unauthorized, ValidationFailed
from shopdesk.core.pagination import clamp_limit
from shopdesk.integrations import wechat_mp
from shopdesk.tickets import phone, wechat
from shopdesk.tickets.channel_models import WechatAccount
from shopdesk.tickets.queries import ticket_out
from shopdesk.web.deps import CurrentPrincipal, DbSession

router = APIRouter()
# Stores sharing one code, tried against a hook's signature (`?merchant=<slug>` makes it one).
MAX_STORES = 1000


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"at most {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _stores(store_code: str, merchant_slug: str | None) -> list[Store]:
    """Stores with this code: several merchants may share one, `?merchant=<slug>` narrows it down."""
    async with transaction() as session:
        stmt = select(Store).where(Store.code == store_code)
        if merchant_slug:
            stmt = stmt.join(Merchant, Merchant.id == Store.merchant_id).where(Merchant.slug == merchant_slug)
        return list((await session.execute(stmt.order_by(Store.id).limit(MAX_STORES))).scalars())


# --------------------------------------------------------------------------------------------
# Phone (CTI)
# --------------------------------------------------------------------------------------------
@router.post("/hooks/cti/{store}")
async def cti_event(store: str, request: Request, merchant: str | None = None) -> dict:
    """A call event from the PBX, signed `X-Shopdesk-Signature: sha256=<hex HMAC of the body>`."""
    body = await _body(request, phone.MAX_BODY_BYTES)
    header = request.headers.get(phone.SIGNATURE_HEADER)
    candidates = await _stores(store, merchant)
    if not candidates:
        raise NotFound(f"no store '{store}'")
    # The signature names the store: only the right one's secret verifies it.
    signed = next((s for s in candidates if phone.signature_ok(s.identity_secret, body, header)), None)
    if signed is None:
        raise Unauthorized(f"missing or wrong {phone.SIGNATURE_HEADER}")
    event = phone.parse_event(body)
    for attempt in (1, 2):
        try:
            async with transaction() as session:
                outcome = await phone.do_call_event(session, signed, event)
                out = {"applied": outcome.applied, "call": phone.call_out(outcome.call)}
        except IntegrityError:
            # Two events of one caller raced on a row the other created (a customer, a ticket number):
            # the second pass sees what the first committed.
            if attempt == 2:
                raise
            continue
        await outcome.publish()
        return out
    raise AssertionError("unreachable")


@router.post("/calls/{call_id}/ticket")
async def call_ticket(call_id: str, session: DbSession, principal: CurrentPrincipal) -> dict:
    """The caller's card's button: the call's ticket (the caller's open phone ticket, or a new one)."""
    async with session.begin():
        ticket = await phone.do_call_ticket(session, principal, call_id)
        return {"ticket": ticket_out(ticket)}


@router.get("/calls")
async def calls(session: DbSession, principal: CurrentPrincipal, customer_id: str | None = None,
                limit: int | None = None) -> dict:
    return {"items": await phone.calls_of(session, principal, customer_id=customer_id, limit=clamp_limit(limit))}


# --------------------------------------------------------------------------------------------
# WeChat official account
# --------------------------------------------------------------------------------------------
async def _wechat_accounts(store: str, merchant: str | None) -> list[tuple[WechatAccount, Store]]:
    async with transaction() as session:
        found = await wechat.accounts_for(session, store, merchant)
    if not found:
        raise NotFound(f"no WeChat official account on store '{store}'")
    return found


@router.get("/hooks/wechat/{store}")
async def wechat_verify(store: str, request: Request, merchant: str | None = None):
    """接入指南: echo `echostr` back when the signature is the account's."""
    params = dict(request.query_params)
    for account, _ in await _wechat_accounts(store, merchant):
        echo = wechat_mp.verify_echo(account.token, params)
        if echo is not None:
            return PlainTextResponse(echo)
    raise Unauthorized("the signature does not match the account's token")


@router.post("/hooks/wechat/{store}")
async def wechat_callback(store: str, request: Request, merchant: str | None = None):
    """A follower's message or event (plaintext mode); answered within WeChat's 5 seconds."""
    q = request.query_params
    signature, timestamp, nonce = q.get("signature"), q.get("timestamp"), q.get("nonce")
    found = await _wechat_accounts(store, merchant)
    signed = [(a, s) for a, s in found if wechat_mp.check_signature(a.token, signature, timestamp, nonce)]
    if not signed:
        raise Unauthorized("the signature does not match the account's token")
    if not wechat_mp.timestamp_fresh(timestamp, now()):
        raise Forbidden("the signed timestamp is too old or too far ahead", code="stale_request")
    body = await _body(request, wechat_mp.MAX_XML_BYTES)
    try:
        msg = wechat_mp.parse_message(body)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="body", status=400, code="bad_message") from exc
    # Without ?merchant= two merchants' stores may share the code and (unwisely) the token: the account the
    # message is addressed to (ToUserName, its original id) decides.
    addressed = [(a, s) for a, s in signed if a.original_id == msg.to_user]
    if len(signed) > 1 and len(addressed) != 1:
        raise Conflict("several official accounts match: add ?merchant=<slug> to the callback URL",
                       code="ambiguous_store")
    account, shop_store = addressed[0] if addressed else signed[0]
    if account.original_id and msg.to_user != account.original_id:
        raise Forbidden("the message is addressed to another official account", code="wrong_account")
    for attempt in (1, 2):
        try:
            async with transaction() as session:
                answer = await wechat.do_receive(session, account, shop_store, msg)
        except IntegrityError:
            # A follower's first two messages at once both created their customer: once more, and the
            # second pass finds it (or finds the message itself stored, and answers "success").
            if attempt == 2:
                raise
            continue
        if answer == wechat_mp.NO_REPLY:
            return PlainTextResponse(answer)
        return Response(answer, media_type="application/xml")
    raise AssertionError("unreachable")


@router.put("/settings/wechat/{store}")
async def put_wechat(store: str, body: wechat.WechatAccountIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        return await wechat.do_put_account(session, principal, store, body)


@router.get("/settings/wechat/{store}")
async def get_wechat(store: str, session: DbSession, principal: CurrentPrincipal) -> dict:
    return await wechat.get_account(session, principal, store)
