"""The sandbox PSP and its connector, driven in-process through ASGI (rulebook §7)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from shopdesk.integrations.payments import (PROVIDER_NAMES, BadNotification, ProviderResult, RefundRequest,
                                            close_providers, get_provider)
from shopdesk.integrations.payments.manual import ManualProvider
from shopdesk.integrations.payments.sandbox import SandboxProvider
from shopdesk.integrations.payments.sandbox_psp import SIGNATURE_HEADER, create_app, sign_notification

PSP = "http://psp.test"
NOTIFY_URL = "http://shopdesk.test/api/payments/sandbox/notify"


@dataclass
class Receiver:
    """The merchant's notification endpoint: records every POST and answers from a script."""

    seen: list[httpx.Request] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.seen.append(request)
        return httpx.Response(self.answers.pop(0) if self.answers else 200)

    async def wait_for(self, count: int, timeout_s: float = 1.0) -> list[httpx.Request]:
        async with asyncio.timeout(timeout_s):
            while len(self.seen) < count:
                await asyncio.sleep(0.005)
        return self.seen

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.seen]


@dataclass
class Sandbox:
    provider: SandboxProvider
    control: httpx.AsyncClient
    receiver: Receiver

    async def faults(self, **update: float | int) -> None:
        answer = await self.control.put("/control/faults", json=update)
        assert answer.status_code == 200, answer.text

    async def ledger(self) -> dict:
        return (await self.control.get("/control/ledger")).json()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    receiver = Receiver()
    app = create_app(notify_transport=httpx.MockTransport(receiver.handle), notify_backoff_s=(0.01, 0.01))
    transport = httpx.ASGITransport(app=app)
    provider = SandboxProvider(base_url=PSP, timeout_s=0.2, transport=transport)
    async with httpx.AsyncClient(transport=transport, base_url=PSP) as control:
        box = Sandbox(provider, control, receiver)
        await box.faults(settle_delay_s=0.02, timeout_sleep_s=0.5)
        yield box
    await provider.aclose()
    await app.state.psp.aclose()


def refund(refund_no: str = "RF1", amount_fen: int = 3000, total_fen: int = 10000,
           trade_no: str | None = "4200000001") -> RefundRequest:
    return RefundRequest(refund_no=refund_no, trade_no=trade_no, method="wechatpay", amount_fen=amount_fen,
                         payment_total_fen=total_fen, notify_url=NOTIFY_URL)


def canned(status: int, body: object) -> SandboxProvider:
    """A provider whose PSP always gives one answer."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return SandboxProvider(base_url=PSP, transport=httpx.MockTransport(lambda _: httpx.Response(status, content=content)))


# --- submit and query against the sandbox PSP ---

async def test_submit_succeeds_at_once_and_notifies(sandbox: Sandbox) -> None:
    # given a healthy PSP
    # when a refund is submitted
    result = await sandbox.provider.submit(refund())
    # then it succeeds at once, a query agrees, and a signed SUCCESS notification arrives
    assert result.status == "succeeded" and result.provider_ref
    assert (await sandbox.provider.query(refund())).status == "succeeded"
    [sent] = await sandbox.receiver.wait_for(1)
    note = sandbox.provider.parse_notification(sent.headers, sent.content)
    assert (note.refund_no, note.status, note.amount_fen) == ("RF1", "succeeded", 3000)


async def test_resubmit_with_same_number_returns_the_same_refund(sandbox: Sandbox) -> None:
    # given a refund already accepted
    first = await sandbox.provider.submit(refund())
    # when it is submitted again with the same number and amount
    again = await sandbox.provider.submit(refund())
    # then the PSP answers with the same refund and books it once
    assert again == first
    ledger = await sandbox.ledger()
    assert [r["out_refund_no"] for r in ledger["refunds"]] == ["RF1"] and ledger["violations"] == []


async def test_resubmit_with_another_amount_fails_and_is_recorded(sandbox: Sandbox) -> None:
    # given a refund of 30.00 accepted
    await sandbox.provider.submit(refund(amount_fen=3000))
    # when the same number comes back with 20.00
    result = await sandbox.provider.submit(refund(amount_fen=2000))
    # then it is refused and the PSP writes down the protocol violation
    assert result.status == "failed" and result.detail.startswith("INVALID_REQUEST")
    ledger = await sandbox.ledger()
    assert [(v["out_refund_no"], v["amounts"]) for v in ledger["violations"]] == [("RF1", [3000, 2000])]
    assert [r["amount"] for r in ledger["refunds"]] == [3000]


async def test_refunds_beyond_the_payment_are_not_enough(sandbox: Sandbox) -> None:
    # given 80.00 of a 100.00 payment refunded
    assert (await sandbox.provider.submit(refund("RF1", 8000))).status == "succeeded"
    # when another 30.00 is asked for
    result = await sandbox.provider.submit(refund("RF2", 3000))
    # then the PSP refuses for good
    assert result.status == "failed" and result.detail.startswith("NOT_ENOUGH")


async def test_closed_refunds_give_the_money_back_to_the_trade(sandbox: Sandbox) -> None:
    # given a refund of the whole payment that the PSP closes
    await sandbox.faults(fail_rate=1)
    assert (await sandbox.provider.submit(refund("RF1", 10000))).status == "processing"
    await sandbox.receiver.wait_for(1)
    assert (await sandbox.provider.query(refund("RF1", 10000))).status == "failed"
    # when a new number asks for the whole payment again
    await sandbox.faults(fail_rate=0)
    result = await sandbox.provider.submit(refund("RF2", 10000))
    # then it is accepted
    assert result.status == "succeeded"


async def test_more_than_fifty_refunds_on_one_trade_hit_the_limit(sandbox: Sandbox) -> None:
    # given fifty 1-fen refunds on one trade
    for n in range(50):
        assert (await sandbox.provider.submit(refund(f"RF{n}", 1))).status == "succeeded"
    # when a fifty-first is asked for
    result = await sandbox.provider.submit(refund("RF50", 1))
    # then the PSP refuses for good
    assert result.status == "failed" and result.detail.startswith("REFUND_LIMIT")


async def test_submit_without_trade_number_fails_without_calling(sandbox: Sandbox) -> None:
    result = await sandbox.provider.submit(refund(trade_no=None))
    assert result.status == "failed"
    assert (await sandbox.ledger())["refunds"] == []


async def test_timeout_before_commit_is_unknown_and_never_recorded(sandbox: Sandbox) -> None:
    # given a PSP that hangs before booking
    await sandbox.faults(timeout_rate=1)
    # when a refund is submitted
    result = await sandbox.provider.submit(refund())
    # then the outcome is unknown, and a later query finds nothing
    assert result.status == "unknown" and "timed out" in result.detail
    await sandbox.faults(timeout_rate=0)
    assert (await sandbox.provider.query(refund())).status == "not_found"


async def test_timeout_after_commit_is_unknown_but_the_refund_exists(sandbox: Sandbox) -> None:
    # given a PSP that books the refund, then hangs
    await sandbox.faults(timeout_after_commit_rate=1)
    # when a refund is submitted
    result = await sandbox.provider.submit(refund())
    # then we do not know, but a query finds it paid
    assert result.status == "unknown"
    assert (await sandbox.provider.query(refund())).status == "succeeded"


@pytest.mark.parametrize("fault, recorded", [("error_5xx_rate", False), ("error_5xx_after_commit_rate", True)])
async def test_5xx_is_unknown(sandbox: Sandbox, fault: str, recorded: bool) -> None:
    # given a PSP that answers 5xx before or after booking
    await sandbox.faults(**{fault: 1})
    # when a refund is submitted
    result = await sandbox.provider.submit(refund())
    # then the outcome is unknown and the books show whether it was taken
    assert result.status == "unknown" and result.detail.startswith("HTTP 5")
    assert len((await sandbox.ledger())["refunds"]) == int(recorded)


async def test_query_5xx_is_unknown(sandbox: Sandbox) -> None:
    await sandbox.provider.submit(refund())
    await sandbox.faults(query_5xx_rate=1)
    assert (await sandbox.provider.query(refund())).status == "unknown"


async def test_query_of_an_unseen_number_is_not_found(sandbox: Sandbox) -> None:
    assert (await sandbox.provider.query(refund("NEVER"))).status == "not_found"


async def test_processing_refund_settles_and_notifies(sandbox: Sandbox) -> None:
    # given a PSP that takes its time
    await sandbox.faults(processing_rate=1)
    # when a refund is submitted
    result = await sandbox.provider.submit(refund())
    # then it is processing, and after the delay a notification says it succeeded
    assert result.status == "processing"
    [sent] = await sandbox.receiver.wait_for(1)
    assert sandbox.provider.parse_notification(sent.headers, sent.content).status == "succeeded"
    assert (await sandbox.provider.query(refund())).status == "succeeded"


@pytest.mark.parametrize("fault, status", [("abnormal_rate", "abnormal"), ("fail_rate", "failed")])
async def test_refund_settles_abnormal_or_closed(sandbox: Sandbox, fault: str, status: str) -> None:
    await sandbox.faults(**{fault: 1})
    assert (await sandbox.provider.submit(refund())).status == "processing"
    [sent] = await sandbox.receiver.wait_for(1)
    assert sandbox.provider.parse_notification(sent.headers, sent.content).status == status
    assert (await sandbox.provider.query(refund())).status == status


async def test_query_settles_even_before_the_notification(sandbox: Sandbox) -> None:
    # given a processing refund whose settle time has passed
    await sandbox.faults(processing_rate=1)
    await sandbox.provider.submit(refund())
    await asyncio.sleep(0.03)
    # when it is queried, then it reads as settled
    assert (await sandbox.provider.query(refund())).status == "succeeded"


async def test_duplicate_notification_reuses_its_id(sandbox: Sandbox) -> None:
    await sandbox.faults(duplicate_notify_rate=1)
    await sandbox.provider.submit(refund())
    first, second = await sandbox.receiver.wait_for(2)
    assert first.content == second.content


async def test_late_notification_is_a_stale_processing_one(sandbox: Sandbox) -> None:
    await sandbox.faults(late_notify_rate=1)
    await sandbox.provider.submit(refund())
    final, late = [sandbox.provider.parse_notification(r.headers, r.content) for r in await sandbox.receiver.wait_for(2)]
    assert (final.status, late.status) == ("succeeded", "processing")
    assert final.notify_id != late.notify_id


async def test_notification_is_retried_until_the_receiver_accepts(sandbox: Sandbox) -> None:
    # given a receiver that fails twice
    sandbox.receiver.answers = [500, 503]
    # when a refund succeeds, then the third attempt is delivered
    await sandbox.provider.submit(refund())
    await sandbox.receiver.wait_for(3)
    await asyncio.sleep(0.01)
    [entry] = (await sandbox.ledger())["notifications"]
    assert (entry["attempts"], entry["delivered"]) == (3, True)


async def test_notification_delivery_gives_up(sandbox: Sandbox) -> None:
    sandbox.receiver.answers = [500, 500, 500, 500]
    await sandbox.provider.submit(refund())
    await sandbox.receiver.wait_for(3)
    await asyncio.sleep(0.02)
    [entry] = (await sandbox.ledger())["notifications"]
    assert (entry["attempts"], entry["delivered"]) == (3, False)


async def test_seed_makes_fault_draws_repeatable(sandbox: Sandbox) -> None:
    async def run() -> list[str]:
        await sandbox.control.post("/control/reset")
        await sandbox.faults(seed=7, error_5xx_rate=0.5, settle_delay_s=0.02)
        return [(await sandbox.provider.submit(refund(f"RF{n}", 1))).status for n in range(8)]

    assert await run() == await run()


async def test_faults_reject_unknown_names_and_bad_rates(sandbox: Sandbox) -> None:
    assert (await sandbox.control.put("/control/faults", json={"nope": 1})).status_code == 400
    assert (await sandbox.control.put("/control/faults", json={"fail_rate": 2})).status_code == 400
    assert (await sandbox.control.get("/control/faults")).json()["settle_delay_s"] == 0.02


async def test_reset_clears_the_books(sandbox: Sandbox) -> None:
    await sandbox.provider.submit(refund())
    await sandbox.faults(fail_rate=1)
    await sandbox.control.post("/control/reset")
    ledger = await sandbox.ledger()
    assert (ledger["refunds"], ledger["violations"]) == ([], [])
    assert (await sandbox.control.get("/control/faults")).json()["fail_rate"] == 0


async def test_malformed_request_is_param_error(sandbox: Sandbox) -> None:
    answer = await sandbox.control.post("/v3/refund/domestic/refunds", json={"out_refund_no": "X"})
    assert (answer.status_code, answer.json()["code"]) == (400, "PARAM_ERROR")


# --- status mapping, against canned answers ---

@pytest.mark.parametrize("psp_status, ours", [
    ("SUCCESS", "succeeded"), ("PROCESSING", "processing"), ("ABNORMAL", "abnormal"), ("CLOSED", "failed"),
    ("SOMETHING_NEW", "unknown"),
])
async def test_refund_status_mapping(psp_status: str, ours: str) -> None:
    body = {"refund_id": "5030", "out_refund_no": "RF1", "status": psp_status, "amount": {"refund": 3000}}
    provider = canned(200, body)
    assert (await provider.submit(refund())).status == ours
    assert (await provider.query(refund())).status == ours


@pytest.mark.parametrize("status, body, ours", [
    (400, {"code": "NOT_ENOUGH"}, "failed"),
    (400, {"code": "REFUND_LIMIT"}, "failed"),
    (400, {"code": "INVALID_REQUEST"}, "failed"),
    (400, {"code": "PARAM_ERROR"}, "failed"),
    (429, {"code": "FREQUENCY_LIMITED"}, "unknown"),
    (401, {"code": "SIGN_ERROR"}, "unknown"),
    (404, {"code": "NOT_FOUND"}, "unknown"),
    (500, {"code": "SYSTEM_ERROR"}, "unknown"),
    (502, b"<html>bad gateway</html>", "unknown"),
    (200, b"not json", "unknown"),
    (200, {"refund_id": "5030", "out_refund_no": "OTHER", "status": "SUCCESS"}, "unknown"),
])
async def test_submit_answer_mapping(status: int, body: object, ours: str) -> None:
    assert (await canned(status, body).submit(refund())).status == ours


@pytest.mark.parametrize("status, body, ours", [
    (404, {"code": "RESOURCE_NOT_EXISTS"}, "not_found"),
    (404, b"<html>no such route</html>", "unknown"),
    (400, {"code": "PARAM_ERROR"}, "unknown"),
    (503, {"code": "SYSTEM_ERROR"}, "unknown"),
])
async def test_query_answer_mapping(status: int, body: object, ours: str) -> None:
    assert (await canned(status, body).query(refund())).status == ours


async def test_connection_error_is_unknown() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    provider = SandboxProvider(base_url=PSP, transport=httpx.MockTransport(refuse))
    assert (await provider.submit(refund())).status == "unknown"
    assert (await provider.query(refund())).status == "unknown"


# --- notifications ---

def notification(status: str = "SUCCESS", event_type: str | None = None, **extra: object) -> bytes:
    body = {"id": "N1", "event_type": event_type or f"REFUND.{status}",
            "resource": {"out_refund_no": "RF1", "refund_id": "5030", "refund_status": status,
                         "amount": {"refund": 3000}}} | extra
    return json.dumps(body).encode()


@pytest.mark.parametrize("psp_status, ours", [
    ("SUCCESS", "succeeded"), ("PROCESSING", "processing"), ("ABNORMAL", "abnormal"), ("CLOSED", "failed"),
])
def test_notification_status_mapping(psp_status: str, ours: str) -> None:
    body = notification(psp_status)
    note = SandboxProvider().parse_notification({SIGNATURE_HEADER.lower(): sign_notification(body)}, body)
    assert (note.notify_id, note.refund_no, note.status, note.amount_fen) == ("N1", "RF1", ours, 3000)


@pytest.mark.parametrize("headers, body", [
    ({}, notification()),
    ({SIGNATURE_HEADER: "00" * 32}, notification()),
    ({SIGNATURE_HEADER: sign_notification(notification())}, notification("CLOSED")),
    ({SIGNATURE_HEADER: sign_notification(b"{not json")}, b"{not json"),
    ({SIGNATURE_HEADER: sign_notification(b'{"id":"N1"}')}, b'{"id":"N1"}'),
    ({SIGNATURE_HEADER: sign_notification(notification("SUCCESS", "REFUND.CLOSED"))},
     notification("SUCCESS", "REFUND.CLOSED")),
    ({SIGNATURE_HEADER: sign_notification(notification("WHATEVER"))}, notification("WHATEVER")),
])
def test_bad_notifications_are_refused(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(BadNotification):
        SandboxProvider().parse_notification(headers, body)


# --- the registry and the manual provider ---

async def test_manual_provider_waits_for_an_agent() -> None:
    provider = ManualProvider()
    assert await provider.submit(refund()) == ProviderResult("processing", detail="awaiting manual confirmation")
    assert (await provider.query(refund())).status == "processing"
    with pytest.raises(BadNotification):
        provider.parse_notification({}, b"{}")


async def test_get_provider_knows_only_its_names() -> None:
    assert [get_provider(n).name for n in PROVIDER_NAMES] == ["manual", "sandbox"]
    assert get_provider("sandbox") is get_provider("sandbox")
    assert (get_provider("manual").polls, get_provider("sandbox").polls) == (False, True)
    with pytest.raises(KeyError):
        get_provider("alipay")
    await close_providers()


@pytest.mark.parametrize("kwargs", [{"refund_no": "has space"}, {"refund_no": "X" * 33}, {"amount_fen": 0},
                                    {"amount_fen": 10001}])
def test_refund_request_refuses_what_no_provider_accepts(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        refund(**kwargs)
