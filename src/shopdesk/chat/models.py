"""Chat tables: visitors, desks, agent presence, conversations, messages and attachments."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from shopdesk.core.db import Base, created_column, id_column

STATUSES = ("bot", "queued", "assigned", "ended", "offline")
OPEN_STATUSES = ("bot", "queued", "assigned", "offline")
PRESENCE = ("online", "away", "offline")
SENDER_TYPES = ("visitor", "agent", "bot", "system")
DEFAULT_CAPACITY = 5
MAX_CAPACITY = 10


class ChatVisitor(Base):
    """A browser (anonymous, or bound to a customer by the shop's HMAC)."""

    __tablename__ = "chat_visitor"
    __table_args__ = (Index("ix_chat_visitor_customer", "customer_id", "store_id"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("store.id"))
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customer.id"))
    name: Mapped[str] = mapped_column(String(200), default="")
    # Left in the leave-a-message form; replies by email go here (or to the customer's email).
    email: Mapped[str] = mapped_column(String(254), default="")
    phone: Mapped[str] = mapped_column(String(32), default="")
    pages: Mapped[list] = mapped_column(default=list)  # the last pages seen: [{url, title, at}]
    visit_count: Mapped[int] = mapped_column(Integer, default=1)
    # Sticky routing: the agent who last served this visitor, and when.
    last_agent_id: Mapped[str | None] = mapped_column(String(32))
    last_agent_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_column()
    last_seen_at: Mapped[datetime] = created_column()
    # For the customer card (recorded at widget session and socket connect).
    ip: Mapped[str] = mapped_column(String(64), default="")
    location: Mapped[str] = mapped_column(String(100), default="")  # empty: no offline IP database installed
    user_agent: Mapped[str] = mapped_column(String(500), default="")
    device: Mapped[dict | None]  # {"device": "mobile|tablet|desktop", "os", "browser"}
    referrer: Mapped[str] = mapped_column(String(2000), default="")
    landing_page: Mapped[str] = mapped_column(String(2000), default="")
    # Socket presence across nodes: online while connected_at is set and later than left_at.
    connected_at: Mapped[datetime | None]
    left_at: Mapped[datetime | None]


class ChatDesk(Base):
    """A desk (咨询台): the agents who serve a store, with optional business hours."""

    __tablename__ = "chat_desk"
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    store_id: Mapped[str | None] = mapped_column(ForeignKey("store.id"))
    name: Mapped[str] = mapped_column(String(100))
    agent_ids: Mapped[list] = mapped_column(default=list)  # empty: every agent of the merchant
    # {"days": [0-6, Monday = 0], "start": "09:00", "end": "18:00"} in the merchant's zone; null: always open.
    business_hours: Mapped[dict | None]
    # When none of the desk's agents is online, offer the chat to every online agent before 留言.
    fallthrough: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = created_column()


class AgentPresence(Base):
    __tablename__ = "chat_agent_presence"
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    status: Mapped[str] = mapped_column(String(8), default="offline")
    capacity: Mapped[int] = mapped_column(Integer, default=DEFAULT_CAPACITY)
    # Round-robin among equally loaded agents: the one who waited longest for a chat goes first.
    last_assigned_at: Mapped[datetime | None]
    # Touched while the agent has a socket on some node (each node's heartbeat) and when their last local
    # socket closes; the sweeper turns an agent whose sockets stay gone past the grace period offline.
    socket_seen_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = created_column()


class Conversation(Base):
    __tablename__ = "chat_conversation"
    __table_args__ = (
        # One open conversation per visitor, enforced by the database too.
        Index("uq_chat_conversation_open", "visitor_id", unique=True,
              sqlite_where=text("status <> 'ended'"), postgresql_where=text("status <> 'ended'")),
        Index("ix_chat_conversation_queue", "merchant_id", "status", "queued_at"),
        Index("ix_chat_conversation_assignee", "assignee_id", "status"),
        Index("ix_chat_conversation_import", "merchant_id", "import_key"),
    )
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("store.id"))
    visitor_id: Mapped[str] = mapped_column(ForeignKey("chat_visitor.id"), index=True)
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customer.id"))
    desk_id: Mapped[str | None] = mapped_column(ForeignKey("chat_desk.id"))
    status: Mapped[str] = mapped_column(String(16))
    assignee_id: Mapped[str | None] = mapped_column(ForeignKey("staff.id"))
    # The last sequence number taken; the next message gets last_seq + 1 (one UPDATE … RETURNING).
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    visitor_read_seq: Mapped[int] = mapped_column(Integer, default=0)
    agent_read_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Set by the visitor's first unanswered message, cleared by an agent's reply (Chatwoot's meaning).
    waiting_since: Mapped[datetime | None]
    queued_at: Mapped[datetime | None]
    assigned_at: Mapped[datetime | None]
    first_reply_at: Mapped[datetime | None]
    last_message_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    ended_by: Mapped[str | None] = mapped_column(String(16))  # visitor | agent | system
    handle_s: Mapped[int | None] = mapped_column(Integer)  # assigned → ended, for the queue's wait estimate
    rating_score: Mapped[int | None] = mapped_column(Integer)
    rating_comment: Mapped[str | None] = mapped_column(Text)
    rated_at: Mapped[datetime | None]
    # Lock: only this agent may reply while it is set.
    locked_by: Mapped[str | None] = mapped_column(String(32))
    # Set when the conversation came from an import: the source's id, so a re-import is idempotent.
    import_key: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()


class ChatMessage(Base):
    __tablename__ = "chat_message"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq"),
        # A resend with the same client id is recognised, per conversation and sender. The sender leads,
        # so the batched writer finds the resends of a whole batch through the index (decision 0008).
        UniqueConstraint("sender_id", "client_msg_id", "conversation_id"),
    )
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("chat_conversation.id"))
    seq: Mapped[int] = mapped_column(Integer)
    client_msg_id: Mapped[str | None] = mapped_column(String(64))
    sender_type: Mapped[str] = mapped_column(String(8))  # visitor | agent | bot | system
    sender_id: Mapped[str | None] = mapped_column(String(32))
    sender_name: Mapped[str] = mapped_column(String(200), default="")
    text: Mapped[str] = mapped_column(Text, default="")  # plain text; clients render it as text
    attachment: Mapped[dict | None]
    via: Mapped[str] = mapped_column(String(8), default="chat")  # chat | email
    # A product or order card: {"type": "product", "sku", "title", "price_fen"} or
    # {"type": "order", "order_no", "order_id", "title", "status", "paid_total_fen"}, filled in by the server.
    card: Mapped[dict | None]
    # A private note: staff only, never sent to the visitor nor returned to shopper reads.
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    mentions: Mapped[list | None]  # staff ids @mentioned in a note
    created_at: Mapped[datetime] = created_column()


class ChatParticipant(Base):
    """A colleague invited into a conversation: gets its messages and may reply."""

    __tablename__ = "chat_participant"
    __table_args__ = (UniqueConstraint("conversation_id", "staff_id"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("chat_conversation.id"), index=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"))
    invited_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = created_column()


class ChatBlock(Base):
    """A blocked visitor id or IP: their sockets are closed and new widget sessions refused."""

    __tablename__ = "chat_block"
    __table_args__ = (UniqueConstraint("merchant_id", "kind", "value"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # visitor | ip
    value: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(200), default="")
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = created_column()


class CannedReply(Base):
    """A canned reply (常用语): merchant-wide (owner_id null) or an agent's own; `/shortcut` inserts it."""

    __tablename__ = "chat_canned_reply"
    __table_args__ = (Index("ix_chat_canned_reply_owner", "merchant_id", "owner_id"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32))
    owner_id: Mapped[str | None] = mapped_column(String(32))
    shortcut: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_column()


class ChatRoom(Base):
    """The internal channel (企业内部即时通讯): the merchant's staff room, or direct messages between two agents."""

    __tablename__ = "chat_room"
    __table_args__ = (UniqueConstraint("merchant_id", "key"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    key: Mapped[str] = mapped_column(String(80))  # "staff" or "dm:<lower id>:<higher id>"
    member_ids: Mapped[list] = mapped_column(default=list)  # empty for the staff room: every staff member
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = created_column()


class ChatRoomMessage(Base):
    __tablename__ = "chat_room_message"
    __table_args__ = (UniqueConstraint("room_id", "seq"), UniqueConstraint("room_id", "sender_id", "client_msg_id"))
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    room_id: Mapped[str] = mapped_column(ForeignKey("chat_room.id"))
    seq: Mapped[int] = mapped_column(Integer)
    client_msg_id: Mapped[str | None] = mapped_column(String(64))
    sender_id: Mapped[str] = mapped_column(String(32))
    sender_name: Mapped[str] = mapped_column(String(200), default="")
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_column()


class ChatAttachment(Base):
    """An image sent in a chat, checked by content; attached to one conversation when sent."""

    __tablename__ = "chat_attachment"
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    owner_type: Mapped[str] = mapped_column(String(8))  # visitor | agent
    owner_id: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[str | None] = mapped_column(String(32), index=True)
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = created_column()
