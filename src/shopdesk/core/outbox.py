"""The outbox: side effects written in the same transaction as the change, delivered after commit."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from shopdesk.core.clock import now
from shopdesk.core.db import Base, created_column, id_column


class OutboxItem(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))  # email | webhook
    payload: Mapped[dict] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed | skipped
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = created_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_column()
    sent_at: Mapped[datetime | None]


def enqueue(session: AsyncSession, kind: str, payload: dict, merchant_id: str | None = None) -> OutboxItem:
    item = OutboxItem(kind=kind, payload=payload, merchant_id=merchant_id, next_attempt_at=now())
    session.add(item)
    return item
