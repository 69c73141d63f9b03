"""Tickets, their replies and history, business calendars and SLA policies."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from shopdesk.core.db import Base, created_column, id_column

OPEN_TICKET = "status_group IN ('new', 'open', 'pending') AND merged_into_id IS NULL"


class Ticket(Base):
    __tablename__ = "ticket"
    __table_args__ = (
        UniqueConstraint("merchant_id", "number"),
        # The inbox and the list read open tickets of one merchant newest-activity first.
        Index("ix_ticket_merchant_group_updated", "merchant_id", "status_group", "updated_at"),
        Index("ix_ticket_merchant_assignee", "merchant_id", "assignee_id", "status_group", "updated_at"),
        Index("ix_ticket_sla_check", "sla_check_at"),
        # The unified inbox reads open tickets newest first, all of them or one assignee's: partial
        # indexes over exactly the open ones keep the first page and the counts off the solved history.
        Index("ix_ticket_open_updated", "merchant_id", "updated_at", "id",
              postgresql_where=text(OPEN_TICKET), sqlite_where=text(OPEN_TICKET)),
        Index("ix_ticket_open_assignee", "merchant_id", "assignee_id", "updated_at", "id",
              postgresql_where=text(OPEN_TICKET), sqlite_where=text(OPEN_TICKET)),
        # The inbox counts read this one alone (an index-only scan), never the table.
        Index("ix_ticket_open_counts", "merchant_id", "status_group", "assignee_id", "urge_count",
              postgresql_where=text(OPEN_TICKET), sqlite_where=text(OPEN_TICKET)),
    )
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"))
    number: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer, default=1)
    subject: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str] = mapped_column(String(16))  # api | web | email | phone | wechat | chat
    category: Mapped[str] = mapped_column(String(64), default="")
    priority: Mapped[str] = mapped_column(String(8), default="normal")  # urgent | high | normal | low
    status: Mapped[str] = mapped_column(String(32), default="new")
    status_group: Mapped[str] = mapped_column(String(8), default="new")  # new | open | pending | solved | closed
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customer.id"), index=True)
    requester_email: Mapped[str | None] = mapped_column(String(255))
    requester_name: Mapped[str] = mapped_column(String(100), default="")
    store_id: Mapped[str | None] = mapped_column(String(32))
    order_id: Mapped[str | None] = mapped_column(String(32))
    aftersales_id: Mapped[str | None] = mapped_column(String(32))
    conversation_id: Mapped[str | None] = mapped_column(String(32))
    assignee_id: Mapped[str | None] = mapped_column(String(32))
    team: Mapped[str] = mapped_column(String(64), default="")
    tags: Mapped[list] = mapped_column(default=list)
    custom_fields: Mapped[dict] = mapped_column(default=dict)
    watchers: Mapped[list] = mapped_column(default=list)
    urge_count: Mapped[int] = mapped_column(Integer, default=0)
    merged_into_id: Mapped[str | None] = mapped_column(String(32))
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # SLA: the policy applied, the due times last computed, and when the sweeper must look again.
    sla_policy: Mapped[str | None] = mapped_column(String(64))
    first_response_due_at: Mapped[datetime | None]
    next_response_due_at: Mapped[datetime | None]
    resolution_due_at: Mapped[datetime | None]
    sla_check_at: Mapped[datetime | None]
    sla_emitted: Mapped[list] = mapped_column(default=list)  # keys of warning/breach events already raised
    sla_breaches: Mapped[list] = mapped_column(default=list)  # [{"target", "at"}]
    first_response_at: Mapped[datetime | None]
    last_public_at: Mapped[datetime | None]
    applied_rules: Mapped[list] = mapped_column(default=list)  # time rules already run on this ticket
    survey_token: Mapped[str | None] = mapped_column(String(64))
    rating_score: Mapped[int | None] = mapped_column(Integer)
    rating_comment: Mapped[str] = mapped_column(Text, default="")
    rated_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()
    status_changed_at: Mapped[datetime] = created_column()  # time rules count "pending for 3 days" from here
    solved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]


class TicketReply(Base):
    """A public reply or a private note; shoppers only ever see public ones."""

    __tablename__ = "ticket_reply"
    __table_args__ = (Index("ix_ticket_reply_ticket_at", "ticket_id", "created_at"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32))
    ticket_id: Mapped[str] = mapped_column(ForeignKey("ticket.id"))
    author_type: Mapped[str] = mapped_column(String(8))  # staff | shopper | system
    author_id: Mapped[str | None] = mapped_column(String(64))
    author_name: Mapped[str] = mapped_column(String(100), default="")
    body: Mapped[str] = mapped_column(Text)
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    channel: Mapped[str] = mapped_column(String(16), default="api")
    attachment_ids: Mapped[list] = mapped_column(default=list)
    # Where a merged ticket's reply came from, and the email it arrived in or was sent as.
    origin_ticket_id: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = created_column()


class TicketEvent(Base):
    """One line of a ticket's history: every change, who made it, and what it was before."""

    __tablename__ = "ticket_event"
    __table_args__ = (Index("ix_ticket_event_ticket_at", "ticket_id", "at"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32))
    ticket_id: Mapped[str] = mapped_column(ForeignKey("ticket.id"))
    at: Mapped[datetime] = created_column()
    actor_type: Mapped[str] = mapped_column(String(16))  # staff | shopper | system | api
    actor_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict] = mapped_column(default=dict)


class BusinessCalendar(Base):
    __tablename__ = "business_calendar"
    __table_args__ = (UniqueConstraint("merchant_id", "name"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"))
    name: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict] = mapped_column(default=dict)  # the contract's shape: time_zone, hours, holidays
    updated_at: Mapped[datetime] = created_column()


class SlaPolicy(Base):
    __tablename__ = "sla_policy"
    __table_args__ = (UniqueConstraint("merchant_id", "name"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"))
    name: Mapped[str] = mapped_column(String(64))
    calendar: Mapped[str | None] = mapped_column(String(64))
    match: Mapped[dict] = mapped_column(default=dict)  # {"priority": [...], "category": [...], "store": [...]}
    first_response_minutes: Mapped[int | None] = mapped_column(Integer)
    next_response_minutes: Mapped[int | None] = mapped_column(Integer)
    resolution_minutes: Mapped[int | None] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = created_column()
