"""Routes: widget sessions, agent presence, conversations, messages, transfer, end, rating, 留言 replies."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from shopdesk.accounts.models import Staff
from shopdesk.chat import actions
from shopdesk.chat.actions import ChatActor, resolve_actor
from shopdesk.chat.models import AgentPresence, ChatDesk, Conversation
from shopdesk.chat.queries import conversation_detail, list_conversations, list_messages
from shopdesk.config import get_settings
from shopdesk.core import storage
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
    return await actions.do_start_widget_session(
        store=body.store, merchant=body.merchant, visitor_id=body.visitor_id,
        identity=body.identity.model_dump() if body.identity else None,
        page=body.page.model_dump() if body.page else None,
        contact=body.contact.model_dump() if body.contact else None)


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


@router.get("/conversations/{conversation_id}")
async def conversation(conversation_id: str, session: DbSession, actor: Caller) -> dict:
    return await conversation_detail(session, actor, conversation_id)


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
