"""The PostgreSQL fast path (`shopdesk.aftersales.fast`) writes and answers exactly what the `do_*` actions do.

On PostgreSQL the routes for create, approve, ship-return, receive and the manual refund confirmation first try
`fast.create`, `fast.case_action` or `fast.confirm_refund`, which write with fixed SQL; anything unusual raises
`fast.Slow` and the route runs the `do_*` instead. Here:

1. one complete return_refund flow runs once with the fast path and once with it switched off (a merchant with
   two webhooks, a shopper with an email address); every answer and every row the flow writes must be equal
   once ids and public numbers are replaced by names of what they stand for. The clock is frozen and moved the
   same way in both runs, so timestamps are compared as they are;
2. each unusual request, with the fast path on, falls back and gets the answer it gets with the path off,
   and writes nothing;
3. two cases on one order received at the same moment keep the order's and the payments' refund totals equal
   to the refund rows, both ways.
"""
from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, inspect, select

from shopdesk.accounts.models import Merchant, Staff
from shopdesk.aftersales import fast
from shopdesk.aftersales.models import AftersaleCase, AftersaleEvent, AftersaleLine, CaseShipment, Upload
from shopdesk.core.db import transaction
from shopdesk.core.outbox import OutboxItem
from shopdesk.core.ratelimit import reset as reset_rate_limits
from shopdesk.core.records import AuditLog
from shopdesk.core.records import Counter as NumberCounter
from shopdesk.customers.models import Customer
from shopdesk.notifications.models import Webhook
from shopdesk.orders.models import Order, OrderLine, Payment, Shipment
from shopdesk.refunds.models import Refund
from tests.conftest import BACKEND, T0
from tests.factories import count_queries, make_shop
from tests.integration.aftersales.test_quote import line_id

ON_POSTGRES = BACKEND == "postgres"
needs_postgres = pytest.mark.skipif(not ON_POSTGRES, reason="the fast path exists on PostgreSQL only "
                                                            "(SHOPDESK_TEST_DB=postgres)")

HOOKS = (("https://hooks.example.test/all", ["aftersales.*"]),
         ("https://hooks.example.test/money", ["aftersales.receive", "aftersales.refunds_settled"]))
# The flow starts an odd moment after set-up, and each step comes an odd while after the one before:
# microseconds that a write through JSON could lose, and hours that stay inside every deadline and the
# staff token's 12 hours.
FLOW_START = T0 + timedelta(hours=1, microseconds=250_001)
PAUSES = {"approve": timedelta(hours=1, minutes=13, microseconds=123_457),
          "ship-return": timedelta(hours=2, seconds=7, microseconds=900_001),
          "receive": timedelta(hours=3, microseconds=5),
          "confirm": timedelta(minutes=41, microseconds=654_321)}
WRITES = re.compile(r'^\s*(INSERT INTO|UPDATE|DELETE FROM) "?(aftersale_case|aftersale_line|aftersale_event|'
                    r'case_shipment|refund|outbox|audit_log|order_line|payment|order|counter)\b', re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------------
# Which path served a request
# --------------------------------------------------------------------------------------------------------------
class FastCalls:
    """Wraps fast.create / fast.case_action / fast.confirm_refund: which steps it served, which it handed back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.served: Counter[str] = Counter()
        self.slow: Counter[str] = Counter()
        for name in ("create", "case_action", "confirm_refund"):
            monkeypatch.setattr(fast, name, self._wrap(name, getattr(fast, name)))

    def _wrap(self, name, real):
        async def wrapper(*args, **kwargs):
            step = {"create": "create", "confirm_refund": "confirm"}.get(name) or args[2]  # case_action's action
            try:
                result = await real(*args, **kwargs)
            except fast.Slow:
                self.slow[step] += 1
                raise
            self.served[step] += 1
            return result

        return wrapper

    def clear(self) -> None:
        self.served.clear()
        self.slow.clear()


def switch_off_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "enabled", lambda session: False)


# --------------------------------------------------------------------------------------------------------------
# Normalising: ids and public numbers become names of what they stand for
# --------------------------------------------------------------------------------------------------------------
ANY_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
ANY_REFUND_NO = re.compile(r"RF[0-9a-f]{30}")
ANY_CASE_NO = re.compile(r"AS\d{8}-\d{4}")


def normalise(value, names: dict[str, str] | None = None):
    """Replace known ids by their names (then any other id or number by a generic one); datetimes to ISO text."""
    if isinstance(value, dict):
        return {k: normalise(v, names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v, names) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, str):
        if names:
            pattern = re.compile("|".join(re.escape(k) for k in sorted(names, key=len, reverse=True)))
            value = pattern.sub(lambda m: names[m.group(0)], value)
        value = ANY_REFUND_NO.sub("<refund_no>", value)
        value = ANY_CASE_NO.sub("<case_no>", value)
        return ANY_ID.sub("<id>", value)
    return value


def answer_of(body):
    """A case's refunds come in created_at order, and a step's refunds share one instant: compare by method."""
    if isinstance(body, dict) and isinstance(body.get("refunds"), list):
        body = {**body, "refunds": sorted(body["refunds"], key=lambda r: r["method"])}
    return body


def differences(fast_value, slow_value, path: str = "") -> list[str]:
    """Where two normalised values differ, as `path: fast … ≠ slow …` lines (for a readable failure)."""
    if isinstance(fast_value, dict) and isinstance(slow_value, dict):
        return [line for key in sorted(set(fast_value) | set(slow_value), key=str)
                for line in differences(fast_value.get(key, "<absent>"), slow_value.get(key, "<absent>"),
                                        f"{path}.{key}")]
    if isinstance(fast_value, (list, tuple)) and isinstance(slow_value, (list, tuple)) \
            and len(fast_value) == len(slow_value):
        return [line for i, (f, s) in enumerate(zip(fast_value, slow_value))
                for line in differences(f, s, f"{path}[{i}]")]
    if isinstance(fast_value, list) and isinstance(slow_value, list):
        only_fast = [row for row in fast_value if row not in slow_value]
        only_slow = [row for row in slow_value if row not in fast_value]
        return [f"{path}: {len(fast_value)} fast ≠ {len(slow_value)} slow; only fast: {only_fast!r}; "
                f"only slow: {only_slow!r}"]
    return [] if fast_value == slow_value else [f"{path}: fast {fast_value!r} ≠ slow {slow_value!r}"]


def ordered(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, ensure_ascii=False))


def as_dict(obj) -> dict:
    return {attr.key: getattr(obj, attr.key) for attr in inspect(type(obj)).column_attrs}


async def merchant_id_of(shop) -> str:
    async with transaction() as session:
        return (await session.execute(select(Merchant.id).where(Merchant.slug == shop.slug))).scalar_one()


async def rows_written(merchant_id: str, since: datetime) -> dict[str, list[dict]]:
    """Every row of the merchant in the tables a flow writes (audit and outbox rows from `since` on)."""
    tables = {
        "aftersale_case": select(AftersaleCase).where(AftersaleCase.merchant_id == merchant_id),
        "aftersale_line": select(AftersaleLine).where(AftersaleLine.merchant_id == merchant_id),
        "aftersale_event": select(AftersaleEvent).where(AftersaleEvent.merchant_id == merchant_id),
        "case_shipment": select(CaseShipment).where(CaseShipment.merchant_id == merchant_id),
        "audit_log": select(AuditLog).where(AuditLog.merchant_id == merchant_id, AuditLog.at >= since),
        "outbox": select(OutboxItem).where(OutboxItem.merchant_id == merchant_id, OutboxItem.created_at >= since),
        "refund": select(Refund).where(Refund.merchant_id == merchant_id),
        "order": select(Order).where(Order.merchant_id == merchant_id),
        "order_line": select(OrderLine).where(OrderLine.merchant_id == merchant_id),
        "payment": select(Payment).where(Payment.merchant_id == merchant_id),
        "counter": select(NumberCounter).where(NumberCounter.merchant_id == merchant_id),
    }
    async with transaction() as session:
        return {name: [as_dict(o) for o in (await session.execute(stmt)).scalars()] for name, stmt in tables.items()}


async def names_of(merchant_id: str, slug: str) -> dict[str, str]:
    """Each id and public number of the merchant's world → a name that is the same in every run."""
    names = {merchant_id: "<merchant>", slug: "<slug>"}
    async with transaction() as session:
        def each(model, *where):
            return session.execute(select(model).where(model.merchant_id == merchant_id, *where))

        for st in (await each(Staff)).scalars():
            names[st.id] = f"<staff:{st.role}>"
        for cu in (await each(Customer)).scalars():
            names[cu.id] = f"<customer:{cu.external_id}>"
        for order in (await each(Order)).scalars():
            names[order.id] = f"<order:{order.order_no}>"
        for ln in (await each(OrderLine)).scalars():
            names[ln.id] = f"<order_line:{ln.sku}>"
        for p in (await each(Payment)).scalars():
            names[p.id] = f"<payment:{p.method}>"
            names[p.trade_no] = f"<trade_no:{p.method}>"
        for case in (await each(AftersaleCase)).scalars():
            names[case.id] = f"<case:{case.type}>"
            names[case.case_no] = f"<case_no:{case.type}>"
        for ln in (await each(AftersaleLine)).scalars():
            names[ln.id] = f"<case_line:{ln.position}>"
        for r in (await each(Refund)).scalars():
            names[r.id] = f"<refund:{r.method}>"
            names[r.refund_no] = f"<refund_no:{r.method}>"
        for sh in (await each(Shipment)).scalars():
            names[sh.tracking_no] = f"<tracking_no:{sh.carrier}>"
        for w in (await each(Webhook)).scalars():
            names[w.id] = f"<webhook:{w.url}>"
        for n, u in enumerate((await each(Upload)).scalars()):
            names[u.id] = f"<upload:{n}>"
    return names


# --------------------------------------------------------------------------------------------------------------
# 1. One complete return_refund flow, fast and slow
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    answers: list  # (step, status, body) of each request
    rows: list  # (step, {table: rows}) after each request
    orm_writes: list[str]  # the INSERT/UPDATE statements sent through SQLAlchemy during the steps


async def given_a_merchant_with_webhooks_and_a_shopper_with_email(client, frozen_clock):
    frozen_clock.freeze(T0)
    shop = await make_shop(client)
    for url, events in HOOKS:
        r = await shop.post("/webhooks", {"url": url, "events": events, "secret": "whsec-123456"},
                            token=shop.admin_token)
        assert r.status_code == 201, r.text
    order = await shop.order(email=f"buyer-{shop.slug}@example.com")
    reset_rate_limits()
    buyer = await shop.shopper(order)
    return shop, order, buyer


async def run_return_flow(client, frozen_clock, *, reason: str, lines: list[tuple[str, int]], photo: bool) -> Run:
    """create → approve → ship-return → receive → confirm each refund (and one again); then read case and order.

    The rows are read after every step, so a column one step writes wrongly and a later step overwrites
    still shows.
    """
    shop, order, buyer = await given_a_merchant_with_webhooks_and_a_shopper_with_email(client, frozen_clock)
    merchant_id = await merchant_id_of(shop)
    photo_ids = [await shop.photo(buyer)] if photo else []
    answers: list = []
    rows: list = []

    async def keep(step: str, r, status: int) -> dict:
        assert r.status_code == status, (step, r.text)
        answers.append((step, r.status_code, answer_of(r.json())))
        rows.append((step, await rows_written(merchant_id, FLOW_START)))
        return r.json()

    frozen_clock.freeze(FLOW_START)
    with count_queries() as seen:
        body = {"order_id": order["id"], "type": "return_refund", "reason": reason, "description": "耳机左耳没声音",
                "lines": [{"order_line_id": line_id(order, sku), "quantity": q} for sku, q in lines],
                "photo_ids": photo_ids}
        case = await keep("create", await shop.post("/aftersales", body, token=buyer), 201)
        frozen_clock.advance(PAUSES["approve"])
        case = await keep("approve", await shop.post(f"/aftersales/{case['id']}/approve", {"note": "同意退货"},
                                                     token=shop.agent_token), 200)
        frozen_clock.advance(PAUSES["ship-return"])
        case = await keep("ship-return", await shop.post(f"/aftersales/{case['id']}/ship-return",
                                                         {"carrier": "yuantong", "tracking_no": "YTR-0001-2345"},
                                                         token=buyer), 200)
        frozen_clock.advance(PAUSES["receive"])
        case = await keep("receive", await shop.post(f"/aftersales/{case['id']}/receive",
                                                     {"outcome": "ok", "note": "验货通过"}, token=shop.agent_token),
                          200)
        refunds = sorted(case["refunds"], key=lambda r: r["method"])
        for refund in refunds:
            frozen_clock.advance(PAUSES["confirm"])
            await keep(f"confirm {refund['method']}", await shop.post(
                f"/refunds/{refund['refund_no']}/confirm", {"reference": f"BANK-{refund['method']}"},
                token=shop.agent_token), 200)
        # Confirming a settled refund again answers the refund as it is.
        await keep("confirm again", await shop.post(f"/refunds/{refunds[0]['refund_no']}/confirm",
                                                    {"reference": "BANK-again"}, token=shop.agent_token), 200)
    orm_writes = [s for s in seen if WRITES.match(s)]
    await keep("case", await shop.get(f"/aftersales/{case['id']}", token=shop.agent_token), 200)
    await keep("case for the shopper", await shop.get(f"/aftersales/{case['id']}", token=buyer), 200)
    await keep("order", await shop.get(f"/orders/{order['id']}"), 200)

    names = await names_of(merchant_id, shop.slug)
    return Run(normalise(answers, names),
               [(step, {table: ordered(normalise(found, names)) for table, found in tables.items()})
                for step, tables in rows], orm_writes)


FLOWS = {  # name → (the flow, the (responsibility, refund_fen) it ends with)
    # The bench's flow: one unit back for no reason, the shopper pays the way back.
    "no_reason_one_unit": ({"reason": "no_reason_7d", "lines": [("A", 1)], "photo": False}, ("buyer", 8800)),
    # The merchant's fault, every line back, with a photo (after shipping the shipping fee stays paid).
    "quality_whole_order": ({"reason": "quality", "lines": [("A", 2), ("B", 1)], "photo": True},
                            ("merchant", 22000)),
}


@pytest.mark.postgres_only
@needs_postgres
@pytest.mark.parametrize("flow", FLOWS)
async def test_a_return_flow_writes_and_answers_the_same_with_and_without_the_fast_path(
        client, frozen_clock, monkeypatch, flow):
    steps, expected_end = FLOWS[flow]
    calls = FastCalls(monkeypatch)

    # Given the same merchant, shopper and order twice, when the whole flow runs with the fast path
    fast_run = await run_return_flow(client, frozen_clock, **steps)
    served_fast, slow_fast = Counter(calls.served), Counter(calls.slow)
    # and again with the fast path switched off
    calls.clear()
    switch_off_fast_path(monkeypatch)
    slow_run = await run_return_flow(client, frozen_clock, **steps)

    # Then the fast run was served by the fast path (the repeated confirmation falls back), through no ORM write,
    assert served_fast == {"create": 1, "approve": 1, "ship-return": 1, "receive": 1, "confirm": 2}
    assert slow_fast == {"confirm": 1}
    assert fast_run.orm_writes == []
    # and the slow run never tried it and wrote through the ORM
    assert not calls.served and not calls.slow
    assert len(slow_run.orm_writes) >= 6

    # and the flow did what a return does (so the comparison below is not of empty tables)
    final = {step: body for step, _, body in slow_run.answers}
    assert final["case"]["status"] == "completed" and len(final["case"]["refunds"]) == 2
    assert all(r["status"] == "succeeded" for r in final["case"]["refunds"])
    assert (final["case"]["responsibility"], final["case"]["refund_fen"]) == expected_end
    written = slow_run.rows[-1][1]
    kinds = Counter(row["kind"] for row in written["outbox"])
    assert kinds == {"email": 5, "webhook": 5 + 2}  # create, approve, ship, receive, settled; the money hook twice
    assert len(written["aftersale_event"]) == 5 and len(written["refund"]) == 2 and len(written["audit_log"]) == 9

    # and every answer is the same, step by step,
    assert [a[0] for a in fast_run.answers] == [a[0] for a in slow_run.answers]
    for fast_answer, slow_answer in zip(fast_run.answers, slow_run.answers):
        assert fast_answer == slow_answer, "\n".join(differences(fast_answer, slow_answer, fast_answer[0]))
    # and so is every row written, after every step
    for (step, fast_rows), (_, slow_rows) in zip(fast_run.rows, slow_run.rows):
        for table in slow_rows:
            assert fast_rows[table] == slow_rows[table], "\n".join(
                differences(fast_rows[table], slow_rows[table], f"after {step}: {table}"))


# --------------------------------------------------------------------------------------------------------------
# 2. Unusual requests fall back to the do_* and get its answer
# --------------------------------------------------------------------------------------------------------------
async def footprint(*merchant_ids: str) -> dict:
    """How much the merchants have written: any write by a refused request shows here."""
    async with transaction() as session:
        async def count(model, column=None):
            what = func.coalesce(func.sum(column), 0) if column is not None else func.count()
            return (await session.execute(select(what).select_from(model)
                                          .where(model.merchant_id.in_(merchant_ids)))).scalar_one()

        return {"cases": await count(AftersaleCase), "versions": await count(AftersaleCase, AftersaleCase.version),
                "case_lines": await count(AftersaleLine), "events": await count(AftersaleEvent),
                "parcels": await count(CaseShipment), "audit": await count(AuditLog), "outbox": await count(OutboxItem),
                "refunds": await count(Refund), "refunded": await count(OrderLine, OrderLine.refunded_fen),
                "numbers": await count(NumberCounter, NumberCounter.value)}


async def new_case(shop, *, approved: bool = False, shipped: bool = False, n: int = 0):
    """A fresh order with a return_refund case on one unit of A (optionally approved, and sent back)."""
    order = await shop.order(email=f"s{n}-{shop.slug}@example.com")
    reset_rate_limits()
    buyer = await shop.shopper(order)
    body = {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}]}
    r = await shop.post("/aftersales", body, token=buyer)
    assert r.status_code == 201, r.text
    case = r.json()
    if approved or shipped:
        r = await shop.post(f"/aftersales/{case['id']}/approve", {}, token=shop.agent_token)
        assert r.status_code == 200, r.text
    if shipped:
        r = await shop.post(f"/aftersales/{case['id']}/ship-return",
                            {"carrier": "zto", "tracking_no": "ZT-RETURN-0001"}, token=buyer)
        assert r.status_code == 200, r.text
    return order, buyer, r.json()


# Each: given (shop, other_shop, n) → (the fast step tried, path, body, token), made afresh for each path.
async def approve_in_the_wrong_state(shop, other, n):
    _, _, case = await new_case(shop, approved=True, n=n)
    return "approve", f"/aftersales/{case['id']}/approve", {}, shop.agent_token


async def approve_with_a_stale_version(shop, other, n):
    _, _, case = await new_case(shop, n=n)
    return "approve", f"/aftersales/{case['id']}/approve", {"expected_version": case["version"] + 1}, shop.agent_token


async def approve_by_another_merchants_staff(shop, other, n):
    _, _, case = await new_case(shop, n=n)
    return "approve", f"/aftersales/{case['id']}/approve", {}, other.agent_token


async def approve_by_the_shopper(shop, other, n):
    _, buyer, case = await new_case(shop, n=n)
    return "approve", f"/aftersales/{case['id']}/approve", {}, buyer


async def ship_return_by_another_shopper(shop, other, n):
    _, _, case = await new_case(shop, approved=True, n=n)
    stranger_order = await shop.order(external_id=f"stranger-{n}")
    reset_rate_limits()
    stranger = await shop.shopper(stranger_order)
    return "ship-return", f"/aftersales/{case['id']}/ship-return", {"carrier": "zto", "tracking_no": "ZT-X-0001"}, \
        stranger


def return_of_line_a(order, quantity: int) -> dict:
    return {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": quantity}]}


async def create_on_another_shoppers_order(shop, other, n):
    order = await shop.order(email=f"s{n}-{shop.slug}@example.com")
    stranger_order = await shop.order(external_id=f"stranger-{n}")
    reset_rate_limits()
    return "create", "/aftersales", return_of_line_a(order, 1), await shop.shopper(stranger_order)


async def create_more_than_was_bought(shop, other, n):
    order = await shop.order(email=f"s{n}-{shop.slug}@example.com")
    reset_rate_limits()
    return "create", "/aftersales", return_of_line_a(order, 3), await shop.shopper(order)


async def receive_with_failed_inspection(shop, other, n):
    _, _, case = await new_case(shop, shipped=True, n=n)
    return "receive", f"/aftersales/{case['id']}/receive", {"outcome": "failed", "note": "已使用"}, shop.agent_token


async def confirm_by_another_merchants_staff(shop, other, n):
    _, _, case = await new_case(shop, shipped=True, n=n)
    r = await shop.post(f"/aftersales/{case['id']}/receive", {"outcome": "ok"}, token=shop.agent_token)
    assert r.status_code == 200, r.text
    refund_no = r.json()["refunds"][0]["refund_no"]
    return "confirm", f"/refunds/{refund_no}/confirm", {"reference": "BANK-1"}, other.agent_token


# name → (given, status, code, field); code None: the do_* takes the request and changes the case.
UNUSUAL = {
    "approve_in_the_wrong_state": (approve_in_the_wrong_state, 409, "illegal_transition", None),
    "approve_with_a_stale_version": (approve_with_a_stale_version, 409, "version_conflict", None),
    "approve_by_another_merchants_staff": (approve_by_another_merchants_staff, 404, "not_found", None),
    "approve_by_the_shopper": (approve_by_the_shopper, 403, "wrong_actor", None),
    "ship_return_by_another_shopper": (ship_return_by_another_shopper, 404, "not_found", None),
    "create_on_another_shoppers_order": (create_on_another_shoppers_order, 404, "not_found", None),
    "create_more_than_was_bought": (create_more_than_was_bought, 422, "quantity_exceeds_available",
                                    "lines[0].quantity"),
    "confirm_by_another_merchants_staff": (confirm_by_another_merchants_staff, 404, "not_found", None),
    "receive_with_failed_inspection": (receive_with_failed_inspection, 200, None, None),
}


@pytest.mark.postgres_only
@needs_postgres
@pytest.mark.parametrize("case", UNUSUAL)
async def test_an_unusual_request_falls_back_and_gets_the_slow_paths_answer(shop, other_shop, monkeypatch, case):
    given, status, code, field = UNUSUAL[case]
    calls = FastCalls(monkeypatch)
    merchants = (await merchant_id_of(shop), await merchant_id_of(other_shop))
    answers = {}
    for n, path in enumerate(("fast", "slow")):
        if path == "slow":
            switch_off_fast_path(monkeypatch)
        # Given the situation, afresh for each path
        step, url, body, token = await given(shop, other_shop, n)
        before = await footprint(*merchants)
        calls.clear()
        # When the request is made
        r = await shop.post(url, body, token=token)
        answers[path] = (r.status_code, normalise(answer_of(r.json())))
        # Then the fast path was tried and handed it to the do_* (or, switched off, never tried)
        if path == "fast":
            assert (calls.served, calls.slow) == (Counter(), Counter({step: 1}))
        else:
            assert (calls.served, calls.slow) == (Counter(), Counter())
        # and a refused request wrote nothing (the fast attempt was rolled back with its case number)
        if code is not None:
            assert await footprint(*merchants) == before

    # and the answer is the do_*'s, the same both ways
    assert answers["fast"] == answers["slow"], "\n".join(differences(answers["fast"], answers["slow"], case))
    got_status, got = answers["fast"]
    assert got_status == status, got
    if code is not None:
        assert got["code"] == code
        assert got.get("field") == field
    else:
        assert got["status"] == "rejected" and got["reject_reason"] == "已使用"


async def test_the_fast_path_is_tried_on_postgresql_only(shop, monkeypatch):
    # Given a case waiting for review
    calls = FastCalls(monkeypatch)
    _, _, case = await new_case(shop)
    # When the agent approves it
    r = await shop.post(f"/aftersales/{case['id']}/approve", {}, token=shop.agent_token)
    # Then it is approved, by the fast path on PostgreSQL and by the do_* on SQLite
    assert r.status_code == 200 and r.json()["status"] == "awaiting_return", r.text
    assert calls.served == (Counter({"create": 1, "approve": 1}) if ON_POSTGRES else Counter())
    assert not calls.slow


# --------------------------------------------------------------------------------------------------------------
# 3. Two receipts on one order at once
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.postgres_only
@needs_postgres
@pytest.mark.parametrize("path", ["fast", "slow"])
async def test_simultaneous_receipts_on_one_order_keep_the_refund_totals(shop, monkeypatch, path):
    calls = FastCalls(monkeypatch)
    if path == "slow":
        switch_off_fast_path(monkeypatch)
    rounds = 10
    answers = []
    for n in range(rounds):
        # Given a fresh order with two cases, one per line, both returned and waiting for receipt
        order = await shop.order(email=f"c{n}-{shop.slug}@example.com")
        reset_rate_limits()
        buyer = await shop.shopper(order)
        cases = []
        for sku, qty in (("A", 2), ("B", 1)):
            body = {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
                    "lines": [{"order_line_id": line_id(order, sku), "quantity": qty}]}
            r = await shop.post("/aftersales", body, token=buyer)
            assert r.status_code == 201, r.text
            cases.append(r.json())
        for case in cases:
            r = await shop.post(f"/aftersales/{case['id']}/approve", {}, token=shop.agent_token)
            assert r.status_code == 200, r.text
            r = await shop.post(f"/aftersales/{case['id']}/ship-return",
                                {"carrier": "zto", "tracking_no": f"ZT-{n}-{case['lines'][0]['quantity']}"},
                                token=buyer)
            assert r.status_code == 200, r.text
        # When the agent receives both at the same moment
        answers += await asyncio.gather(*(shop.post(f"/aftersales/{case['id']}/receive", {"outcome": "ok"},
                                                    token=shop.agent_token) for case in cases))

    # Then every receipt succeeded, by the path under test
    assert [r.status_code for r in answers] == [200] * 2 * rounds, [r.text for r in answers if r.status_code != 200]
    assert all(r.json()["status"] == "refunding" for r in answers)
    if path == "fast":
        # the first of each pair by the fast path; the second too, unless the first changed the order's
        # money rows while it read them, and its guard sent it to the do_*
        assert calls.served["receive"] + calls.slow["receive"] == 2 * rounds
        assert calls.served["receive"] >= rounds
    else:
        assert calls.served["receive"] == 0
    # and each payment has committed exactly its refund rows, each order line exactly its refunding case lines
    merchant_id = await merchant_id_of(shop)
    async with transaction() as session:
        payments = list((await session.execute(select(Payment).where(Payment.merchant_id == merchant_id))).scalars())
        refunds = list((await session.execute(select(Refund).where(Refund.merchant_id == merchant_id))).scalars())
        order_lines = list((await session.execute(
            select(OrderLine).where(OrderLine.merchant_id == merchant_id))).scalars())
        refunding = set((await session.execute(select(AftersaleEvent.case_id).where(
            AftersaleEvent.merchant_id == merchant_id, AftersaleEvent.to_status == "refunding"))).scalars())
        case_lines = list((await session.execute(select(AftersaleLine).where(
            AftersaleLine.merchant_id == merchant_id, AftersaleLine.case_id.in_(refunding)))).scalars())
    assert len(refunding) == 2 * rounds and len(case_lines) == 2 * rounds
    by_payment = Counter()
    for refund in refunds:
        by_payment[refund.payment_id] += refund.amount_fen
    wrong_payments = [(p.method, p.refunded_fen, by_payment[p.id]) for p in payments
                      if p.refunded_fen != by_payment[p.id]]
    assert wrong_payments == [], "payment refunded_fen ≠ the sum of its refunds (method, refunded_fen, sum)"
    fen, qty = Counter(), Counter()
    for ln in case_lines:
        fen[ln.order_line_id] += ln.refund_fen
        qty[ln.order_line_id] += ln.quantity
    wrong_lines = [(ln.sku, ln.refunded_fen, fen[ln.id], ln.refunded_qty, qty[ln.id]) for ln in order_lines
                   if (ln.refunded_fen, ln.refunded_qty) != (fen[ln.id], qty[ln.id])]
    assert wrong_lines == [], "order line refunded ≠ its refunding case lines (sku, fen, sum, qty, sum)"
    # and every line came back whole: A 2 × 88.00, B 44.00 (the order is paid 230.00 by two tenders)
    assert sorted({(ln.sku, ln.refunded_fen, ln.refunded_qty) for ln in order_lines}) == [("A", 17600, 2),
                                                                                         ("B", 4400, 1)]
    assert sum(p.refunded_fen for p in payments) == rounds * (17600 + 4400)


@needs_postgres
@pytest.mark.postgres_only
@pytest.mark.parametrize("guards", [("case",), ("refunds", "case"), ("case", "order", "order_lines", "payments"),
                                    ("order_share",)])
async def test_every_statement_finds_its_rows_by_index(guards):
    # Given every shape of write and read the fast path sends, as generic plans (what a prepared
    # statement runs), with sequential scans made as dear as the planner allows
    statements = [fast.write_sql(tuple(fast._WRITE_PARTS), guards, numbered="order_share" in guards)]
    if guards == ("case",):
        statements += [fast.read_case_sql(), fast.read_case_sql(with_order=True), fast.read_case_sql(by_refund=True),
                       fast.READ_FOR_CASE]
    async with transaction() as session:
        raw = (await (await session.connection()).get_raw_connection()).driver_connection
        cur = raw.cursor()
        await cur.execute("SET LOCAL enable_seqscan = off")
        await cur.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for n, sql in enumerate(statements):
            names = sorted(set(re.findall(r"%\((\w+)\)s", sql)))
            for i, name in enumerate(names):
                sql = sql.replace(f"%({name})s", f"${i + 1}")
            await cur.execute(f"PREPARE fast_{n} AS {sql}")
            # When it is planned
            await cur.execute(f"EXPLAIN EXECUTE fast_{n}({', '.join(['NULL'] * len(names))})")
            plan = "\n".join(line for (line,) in await cur.fetchall())
            await cur.execute(f"DEALLOCATE fast_{n}")
            # Then no table is read whole: a seq scan left in the plan means no index could serve it
            assert "Seq Scan" not in plan, plan
        await session.rollback()


@pytest.mark.postgres_only
@needs_postgres
@pytest.mark.parametrize("path", ["fast", "slow"])
async def test_simultaneous_confirmations_of_a_cases_refunds_settle_it_once(shop, monkeypatch, path):
    # (Each confirmation decides from the other refunds' statuses whether the case is settled: two at once
    # must not both see the other still open, or the case would wait in refunding for ever.)
    calls = FastCalls(monkeypatch)
    if path == "slow":
        switch_off_fast_path(monkeypatch)
    for n in range(8):
        # Given a case received, with one refund per tender of its order
        _, _, case = await new_case(shop, shipped=True, n=100 + n)
        r = await shop.post(f"/aftersales/{case['id']}/receive", {"outcome": "ok"}, token=shop.agent_token)
        assert r.status_code == 200, r.text
        refund_nos = [f["refund_no"] for f in r.json()["refunds"]]
        assert len(refund_nos) >= 2
        # When the agent confirms them all at the same moment
        answers = await asyncio.gather(*(shop.post(f"/refunds/{no}/confirm", {"reference": f"bank-{no}"},
                                                   token=shop.agent_token) for no in refund_nos))
        # Then each is confirmed, and the case is completed, by exactly one settlement
        assert [a.status_code for a in answers] == [200] * len(refund_nos), [a.text for a in answers]
        assert {a.json()["status"] for a in answers} == {"succeeded"}
        settled = (await shop.get(f"/aftersales/{case['id']}")).json()
        assert settled["status"] == "completed"
        assert [e["action"] for e in settled["events"]].count("refunds_settled") == 1
    if path == "fast":
        assert calls.served["confirm"] >= 8
    else:
        assert calls.served["confirm"] == 0
