"""Webhook subscriptions."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from shopdesk.core.db import Base, created_column, id_column


class Webhook(Base):
    __tablename__ = "webhook"
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    url: Mapped[str] = mapped_column(String(500))
    events: Mapped[list] = mapped_column(default=list)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = created_column()
