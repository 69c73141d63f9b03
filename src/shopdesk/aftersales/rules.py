"""After-sales money and eligibility rules (rulebook §2–4): pure functions, no I/O."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from shopdesk.core.money import apportion, share

SEED_REASONS: dict[str, dict[str, str]] = {
    "no_reason_7d": {"label": "七天无理由", "label_en": "7-day no-reason return", "responsibility": "buyer"},
    "wrong_choice": {"label": "型号/参数选错", "label_en": "Wrong model or spec chosen", "responsibility": "buyer"},
    "dont_want": {"label": "不想要了", "label_en": "No longer wanted", "responsibility": "buyer"},
    "quality": {"label": "质量问题", "label_en": "Quality problem", "responsibility": "merchant"},
    "not_as_described": {"label": "与商品描述不符", "label_en": "Not as described", "responsibility": "merchant"},
    "damaged": {"label": "收到商品破损", "label_en": "Arrived damaged", "responsibility": "merchant"},
    "missing_item": {"label": "少件/漏发", "label_en": "Item missing", "responsibility": "merchant"},
    "wrong_item": {"label": "发错货", "label_en": "Wrong item sent", "responsibility": "merchant"},
    "not_received": {"label": "未收到货", "label_en": "Not received", "responsibility": "undetermined"},
    "price_drop": {"label": "商品降价", "label_en": "Price dropped", "responsibility": "merchant"},
    "other": {"label": "其他", "label_en": "Other", "responsibility": "undetermined"},
}

# Buyer-side reasons mean the goods themselves are fine: they must come back before money does.
BUYER_REASONS_NEED_RETURN = ("no_reason_7d", "wrong_choice", "dont_want")
PHOTO_TYPES = ("return_refund", "exchange", "reship")

DEDUCTION_TYPES = {
    "gift_not_returned": False,
    "lost_free_shipping": False,
    "card_fee": False,
    "return_pickup_fee": True,
    "negotiated_fee": True,
}


@dataclass
class LineView:
    id: str
    line_no: str
    sku: str
    quantity: int
    unit_price_fen: int
    paid_fen: int
    refunded_fen: int = 0
    refunded_qty: int = 0
    is_gift: bool = False
    declared_value_fen: int | None = None
    art7_confirmed: bool = False
    no_reason_return: str = "allowed"
    shipped_at: datetime | None = None
    signed_at: datetime | None = None
    has_open_case: bool = False
    case_count: int = 0


@dataclass
class TenderView:
    id: str
    method: str
    amount_fen: int
    refunded_fen: int = 0


@dataclass
class OrderView:
    lines: list[LineView]
    tenders: list[TenderView]
    shipping_fee_fen: int = 0
    shipping_refunded_fen: int = 0
    discounts: list[dict] = field(default_factory=list)


@dataclass
class Policy:
    time_zone: str = "Asia/Shanghai"
    window_days: int = 7
    fallback_days: int = 10
    art17_recalculation: bool = False
    free_shipping_threshold_fen: int = 9900
    standard_shipping_fen: int = 1000
    reasons: dict[str, dict[str, str]] = field(default_factory=lambda: dict(SEED_REASONS))


@dataclass
class Deduction:
    type: str
    amount_fen: int
    note: str = ""


@dataclass
class QuoteRequest:
    type: str
    reason: str
    lines: list[tuple[str, int]]
    exchange_to_fen: int = 0  # price of the replacement goods
    amount_fen: int | None = None
    deductions: list[Deduction] = field(default_factory=list)
    photo_count: int | None = None  # None: not checked (a quote before upload)


@dataclass
class Problem:
    code: str
    detail: str
    field: str | None = None


@dataclass
class QuoteLine:
    order_line_id: str
    quantity: int
    refund_fen: int


@dataclass
class Tender:
    payment_id: str
    method: str
    amount_fen: int


@dataclass
class Quote:
    eligible: bool
    goods_refund_fen: int
    shipping_refund_fen: int
    deductions_fen: int
    refund_fen: int
    buyer_pays_fen: int
    lines: list[QuoteLine]
    tenders: list[Tender]
    problems: list[Problem]
    responsibility: str
    auto_approve: bool = False
    needs_consent: bool = False
    flags: list[str] = field(default_factory=list)


def unit_refund(line: LineView, quantity: int) -> int:
    """Refund for the next `quantity` units, cumulative so it never drifts (rulebook 4.2)."""
    return share(line.paid_fen, line.refunded_qty + quantity, line.quantity) - line.refunded_fen


def split_over_tenders(amount: int, tenders: list[TenderView]) -> list[Tender]:
    """Split a refund over tenders in proportion to what each paid (原路退款, 办法 Art. 14).

    Cumulative over all refunds of the order, remainder to the last, so a full refund returns
    each tender exactly what it paid.
    """
    if not tenders or amount <= 0:
        return []
    paid_total = sum(t.amount_fen for t in tenders)
    after = sum(t.refunded_fen for t in tenders) + amount
    parts: list[int] = []
    for t in tenders[:-1]:
        target = share(after, t.amount_fen, paid_total) - t.refunded_fen
        parts.append(max(0, min(target, t.amount_fen - t.refunded_fen)))
    parts.append(amount - sum(parts))
    # Rounding or earlier odd refunds can push the last tender past what it has left: move the excess.
    room = [t.amount_fen - t.refunded_fen - p for t, p in zip(tenders, parts)]
    for i in range(len(tenders) - 1, -1, -1):
        if room[i] < 0:
            excess = -room[i]
            parts[i] -= excess
            room[i] = 0
            for j in range(len(tenders)):
                take = min(excess, room[j])
                if take > 0:
                    parts[j] += take
                    room[j] -= take
                    excess -= take
    return [Tender(t.id, t.method, p) for t, p in zip(tenders, parts) if p > 0]


def threshold_of(discount: dict) -> int | None:
    """Return a 满减 discount's threshold in fen, from its field or its label (满200减30)."""
    if discount.get("threshold_fen"):
        return int(discount["threshold_fen"])
    match = re.search(r"满\s*(\d+(?:\.\d+)?)\s*减", discount.get("label") or "")
    if match:
        return int(round(float(match.group(1)) * 100))
    return None


def return_window_end(signed_at: datetime, policy: Policy) -> datetime:
    """End of the 7th calendar day after signing, in the merchant's zone (办法 Art. 10)."""
    zone = ZoneInfo(policy.time_zone)
    signed_day: date = signed_at.astimezone(zone).date()
    last_day = signed_day + timedelta(days=policy.window_days)
    return datetime.combine(last_day + timedelta(days=1), time(0), tzinfo=zone)


def check_deductions(deductions: list[Deduction], reason: str, order: OrderView, gross: int,
                     policy: Policy) -> tuple[list[Problem], bool]:
    """Check typed deductions (rulebook 4.3); return problems and whether buyer consent is needed."""
    problems: list[Problem] = []
    needs_consent = False
    gift_value = sum((ln.declared_value_fen or 0) * ln.quantity for ln in order.lines if ln.is_gift)
    for i, d in enumerate(deductions):
        where = f"deductions[{i}]"
        if d.type not in DEDUCTION_TYPES:
            problems.append(Problem("deduction_not_allowed", f"unknown deduction type '{d.type}'", f"{where}.type"))
            continue
        if d.amount_fen <= 0:
            problems.append(Problem("validation_failed", "a deduction must be positive", f"{where}.amount_fen"))
        needs_consent |= DEDUCTION_TYPES[d.type]
        if d.type == "negotiated_fee" and reason == "no_reason_7d":
            problems.append(Problem("deduction_not_allowed",
                                    "no service fee on a 7-day no-reason return of intact goods", f"{where}.type"))
        if d.type == "gift_not_returned" and d.amount_fen > gift_value:
            problems.append(Problem("deduction_not_allowed",
                                    f"gift deduction above the gifts' declared value {gift_value}", f"{where}.amount_fen"))
        if d.type == "lost_free_shipping" and d.amount_fen > policy.standard_shipping_fen:
            problems.append(Problem("deduction_not_allowed",
                                    f"lost free shipping above the standard fee {policy.standard_shipping_fen}",
                                    f"{where}.amount_fen"))
    if sum(d.amount_fen for d in deductions) > gross:
        problems.append(Problem("deduction_not_allowed", "deductions exceed the refund", "deductions"))
    return problems, needs_consent


def quote(order: OrderView, req: QuoteRequest, now: datetime, policy: Policy) -> Quote:
    """Work out eligibility and money for a requested case, without changing anything."""
    problems: list[Problem] = []
    flags: list[str] = []
    reason = policy.reasons.get(req.reason)
    if reason is None:
        problems.append(Problem("unknown_reason", f"unknown reason '{req.reason}'", "reason"))
    responsibility = reason["responsibility"] if reason else "undetermined"
    by_id = {ln.id: ln for ln in order.lines}

    chosen: list[tuple[LineView, int]] = []
    seen: set[str] = set()
    if not req.lines:
        problems.append(Problem("validation_failed", "choose at least one order line", "lines"))
    for i, (line_id, qty) in enumerate(req.lines):
        line = by_id.get(line_id)
        if line is None:
            problems.append(Problem("unknown_line", f"no line '{line_id}' on this order", f"lines[{i}].order_line_id"))
            continue
        if line_id in seen:
            problems.append(Problem("validation_failed", "a line is listed twice", f"lines[{i}].order_line_id"))
            continue
        seen.add(line_id)
        available = line.quantity if req.type in ("compensation", "reship", "repair") else line.quantity - line.refunded_qty
        if qty < 1 or qty > available:
            problems.append(Problem("quantity_exceeds_available",
                                    f"quantity must be between 1 and {available}", f"lines[{i}].quantity"))
            continue
        if line.has_open_case:
            problems.append(Problem("line_has_open_case", f"line {line.line_no} already has an open case",
                                    f"lines[{i}].order_line_id"))
        if line.case_count >= 5:
            problems.append(Problem("line_case_limit", f"line {line.line_no} has had 5 cases already",
                                    f"lines[{i}].order_line_id"))
        chosen.append((line, qty))

    shipped = [ln for ln, _ in chosen if ln.shipped_at is not None]
    auto_approve = False
    if req.type == "refund_only":
        if not shipped:
            auto_approve = True
        elif req.reason in BUYER_REASONS_NEED_RETURN:
            problems.append(Problem("return_required", "shipped goods must come back: choose return_refund", "type"))
    elif req.type in ("return_refund", "exchange", "reship", "repair"):
        for ln, _ in chosen:
            if ln.shipped_at is None:
                problems.append(Problem("not_shipped", f"line {ln.line_no} has not been shipped", "lines"))

    if req.reason == "no_reason_7d" and req.type in ("return_refund", "exchange", "refund_only") and shipped:
        for ln, _ in chosen:
            if ln.no_reason_return == "excluded_art6":
                problems.append(Problem("excluded_art6", f"{ln.sku} is excluded from no-reason returns (办法 Art. 6)", "reason"))
            elif ln.no_reason_return == "excluded_art7" and ln.art7_confirmed:
                problems.append(Problem("excluded_art7",
                                        f"the buyer confirmed {ln.sku} is excluded at purchase (办法 Art. 7)", "reason"))
            signed = ln.signed_at
            if signed is None and ln.shipped_at is not None:
                # No signing time known: assume shipped + 10 days and flag the case.
                signed = ln.shipped_at + timedelta(days=policy.fallback_days)
                if "signed_at_estimated" not in flags:
                    flags.append("signed_at_estimated")
            if signed is not None and now >= return_window_end(signed, policy):
                problems.append(Problem("outside_return_window",
                                        "the 7-day no-reason window has ended (办法 Art. 10)", "reason"))

    if (req.photo_count is not None and req.type in PHOTO_TYPES and responsibility == "merchant"
            and req.photo_count < 1):
        problems.append(Problem("photo_required", "a merchant-fault reason needs at least one photo", "photo_ids"))

    quote_lines: list[QuoteLine] = []
    goods = 0
    shipping = 0
    buyer_pays = 0
    remaining_tenders = sum(t.amount_fen - t.refunded_fen for t in order.tenders)
    shipping_left = order.shipping_fee_fen - order.shipping_refunded_fen

    if req.type in ("refund_only", "return_refund"):
        for ln, qty in chosen:
            quote_lines.append(QuoteLine(ln.id, qty, unit_refund(ln, qty)))
        if policy.art17_recalculation:
            quote_lines = _art17(order, chosen, quote_lines)
        goods = sum(q.refund_fen for q in quote_lines)
        whole_order = all(
            any(ln.id == c.id and qty == ln.quantity - ln.refunded_qty for c, qty in chosen)
            for ln in order.lines if ln.quantity > ln.refunded_qty)
        if req.type == "refund_only" and not shipped and whole_order and shipping_left > 0:
            shipping = shipping_left  # before shipping, the whole order refunds its postage (once)
    elif req.type == "compensation":
        if not req.amount_fen or req.amount_fen <= 0:
            problems.append(Problem("validation_failed", "compensation needs a positive amount_fen", "amount_fen"))
        else:
            room = min(remaining_tenders,
                       sum(ln.paid_fen - ln.refunded_fen for ln, _ in chosen) + shipping_left)
            if req.amount_fen > room:
                problems.append(Problem("amount_exceeds_refundable",
                                        f"at most {room} fen can still be refunded", "amount_fen"))
            goods = req.amount_fen
            parts = apportion(goods, [max(ln.paid_fen - ln.refunded_fen, 0) for ln, _ in chosen]) if chosen else []
            quote_lines = [QuoteLine(ln.id, qty, p) for (ln, qty), p in zip(chosen, parts)]
    elif req.type == "exchange":
        returned = sum(unit_refund(ln, qty) for ln, qty in chosen)
        quote_lines = [QuoteLine(ln.id, qty, 0) for ln, qty in chosen]
        difference = req.exchange_to_fen - returned
        if req.exchange_to_fen and difference > 0:
            buyer_pays = difference
        elif req.exchange_to_fen and difference < 0:
            goods = -difference
    else:
        quote_lines = [QuoteLine(ln.id, qty, 0) for ln, qty in chosen]

    gross = goods + shipping
    ded_problems, needs_consent = check_deductions(req.deductions, req.reason, order, gross, policy)
    problems.extend(ded_problems)
    deductions_fen = sum(d.amount_fen for d in req.deductions)
    refund = max(gross - deductions_fen, 0)
    if refund > remaining_tenders and not any(p.code == "amount_exceeds_refundable" for p in problems):
        problems.append(Problem("amount_exceeds_refundable",
                                f"at most {remaining_tenders} fen can still be refunded", "lines"))
    tenders = split_over_tenders(min(refund, remaining_tenders), order.tenders)
    return Quote(eligible=not problems, goods_refund_fen=goods, shipping_refund_fen=shipping,
                 deductions_fen=deductions_fen, refund_fen=refund, buyer_pays_fen=buyer_pays,
                 lines=quote_lines, tenders=tenders, problems=problems, responsibility=responsibility,
                 auto_approve=auto_approve and not needs_consent, needs_consent=needs_consent, flags=flags)


def _art17(order: OrderView, chosen: list[tuple[LineView, int]], proportional: list[QuoteLine]) -> list[QuoteLine]:
    """办法 Art. 17: when a partial return breaks a 满减 threshold, settle kept goods at purchase prices."""
    thresholds = [t for t in (threshold_of(d) for d in order.discounts) if t]
    if not thresholds:
        return proportional
    taking = {ln.id: qty for ln, qty in chosen}
    kept_list = sum((ln.quantity - ln.refunded_qty - taking.get(ln.id, 0)) * ln.unit_price_fen for ln in order.lines)
    if kept_list == 0 or kept_list >= min(thresholds):
        return proportional
    paid_left = sum(ln.paid_fen - ln.refunded_fen for ln in order.lines)
    total = max(paid_left - kept_list, 0)
    total = min(total, sum(q.refund_fen for q in proportional))
    parts = apportion(total, [q.refund_fen for q in proportional])
    return [QuoteLine(q.order_line_id, q.quantity, p) for q, p in zip(proportional, parts)]
