"""Refunds: one row per tender and money step, keyed by refund_no (rulebook 7)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shopdesk.core.db import Base, created_column, id_column

# Forward-only ranks: a notification or query result may only raise the rank.
STATUS_RANK = {"created": 0, "unknown": 1, "processing": 2, "abnormal": 3, "succeeded": 4, "failed": 4}
OPEN_STATUSES = ("created", "unknown", "processing")


class Refund(Base):
    __tablename__ = "refund"
    __table_args__ = (Index("ix_refund_due", "status", "next_attempt_at"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    refund_no: Mapped[str] = mapped_column(String(32), unique=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("aftersale_case.id"), index=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("order.id"), index=True)
    payment_id: Mapped[str] = mapped_column(ForeignKey("payment.id"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(16))
    trade_no: Mapped[str | None] = mapped_column(String(64))
    amount_fen: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="created")
    supersedes: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_ref: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = created_column()
    settled_at: Mapped[datetime | None]


class RefundNotification(Base):
    """Every provider notification seen, so a repeat is applied at most once."""

    __tablename__ = "refund_notification"
    __table_args__ = (UniqueConstraint("provider", "notify_id"),)
    id: Mapped[str] = id_column()
    provider: Mapped[str] = mapped_column(String(16))
    notify_id: Mapped[str] = mapped_column(String(128))
    refund_no: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = created_column()
