"""API input for after-sales."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shopdesk.aftersales.states import TYPES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseLineIn(Strict):
    order_line_id: str = Field(min_length=1, max_length=32)
    quantity: int = Field(ge=1, le=100000)


class ExchangeIn(Strict):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=1000)


class DeductionIn(Strict):
    type: Literal["gift_not_returned", "lost_free_shipping", "card_fee", "return_pickup_fee", "negotiated_fee"]
    amount_fen: int = Field(ge=1, le=10**10)
    note: str = Field(default="", max_length=500)


class QuoteIn(Strict):
    order_id: str = Field(min_length=1, max_length=32)
    type: Literal[TYPES]  # type: ignore[valid-type]
    reason: str = Field(min_length=1, max_length=32)
    lines: list[CaseLineIn] = Field(min_length=1, max_length=200)
    exchange_to: list[ExchangeIn] = []
    amount_fen: int | None = Field(default=None, ge=1, le=10**10)
    # Added to the contract: preview an approval with deductions.
    deductions: list[DeductionIn] = []


class CaseIn(QuoteIn):
    description: str = Field(default="", max_length=2000)
    photo_ids: list[str] = Field(default=[], max_length=9)


class AddressIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    phone: str = Field(min_length=1, max_length=32)
    province: str = Field(default="", max_length=50)
    city: str = Field(default="", max_length=50)
    district: str = Field(default="", max_length=50)
    detail: str = Field(min_length=1, max_length=300)


class ApproveIn(Strict):
    deductions: list[DeductionIn] = []
    return_address: AddressIn | None = None
    expected_version: int | None = None
    note: str = Field(default="", max_length=1000)


class RejectIn(Strict):
    reason: str = Field(min_length=1, max_length=1000)
    expected_version: int | None = None


class WaybillIn(Strict):
    carrier: str = Field(min_length=1, max_length=32)
    tracking_no: str = Field(min_length=4, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    # The buyer's return postage, reimbursed when the merchant is at fault (消保法 Art. 24).
    postage_fen: int | None = Field(default=None, ge=0, le=100000)
    expected_version: int | None = None


class ReceiveIn(Strict):
    outcome: Literal["ok", "failed"]
    note: str = Field(default="", max_length=1000)
    expected_version: int | None = None


class NoteIn(Strict):
    note: str = Field(default="", max_length=1000)
    expected_version: int | None = None


class RulingIn(Strict):
    ruling: Literal["buyer", "merchant"] = Field(alias="for")
    note: str = Field(default="", max_length=1000)
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SettingsIn(Strict):
    timers: dict[str, int] | None = None
    reasons: dict[str, dict[str, str]] | None = None
    return_address: AddressIn | None = None
    art17_recalculation: bool | None = None
    free_shipping_threshold_fen: int | None = Field(default=None, ge=0)
    standard_shipping_fen: int | None = Field(default=None, ge=0)
    max_return_postage_fen: int | None = Field(default=None, ge=0)
    reject_templates: list[str] | None = None
