"""Routes: tickets, replies, merge/split, 催单, ratings, calendars, SLA policies and ticket settings."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from shopdesk.accounts.auth import Principal
from shopdesk.core.clock import isoformat, precise
from shopdesk.core.pagination import clamp_limit, decode_cursor, encode_cursor
from shopdesk.tickets import actions
from shopdesk.tickets.models import BusinessCalendar, SlaPolicy, Ticket
from shopdesk.tickets.queries import events_of, list_tickets, replies_of, reply_out, ticket_out
from shopdesk.tickets.channel_models import TicketRule, TicketTask
from shopdesk.tickets.schemas import (BulkIn, CalendarIn, FromChatIn, InboxViewIn, MergeIn, RatingIn, ReplyIn, RuleIn, SlaPolicyIn, SplitIn,
                                      TaskDoneIn, TicketIn, TicketPatch, TicketSettingsIn)
from shopdesk.web.deps import CurrentPrincipal, DbSession
from shopdesk.web.responses import create_once, page

router = APIRouter()


def _requester(principal: Principal) -> bool:
    return principal.kind in ("shopper", "ticket_link")


async def full_ticket(session, ticket: Ticket, principal: Principal) -> dict:
    requester = _requester(principal)
    return ticket_out(ticket, await replies_of(session, ticket, public_only=requester), await events_of(session, ticket),
                      requester=requester)


@router.post("/tickets", status_code=201)
async def create_ticket(body: TicketIn, request: Request, session: DbSession, principal: CurrentPrincipal):
    async def make() -> dict:
        ticket = await actions.do_create_ticket(session, principal, body)
        return await full_ticket(session, ticket, principal)

    return await create_once(request, session, principal, make)


@router.get("/tickets")
async def list_(session: DbSession, principal: CurrentPrincipal, status_group: str | None = None,
                status: str | None = None, assignee: str | None = None, category: str | None = None,
                priority: str | None = None, q: str | None = None, customer_id: str | None = None,
                limit: int | None = None, cursor: str | None = None) -> dict:
    if principal.is_platform:
        return page([], None)
    size = clamp_limit(limit)
    after = decode_cursor(cursor)
    rows, more = await list_tickets(session, principal, limit=size, after=(after[0], after[1]) if after else None,
                                    status_group=status_group, status=status, assignee=assignee, category=category,
                                    priority=priority, q=q, customer_id=customer_id)
    items = [ticket_out(t, requester=_requester(principal)) for t in rows]
    last = rows[-1] if rows else None
    return page(items, encode_cursor([precise(last.updated_at), last.id]) if more and last else None)


@router.post("/tickets/bulk")
async def bulk(body: BulkIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    """One change (status, priority, assignee, tags, …) to up to 100 tickets; each reports on its own."""
    async with session.begin():
        return {"results": await actions.do_bulk_update(session, principal, body.ids, body.patch)}


@router.get("/tickets/{ticket_id}")
async def get_ticket(ticket_id: str, session: DbSession, principal: CurrentPrincipal) -> dict:
    return await full_ticket(session, await actions.access_ticket(session, principal, ticket_id), principal)


@router.patch("/tickets/{ticket_id}")
async def patch_ticket(ticket_id: str, body: TicketPatch, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        ticket = await actions.do_update_ticket(session, principal, ticket_id, body)
        return await full_ticket(session, ticket, principal)


@router.post("/tickets/{ticket_id}/replies", status_code=201)
async def reply(ticket_id: str, body: ReplyIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        attachments = []
        if body.attachment_ids:
            await actions.access_ticket(session, principal, ticket_id)  # a stranger learns nothing from the check
            attachments = await actions.check_attachments(session, principal, body.attachment_ids)
        made = await actions.do_reply(session, principal, ticket_id, body.body, public=body.public,
                                      channel="web" if _requester(principal) else "api", attachment_ids=attachments)
        ticket = await session.get(Ticket, made.ticket_id)  # locked and loaded by do_reply: no query
        return {**await full_ticket(session, ticket, principal), "reply": reply_out(made)}


@router.post("/tickets/{ticket_id}/merge")
async def merge(ticket_id: str, body: MergeIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        ticket = await actions.do_merge(session, principal, ticket_id, body.into)
        return await full_ticket(session, ticket, principal)


@router.post("/tickets/{ticket_id}/split", status_code=201)
async def split(ticket_id: str, body: SplitIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        ticket = await actions.do_split(session, principal, ticket_id, body.reply_id)
        return await full_ticket(session, ticket, principal)


@router.post("/tickets/{ticket_id}/urge")
async def urge(ticket_id: str, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        ticket = await actions.do_urge(session, principal, ticket_id)
        return await full_ticket(session, ticket, principal)


@router.post("/tickets/{ticket_id}/rating")
async def rate(ticket_id: str, body: RatingIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        ticket = await actions.do_rate(session, principal, ticket_id, body.score, body.comment, body.answers)
        return await full_ticket(session, ticket, principal)


# --- settings ---------------------------------------------------------------------------------
def calendar_out(row: BusinessCalendar) -> dict:
    return {"name": row.name, **row.settings, "updated_at": isoformat(row.updated_at)}


def policy_out(row: SlaPolicy) -> dict:
    return {"name": row.name, "calendar": row.calendar, "match": row.match,
            "first_response_minutes": row.first_response_minutes,
            "next_response_minutes": row.next_response_minutes, "resolution_minutes": row.resolution_minutes,
            "position": row.position}


@router.put("/settings/calendars/{name}")
async def put_calendar(name: str, body: CalendarIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        return calendar_out(await actions.do_put_calendar(session, principal, name, body))


@router.get("/settings/calendars")
async def get_calendars(session: DbSession, principal: CurrentPrincipal) -> dict:
    merchant_id = principal.require_merchant_side()
    rows = (await session.execute(select(BusinessCalendar).where(BusinessCalendar.merchant_id == merchant_id)
                                  .order_by(BusinessCalendar.name))).scalars()
    return {"items": [calendar_out(r) for r in rows]}


@router.put("/settings/sla-policies/{name}")
async def put_policy(name: str, body: SlaPolicyIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        return policy_out(await actions.do_put_policy(session, principal, name, body))


@router.get("/settings/sla-policies")
async def get_policies(session: DbSession, principal: CurrentPrincipal) -> dict:
    merchant_id = principal.require_merchant_side()
    rows = (await session.execute(select(SlaPolicy).where(SlaPolicy.merchant_id == merchant_id)
                                  .order_by(SlaPolicy.position, SlaPolicy.name))).scalars()
    return {"items": [policy_out(r) for r in rows]}


@router.get("/settings/tickets")
async def get_ticket_settings(session: DbSession, principal: CurrentPrincipal) -> dict:
    from shopdesk.tickets.states import BUILT_IN

    merchant_id = principal.require_merchant_side()
    current = await actions.ticket_settings(session, merchant_id)
    return {"built_in_statuses": [s.__dict__ for s in BUILT_IN], "statuses": current.get("statuses", []),
            "categories": current.get("categories", []), "assignment": current.get("assignment", {"method": "none"}),
            "followup": current.get("followup", {"revisit_after_hours": None}),
            "survey": current.get("survey", {"scale": 5, "questions": []})}


@router.put("/settings/tickets")
async def put_ticket_settings(body: TicketSettingsIn, session: DbSession, principal: CurrentPrincipal):
    async with session.begin():
        current = await actions.do_update_ticket_settings(session, principal, body.statuses, body.categories,
                                                          body.assignment, body.followup, body.survey)
    return JSONResponse(current)


# --- automation, macros and follow-up tasks ------------------------------------------------------
def rule_out(row: TicketRule) -> dict:
    return {"id": row.id, "name": row.name, "kind": row.kind, "conditions": row.conditions, "actions": row.actions,
            "active": row.active, "position": row.position}


@router.put("/settings/ticket-rules/{name}")
async def put_rule(name: str, body: RuleIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        return rule_out(await actions.do_put_rule(session, principal, name, body))


@router.get("/settings/ticket-rules")
async def get_rules(session: DbSession, principal: CurrentPrincipal, kind: str | None = None) -> dict:
    merchant_id = principal.require_merchant_side()
    stmt = select(TicketRule).where(TicketRule.merchant_id == merchant_id)
    if kind:
        stmt = stmt.where(TicketRule.kind == kind)
    rows = (await session.execute(stmt.order_by(TicketRule.kind, TicketRule.position, TicketRule.name))).scalars()
    return {"items": [rule_out(r) for r in rows]}


@router.post("/tickets/{ticket_id}/macros/{name}")
async def apply_macro(ticket_id: str, name: str, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        ticket = await actions.do_apply_macro(session, principal, ticket_id, name)
        return await full_ticket(session, ticket, principal)


def task_out(task: TicketTask) -> dict:
    return {"id": task.id, "ticket_id": task.ticket_id, "kind": task.kind, "assignee_id": task.assignee_id,
            "due_at": isoformat(task.due_at), "status": task.status, "note": task.note, "outcome": task.outcome,
            "done_at": isoformat(task.done_at)}


@router.get("/ticket-tasks")
async def list_tasks(session: DbSession, principal: CurrentPrincipal, status: str = "open",
                     assignee: str | None = None) -> dict:
    merchant_id = principal.require_merchant_side()
    stmt = select(TicketTask).where(TicketTask.merchant_id == merchant_id, TicketTask.status == status)
    if assignee:
        stmt = stmt.where(TicketTask.assignee_id == (principal.staff_id if assignee == "me" else assignee))
    rows = (await session.execute(stmt.order_by(TicketTask.due_at).limit(200))).scalars()
    return {"items": [task_out(t) for t in rows], "next_cursor": None}


@router.post("/ticket-tasks/{task_id}/done")
async def finish_task(task_id: str, body: TaskDoneIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        return task_out(await actions.do_finish_task(session, principal, task_id, body.outcome, body.status))


@router.post("/conversations/{conversation_id}/ticket", status_code=201)
async def ticket_from_chat(conversation_id: str, session: DbSession, principal: CurrentPrincipal,
                           body: FromChatIn | None = None):
    """Turn a chat into a ticket, its history attached (201); a chat with an open ticket gets that one (200)."""
    from shopdesk.tickets.listeners import do_ticket_from_chat

    body = body or FromChatIn()
    async with session.begin():
        ticket, new = await do_ticket_from_chat(session, principal, conversation_id, subject=body.subject,
                                                priority=body.priority, category=body.category)
        out = await full_ticket(session, ticket, principal)
    return JSONResponse(out, status_code=201 if new else 200)


# --- the unified inbox -------------------------------------------------------------------------
@router.get("/inbox")
async def inbox(request: Request, session: DbSession, principal: CurrentPrincipal, view: str | None = None,
                sort: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict:
    """Open tickets, waiting chats, after-sales cases due within 24 h and revisit tasks, in one list."""
    from shopdesk.tickets import inbox as box

    principal.require_merchant_side()
    filters: dict = {}
    if view:
        saved = await box.access_view(session, principal, view)
        filters, sort = dict(saved.filters), sort or saved.sort
    for key in box.FILTER_KEYS:
        if key in request.query_params:
            filters[key] = request.query_params[key]
    after = decode_cursor(cursor)
    items, nxt = await box.inbox_page(session, principal, filters, sort=sort or "updated_desc",
                                      cursor=(after[0], after[1]) if after else None, limit=clamp_limit(limit))
    return page(items, nxt)


@router.get("/inbox/counts")
async def inbox_counts(session: DbSession, principal: CurrentPrincipal) -> dict:
    from shopdesk.tickets.inbox import counts

    principal.require_merchant_side()
    return await counts(session, principal)


@router.get("/inbox/views")
async def list_views(session: DbSession, principal: CurrentPrincipal) -> dict:
    from shopdesk.tickets.inbox import view_out, views_of

    return {"items": [view_out(v) for v in await views_of(session, principal)]}


@router.post("/inbox/views", status_code=201)
async def save_view(body: InboxViewIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    from shopdesk.tickets.inbox import do_save_view, view_out

    async with session.begin():
        return view_out(await do_save_view(session, principal, body.name, body.filters, body.sort, body.shared))


@router.delete("/inbox/views/{view_id}", status_code=204)
async def delete_view(view_id: str, session: DbSession, principal: CurrentPrincipal):
    from fastapi import Response

    from shopdesk.tickets.inbox import do_delete_view

    async with session.begin():
        await do_delete_view(session, principal, view_id)
    return Response(status_code=204)
