"""Products, orders, lines, payments and shipments."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shopdesk.core.db import Base, created_column, id_column
from shopdesk.customers.models import Customer

NO_REASON_RETURN = ("allowed", "excluded_art6", "excluded_art7")
PLATFORMS = ("own_site", "taobao", "tmall", "jd", "pdd", "douyin", "wechat_shop")


class Product(Base):
    __tablename__ = "product"
    __table_args__ = (UniqueConstraint("merchant_id", "sku"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(100), default="")
    price_fen: Mapped[int] = mapped_column(Integer)
    no_reason_return: Mapped[str] = mapped_column(String(16), default="allowed")
    created_at: Mapped[datetime] = created_column()


class Order(Base):
    __tablename__ = "order"
    __table_args__ = (UniqueConstraint("store_id", "order_no"),
                      Index("ix_order_merchant_order_no", "merchant_id", "order_no"))
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("store.id"))
    order_no: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customer.id"), index=True)
    # paid | partially_shipped | shipped | signed | cancelled
    status: Mapped[str] = mapped_column(String(24), default="paid")
    placed_at: Mapped[datetime]
    paid_at: Mapped[datetime | None]
    goods_total_fen: Mapped[int] = mapped_column(Integer)
    discount_total_fen: Mapped[int] = mapped_column(Integer)
    shipping_fee_fen: Mapped[int] = mapped_column(Integer)
    paid_total_fen: Mapped[int] = mapped_column(Integer)
    # Shipping is refunded at most once per order (rulebook 4.2).
    shipping_refunded_fen: Mapped[int] = mapped_column(Integer, default=0)
    discounts: Mapped[list] = mapped_column(default=list)
    shipping_address: Mapped[dict] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = created_column()

    # Joined by load_order: the notification of a case on this order needs the customer's email.
    customer: Mapped["Customer"] = relationship(lazy="raise", viewonly=True)
    lines: Mapped[list["OrderLine"]] = relationship(order_by="OrderLine.position", lazy="raise")
    payments: Mapped[list["Payment"]] = relationship(order_by="Payment.position", lazy="raise")
    shipments: Mapped[list["Shipment"]] = relationship(order_by="Shipment.shipped_at", lazy="raise")


class OrderLine(Base):
    __tablename__ = "order_line"
    __table_args__ = (UniqueConstraint("order_id", "line_no"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("order.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    line_no: Mapped[str] = mapped_column(String(32))
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_fen: Mapped[int] = mapped_column(Integer)
    is_gift: Mapped[bool] = mapped_column(Boolean, default=False)
    declared_value_fen: Mapped[int | None] = mapped_column(Integer)
    art7_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    no_reason_return: Mapped[str] = mapped_column(String(16), default="allowed")
    discount_fen: Mapped[int] = mapped_column(Integer)
    paid_fen: Mapped[int] = mapped_column(Integer)
    # Committed by approved money steps (refunds not finally failed), rulebook 4.6.
    refunded_fen: Mapped[int] = mapped_column(Integer, default=0)
    refunded_qty: Mapped[int] = mapped_column(Integer, default=0)
    # Units under a fulfilment hold (refund_only approved before shipping).
    held_qty: Mapped[int] = mapped_column(Integer, default=0)


class Payment(Base):
    __tablename__ = "payment"
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("order.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(32))
    amount_fen: Mapped[int] = mapped_column(Integer)
    trade_no: Mapped[str | None] = mapped_column(String(64))
    refunded_fen: Mapped[int] = mapped_column(Integer, default=0)


class Shipment(Base):
    __tablename__ = "shipment"
    __table_args__ = (Index("ix_shipment_tracking", "carrier", "tracking_no"),)
    id: Mapped[str] = id_column()
    merchant_id: Mapped[str] = mapped_column(String(32), index=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("order.id"), index=True)
    carrier: Mapped[str] = mapped_column(String(32))
    tracking_no: Mapped[str] = mapped_column(String(64))
    line_nos: Mapped[list] = mapped_column(default=list)
    shipped_at: Mapped[datetime]
    signed_at: Mapped[datetime | None]
    tracking_state: Mapped[str | None] = mapped_column(String(8))
