"""Routes: widget sessions, agent presence, conversations, messages, transfer, end, rating, 留言 replies."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import func, select

from shopdesk.accounts.models import Merchant, Staff
from shopdesk.chat import actions, history, rooms, rules
from shopdesk.chat.actions import ChatActor, resolve_actor
from shopdesk.chat.models import AgentPresence, ChatBlock, ChatDesk, Conversation
from shopdesk.chat.queries import (canned_replies, conversation_detail, customer_card, list_conversations,
                                   list_messages, online_visitors)
from shopdesk.config import get_settings
from shopdesk.core import storage
from shopdesk.core.clock import isoformat, now
from shopdesk.core.db import sessionmaker
from shopdesk.core.errors import ValidationFailed
from shopdesk.core.pagination import clamp_limit, decode_cursor, encode_cursor
from shopdesk.core.ratelimit import hit
from shopdesk.web.deps import DbSession, bearer
from shopdesk.web.responses import page

router = APIRouter()


async def get_actor(request: Request) -> ChatActor:
    """The caller: a widget token, a staff token, a merchant key or a shopper token (401 if none is valid)."""
    async with sessionmaker()() as session:
        return await resolve_actor(session, bearer(request))


Caller = Annotated[ChatActor, Depends(get_actor)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdentityIn(Strict):
    external_id: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=200)
    hmac: str = Field(min_length=1, max_length=128)


class PageIn(Strict):
    url: str = Field(default="", max_length=2000)
    title: str = Field(default="", max_length=500)


class ContactIn(Strict):
    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    phone: str | None = Field(default=None, max_length=32)


class WidgetSessionIn(Strict):
    store: str = Field(min_length=1, max_length=64)
    # Added: store codes are unique per merchant only; name the merchant when several share one.
    merchant: str | None = Field(default=None, max_length=64)
    visitor_id: str | None = Field(default=None, max_length=64)
    identity: IdentityIn | None = None
    page: PageIn | None = None
    contact: ContactIn | None = None
    # Added: document.referrer of the page the widget runs on (the customer card's "came from").
    referrer: str | None = Field(default=None, max_length=2000)


class PresenceIn(Strict):
    status: Literal["online", "away", "offline"]
    capacity: int | None = Field(default=None, ge=1, le=10)


class TransferIn(Strict):
    agent_id: str | None = Field(default=None, min_length=1, max_length=32)
    desk: str | None = Field(default=None, min_length=1, max_length=32)


class RatingIn(Strict):
    score: int = Field(ge=1, le=5)
    comment: str = Field(default="", max_length=1000)


class ReplyIn(Strict):
    text: str = Field(min_length=1, max_length=actions.MAX_TEXT)
    subject: str | None = Field(default=None, max_length=200)
    client_msg_id: str | None = Field(default=None, min_length=1, max_length=64)


class DeskIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    store: str | None = Field(default=None, max_length=64)
    agent_ids: list[str] = Field(default=[], max_length=500)
    business_hours: dict | None = None
    fallthrough: bool = True


@router.post("/widget/sessions")
async def widget_session(body: WidgetSessionIn, request: Request) -> dict:
    """Start or continue a shopper's widget session (no auth: the store code is public)."""
    hit("300/minute", "widget-session", request.client.host if request.client else "-")
    ip = rules.client_ip(request.client.host if request.client else "", request.headers.get("x-forwarded-for"),
                         get_settings().trusted_proxy)
    return await actions.do_start_widget_session(
        store=body.store, merchant=body.merchant, visitor_id=body.visitor_id,
        identity=body.identity.model_dump() if body.identity else None,
        page=body.page.model_dump() if body.page else None,
        contact=body.contact.model_dump() if body.contact else None,
        ip=ip, user_agent=request.headers.get("user-agent", ""), referrer=body.referrer or "")


@router.put("/widget/contact")
async def widget_contact(body: ContactIn, actor: Caller) -> dict:
    return await actions.do_save_contact(actor, body.model_dump())


@router.put("/agents/me/presence")
async def set_presence(body: PresenceIn, actor: Caller) -> dict:
    return await actions.do_set_presence(actor, status=body.status, capacity=body.capacity)


@router.get("/agents")
async def list_agents(session: DbSession, actor: Caller) -> dict:
    """The merchant's staff with presence and current load (transfer targets)."""
    actor.require_staff()
    loads = select(Conversation.assignee_id, func.count().label("n")).where(
        Conversation.merchant_id == actor.merchant_id, Conversation.status == "assigned").group_by(
        Conversation.assignee_id).subquery()
    rows = (await session.execute(
        select(Staff.id, Staff.name, Staff.role, AgentPresence.status, AgentPresence.capacity, loads.c.n)
        .outerjoin(AgentPresence, AgentPresence.staff_id == Staff.id).outerjoin(loads, loads.c.assignee_id == Staff.id)
        .where(Staff.merchant_id == actor.merchant_id).order_by(Staff.name, Staff.id))).all()
    return page([{"staff_id": r.id, "name": r.name, "role": r.role, "status": r.status or "offline",
                  "capacity": r.capacity or 5, "load": r.n or 0} for r in rows], None)


@router.get("/conversations")
async def conversations(session: DbSession, actor: Caller, status: str | None = None, assignee: str | None = None,
                        limit: int | None = None, cursor: str | None = None) -> dict:
    size = clamp_limit(limit)
    after = decode_cursor(cursor)
    items, more = await list_conversations(session, actor, status=status, assignee=assignee, limit=size,
                                           after_id=str(after[0]) if after else None)
    return page(items, encode_cursor([items[-1]["id"]]) if more else None)


@router.get("/conversations/search")
async def search_conversations(session: DbSession, actor: Caller, q: str | None = None, customer: str | None = None,
                               order_no: str | None = None, date_from: str | None = None,
                               date_to: str | None = None, status: str | None = None, limit: int | None = None,
                               cursor: str | None = None) -> dict:
    """History search: by customer (name, phone, email, external id), order number, text, creation date range."""
    size = clamp_limit(limit)
    after = decode_cursor(cursor)
    items, more = await history.search(session, actor, limit=size, after_id=str(after[0]) if after else None,
                                       q=q, customer=customer, order_no=order_no, date_from=date_from,
                                       date_to=date_to, status=status)
    return page(items, encode_cursor([items[-1]["id"]]) if more else None)


@router.get("/conversations/export")
async def export_conversations(session: DbSession, actor: Caller, format: str = "json", q: str | None = None,
                               customer: str | None = None, order_no: str | None = None,
                               date_from: str | None = None, date_to: str | None = None, status: str | None = None,
                               limit: int | None = None) -> Response:
    """Export matching conversations with their messages (oldest first, at most 1,000 per request)."""
    if format not in ("json", "csv"):
        raise ValidationFailed("format must be json or csv", field="format")
    if limit is not None and not 1 <= limit <= history.EXPORT_MAX:
        raise ValidationFailed(f"limit must be between 1 and {history.EXPORT_MAX}", field="limit")
    rows = await history.export_rows(session, actor, limit=limit or history.EXPORT_MAX, q=q, customer=customer,
                                     order_no=order_no, date_from=date_from, date_to=date_to, status=status)
    stamp = isoformat(now())
    if format == "csv":
        return Response(history.to_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="conversations.csv"'})
    return JSONResponse({"version": history.EXPORT_VERSION, "exported_at": stamp, "conversations": rows},
                        headers={"Content-Disposition": 'attachment; filename="conversations.json"'})


@router.post("/conversations/import")
async def import_conversations(body: history.ImportIn, actor: Caller) -> dict:
    """Import the export's JSON (admin or supervisor): new ids, stored as ended history; re-import skips."""
    return await history.do_import(actor, body)


@router.delete("/conversations/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: str, actor: Caller) -> Response:
    """Delete an ended conversation and its messages (admin; audit-logged)."""
    await history.do_delete(actor, conversation_id)
    return Response(status_code=204)


@router.get("/conversations/{conversation_id}")
async def conversation(conversation_id: str, session: DbSession, actor: Caller) -> dict:
    return await conversation_detail(session, actor, conversation_id)


@router.get("/conversations/{conversation_id}/customer")
async def conversation_customer(conversation_id: str, session: DbSession, actor: Caller) -> dict:
    """The customer card beside a chat (staff): visitor info, customer, orders, after-sales cases, past chats."""
    return await customer_card(session, actor, conversation_id)


@router.get("/conversations/{conversation_id}/messages")
async def messages(conversation_id: str, session: DbSession, actor: Caller, after_seq: int | None = None,
                   before_seq: int | None = None, limit: int | None = None, cursor: str | None = None) -> dict:
    """Messages in seq order after after_seq (or the cursor); with before_seq (added), the last ones before it."""
    size = clamp_limit(limit)
    after = decode_cursor(cursor)
    if after:
        if not isinstance(after[0], int):
            raise ValidationFailed("malformed cursor", field="cursor")
        after_seq = after[0]
    for name, value in (("after_seq", after_seq), ("before_seq", before_seq)):
        if value is not None and value < 0:
            raise ValidationFailed("must be 0 or more", field=name)
    items, more = await list_messages(session, actor, conversation_id, after_seq=after_seq, before_seq=before_seq,
                                      limit=size)
    next_after = items[-1]["seq"] if more and before_seq is None else None
    return {"items": items, "next_cursor": encode_cursor([next_after]) if next_after else None,
            "next_after_seq": next_after}


@router.post("/conversations/{conversation_id}/transfer")
async def transfer(conversation_id: str, body: TransferIn, actor: Caller) -> dict:
    return await actions.do_transfer(actor, conversation_id, agent_id=body.agent_id, desk_id=body.desk)


@router.post("/conversations/{conversation_id}/end")
async def end(conversation_id: str, actor: Caller) -> dict:
    return await actions.do_end(actor, conversation_id)


@router.post("/conversations/{conversation_id}/rating")
async def rate(conversation_id: str, body: RatingIn, actor: Caller) -> dict:
    return await actions.do_rate(actor, conversation_id, score=body.score, comment=body.comment)


@router.post("/conversations/{conversation_id}/reply-by-email", status_code=201)
async def reply_by_email(conversation_id: str, body: ReplyIn, request: Request, actor: Caller) -> dict:
    """Answer a 留言 by email; Idempotency-Key (or client_msg_id) makes a retry return the first reply."""
    client_msg_id = body.client_msg_id or request.headers.get("idempotency-key")
    if client_msg_id is not None and len(client_msg_id) > 64:
        raise ValidationFailed("at most 64 characters", field="Idempotency-Key")
    sent = await actions.do_reply_by_email(actor, conversation_id, text=body.text, client_msg_id=client_msg_id,
                                           subject=body.subject)
    return {**{k: v for k, v in sent.ack.items() if k != "type"}, "replayed": sent.message is None}


@router.post("/chat/desks", status_code=201)
async def create_desk(body: DeskIn, actor: Caller) -> dict:
    desk = await actions.do_create_desk(actor, name=body.name, store=body.store, agent_ids=body.agent_ids,
                                        business_hours=body.business_hours, fallthrough=body.fallthrough)
    return desk_out(desk)


@router.get("/chat/desks")
async def desks(session: DbSession, actor: Caller) -> dict:
    actor.require_staff()
    rows = (await session.execute(select(ChatDesk).where(ChatDesk.merchant_id == actor.merchant_id)
                                  .order_by(ChatDesk.id))).scalars()
    return page([desk_out(d) for d in rows], None)


def desk_out(d: ChatDesk) -> dict:
    return {"id": d.id, "name": d.name, "store_id": d.store_id, "agent_ids": d.agent_ids,
            "business_hours": d.business_hours, "fallthrough": d.fallthrough}


@router.post("/chat/uploads", status_code=201)
async def upload(file: UploadFile, actor: Caller) -> dict:
    """An image for a chat message (JPEG/PNG/WebP, checked by content); send its id as attachment_id."""
    data = await file.read(get_settings().upload_max_bytes + 1)
    item = await actions.do_save_attachment(actor, data)
    return {"id": item.id, "url": f"/api/v1/chat/uploads/{item.id}", "content_type": item.content_type,
            "size": item.size}


@router.get("/chat/uploads/{attachment_id}")
async def get_upload(attachment_id: str, session: DbSession, actor: Caller):
    item = await actions.access_attachment(session, actor, attachment_id)
    return FileResponse(storage.open_path(item.path), media_type=item.content_type)


class AnnouncementIn(Strict):
    store: str = Field(min_length=1, max_length=64)
    text: str = Field(min_length=1, max_length=1000)


@router.post("/chat/announcements", status_code=201)
async def announce(body: AnnouncementIn, actor: Caller) -> dict:
    """Broadcast a notice to every widget of a store that is connected now, on every node (admin or supervisor)."""
    return await actions.do_announce(actor, store=body.store, text=body.text)


class ChatSettingsIn(Strict):
    """Each field is optional: what is left out keeps its value."""

    idle_close_minutes: int | None = Field(default=None, ge=0, le=24 * 60)  # 0: never close idle chats
    # A visitor's new chat goes to the bot (chat/bot.py) before routing; true or false, nothing else.
    bot_first: StrictBool | None = None
    bot_name: str | None = Field(default=None, min_length=1, max_length=50)


@router.get("/chat/settings")
async def get_chat_settings(session: DbSession, actor: Caller) -> dict:
    actor.require_staff()
    return actions.chat_settings(await session.get(Merchant, actor.merchant_id))


@router.put("/chat/settings")
async def put_chat_settings(body: ChatSettingsIn, actor: Caller) -> dict:
    return await actions.do_save_chat_settings(actor, idle_close_minutes=body.idle_close_minutes,
                                               bot_first=body.bot_first, bot_name=body.bot_name)


class BlockIn(Strict):
    conversation_id: str | None = Field(default=None, min_length=1, max_length=32)
    visitor_id: str | None = Field(default=None, min_length=1, max_length=32)
    ip: bool = False
    reason: str = Field(default="", max_length=200)


@router.post("/chat/blocks", status_code=201)
async def block(body: BlockIn, actor: Caller) -> dict:
    """Block a visitor (by conversation or visitor id; with ip, their address too)."""
    if not body.conversation_id and not body.visitor_id:
        raise ValidationFailed("give conversation_id or visitor_id", field="visitor_id")
    return await actions.do_block(actor, conversation_id=body.conversation_id, visitor_id=body.visitor_id,
                                  ip=body.ip, reason=body.reason)


@router.get("/chat/blocks")
async def blocks(session: DbSession, actor: Caller) -> dict:
    actor.require_staff()
    rows = (await session.execute(select(ChatBlock).where(ChatBlock.merchant_id == actor.merchant_id)
                                  .order_by(ChatBlock.id.desc()).limit(500))).scalars()
    return page([{"id": b.id, "kind": b.kind, "value": b.value, "reason": b.reason, "created_by": b.created_by,
                  "created_at": isoformat(b.created_at)} for b in rows], None)


@router.delete("/chat/blocks/{block_id}", status_code=204)
async def unblock(block_id: str, actor: Caller) -> Response:
    await actions.do_unblock(actor, block_id)
    return Response(status_code=204)


@router.post("/conversations/{conversation_id}/lock")
async def lock(conversation_id: str, actor: Caller) -> dict:
    """Only the holder may reply while locked; others get 409/`locked`."""
    return await actions.do_lock(actor, conversation_id, lock=True)


@router.post("/conversations/{conversation_id}/unlock")
async def unlock(conversation_id: str, actor: Caller) -> dict:
    return await actions.do_lock(actor, conversation_id, lock=False)


class ParticipantIn(Strict):
    agent_id: str = Field(min_length=1, max_length=32)


@router.post("/conversations/{conversation_id}/participants", status_code=201)
async def add_participant(conversation_id: str, body: ParticipantIn, actor: Caller) -> dict:
    """Invite a colleague into the chat (they receive it and may reply)."""
    return await actions.do_add_participant(actor, conversation_id, agent_id=body.agent_id)


class CannedIn(Strict):
    shortcut: str = Field(min_length=1, max_length=32, pattern=r"^[^\s/]+$")
    text: str = Field(min_length=1, max_length=actions.MAX_TEXT)
    shared: bool = False  # for the whole merchant (admin or supervisor)


@router.get("/chat/canned")
async def list_canned(session: DbSession, actor: Caller, conversation_id: str | None = None) -> dict:
    """Canned replies (merchant-wide and the agent's own); with conversation_id, `rendered` has the variables filled."""
    return page(await canned_replies(session, actor, conversation_id), None)


@router.post("/chat/canned", status_code=201)
async def create_canned(body: CannedIn, actor: Caller) -> dict:
    return await actions.do_create_canned(actor, shortcut=body.shortcut, text=body.text, shared=body.shared)


@router.delete("/chat/canned/{canned_id}", status_code=204)
async def delete_canned(canned_id: str, actor: Caller) -> Response:
    await actions.do_delete_canned(actor, canned_id)
    return Response(status_code=204)


@router.get("/chat/visitors/online")
async def visitors_online(session: DbSession, actor: Caller) -> dict:
    return page(await online_visitors(session, actor), None)


class InviteIn(Strict):
    text: str = Field(min_length=1, max_length=actions.MAX_TEXT)


@router.post("/chat/visitors/{visitor_id}/invite", status_code=201)
async def invite_visitor(visitor_id: str, body: InviteIn, actor: Caller) -> dict:
    """Proactive invitation: opens a chat with this agent; the widget gets `invitation`."""
    return await actions.do_invite_visitor(actor, visitor_id, text=body.text)


@router.get("/chat/rooms")
async def list_rooms(session: DbSession, actor: Caller) -> dict:
    """The internal channel: the merchant's staff room and the agent's direct-message rooms."""
    return page(await rooms.rooms_of(session, actor), None)


class RoomIn(Strict):
    agent_id: str = Field(min_length=1, max_length=32)


@router.post("/chat/rooms")
async def open_room(body: RoomIn, actor: Caller) -> dict:
    """The direct-message room with a colleague (created on first use)."""
    return await rooms.do_open_direct(actor, body.agent_id)


@router.get("/chat/rooms/{room_id}/messages")
async def room_messages(room_id: str, session: DbSession, actor: Caller, after_seq: int = 0,
                        limit: int | None = None) -> dict:
    if after_seq < 0:
        raise ValidationFailed("must be 0 or more", field="after_seq")
    size = clamp_limit(limit)
    items = await rooms.messages(session, actor, room_id, after_seq=after_seq, limit=size + 1)
    more = len(items) > size
    items = items[:size]
    return {"items": items, "next_after_seq": items[-1]["seq"] if more else None}
