"""Conversation history: search, export (JSON, CSV), import (the export's JSON, idempotent) and delete."""
from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.models import Staff, Store
from shopdesk.chat.actions import ChatActor, access_conversation
from shopdesk.chat.models import (ChatAttachment, ChatMessage, ChatParticipant, ChatVisitor, Conversation)
from shopdesk.chat.queries import detail_out, merchant_conversations
from shopdesk.core.audit import record
from shopdesk.core.clock import isoformat, now, parse_instant
from shopdesk.core.db import transaction
from shopdesk.core.errors import Conflict, Forbidden, ValidationFailed

EXPORT_VERSION = 1
EXPORT_MAX = 1000
ZONE = ZoneInfo("Asia/Shanghai")  # dates in filters are Beijing dates, as on the pages


def _day(value: str | None, field: str, *, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValidationFailed("a date as YYYY-MM-DD", field=field) from None
    start = datetime.combine(day, time(0), ZONE)
    return start + timedelta(days=1) if end else start


def search_filter(actor: ChatActor, *, q: str | None = None, customer: str | None = None,
                  order_no: str | None = None, date_from: str | None = None, date_to: str | None = None,
                  status: str | None = None):
    """The select of the merchant's conversations matching the history filters (joined with their visitor)."""
    from shopdesk.customers.models import Customer
    from shopdesk.orders.models import Order

    stmt = merchant_conversations(actor, status)
    start, end = _day(date_from, "date_from"), _day(date_to, "date_to", end=True)
    if start and end and end <= start:
        raise ValidationFailed("date_to is before date_from", field="date_to")
    if start:
        stmt = stmt.where(Conversation.created_at >= start)
    if end:
        stmt = stmt.where(Conversation.created_at < end)
    if customer := (customer or "").strip()[:200]:
        like = f"%{customer.lower()}%"
        customers = select(Customer.id).where(Customer.merchant_id == actor.merchant_id, or_(
            Customer.external_id == customer, Customer.id == customer, func.lower(Customer.name).like(like),
            Customer.phone == customer, func.lower(Customer.email) == customer.lower()))
        stmt = stmt.where(or_(Conversation.customer_id.in_(customers), Conversation.visitor_id == customer,
                              func.lower(ChatVisitor.name).like(like), ChatVisitor.phone == customer,
                              func.lower(ChatVisitor.email) == customer.lower()))
    if order_no := (order_no or "").strip()[:64]:
        owners = select(Order.customer_id).where(Order.merchant_id == actor.merchant_id, Order.order_no == order_no)
        carded = select(ChatMessage.conversation_id).where(
            ChatMessage.merchant_id == actor.merchant_id, ChatMessage.card["order_no"].as_string() == order_no)
        stmt = stmt.where(or_(Conversation.customer_id.in_(owners), Conversation.id.in_(carded)))
    if q := (q or "").strip()[:200]:
        said = select(ChatMessage.conversation_id).where(
            ChatMessage.merchant_id == actor.merchant_id,
            func.lower(ChatMessage.text).contains(q.lower(), autoescape=True))
        stmt = stmt.where(Conversation.id.in_(said))
    return stmt


async def search(session: AsyncSession, actor: ChatActor, *, limit: int, after_id: str | None,
                 **filters) -> tuple[list[dict], bool]:
    stmt = search_filter(actor, **filters)
    if after_id:
        stmt = stmt.where(Conversation.id < after_id)
    rows = (await session.execute(stmt.order_by(Conversation.id.desc()).limit(limit + 1))).all()
    return [detail_out(c, v, name, None, staff=True) for c, v, name in rows[:limit]], len(rows) > limit


# --- export ---------------------------------------------------------------------------------------

async def export_rows(session: AsyncSession, actor: ChatActor, *, limit: int, **filters) -> list[dict]:
    """The matching conversations with every message (notes included, flagged), oldest first."""
    from shopdesk.customers.models import Customer

    rows = (await session.execute(search_filter(actor, **filters).order_by(Conversation.id).limit(limit))).all()
    if not rows:
        return []
    ids = [c.id for c, _, _ in rows]
    stores = dict((await session.execute(select(Store.id, Store.code).where(
        Store.merchant_id == actor.merchant_id))).all())
    customer_ids = {c.customer_id for c, _, _ in rows if c.customer_id}
    externals = dict((await session.execute(select(Customer.id, Customer.external_id).where(
        Customer.id.in_(customer_ids)))).all()) if customer_ids else {}
    messages: dict[str, list[dict]] = {i: [] for i in ids}
    for m in (await session.execute(select(ChatMessage).where(ChatMessage.conversation_id.in_(ids))
                                    .order_by(ChatMessage.conversation_id, ChatMessage.seq))).scalars():
        messages[m.conversation_id].append({
            "seq": m.seq, "client_msg_id": m.client_msg_id,
            "sender": {"type": m.sender_type, "id": m.sender_id, "name": m.sender_name}, "text": m.text,
            "attachment": m.attachment, "card": m.card, "private": m.private, "via": m.via,
            "created_at": isoformat(m.created_at)})
    return [{"id": c.id, "store": stores.get(c.store_id), "status": c.status, "created_at": isoformat(c.created_at),
             "ended_at": isoformat(c.ended_at), "ended_by": c.ended_by,
             "assignee": {"id": c.assignee_id, "name": name or ""} if c.assignee_id else None,
             "rating": {"score": c.rating_score, "comment": c.rating_comment or ""} if c.rating_score else None,
             "visitor": {"id": v.id, "name": v.name, "email": v.email, "phone": v.phone,
                         "customer_external_id": externals.get(c.customer_id or "")},
             "messages": messages[c.id]} for c, v, name in rows]


CSV_COLUMNS = ("conversation_id", "store", "status", "conversation_created_at", "visitor_name",
               "customer_external_id", "seq", "created_at", "sender_type", "sender_name", "private", "via", "text",
               "card_type", "card_ref", "attachment_id")


def _cell(value) -> str:
    text = "" if value is None else str(value)
    # A cell a spreadsheet would run as a formula is kept as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(conversations: list[dict]) -> str:
    """One row per message; UTF-8 with a BOM so Excel shows Chinese right."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for c in conversations:
        for m in c["messages"]:
            card = m.get("card") or {}
            writer.writerow([_cell(v) for v in (
                c["id"], c["store"], c["status"], c["created_at"], c["visitor"]["name"],
                c["visitor"]["customer_external_id"], m["seq"], m["created_at"], m["sender"]["type"],
                m["sender"]["name"], "1" if m["private"] else "0", m["via"], m["text"], card.get("type"),
                card.get("sku") or card.get("order_no"), (m.get("attachment") or {}).get("id"))])
    return out.getvalue()


# --- import ---------------------------------------------------------------------------------------

class Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SenderIn(Loose):
    type: str = Field(pattern="^(visitor|agent|bot|system)$")
    id: str | None = Field(default=None, max_length=64)
    name: str = Field(default="", max_length=200)


class MessageIn(Loose):
    seq: int = Field(ge=1)
    client_msg_id: str | None = Field(default=None, max_length=64)
    sender: SenderIn
    text: str = Field(default="", max_length=5000)
    attachment: dict | None = None
    card: dict | None = None
    private: bool = False
    via: str = Field(default="chat", pattern="^(chat|email)$")
    created_at: str


class VisitorIn(Loose):
    name: str = Field(default="", max_length=200)
    email: str = Field(default="", max_length=254)
    phone: str = Field(default="", max_length=32)
    customer_external_id: str | None = Field(default=None, max_length=128)


class ConversationIn(Loose):
    id: str = Field(min_length=1, max_length=100)
    store: str = Field(min_length=1, max_length=64)
    created_at: str
    ended_at: str | None = None
    assignee: dict | None = None
    rating: dict | None = None
    visitor: VisitorIn = VisitorIn()
    messages: list[MessageIn] = Field(default=[], max_length=20000)


class ImportIn(Loose):
    version: int = Field(default=EXPORT_VERSION, ge=1, le=EXPORT_VERSION)
    conversations: list[ConversationIn] = Field(max_length=EXPORT_MAX)


def _instant(text: str | None, field: str) -> datetime | None:
    if not text:
        return None
    try:
        return parse_instant(text)
    except ValueError:
        raise ValidationFailed("not an RFC 3339 time", field=field) from None


async def do_import(actor: ChatActor, data: ImportIn) -> dict:
    """Import exported conversations as ended history, with new ids; the same file twice imports nothing twice.

    Each source conversation is keyed by its id (`import_key`); visitors are new, bound to the customer with
    the same external id if there is one; staff ids outside this merchant are dropped (names are kept).
    """
    from shopdesk.customers.models import Customer

    staff_id = actor.require_agent()
    if actor.role not in ("admin", "supervisor"):
        raise Forbidden("this needs the role admin or supervisor")
    imported, skipped, mapping = 0, 0, {}
    async with transaction() as session:
        stores = dict((await session.execute(select(Store.code, Store.id).where(
            Store.merchant_id == actor.merchant_id))).all())
        staff = set((await session.execute(select(Staff.id).where(Staff.merchant_id == actor.merchant_id))).scalars())
        for i, c in enumerate(data.conversations):
            where = f"conversations[{i}]"
            if c.store not in stores:
                raise ValidationFailed(f"no store '{c.store}'", field=f"{where}.store")
            created = _instant(c.created_at, f"{where}.created_at")
            seqs = [m.seq for m in c.messages]
            if len(set(seqs)) != len(seqs):
                raise ValidationFailed("seqs repeat", field=f"{where}.messages")
            existing = (await session.execute(select(Conversation.id).where(
                Conversation.merchant_id == actor.merchant_id,
                or_(Conversation.import_key == c.id, Conversation.id == c.id)).limit(1))).scalar()
            if existing is not None:
                skipped += 1
                mapping[c.id] = existing
                continue
            customer_id = None
            if c.visitor.customer_external_id:
                customer_id = (await session.execute(select(Customer.id).where(
                    Customer.merchant_id == actor.merchant_id,
                    Customer.external_id == c.visitor.customer_external_id))).scalar()
            visitor = ChatVisitor(merchant_id=actor.merchant_id, store_id=stores[c.store], customer_id=customer_id,
                                  name=c.visitor.name, email=c.visitor.email, phone=c.visitor.phone, pages=[],
                                  visit_count=1, created_at=created, last_seen_at=created)
            session.add(visitor)
            await session.flush()
            messages = sorted(c.messages, key=lambda m: m.seq)
            last_at = created
            conv = Conversation(
                merchant_id=actor.merchant_id, store_id=stores[c.store], visitor_id=visitor.id, customer_id=customer_id,
                status="ended", last_seq=len(messages), visitor_read_seq=len(messages), agent_read_seq=len(messages),
                assignee_id=(c.assignee or {}).get("id") if (c.assignee or {}).get("id") in staff else None,
                ended_by="system", import_key=c.id, created_at=created, updated_at=now())
            if isinstance(c.rating, dict) and isinstance(c.rating.get("score"), int) and 1 <= c.rating["score"] <= 5:
                conv.rating_score, conv.rating_comment = c.rating["score"], str(c.rating.get("comment") or "")[:1000]
            session.add(conv)
            await session.flush()
            for n, m in enumerate(messages, start=1):
                at = _instant(m.created_at, f"{where}.messages[{n - 1}].created_at")
                last_at = max(last_at, at)
                sender_id = visitor.id if m.sender.type == "visitor" else (
                    m.sender.id if m.sender.type == "agent" and m.sender.id in staff else None)
                session.add(ChatMessage(merchant_id=actor.merchant_id, conversation_id=conv.id, seq=n,
                                        client_msg_id=m.client_msg_id, sender_type=m.sender.type, sender_id=sender_id,
                                        sender_name=m.sender.name, text=m.text, attachment=m.attachment, card=m.card,
                                        private=m.private, via=m.via, created_at=at))
            conv.ended_at = _instant(c.ended_at, f"{where}.ended_at") or last_at
            conv.last_message_at = last_at if messages else None
            imported += 1
            mapping[c.id] = conv.id
        record(session, merchant_id=actor.merchant_id, actor_type="agent", actor_id=staff_id, action="chat.import",
               object_type="merchant", object_id=actor.merchant_id, data={"imported": imported, "skipped": skipped})
    return {"imported": imported, "skipped": skipped, "ids": mapping}


# --- delete ---------------------------------------------------------------------------------------

async def do_delete(actor: ChatActor, conversation_id: str) -> None:
    """Delete an ended conversation and its messages for good (admins; audit-logged: retention, privacy)."""
    staff_id = actor.require_agent()
    async with transaction() as session:
        conv = await access_conversation(session, actor, conversation_id, lock=True)  # another merchant's: 404
        if actor.role != "admin":
            raise Forbidden("this needs the role admin")
        if conv.status != "ended":
            raise Conflict("end the conversation before deleting it", code="illegal_transition")
        count = (await session.execute(select(func.count()).where(ChatMessage.conversation_id == conv.id))).scalar_one()
        for table in (ChatMessage, ChatParticipant):
            await session.execute(delete(table).where(table.conversation_id == conv.id)
                                  .execution_options(synchronize_session=False))
        await session.execute(delete(ChatAttachment).where(ChatAttachment.conversation_id == conv.id)
                              .execution_options(synchronize_session=False))
        await session.delete(conv)
        record(session, merchant_id=actor.merchant_id, actor_type="agent", actor_id=staff_id, action="chat.delete",
               object_type="conversation", object_id=conversation_id,
               data={"messages": count, "visitor_id": conv.visitor_id, "created_at": isoformat(conv.created_at)})

