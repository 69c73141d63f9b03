"""Ticket actions: every change to a ticket goes through one do_* here, in the caller's transaction.

Each action: lock the ticket → check → change → history event per change → SLA recomputed →
outbox (email to the requester, webhooks) → audit where it matters.
"""
from __future__ import annotations

import secrets
from datetime import timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.actions import store_by_code
from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Staff
from shopdesk.accounts.queries import merchant_of
from shopdesk.core.audit import record
from shopdesk.core.clock import isoformat, now
from shopdesk.core.errors import Conflict, Forbidden, NotFound, ValidationFailed, VersionConflict
from shopdesk.core.ids import new_id
from shopdesk.core.outbox import enqueue
from shopdesk.core.records import next_number
from shopdesk.core.security import issue_token
from shopdesk.customers.actions import do_upsert_customer, get_customer
from shopdesk.notifications.actions import emit_webhook
from shopdesk.tickets import sla as slarules
from shopdesk.tickets import states
from shopdesk.tickets.automation import run_triggers
from shopdesk.tickets.calendar import BusinessCalendar
from shopdesk.tickets.models import BusinessCalendar as CalendarRow
from shopdesk.tickets.models import SlaPolicy, Ticket, TicketEvent, TicketReply
from shopdesk.tickets.schemas import CalendarIn, SlaPolicyIn, TicketIn, TicketPatch

if TYPE_CHECKING:
    from shopdesk.tickets.channel_models import TicketRule, TicketTask

TICKET_LINK_TTL = timedelta(days=60)


# --------------------------------------------------------------------------------------------
# Access
# --------------------------------------------------------------------------------------------
def can_see(principal: Principal, ticket: Ticket) -> bool:
    if principal.merchant_id != ticket.merchant_id or principal.is_platform:
        return False
    if principal.kind == "shopper":
        return ticket.customer_id is not None and principal.customer_id == ticket.customer_id
    if principal.kind == "ticket_link":
        return principal.ticket_id == ticket.id
    return True


async def access_ticket(session: AsyncSession, principal: Principal, ticket_id: str, *, lock: bool = False) -> Ticket:
    """Fetch a ticket the caller may see (optionally locked); anyone else gets 404."""
    stmt = select(Ticket).where(Ticket.id == ticket_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    ticket = (await session.execute(stmt)).scalar_one_or_none()
    if ticket is None or not can_see(principal, ticket):
        raise NotFound("no such ticket")
    return ticket


def _staff_side(principal: Principal) -> None:
    if not principal.is_merchant_side:
        raise Forbidden("only the merchant's staff may do this", code="wrong_actor")


def _requester_side(principal: Principal) -> bool:
    return principal.kind in ("shopper", "ticket_link")


def actor_of(principal: Principal) -> tuple[str, str | None]:
    if _requester_side(principal):
        return "shopper", principal.customer_id or principal.ticket_id
    if principal.kind == "merchant_key":
        return "api", None
    return "staff", principal.staff_id


def ticket_link(ticket: Ticket) -> str:
    """A link the requester can open from an email without logging in: this ticket only."""
    from shopdesk.config import get_settings

    token = issue_token({"k": "ticket", "sub": ticket.id, "m": ticket.merchant_id}, TICKET_LINK_TTL)
    return f"{get_settings().base_url}/shop/tickets/{ticket.id}?t={token}"


# --------------------------------------------------------------------------------------------
# History, SLA and notifications
# --------------------------------------------------------------------------------------------
def _event(session: AsyncSession, ticket: Ticket, actor: tuple[str, str | None], action: str, **data) -> TicketEvent:
    event = TicketEvent(merchant_id=ticket.merchant_id, ticket_id=ticket.id, at=now(), actor_type=actor[0],
                        actor_id=actor[1], action=action, data=data)
    session.add(event)
    ticket.updated_at = event.at
    return event


async def ticket_settings(session: AsyncSession, merchant_id: str) -> dict:
    merchant = await merchant_of(session, merchant_id)
    return dict((merchant.settings or {}).get("tickets", {}))


async def _status(session: AsyncSession, merchant_id: str, name: str, field: str = "status") -> states.Status:
    known = states.statuses(await ticket_settings(session, merchant_id))
    if name not in known:
        raise ValidationFailed(f"unknown status '{name}'", field=field)
    return known[name]


async def _policies(session: AsyncSession, merchant_id: str) -> list[SlaPolicy]:
    return list((await session.execute(select(SlaPolicy).where(SlaPolicy.merchant_id == merchant_id)
                                       .order_by(SlaPolicy.position, SlaPolicy.name))).scalars())


def _matches(policy: SlaPolicy, ticket: Ticket) -> bool:
    match = policy.match or {}
    return ((not match.get("priority") or ticket.priority in match["priority"])
            and (not match.get("category") or ticket.category in match["category"])
            and (not match.get("store") or (ticket.store_id or "") in match["store"]))


async def _calendar(session: AsyncSession, merchant_id: str, name: str | None) -> BusinessCalendar | None:
    if not name:
        return None
    row = (await session.execute(select(CalendarRow).where(CalendarRow.merchant_id == merchant_id,
                                                           CalendarRow.name == name))).scalar_one_or_none()
    return BusinessCalendar.from_settings(row.settings) if row else None


async def sla_facts(session: AsyncSession, ticket: Ticket) -> list:
    """The ticket's history as the SLA clock reads it: creation, status groups, replies."""
    facts: list = [slarules.TicketCreated(ticket.created_at, "new")]
    # Ordered by id as well: events of one instant (a frozen clock, one transaction) keep their order.
    events = (await session.execute(select(TicketEvent.at, TicketEvent.data).where(
        TicketEvent.ticket_id == ticket.id, TicketEvent.action == "status").order_by(TicketEvent.at, TicketEvent.id)
    )).all()
    for at, data in events:
        if data.get("from_group") != data.get("to_group"):
            facts.append(slarules.StatusGroupChanged(at, data["to_group"]))
    replies = (await session.execute(select(TicketReply.created_at, TicketReply.author_type, TicketReply.public)
                                     .where(TicketReply.ticket_id == ticket.id)
                                     .order_by(TicketReply.created_at, TicketReply.id))).all()
    # Replies older than the ticket came with a merge: history, not responses on this ticket's clock.
    facts += [slarules.ReplyAdded(at, author, public) for at, author, public in replies if at >= ticket.created_at]
    return facts


async def apply_sla(session: AsyncSession, ticket: Ticket) -> list[slarules.SlaEvent]:
    """Recompute the ticket's SLA targets, raise the warnings and breaches due, set the next check."""
    await session.flush()
    policy_row = next((p for p in await _policies(session, ticket.merchant_id) if _matches(p, ticket)), None)
    if policy_row is None:
        ticket.sla_policy = None
        ticket.first_response_due_at = ticket.next_response_due_at = ticket.resolution_due_at = None
        ticket.sla_check_at = None
        return []
    policy = slarules.SlaPolicy(await _calendar(session, ticket.merchant_id, policy_row.calendar),
                                policy_row.first_response_minutes, policy_row.next_response_minutes,
                                policy_row.resolution_minutes)
    at = now()
    state = slarules.evaluate(policy, await sla_facts(session, ticket), at)
    ticket.sla_policy = policy_row.name

    def due(target: slarules.TargetState | None):
        return target.due_at if target is not None and target.active else None

    ticket.first_response_due_at = due(state.first_response)
    ticket.next_response_due_at = due(state.next_response)
    ticket.resolution_due_at = due(state.resolution)
    emitted = list(ticket.sla_emitted or [])
    fresh = slarules.pending_events(state, emitted, at)
    breaches = list(ticket.sla_breaches or [])
    for ev in fresh:
        emitted.append(ev.key)
        _event(session, ticket, ("system", None), f"sla_{ev.kind}", target=ev.target, at=isoformat(ev.at))
        if ev.kind == "breach":
            breaches.append({"target": ev.target, "at": isoformat(ev.at)})
        await emit_webhook(session, ticket.merchant_id, f"ticket.sla_{ev.kind}",
                           {"ticket": _summary(ticket), "target": ev.target, "at": isoformat(ev.at)})
        if ev.kind == "warning" and ticket.assignee_id:
            await _mail_staff(session, ticket, ticket.assignee_id, f"【SLA 预警】{ticket.number} 即将超时",
                              f"工单 {ticket.number}「{ticket.subject}」的{_TARGET_ZH[ev.target]}即将超时。")
    ticket.sla_emitted, ticket.sla_breaches = emitted, breaches
    ticket.sla_check_at = slarules.next_check_at(state, emitted)
    return fresh


_TARGET_ZH = {"first_response": "首次响应", "next_response": "下次响应", "resolution": "解决时限"}


def _summary(ticket: Ticket) -> dict:
    return {"id": ticket.id, "number": ticket.number, "subject": ticket.subject, "status": ticket.status,
            "status_group": ticket.status_group, "priority": ticket.priority, "assignee_id": ticket.assignee_id}


async def _requester_email(session: AsyncSession, ticket: Ticket) -> str | None:
    if ticket.customer_id:
        customer = await get_customer(session, ticket.merchant_id, ticket.customer_id)
        if customer and customer.email:
            return customer.email
    return ticket.requester_email


async def _mail_requester(session: AsyncSession, ticket: Ticket, subject: str, body: str, *,
                          reply: TicketReply | None = None, automatic: bool = False) -> None:
    to = await _requester_email(session, ticket)
    if not to:
        return
    link = ticket_link(ticket)
    from shopdesk.tickets.email_channel import reply_envelope  # email_channel imports this module

    payload = {"to": to, "subject": f"[#{ticket.number}] {subject}",
               "body": f"{body}\n\n查看并回复工单：{link}\n（直接回复此邮件也可以，请保留标题中的工单号）",
               "headers": {"X-Shopdesk-Ticket": ticket.number}}
    # The ticket's mailbox as the sender, and In-Reply-To/References, so the answer threads back here.
    for key, value in (await reply_envelope(session, ticket)).items():
        payload.setdefault(key, value)
    if reply is not None:
        payload["message_id"] = f"<{ticket.number}.{reply.id}@shopdesk>"
    if automatic:
        # RFC 3834: other desks and auto-responders must not answer an automatic mail (no loops).
        payload["headers"]["Auto-Submitted"] = "auto-replied"
    enqueue(session, "email", payload, ticket.merchant_id)


async def _mail_staff(session: AsyncSession, ticket: Ticket, staff_id: str, subject: str, body: str) -> None:
    staff = await session.get(Staff, staff_id)
    if staff and staff.email:
        enqueue(session, "email", {"to": staff.email, "subject": subject, "body": body}, ticket.merchant_id)


# --------------------------------------------------------------------------------------------
# Create
# --------------------------------------------------------------------------------------------
async def _check_links(session: AsyncSession, principal: Principal, merchant_id: str, *, order_id: str | None,
                       aftersales_id: str | None, customer_id: str | None) -> None:
    from shopdesk.aftersales.actions import access_case
    from shopdesk.orders.actions import load_order

    if order_id:
        order = await load_order(session, merchant_id, order_id) if order_id else None
        if order is None or (principal.kind == "shopper" and order.customer_id != customer_id):
            raise ValidationFailed("unknown order", field="order_id")
    if aftersales_id:
        try:
            await access_case(session, principal, aftersales_id)
        except NotFound as exc:
            raise ValidationFailed("unknown after-sales case", field="aftersales_id") from exc


async def _check_assignee(session: AsyncSession, merchant_id: str, staff_id: str, field: str = "assignee_id") -> Staff:
    staff = await session.get(Staff, staff_id)
    if staff is None or staff.merchant_id != merchant_id:
        raise ValidationFailed("unknown staff member", field=field)
    return staff


def _clean_tags(tags: list[str], field: str = "tags") -> list[str]:
    out: list[str] = []
    for i, tag in enumerate(tags):
        tag = tag.strip()
        if not tag or len(tag) > 32:
            raise ValidationFailed("a tag has 1 to 32 characters", field=f"{field}[{i}]")
        if tag not in out:
            out.append(tag)
    return out


async def do_create_ticket(session: AsyncSession, principal: Principal, body: TicketIn, *,
                           conversation_id: str | None = None, actor: tuple[str, str | None] | None = None,
                           customer_id: str | None = None, store_id: str | None = None,
                           acknowledge: bool = False) -> Ticket:
    """Open a ticket from any channel; a shopper's own ticket is tied to them.

    customer_id, store_id and acknowledge are for the channels (chat, email, phone, WeChat), which
    know the requester and the store before the SLA policy and the assignment rule are chosen.
    """
    merchant_id = principal.merchant_id
    if merchant_id is None or principal.is_platform or principal.kind == "ticket_link":
        raise NotFound("not found")
    if principal.kind == "shopper":
        customer_id = principal.customer_id
        if body.assignee_id or body.custom_fields or body.parent_id or body.team:
            raise ValidationFailed("set by the merchant's staff only", field="assignee_id" if body.assignee_id
                                   else "custom_fields" if body.custom_fields else "parent_id" if body.parent_id
                                   else "team")
    elif body.customer is not None:
        customer = await do_upsert_customer(session, merchant_id, **body.customer.model_dump())
        customer_id = customer.id
    await _check_links(session, principal, merchant_id, order_id=body.order_id, aftersales_id=body.aftersales_id,
                       customer_id=customer_id)
    parent = None
    if body.parent_id:
        parent = await access_ticket(session, principal, body.parent_id)
    if body.assignee_id:
        await _check_assignee(session, merchant_id, body.assignee_id)
    tset = await ticket_settings(session, merchant_id)
    categories = tset.get("categories")
    if body.category and categories and body.category not in categories:
        raise ValidationFailed("unknown category", field="category")
    if body.store:
        store_id = (await store_by_code(session, merchant_id, body.store)).id
    merchant = await merchant_of(session, merchant_id)
    at = now()
    day = at.astimezone(ZoneInfo(merchant.time_zone)).strftime("%Y%m%d")
    number = await next_number(session, merchant_id, f"TK{day}")
    ticket = Ticket(
        id=new_id(), merchant_id=merchant_id, number=f"TK{day}-{number:04d}", version=1, subject=body.subject.strip(),
        description=body.description, channel=body.channel, category=body.category, priority=body.priority,
        status="new", status_group="new", customer_id=customer_id, store_id=store_id,
        requester_email=body.requester_email,
        requester_name=body.requester_name, order_id=body.order_id, aftersales_id=body.aftersales_id,
        conversation_id=conversation_id, assignee_id=body.assignee_id, team=body.team, tags=_clean_tags(body.tags),
        custom_fields=dict(body.custom_fields), watchers=[], urge_count=0,
        parent_id=parent.id if parent else None, sla_emitted=[], sla_breaches=[], applied_rules=[], rating_comment="",
        created_at=at, updated_at=at, status_changed_at=at)
    session.add(ticket)
    who = actor or actor_of(principal)
    _event(session, ticket, who, "create", channel=body.channel, priority=body.priority, category=body.category,
           parent_id=ticket.parent_id)
    if body.assignee_id:
        _event(session, ticket, who, "assign", **{"from": None, "to": body.assignee_id})
    else:
        await _auto_assign(session, ticket)
    await apply_sla(session, ticket)
    await emit_webhook(session, merchant_id, "ticket.created", {"ticket": _summary(ticket)})
    await run_triggers(session, ticket, "create")
    if acknowledge or _requester_side(principal) or body.channel in ("email", "web"):
        await _mail_requester(session, ticket, f"我们已收到您的工单：{ticket.subject}",
                              f"您好，您的工单 {ticket.number} 已收到，客服会尽快回复您。", automatic=True)
    record(session, merchant_id=merchant_id, actor_type=who[0], actor_id=who[1], action="ticket.create",
           object_type="ticket", object_id=ticket.id, data={"channel": body.channel})
    return ticket


async def _auto_assign(session: AsyncSession, ticket: Ticket) -> None:
    """Apply the merchant's assignment rule (tickets.assignment), if it has one."""
    from shopdesk.tickets.assignment import choose_assignee

    staff_id = await choose_assignee(session, ticket)
    if staff_id:
        ticket.assignee_id = staff_id
        _event(session, ticket, ("system", None), "assign", **{"from": None, "to": staff_id, "rule": True})


# --------------------------------------------------------------------------------------------
# Change
# --------------------------------------------------------------------------------------------
async def _set_status(session: AsyncSession, ticket: Ticket, target: states.Status,
                      actor: tuple[str, str | None]) -> None:
    states.check_move(ticket.status_group, target, merged=ticket.merged_into_id is not None)
    if target.name == ticket.status:
        return
    before, before_group = ticket.status, ticket.status_group
    ticket.status, ticket.status_group = target.name, target.group
    _event(session, ticket, actor, "status", **{"from": before, "to": target.name, "from_group": before_group,
                                                "to_group": target.group})
    at = now()
    ticket.status_changed_at = at
    ticket.applied_rules = []  # time rules run once per status: "pending 3 days → remind" may run again later
    if target.group == "solved" and before_group != "solved":
        ticket.solved_at = at
        await _open_survey(session, ticket)
        await _schedule_revisit(session, ticket)
    elif target.group == "closed":
        ticket.closed_at = at
    elif before_group in ("solved",) and target.group in ("open", "pending"):
        ticket.solved_at = None


async def _open_survey(session: AsyncSession, ticket: Ticket) -> None:
    """Solving a ticket opens its satisfaction survey (a link by email; the shopper pages show it too)."""
    if ticket.survey_token is None:
        ticket.survey_token = secrets.token_urlsafe(24)
    if ticket.rated_at is None:
        await _mail_requester(session, ticket, f"您的工单已解决：{ticket.subject}",
                              f"您好，工单 {ticket.number} 已处理完毕。请为本次服务打分（1–5 星），"
                              "如问题仍未解决，直接回复即可重新打开工单。", automatic=True)


async def _schedule_revisit(session: AsyncSession, ticket: Ticket) -> None:
    """回访: after a solve, a task for the agent to call or message the customer back (settings tickets.followup)."""
    from shopdesk.tickets.channel_models import TicketTask

    followup = (await ticket_settings(session, ticket.merchant_id)).get("followup") or {}
    hours = followup.get("revisit_after_hours")
    only = followup.get("priorities") or []
    if not hours or (only and ticket.priority not in only):
        return
    task = TicketTask(merchant_id=ticket.merchant_id, ticket_id=ticket.id, kind="revisit",
                      assignee_id=ticket.assignee_id, due_at=now() + timedelta(hours=hours), status="open",
                      note=followup.get("note") or "回访客户，确认问题已解决", outcome="")
    session.add(task)
    _event(session, ticket, ("system", None), "revisit_scheduled", due_at=isoformat(task.due_at))


async def do_finish_task(session: AsyncSession, principal: Principal, task_id: str, outcome: str,
                         status: str = "done") -> "TicketTask":
    """Close a follow-up task with what the customer said."""
    from shopdesk.tickets.channel_models import TicketTask

    merchant_id = principal.require_merchant_side()
    task = await session.get(TicketTask, task_id, with_for_update=True, populate_existing=True)
    if task is None or task.merchant_id != merchant_id:
        raise NotFound("no such task")
    if task.status != "open":
        raise Conflict(f"the task is {task.status}", code="illegal_transition")
    if status not in ("done", "cancelled"):
        raise ValidationFailed("status must be done or cancelled", field="status")
    task.status, task.outcome, task.done_at = status, outcome, now()
    ticket = await access_ticket(session, principal, task.ticket_id, lock=True)
    _event(session, ticket, actor_of(principal), "revisit_done", task_id=task.id, status=status, outcome=outcome)
    return task


async def do_update_ticket(session: AsyncSession, principal: Principal, ticket_id: str, body: TicketPatch) -> Ticket:
    """Change fields of a ticket (staff); each change is a history line."""
    ticket = await access_ticket(session, principal, ticket_id, lock=True)
    _staff_side(principal)
    if body.expected_version is not None and body.expected_version != ticket.version:
        raise VersionConflict(f"the ticket is at version {ticket.version}, not {body.expected_version}",
                              extra={"version": ticket.version})
    if ticket.merged_into_id is not None:
        raise Conflict("a merged ticket is closed for good", code="illegal_transition")
    actor = actor_of(principal)
    changed = False
    if body.status is not None and body.status != ticket.status:
        await _set_status(session, ticket, await _status(session, ticket.merchant_id, body.status), actor)
        changed = True
    elif ticket.status_group == "closed" and body.model_dump(exclude_none=True, exclude={"expected_version"}):
        raise Conflict("a closed ticket does not change; open a follow-up ticket instead", code="illegal_transition")
    simple = {"priority": body.priority, "category": body.category, "team": body.team}
    for name, value in simple.items():
        if value is not None and value != getattr(ticket, name):
            if name == "category" and value:
                categories = (await ticket_settings(session, ticket.merchant_id)).get("categories")
                if categories and value not in categories:
                    raise ValidationFailed("unknown category", field="category")
            _event(session, ticket, actor, name, **{"from": getattr(ticket, name), "to": value})
            setattr(ticket, name, value)
            changed = True
    if "assignee_id" in body.model_fields_set and body.assignee_id != ticket.assignee_id:
        if body.assignee_id:
            await _check_assignee(session, ticket.merchant_id, body.assignee_id)
        _event(session, ticket, actor, "assign", **{"from": ticket.assignee_id, "to": body.assignee_id})
        ticket.assignee_id = body.assignee_id
        if body.assignee_id and body.assignee_id != principal.staff_id:
            await _mail_staff(session, ticket, body.assignee_id, f"【新工单】{ticket.number} {ticket.subject}",
                              f"工单 {ticket.number}「{ticket.subject}」已分配给您。")
        changed = True
    if body.tags is not None or body.add_tags:
        tags = _clean_tags(body.tags if body.tags is not None else ticket.tags)
        tags = list(dict.fromkeys([*tags, *_clean_tags(body.add_tags or [], "add_tags")]))[:20]
        if tags != ticket.tags:
            _event(session, ticket, actor, "tags", **{"from": ticket.tags, "to": tags})
            ticket.tags = tags
            changed = True
    if body.custom_fields is not None:
        merged = {**(ticket.custom_fields or {}), **body.custom_fields}
        merged = {k: v for k, v in merged.items() if v is not None}
        if merged != ticket.custom_fields:
            _event(session, ticket, actor, "custom_fields", **{"from": ticket.custom_fields, "to": merged})
            ticket.custom_fields = merged
            changed = True
    if body.watchers is not None:
        for i, sid in enumerate(body.watchers):
            await _check_assignee(session, ticket.merchant_id, sid, field=f"watchers[{i}]")
        watchers = list(dict.fromkeys(body.watchers))
        if watchers != ticket.watchers:
            _event(session, ticket, actor, "watchers", **{"from": ticket.watchers, "to": watchers})
            ticket.watchers = watchers
            changed = True
    if changed:
        ticket.version += 1
        await apply_sla(session, ticket)
        await emit_webhook(session, ticket.merchant_id, "ticket.updated", {"ticket": _summary(ticket)})
        await run_triggers(session, ticket, "update")
    return ticket


async def check_attachments(session: AsyncSession, principal: Principal, ids: list[str]) -> list[str]:
    """Uploads a caller may attach: the merchant's, and for a shopper their own (POST /uploads).

    An emailed link has no account to own a file: it may attach only images its ticket's page stored
    for that ticket (owner_type "ticket").
    """
    from shopdesk.aftersales.models import Upload

    for i, upload_id in enumerate(ids):
        upload = await session.get(Upload, upload_id)
        if upload is None or upload.merchant_id != principal.merchant_id or (
                principal.kind == "ticket_link"
                and (upload.owner_type, upload.owner_id) != ("ticket", principal.ticket_id)) or (
                principal.kind == "shopper" and upload.owner_id != principal.customer_id):
            raise ValidationFailed("unknown upload", field=f"attachment_ids[{i}]")
    return list(dict.fromkeys(ids))


async def do_bulk_update(session: AsyncSession, principal: Principal, ids: list[str], patch: TicketPatch) -> list[dict]:
    """Apply one change to many tickets; each succeeds or fails on its own (a savepoint each)."""
    _staff_side(principal)
    results = []
    for ticket_id in dict.fromkeys(ids):
        try:
            async with session.begin_nested():
                ticket = await do_update_ticket(session, principal, ticket_id, patch)
            results.append({"id": ticket_id, "ok": True, "version": ticket.version})
        except (NotFound, Conflict, ValidationFailed, Forbidden) as exc:
            results.append({"id": ticket_id, "ok": False, "code": exc.code, "detail": exc.detail})
    return results


async def do_reply(session: AsyncSession, principal: Principal, ticket_id: str, body: str, *, public: bool = True,
                   channel: str = "api", message_id: str | None = None, attachment_ids: list[str] | None = None,
                   author_type: str | None = None) -> TicketReply:
    """Add a reply: staff answer in public or leave a private note; the requester answers their own ticket."""
    ticket = await access_ticket(session, principal, ticket_id, lock=True)
    requester = _requester_side(principal)
    if requester and not public:
        raise ValidationFailed("a private note is for staff only", field="public")
    if ticket.merged_into_id:
        raise Conflict("this ticket was merged; reply on the ticket it was merged into", code="ticket_merged",
                       extra={"merged_into": ticket.merged_into_id})
    if ticket.status_group == "closed":
        raise Conflict("this ticket is closed; open a new one", code="ticket_closed")
    actor = actor_of(principal)
    kind = author_type or ("shopper" if requester else "staff")
    name = principal.name if not requester else ""
    reply = TicketReply(id=new_id(), merchant_id=ticket.merchant_id, ticket_id=ticket.id, author_type=kind,
                        author_id=actor[1], author_name=name, body=body, public=public, channel=channel,
                        attachment_ids=list(attachment_ids or []), message_id=message_id, created_at=now())
    session.add(reply)
    _event(session, ticket, actor, "reply" if public else "note", reply_id=reply.id)
    if public:
        ticket.last_public_at = reply.created_at
    if kind == "staff" and public:
        if ticket.first_response_at is None:
            ticket.first_response_at = reply.created_at
        if ticket.status_group == "new":
            await _set_status(session, ticket, await _status(session, ticket.merchant_id, "open"), actor)
        await _mail_requester(session, ticket, f"回复：{ticket.subject}", body, reply=reply)
    elif kind == "system" and public:
        await _mail_requester(session, ticket, f"回复：{ticket.subject}", body, reply=reply, automatic=True)
    elif kind == "shopper":
        # The requester wrote again: a solved or waiting ticket is back on the desk.
        if ticket.status_group in ("pending", "solved"):
            await _set_status(session, ticket, await _status(session, ticket.merchant_id, "open"),
                              ("system", None))
        if ticket.assignee_id:
            await _mail_staff(session, ticket, ticket.assignee_id, f"【客户回复】{ticket.number} {ticket.subject}",
                              body[:500])
    elif kind == "staff" and not public:
        await _tell_mentioned(session, ticket, body, principal.staff_id)
    ticket.version += 1
    await apply_sla(session, ticket)
    await emit_webhook(session, ticket.merchant_id, "ticket.replied",
                       {"ticket": _summary(ticket), "reply": {"id": reply.id, "public": public, "author": kind}})
    await run_triggers(session, ticket, "update")
    if ticket.channel == "wechat":
        from shopdesk.tickets.wechat import queue_wechat_reply  # wechat.py imports this module

        await queue_wechat_reply(session, ticket, reply)  # within WeChat's 48 h window, or a note why not
    return reply


async def _tell_mentioned(session: AsyncSession, ticket: Ticket, body: str, author_id: str | None) -> None:
    """Colleagues @named in a note get it by email and watch the ticket from then on."""
    from shopdesk.chat.rules import mentioned_names  # the same @name rule as chat notes

    names = mentioned_names(body)
    if not names:
        return
    staff = (await session.execute(select(Staff).where(Staff.merchant_id == ticket.merchant_id,
                                                       Staff.name.in_(names)))).scalars()
    for person in staff:
        if person.id == author_id:
            continue
        if person.id not in (ticket.watchers or []):
            ticket.watchers = [*(ticket.watchers or []), person.id]
        enqueue(session, "email", {"to": person.email, "subject": f"【备注提及】{ticket.number} {ticket.subject}",
                                   "body": body[:500]}, ticket.merchant_id)


async def do_urge(session: AsyncSession, principal: Principal, ticket_id: str) -> Ticket:
    """The requester presses 催单: counted, the priority goes up a level, the assignee is told."""
    ticket = await access_ticket(session, principal, ticket_id, lock=True)
    if not _requester_side(principal):
        raise Forbidden("only the requester urges a ticket", code="wrong_actor")
    if ticket.status_group in ("solved", "closed") or ticket.merged_into_id:
        raise Conflict("the ticket is already solved", code="illegal_transition")
    actor = actor_of(principal)
    ticket.urge_count += 1
    raised = states.raised(ticket.priority)
    _event(session, ticket, actor, "urge", count=ticket.urge_count)
    if raised != ticket.priority:
        _event(session, ticket, ("system", None), "priority", **{"from": ticket.priority, "to": raised,
                                                                   "reason": "urge"})
        ticket.priority = raised
    ticket.version += 1
    if ticket.assignee_id:
        await _mail_staff(session, ticket, ticket.assignee_id, f"【催单】{ticket.number} 客户第 {ticket.urge_count} 次催促",
                          f"工单 {ticket.number}「{ticket.subject}」客户催单，优先级：{ticket.priority}。")
    await apply_sla(session, ticket)
    await emit_webhook(session, ticket.merchant_id, "ticket.urged",
                       {"ticket": _summary(ticket), "urge_count": ticket.urge_count})
    return ticket


async def do_rate(session: AsyncSession, principal: Principal, ticket_id: str, score: int, comment: str,
                  answers: dict | None = None) -> Ticket:
    """The requester rates a solved ticket on the merchant's scale; a later rating replaces the earlier one."""
    ticket = await access_ticket(session, principal, ticket_id, lock=True)
    if not _requester_side(principal):
        raise Forbidden("only the requester rates a ticket", code="wrong_actor")
    if ticket.status_group not in ("solved", "closed") or ticket.merged_into_id:
        raise Conflict("a ticket is rated once it is solved", code="illegal_transition")
    survey = (await ticket_settings(session, ticket.merchant_id)).get("survey") or {"scale": 5, "questions": []}
    if score > survey["scale"]:
        raise ValidationFailed(f"the score is 1 to {survey['scale']}", field="score")
    keys = {q["key"] for q in survey["questions"]}
    for key in answers or {}:
        if key not in keys:
            raise ValidationFailed("not a question of this survey", field=f"answers.{key}")
    ticket.rating_score, ticket.rating_comment, ticket.rated_at = score, comment, now()
    _event(session, ticket, actor_of(principal), "rating", score=score, scale=survey["scale"], comment=comment,
           answers=answers or {})
    ticket.version += 1
    await emit_webhook(session, ticket.merchant_id, "ticket.rated",
                       {"ticket": _summary(ticket), "score": score, "scale": survey["scale"], "comment": comment,
                        "answers": answers or {}})
    record(session, merchant_id=ticket.merchant_id, actor_type="shopper", actor_id=actor_of(principal)[1],
           action="ticket.rating", object_type="ticket", object_id=ticket.id, data={"score": score})
    return ticket


# --------------------------------------------------------------------------------------------
# Merge and split
# --------------------------------------------------------------------------------------------
async def _lock_pair(session: AsyncSession, principal: Principal, a_id: str, b_id: str) -> tuple[Ticket, Ticket]:
    """Lock two tickets in id order, so two merges of the same pair never deadlock."""
    first, second = sorted((a_id, b_id))
    locked = {first: await access_ticket(session, principal, first, lock=True),
              second: await access_ticket(session, principal, second, lock=True)}
    return locked[a_id], locked[b_id]


async def do_merge(session: AsyncSession, principal: Principal, ticket_id: str, into_id: str) -> Ticket:
    """Merge a duplicate into another ticket: its replies, links and tags move over, the requester is told."""
    await access_ticket(session, principal, ticket_id)  # strangers learn nothing: 404 before any other check
    _staff_side(principal)
    if ticket_id == into_id:
        raise ValidationFailed("a ticket cannot be merged into itself", field="into")
    try:
        source, target = await _lock_pair(session, principal, ticket_id, into_id)
    except NotFound as exc:
        if exc.detail == "no such ticket":
            # Say which one is missing: the target is a field of the body.
            await access_ticket(session, principal, ticket_id)
            raise ValidationFailed("no such ticket", field="into", status=404, code="not_found") from exc
        raise
    for t, field in ((source, "id"), (target, "into")):
        if t.merged_into_id or t.status_group == "closed":
            raise Conflict(f"ticket {t.number} is closed", code="illegal_transition", extra={"field": field})
    actor = actor_of(principal)
    replies = list((await session.execute(select(TicketReply).where(TicketReply.ticket_id == source.id))).scalars())
    for reply in replies:
        reply.ticket_id = target.id
        reply.origin_ticket_id = reply.origin_ticket_id or source.id
    # The source's own first message becomes a reply on the target, so nothing the requester wrote is lost.
    opening = TicketReply(id=new_id(), merchant_id=target.merchant_id, ticket_id=target.id,
                          author_type="shopper" if source.customer_id or source.requester_email else "system",
                          author_id=source.customer_id, body=f"{source.subject}\n\n{source.description}".strip(),
                          public=True, channel=source.channel, origin_ticket_id=source.id,
                          created_at=source.created_at)
    session.add(opening)
    for name in ("order_id", "aftersales_id", "customer_id", "conversation_id"):
        if getattr(target, name) is None and getattr(source, name) is not None:
            setattr(target, name, getattr(source, name))
    target.tags = list(dict.fromkeys([*target.tags, *source.tags]))
    target.watchers = list(dict.fromkeys([*target.watchers, *source.watchers]))
    target.urge_count += source.urge_count
    _event(session, target, actor, "merged_in", source_id=source.id, source_number=source.number,
           replies=len(replies) + 1)
    note = TicketReply(id=new_id(), merchant_id=target.merchant_id, ticket_id=target.id, author_type="system",
                       author_id=None, body=f"工单 {source.number} 已合并到本工单。", public=False, channel="api",
                       created_at=now())
    session.add(note)
    before, before_group = source.status, source.status_group
    source.merged_into_id = target.id
    source.status, source.status_group, source.closed_at = "closed", "closed", now()
    source.status_changed_at = source.closed_at
    _event(session, source, actor, "status", **{"from": before, "to": "closed", "from_group": before_group,
                                                "to_group": "closed", "reason": "merged"})
    _event(session, source, actor, "merged", into_id=target.id, into_number=target.number)
    source.version += 1
    target.version += 1
    await _mail_requester(session, source, f"您的工单已合并：{source.subject}",
                          f"您好，工单 {source.number} 与 {target.number} 是同一个问题，已合并处理，"
                          f"后续请在工单 {target.number} 中查看进度。", automatic=True)
    await apply_sla(session, source)
    await apply_sla(session, target)
    await emit_webhook(session, target.merchant_id, "ticket.merged",
                       {"ticket": _summary(source), "into": _summary(target)})
    record(session, merchant_id=target.merchant_id, actor_type=actor[0], actor_id=actor[1], action="ticket.merge",
           object_type="ticket", object_id=source.id, data={"into": target.id})
    return source


async def do_split(session: AsyncSession, principal: Principal, ticket_id: str, reply_id: str) -> Ticket:
    """Move one reply out into a new ticket of the same requester (a second problem in one thread)."""
    ticket = await access_ticket(session, principal, ticket_id, lock=True)
    _staff_side(principal)
    if ticket.merged_into_id or ticket.status_group == "closed":
        raise Conflict("a closed ticket is not split", code="illegal_transition")
    reply = await session.get(TicketReply, reply_id)
    if reply is None or reply.ticket_id != ticket.id:
        raise ValidationFailed("no such reply on this ticket", field="reply_id")
    body = TicketIn(subject=_split_subject(reply.body, ticket.subject), description=reply.body,
                    category=ticket.category, priority=ticket.priority, channel=ticket.channel,
                    order_id=ticket.order_id, aftersales_id=ticket.aftersales_id, tags=list(ticket.tags),
                    team=ticket.team, requester_email=ticket.requester_email, requester_name=ticket.requester_name)
    new = await do_create_ticket(session, principal, body, customer_id=ticket.customer_id, store_id=ticket.store_id)
    reply.ticket_id = new.id
    reply.origin_ticket_id = reply.origin_ticket_id or ticket.id
    actor = actor_of(principal)
    _event(session, ticket, actor, "split", reply_id=reply.id, new_id=new.id, new_number=new.number)
    _event(session, new, actor, "split_from", ticket_id=ticket.id, number=ticket.number, reply_id=reply.id)
    ticket.version += 1
    await apply_sla(session, ticket)
    await apply_sla(session, new)
    return new


def _split_subject(body: str, subject: str) -> str:
    first = body.strip().splitlines()[0] if body.strip() else ""
    return (first[:60] or f"{subject}（拆分）")[:200]


# --------------------------------------------------------------------------------------------
# Settings: calendars, SLA policies, statuses and categories
# --------------------------------------------------------------------------------------------
async def do_put_calendar(session: AsyncSession, principal: Principal, name: str, body: CalendarIn) -> CalendarRow:
    merchant_id = principal.require_merchant_side()
    principal.require_role("admin", "supervisor")
    _check_name(name)
    settings = body.model_dump()
    try:
        cal = BusinessCalendar.from_settings(settings)
    except ValueError as exc:
        field = str(exc).split(":", 1)[0] if ":" in str(exc) else "hours"
        raise ValidationFailed(str(exc), field=field) from exc
    row = await _named(session, CalendarRow, merchant_id, name)
    row.settings, row.updated_at = cal.to_settings(), now()
    record(session, merchant_id=merchant_id, actor_type=principal.actor, actor_id=principal.actor_id,
           action="settings.calendar", object_type="business_calendar", object_id=name, data=row.settings)
    return row


async def do_put_policy(session: AsyncSession, principal: Principal, name: str, body: SlaPolicyIn) -> SlaPolicy:
    merchant_id = principal.require_merchant_side()
    principal.require_role("admin", "supervisor")
    _check_name(name)
    if body.calendar:
        exists = (await session.execute(select(CalendarRow.id).where(CalendarRow.merchant_id == merchant_id,
                                                                     CalendarRow.name == body.calendar))).first()
        if not exists:
            raise ValidationFailed(f"no calendar named '{body.calendar}'", field="calendar")
    if not any((body.first_response_minutes, body.next_response_minutes, body.resolution_minutes)):
        raise ValidationFailed("set at least one target", field="first_response_minutes")
    row = await _named(session, SlaPolicy, merchant_id, name)
    row.calendar, row.match = body.calendar, body.match.model_dump()
    row.first_response_minutes = body.first_response_minutes
    row.next_response_minutes = body.next_response_minutes
    row.resolution_minutes = body.resolution_minutes
    row.position = body.position
    record(session, merchant_id=merchant_id, actor_type=principal.actor, actor_id=principal.actor_id,
           action="settings.sla_policy", object_type="sla_policy", object_id=name, data=body.model_dump())
    return row


async def _named(session: AsyncSession, model, merchant_id: str, name: str):
    """The merchant's setting row of this name, locked for a change, or a new one (PUT …/{name})."""
    row = (await session.execute(select(model).where(model.merchant_id == merchant_id, model.name == name)
                                 .with_for_update())).scalar_one_or_none()
    if row is None:
        row = model(merchant_id=merchant_id, name=name)
        session.add(row)
    return row


def _check_name(name: str) -> None:
    if not 1 <= len(name) <= 64 or not all(c.isalnum() or c in "-_" for c in name):
        raise ValidationFailed("1 to 64 letters, digits, - or _", field="name")


async def do_update_ticket_settings(session: AsyncSession, principal: Principal, statuses: list[dict] | None,
                                    categories: list[str] | None, assignment: dict | None = None,
                                    followup: dict | None = None, survey: dict | None = None) -> dict:
    from shopdesk.accounts.models import Merchant

    merchant_id = principal.require_merchant_side()
    principal.require_role("admin", "supervisor")
    merchant = await session.get(Merchant, merchant_id, with_for_update=True, populate_existing=True)
    assert merchant is not None
    current = dict((merchant.settings or {}).get("tickets", {}))
    if statuses is not None:
        current["statuses"] = states.check_custom_statuses(statuses)
    if categories is not None:
        cleaned = []
        for i, c in enumerate(categories):
            if not isinstance(c, str) or not c.strip() or len(c) > 64:
                raise ValidationFailed("a category has 1 to 64 characters", field=f"categories[{i}]")
            cleaned.append(c.strip())
        current["categories"] = list(dict.fromkeys(cleaned))
    if assignment is not None:
        from shopdesk.tickets.assignment import check_rules

        current["assignment"] = check_rules(assignment)
    if followup is not None:
        hours = followup.get("revisit_after_hours")
        if hours is not None and (not isinstance(hours, int) or not 1 <= hours <= 24 * 90):
            raise ValidationFailed("whole hours, 1 to 2160", field="followup.revisit_after_hours")
        priorities = followup.get("priorities") or []
        if not isinstance(priorities, list) or any(p not in states.PRIORITIES for p in priorities):
            raise ValidationFailed("a list of priorities", field="followup.priorities")
        current["followup"] = {"revisit_after_hours": hours, "priorities": priorities,
                               "note": str(followup.get("note") or "")[:500]}
    if survey is not None:
        scale = survey.get("scale", 5)
        if scale not in (2, 3, 5):
            raise ValidationFailed("scale is 2, 3 or 5", field="survey.scale")
        questions = survey.get("questions") or []
        if not isinstance(questions, list) or len(questions) > 10 or not all(
                isinstance(q, dict) and q.get("key") and q.get("label") for q in questions):
            raise ValidationFailed("at most 10 questions, each with a key and a label", field="survey.questions")
        current["survey"] = {"scale": scale, "questions": [{"key": str(q["key"])[:32], "label": str(q["label"])[:100]}
                                                           for q in questions]}
    merchant.settings = {**(merchant.settings or {}), "tickets": current}
    session.info.setdefault("merchants", {})[merchant_id] = merchant
    record(session, merchant_id=merchant_id, actor_type=principal.actor, actor_id=principal.actor_id,
           action="settings.tickets", object_type="merchant", object_id=merchant_id, data=current)
    return current


async def do_put_rule(session: AsyncSession, principal: Principal, name: str, body) -> "TicketRule":
    """Create or replace an automation rule or macro (admins and supervisors, audited)."""
    from shopdesk.tickets.automation import check_rule
    from shopdesk.tickets.channel_models import TicketRule

    merchant_id = principal.require_merchant_side()
    principal.require_role("admin", "supervisor")
    _check_name(name)
    check_rule(body.kind, body.conditions, body.actions)
    for i, a in enumerate(body.actions):
        if a.get("type") == "assign" and a.get("staff_id"):
            await _check_assignee(session, merchant_id, a["staff_id"], field=f"actions[{i}].staff_id")
        if a.get("type") == "set" and a.get("field") == "status":
            await _status(session, merchant_id, a.get("value") or "", field=f"actions[{i}].value")
    row = await _named(session, TicketRule, merchant_id, name)
    row.kind, row.conditions, row.actions = body.kind, body.conditions, body.actions
    row.active, row.position = body.active, body.position
    await session.flush()  # the answer carries the new rule's id
    record(session, merchant_id=merchant_id, actor_type=principal.actor, actor_id=principal.actor_id,
           action="settings.ticket_rule", object_type="ticket_rule", object_id=name, data=body.model_dump())
    return row


async def do_apply_macro(session: AsyncSession, principal: Principal, ticket_id: str, name: str) -> Ticket:
    """An agent runs a macro on a ticket: its actions, done in the agent's name."""
    from shopdesk.tickets.automation import apply_actions
    from shopdesk.tickets.channel_models import TicketRule

    ticket = await access_ticket(session, principal, ticket_id, lock=True)
    _staff_side(principal)
    macro = (await session.execute(select(TicketRule).where(
        TicketRule.merchant_id == ticket.merchant_id, TicketRule.name == name, TicketRule.kind == "macro",
        TicketRule.active.is_(True)))).scalar_one_or_none()
    if macro is None:
        raise NotFound("no such macro")
    await apply_actions(session, ticket, macro.actions, rule_name=macro.name, principal=principal)
    return ticket


# --------------------------------------------------------------------------------------------
# The sweeper
# --------------------------------------------------------------------------------------------
async def sweep_sla(limit: int = 500, merchant_id: str | None = None) -> int:
    """Raise every SLA warning and breach due now, each exactly once; return how many were raised."""
    from shopdesk.core.db import transaction

    at = now()
    due = Ticket.sla_check_at <= at
    if merchant_id:
        due = due & (Ticket.merchant_id == merchant_id)
    async with transaction() as session:
        ids = list((await session.execute(select(Ticket.id).where(due)
                                          .order_by(Ticket.sla_check_at).limit(limit))).scalars())
    raised = 0
    for ticket_id in ids:
        async with transaction() as session:
            ticket = (await session.execute(select(Ticket).where(Ticket.id == ticket_id, Ticket.sla_check_at <= at)
                                            .with_for_update(skip_locked=True)
                                            .execution_options(populate_existing=True))).scalar_one_or_none()
            if ticket is None:
                continue  # another node has it, or it changed meanwhile
            raised += len(await apply_sla(session, ticket))
    return raised
