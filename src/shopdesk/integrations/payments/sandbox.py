"""The connector ShopDesk uses to refund through the sandbox PSP (sandbox_psp.py), in WeChat Pay v3 dialect."""
from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Mapping
from typing import Any

import httpx

from shopdesk.config import get_settings
from shopdesk.integrations.payments.base import BadNotification, Notification, ProviderResult, RefundRequest
from shopdesk.integrations.payments.sandbox_psp import EVENT_TYPES, SIGNATURE_HEADER, sign_notification

REFUNDS_PATH = "/v3/refund/domestic/refunds"
STATUS_MAP = {"SUCCESS": "succeeded", "PROCESSING": "processing", "ABNORMAL": "abnormal", "CLOSED": "failed"}
# Rulebook §7.2: only these answers prove the PSP refused and will never pay this refund_no.
DEFINITE_REJECTIONS = frozenset({"NOT_ENOUGH", "REFUND_LIMIT", "INVALID_REQUEST", "PARAM_ERROR"})


class SandboxProvider:
    name = "sandbox"
    polls = True

    def __init__(self, *, base_url: str | None = None, timeout_s: float = 2.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.transport = transport
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _url(self, path: str) -> str:
        # Read at call time: settings may change after import (tests, the app factory).
        base = self.base_url or get_settings().effective_sandbox_psp_url
        return base.rstrip("/") + path

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        # A pool opened on a finished loop (asyncio.run in a CLI) cannot be reused; start afresh.
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(transport=self.transport, timeout=self.timeout_s)
            self._client_loop = loop
        return self._client

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None
                    ) -> tuple[int, dict[str, Any]] | ProviderResult:
        """Send one request; return (status, JSON body), or an "unknown" result when no answer could be read."""
        try:
            # httpx times each phase separately and ASGI transports not at all; bound the whole call.
            async with asyncio.timeout(self.timeout_s):
                answer = await self._http().request(method, self._url(path), json=payload)
        except TimeoutError:
            return ProviderResult("unknown", detail=f"timed out after {self.timeout_s}s")
        except httpx.HTTPError as exc:
            return ProviderResult("unknown", detail=f"network error: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - the contract is to never raise; the money may have moved
            return ProviderResult("unknown", detail=f"client error: {exc!r}")
        if answer.status_code >= 500:
            return ProviderResult("unknown", detail=f"HTTP {answer.status_code}: {answer.text[:200]}")
        try:
            body = answer.json()
        except ValueError:
            return ProviderResult("unknown", detail=f"HTTP {answer.status_code}, unreadable body: {answer.text[:200]}")
        if not isinstance(body, dict):
            return ProviderResult("unknown", detail=f"HTTP {answer.status_code}, unexpected body: {answer.text[:200]}")
        return answer.status_code, body

    def _read_refund(self, req: RefundRequest, body: dict[str, Any]) -> ProviderResult:
        status = STATUS_MAP.get(body.get("status"))  # type: ignore[arg-type]
        if status is None or body.get("out_refund_no") != req.refund_no:
            return ProviderResult("unknown", detail=f"unexpected refund body: {json.dumps(body)[:200]}")
        amount = (body.get("amount") or {}).get("refund")
        detail = body["status"]
        if amount != req.amount_fen:
            detail += f"; provider holds amount {amount}, we asked {req.amount_fen}"
        return ProviderResult(status, provider_ref=body.get("refund_id"), detail=detail)

    async def submit(self, req: RefundRequest) -> ProviderResult:
        """Send the refund with refund_no as out_refund_no; never raise."""
        if not req.trade_no:
            # Nothing was sent, so nothing can have moved: a definite failure.
            return ProviderResult("failed", detail="no trade number to refund against")
        payload = {"out_refund_no": req.refund_no, "transaction_id": req.trade_no,
                   "amount": {"refund": req.amount_fen, "total": req.payment_total_fen, "currency": "CNY"},
                   "notify_url": req.notify_url}
        answer = await self._call("POST", REFUNDS_PATH, payload)
        if isinstance(answer, ProviderResult):
            return answer
        code, body = answer
        if code == 200:
            return self._read_refund(req, body)
        if code == 400 and body.get("code") in DEFINITE_REJECTIONS:
            return ProviderResult("failed", detail=f"{body['code']}: {body.get('message', '')}")
        # Rate limits, auth trouble, a wrong URL: the refund may still be pending or retryable.
        return ProviderResult("unknown", detail=f"HTTP {code}: {json.dumps(body)[:200]}")

    async def query(self, req: RefundRequest) -> ProviderResult:
        """Ask the PSP what became of refund_no; never raise."""
        answer = await self._call("GET", f"{REFUNDS_PATH}/{req.refund_no}")
        if isinstance(answer, ProviderResult):
            return answer
        code, body = answer
        if code == 200:
            return self._read_refund(req, body)
        if code == 404 and body.get("code") == "RESOURCE_NOT_EXISTS":
            return ProviderResult("not_found", detail=body.get("message", ""))
        return ProviderResult("unknown", detail=f"HTTP {code}: {json.dumps(body)[:200]}")

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify the signature and read a notification, or raise BadNotification."""
        wanted = SIGNATURE_HEADER.lower()
        signature = next((v for k, v in headers.items() if k.lower() == wanted), None)
        if not signature or not hmac.compare_digest(signature.encode(), sign_notification(body).encode()):
            raise BadNotification("bad or missing signature")
        try:
            data = json.loads(body)
            resource = data["resource"]
            refund_status = resource["refund_status"]
            notify_id, refund_no, event_type = data["id"], resource["out_refund_no"], data["event_type"]
            amount = (resource.get("amount") or {}).get("refund")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadNotification(f"malformed notification: {exc!r}") from exc
        if refund_status not in STATUS_MAP or EVENT_TYPES[refund_status] != event_type:
            raise BadNotification(f"event {event_type!r} does not match refund status {refund_status!r}")
        if not (isinstance(notify_id, str) and notify_id and isinstance(refund_no, str) and refund_no):
            raise BadNotification("notification id or out_refund_no missing")
        if amount is not None and (not isinstance(amount, int) or isinstance(amount, bool)):
            raise BadNotification(f"amount.refund is not an integer: {amount!r}")
        return Notification(notify_id=notify_id, refund_no=refund_no, status=STATUS_MAP[refund_status],
                            amount_fen=amount)

    async def aclose(self) -> None:
        """Close the HTTP client if one was opened."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
