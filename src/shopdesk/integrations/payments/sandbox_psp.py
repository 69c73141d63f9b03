"""A local stand-in for a payment provider that answers refunds like WeChat Pay v3, with fault injection.

Mount ``app`` (or ``create_app()``) at ``/sandbox-psp`` in the main app, or run it alone with
``uvicorn shopdesk.integrations.payments.sandbox_psp:app``. State lives in memory for the life of
the process. The ``/control`` routes have no authentication: serve this only in development and tests.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shopdesk.config import get_settings
from shopdesk.core import clock

NOTIFY_LABEL = b"sandbox-psp-notify"
SIGNATURE_HEADER = "X-Sandbox-Signature"
# WeChat Pay: at most 50 partial refunds on one trade (rulebook §7.7).
MAX_REFUNDS_PER_TRADE = 50
DEFAULT_NOTIFY_BACKOFF_S = (0.2, 1.0, 3.0)
NOTIFY_TIMEOUT_S = 2.0
EVENT_TYPES = {"SUCCESS": "REFUND.SUCCESS", "ABNORMAL": "REFUND.ABNORMAL", "CLOSED": "REFUND.CLOSED",
               "PROCESSING": "REFUND.PROCESSING"}

Rate = Annotated[float, Field(ge=0, le=1)]


def notify_secret() -> bytes:
    """Derive the key that signs notifications from the application's secret key."""
    return hmac.new(get_settings().secret_key.encode(), NOTIFY_LABEL, hashlib.sha256).digest()


def sign_notification(body: bytes) -> str:
    """Return the hex HMAC-SHA256 of a raw notification body."""
    return hmac.new(notify_secret(), body, hashlib.sha256).hexdigest()


class Faults(BaseModel):
    """Fault rates (0..1, each drawn independently) and timings; all off by default."""

    model_config = ConfigDict(extra="forbid")

    timeout_rate: Rate = 0.0              # submit and query: sleep first; a submit is then not recorded
    timeout_after_commit_rate: Rate = 0.0  # submit: record, then sleep before answering
    error_5xx_rate: Rate = 0.0            # submit: answer 500/502/503 without recording
    error_5xx_after_commit_rate: Rate = 0.0  # submit: record, then answer 500
    processing_rate: Rate = 0.0           # answer PROCESSING, settle SUCCESS after settle_delay_s
    abnormal_rate: Rate = 0.0             # settle ABNORMAL
    fail_rate: Rate = 0.0                 # settle CLOSED
    duplicate_notify_rate: Rate = 0.0     # send the final notification twice with one id
    late_notify_rate: Rate = 0.0          # send a stale PROCESSING notification after the final one
    query_5xx_rate: Rate = 0.0            # query: answer 503
    timeout_sleep_s: float = Field(3.0, ge=0)
    settle_delay_s: float = Field(0.2, ge=0)
    seed: int | None = None


class RefundAmount(BaseModel):
    refund: int = Field(gt=0)
    total: int = Field(gt=0)
    currency: str = "CNY"


class RefundBody(BaseModel):
    out_refund_no: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    transaction_id: str = Field(min_length=1, max_length=64)
    amount: RefundAmount
    notify_url: str = Field(min_length=1)
    reason: str | None = None


@dataclass
class SandboxRefund:
    out_refund_no: str
    refund_id: str
    transaction_id: str
    amount: int
    total: int
    notify_url: str
    status: str
    final_status: str
    created_at: datetime
    settle_due: float  # event-loop time at which a PROCESSING refund settles
    duplicate_notify: bool
    late_notify: bool
    success_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """Return the refund as the PSP's API shows it."""
        body: dict[str, Any] = {
            "refund_id": self.refund_id, "out_refund_no": self.out_refund_no,
            "transaction_id": self.transaction_id, "status": self.status,
            "amount": {"refund": self.amount, "total": self.total, "currency": "CNY"},
            "create_time": clock.isoformat(self.created_at),
        }
        if self.success_at:
            body["success_time"] = clock.isoformat(self.success_at)
        return body


def problem(status: int, code: str, message: str) -> JSONResponse:
    """Return an error in the PSP's {"code", "message"} shape."""
    return JSONResponse({"code": code, "message": message}, status_code=status)


class SandboxPSP:
    """The PSP's in-memory books, its fault dice and its notification sender."""

    def __init__(self, *, notify_transport: httpx.AsyncBaseTransport | None = None,
                 notify_backoff_s: Sequence[float] = DEFAULT_NOTIFY_BACKOFF_S) -> None:
        self.notify_transport = notify_transport
        self.notify_backoff_s = tuple(notify_backoff_s)
        self.faults = Faults()
        self.rng = random.Random()
        self.refunds: dict[str, SandboxRefund] = {}
        self.totals: dict[str, int] = {}
        self.violations: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    def _bind_loop(self) -> None:
        # The module-level app may outlive an event loop (asyncio.run in a CLI, per-test loops);
        # a lock or connection pool from a dead loop would fail, so rebuild them on a new one.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._lock = asyncio.Lock()
            self._client = None
            self.tasks = set()

    def _chance(self, rate: float) -> bool:
        # No draw for a zero rate, so one seed gives the same run whichever faults are off.
        return rate > 0 and self.rng.random() < rate

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        # Keep a reference: the loop holds tasks only weakly.
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def set_faults(self, update: dict[str, Any]) -> Faults:
        """Apply a partial update of the faults; a seed reseeds the dice."""
        self.faults = Faults.model_validate(self.faults.model_dump() | update)
        if "seed" in update:
            self.rng.seed(self.faults.seed)
        return self.faults

    async def create_refund(self, body: RefundBody) -> JSONResponse:
        """Accept, replay or reject a refund, with the configured faults."""
        self._bind_loop()
        faults = self.faults
        if self._chance(faults.timeout_rate):
            await asyncio.sleep(faults.timeout_sleep_s)
            return problem(504, "SYSTEM_ERROR", "sandbox: timed out before recording the refund")
        if self._chance(faults.error_5xx_rate):
            return problem(self.rng.choice((500, 502, 503)), "SYSTEM_ERROR", "sandbox: failed before recording")
        async with self._lock:
            refund = self.refunds.get(body.out_refund_no)
            if refund is not None:
                mismatch = self._replay_mismatch(refund, body)
                if mismatch:
                    return problem(400, "INVALID_REQUEST", mismatch)
            else:
                rejection = self._check_business_rules(body)
                if rejection:
                    return rejection
                refund = self._record(body)
            answer = refund.as_json()
        if self._chance(faults.timeout_after_commit_rate):
            await asyncio.sleep(faults.timeout_sleep_s)
        if self._chance(faults.error_5xx_after_commit_rate):
            return problem(500, "SYSTEM_ERROR", "sandbox: failed after recording the refund")
        return JSONResponse(answer)

    def _replay_mismatch(self, refund: SandboxRefund, body: RefundBody) -> str:
        # Rulebook §7.4: a retry reuses the number AND the amount; anything else is the bug the
        # chaos test hunts, so it is written down as well as refused.
        if body.amount.refund != refund.amount:
            self._record_violation(refund.out_refund_no, body.amount.refund, "amount")
            return f"out_refund_no {refund.out_refund_no} was used with amount {refund.amount}"
        if body.transaction_id != refund.transaction_id:
            self._record_violation(refund.out_refund_no, body.amount.refund, "transaction")
            return f"out_refund_no {refund.out_refund_no} belongs to another transaction"
        return ""

    def _record_violation(self, out_refund_no: str, amount: int, reason: str) -> None:
        for violation in self.violations:
            if violation["out_refund_no"] == out_refund_no:
                violation["amounts"].append(amount)
                return
        first = self.refunds[out_refund_no].amount
        self.violations.append({"out_refund_no": out_refund_no, "amounts": [first, amount], "reason": reason})

    def _check_business_rules(self, body: RefundBody) -> JSONResponse | None:
        trade = body.transaction_id
        known_total = self.totals.get(trade)
        if known_total is not None and known_total != body.amount.total:
            return problem(400, "PARAM_ERROR", f"amount.total {body.amount.total} != trade total {known_total}")
        on_trade = [r for r in self.refunds.values() if r.transaction_id == trade]
        if len(on_trade) >= MAX_REFUNDS_PER_TRADE:
            return problem(400, "REFUND_LIMIT", f"at most {MAX_REFUNDS_PER_TRADE} refunds per transaction")
        # CLOSED refunds gave the money back to the trade; ABNORMAL ones still hold it.
        refunded = sum(r.amount for r in on_trade if r.status != "CLOSED")
        if refunded + body.amount.refund > body.amount.total:
            return problem(400, "NOT_ENOUGH", f"{body.amount.total - refunded} fen left to refund")
        return None

    def _record(self, body: RefundBody) -> SandboxRefund:
        faults = self.faults
        if self._chance(faults.abnormal_rate):
            final = "ABNORMAL"
        elif self._chance(faults.fail_rate):
            final = "CLOSED"
        else:
            final = "SUCCESS"
        at_once = final == "SUCCESS" and not self._chance(faults.processing_rate)
        now = clock.now()
        refund = SandboxRefund(
            out_refund_no=body.out_refund_no, refund_id=f"50300{uuid.uuid4().int % 10**24:024d}",
            transaction_id=body.transaction_id, amount=body.amount.refund, total=body.amount.total,
            notify_url=body.notify_url, status="SUCCESS" if at_once else "PROCESSING", final_status=final,
            created_at=now, settle_due=asyncio.get_running_loop().time() + faults.settle_delay_s,
            duplicate_notify=self._chance(faults.duplicate_notify_rate),
            late_notify=self._chance(faults.late_notify_rate), success_at=now if at_once else None,
        )
        self.refunds[refund.out_refund_no] = refund
        self.totals.setdefault(refund.transaction_id, refund.total)
        self._spawn(self._settle_and_notify(refund, 0.0 if at_once else faults.settle_delay_s))
        return refund

    def _settle(self, refund: SandboxRefund) -> None:
        if refund.status == "PROCESSING":
            refund.status = refund.final_status
            if refund.status == "SUCCESS":
                refund.success_at = clock.now()

    async def get_refund(self, out_refund_no: str) -> JSONResponse:
        """Answer a refund query, with the configured faults."""
        self._bind_loop()
        faults = self.faults
        if self._chance(faults.timeout_rate):
            await asyncio.sleep(faults.timeout_sleep_s)
        if self._chance(faults.query_5xx_rate):
            return problem(503, "SYSTEM_ERROR", "sandbox: query failed")
        async with self._lock:
            refund = self.refunds.get(out_refund_no)
            if refund is None:
                return problem(404, "RESOURCE_NOT_EXISTS", f"no refund {out_refund_no}")
            # Settle on read too, so a query is right even if the settling task never ran.
            if asyncio.get_running_loop().time() >= refund.settle_due:
                self._settle(refund)
            return JSONResponse(refund.as_json())

    async def _settle_and_notify(self, refund: SandboxRefund, delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        async with self._lock:
            self._settle(refund)
            status = refund.status
        final = self._notification(refund, status)
        await self._deliver(refund, final)
        if refund.duplicate_notify:
            await self._deliver(refund, final)
        if refund.late_notify:
            await asyncio.sleep(self.faults.settle_delay_s)
            await self._deliver(refund, self._notification(refund, "PROCESSING"))

    def _notification(self, refund: SandboxRefund, status: str) -> tuple[str, str, bytes]:
        notify_id = str(uuid.uuid4())
        event_type = EVENT_TYPES[status]
        body = {"id": notify_id, "create_time": clock.isoformat(clock.now()), "event_type": event_type,
                "resource": {"out_refund_no": refund.out_refund_no, "refund_id": refund.refund_id,
                             "transaction_id": refund.transaction_id, "refund_status": status,
                             "amount": {"refund": refund.amount, "total": refund.total}}}
        return notify_id, event_type, json.dumps(body, separators=(",", ":")).encode()

    async def _deliver(self, refund: SandboxRefund, notification: tuple[str, str, bytes]) -> None:
        notify_id, event_type, body = notification
        entry: dict[str, Any] = {"id": notify_id, "out_refund_no": refund.out_refund_no, "event_type": event_type,
                                 "attempts": 0, "delivered": False, "last_error": None}
        self.notifications.append(entry)
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self.notify_transport, timeout=NOTIFY_TIMEOUT_S)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign_notification(body)}
        for backoff in (*self.notify_backoff_s, None):
            entry["attempts"] += 1
            try:
                answer = await self._client.post(refund.notify_url, content=body, headers=headers)
                if answer.is_success:
                    entry["delivered"] = True
                    return
                entry["last_error"] = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                entry["last_error"] = repr(exc)
            if backoff is None:
                # Give up like a real PSP: the merchant must query to learn the outcome.
                return
            await asyncio.sleep(backoff)

    def ledger(self) -> dict[str, Any]:
        """Return every refund, protocol violation and notification attempt."""
        refunds = [{"out_refund_no": r.out_refund_no, "transaction_id": r.transaction_id, "amount": r.amount,
                    "status": r.status, "created_at": clock.isoformat(r.created_at)} for r in self.refunds.values()]
        return {"refunds": refunds, "violations": self.violations, "notifications": self.notifications}

    async def reset(self) -> None:
        """Forget every refund and fault, and stop pending settlements and notifications."""
        await self._cancel_tasks()
        self.faults = Faults()
        self.rng = random.Random()
        self.refunds.clear()
        self.totals.clear()
        self.violations.clear()
        self.notifications.clear()

    async def aclose(self) -> None:
        """Stop background tasks and close the notification client."""
        await self._cancel_tasks()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self.tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def create_app(*, notify_transport: httpx.AsyncBaseTransport | None = None,
               notify_backoff_s: Sequence[float] = DEFAULT_NOTIFY_BACKOFF_S) -> FastAPI:
    """Build a sandbox PSP app with its own empty books; its state is at app.state.psp."""
    psp = SandboxPSP(notify_transport=notify_transport, notify_backoff_s=notify_backoff_s)
    app = FastAPI(title="ShopDesk sandbox PSP", docs_url="/docs", openapi_url="/openapi.json")
    app.state.psp = psp

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A PSP answers a malformed request with 400 PARAM_ERROR, not FastAPI's 422.
        return problem(400, "PARAM_ERROR", str(exc.errors()[:3]))

    @app.post("/v3/refund/domestic/refunds")
    async def create_refund(body: RefundBody) -> JSONResponse:
        return await psp.create_refund(body)

    @app.get("/v3/refund/domestic/refunds/{out_refund_no}")
    async def get_refund(out_refund_no: str) -> JSONResponse:
        return await psp.get_refund(out_refund_no)

    @app.get("/control/faults")
    async def read_faults() -> dict[str, Any]:
        return psp.faults.model_dump()

    @app.put("/control/faults")
    async def update_faults(update: dict[str, Any]) -> JSONResponse:
        try:
            return JSONResponse(psp.set_faults(update).model_dump())
        except ValidationError as exc:
            return problem(400, "PARAM_ERROR", str(exc.errors(include_url=False)))

    @app.get("/control/ledger")
    async def read_ledger() -> dict[str, Any]:
        return psp.ledger()

    @app.post("/control/reset")
    async def reset() -> dict[str, Any]:
        await psp.reset()
        return {"ok": True}

    return app


app = create_app()
