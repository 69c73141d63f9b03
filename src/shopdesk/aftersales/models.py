"""After-sales cases, their lines, shipments, timeline events and photos."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shopdesk.core.db import Base, created_column, id_column
from shopdesk.customers.models import Customer


class AftersaleCase(Base):
    __tablename__ = "aftersale_case"
    __table_args__ = (
        UniqueConstraint("merchant_id", "case_no"),
        Index("ix_aftersale_case_deadline", "deadline_at"),
        Index("ix_aftersale_case_alarm", "alarm_at"),
        Index("ix_aftersale_case_merchant_status", "merchant_id", "status", "deadline_at"),
    )
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    case_no: Mapped[str] = mapped_column(String(32))
    order_id: Mapped[str] = mapped_column(ForeignKey("order.id"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customer.id"), index=True)
    type: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(String(32))
    responsibility: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer, default=1)
    description: Mapped[str] = mapped_column(Text, default="")
    photo_ids: Mapped[list] = mapped_column(default=list)
    exchange_to: Mapped[list] = mapped_column(default=list)
    requested_amount_fen: Mapped[int | None] = mapped_column(Integer)
    # The quote at creation (and after resubmission); refund_fen is net of deductions.
    goods_refund_fen: Mapped[int] = mapped_column(Integer, default=0)
    shipping_refund_fen: Mapped[int] = mapped_column(Integer, default=0)
    postage_refund_fen: Mapped[int] = mapped_column(Integer, default=0)
    refund_fen: Mapped[int] = mapped_column(Integer, default=0)
    buyer_pays_fen: Mapped[int] = mapped_column(Integer, default=0)
    deductions: Mapped[list] = mapped_column(default=list)
    return_address: Mapped[dict | None]
    reject_reason: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[list] = mapped_column(default=list)
    deadline_at: Mapped[datetime | None]
    deadline_action: Mapped[str | None] = mapped_column(String(32))
    alarm_at: Mapped[datetime | None]
    alarm_level: Mapped[int] = mapped_column(Integer, default=0)
    resubmit_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()
    approved_at: Mapped[datetime | None]
    received_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]

    # Loaded with the case (one join) for the shopper's notification email.
    customer: Mapped["Customer"] = relationship(lazy="raise", viewonly=True)
    lines: Mapped[list["AftersaleLine"]] = relationship(order_by="AftersaleLine.position", lazy="raise")
    events: Mapped[list["AftersaleEvent"]] = relationship(order_by="AftersaleEvent.seq", lazy="raise")
    shipments: Mapped[list["CaseShipment"]] = relationship(order_by="CaseShipment.shipped_at", lazy="raise")


class AftersaleLine(Base):
    __tablename__ = "aftersale_line"
    __table_args__ = (
        # At most one open case per order line (rulebook 1), enforced by the database too.
        Index("uq_aftersale_line_open", "order_line_id", unique=True,
              sqlite_where=text("is_open"), postgresql_where=text("is_open")),
    )
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("aftersale_case.id"), index=True)
    order_line_id: Mapped[str] = mapped_column(ForeignKey("order_line.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    refund_fen: Mapped[int] = mapped_column(Integer, default=0)
    is_open: Mapped[bool] = mapped_column(Boolean, default=True)


class CaseShipment(Base):
    """A parcel of a case: the buyer's return or the merchant's replacement."""

    __tablename__ = "case_shipment"
    __table_args__ = (Index("ix_case_shipment_tracking", "carrier", "tracking_no"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("aftersale_case.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # return | reship
    carrier: Mapped[str] = mapped_column(String(32))
    tracking_no: Mapped[str] = mapped_column(String(64))
    shipped_at: Mapped[datetime]
    signed_at: Mapped[datetime | None]
    tracking_state: Mapped[str | None] = mapped_column(String(8))


class AftersaleEvent(Base):
    __tablename__ = "aftersale_event"
    __table_args__ = (UniqueConstraint("case_id", "seq"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("aftersale_case.id"))
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = created_column()
    actor: Mapped[str] = mapped_column(String(16))  # buyer | agent | system | platform
    actor_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict] = mapped_column(default=dict)


class Upload(Base):
    __tablename__ = "upload"
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    owner_type: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = created_column()
