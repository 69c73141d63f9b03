"""The after-sales state machine (rulebook §5): a pure transition table, no I/O."""
from __future__ import annotations

from shopdesk.core.errors import IllegalTransition

TYPES = ("refund_only", "return_refund", "exchange", "reship", "compensation", "repair")
MONEY_TYPES = ("refund_only", "return_refund", "compensation")

STATUSES = (
    "requested", "offer_pending", "awaiting_return", "awaiting_receipt", "repairing", "awaiting_reship",
    "awaiting_buyer_confirm", "refunding", "refund_exception", "rejected", "escalated", "completed", "closed",
)
FINAL = ("completed", "closed")

GROUPS = {
    "pending_review": ("requested", "offer_pending"),
    "in_progress": ("awaiting_return", "awaiting_receipt", "repairing", "awaiting_reship",
                    "awaiting_buyer_confirm", "refunding", "refund_exception", "escalated"),
    "rejected": ("rejected",),
    "completed": ("completed",),
    "closed": ("closed",),
}


def group_of(status: str) -> str:
    return next(g for g, members in GROUPS.items() if status in members)


def after_approval(case_type: str) -> str:
    """Where an approved case goes: goods back first, money at once, or a new parcel out."""
    if case_type in ("return_refund", "exchange", "repair"):
        return "awaiting_return"
    if case_type in ("refund_only", "compensation"):
        return "refunding"
    return "awaiting_reship"


def after_receipt(case_type: str) -> str:
    return {"return_refund": "refunding", "exchange": "awaiting_reship", "repair": "repairing"}[case_type]


# action → {from_status: to_status or a function of the case type}
TRANSITIONS: dict[str, dict[str, object]] = {
    "approve": {"requested": after_approval},
    "auto_approve": {"requested": after_approval},
    "propose_offer": {"requested": "offer_pending"},
    "accept_offer": {"offer_pending": after_approval},
    "decline_offer": {"offer_pending": "requested"},
    "offer_expired": {"offer_pending": "requested"},
    "reject": {"requested": "rejected"},
    "cancel": {"requested": "closed", "offer_pending": "closed", "awaiting_return": "closed", "rejected": "closed"},
    "ship_return": {"awaiting_return": "awaiting_receipt"},
    "return_timeout": {"awaiting_return": "closed"},
    "receive": {"awaiting_receipt": after_receipt},
    "inspection_failed": {"awaiting_receipt": "rejected"},
    "repaired": {"repairing": "awaiting_reship"},
    "reship": {"awaiting_reship": "awaiting_buyer_confirm"},
    "confirm": {"awaiting_buyer_confirm": "completed"},
    "refunds_settled": {"refunding": "completed"},
    "refund_exception": {"refunding": "refund_exception"},
    "refund_retry": {"refund_exception": "refunding"},
    "resubmit": {"rejected": "requested"},
    "escalate": {"rejected": "escalated"},
    "escalation_expired": {"rejected": "closed"},
    "rule_for_buyer": {"escalated": after_approval},
    "rule_for_merchant": {"escalated": "closed"},
}


def next_status(action: str, status: str, case_type: str) -> str:
    """Return the status an action leads to, or raise illegal_transition."""
    target = TRANSITIONS.get(action, {}).get(status)
    if target is None:
        raise IllegalTransition(f"'{action}' is not allowed while the case is '{status}'",
                                extra={"status_now": status, "action": action})
    if callable(target):
        return target(case_type)
    return target  # type: ignore[return-value]


def allowed_actions(status: str) -> list[str]:
    return [a for a, moves in TRANSITIONS.items() if status in moves]


# Refund rows are written when money moves: on entering refunding (_start_refunds) and, for an
# exchange, at approval (the price difference). Before that a case has none to show.
BEFORE_MONEY = ("requested", "offer_pending", "awaiting_return", "awaiting_receipt")


def may_have_refunds(case) -> bool:
    """Whether a case can have refund rows yet (saves a read for the cases that cannot)."""
    return case.approved_at is not None and (case.type == "exchange" or case.status not in BEFORE_MONEY)
