"""Channel tables: mailboxes and imported emails, PBX calls, WeChat accounts and their messages."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shopdesk.core.db import Base, created_column, id_column


class Mailbox(Base):
    """A support address polled by IMAP (and/or fed by the SMTP receiver); replies go out from it."""

    __tablename__ = "mailbox"
    __table_args__ = (UniqueConstraint("address"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    store_id: Mapped[str | None] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(100), default="")
    imap_host: Mapped[str | None] = mapped_column(String(255))
    imap_port: Mapped[int] = mapped_column(Integer, default=993)
    imap_ssl: Mapped[bool] = mapped_column(Boolean, default=True)
    imap_user: Mapped[str | None] = mapped_column(String(255))
    imap_password: Mapped[str | None] = mapped_column(String(255))
    imap_folder: Mapped[str] = mapped_column(String(100), default="INBOX")
    # IMAP position: UIDs are only comparable within one UIDVALIDITY.
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)  # unsigned 32-bit in IMAP
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_polled_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_column()


class InboundEmail(Base):
    """Every email taken in, once: the Message-ID is the key that makes a re-import a no-op."""

    __tablename__ = "inbound_email"
    __table_args__ = (UniqueConstraint("merchant_id", "message_id"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32))
    mailbox_id: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[str] = mapped_column(String(255))
    from_address: Mapped[str] = mapped_column(String(255), default="")
    subject: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[str] = mapped_column(String(16))  # ticket | reply | ignored | failed
    reason: Mapped[str | None] = mapped_column(String(200))
    ticket_id: Mapped[str | None] = mapped_column(String(32), index=True)
    reply_id: Mapped[str | None] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = created_column()


class CallLog(Base):
    """A phone call reported by the PBX: ringing → answered → ended, with its recording."""

    __tablename__ = "call_log"
    __table_args__ = (UniqueConstraint("merchant_id", "call_id"), Index("ix_call_log_customer", "customer_id"),
                      # An unknown caller's earlier calls (and their ticket) are found by number.
                      Index("ix_call_log_caller", "merchant_id", "caller", "created_at"))
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32))
    store_id: Mapped[str | None] = mapped_column(String(32))
    call_id: Mapped[str] = mapped_column(String(128))
    caller: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # ringing | answered | ended
    agent_id: Mapped[str | None] = mapped_column(String(32))
    customer_id: Mapped[str | None] = mapped_column(String(32))
    ticket_id: Mapped[str | None] = mapped_column(String(32))
    recording_url: Mapped[str | None] = mapped_column(String(1000))
    ringing_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    data: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = created_column()


class WechatAccount(Base):
    """A store's WeChat official account (公众号): the callback token and the API credentials."""

    __tablename__ = "wechat_account"
    __table_args__ = (UniqueConstraint("store_id"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    store_id: Mapped[str] = mapped_column(String(32))
    app_id: Mapped[str] = mapped_column(String(64))
    app_secret: Mapped[str] = mapped_column(String(128), default="")
    token: Mapped[str] = mapped_column(String(64))
    original_id: Mapped[str] = mapped_column(String(64), default="")  # gh_… (the ToUserName of callbacks)
    created_at: Mapped[datetime] = created_column()


class WechatMessage(Base):
    """A message from a follower, once (the dedupe key makes WeChat's retries and replays no-ops)."""

    __tablename__ = "wechat_message"
    __table_args__ = (UniqueConstraint("dedupe_key"), Index("ix_wechat_message_openid", "merchant_id", "openid"))
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32))
    store_id: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(255))
    openid: Mapped[str] = mapped_column(String(64))
    msg_type: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    customer_id: Mapped[str | None] = mapped_column(String(32))
    ticket_id: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[datetime] = created_column()


class TicketTask(Base):
    """A follow-up task (回访): call or message the customer back after a ticket is solved."""

    __tablename__ = "ticket_task"
    __table_args__ = (Index("ix_ticket_task_due", "merchant_id", "status", "due_at"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32))
    ticket_id: Mapped[str] = mapped_column(ForeignKey("ticket.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="revisit")
    assignee_id: Mapped[str | None] = mapped_column(String(32))
    due_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(8), default="open")  # open | done | cancelled
    note: Mapped[str] = mapped_column(Text, default="")
    outcome: Mapped[str] = mapped_column(Text, default="")
    done_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_column()


class TicketRule(Base):
    """Automation: a trigger (on create / on update) or a time rule, with conditions and actions."""

    __tablename__ = "ticket_rule"
    __table_args__ = (UniqueConstraint("merchant_id", "name"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))  # create | update | time | macro
    conditions: Mapped[list] = mapped_column(default=list)  # [{"field", "op", "value"}]
    actions: Mapped[list] = mapped_column(default=list)  # [{"type", ...}]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = created_column()


class InboxView(Base):
    """A saved inbox view: filters and a sort, personal or shared with the team."""

    __tablename__ = "inbox_view"
    __table_args__ = (UniqueConstraint("merchant_id", "owner_id", "name"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    owner_id: Mapped[str | None] = mapped_column(String(32))  # None: shared
    name: Mapped[str] = mapped_column(String(64))
    filters: Mapped[dict] = mapped_column(default=dict)
    sort: Mapped[str] = mapped_column(String(32), default="updated_desc")
    created_at: Mapped[datetime] = created_column()
