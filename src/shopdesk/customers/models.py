"""Customers (shoppers) of a merchant."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shopdesk.core.db import Base, created_column, id_column


class Customer(Base):
    __tablename__ = "customer"
    __table_args__ = (UniqueConstraint("merchant_id", "external_id"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str] = mapped_column(String(32), default="", index=True)
    email: Mapped[str] = mapped_column(String(254), default="")
    created_at: Mapped[datetime] = created_column()
