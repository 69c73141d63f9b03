"""Phone calls from the shop's PBX (CTI): the call log, the caller's card in the agent's console, the call ticket.

A call moves forward only: ringing → answered → ended (docs/phone-and-wechat.md). The PBX may deliver an
event twice or out of order, so each event is applied under the call's row lock and one that is not ahead
of the call's state changes nothing. An `ended` that never saw `answered` is a missed call.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Staff, Store
from shopdesk.core.clock import as_utc, isoformat, now
from shopdesk.core.errors import NotFound, ValidationFailed
from shopdesk.core.pubsub import Event, get_broker
from shopdesk.core.security import hmac_hex, same
from shopdesk.customers import actions as customers
from shopdesk.customers.models import Customer
from shopdesk.tickets import actions
from shopdesk.tickets.channel_models import CallLog
from shopdesk.tickets.models import Ticket
from shopdesk.tickets.schemas import CustomerRef, TicketIn

SIGNATURE_HEADER = "X-Shopdesk-Signature"
MAX_BODY_BYTES = 16 * 1024
RANK = {"": 0, "ringing": 1, "answered": 2, "ended": 3}
OPEN_GROUPS = ("new", "open", "pending")
# A caller's second call within this long goes on the same phone ticket, not a new one.
FOLLOW_UP_WINDOW = timedelta(hours=24)
HISTORY_MAX = 20
CTI_ACTOR = ("system", "cti")


class CallEventIn(BaseModel):
    """One PBX event (contract: api.md "Tickets", inbound hooks); unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    event: Literal["ringing", "answered", "ended"]
    call_id: str = Field(min_length=1, max_length=128)
    caller: str = Field(max_length=64)
    agent_email: str | None = Field(default=None, max_length=254)
    recording_url: str | None = Field(default=None, max_length=1000)
    # Addition: when the PBX saw the event (unix seconds or ISO 8601); else when it reached us.
    at: datetime | None = None

    @field_validator("recording_url")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if value and not value.lower().startswith(("https://", "http://")):
            raise ValueError("an http(s) URL")
        return value or None


def parse_event(body: bytes) -> CallEventIn:
    """Parse a signed body; a wrong one is a 422 naming the field."""
    try:
        return CallEventIn.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise ValidationFailed(f"{where}: {err.get('msg', 'invalid')}", field=where) from exc


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Check `X-Shopdesk-Signature: sha256=<hex HMAC-SHA256 of the raw body with the store's identity secret>`."""
    if not header or not secret:
        return False
    scheme, _, value = header.strip().partition("=")
    if scheme.lower() != "sha256" or not value:
        return False
    return same(hmac_hex(secret, body), value.strip().lower())


def normalise_phone(raw: str) -> str:
    """Digits only, without the +86 / 0086 country prefix: "+86 138-0000 0000" → "13800000000"."""
    digits = re.sub(r"\D", "", raw or "")
    international = raw.strip().startswith("+") or digits.startswith("0086")
    if digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and (international or len(digits) == 13):
        digits = digits[2:]
    else:
        # Another country's number keeps its +, so it is never taken for a Chinese one.
        return (f"+{digits}" if international and digits else digits)[:32]
    # A landline written internationally drops the trunk 0 ("+86 21 5555 0000" is "021 5555 0000").
    if digits and not digits.startswith("1") and not digits.startswith("0"):
        digits = "0" + digits
    return digits[:32]


def mask_phone(phone: str) -> str:
    """138****0000: agents see numbers masked (service-desk §5)."""
    if not phone:
        return "未知号码"
    if len(phone) < 7:
        return phone[:1] + "*" * (len(phone) - 1)
    return phone[:3] + "****" + phone[-4:]


@dataclass
class CallOutcome:
    """What one event did, and the real-time frames to publish once it is committed."""

    call: CallLog
    applied: bool
    events: list[Event] = field(default_factory=list)

    async def publish(self) -> None:
        if self.events:
            await get_broker().publish_many(self.events)


def call_out(log: CallLog, *, reveal: bool = False) -> dict:
    return {"id": log.id, "call_id": log.call_id, "state": log.state, "missed": bool(log.data.get("missed")),
            "caller": log.caller if reveal else mask_phone(log.caller), "customer_id": log.customer_id,
            "agent_id": log.agent_id, "ticket_id": log.ticket_id, "recording_url": log.recording_url,
            "ringing_at": isoformat(log.ringing_at), "answered_at": isoformat(log.answered_at),
            "ended_at": isoformat(log.ended_at)}


async def _call_row(session: AsyncSession, store: Store, call_id: str, caller: str) -> CallLog:
    """The call's row, locked; created on its first event (whichever that is)."""
    stmt = (select(CallLog).where(CallLog.merchant_id == store.merchant_id, CallLog.call_id == call_id)
            .with_for_update().execution_options(populate_existing=True))
    log = (await session.execute(stmt)).scalar_one_or_none()
    if log is not None:
        return log
    try:
        async with session.begin_nested():
            log = CallLog(merchant_id=store.merchant_id, store_id=store.id, call_id=call_id, caller=caller, state="",
                          data={"events": []}, created_at=now())
            session.add(log)
    except IntegrityError:  # the same call's other event got there first: wait for it, then move on from it
        log = (await session.execute(stmt)).scalar_one()
    return log


async def _agent(session: AsyncSession, merchant_id: str, email: str | None) -> Staff | None:
    if not email or not email.strip():
        return None
    return (await session.execute(select(Staff).where(
        Staff.merchant_id == merchant_id, func.lower(Staff.email) == email.strip().lower()))).scalar_one_or_none()


async def do_call_event(session: AsyncSession, store: Store, ev: CallEventIn) -> CallOutcome:
    """Apply one PBX event to its call: forward moves only, each once, in the caller's transaction."""
    received = now()
    at = as_utc(ev.at) if ev.at is not None else received
    caller = normalise_phone(ev.caller)
    log = await _call_row(session, store, ev.call_id, caller)
    data = dict(log.data or {})
    history = list(data.get("events", []))[-(HISTORY_MAX - 1):]
    applied = RANK[ev.event] > RANK.get(log.state, 0)
    history.append({"event": ev.event, "at": isoformat(at), "received_at": isoformat(received), "applied": applied})
    data["events"] = history
    if not applied:
        # A repeat, or an event overtaken by a later one (a ringing after answered): the call does not go back.
        log.data = data
        return CallOutcome(log, applied=False)
    if not log.caller and caller:
        log.caller = caller
    if log.customer_id is None and log.caller:
        customer = await customers.customer_by_phone(session, log.merchant_id, log.caller)
        log.customer_id = customer.id if customer else None
    outcome = CallOutcome(log, applied=True)
    log.state = ev.event
    if ev.event == "ringing":
        log.ringing_at = at
    elif ev.event == "answered":
        log.answered_at = at
        agent = await _agent(session, log.merchant_id, ev.agent_email)
        if agent is not None:
            log.agent_id = agent.id
            outcome.events.append(Event((f"s:{agent.id}",), await card_frame(session, store, log)))
        elif ev.agent_email:
            data["unknown_agent"] = ev.agent_email[:254]
    else:
        log.ended_at = at
        if log.agent_id is None and log.answered_at is not None:
            agent = await _agent(session, log.merchant_id, ev.agent_email)
            log.agent_id = agent.id if agent else None
        if ev.recording_url:
            log.recording_url = ev.recording_url
        data["missed"] = log.answered_at is None
    log.data = data
    if ev.event == "ended":
        await _log_on_ticket(session, store, log)
    return outcome


# --------------------------------------------------------------------------------------------
# The caller's card (来电弹屏)
# --------------------------------------------------------------------------------------------
async def customer_card(session: AsyncSession, merchant_id: str, customer_id: str | None) -> dict:
    """The customer beside a call: name, masked phone, recent orders, open after-sales cases and tickets.

    Orders and cases are read like the chat's customer card reads them (chat/queries.customer_card).
    """
    from shopdesk.aftersales.models import AftersaleCase
    from shopdesk.aftersales.queries import filtered as cases_filtered
    from shopdesk.aftersales.states import GROUPS
    from shopdesk.customers.actions import customer_out, get_customer
    from shopdesk.orders.models import Order
    from shopdesk.tickets.queries import filtered as tickets_filtered

    out: dict = {"customer": None, "orders": [], "cases": [], "tickets": []}
    customer = await get_customer(session, merchant_id, customer_id) if customer_id else None
    if customer is None:
        return out
    out["customer"] = customer_out(customer, reveal=False)
    orders = (await session.execute(select(Order).where(
        Order.merchant_id == merchant_id, Order.customer_id == customer.id)
        .order_by(Order.placed_at.desc(), Order.id.desc()).limit(5))).scalars().all()
    out["orders"] = [{"id": o.id, "order_no": o.order_no, "status": o.status, "paid_total_fen": o.paid_total_fen,
                      "placed_at": isoformat(o.placed_at)} for o in orders]
    reader = Principal("staff", merchant_id, role="agent")
    open_cases = GROUPS["pending_review"] + GROUPS["in_progress"]
    cases = (await session.execute(cases_filtered(reader).where(
        AftersaleCase.customer_id == customer.id, AftersaleCase.status.in_(open_cases))
        .order_by(AftersaleCase.id.desc()).limit(5))).scalars().all()
    out["cases"] = [{"id": c.id, "case_no": c.case_no, "type": c.type, "status": c.status,
                     "created_at": isoformat(c.created_at)} for c in cases]
    tickets = (await session.execute(tickets_filtered(reader, status_group=",".join(OPEN_GROUPS),
                                                      customer_id=customer.id)
                                     .order_by(Ticket.updated_at.desc(), Ticket.id.desc()).limit(5))).scalars().all()
    out["tickets"] = [{"id": t.id, "number": t.number, "subject": t.subject, "status": t.status,
                       "channel": t.channel} for t in tickets]
    return out


async def card_frame(session: AsyncSession, store: Store, log: CallLog) -> str:
    frame = {"type": "phone.card", "call": {**call_out(log), "store": store.code},
             **await customer_card(session, log.merchant_id, log.customer_id)}
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# The call on a ticket
# --------------------------------------------------------------------------------------------
def _open(ticket: Ticket | None) -> bool:
    return ticket is not None and ticket.merged_into_id is None and ticket.status_group in OPEN_GROUPS


async def _follow_up_ticket(session: AsyncSession, log: CallLog) -> Ticket | None:
    """The caller's open phone ticket from the last 24 h: by customer, or by number for unknown callers."""
    if log.ticket_id:
        linked = await session.get(Ticket, log.ticket_id)
        if _open(linked):
            return linked
    since = now() - FOLLOW_UP_WINDOW
    if log.customer_id:
        who = Ticket.customer_id == log.customer_id
    elif log.caller:
        # An unknown caller's ticket has no customer: it is the one an earlier call of this number went on.
        who = Ticket.id.in_(select(CallLog.ticket_id).where(
            CallLog.merchant_id == log.merchant_id, CallLog.caller == log.caller, CallLog.ticket_id.is_not(None),
            CallLog.id != log.id, CallLog.created_at >= since - FOLLOW_UP_WINDOW))
    else:
        return None
    return (await session.execute(select(Ticket).where(
        Ticket.merchant_id == log.merchant_id, Ticket.status_group.in_(OPEN_GROUPS),
        # updated_at ≥ created_at: the redundant bound lets the inbox index (merchant, group, updated_at) serve it.
        Ticket.updated_at >= since, Ticket.created_at >= since, Ticket.channel == "phone",
        Ticket.merged_into_id.is_(None), who)
        .order_by(Ticket.created_at.desc(), Ticket.id.desc()).limit(1))).scalar_one_or_none()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes} 分 {secs} 秒" if minutes else f"{secs} 秒"


async def call_summary(session: AsyncSession, log: CallLog) -> str:
    """The private note a finished call leaves on its ticket."""
    lines: list[str] = []
    if log.data.get("missed"):
        lines.append(f"未接来电：{mask_phone(log.caller)}，请尽快回电。")
        if log.ringing_at and log.ended_at:
            lines.append(f"振铃时长：{_duration((log.ended_at - log.ringing_at).total_seconds())}")
    else:
        lines.append(f"电话已接听：{mask_phone(log.caller)}")
        if log.answered_at and log.ended_at:
            lines.append(f"通话时长：{_duration((log.ended_at - log.answered_at).total_seconds())}")
        agent = await session.get(Staff, log.agent_id) if log.agent_id else None
        if agent is not None:
            lines.append(f"接听客服：{agent.name or agent.email}（{agent.email}）")
    if log.recording_url:
        lines.append(f"录音：{log.recording_url}")
    lines.append(f"通话编号：{log.call_id}")
    return "\n".join(lines)


async def _new_call_ticket(session: AsyncSession, principal: Principal, log: CallLog, store_id: str | None, *,
                           assignee_id: str | None, actor: tuple[str, str | None] | None) -> Ticket:
    from shopdesk.customers.actions import get_customer

    customer = await get_customer(session, log.merchant_id, log.customer_id) if log.customer_id else None
    missed = bool(log.data.get("missed"))
    body = TicketIn(subject=f"{'未接来电' if missed else '来电'} {mask_phone(log.caller)}",
                    description=f"客户来电（{mask_phone(log.caller)}）。", channel="phone",
                    priority="high" if missed else "normal", tags=["未接来电"] if missed else ["来电"],
                    customer=CustomerRef(external_id=customer.external_id) if customer else None,
                    assignee_id=assignee_id, requester_name=customer.name[:100] if customer else "")
    return await actions.do_create_ticket(session, principal, body, actor=actor, store_id=store_id)


async def _log_on_ticket(session: AsyncSession, store: Store, log: CallLog) -> Ticket:
    """Put a finished call on the caller's open phone ticket, or on a new one, as a private note."""
    principal = Principal("merchant_key", log.merchant_id)
    if log.customer_id:
        # One caller's two calls ending at once must not open two tickets: serialise on the customer.
        await session.execute(select(Customer.id).where(Customer.id == log.customer_id).with_for_update())
    ticket = await _follow_up_ticket(session, log)
    if ticket is None:
        ticket = await _new_call_ticket(session, principal, log, store.id, actor=CTI_ACTOR,
                                        assignee_id=None if log.data.get("missed") else log.agent_id)
    await actions.do_reply(session, principal, ticket.id, await call_summary(session, log), public=False,
                           channel="phone", author_type="system")
    log.ticket_id = ticket.id
    return ticket


async def do_call_ticket(session: AsyncSession, principal: Principal, call_log_id: str) -> Ticket:
    """The agent presses "create ticket" on the caller's card: the call's ticket, opened now if it has none."""
    merchant_id = principal.require_merchant_side()
    log = (await session.execute(select(CallLog).where(CallLog.id == call_log_id, CallLog.merchant_id == merchant_id)
                                 .with_for_update().execution_options(populate_existing=True))
           ).scalar_one_or_none() if len(call_log_id) <= 32 else None
    if log is None:
        raise NotFound("no such call")
    ticket = await _follow_up_ticket(session, log)
    if ticket is None:
        ticket = await _new_call_ticket(session, principal, log, log.store_id,
                                        assignee_id=principal.staff_id if principal.kind == "staff" else None,
                                        actor=None)
    log.ticket_id = ticket.id
    return ticket


async def calls_of(session: AsyncSession, principal: Principal, *, customer_id: str | None, limit: int) -> list[dict]:
    """The merchant's calls, newest first (a customer's, for their timeline); numbers masked for agents."""
    merchant_id = principal.require_merchant_side()
    stmt = select(CallLog).where(CallLog.merchant_id == merchant_id)
    if customer_id:
        stmt = stmt.where(CallLog.customer_id == customer_id)
    rows = (await session.execute(stmt.order_by(CallLog.created_at.desc(), CallLog.id.desc()).limit(limit))).scalars()
    reveal = principal.kind == "merchant_key" or principal.role in ("admin", "supervisor")
    return [call_out(r, reveal=reveal) for r in rows]
