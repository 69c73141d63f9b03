"""Reads of conversations and messages for the API and the socket's catch-up."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.models import Staff
from shopdesk.chat import routing
from shopdesk.chat.actions import ChatActor, access_conversation, conversation_out, message_frame, message_out
from shopdesk.chat.models import STATUSES, ChatMessage, ChatVisitor, Conversation
from shopdesk.core.clock import isoformat, now
from shopdesk.core.db import transaction
from shopdesk.core.errors import ValidationFailed

REPLAY_BATCH = 500


def detail_out(conv: Conversation, visitor: ChatVisitor | None, assignee_name: str | None,
               spot: routing.QueueSpot | None, *, staff: bool) -> dict:
    out = conversation_out(conv, assignee_name, spot)
    if staff:
        out.update({
            "visitor": {"id": conv.visitor_id, "name": visitor.name if visitor else "",
                        "customer_id": conv.customer_id, "email": visitor.email if visitor else "",
                        "phone": visitor.phone if visitor else "", "visit_count": visitor.visit_count if visitor else 0,
                        "pages": visitor.pages if visitor else []},
            "store_id": conv.store_id, "unread": max(0, conv.last_seq - conv.agent_read_seq),
            "waiting_since": isoformat(conv.waiting_since), "last_message_at": isoformat(conv.last_message_at),
            "assigned_at": isoformat(conv.assigned_at), "first_reply_at": isoformat(conv.first_reply_at),
            "ended_by": conv.ended_by})
    else:
        out["unread"] = max(0, conv.last_seq - conv.visitor_read_seq)
    return out


async def list_conversations(session: AsyncSession, actor: ChatActor, *, status: str | None, assignee: str | None,
                             limit: int, after_id: str | None) -> tuple[list[dict], bool]:
    """The merchant's conversations, newest first, in a fixed number of queries."""
    actor.require_staff()
    stmt = (select(Conversation, ChatVisitor, Staff.name).join(ChatVisitor, ChatVisitor.id == Conversation.visitor_id)
            .outerjoin(Staff, Staff.id == Conversation.assignee_id)
            .where(Conversation.merchant_id == actor.merchant_id))
    if status:
        if status not in STATUSES:
            raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}", field="status")
        stmt = stmt.where(Conversation.status == status)
    if assignee:
        if assignee == "me":
            if actor.staff_id is None:
                raise ValidationFailed("a merchant key has no 'me'; give a staff id", field="assignee")
            stmt = stmt.where(Conversation.assignee_id == actor.staff_id)
        elif assignee == "none":
            stmt = stmt.where(Conversation.assignee_id.is_(None))
        else:
            stmt = stmt.where(Conversation.assignee_id == assignee)
    if after_id:
        stmt = stmt.where(Conversation.id < after_id)
    rows = (await session.execute(stmt.order_by(Conversation.id.desc()).limit(limit + 1))).all()
    more = len(rows) > limit
    rows = rows[:limit]
    queued = {conv.id for conv, _, _ in rows if conv.status == "queued"}
    spots = await routing.queue_view(session, actor.merchant_id, now(), only=queued) if queued else {}
    return [detail_out(conv, visitor, name, spots.get(conv.id), staff=True) for conv, visitor, name in rows], more


async def conversation_detail(session: AsyncSession, actor: ChatActor, conversation_id: str) -> dict:
    conv = await access_conversation(session, actor, conversation_id)
    visitor = await session.get(ChatVisitor, conv.visitor_id)
    name = (await session.execute(select(Staff.name).where(Staff.id == conv.assignee_id))).scalar() \
        if conv.assignee_id else None
    spot = (await routing.queue_view(session, conv.merchant_id, now(), only={conv.id})).get(conv.id) \
        if conv.status == "queued" else None
    return detail_out(conv, visitor, name, spot, staff=actor.is_staff_side)


async def list_messages(session: AsyncSession, actor: ChatActor, conversation_id: str, *, after_seq: int | None,
                        before_seq: int | None, limit: int) -> tuple[list[dict], bool]:
    """Messages in seq order: after after_seq (catching up), or the last `limit` before before_seq (scrolling back)."""
    conv = await access_conversation(session, actor, conversation_id)
    stmt = select(ChatMessage).where(ChatMessage.conversation_id == conv.id)
    if before_seq is not None:
        stmt = stmt.where(ChatMessage.seq < before_seq)
        if after_seq is not None:
            stmt = stmt.where(ChatMessage.seq > after_seq)
        rows = list((await session.execute(stmt.order_by(ChatMessage.seq.desc()).limit(limit + 1))).scalars())
        more = len(rows) > limit
        return [message_out(m) for m in reversed(rows[:limit])], more
    stmt = stmt.where(ChatMessage.seq > (after_seq or 0))
    rows = list((await session.execute(stmt.order_by(ChatMessage.seq).limit(limit + 1))).scalars())
    return [message_out(m) for m in rows[:limit]], len(rows) > limit


async def message_frames(conversation_id: str, after_seq: int, upto: int | None = None,
                         limit: int = REPLAY_BATCH) -> list[tuple[int, str]]:
    """Stored messages as message.created frames, seq > after_seq (and ≤ upto), in order: the socket's catch-up."""
    async with transaction() as session:
        stmt = select(ChatMessage).where(ChatMessage.conversation_id == conversation_id, ChatMessage.seq > after_seq)
        if upto is not None:
            stmt = stmt.where(ChatMessage.seq <= upto)
        rows = (await session.execute(stmt.order_by(ChatMessage.seq).limit(limit))).scalars().all()
        return [(m.seq, message_frame(m)) for m in rows]
