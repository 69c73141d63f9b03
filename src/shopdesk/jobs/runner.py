"""The job runner: timers, refund submission and the outbox, safe on several nodes at once."""
from __future__ import annotations

import asyncio
import json
from email.message import EmailMessage
from datetime import timedelta

import httpx
import structlog
from sqlalchemy import or_, select

from shopdesk.aftersales.actions import case_options, fire_alarm, fire_deadline
from shopdesk.aftersales.models import AftersaleCase
from shopdesk.config import get_settings
from shopdesk.core.clock import now
from shopdesk.core.db import transaction
from shopdesk.core.outbox import OutboxItem
from shopdesk.core.security import hmac_hex
from shopdesk.integrations.payments import RefundRequest, get_provider
from shopdesk.notifications.models import Webhook
from shopdesk.refunds.actions import apply_result, backoff, claim_due

log = structlog.get_logger("shopdesk.jobs")


async def sweep_timers(limit: int = 500, merchant_id: str | None = None) -> int:
    """Fire every case deadline and refund alarm due now, each once; return how many fired."""
    at = now()
    due = or_(AftersaleCase.deadline_at <= at, AftersaleCase.alarm_at <= at)
    if merchant_id:
        due = due & (AftersaleCase.merchant_id == merchant_id)
    async with transaction() as session:
        ids = list((await session.execute(
            select(AftersaleCase.id).where(due).order_by(AftersaleCase.deadline_at).limit(limit))).scalars())
    fired = 0
    for case_id in ids:
        try:
            async with transaction() as session:
                # Re-check under the row lock: another node may have fired it meanwhile.
                case = (await session.execute(
                    select(AftersaleCase).where(AftersaleCase.id == case_id, due).options(*case_options())
                    .with_for_update(skip_locked=True, of=AftersaleCase).execution_options(populate_existing=True))).scalar_one_or_none()
                if case is None:
                    continue
                if case.deadline_at and case.deadline_at <= at:
                    fired += int(await fire_deadline(session, case))
                if case.alarm_at and case.alarm_at <= at:
                    fired += int(await fire_alarm(session, case))
        except Exception:  # one broken case must not stop the others
            log.exception("timer_failed", case_id=case_id)
    return fired


async def _settle(claim, retry_base_s: float) -> None:
    provider = get_provider(claim.provider)
    req = RefundRequest(refund_no=claim.refund_no, trade_no=claim.trade_no, method=claim.method,
                        amount_fen=claim.amount_fen, payment_total_fen=claim.payment_total_fen,
                        notify_url=f"{get_settings().base_url}/api/v1/payments/notify/{claim.provider}")
    if claim.status == "created":
        result = await provider.submit(req)
    else:
        result = await provider.query(req)
        if result.status == "not_found" and claim.status == "unknown":
            # The provider never saw it: send it again, same number, same amount (rulebook 7.4).
            result = await provider.submit(req)
    status = result.status
    if status == "failed" and result.detail.startswith("INVALID_REQUEST"):
        # A mismatch on our own number is our bug, not a refusal: hold it for a person, never re-mint.
        status = "abnormal"
    async with transaction() as session:
        await apply_result(session, claim.refund_no, status, provider_ref=result.provider_ref,
                           detail=result.detail, retry_base_s=retry_base_s, poll=provider.polls)


async def process_refunds(limit: int = 100, lease_s: float | None = None, retry_base_s: float | None = None,
                          concurrency: int = 16) -> int:
    """Settle up to limit due refunds, at most `concurrency` at once, each claimed just before it is worked on.

    A lease only has to outlast one attempt, not a queue behind other refunds' timeouts: a lease that
    ran out in the queue let a second worker take the same refund (harmless for the money, the
    refund_no is the idempotency key, but every claim counts as an attempt and doubles the back-off).
    """
    settings = get_settings()
    lease = lease_s if lease_s is not None else settings.refund_lease_s
    base = retry_base_s if retry_base_s is not None else settings.refund_retry_base_s
    async with transaction() as session:
        first = await claim_due(session, limit=min(concurrency, limit), lease_s=lease)
    claimed = len(first)

    async def lane(claim) -> None:
        nonlocal claimed
        while claim is not None:
            try:
                await _settle(claim, base)
            except Exception:  # the lease expires and another pass retries it
                log.exception("refund_attempt_failed", refund_no=claim.refund_no)
            claim = None
            if claimed < limit:
                claimed += 1
                try:
                    async with transaction() as session:
                        more = await claim_due(session, limit=1, lease_s=lease)
                except Exception:  # this lane stops; the next pass claims again
                    log.exception("refund_claim_failed")
                    more = []
                if more:
                    claim = more[0]
                else:
                    claimed -= 1

    await asyncio.gather(*(lane(c) for c in first))
    return claimed


def _angle(message_id: str) -> str:
    return f"<{message_id.strip().strip('<>')}>"


# Headers the payload's `headers` may not set: the ones built from the payload's own keys.
_OWN_HEADERS = {"from", "to", "subject", "date", "message-id", "in-reply-to", "references", "mime-version",
                "content-type", "content-transfer-encoding"}


async def _send_email(payload: dict) -> str:
    """Send one outbox email. Optional keys: `from` (a ticket's mailbox), `message_id`, `in_reply_to`,
    `references` (a list or a space-separated string) and `headers` (extra headers, e.g. X-Shopdesk-Ticket)."""
    import secrets
    from email.utils import format_datetime, parseaddr

    settings = get_settings()
    msg = EmailMessage()
    sender = payload.get("from") or settings.mail_from
    msg["From"] = sender
    msg["To"] = payload["to"]
    msg["Subject"] = payload["subject"]
    msg["Date"] = format_datetime(now())
    headers = {str(k): str(v) for k, v in (payload.get("headers") or {}).items()}
    if payload.get("message_id"):
        msg["Message-ID"] = _angle(payload["message_id"])
    else:
        # Our own id, with the ticket number when there is one, so an answer to this mail finds its ticket.
        domain = parseaddr(sender)[1].rpartition("@")[2] or "shopdesk.local"
        ticket = next((v for k, v in headers.items() if k.lower() == "x-shopdesk-ticket"), "")
        msg["Message-ID"] = f"<{ticket + '.' if ticket else ''}{secrets.token_hex(16)}@{domain}>"
    if payload.get("in_reply_to"):
        msg["In-Reply-To"] = _angle(payload["in_reply_to"])
    references = payload.get("references") or []
    if isinstance(references, str):
        references = references.split()
    if references:
        msg["References"] = " ".join(_angle(r) for r in references)
    for name, value in headers.items():
        if name.lower() not in _OWN_HEADERS:
            msg[name] = value
    msg.set_content(payload["body"])
    if not settings.smtp_host:
        # No SMTP server configured (a laptop demo): keep the mail as a file to read.
        folder = settings.var_dir / "mail"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{now().strftime('%Y%m%dT%H%M%S%f')}.eml"
        path.write_bytes(bytes(msg))
        return f"file:{path}"
    import aiosmtplib

    await aiosmtplib.send(msg, hostname=settings.smtp_host, port=settings.smtp_port, timeout=10)
    return "smtp"


async def _send_webhook(payload: dict, client: httpx.AsyncClient) -> str:
    async with transaction() as session:
        hook = await session.get(Webhook, payload["webhook_id"])
    if hook is None:
        return "webhook deleted"
    body = json.dumps(payload["body"], ensure_ascii=False, separators=(",", ":")).encode()
    response = await client.post(hook.url, content=body, headers={
        "Content-Type": "application/json", "X-Shopdesk-Signature": f"sha256={hmac_hex(hook.secret, body)}",
        "X-Shopdesk-Delivery": payload["body"]["id"], "X-Shopdesk-Event": payload["body"]["event"]})
    response.raise_for_status()
    return f"http {response.status_code}"


async def _send_wechat(payload: dict, client: httpx.AsyncClient) -> str:
    from shopdesk.tickets.wechat import send_customer_service_message

    return await send_customer_service_message(payload, client)


async def deliver_outbox(limit: int = 100, lease_s: float = 60, max_attempts: int = 12) -> int:
    async with transaction() as session:
        items = list((await session.execute(
            select(OutboxItem).where(OutboxItem.status == "pending", OutboxItem.next_attempt_at <= now())
            .order_by(OutboxItem.next_attempt_at).limit(limit).with_for_update(skip_locked=True).execution_options(populate_existing=True))).scalars())
        for item in items:
            item.attempts += 1
            item.next_attempt_at = now() + timedelta(seconds=lease_s)
        work = [(i.id, i.kind, i.payload, i.attempts) for i in items]
    async with httpx.AsyncClient(timeout=10) as client:
        for item_id, kind, payload, attempts in work:
            error = None
            try:
                if kind == "wechat":
                    await _send_wechat(payload, client)
                else:
                    await (_send_email(payload) if kind == "email" else _send_webhook(payload, client))
            except Exception as exc:  # retried with back-off; the receiver de-duplicates by id
                error = f"{type(exc).__name__}: {exc}"
            async with transaction() as session:
                item = await session.get(OutboxItem, item_id, with_for_update=True, populate_existing=True)
                if item is None:
                    continue
                if error is None:
                    item.status, item.sent_at, item.last_error = "sent", now(), None
                else:
                    item.last_error = error
                    item.status = "failed" if attempts >= max_attempts else "pending"
                    item.next_attempt_at = now() + backoff(attempts, 5)
    return len(work)


async def sweep_chat() -> int:
    """Chat timers: agents whose sockets stayed gone → offline; idle chats → ended by the system. Safe on many nodes."""
    from shopdesk.chat.actions import close_idle, sweep_presence

    done = 0
    for step in (lambda: sweep_presence(get_settings().chat_presence_grace_s), close_idle):
        try:
            done += await step()
        except Exception:  # the next pass tries again
            log.exception("chat_sweep_failed")
    return done


async def sweep_tickets() -> int:
    from shopdesk.tickets.actions import sweep_sla
    from shopdesk.tickets.automation import sweep_time_rules

    done = 0
    for step in (sweep_sla, sweep_time_rules):
        try:
            done += await step()
        except Exception:  # the other sweeps go on
            log.exception("ticket_sweep_failed", step=step.__name__)
    return done


async def run_once() -> dict[str, int]:
    return {"timers": await sweep_timers(), "refunds": await process_refunds(), "outbox": await deliver_outbox(),
            "chat": await sweep_chat(), "tickets": await sweep_tickets()}


async def run_forever(stop: asyncio.Event, interval_s: float | None = None) -> None:
    from shopdesk.tickets.email_channel import run_mail_pollers

    interval = interval_s if interval_s is not None else get_settings().job_interval_s
    # One task per IMAP mailbox beside the sweeps, so a slow mail server never delays them (docs/email-channel.md).
    mail = asyncio.create_task(run_mail_pollers(stop), name="imap-supervisor")
    try:
        while not stop.is_set():
            try:
                await run_once()
            except Exception:
                log.exception("job_pass_failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass
    finally:
        if not stop.is_set():  # cancelled: the pollers go too
            mail.cancel()
        await asyncio.gather(mail, return_exceptions=True)
