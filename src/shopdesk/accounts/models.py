"""Merchants, stores, staff and API keys."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
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
