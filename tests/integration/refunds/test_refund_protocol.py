"""The refund protocol (rulebook §7), step by step, on both backends.

The sandbox PSP runs in-process (httpx.ASGITransport) in place of the shared "sandbox" provider, and
notifies the ShopDesk app in-process too. The worker is `process_refunds` called by hand, with the
test clock moved forward to make retries due.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from shopdesk.aftersales.models import AftersaleCase
from shopdesk.core.clock import clock
from shopdesk.core.db import transaction
from shopdesk.core.records import AuditLog
from shopdesk.integrations.payments import RefundRequest, base as payments
from shopdesk.integrations.payments.sandbox import SandboxProvider
from shopdesk.integrations.payments.sandbox_psp import (EVENT_TYPES, SIGNATURE_HEADER, SandboxPSP, create_app,
                                                       sign_notification)
from shopdesk.jobs.runner import process_refunds
from shopdesk.orders.models import Payment
from shopdesk.refunds.actions import apply_result, claim_due
from shopdesk.refunds.models import Refund, RefundNotification
from tests.integration.refunds import RefundCase, make_merchant, make_refund_case, make_staff

PSP = "http://psp.test"
LEASE_S = 30.0
RETRY_BASE_S = 1.0


class Relay(httpx.AsyncBaseTransport):
    """A transport that records every request and can play dead (503) instead of forwarding it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.down = False
        self.sent: list[tuple[str, str, dict | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.sent.append((request.method, request.url.path, json.loads(body) if body else None))
        if self.down:
            return httpx.Response(503, json={"code": "FAIL"})
        return await self.inner.handle_async_request(request)


@dataclass
class Rig:
    psp: SandboxPSP
    control: httpx.AsyncClient
    to_psp: Relay
    to_shopdesk: Relay
    client: httpx.AsyncClient
    tokens: dict[str, str] = field(default_factory=dict)

    async def faults(self, **update: float | int) -> None:
        answer = await self.control.put("/control/faults", json=update)
        assert answer.status_code == 200, answer.text

    async def ledger(self) -> dict:
        return (await self.control.get("/control/ledger")).json()

    async def settle(self) -> None:
        """Wait for the PSP's pending settlements and notifications."""
        async with asyncio.timeout(10):
            while self.psp.tasks:
                await asyncio.gather(*list(self.psp.tasks), return_exceptions=True)

    async def work(self, advance_s: float = 0.0) -> None:
        """Move the clock, run worker passes until nothing is due, then let the PSP's notifications land.

        The database is shared with the rest of the suite, so other tests' refunds may be due too: passes
        repeat until none claims anything (the clock stands still, so each claim is pushed into the future).
        """
        if advance_s:
            clock.advance(timedelta(seconds=advance_s))
        while await process_refunds(lease_s=LEASE_S, retry_base_s=RETRY_BASE_S):
            pass
        await self.settle()

    async def booked(self, case: RefundCase) -> list[tuple[str, int, str]]:
        """What the PSP booked for this case's refunds: (refund_no, amount, status), sorted."""
        mine = {r.refund_no for r in await rows(case)}
        ledger = await self.ledger()
        assert ledger["violations"] == []  # nobody ever sent a refund_no with a second amount
        return sorted((r["out_refund_no"], r["amount"], r["status"]) for r in ledger["refunds"]
                      if r["out_refund_no"] in mine)

    def calls(self, refund_no: str) -> list[tuple[str, int | None]]:
        """What ShopDesk sent the PSP about one refund: ("POST", amount) or ("GET", None)."""
        out = []
        for method, path, body in self.to_psp.sent:
            if method == "POST" and body and body.get("out_refund_no") == refund_no:
                out.append(("POST", body["amount"]["refund"]))
            elif method == "GET" and path.endswith(f"/{refund_no}"):
                out.append(("GET", None))
        return out

    async def post(self, path: str, body: dict, role: str = "agent") -> httpx.Response:
        return await self.client.post(f"/api/v1{path}", json=body,
                                      headers={"Authorization": f"Bearer {self.tokens[role]}"})


@pytest.fixture
async def rig(app, client, monkeypatch) -> AsyncIterator[Rig]:
    to_shopdesk = Relay(httpx.ASGITransport(app=app))
    psp_app = create_app(notify_transport=to_shopdesk, notify_backoff_s=(0.01, 0.01))
    to_psp = Relay(httpx.ASGITransport(app=psp_app))
    provider = SandboxProvider(base_url=PSP, timeout_s=0.3, transport=to_psp)
    monkeypatch.setitem(payments._providers, "sandbox", provider)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=psp_app), base_url=PSP) as control:
        box = Rig(psp_app.state.psp, control, to_psp, to_shopdesk, client)
        await box.faults(settle_delay_s=0.02, timeout_sleep_s=0.6, seed=7)
        yield box
        # Leave nothing of ours due for later tests: settle what is still open with every fault off.
        await box.faults(timeout_rate=0, timeout_after_commit_rate=0, error_5xx_rate=0, error_5xx_after_commit_rate=0,
                         processing_rate=0, abnormal_rate=0, fail_rate=0, query_5xx_rate=0)
        box.to_shopdesk.down = False
        await box.work(advance_s=3600)
    await provider.aclose()
    await psp_app.state.psp.aclose()


async def setup_case(rig: Rig, providers: dict[str, str] | None = None) -> RefundCase:
    merchant_id = await make_merchant(providers)
    for role in ("agent", "supervisor"):
        rig.tokens[role] = await make_staff(merchant_id, role)
    return await make_refund_case(merchant_id, price_fen=10000, balance_fen=3000)


async def rows(case: RefundCase) -> list[Refund]:
    """The case's refunds: the originals (WeChat Pay, then balance), then any that supersede them."""
    async with transaction() as session:
        found = (await session.execute(select(Refund).where(Refund.case_id == case.case_id))).scalars()
        return sorted(found, key=lambda r: (r.supersedes is not None, r.method != "wechatpay"))


async def case_status(case: RefundCase) -> str:
    async with transaction() as session:
        return (await session.execute(select(AftersaleCase.status).where(
            AftersaleCase.id == case.case_id))).scalar_one()


async def audit(refund_no: str, action: str) -> int:
    async with transaction() as session:
        return (await session.execute(select(func.count()).select_from(AuditLog).where(
            AuditLog.object_id == refund_no, AuditLog.action == action))).scalar_one()


async def seen(refund_no: str) -> list[tuple[str, str]]:
    async with transaction() as session:
        return [tuple(r) for r in (await session.execute(
            select(RefundNotification.notify_id, RefundNotification.status)
            .where(RefundNotification.refund_no == refund_no))).all()]


async def notify(client: httpx.AsyncClient, refund: Refund, status: str, notify_id: str | None = None) -> str:
    """POST a correctly signed sandbox notification, as the PSP would; return its id."""
    notify_id = notify_id or str(uuid.uuid4())
    body = json.dumps({"id": notify_id, "create_time": "2026-11-06T12:00:00Z", "event_type": EVENT_TYPES[status],
                       "resource": {"out_refund_no": refund.refund_no, "refund_id": "5030000000",
                                    "transaction_id": refund.trade_no, "refund_status": status,
                                    "amount": {"refund": refund.amount_fen, "total": 10000}}},
                      separators=(",", ":")).encode()
    answer = await client.post("/api/v1/payments/notify/sandbox", content=body,
                               headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign_notification(body)})
    assert answer.status_code == 200 and answer.json()["code"] == "SUCCESS", answer.text
    return notify_id


async def test_refunds_settle_at_once_and_complete_the_case(rig: Rig) -> None:
    # given an auto-approved refund_only case over two tenders, and a healthy PSP
    case = await setup_case(rig)
    before = await rows(case)
    assert [(r.method, r.amount_fen, r.status) for r in before] == [("wechatpay", 7000, "created"),
                                                                    ("balance", 3000, "created")]
    # when the worker runs
    await rig.work()
    # then both refunds succeeded under their own numbers, the PSP paid exactly that, the case is completed
    after = await rows(case)
    assert [(r.refund_no, r.status, r.attempts) for r in after] == [(r.refund_no, "succeeded", 1) for r in before]
    # (provider_ref stays empty when the SUCCESS notification lands before the submit answer: it carries none)
    assert all(r.settled_at and r.next_attempt_at is None for r in after)
    assert await case_status(case) == "completed"
    assert await rig.booked(case) == sorted((r.refund_no, r.amount_fen, "SUCCESS") for r in after)
    # and nothing is left for the next pass
    await rig.work(advance_s=3600)
    assert [(r.status, r.attempts) for r in await rows(case)] == [("succeeded", 1)] * 2


async def test_status_only_moves_forward(rig: Rig) -> None:
    case = await setup_case(rig)
    wx, _ = await rows(case)

    async def apply(status: str, detail: str = "") -> Refund:
        async with transaction() as session:
            refund = await apply_result(session, wx.refund_no, status, detail=detail or status,
                                        retry_base_s=RETRY_BASE_S)
            assert refund is not None
            return refund

    # created → unknown → processing; then neither unknown nor not_found moves it back
    assert (await apply("unknown")).status == "unknown"
    assert (await apply("processing")).status == "processing"
    assert (await apply("unknown")).status == "processing"
    assert (await apply("not_found")).status == "processing"
    settled = await apply("succeeded", "SUCCESS")
    assert (settled.status, settled.last_error, settled.next_attempt_at) == ("succeeded", "SUCCESS", None)
    # when stale news arrives after it settled: a late PROCESSING, a lost answer, a contradicting CLOSED
    clock.advance(timedelta(minutes=5))
    for stale in ("processing", "unknown", "not_found", "failed", "abnormal", "succeeded"):
        await apply(stale, f"stale {stale}")
    # then the refund is exactly as it settled, counted once, and the tender still shows it refunded
    [now_wx, _] = await rows(case)
    assert (now_wx.status, now_wx.last_error, now_wx.next_attempt_at, now_wx.settled_at) == (
        "succeeded", "SUCCESS", None, settled.settled_at)
    assert await audit(wx.refund_no, "refund.succeeded") == 1
    assert await audit(wx.refund_no, "refund.failed") == 0
    async with transaction() as session:
        assert (await session.get(Payment, wx.payment_id)).refunded_fen == 7000


async def test_duplicate_notification_is_applied_once(rig: Rig) -> None:
    # given a PSP that answers PROCESSING and sends every final notification twice with one id
    await rig.faults(processing_rate=1, duplicate_notify_rate=1)
    case = await setup_case(rig)
    # when the worker submits and the notifications arrive
    await rig.work()
    # then each SUCCESS was delivered twice, stored once and applied once
    notes = (await rig.ledger())["notifications"]
    for refund in await rows(case):
        mine = [n for n in notes if n["out_refund_no"] == refund.refund_no]
        assert [(n["event_type"], n["delivered"]) for n in mine] == [("REFUND.SUCCESS", True)] * 2
        assert mine[0]["id"] == mine[1]["id"]
        assert refund.status == "succeeded"
        assert await seen(refund.refund_no) == [(mine[0]["id"], "succeeded")]
        assert await audit(refund.refund_no, "refund.succeeded") == 1
        # and a third replay of that id, by hand, changes nothing either
        await notify(rig.client, refund, "SUCCESS", notify_id=mine[0]["id"])
        assert len(await seen(refund.refund_no)) == 1
    assert await case_status(case) == "completed"
    async with transaction() as session:
        settled = (await session.execute(select(func.count()).select_from(AuditLog).where(
            AuditLog.object_id == case.case_id, AuditLog.action == "aftersales.refunds_settled"))).scalar_one()
    assert settled == 1


async def test_late_processing_after_success_is_ignored(rig: Rig) -> None:
    # given a PSP that sends a stale PROCESSING notification after the final SUCCESS
    await rig.faults(late_notify_rate=1)
    case = await setup_case(rig)
    await rig.work()
    notes = (await rig.ledger())["notifications"]
    for refund in await rows(case):
        # then the PROCESSING came after the SUCCESS, was recorded as seen, and moved nothing back
        assert [n["event_type"] for n in notes if n["out_refund_no"] == refund.refund_no] == [
            "REFUND.SUCCESS", "REFUND.PROCESSING"]
        assert sorted(s for _, s in await seen(refund.refund_no)) == ["processing", "succeeded"]
        assert (refund.status, refund.next_attempt_at) == ("succeeded", None)
        assert await audit(refund.refund_no, "refund.processing") == 0
    # and out of order the other way round (PROCESSING after SUCCESS, both fresh ids) is ignored too
    wx = (await rows(case))[0]
    await notify(rig.client, wx, "PROCESSING")
    assert (await rows(case))[0].status == "succeeded"
    assert await case_status(case) == "completed"


async def test_processing_waits_for_the_notification_or_a_query(rig: Rig) -> None:
    # given a PSP that answers PROCESSING, settles later, and whose notifications never reach us
    await rig.faults(processing_rate=1, settle_delay_s=0.05)
    rig.to_shopdesk.down = True
    case = await setup_case(rig)
    await rig.work()
    assert [r.status for r in await rows(case)] == ["processing", "processing"]
    assert await case_status(case) == "refunding"
    # when the back-off is due, the worker queries (it never resubmits a PROCESSING refund)
    await asyncio.sleep(0.06)
    await rig.work(advance_s=60)
    # then the query settles it
    for refund in await rows(case):
        assert refund.status == "succeeded"
        assert rig.calls(refund.refund_no) == [("POST", refund.amount_fen), ("GET", None)]
    assert await case_status(case) == "completed"


async def test_unknown_then_not_found_is_resubmitted_with_the_same_number_and_amount(rig: Rig) -> None:
    # given a PSP that times out before booking anything
    await rig.faults(timeout_rate=1)
    case = await setup_case(rig)
    before = await rows(case)
    await rig.work()
    # then the refunds are unknown, not failed, and nothing was booked
    assert [(r.status, r.last_error) for r in await rows(case)] == [("unknown", "timed out after 0.3s")] * 2
    assert await rig.booked(case) == []
    # when the PSP recovers and the back-off is due
    await rig.faults(timeout_rate=0)
    await rig.work(advance_s=1)  # not due yet
    assert [(r.status, r.attempts) for r in await rows(case)] == [("unknown", 1)] * 2
    await rig.work(advance_s=60)
    # then the worker asked, heard not_found, and sent the same number with the same amount again
    after = await rows(case)
    for old, new in zip(before, after):
        assert (new.refund_no, new.amount_fen, new.status, new.supersedes) == (
            old.refund_no, old.amount_fen, "succeeded", None)
        assert rig.calls(old.refund_no) == [("POST", old.amount_fen), ("GET", None), ("POST", old.amount_fen)]
    assert await rig.booked(case) == sorted((r.refund_no, r.amount_fen, "SUCCESS") for r in before)
    assert len(after) == 2 and await case_status(case) == "completed"


async def test_answer_lost_after_booking_is_settled_by_query_without_resubmitting(rig: Rig) -> None:
    # given a PSP that books the refund, then answers 500, and notifications that never arrive
    await rig.faults(error_5xx_after_commit_rate=1)
    rig.to_shopdesk.down = True
    case = await setup_case(rig)
    await rig.work()
    assert [r.status for r in await rows(case)] == ["unknown", "unknown"]
    assert [status for _, _, status in await rig.booked(case)] == ["SUCCESS", "SUCCESS"]
    # when the back-off is due
    await rig.work(advance_s=60)
    # then a query found it: succeeded, and the refund was sent once only
    for refund in await rows(case):
        assert refund.status == "succeeded"
        assert rig.calls(refund.refund_no) == [("POST", refund.amount_fen), ("GET", None)]
    assert await case_status(case) == "completed"


async def test_answer_lost_after_the_notification_does_not_touch_the_settled_refund(rig: Rig) -> None:
    # given a PSP that books and notifies at once, then sleeps past our timeout
    await rig.faults(timeout_after_commit_rate=1)
    case = await setup_case(rig)
    # when the worker's answer (a timeout) lands after the SUCCESS notification
    await rig.work()
    # then the refund stays as the notification settled it: no error written over it, no retry scheduled
    for refund in await rows(case):
        assert (refund.status, refund.next_attempt_at) == ("succeeded", None)
        assert refund.last_error.startswith("notification ")
    assert await case_status(case) == "completed"


async def test_a_worker_killed_mid_refund_loses_nothing(rig: Rig) -> None:
    case = await setup_case(rig)
    wx, bal = await rows(case)
    # given a worker that claimed both refunds, sent the WeChat Pay one, and died before writing anything
    async with transaction() as session:
        claims = await claim_due(session, limit=10, lease_s=LEASE_S)
    assert sorted(c.refund_no for c in claims) == sorted((wx.refund_no, bal.refund_no))
    claim = next(c for c in claims if c.refund_no == wx.refund_no)
    sent = await payments.get_provider("sandbox").submit(RefundRequest(
        refund_no=claim.refund_no, trade_no=claim.trade_no, method=claim.method, amount_fen=claim.amount_fen,
        payment_total_fen=claim.payment_total_fen, notify_url="http://testserver/nowhere"))
    assert sent.status == "succeeded"
    # then nobody else takes them while the lease holds
    await rig.work()
    assert [(r.status, r.attempts) for r in await rows(case)] == [("created", 1)] * 2
    # when the lease runs out
    await rig.work(advance_s=LEASE_S + 1)
    # then they are sent again under the same numbers and amounts, and the PSP books each once
    for refund in await rows(case):
        assert (refund.status, refund.attempts) == ("succeeded", 2)
    assert rig.calls(wx.refund_no) == [("POST", 7000), ("POST", 7000)]
    assert await rig.booked(case) == sorted([(wx.refund_no, 7000, "SUCCESS"), (bal.refund_no, 3000, "SUCCESS")])


async def test_manual_refund_waits_for_an_agent_to_confirm(rig: Rig) -> None:
    # given WeChat Pay refunded through the sandbox, store balance by hand (no provider set for it)
    case = await setup_case(rig, {"wechatpay": "sandbox"})
    wx, bal = await rows(case)
    assert (wx.provider, bal.provider) == ("sandbox", "manual")
    await rig.work()
    wx, bal = await rows(case)
    # then the manual one waits for a person and is not polled
    assert (wx.status, bal.status, bal.next_attempt_at) == ("succeeded", "processing", None)
    await rig.work(advance_s=6 * 3600)  # (staff tokens last 12 h)
    assert [(r.status, r.attempts) for r in await rows(case)] == [("succeeded", 1), ("processing", 1)]
    assert await case_status(case) == "refunding"
    # a sandbox refund is settled by its provider, not by hand
    answer = await rig.post(f"/refunds/{wx.refund_no}/confirm", {"reference": "银行转账 0001"})
    assert answer.status_code == 409 and answer.json()["code"] == "not_manual"
    # when an agent confirms the balance refund
    answer = await rig.post(f"/refunds/{bal.refund_no}/confirm", {"reference": "余额已退 0001"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["provider_ref"]) == ("succeeded", "余额已退 0001")
    # then the case completes, and confirming again changes nothing
    assert await case_status(case) == "completed"
    again = await rig.post(f"/refunds/{bal.refund_no}/confirm", {"reference": "again"})
    assert again.status_code == 200 and again.json()["provider_ref"] == "余额已退 0001"
    assert await audit(bal.refund_no, "refund.succeeded") == 1


async def test_definitive_failure_then_retry_mints_a_number_that_supersedes_it(rig: Rig) -> None:
    # given a PSP that closes (refuses for good) every refund
    await rig.faults(fail_rate=1)
    case = await setup_case(rig)
    await rig.work()
    failed = await rows(case)
    assert [r.status for r in failed] == ["failed", "failed"]
    assert await case_status(case) == "refund_exception"
    async with transaction() as session:  # a failed refund no longer counts against the tender
        assert [p.refunded_fen for p in (await session.execute(
            select(Payment).where(Payment.order_id == case.order_id))).scalars()] == [0, 0]
    # when the PSP recovers and an agent retries
    await rig.faults(fail_rate=0)
    answer = await rig.post(f"/aftersales/{case.case_id}/retry-refund", {"note": "换卡后重试"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "refunding"
    # then each failed refund has a new number recording the one it supersedes, same amount and tender
    retried = (await rows(case))[2:]
    assert [(r.supersedes, r.amount_fen, r.payment_id, r.status) for r in retried] == [
        (f.refund_no, f.amount_fen, f.payment_id, "created") for f in failed]
    assert not {r.refund_no for r in retried} & {f.refund_no for f in failed}
    await rig.work()
    final = await rows(case)
    assert [r.status for r in final] == ["failed", "failed", "succeeded", "succeeded"]
    assert await case_status(case) == "completed"
    booked = await rig.booked(case)
    assert sum(amount for _, amount, status in booked if status == "SUCCESS") == case.refund_fen == 10000
    assert sorted(status for _, _, status in booked) == ["CLOSED", "CLOSED", "SUCCESS", "SUCCESS"]
    # and a completed case has nothing to retry
    again = await rig.post(f"/aftersales/{case.case_id}/retry-refund", {"note": ""})
    assert again.status_code == 409


async def test_abnormal_is_never_refunded_twice(rig: Rig) -> None:
    # given a PSP that holds the money of every refund (ABNORMAL, e.g. the buyer's card is frozen)
    await rig.faults(abnormal_rate=1)
    case = await setup_case(rig)
    await rig.work()
    wx, bal = await rows(case)
    assert (wx.status, bal.status) == ("abnormal", "abnormal")
    assert await case_status(case) == "refund_exception"
    # then retrying is refused, the worker leaves them alone, and no second number exists
    answer = await rig.post(f"/aftersales/{case.case_id}/retry-refund", {"note": ""})
    assert answer.status_code == 409 and answer.json()["code"] == "nothing_to_retry"
    await rig.work(advance_s=6 * 3600)
    assert [(r.status, r.attempts) for r in await rows(case)] == [("abnormal", 1)] * 2
    assert len(await rig.booked(case)) == 2
    # an agent may not settle one by hand; a supervisor checks with the provider and does
    answer = await rig.post(f"/refunds/{wx.refund_no}/resolve", {"status": "succeeded", "note": "已到账"})
    assert answer.status_code == 403
    answer = await rig.post(f"/refunds/{wx.refund_no}/resolve", {"status": "succeeded", "note": "已到账"},
                            role="supervisor")
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded"
    # the other is still held, so the case stays in refund_exception
    assert await case_status(case) == "refund_exception"
    # when the supervisor confirms the other one reached the buyer too
    answer = await rig.post(f"/refunds/{bal.refund_no}/resolve", {"status": "succeeded", "note": "已人工退回"},
                            role="supervisor")
    assert answer.status_code == 200, answer.text
    # then every refund succeeded under its first number, and the case completes
    # (rulebook §5: refund_exception, fixed → refunding; all refunds succeeded → completed)
    assert [(r.refund_no, r.status, r.supersedes) for r in await rows(case)] == [
        (wx.refund_no, "succeeded", None), (bal.refund_no, "succeeded", None)]
    assert await case_status(case) == "completed"
    assert len(await rig.booked(case)) == 2


async def test_a_notification_with_another_amount_goes_to_a_person(rig: Rig) -> None:
    case = await setup_case(rig)
    refund = (await rows(case))[0]
    body = json.dumps({"id": str(uuid.uuid4()), "event_type": EVENT_TYPES["SUCCESS"],
                       "resource": {"out_refund_no": refund.refund_no, "refund_id": "1", "refund_status": "SUCCESS",
                                    "amount": {"refund": refund.amount_fen + 1, "total": 10000}}},
                      separators=(",", ":")).encode()
    answer = await rig.client.post("/api/v1/payments/notify/sandbox", content=body, headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: sign_notification(body)})
    assert answer.status_code == 200
    after = (await rows(case))[0]
    assert after.status == "abnormal" and str(refund.amount_fen + 1) in (after.last_error or "")


async def test_refunds_on_one_payment_are_serialised(shop) -> None:
    # Given two refund_only cases on one unshipped order: each payment owes two new refunds
    order = await shop.order(shipped=False)
    buyer = await shop.shopper(order)
    mine = set()
    for sku in ("A", "B"):
        line = next(ln["id"] for ln in order["lines"] if ln["sku"] == sku)
        r = await shop.post("/aftersales", {"order_id": order["id"], "type": "refund_only", "reason": "dont_want",
                                            "lines": [{"order_line_id": line, "quantity": 1}]}, token=buyer)
        mine |= {x["refund_no"] for x in r.json()["refunds"]}
    assert len(mine) == 4

    async def claim() -> list[str]:
        async with transaction() as session:
            return [c.refund_no for c in await claim_due(session, limit=1000, lease_s=LEASE_S) if c.refund_no in mine]

    # When workers claim, one new refund per payment is in flight at a time
    first = await claim()
    assert len(first) == 2
    assert await claim() == []  # the others wait while the first ones are leased
    async with transaction() as session:
        for refund_no in first:
            await apply_result(session, refund_no, "succeeded")
    second = await claim()
    assert len(second) == 2 and not set(first) & set(second)
