"""Chat actions: every change goes through one do_* here, which owns its transaction.

Each action: lock what it changes (the merchant's routing lock first, then the conversation) →
check → write the rows → commit → THEN publish the events to the broker. A message is stored
(with its sequence number) before anyone is told about it; an event lost after the commit is
recovered by the client's `resume` or by the next message's gap repair (docs/chat.md).
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

from sqlalchemy import func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Merchant, Staff, Store
from shopdesk.chat import bot, routing, rules
from shopdesk.chat.models import (MAX_CAPACITY, PRESENCE, AgentPresence, CannedReply, ChatAttachment, ChatBlock,
                                  ChatDesk, ChatMessage, ChatParticipant, ChatVisitor, Conversation)
from shopdesk.config import get_settings
from shopdesk.core import storage
from shopdesk.core.audit import record
from shopdesk.core.iplocation import locate
from shopdesk.core.clock import isoformat, now
from shopdesk.core.db import UTCDateTime, transaction
from shopdesk.core.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from shopdesk.core.ids import new_id
from shopdesk.core.outbox import enqueue
from shopdesk.core.pubsub import Event, get_broker
from shopdesk.core.security import hmac_hex, issue_token, read_token, same

WIDGET_TTL = timedelta(days=7)
MAX_TEXT = 5000
MAX_PAGES = 50
MAX_SDP = 32 * 1024
CLOSE_STREAM = "!close"  # an Event on this stream closes each socket that gets it (1008) after sending its frame
DEFAULT_IDLE_MINUTES = 30


# --- who is acting ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatActor:
    """A caller of the chat: a widget visitor, a staff member, a merchant key or a shopper (customer) token."""

    kind: str  # visitor | staff | merchant_key | shopper
    merchant_id: str
    visitor_id: str | None = None
    store_id: str | None = None
    customer_id: str | None = None
    staff_id: str | None = None
    role: str | None = None
    name: str = ""

    @property
    def is_staff_side(self) -> bool:
        return self.kind in ("staff", "merchant_key")

    @property
    def sender_type(self) -> str:
        return "agent" if self.is_staff_side else "visitor"

    @property
    def sender_id(self) -> str | None:
        return self.staff_id if self.is_staff_side else self.visitor_id

    def sender(self) -> dict:
        return {"type": self.sender_type, "id": self.sender_id, "name": self.name}

    def require_staff(self) -> None:
        if not self.is_staff_side:
            raise NotFound("not found")

    def require_agent(self) -> str:
        """A staff member in person (not a merchant key); return their id."""
        if self.kind != "staff" or self.staff_id is None:
            raise NotFound("not found")
        return self.staff_id


def widget_token(visitor: ChatVisitor, name: str) -> str:
    return issue_token({"k": "visitor", "sub": visitor.id, "m": visitor.merchant_id, "s": visitor.store_id,
                        "c": visitor.customer_id, "n": name}, WIDGET_TTL)


def visitor_actor(claims: dict) -> ChatActor:
    return ChatActor("visitor", claims["m"], visitor_id=claims["sub"], store_id=claims.get("s"),
                     customer_id=claims.get("c"), name=claims.get("n") or "访客")


def actor_from_principal(principal: Principal) -> ChatActor:
    """Chat view of an API caller; platform operators have no merchant and see no chat."""
    if principal.merchant_id is None or principal.is_platform or principal.kind == "ticket_link":
        raise NotFound("not found")
    if principal.kind == "staff":
        return ChatActor("staff", principal.merchant_id, staff_id=principal.staff_id, role=principal.role,
                         name=principal.name)
    if principal.kind == "shopper":
        return ChatActor("shopper", principal.merchant_id, customer_id=principal.customer_id, name="顾客")
    return ChatActor("merchant_key", principal.merchant_id, name="merchant")


async def resolve_actor(session: AsyncSession, token: str | None) -> ChatActor:
    """A bearer token → a chat actor: widget tokens here, the rest through accounts.auth."""
    from shopdesk.accounts.auth import resolve

    if token and not token.startswith("sk_"):
        claims = read_token(token)
        if claims.get("k") == "visitor":
            return visitor_actor(claims)
    return actor_from_principal(await resolve(session, token))


# --- frames -------------------------------------------------------------------------------------

def encode(frame: dict) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def message_out(m: ChatMessage) -> dict:
    return {"id": m.id, "conversation_id": m.conversation_id, "seq": m.seq, "client_msg_id": m.client_msg_id,
            "sender": {"type": m.sender_type, "id": m.sender_id, "name": m.sender_name}, "text": m.text,
            "attachment": m.attachment, "created_at": isoformat(m.created_at), "via": m.via, "card": m.card,
            "private": m.private, "mentions": m.mentions or []}


def message_frame(m: ChatMessage) -> str:
    return encode({"type": "message.created", "message": message_out(m)})


def conversation_out(conv: Conversation, assignee_name: str | None = None,
                     spot: routing.QueueSpot | None = None) -> dict:
    queued = conv.status == "queued" and spot is not None
    return {"id": conv.id, "status": conv.status,
            "assignee": {"id": conv.assignee_id, "name": assignee_name or ""} if conv.assignee_id else None,
            "queue_position": spot.position if queued else None, "eta_s": spot.eta_s if queued else None,
            "visitor_id": conv.visitor_id, "desk_id": conv.desk_id, "last_seq": conv.last_seq,
            "created_at": isoformat(conv.created_at), "ended_at": isoformat(conv.ended_at),
            "rating": {"score": conv.rating_score, "comment": conv.rating_comment or ""}
            if conv.rating_score is not None else None, "locked_by": conv.locked_by}


def topics_for_message(conv_id: str, visitor_id: str, assignee_id: str | None, merchant_id: str,
                       participants: tuple[str, ...] | list[str] = (), private: bool = False) -> tuple[str, ...]:
    """Every socket of every participant, the watchers, and — while nobody holds the chat — all agents.

    A private note leaves out the visitor's topic: it reaches staff only.
    """
    staff = f"s:{assignee_id}" if assignee_id else f"m:{merchant_id}"
    invited = tuple(f"s:{p}" for p in participants if p != assignee_id)
    if private:
        return (f"c:{conv_id}", staff, *invited)
    return (f"v:{visitor_id}", f"c:{conv_id}", staff, *invited)


async def participant_ids(session: AsyncSession, conversation_id: str) -> list[str]:
    """Colleagues invited into (or @mentioned in) a conversation."""
    return list((await session.execute(select(ChatParticipant.staff_id).where(
        ChatParticipant.conversation_id == conversation_id).order_by(ChatParticipant.id))).scalars())


@dataclass
class Outcome:
    """What an action changed, and the events to publish once it has committed."""

    events: list[Event] = field(default_factory=list)
    data: Any = None

    async def publish(self) -> None:
        if self.events:
            await get_broker().publish_many(self.events)


async def staff_names(session: AsyncSession, ids: set[str | None]) -> dict[str, str]:
    ids = {i for i in ids if i}
    if not ids:
        return {}
    return dict((await session.execute(select(Staff.id, Staff.name).where(Staff.id.in_(ids)))).all())


async def conversation_events(session: AsyncSession, merchant_id: str, changed: list[Conversation], *,
                              requeued: bool) -> list[Event]:
    """conversation.updated for each changed chat (visitor + agents); with requeued, new positions for the queue."""
    at = now()
    names = await staff_names(session, {c.assignee_id for c in changed})
    spots = await routing.queue_view(session, merchant_id, at) if (requeued or any(
        c.status == "queued" for c in changed)) else {}
    events = []
    seen = set()
    for conv in changed:
        seen.add(conv.id)
        frame = encode({"type": "conversation.updated",
                        "conversation": conversation_out(conv, names.get(conv.assignee_id or ""), spots.get(conv.id))})
        events.append(Event((f"v:{conv.visitor_id}", f"m:{merchant_id}", f"c:{conv.id}"), frame))
    if requeued:
        queued = {c.id: c for c in (await session.execute(select(Conversation).where(
            Conversation.id.in_([s for s in spots if s not in seen])))).scalars()} if spots else {}
        for conv_id, spot in spots.items():
            if conv_id in seen or conv_id not in queued:
                continue
            frame = encode({"type": "conversation.updated", "conversation": conversation_out(queued[conv_id], None, spot)})
            events.append(Event((f"v:{spot.visitor_id}",), frame))
    return events


# --- access -------------------------------------------------------------------------------------

def can_see(actor: ChatActor, conv: Conversation) -> bool:
    if conv.merchant_id != actor.merchant_id:
        return False
    if actor.is_staff_side:
        return True
    if actor.kind == "visitor":
        return conv.visitor_id == actor.visitor_id
    return actor.customer_id is not None and conv.customer_id == actor.customer_id


async def access_conversation(session: AsyncSession, actor: ChatActor, conversation_id: str, *,
                              lock: bool = False) -> Conversation:
    """Fetch a conversation the caller may see (optionally locked); anyone else gets 404."""
    stmt = select(Conversation).where(Conversation.id == conversation_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    conv = (await session.execute(stmt)).scalar_one_or_none() if len(conversation_id) <= 32 else None
    if conv is None or not can_see(actor, conv):
        raise NotFound("no such conversation", field="conversation_id")
    return conv


async def live_conversation(session: AsyncSession, actor: ChatActor, conversation_id: str,
                            ended: str = "this conversation has ended") -> Conversation:
    """A conversation the caller may change, locked for the change; an ended one is a conflict."""
    conv = await access_conversation(session, actor, conversation_id, lock=True)
    if conv.status == "ended":
        raise Conflict(ended, code="illegal_transition")
    return conv


# --- widget sessions ----------------------------------------------------------------------------

async def _store_for_widget(session: AsyncSession, code: str, merchant_slug: str | None) -> Store:
    stmt = select(Store).where(Store.code == code)
    if merchant_slug:
        stmt = stmt.join(Merchant, Merchant.id == Store.merchant_id).where(Merchant.slug == merchant_slug)
    stores = (await session.execute(stmt.limit(2))).scalars().all()
    if not stores:
        raise ValidationFailed(f"no store '{code}'", field="store")
    if len(stores) > 1:
        raise ValidationFailed("several merchants have a store with this code: name the merchant",
                               field="merchant")
    return stores[0]


async def do_start_widget_session(*, store: str, merchant: str | None = None, visitor_id: str | None = None,
                                  identity: dict | None = None, page: dict | None = None,
                                  contact: dict | None = None, ip: str = "", user_agent: str = "",
                                  referrer: str = "") -> dict:
    """Start (or continue) a widget session; an identity binds the visitor to a customer if its HMAC is right."""
    from shopdesk.customers.actions import do_upsert_customer

    at = now()
    async with transaction() as session:
        shop_store = await _store_for_widget(session, store, merchant)
        await check_not_blocked(session, shop_store.merchant_id, visitor_id if visitor_id and len(visitor_id) <= 32
                                else None, ip)
        customer = None
        if identity is not None:
            if not same(hmac_hex(shop_store.identity_secret, identity["external_id"]), identity["hmac"].lower()):
                raise Unauthorized("the identity's hmac does not match the store's identity secret",
                                   code="bad_identity", field="identity.hmac")
            customer = await do_upsert_customer(session, shop_store.merchant_id, external_id=identity["external_id"],
                                                name=identity.get("name") or None)
        visitor = None
        if visitor_id:
            visitor = await session.get(ChatVisitor, visitor_id) if len(visitor_id) <= 32 else None
            if visitor is not None and (visitor.store_id != shop_store.id or (
                    customer is not None and visitor.customer_id not in (None, customer.id))):
                # Another store's visitor, or one bound to another customer than the one just proven:
                # a fresh visitor, so two shoppers on one browser never share a conversation.
                visitor = None
        if visitor is None and customer is not None:
            visitor = (await session.execute(select(ChatVisitor).where(
                ChatVisitor.customer_id == customer.id, ChatVisitor.store_id == shop_store.id)
                .order_by(ChatVisitor.last_seen_at.desc()).limit(1))).scalar_one_or_none()
        new_visit = True
        if visitor is None:
            visitor = ChatVisitor(merchant_id=shop_store.merchant_id, store_id=shop_store.id, pages=[], visit_count=1,
                                  created_at=at, last_seen_at=at)
            session.add(visitor)
        else:
            new_visit = at - visitor.last_seen_at > timedelta(minutes=30)
            if new_visit:
                visitor.visit_count += 1
            visitor.last_seen_at = at
        record_client(visitor, ip, user_agent)
        if new_visit:
            # A visit starts after 30 minutes away: its referrer and landing page describe how they came.
            visitor.referrer = (referrer or "")[:2000]
            visitor.landing_page = ((page or {}).get("url") or "")[:2000]
        if customer is not None:
            visitor.customer_id = customer.id
            visitor.name = customer.name or visitor.name
            if customer.email and not visitor.email:
                visitor.email = customer.email
        if contact:
            _apply_contact(visitor, contact)
        if page:
            visitor.pages = ([{"url": page.get("url", ""), "title": page.get("title", ""), "at": isoformat(at)}]
                             + list(visitor.pages or []))[:MAX_PAGES]
        await session.flush()
        name = visitor.name or f"访客{visitor.id[-4:]}"
        conv = await open_conversation(session, visitor.id)
        spot = None
        if conv and conv.status == "queued":
            spot = (await routing.queue_view(session, visitor.merchant_id, at, only={conv.id})).get(conv.id)
        names = await staff_names(session, {conv.assignee_id} if conv else set())
        online = bool(await routing.online_pool(session, visitor.merchant_id))
        return {"visitor_id": visitor.id, "token": widget_token(visitor, name),
                "conversation": conversation_out(conv, names.get(conv.assignee_id or ""), spot) if conv else None,
                "agents_online": online}


def _apply_contact(visitor: ChatVisitor, contact: dict) -> None:
    for key in ("name", "email", "phone"):
        if contact.get(key) is not None:
            setattr(visitor, key, contact[key].strip())


async def do_save_contact(actor: ChatActor, contact: dict) -> dict:
    """The leave-a-message form's contact details (where an emailed reply goes)."""
    if actor.kind != "visitor":
        raise NotFound("not found")
    async with transaction() as session:
        visitor = await session.get(ChatVisitor, actor.visitor_id)
        if visitor is None or visitor.merchant_id != actor.merchant_id:
            raise NotFound("no such visitor")
        _apply_contact(visitor, contact)
        return {"name": visitor.name, "email": visitor.email, "phone": visitor.phone}


async def open_conversation(session: AsyncSession, visitor_id: str) -> Conversation | None:
    return (await session.execute(select(Conversation).where(
        Conversation.visitor_id == visitor_id, Conversation.status != "ended"))).scalar_one_or_none()


# --- messages -----------------------------------------------------------------------------------

def ack_of(m: ChatMessage) -> dict:
    return {"type": "message.ack", "client_msg_id": m.client_msg_id, "message_id": m.id,
            "conversation_id": m.conversation_id, "seq": m.seq}


async def _earlier(session: AsyncSession, actor: ChatActor, client_msg_id: str,
                   conversation_id: str | None) -> ChatMessage | None:
    """The message this sender already stored under this client id (a resend), if any."""
    stmt = select(ChatMessage).where(ChatMessage.sender_id == actor.sender_id,
                                     ChatMessage.client_msg_id == client_msg_id)
    if conversation_id:
        stmt = stmt.where(ChatMessage.conversation_id == conversation_id)
    else:  # a visitor's resend without a conversation id: any of their conversations
        stmt = stmt.where(ChatMessage.conversation_id.in_(
            select(Conversation.id).where(Conversation.visitor_id == actor.visitor_id)))
    return (await session.execute(stmt.limit(1))).scalar_one_or_none()


async def _new_conversation(session: AsyncSession, actor: ChatActor, outcome: Outcome) -> Conversation:
    """Open a visitor's conversation and route it (or give it to the bot first), under the routing lock.

    Twice-checked: two tabs race to open it.
    """
    await routing.lock_routing(session, actor.merchant_id)
    conv = await open_conversation(session, actor.visitor_id)
    if conv is not None:
        return conv
    visitor = await session.get(ChatVisitor, actor.visitor_id)
    if visitor is None or visitor.merchant_id != actor.merchant_id:
        raise NotFound("no such visitor")
    at = now()
    desk = await routing.desk_for_store(session, visitor.merchant_id, visitor.store_id)
    conv = Conversation(merchant_id=visitor.merchant_id, store_id=visitor.store_id, visitor_id=visitor.id,
                        customer_id=visitor.customer_id, desk_id=desk.id if desk else None, status="queued",
                        last_seq=0, visitor_read_seq=0, agent_read_seq=0, created_at=at, updated_at=at)
    session.add(conv)
    if chat_settings(await session.get(Merchant, visitor.merchant_id))["bot_first"]:
        conv.status = "bot"  # routed when the bot hands off (do_bot_turn) or an agent writes (_claim)
    else:
        await routing.place(session, conv, visitor, at)
    await session.flush()
    outcome.events += await conversation_events(session, conv.merchant_id, [conv], requeued=False)
    return conv


async def _claim(session: AsyncSession, actor: ChatActor, conv: Conversation, outcome: Outcome) -> Conversation:
    """An agent who writes in a chat nobody holds takes it (accepting from the queue or a 留言)."""
    await routing.lock_routing(session, conv.merchant_id)
    conv = await access_conversation(session, actor, conv.id, lock=True)
    if conv.status in ("queued", "offline", "bot") and actor.staff_id:
        was_queued = conv.status == "queued"
        at = now()
        conv.status, conv.assignee_id, conv.assigned_at, conv.queued_at, conv.updated_at = \
            "assigned", actor.staff_id, at, None, at
        visitor = await session.get(ChatVisitor, conv.visitor_id)
        if visitor is not None:
            visitor.last_agent_id, visitor.last_agent_at = actor.staff_id, at
        await session.flush()
        outcome.events += await conversation_events(session, conv.merchant_id, [conv], requeued=was_queued)
    return conv


async def _reroute_offline(session: AsyncSession, actor: ChatActor, conv: Conversation, outcome: Outcome) -> Conversation:
    """A visitor writing in a 留言 chat after agents came online is routed again."""
    if not await routing.online_pool(session, conv.merchant_id):
        return conv
    await routing.lock_routing(session, conv.merchant_id)
    conv = await access_conversation(session, actor, conv.id, lock=True)
    if conv.status == "offline":
        visitor = await session.get(ChatVisitor, conv.visitor_id)
        await routing.place(session, conv, visitor, now())
        await session.flush()
        if conv.status != "offline":
            outcome.events += await conversation_events(session, conv.merchant_id, [conv], requeued=False)
    return conv


async def _append(session: AsyncSession, conv: Conversation, *, sender_type: str, sender_id: str | None,
                  sender_name: str, text: str, client_msg_id: str | None = None, attachment: dict | None = None,
                  via: str = "chat", card: dict | None = None, private: bool = False,
                  mentions: list[str] | None = None) -> ChatMessage:
    """Take the next sequence number in one UPDATE … RETURNING (the row lock orders writers) and store the message."""
    at = now()
    when = literal(at, UTCDateTime())
    values: dict[str, Any] = {"last_seq": Conversation.last_seq + 1, "updated_at": at}
    if private:
        # A note is not a reply: the visitor still waits, and the chat's idle clock keeps running.
        values["agent_read_seq"] = Conversation.last_seq + 1
    else:
        values["last_message_at"] = at
    if private:
        pass
    elif sender_type == "visitor":
        values["waiting_since"] = func.coalesce(Conversation.waiting_since, when)
        values["visitor_read_seq"] = Conversation.last_seq + 1
    elif sender_type == "agent":
        values["waiting_since"] = None
        values["first_reply_at"] = func.coalesce(Conversation.first_reply_at, when)
        values["agent_read_seq"] = Conversation.last_seq + 1
    row = (await session.execute(
        update(Conversation).where(Conversation.id == conv.id, Conversation.status != "ended").values(**values)
        .returning(Conversation.last_seq).execution_options(synchronize_session=False))).first()
    if row is None:
        raise Conflict("this conversation has ended", code="conversation_ended", field="conversation_id")
    seq = row[0]
    set_committed_value(conv, "last_seq", seq)
    message = ChatMessage(merchant_id=conv.merchant_id, conversation_id=conv.id, seq=seq, client_msg_id=client_msg_id,
                          sender_type=sender_type, sender_id=sender_id, sender_name=sender_name, text=text,
                          attachment=attachment, via=via, card=card, private=private, mentions=mentions,
                          created_at=at)
    session.add(message)
    await session.flush()
    return message


def check_text(text: str | None, attachment_id: str | None, card: dict | None = None) -> str:
    text = text or ""
    if len(text) > MAX_TEXT:
        raise ValidationFailed(f"at most {MAX_TEXT} characters", field="text")
    if not text.strip() and not attachment_id and not card:
        raise ValidationFailed("a message needs text, an attachment_id or a card", field="text")
    return text


async def resolve_card(session: AsyncSession, actor: ChatActor, conv: Conversation | None, card: dict) -> dict:
    """Check a product/order card against the merchant's catalogue and fill in what the server knows.

    A visitor may only show their own orders, and only once the shop has told us who they are (an
    HMAC identity): anyone else's order number is not_found, so numbers reveal nothing.
    """
    from shopdesk.orders.actions import order_options
    from shopdesk.orders.models import Order, Product

    kind = card.get("type")
    if kind == "product":
        sku = card.get("sku")
        if not isinstance(sku, str) or not sku or len(sku) > 64:
            raise ValidationFailed("a product card needs its sku", field="card.sku")
        product = (await session.execute(select(Product).where(
            Product.merchant_id == actor.merchant_id, Product.sku == sku))).scalar_one_or_none()
        if product is None:
            raise NotFound("no such product", field="card.sku")
        return {"type": "product", "sku": product.sku, "title": product.name, "price_fen": product.price_fen}
    if kind == "order":
        order_no = card.get("order_no")
        if not isinstance(order_no, str) or not order_no or len(order_no) > 64:
            raise ValidationFailed("an order card needs its order_no", field="card.order_no")
        stmt = select(Order).where(Order.merchant_id == actor.merchant_id, Order.order_no == order_no)
        if not actor.is_staff_side:
            if not actor.customer_id:
                raise NotFound("no such order", field="card.order_no")
            stmt = stmt.where(Order.customer_id == actor.customer_id)
        store_id = conv.store_id if conv is not None else actor.store_id
        rows = list((await session.execute(stmt.options(*order_options()).limit(5))).scalars())
        order = next((o for o in rows if o.store_id == store_id), rows[0] if rows else None)
        if order is None:
            raise NotFound("no such order", field="card.order_no")
        lines = [ln for ln in order.lines if not ln.is_gift] or list(order.lines)
        title = lines[0].name if lines else order.order_no
        if len(lines) > 1:
            title += f" 等 {len(lines)} 件商品"
        return {"type": "order", "order_no": order.order_no, "order_id": order.id, "title": title,
                "status": order.status, "paid_total_fen": order.paid_total_fen}
    raise ValidationFailed("card.type must be product or order", field="card.type")


async def _take_attachment(session: AsyncSession, actor: ChatActor, attachment_id: str, conv: Conversation) -> dict:
    item = await session.get(ChatAttachment, attachment_id) if len(attachment_id) <= 32 else None
    if item is None or item.merchant_id != actor.merchant_id or item.owner_id != actor.sender_id or (
            item.conversation_id not in (None, conv.id)):
        raise NotFound("no such attachment", field="attachment_id")
    item.conversation_id = conv.id
    return {"id": item.id, "url": f"/api/v1/chat/uploads/{item.id}", "content_type": item.content_type,
            "size": item.size}


@dataclass
class Sent:
    ack: dict
    message: ChatMessage | None  # None for a resend: nothing new was stored
    outcome: Outcome


async def do_send_message(actor: ChatActor, *, client_msg_id: str, text: str | None = None,
                          attachment_id: str | None = None, conversation_id: str | None = None,
                          via: str = "chat", email_subject: str | None = None,
                          on_stored: Callable[[dict], None] | None = None, card: dict | None = None,
                          private: bool = False, mentions: list[str] | None = None) -> Sent:
    """Store a message with the conversation's next seq, commit, then publish it; a resend returns the first ack.

    `private` makes a note (staff only: stored and seq'd like any message, never sent to the visitor);
    @names in a note, and `mentions` (staff ids), make those colleagues participants and send them `mention`.
    """
    text = check_text(text, attachment_id, card)
    if actor.is_staff_side and not conversation_id:
        raise ValidationFailed("conversation_id is required for staff", field="conversation_id")
    if actor.kind == "shopper" or (actor.is_staff_side and actor.kind != "staff"):
        raise NotFound("not found")  # the socket's callers are visitors and staff in person
    if (private or mentions) and not actor.is_staff_side:
        raise ValidationFailed("only staff write private notes", field="private" if private else "mentions")
    if mentions and not private:
        raise ValidationFailed("mentions belong in a private note", field="mentions")
    for attempt in (1, 2):
        outcome = Outcome()
        bot_turn = False
        try:
            async with transaction() as session:
                earlier = await _earlier(session, actor, client_msg_id, conversation_id)
                if earlier is not None:
                    if conversation_id:
                        await access_conversation(session, actor, conversation_id)
                    return Sent(ack_of(earlier), None, outcome)
                if conversation_id:
                    conv = await access_conversation(session, actor, conversation_id)
                    if conv.status == "ended":
                        raise Conflict("this conversation has ended", code="conversation_ended",
                                       field="conversation_id")
                else:
                    conv = await open_conversation(session, actor.visitor_id) or \
                        await _new_conversation(session, actor, outcome)
                if actor.is_staff_side and not private and conv.locked_by and conv.locked_by != actor.staff_id:
                    raise Conflict("this chat is locked by a colleague: only they may reply", code="locked",
                                   field="conversation_id")
                if actor.is_staff_side and not private and conv.status in ("queued", "offline", "bot"):
                    conv = await _claim(session, actor, conv, outcome)
                elif actor.kind == "visitor" and conv.status == "offline":
                    conv = await _reroute_offline(session, actor, conv, outcome)
                attachment = await _take_attachment(session, actor, attachment_id, conv) if attachment_id else None
                full_card = await resolve_card(session, actor, conv, card) if card else None
                mentioned = await _mentioned(session, actor, text, mentions or []) if private else []
                message = await _append(session, conv, sender_type=actor.sender_type, sender_id=actor.sender_id,
                                        sender_name=actor.name, text=text, client_msg_id=client_msg_id,
                                        attachment=attachment, via=via, card=full_card, private=private,
                                        mentions=[m for m, _ in mentioned] or None)
                if via == "email":
                    await _enqueue_reply_email(session, conv, message, email_subject)
                if actor.kind == "visitor" and conv.status == "offline":
                    from shopdesk.tickets.listeners import on_message_left

                    await on_message_left(session, conv, message)  # 留言 becomes a ticket someone owns
                bot_turn = actor.kind == "visitor" and conv.status == "bot"
                participants = await participant_ids(session, conv.id)
                for staff_id, _name in mentioned:
                    if staff_id not in participants and staff_id != conv.assignee_id:
                        session.add(ChatParticipant(merchant_id=conv.merchant_id, conversation_id=conv.id,
                                                    staff_id=staff_id, invited_by=actor.staff_id))
                        participants.append(staff_id)
                outcome.events.append(Event(
                    topics_for_message(conv.id, conv.visitor_id, conv.assignee_id, conv.merchant_id, participants,
                                       private=private),
                    message_frame(message), stream=conv.id, seq=message.seq))
                for staff_id, _name in mentioned:
                    outcome.events.append(Event((f"s:{staff_id}",), encode({
                        "type": "mention", "conversation_id": conv.id, "message_id": message.id, "seq": message.seq,
                        "by": {"id": actor.staff_id, "name": actor.name}, "text": text})))
        except IntegrityError:
            # Two sends of the same client id raced (the loser's seq rolled back with it), or two tabs
            # opened a conversation at once: the second pass finds what the winner stored.
            if attempt == 2:
                raise
            continue
        ack = ack_of(message)
        if on_stored is not None:
            on_stored(ack)  # the sender hears "stored" before anyone hears the message
        await outcome.publish()
        if bot_turn:  # after the commit, outside the sender's way: the answer follows as its own message
            conv_id, message_id = message.conversation_id, message.id
            bot.start_turn(conv_id, lambda: do_bot_turn(conv_id, message_id))
        return Sent(ack, message, outcome)
    raise AssertionError("unreachable")


async def _mentioned(session: AsyncSession, actor: ChatActor, text: str, ids: list[str]) -> list[tuple[str, str]]:
    """Colleagues a note mentions: explicit staff ids (each must be the merchant's) and @names in the text."""
    names = rules.mentioned_names(text)
    for i, staff_id in enumerate(ids):
        if not isinstance(staff_id, str) or len(staff_id) > 32:
            raise ValidationFailed("no such colleague", field=f"mentions[{i}]")
    rows = (await session.execute(select(Staff.id, Staff.name).where(
        Staff.merchant_id == actor.merchant_id, (Staff.id.in_(ids)) | (Staff.name.in_(names))))).all() \
        if (ids or names) else []
    found = {r.id for r in rows}
    for i, staff_id in enumerate(ids):
        if staff_id not in found:
            raise ValidationFailed("no such colleague", field=f"mentions[{i}]")
    return [(r.id, r.name) for r in rows if r.id != actor.staff_id]


async def _enqueue_reply_email(session: AsyncSession, conv: Conversation, message: ChatMessage,
                               subject: str | None) -> None:
    from shopdesk.customers.models import Customer

    visitor = await session.get(ChatVisitor, conv.visitor_id)
    to = visitor.email if visitor else ""
    if not to and conv.customer_id:
        customer = await session.get(Customer, conv.customer_id)
        to = customer.email if customer else ""
    if not to:
        raise ValidationFailed("the visitor left no email address to reply to", code="no_email", field="email")
    store = await session.get(Store, conv.store_id)
    enqueue(session, "email", {"to": to, "subject": subject or f"【{store.name if store else '客服'}】您的留言有回复了",
                               "body": f"{message.text}\n\n—— {message.sender_name}"}, conv.merchant_id)


async def do_reply_by_email(actor: ChatActor, conversation_id: str, *, text: str, client_msg_id: str | None,
                            subject: str | None = None) -> Sent:
    """Answer a 留言 by email: stored as the agent's message (so it shows in the chat) and mailed through the outbox."""
    actor.require_agent()
    return await do_send_message(actor, client_msg_id=client_msg_id or f"email-{secrets.token_hex(8)}", text=text,
                                 conversation_id=conversation_id, via="email", email_subject=subject)


# --- the bot answers first (bot_first) ------------------------------------------------------------

async def do_bot_turn(conversation_id: str, message_id: str) -> None:
    """The bot answers a visitor's message in a `bot` chat; a handoff routes the chat as a new one would be.

    Three steps, so the answerer never runs inside a transaction: read the context; ask the answerer
    (`bot.answer`: time-limited, a failure is a handoff); store the reply and route, under the routing
    lock and the conversation's. A chat an agent took, or that ended, while the bot thought gets no reply.
    """
    async with transaction() as session:
        conv = await session.get(Conversation, conversation_id)
        message = await session.get(ChatMessage, message_id)
        if conv is None or message is None or conv.status != "bot":
            return
        settings = chat_settings(await session.get(Merchant, conv.merchant_id))
        store_code = (await session.execute(select(Store.code).where(Store.id == conv.store_id))).scalar_one()
        rows = (await session.execute(select(ChatMessage.seq, ChatMessage.sender_type, ChatMessage.text).where(
            ChatMessage.conversation_id == conv.id, ChatMessage.private.is_(False), ChatMessage.seq <= message.seq)
            .order_by(ChatMessage.seq.desc()).limit(bot.HISTORY))).all()
        context = bot.BotContext(
            merchant_id=conv.merchant_id, store_id=conv.store_id, store_code=store_code, conversation_id=conv.id,
            visitor_id=conv.visitor_id, customer_id=conv.customer_id, text=message.text,
            history=tuple(bot.HistoryLine(r.seq, r.sender_type, r.text) for r in reversed(rows)),
            agents_online=bool(await routing.online_pool(session, conv.merchant_id)))
    if settings["bot_first"]:
        reply = await bot.answer(context, get_settings().chat_bot_timeout_s)
    else:
        reply = bot.BotReply("", handoff=True)  # the merchant turned the bot off meanwhile: straight to a person
    outcome = Outcome()
    async with transaction() as session:
        if reply.handoff:
            await routing.lock_routing(session, context.merchant_id)
        conv = (await session.execute(select(Conversation).where(Conversation.id == conversation_id)
                                      .with_for_update().execution_options(populate_existing=True))).scalar_one()
        if conv.status != "bot":
            return
        card = None
        if reply.card:
            # The bot shows what the visitor could: the catalogue, and only their own orders.
            as_visitor = ChatActor("visitor", conv.merchant_id, visitor_id=conv.visitor_id, store_id=conv.store_id,
                                   customer_id=conv.customer_id)
            try:
                card = await resolve_card(session, as_visitor, conv, reply.card)
            except (NotFound, ValidationFailed) as exc:
                bot.log.warning("chat_bot_card_refused", conversation_id=conv.id, detail=exc.detail)
        text = reply.text[:MAX_TEXT]
        if text.strip() or card:
            answer = await _append(session, conv, sender_type="bot", sender_id=None, sender_name=settings["bot_name"],
                                   text=text, card=card, client_msg_id=f"bot:{message_id}")
            topics = topics_for_message(conv.id, conv.visitor_id, conv.assignee_id, conv.merchant_id,
                                        await participant_ids(session, conv.id))
            outcome.events.append(Event(topics, message_frame(answer), stream=conv.id, seq=answer.seq))
        if reply.handoff:
            visitor = await session.get(ChatVisitor, conv.visitor_id)
            await routing.place(session, conv, visitor, now())
            await session.flush()
            outcome.events += await conversation_events(session, conv.merchant_id, [conv], requeued=False)
            record(session, merchant_id=conv.merchant_id, actor_type="system", actor_id=None,
                   action="chat.bot_handoff", object_type="conversation", object_id=conv.id, data={"status": conv.status})
    await outcome.publish()


# --- reading, typing ----------------------------------------------------------------------------

async def do_mark_read(actor: ChatActor, conversation_id: str, seq: int, *, skip: str = "") -> int:
    """Mark everything up to seq read for the caller's side; tell the other side if it moved."""
    column = Conversation.agent_read_seq if actor.is_staff_side else Conversation.visitor_read_seq
    async with transaction() as session:
        conv = await access_conversation(session, actor, conversation_id)
        target = min(seq, conv.last_seq)
        row = (await session.execute(
            update(Conversation).where(Conversation.id == conv.id, column < target).values({column: target})
            .returning(column).execution_options(synchronize_session=False))).first()
        moved = row is not None
        assignee, visitor_id, merchant_id = conv.assignee_id, conv.visitor_id, conv.merchant_id
    if moved:
        frame = encode({"type": "read", "conversation_id": conversation_id, "seq": target, "reader": actor.sender()})
        await get_broker().publish(Event(other_side(actor, conversation_id, visitor_id, assignee, merchant_id),
                                         frame, skip=skip))
    return target


def other_side(actor: ChatActor, conversation_id: str, visitor_id: str, assignee_id: str | None,
               merchant_id: str) -> tuple[str, ...]:
    if actor.is_staff_side:
        return (f"v:{visitor_id}", f"c:{conversation_id}")
    return (f"s:{assignee_id}" if assignee_id else f"m:{merchant_id}", f"c:{conversation_id}")


# --- presence and routing -----------------------------------------------------------------------

def presence_out(p: AgentPresence, load: int, name: str = "") -> dict:
    return {"staff_id": p.staff_id, "name": name, "status": p.status, "capacity": p.capacity, "load": load}


async def do_set_presence(actor: ChatActor, *, status: str, capacity: int | None = None) -> dict:
    """Set an agent's presence and cap; an agent who comes online or raises the cap takes queued chats at once."""
    staff_id = actor.require_agent()
    if status not in PRESENCE:
        raise ValidationFailed(f"status must be one of {', '.join(PRESENCE)}", field="status")
    if capacity is not None and not 1 <= capacity <= MAX_CAPACITY:
        raise ValidationFailed(f"capacity must be between 1 and {MAX_CAPACITY}", field="capacity")
    outcome = Outcome()
    at = now()
    async with transaction() as session:
        await routing.lock_routing(session, actor.merchant_id)
        presence = await session.get(AgentPresence, staff_id, with_for_update=True, populate_existing=True)
        if presence is None:
            presence = AgentPresence(staff_id=staff_id, merchant_id=actor.merchant_id, status=status,
                                     capacity=capacity or 5, updated_at=at)
            session.add(presence)
        presence.status = status
        if capacity is not None:
            presence.capacity = capacity
        presence.updated_at = at
        await session.flush()
        assigned = await routing.drain(session, actor.merchant_id, at) if status == "online" else []
        if assigned:
            await session.flush()
            outcome.events += await conversation_events(session, actor.merchant_id, assigned, requeued=True)
        load = (await session.execute(select(func.count()).where(
            Conversation.assignee_id == staff_id, Conversation.status == "assigned"))).scalar_one()
        out = presence_out(presence, load, actor.name)
        outcome.events.append(Event((f"m:{actor.merchant_id}",), encode({"type": "agent.updated", "agent": out})))
    await outcome.publish()
    return out


async def _system_message(session: AsyncSession, conv: Conversation, text: str, outcome: Outcome) -> None:
    message = await _append(session, conv, sender_type="system", sender_id=None, sender_name="系统", text=text)
    outcome.events.append(Event(topics_for_message(conv.id, conv.visitor_id, conv.assignee_id, conv.merchant_id,
                                                   await participant_ids(session, conv.id)),
                                message_frame(message), stream=conv.id, seq=message.seq))


async def do_system_message(actor: ChatActor, conversation_id: str, text: str) -> None:
    """Tell both sides of an open chat what the desk did for the shopper (e.g. a case opened from the chat)."""
    actor.require_staff()
    outcome = Outcome()
    async with transaction() as session:
        conv = await access_conversation(session, actor, conversation_id)
        if conv.status == "ended":
            return
        await _system_message(session, conv, text, outcome)
    await outcome.publish()


async def do_end(actor: ChatActor, conversation_id: str) -> dict:
    """End a chat (staff or its shopper); the freed seat goes to the oldest queued chat at once."""
    if actor.kind == "merchant_key":
        raise NotFound("not found")
    outcome = Outcome()
    at = now()
    async with transaction() as session:
        conv = await access_conversation(session, actor, conversation_id)
        await routing.lock_routing(session, conv.merchant_id)
        conv = await live_conversation(session, actor, conversation_id, "this conversation has already ended")
        ended_by = "agent" if actor.is_staff_side else "visitor"
        await _finish(session, conv, ended_by,
                      f"对话已结束（{actor.name or ('客服' if actor.is_staff_side else '顾客')}）", outcome, at)
        record(session, merchant_id=conv.merchant_id, actor_type=actor.sender_type, actor_id=actor.sender_id,
               action="chat.end", object_type="conversation", object_id=conv.id)
        out = conversation_out(conv, (await staff_names(session, {conv.assignee_id})).get(conv.assignee_id or ""))
    await outcome.publish()
    return out


async def _finish(session: AsyncSession, conv: Conversation, ended_by: str, note: str, outcome: Outcome,
                  at) -> None:
    """End a locked, open conversation with a closing system message; give its seat to the queue."""
    was_queued = conv.status == "queued"
    await _system_message(session, conv, note, outcome)
    conv.status, conv.ended_at, conv.ended_by, conv.updated_at, conv.waiting_since = "ended", at, ended_by, at, None
    conv.queued_at = None
    conv.locked_by = None
    if conv.assigned_at:
        conv.handle_s = max(0, int((at - conv.assigned_at).total_seconds()))
    await session.flush()
    assigned = await routing.drain(session, conv.merchant_id, at)
    await session.flush()
    outcome.events += await conversation_events(session, conv.merchant_id, [conv, *assigned],
                                                requeued=bool(assigned) or was_queued)


async def do_transfer(actor: ChatActor, conversation_id: str, *, agent_id: str | None = None,
                      desk_id: str | None = None) -> dict:
    """Hand a chat to another agent or desk, with its history; the old seat goes to the queue."""
    actor.require_staff()
    if (agent_id is None) == (desk_id is None):
        raise ValidationFailed("give either agent_id or desk", field="agent_id")
    outcome = Outcome()
    at = now()
    async with transaction() as session:
        conv = await access_conversation(session, actor, conversation_id)
        await routing.lock_routing(session, conv.merchant_id)
        conv = await live_conversation(session, actor, conversation_id, "an ended conversation cannot be transferred")
        if actor.kind == "staff" and actor.role == "agent" and conv.assignee_id not in (None, actor.staff_id):
            raise Forbidden("only the agent holding this chat, or a supervisor, can transfer it")
        was_queued = conv.status == "queued"
        if agent_id is not None:
            target = await session.get(Staff, agent_id) if len(agent_id) <= 32 else None
            if target is None or target.merchant_id != conv.merchant_id:
                raise ValidationFailed("no such agent", field="agent_id")
            presence = await session.get(AgentPresence, agent_id)
            if presence is None or presence.status == "offline":
                raise Conflict(f"{target.name} is offline", code="agent_unavailable", field="agent_id")
            if conv.assignee_id == agent_id:
                raise Conflict(f"the chat is already with {target.name}", code="same_agent", field="agent_id")
            conv.status, conv.assignee_id, conv.queued_at, conv.updated_at = "assigned", agent_id, None, at
            conv.assigned_at = conv.assigned_at or at
            visitor = await session.get(ChatVisitor, conv.visitor_id)
            visitor.last_agent_id, visitor.last_agent_at = agent_id, at
            note = f"对话已转接给 {target.name}"
        else:
            desk = await session.get(ChatDesk, desk_id) if len(desk_id or "") <= 32 else None
            if desk is None or desk.merchant_id != conv.merchant_id:
                raise ValidationFailed("no such desk", field="desk")
            conv.desk_id, conv.assignee_id = desk.id, None
            visitor = await session.get(ChatVisitor, conv.visitor_id)
            visitor.last_agent_id = None  # a transfer to a desk means someone else
            await session.flush()  # the old seat is free before the desk's agents are counted
            await routing.place(session, conv, visitor, at)
            note = f"对话已转接到 {desk.name}"
        await session.flush()
        await _system_message(session, conv, note, outcome)
        assigned = await routing.drain(session, conv.merchant_id, at)
        await session.flush()
        outcome.events += await conversation_events(session, conv.merchant_id, [conv, *assigned],
                                                    requeued=bool(assigned) or was_queued or conv.status == "queued")
        record(session, merchant_id=conv.merchant_id, actor_type="agent", actor_id=actor.staff_id,
               action="chat.transfer", object_type="conversation", object_id=conv.id,
               data={"agent_id": agent_id, "desk_id": desk_id})
        out = conversation_out(conv, (await staff_names(session, {conv.assignee_id})).get(conv.assignee_id or ""))
    await outcome.publish()
    return out


async def do_rate(actor: ChatActor, conversation_id: str, *, score: int, comment: str = "") -> dict:
    """The shopper's satisfaction rating (1–5), once, after the chat has ended."""
    if actor.is_staff_side:
        raise NotFound("not found")
    if not 1 <= score <= 5:
        raise ValidationFailed("score must be between 1 and 5", field="score")
    outcome = Outcome()
    async with transaction() as session:
        conv = await access_conversation(session, actor, conversation_id, lock=True)
        if conv.status != "ended":
            raise Conflict("rate the chat after it has ended", code="illegal_transition")
        if conv.rating_score is not None:
            raise Conflict("this chat has been rated", code="already_rated")
        conv.rating_score, conv.rating_comment, conv.rated_at = score, comment, now()
        await session.flush()
        outcome.events += await conversation_events(session, conv.merchant_id, [conv], requeued=False)
        out = conversation_out(conv, (await staff_names(session, {conv.assignee_id})).get(conv.assignee_id or ""))
    await outcome.publish()
    return out


# --- desks and attachments ----------------------------------------------------------------------

async def do_create_desk(actor: ChatActor, *, name: str, store: str | None = None, agent_ids: list[str] | None = None,
                         business_hours: dict | None = None, fallthrough: bool = True) -> ChatDesk:
    actor.require_staff()
    if actor.kind == "staff" and actor.role not in ("admin", "supervisor"):
        raise Forbidden("this needs the role admin or supervisor")
    hours = routing.check_business_hours(business_hours)
    async with transaction() as session:
        store_id = None
        if store:
            row = (await session.execute(select(Store).where(Store.merchant_id == actor.merchant_id,
                                                             Store.code == store))).scalar_one_or_none()
            if row is None:
                raise ValidationFailed(f"no store '{store}'", field="store")
            store_id = row.id
        agent_ids = list(dict.fromkeys(agent_ids or []))
        if agent_ids:
            found = set((await session.execute(select(Staff.id).where(
                Staff.id.in_(agent_ids), Staff.merchant_id == actor.merchant_id))).scalars())
            for i, agent in enumerate(agent_ids):
                if agent not in found:
                    raise ValidationFailed("no such agent", field=f"agent_ids[{i}]")
        desk = ChatDesk(merchant_id=actor.merchant_id, store_id=store_id, name=name, agent_ids=agent_ids,
                        business_hours=hours, fallthrough=fallthrough)
        session.add(desk)
        await session.flush()
        return desk


async def do_save_attachment(actor: ChatActor, data: bytes) -> ChatAttachment:
    """Store an image for a chat after checking it by content (JPEG/PNG/WebP, size-limited)."""
    if actor.kind not in ("visitor", "staff"):
        raise NotFound("not found")
    kind = storage.check_image(data)
    attachment_id = new_id()
    ext = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}[kind]
    path = storage.save(actor.merchant_id, f"chat-{attachment_id}.{ext}", data)
    async with transaction() as session:
        item = ChatAttachment(id=attachment_id, merchant_id=actor.merchant_id, owner_type=actor.sender_type,
                              owner_id=actor.sender_id, content_type=kind, size=len(data), path=path)
        session.add(item)
        await session.flush()
        return item


async def access_attachment(session: AsyncSession, actor: ChatActor, attachment_id: str) -> ChatAttachment:
    """The uploader, staff of the merchant, and the visitor of the conversation it was sent in may fetch it."""
    item = await session.get(ChatAttachment, attachment_id) if len(attachment_id) <= 32 else None
    if item is None or item.merchant_id != actor.merchant_id:
        raise NotFound("no such attachment")
    if actor.is_staff_side or item.owner_id == actor.sender_id:
        return item
    if item.conversation_id and actor.kind in ("visitor", "shopper"):
        conv = await session.get(Conversation, item.conversation_id)
        if conv is not None and can_see(actor, conv):
            return item
    raise NotFound("no such attachment")


# --- visitor info, blocks, page views -----------------------------------------------------------

def record_client(visitor: ChatVisitor, ip: str, user_agent: str) -> None:
    """Remember where the visitor connects from (customer card): IP, coarse location, device."""
    if ip and ip != visitor.ip:
        visitor.ip = ip[:64]
        visitor.location = locate(ip)
    if user_agent and user_agent[:500] != visitor.user_agent:
        visitor.user_agent = user_agent[:500]
        visitor.device = rules.parse_user_agent(user_agent)


async def check_not_blocked(session: AsyncSession, merchant_id: str, visitor_id: str | None, ip: str) -> None:
    """Refuse a blocked visitor id or IP (403 `blocked`)."""
    keys = [("visitor", visitor_id)] if visitor_id else []
    if ip:
        keys.append(("ip", ip))
    if not keys:
        return
    cond = None
    for kind, value in keys:
        c = (ChatBlock.kind == kind) & (ChatBlock.value == value)
        cond = c if cond is None else cond | c
    hit_ = (await session.execute(select(ChatBlock.id).where(ChatBlock.merchant_id == merchant_id, cond)
                                  .limit(1))).first()
    if hit_ is not None:
        raise Forbidden("this visitor is blocked", code="blocked")


async def do_visitor_connected(actor: ChatActor, ip: str, user_agent: str) -> dict:
    """A widget socket opened: record the client, mark the visitor online, and build the hello."""
    at = now()
    async with transaction() as session:
        await check_not_blocked(session, actor.merchant_id, actor.visitor_id, ip)
        visitor = await session.get(ChatVisitor, actor.visitor_id)
        if visitor is not None and visitor.merchant_id == actor.merchant_id:
            record_client(visitor, ip, user_agent)
            visitor.connected_at, visitor.last_seen_at = at, at
        conv = await open_conversation(session, actor.visitor_id)
        spot = None
        if conv is not None and conv.status == "queued":
            spot = (await routing.queue_view(session, conv.merchant_id, at, only={conv.id})).get(conv.id)
        names = await staff_names(session, {conv.assignee_id} if conv else set())
        online = bool(await routing.online_pool(session, actor.merchant_id))
        return {"type": "hello", "protocol": 1, "visitor_id": actor.visitor_id,
                "conversation": conversation_out(conv, names.get(conv.assignee_id or ""), spot) if conv else None,
                "agents_online": online}


async def do_visitor_left(visitor_id: str) -> None:
    """The visitor's last socket on this node closed."""
    async with transaction() as session:
        await session.execute(update(ChatVisitor).where(ChatVisitor.id == visitor_id).values(left_at=now())
                              .execution_options(synchronize_session=False))


async def do_page_view(actor: ChatActor, url: str, title: str) -> None:
    """Add a page to the visitor's trail (newest first, the last 50) and show it to the agents of their open chat."""
    if actor.kind != "visitor":
        raise ValidationFailed("page.view comes from the widget", field="type")
    at = now()
    async with transaction() as session:
        visitor = await session.get(ChatVisitor, actor.visitor_id, with_for_update=True, populate_existing=True)
        if visitor is None or visitor.merchant_id != actor.merchant_id:
            raise NotFound("no such visitor")
        visitor.pages = ([{"url": url, "title": title, "at": isoformat(at)}] + list(visitor.pages or []))[:MAX_PAGES]
        visitor.last_seen_at = at
        conv = await open_conversation(session, visitor.id)
        if conv is None:
            return
        topics = topics_for_message(conv.id, conv.visitor_id, conv.assignee_id, conv.merchant_id,
                                    await participant_ids(session, conv.id), private=True)
    await get_broker().publish(Event(topics, encode({
        "type": "visitor.page", "visitor_id": actor.visitor_id, "conversation_id": conv.id, "url": url,
        "title": title, "at": isoformat(at)})))


async def do_block(actor: ChatActor, *, conversation_id: str | None = None, visitor_id: str | None = None,
                   ip: bool = False, reason: str = "") -> dict:
    """Block a visitor (and, with ip, their address): close their sockets (1008), end their open chat."""
    staff_id = actor.require_agent()
    outcome = Outcome()
    at = now()
    async with transaction() as session:
        if conversation_id:
            conv = await access_conversation(session, actor, conversation_id)
            visitor_id = conv.visitor_id
        visitor = await session.get(ChatVisitor, visitor_id) if visitor_id and len(visitor_id) <= 32 else None
        if visitor is None or visitor.merchant_id != actor.merchant_id:
            raise NotFound("no such visitor", field="visitor_id")
        values = [("visitor", visitor.id)] + ([("ip", visitor.ip)] if ip and visitor.ip else [])
        block_ids = []
        for kind, value in values:
            block_id = (await session.execute(select(ChatBlock.id).where(
                ChatBlock.merchant_id == actor.merchant_id, ChatBlock.kind == kind, ChatBlock.value == value))).scalar()
            if block_id is None:
                block = ChatBlock(merchant_id=actor.merchant_id, kind=kind, value=value, reason=reason[:200],
                                  created_by=staff_id, created_at=at)
                session.add(block)
                await session.flush()
                block_id = block.id
            block_ids.append(block_id)
        conv = await open_conversation(session, visitor.id)
        if conv is not None:
            await routing.lock_routing(session, conv.merchant_id)
            conv = await access_conversation(session, actor, conv.id, lock=True)
            if conv.status != "ended":
                await _finish(session, conv, "agent", "对话已结束（访客已被屏蔽）", outcome, at)
        record(session, merchant_id=actor.merchant_id, actor_type="agent", actor_id=staff_id, action="chat.block",
               object_type="chat_visitor", object_id=visitor.id, data={"ip": visitor.ip if ip else None})
        outcome.events.append(Event((f"v:{visitor.id}",), encode(
            {"type": "error", "code": "blocked", "detail": "this visitor is blocked"}), stream=CLOSE_STREAM))
        out = {"id": block_ids[0], "block_ids": block_ids, "visitor_id": visitor.id, "ip": visitor.ip if ip else None,
               "blocked_at": isoformat(at)}
    await outcome.publish()
    return out


async def do_unblock(actor: ChatActor, block_id: str) -> None:
    staff_id = actor.require_agent()
    async with transaction() as session:
        block = await session.get(ChatBlock, block_id) if len(block_id) <= 32 else None
        if block is None or block.merchant_id != actor.merchant_id:
            raise NotFound("no such block")
        await session.delete(block)
        record(session, merchant_id=actor.merchant_id, actor_type="agent", actor_id=staff_id, action="chat.unblock",
               object_type="chat_block", object_id=block_id, data={"kind": block.kind, "value": block.value})


# --- announcements ------------------------------------------------------------------------------

def require_manager(actor: ChatActor) -> str:
    staff_id = actor.require_agent()
    if actor.role not in ("admin", "supervisor"):
        raise Forbidden("this needs the role admin or supervisor")
    return staff_id


async def do_announce(actor: ChatActor, *, store: str, text: str) -> dict:
    """Send one announcement to every widget socket of a store, on every node: one frame, encoded once."""
    staff_id = require_manager(actor)
    at = now()
    async with transaction() as session:
        row = (await session.execute(select(Store.id).where(Store.merchant_id == actor.merchant_id,
                                                            Store.code == store))).first()
        if row is None:
            raise ValidationFailed(f"no store '{store}'", field="store")
        store_id = row[0]
        announcement_id = new_id()
        record(session, merchant_id=actor.merchant_id, actor_type="agent", actor_id=staff_id,
               action="chat.announce", object_type="store", object_id=store_id, data={"id": announcement_id})
    frame = {"type": "announcement", "id": announcement_id, "text": text, "created_at": isoformat(at)}
    await get_broker().publish(Event((f"st:{store_id}",), encode(frame)))
    return {**frame, "store": store}


# --- presence that follows sockets, idle chats ----------------------------------------------------

async def touch_agent_sockets(staff_ids: list[str]) -> None:
    """This node has sockets of these agents (its heartbeat, and a socket closing): they are still here."""
    if not staff_ids:
        return
    async with transaction() as session:
        await session.execute(update(AgentPresence).where(AgentPresence.staff_id.in_(staff_ids))
                              .values(socket_seen_at=now()).execution_options(synchronize_session=False))


async def sweep_presence(grace_s: float, limit: int = 200) -> int:
    """Agents whose sockets have all been gone for grace_s → offline (their chats stay theirs); safe on many nodes."""
    at = now()
    cutoff = at - timedelta(seconds=grace_s)
    due = (AgentPresence.status != "offline") & (AgentPresence.socket_seen_at < cutoff)
    async with transaction() as session:
        rows = (await session.execute(select(AgentPresence.staff_id, AgentPresence.merchant_id).where(due)
                                      .limit(limit))).all()
    done = 0
    for staff_id, merchant_id in rows:
        events: list[Event] = []
        async with transaction() as session:
            await routing.lock_routing(session, merchant_id)
            presence = (await session.execute(select(AgentPresence).where(AgentPresence.staff_id == staff_id, due)
                                              .with_for_update().execution_options(populate_existing=True))
                        ).scalar_one_or_none()
            if presence is None:  # another node did it, or a socket came back
                continue
            presence.status, presence.socket_seen_at, presence.updated_at = "offline", None, at
            load = (await session.execute(select(func.count()).where(
                Conversation.assignee_id == staff_id, Conversation.status == "assigned"))).scalar_one()
            name = (await staff_names(session, {staff_id})).get(staff_id, "")
            events.append(Event((f"m:{merchant_id}",), encode(
                {"type": "agent.updated", "agent": presence_out(presence, load, name)})))
            record(session, merchant_id=merchant_id, actor_type="system", actor_id=None, action="chat.presence_lost",
                   object_type="staff", object_id=staff_id)
        await get_broker().publish_many(events)
        done += 1
    return done


def chat_settings(merchant: Merchant | None) -> dict:
    stored = ((merchant.settings if merchant else None) or {}).get("chat", {})
    return {"idle_close_minutes": int(stored.get("idle_close_minutes", DEFAULT_IDLE_MINUTES)),
            "bot_first": bool(stored.get("bot_first", False)),
            "bot_name": stored.get("bot_name") or bot.DEFAULT_BOT_NAME}


async def do_save_chat_settings(actor: ChatActor, *, idle_close_minutes: int | None = None,
                                bot_first: bool | None = None, bot_name: str | None = None) -> dict:
    """Change the merchant's chat settings (admin or supervisor); what is left out stays as it is."""
    staff_id = require_manager(actor)
    changes: dict[str, Any] = {"idle_close_minutes": idle_close_minutes, "bot_first": bot_first}
    if bot_name is not None:
        changes["bot_name"] = bot_name.strip()
        if not changes["bot_name"]:
            raise ValidationFailed("the bot needs a name", field="bot_name")
    changes = {k: v for k, v in changes.items() if v is not None}
    async with transaction() as session:
        merchant = await session.get(Merchant, actor.merchant_id, with_for_update=True)
        settings = dict(merchant.settings or {})
        settings["chat"] = {**settings.get("chat", {}), **changes}
        merchant.settings = settings
        record(session, merchant_id=actor.merchant_id, actor_type="agent", actor_id=staff_id,
               action="chat.settings", object_type="merchant", object_id=actor.merchant_id, data=changes)
        return chat_settings(merchant)


async def close_idle(limit: int = 500) -> int:
    """End chats (assigned or with the bot) idle longer than their merchant's setting; each once, on any node."""
    at = now()
    last = func.coalesce(Conversation.last_message_at, Conversation.created_at)
    async with transaction() as session:
        rows = (await session.execute(select(Conversation.id, Conversation.merchant_id, last.label("last")).where(
            Conversation.status.in_(("assigned", "bot")), last < at - timedelta(minutes=1))
            .order_by(last).limit(limit))).all()
        merchants = {m.id: chat_settings(m)["idle_close_minutes"] for m in (await session.execute(
            select(Merchant).where(Merchant.id.in_({r.merchant_id for r in rows})))).scalars()} if rows else {}
    closed = 0
    for conv_id, merchant_id, last_at in rows:
        minutes = merchants.get(merchant_id, DEFAULT_IDLE_MINUTES)
        if minutes <= 0 or last_at > at - timedelta(minutes=minutes):
            continue
        outcome = Outcome()
        try:
            async with transaction() as session:
                await routing.lock_routing(session, merchant_id)
                conv = (await session.execute(select(Conversation).where(
                    Conversation.id == conv_id, Conversation.status.in_(("assigned", "bot")))
                    .with_for_update().execution_options(populate_existing=True))).scalar_one_or_none()
                if conv is None or (conv.last_message_at or conv.created_at) > at - timedelta(minutes=minutes):
                    continue  # ended or written to meanwhile
                await _finish(session, conv, "system", f"对话已自动结束（{minutes} 分钟无消息）", outcome, at)
                record(session, merchant_id=merchant_id, actor_type="system", actor_id=None, action="chat.end",
                       object_type="conversation", object_id=conv.id, data={"idle_minutes": minutes})
        except Exception:  # one broken chat must not stop the sweep
            import structlog

            structlog.get_logger("shopdesk.chat").exception("idle_close_failed", conversation_id=conv_id)
            continue
        await outcome.publish()
        closed += 1
    return closed


# --- agent tools: lock, invite a colleague, canned replies, proactive invitations -----------------

async def do_lock(actor: ChatActor, conversation_id: str, *, lock: bool) -> dict:
    """Lock a chat so only the holder replies (others get `locked`); the holder or a supervisor unlocks it."""
    staff_id = actor.require_agent()
    outcome = Outcome()
    async with transaction() as session:
        conv = await live_conversation(session, actor, conversation_id)
        if lock:
            if conv.locked_by and conv.locked_by != staff_id:
                raise Conflict("a colleague holds the lock", code="locked")
            conv.locked_by = staff_id
        else:
            if conv.locked_by and conv.locked_by != staff_id and actor.role not in ("admin", "supervisor"):
                raise Conflict("only the holder or a supervisor can unlock", code="locked")
            conv.locked_by = None
        conv.updated_at = now()
        await session.flush()
        outcome.events += await conversation_events(session, conv.merchant_id, [conv], requeued=False)
        record(session, merchant_id=conv.merchant_id, actor_type="agent", actor_id=staff_id,
               action="chat.lock" if lock else "chat.unlock", object_type="conversation", object_id=conv.id)
        out = conversation_out(conv, (await staff_names(session, {conv.assignee_id})).get(conv.assignee_id or ""))
    await outcome.publish()
    return out


async def do_add_participant(actor: ChatActor, conversation_id: str, *, agent_id: str) -> dict:
    """Invite a colleague into a chat: they get its messages from now on and may reply."""
    staff_id = actor.require_agent()
    outcome = Outcome()
    async with transaction() as session:
        conv = await live_conversation(session, actor, conversation_id)
        target = await session.get(Staff, agent_id) if len(agent_id) <= 32 else None
        if target is None or target.merchant_id != conv.merchant_id:
            raise ValidationFailed("no such agent", field="agent_id")
        if agent_id == conv.assignee_id or agent_id in await participant_ids(session, conv.id):
            raise Conflict(f"{target.name} is in this chat already", code="already_participant", field="agent_id")
        session.add(ChatParticipant(merchant_id=conv.merchant_id, conversation_id=conv.id, staff_id=agent_id,
                                    invited_by=staff_id))
        await session.flush()
        await _system_message(session, conv, f"{actor.name} 邀请 {target.name} 加入对话", outcome)
        outcome.events.append(Event((f"s:{agent_id}",), encode(
            {"type": "participant.added", "conversation_id": conv.id, "staff_id": agent_id,
             "by": {"id": staff_id, "name": actor.name}})))
        record(session, merchant_id=conv.merchant_id, actor_type="agent", actor_id=staff_id,
               action="chat.invite_colleague", object_type="conversation", object_id=conv.id,
               data={"agent_id": agent_id})
        out = {"conversation_id": conv.id, "participants": await participant_ids(session, conv.id)}
    await outcome.publish()
    return out


def canned_out(c: CannedReply, rendered: str | None = None) -> dict:
    return {"id": c.id, "shortcut": c.shortcut, "text": c.text, "scope": "agent" if c.owner_id else "merchant",
            "owner_id": c.owner_id, "rendered": rendered if rendered is not None else c.text}


async def do_create_canned(actor: ChatActor, *, shortcut: str, text: str, shared: bool) -> dict:
    """A canned reply of the agent's own, or (admin/supervisor, shared) for the whole merchant."""
    staff_id = require_manager(actor) if shared else actor.require_agent()
    async with transaction() as session:
        owner = None if shared else staff_id
        clash = (await session.execute(select(CannedReply.id).where(
            CannedReply.merchant_id == actor.merchant_id, CannedReply.shortcut == shortcut,
            CannedReply.owner_id.is_(None) if owner is None else CannedReply.owner_id == owner))).first()
        if clash is not None:
            raise Conflict(f"/{shortcut} exists already", code="duplicate_shortcut", field="shortcut")
        item = CannedReply(merchant_id=actor.merchant_id, owner_id=owner, shortcut=shortcut, text=text)
        session.add(item)
        await session.flush()
        return canned_out(item)


async def do_delete_canned(actor: ChatActor, canned_id: str) -> None:
    staff_id = actor.require_agent()
    async with transaction() as session:
        item = await session.get(CannedReply, canned_id) if len(canned_id) <= 32 else None
        if item is None or item.merchant_id != actor.merchant_id or item.owner_id not in (None, staff_id):
            raise NotFound("no such canned reply")
        if item.owner_id is None and actor.role not in ("admin", "supervisor"):
            raise Forbidden("this needs the role admin or supervisor")
        await session.delete(item)


async def do_invite_visitor(actor: ChatActor, visitor_id: str, *, text: str) -> dict:
    """Proactively invite a browsing visitor: a chat assigned to this agent opens with their message,
    and the visitor's widget gets `invitation` (then the message itself) to open."""
    staff_id = actor.require_agent()
    outcome = Outcome()
    at = now()
    async with transaction() as session:
        visitor = await session.get(ChatVisitor, visitor_id) if len(visitor_id) <= 32 else None
        if visitor is None or visitor.merchant_id != actor.merchant_id:
            raise NotFound("no such visitor", field="visitor_id")
        await routing.lock_routing(session, actor.merchant_id)
        conv = await open_conversation(session, visitor.id)
        if conv is not None:
            raise Conflict("this visitor is in a chat already", code="already_chatting", field="visitor_id")
        conv = Conversation(merchant_id=visitor.merchant_id, store_id=visitor.store_id, visitor_id=visitor.id,
                            customer_id=visitor.customer_id, status="assigned", assignee_id=staff_id,
                            assigned_at=at, last_seq=0, visitor_read_seq=0, agent_read_seq=0, created_at=at,
                            updated_at=at)
        session.add(conv)
        visitor.last_agent_id, visitor.last_agent_at = staff_id, at
        await session.flush()
        message = await _append(session, conv, sender_type="agent", sender_id=staff_id, sender_name=actor.name,
                                text=text, client_msg_id=f"invite-{new_id()}")
        outcome.events += await conversation_events(session, conv.merchant_id, [conv], requeued=False)
        outcome.events.append(Event((f"v:{visitor.id}",), encode({
            "type": "invitation", "text": text, "agent": {"id": staff_id, "name": actor.name},
            "conversation_id": conv.id, "message_id": message.id})))
        outcome.events.append(Event(topics_for_message(conv.id, conv.visitor_id, conv.assignee_id, conv.merchant_id),
                                    message_frame(message), stream=conv.id, seq=message.seq))
        record(session, merchant_id=conv.merchant_id, actor_type="agent", actor_id=staff_id,
               action="chat.invite_visitor", object_type="conversation", object_id=conv.id)
        out = {"conversation": conversation_out(conv, actor.name), "message": message_out(message)}
    await outcome.publish()
    return out
