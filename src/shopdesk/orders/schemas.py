"""API input for catalogue and orders."""
from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class ProductIn(Strict):
    sku: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    category: str = Field(default="", max_length=100)
    price_fen: int = Field(ge=0, le=10**10)
    no_reason_return: Literal["allowed", "excluded_art6", "excluded_art7"] = "allowed"


class CustomerIn(Strict):
    external_id: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=254)


class LineIn(Strict):
    line_no: str = Field(min_length=1, max_length=32)
    sku: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    quantity: int = Field(ge=1, le=100000)
    unit_price_fen: int = Field(ge=0, le=10**10)
    is_gift: bool = False
    declared_value_fen: int | None = Field(default=None, ge=0)
    art7_confirmed: bool = False


class DiscountIn(Strict):
    kind: str = Field(min_length=1, max_length=32)
    label: str = Field(default="", max_length=100)
    amount_fen: int = Field(ge=0, le=10**10)
    threshold_fen: int | None = Field(default=None, ge=0)


class PaymentIn(Strict):
    method: str = Field(min_length=1, max_length=32)
    amount_fen: int = Field(ge=0, le=10**10)
    trade_no: str | None = Field(default=None, max_length=64)


class ShipmentIn(Strict):
    carrier: str = Field(min_length=1, max_length=32)
    tracking_no: str = Field(min_length=1, max_length=64)
    line_nos: list[str] = Field(min_length=1)
    shipped_at: AwareDatetime
    signed_at: AwareDatetime | None = None


class OrderIn(Strict):
    store: str = Field(min_length=1, max_length=64)
    order_no: str = Field(min_length=1, max_length=64)
    customer: CustomerIn
    placed_at: AwareDatetime
    paid_at: AwareDatetime | None = None
    lines: list[LineIn] = Field(min_length=1, max_length=500)
    discounts: list[DiscountIn] = []
    shipping_fee_fen: int = Field(default=0, ge=0, le=10**8)
    payments: list[PaymentIn] = Field(min_length=1, max_length=20)
    shipping_address: dict = {}
    shipments: list[ShipmentIn] = []
