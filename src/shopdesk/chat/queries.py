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


def visitor_out(visitor: ChatVisitor | None, visitor_id: str, customer_id: str | None) -> dict:
    """The customer card's visitor part: contact, visits, where from, device, pages browsed."""
    if visitor is None:
        return {"id": visitor_id, "name": "", "customer_id": customer_id, "email": "", "phone": "", "visit_count": 0,
                "pages": [], "returning": False, "ip": "", "location": "", "device": None, "referrer": "",
                "landing_page": "", "online": False}
    return {"id": visitor.id, "name": visitor.name, "customer_id": customer_id or visitor.customer_id,
            "email": visitor.email, "phone": visitor.phone, "visit_count": visitor.visit_count,
            "pages": visitor.pages or [], "returning": visitor.visit_count > 1, "ip": visitor.ip,
            "location": visitor.location, "device": visitor.device, "user_agent": visitor.user_agent,
            "referrer": visitor.referrer, "landing_page": visitor.landing_page,
            "online": visitor.connected_at is not None and (visitor.left_at is None or
                                                             visitor.left_at < visitor.connected_at),
            "first_seen_at": isoformat(visitor.created_at), "last_seen_at": isoformat(visitor.last_seen_at)}


def detail_out(conv: Conversation, visitor: ChatVisitor | None, assignee_name: str | None,
               spot: routing.QueueSpot | None, *, staff: bool) -> dict:
    out = conversation_out(conv, assignee_name, spot)
    if staff:
        out.update({
            "visitor": visitor_out(visitor, conv.visitor_id, conv.customer_id),
            "store_id": conv.store_id, "unread": max(0, conv.last_seq - conv.agent_read_seq),
            "waiting_since": isoformat(conv.waiting_since), "last_message_at": isoformat(conv.last_message_at),
            "assigned_at": isoformat(conv.assigned_at), "first_reply_at": isoformat(conv.first_reply_at),
            "ended_by": conv.ended_by})
    else:
        out["unread"] = max(0, conv.last_seq - conv.visitor_read_seq)
    return out


def merchant_conversations(actor: ChatActor, status: str | None):
    """The select of the staff caller's merchant's conversations with their visitor and assignee name."""
    actor.require_staff()
    stmt = (select(Conversation, ChatVisitor, Staff.name).join(ChatVisitor, ChatVisitor.id == Conversation.visitor_id)
            .outerjoin(Staff, Staff.id == Conversation.assignee_id)
            .where(Conversation.merchant_id == actor.merchant_id))
    if status:
        if status not in STATUSES:
            raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}", field="status")
        stmt = stmt.where(Conversation.status == status)
    return stmt


async def list_conversations(session: AsyncSession, actor: ChatActor, *, status: str | None, assignee: str | None,
                             limit: int, after_id: str | None) -> tuple[list[dict], bool]:
    """The merchant's conversations, newest first, in a fixed number of queries."""
    stmt = merchant_conversations(actor, status)
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
    if not actor.is_staff_side:
        stmt = stmt.where(ChatMessage.private.is_(False))  # notes are for staff only
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
                         limit: int = REPLAY_BATCH, staff: bool = True) -> list[tuple[int, str]]:
    """Stored messages as message.created frames, seq > after_seq (and ≤ upto), in order: the socket's catch-up.

    For a visitor's socket (staff=False) private notes are left out: their seqs are the visitor's only gaps.
    """
    async with transaction() as session:
        stmt = select(ChatMessage).where(ChatMessage.conversation_id == conversation_id, ChatMessage.seq > after_seq)
        if not staff:
            stmt = stmt.where(ChatMessage.private.is_(False))
        if upto is not None:
            stmt = stmt.where(ChatMessage.seq <= upto)
        rows = (await session.execute(stmt.order_by(ChatMessage.seq).limit(limit))).scalars().all()
        return [(m.seq, message_frame(m)) for m in rows]


async def customer_card(session: AsyncSession, actor: ChatActor, conversation_id: str) -> dict:
    """Everything beside a chat: the visitor, the customer, their orders and after-sales cases, past chats.

    Orders and cases are read through their own modules' queries (`aftersales.queries.filtered` with
    the agent as principal, `orders.actions.order_options`), read-only.
    """
    from shopdesk.accounts.auth import Principal
    from shopdesk.aftersales.models import AftersaleCase
    from shopdesk.aftersales.queries import filtered
    from shopdesk.customers.actions import customer_out, get_customer
    from shopdesk.orders.models import Order

    actor.require_staff()
    conv = await access_conversation(session, actor, conversation_id)
    visitor = await session.get(ChatVisitor, conv.visitor_id)
    customer_id = conv.customer_id or (visitor.customer_id if visitor else None)
    out: dict = {"conversation_id": conv.id, "visitor": visitor_out(visitor, conv.visitor_id, customer_id),
                 "customer": None, "orders": [], "cases": [], "conversations": []}
    if customer_id:
        customer = await get_customer(session, actor.merchant_id, customer_id)
        out["customer"] = customer_out(customer) if customer else None
        orders = (await session.execute(select(Order).where(
            Order.merchant_id == actor.merchant_id, Order.customer_id == customer_id)
            .order_by(Order.placed_at.desc(), Order.id.desc()).limit(10))).scalars().all()
        out["orders"] = [{"id": o.id, "order_no": o.order_no, "status": o.status, "paid_total_fen": o.paid_total_fen,
                          "placed_at": isoformat(o.placed_at)} for o in orders]
        principal = Principal("staff", actor.merchant_id, staff_id=actor.staff_id, role=actor.role or "agent")
        cases = (await session.execute(filtered(principal).where(AftersaleCase.customer_id == customer_id)
                                       .order_by(AftersaleCase.id.desc()).limit(10))).scalars().all()
        numbers = {o.id: o.order_no for o in orders}
        out["cases"] = [{"id": c.id, "case_no": c.case_no, "type": c.type, "status": c.status, "order_id": c.order_id,
                         "order_no": numbers.get(c.order_id), "created_at": isoformat(c.created_at)} for c in cases]
    who = Conversation.visitor_id == conv.visitor_id
    if customer_id:
        who = who | (Conversation.customer_id == customer_id)
    past = (await session.execute(
        select(Conversation, Staff.name).outerjoin(Staff, Staff.id == Conversation.assignee_id)
        .where(Conversation.merchant_id == actor.merchant_id, who, Conversation.id != conv.id)
        .order_by(Conversation.id.desc()).limit(10))).all()
    out["conversations"] = [{"id": c.id, "status": c.status, "created_at": isoformat(c.created_at),
                             "ended_at": isoformat(c.ended_at), "last_seq": c.last_seq,
                             "assignee": {"id": c.assignee_id, "name": name or ""} if c.assignee_id else None,
                             "rating": c.rating_score} for c, name in past]
    return out


async def canned_replies(session: AsyncSession, actor: ChatActor, conversation_id: str | None) -> list[dict]:
    """The merchant's canned replies and the agent's own, with variables filled in for a conversation."""
    from shopdesk.chat.actions import canned_out
    from shopdesk.chat.models import CannedReply
    from shopdesk.chat.rules import fill_variables

    actor.require_staff()
    rows = (await session.execute(select(CannedReply).where(
        CannedReply.merchant_id == actor.merchant_id,
        CannedReply.owner_id.is_(None) | (CannedReply.owner_id == actor.staff_id))
        .order_by(CannedReply.shortcut, CannedReply.id))).scalars().all()
    values = {"agent_name": actor.name, "customer_name": "", "order_no": ""}
    if conversation_id:
        values.update(await _variables(session, actor, conversation_id))
    return [canned_out(c, fill_variables(c.text, values)) for c in rows]


async def _variables(session: AsyncSession, actor: ChatActor, conversation_id: str) -> dict[str, str]:
    """{customer_name}: the customer's or visitor's name; {order_no}: the last order card in the chat, else
    the customer's latest order."""
    from shopdesk.customers.actions import get_customer
    from shopdesk.orders.models import Order

    conv = await access_conversation(session, actor, conversation_id)
    visitor = await session.get(ChatVisitor, conv.visitor_id)
    name = visitor.name if visitor else ""
    if conv.customer_id:
        customer = await get_customer(session, actor.merchant_id, conv.customer_id)
        name = (customer.name if customer else "") or name
    order_no = ""
    for card in (await session.execute(select(ChatMessage.card).where(
            ChatMessage.conversation_id == conv.id, ChatMessage.card.is_not(None))
            .order_by(ChatMessage.seq.desc()).limit(20))).scalars():
        if isinstance(card, dict) and card.get("type") == "order":
            order_no = card.get("order_no") or ""
            break
    if not order_no and conv.customer_id:
        order_no = (await session.execute(select(Order.order_no).where(
            Order.merchant_id == actor.merchant_id, Order.customer_id == conv.customer_id)
            .order_by(Order.placed_at.desc()).limit(1))).scalar() or ""
    return {"customer_name": name, "order_no": order_no}


async def online_visitors(session: AsyncSession, actor: ChatActor, limit: int = 100) -> list[dict]:
    """Visitors with a widget open now (connected and not gone), newest activity first, with their current page."""
    from datetime import timedelta

    actor.require_staff()
    recent = now() - timedelta(hours=12)
    rows = (await session.execute(
        select(ChatVisitor, Conversation.id).outerjoin(
            Conversation, (Conversation.visitor_id == ChatVisitor.id) & (Conversation.status != "ended"))
        .where(ChatVisitor.merchant_id == actor.merchant_id, ChatVisitor.connected_at.is_not(None),
               ChatVisitor.connected_at >= recent,
               ChatVisitor.left_at.is_(None) | (ChatVisitor.left_at < ChatVisitor.connected_at))
        .order_by(ChatVisitor.last_seen_at.desc()).limit(limit))).all()
    return [{**visitor_out(v, v.id, v.customer_id), "pages": (v.pages or [])[:5], "conversation_id": conv_id}
            for v, conv_id in rows]


async def transcript(session: AsyncSession, actor: ChatActor, conversation_id: str, *,
                     include_notes: bool = False) -> tuple[Conversation, list[ChatMessage]]:
    """A conversation the caller may see, with its messages in order (a ticket made from it carries them)."""
    conv = await access_conversation(session, actor, conversation_id)
    stmt = select(ChatMessage).where(ChatMessage.conversation_id == conv.id)
    if not include_notes:
        stmt = stmt.where(ChatMessage.private.is_(False))
    return conv, list((await session.execute(stmt.order_by(ChatMessage.seq))).scalars())


def waiting(merchant_id: str):
    """Chats waiting for a person: queued for an agent, or left as a 留言 (the unified inbox's chat part)."""
    return select(Conversation).where(Conversation.merchant_id == merchant_id,
                                      Conversation.status.in_(("queued", "offline")))
