"""Cross-domain records: the audit log, idempotency replies and public-number counters."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from shopdesk.core.db import Base, created_column, id_column


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_merchant_at", "merchant_id", "at"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime] = created_column()
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict] = mapped_column(default=dict)


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("principal", "key"),)
    id: Mapped[str] = id_column()
    principal: Mapped[str] = mapped_column(String(80))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_column()


class Counter(Base):
    """Per-merchant sequences for public numbers (AS20261123-0007)."""

    __tablename__ = "counter"
    merchant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


async def next_number(session: AsyncSession, merchant_id: str, name: str) -> int:
    """Take the next value of a per-merchant counter in one upsert, safe under concurrency."""
    if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(Counter).values(merchant_id=merchant_id, name=name, value=1)
    stmt = stmt.on_conflict_do_update(index_elements=["merchant_id", "name"],
                                      set_={"value": Counter.value + 1}).returning(Counter.value)
    return (await session.execute(stmt)).scalar_one()
