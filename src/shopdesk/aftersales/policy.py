"""A merchant's after-sales settings: timers, reasons, return address, Art. 17 option."""
from __future__ import annotations

from datetime import timedelta

from shopdesk.accounts.models import Merchant
from shopdesk.aftersales.rules import SEED_REASONS, Policy

# Rulebook §6 defaults, in hours.
DEFAULT_TIMERS: dict[str, int] = {
    "review_h": 48,
    "offer_h": 48,
    "ship_return_h": 7 * 24,
    "receipt_after_signed_h": 7 * 24,
    "receipt_without_tracking_h": 10 * 24,
    "escalate_h": 7 * 24,
    "confirm_replacement_h": 7 * 24,
    "refund_target_h": 24,
    "refund_alarm_h": 7 * 24,
    "refund_hard_alarm_h": 15 * 24,
}

DEFAULTS: dict = {
    "timers": DEFAULT_TIMERS,
    "reasons": SEED_REASONS,
    "return_address": None,
    "art17_recalculation": False,
    "free_shipping_threshold_fen": 9900,
    "standard_shipping_fen": 1000,
    "max_return_postage_fen": 2000,
    "reject_templates": ["商品已影响二次销售", "超出售后期限", "未提供有效凭证", "与描述问题不符"],
}


def aftersales_settings(merchant: Merchant) -> dict:
    """The merchant's settings over the defaults (a shallow overlay: callers read it, never change it)."""
    return settings_from(merchant.settings)


def settings_from(stored_settings: dict | None) -> dict:
    """`aftersales_settings` of a merchant's settings column."""
    stored = (stored_settings or {}).get("aftersales", {})
    return {**DEFAULTS, **stored, "timers": {**DEFAULT_TIMERS, **stored.get("timers", {})}}


def policy_of(merchant: Merchant) -> Policy:
    return policy_from(aftersales_settings(merchant), merchant.time_zone)


def policy_from(s: dict, time_zone: str) -> Policy:
    return Policy(time_zone=time_zone, art17_recalculation=bool(s["art17_recalculation"]),
                  free_shipping_threshold_fen=s["free_shipping_threshold_fen"],
                  standard_shipping_fen=s["standard_shipping_fen"], reasons=s["reasons"])


def timer(settings: dict, name: str) -> timedelta:
    return timedelta(hours=settings["timers"][name])
