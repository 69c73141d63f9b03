"""Rulebook §4 worked examples as table-driven tests of the pure money rules."""
from datetime import datetime, timezone

import pytest

from shopdesk.aftersales.rules import (Deduction, LineView, OrderView, Policy, QuoteRequest, TenderView,
                                       quote, return_window_end, split_over_tenders, threshold_of, unit_refund)
from shopdesk.core.money import apportion, round_half_up, share

UTC = timezone.utc
NOW = datetime(2026, 11, 6, 12, tzinfo=UTC)
SHIPPED = datetime(2026, 11, 2, 8, tzinfo=UTC)
SIGNED = datetime(2026, 11, 4, 9, tzinfo=UTC)


def o1(shipped: bool = True, refunded: dict | None = None, gift: bool = False) -> OrderView:
    """Order O1: A = 2 × 100.00, B = 1 × 50.00, coupon 满200减30, shipping 10.00, paid 230.00."""
    a_disc, b_disc = apportion(3000, [20000, 5000])
    lines = [
        LineView("A", "1", "A", 2, 10000, 20000 - a_disc),
        LineView("B", "2", "B", 1, 5000, 5000 - b_disc),
    ]
    if gift:
        lines.append(LineView("G", "3", "GIFT", 1, 0, 0, is_gift=True, declared_value_fen=1500))
    for ln in lines:
        if shipped:
            ln.shipped_at, ln.signed_at = SHIPPED, SIGNED
        if refunded and ln.id in refunded:
            ln.refunded_qty, ln.refunded_fen = refunded[ln.id]
    tenders = [TenderView("p1", "wechatpay", 20000), TenderView("p2", "balance", 3000)]
    if refunded:
        total = sum(v[1] for v in refunded.values())
        for t, part in zip(tenders, split_over_tenders(total, tenders)):
            t.refunded_fen = part.amount_fen
    return OrderView(lines, tenders, shipping_fee_fen=1000,
                     discounts=[{"kind": "coupon", "label": "满200减30", "amount_fen": 3000}])


def test_o1_apportionment():
    # Given O1, when the coupon is spread over lines, then A pays 176.00 and B 44.00
    assert apportion(3000, [20000, 5000]) == [2400, 600]
    order = o1()
    assert [ln.paid_fen for ln in order.lines] == [17600, 4400]
    assert sum(ln.paid_fen for ln in order.lines) + order.shipping_fee_fen == 23000


def test_cumulative_unit_rounding_never_drifts():
    # Given 3 × 33.33 with a 10.00 discount (paid 89.99), each next unit refunds 30.00, 29.99, 30.00
    line = LineView("X", "1", "X", 3, 3333, 8999)
    refunds = []
    for _ in range(3):
        r = unit_refund(line, 1)
        refunds.append(r)
        line.refunded_qty += 1
        line.refunded_fen += r
    assert refunds == [3000, 2999, 3000]
    assert sum(refunds) == 8999


@pytest.mark.parametrize("case, lines, expected", [
    ("refund_only whole order before shipping", [("A", 2), ("B", 1)], 23000),
    ("refund_only line B before shipping", [("B", 1)], 4400),
])
def test_refund_only_before_shipping(case, lines, expected):
    q = quote(o1(shipped=False), QuoteRequest("refund_only", "dont_want", lines), NOW, Policy())
    assert q.eligible, q.problems
    assert q.refund_fen == expected
    assert q.auto_approve


def test_return_refund_one_unit_goods_only():
    q = quote(o1(), QuoteRequest("return_refund", "no_reason_7d", [("A", 1)]), NOW, Policy())
    assert q.eligible and q.refund_fen == 8800 and q.shipping_refund_fen == 0


def test_art17_recalculation_when_threshold_broken():
    # 办法 Art. 17 on: one A returned leaves 150.00 of goods kept < 200.00 → refund 70.00
    q = quote(o1(), QuoteRequest("return_refund", "no_reason_7d", [("A", 1)]), NOW, Policy(art17_recalculation=True))
    assert q.refund_fen == 7000


def test_gift_and_lost_free_shipping_deductions():
    deductions = [Deduction("gift_not_returned", 1500), Deduction("lost_free_shipping", 1000)]
    q = quote(o1(gift=True), QuoteRequest("return_refund", "no_reason_7d", [("A", 1)], deductions=deductions),
              NOW, Policy())
    assert q.eligible, q.problems
    assert q.refund_fen == 6300 and not q.needs_consent


def test_negotiated_fee_needs_consent_and_is_refused_on_no_reason():
    fee = [Deduction("negotiated_fee", round_half_up(share(8800, 20, 100)))]
    q = quote(o1(), QuoteRequest("return_refund", "quality", [("A", 1)], deductions=fee), NOW, Policy())
    assert q.refund_fen == 7040 and q.needs_consent and q.eligible
    q = quote(o1(), QuoteRequest("return_refund", "no_reason_7d", [("A", 1)], deductions=fee), NOW, Policy())
    assert not q.eligible and q.problems[0].code == "deduction_not_allowed"


def test_split_over_tenders():
    tenders = [TenderView("p1", "wechatpay", 20000), TenderView("p2", "balance", 3000)]
    parts = split_over_tenders(8800, tenders)
    assert [(p.method, p.amount_fen) for p in parts] == [("wechatpay", 7652), ("balance", 1148)]
    # and the rest of the order returns each tender exactly what it paid
    tenders[0].refunded_fen, tenders[1].refunded_fen = 7652, 1148
    rest = split_over_tenders(23000 - 8800, tenders)
    assert [p.amount_fen for p in rest] == [20000 - 7652, 3000 - 1148]


def test_exchange_difference():
    q = quote(o1(), QuoteRequest("exchange", "wrong_choice", [("A", 1)], exchange_to_fen=11000), NOW, Policy())
    assert q.buyer_pays_fen == 2200 and q.refund_fen == 0
    q = quote(o1(), QuoteRequest("exchange", "wrong_choice", [("A", 1)], exchange_to_fen=8800), NOW, Policy())
    assert q.buyer_pays_fen == 0 and q.refund_fen == 0


def test_caps_after_earlier_refunds():
    order = o1(refunded={"A": (1, 8800), "B": (1, 4400)})
    ok = quote(order, QuoteRequest("compensation", "price_drop", [("A", 1), ("B", 1)], amount_fen=9800), NOW, Policy())
    assert ok.eligible, ok.problems
    too_much = quote(order, QuoteRequest("compensation", "price_drop", [("A", 1), ("B", 1)], amount_fen=10000),
                     NOW, Policy())
    assert not too_much.eligible
    assert too_much.problems[0].code == "amount_exceeds_refundable"


def test_seven_day_window_counts_from_the_day_after_signing():
    # Signed 2026-11-04 17:00 Shanghai → last day 11-11, window ends 11-12 00:00 Shanghai
    end = return_window_end(SIGNED, Policy())
    assert end.astimezone(UTC) == datetime(2026, 11, 11, 16, tzinfo=UTC)
    late = datetime(2026, 11, 11, 16, 0, 1, tzinfo=UTC)
    q = quote(o1(), QuoteRequest("return_refund", "no_reason_7d", [("A", 1)]), late, Policy())
    assert [p.code for p in q.problems] == ["outside_return_window"]
    q = quote(o1(), QuoteRequest("return_refund", "quality", [("A", 1)]), late, Policy())
    assert q.eligible


def test_art6_and_art7_exclusions():
    order = o1()
    order.lines[0].no_reason_return = "excluded_art6"
    q = quote(order, QuoteRequest("return_refund", "no_reason_7d", [("A", 1)]), NOW, Policy())
    assert [p.code for p in q.problems] == ["excluded_art6"]
    order.lines[0].no_reason_return = "excluded_art7"
    q = quote(order, QuoteRequest("return_refund", "no_reason_7d", [("A", 1)]), NOW, Policy())
    assert q.eligible  # 办法 Art. 20: not confirmed at purchase, so it may not be refused
    order.lines[0].art7_confirmed = True
    q = quote(order, QuoteRequest("return_refund", "no_reason_7d", [("A", 1)]), NOW, Policy())
    assert [p.code for p in q.problems] == ["excluded_art7"]


def test_open_case_and_quantity_caps():
    order = o1()
    order.lines[0].has_open_case = True
    q = quote(order, QuoteRequest("return_refund", "quality", [("A", 3)], photo_count=0), NOW, Policy())
    codes = {p.code for p in q.problems}
    assert codes == {"quantity_exceeds_available", "photo_required"}
    q = quote(order, QuoteRequest("return_refund", "quality", [("A", 1)], photo_count=1), NOW, Policy())
    assert [p.code for p in q.problems] == ["line_has_open_case"]


def test_threshold_parsing():
    assert threshold_of({"label": "满200减30"}) == 20000
    assert threshold_of({"label": "新人券"}) is None
