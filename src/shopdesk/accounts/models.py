"""Merchants, stores, staff, API keys, the audit log and idempotency records."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shopdesk.core.db import Base, created_column, id_column

ROLES = ("agent", "supervisor", "admin", "platform")


class Merchant(Base):
    __tablename__ = "merchant"
    id: Mapped[str] = id_column()
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    time_zone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")
    settings: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = created_column()


class Store(Base):
    __tablename__ = "store"
    __table_args__ = (UniqueConstraint("merchant_id", "code"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    platform: Mapped[str] = mapped_column(String(32))
    identity_secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = created_column()


class Staff(Base):
    __tablename__ = "staff"
    id: Mapped[str] = id_column()
    # Platform operators belong to no merchant.
    merchant_id: Mapped[str | None] = mapped_column(ForeignKey("merchant.id"), index=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = created_column()


class ApiKey(Base):
    __tablename__ = "api_key"
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = created_column()
    revoked_at: Mapped[datetime | None]


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
