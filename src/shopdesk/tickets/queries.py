"""Reads of tickets for the API and the pages."""
from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal
from shopdesk.core.clock import isoformat
from shopdesk.core.errors import ValidationFailed
from shopdesk.tickets.models import Ticket, TicketEvent, TicketReply
from shopdesk.tickets.states import GROUPS, PRIORITIES


def filtered(principal: Principal, *, status_group: str | None = None, status: str | None = None,
             assignee: str | None = None, category: str | None = None, priority: str | None = None,
             q: str | None = None, customer_id: str | None = None, include_merged: bool = False):
    """The select of tickets a caller may see, with the list filters applied (each field-checked)."""
    stmt = select(Ticket).where(Ticket.merchant_id == principal.merchant_id)
    if principal.kind == "shopper":
        stmt = stmt.where(Ticket.customer_id == principal.customer_id)
    if status_group:
        groups = [g.strip() for g in status_group.split(",") if g.strip()]
        for g in groups:
            if g not in GROUPS:
                raise ValidationFailed(f"status_group must be one of {', '.join(GROUPS)}", field="status_group")
        stmt = stmt.where(Ticket.status_group.in_(groups))
    if status:
        stmt = stmt.where(Ticket.status == status)
    if assignee:
        if assignee == "me":
            assignee = principal.staff_id or ""
        stmt = stmt.where(Ticket.assignee_id.is_(None) if assignee == "none" else Ticket.assignee_id == assignee)
    if category:
        stmt = stmt.where(Ticket.category == category)
    if priority:
        if priority not in PRIORITIES:
            raise ValidationFailed(f"priority must be one of {', '.join(PRIORITIES)}", field="priority")
        stmt = stmt.where(Ticket.priority == priority)
    if customer_id:
        stmt = stmt.where(Ticket.customer_id == customer_id)
    if not include_merged:
        stmt = stmt.where(Ticket.merged_into_id.is_(None))
    if q:
        q = q.strip()
        like = f"%{q.replace('%', '').replace('_', '')}%"
        stmt = stmt.where(or_(Ticket.number == q, Ticket.subject.like(like)))
    return stmt


async def list_tickets(session: AsyncSession, principal: Principal, *, limit: int, after: tuple[str, str] | None,
                       **filters) -> tuple[list[Ticket], bool]:
    """One page of tickets, most recently changed first (keyset on updated_at, id)."""
    from shopdesk.core.clock import parse_instant

    stmt = filtered(principal, **filters)
    if after:
        at = parse_instant(after[0])
        stmt = stmt.where(or_(Ticket.updated_at < at, (Ticket.updated_at == at) & (Ticket.id < after[1])))
    rows = list((await session.execute(stmt.order_by(Ticket.updated_at.desc(), Ticket.id.desc())
                                       .limit(limit + 1))).scalars())
    return rows[:limit], len(rows) > limit


async def replies_of(session: AsyncSession, ticket: Ticket, *, public_only: bool) -> list[TicketReply]:
    stmt = select(TicketReply).where(TicketReply.ticket_id == ticket.id)
    if public_only:
        stmt = stmt.where(TicketReply.public.is_(True))
    return list((await session.execute(stmt.order_by(TicketReply.created_at, TicketReply.id))).scalars())


async def events_of(session: AsyncSession, ticket: Ticket) -> list[TicketEvent]:
    return list((await session.execute(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id)
                                       .order_by(TicketEvent.at, TicketEvent.id))).scalars())


# Events a shopper may see in their ticket's history; staff see every one.
SHOPPER_EVENTS = {"create", "status", "merged", "merged_in", "urge", "rating", "reply"}


def ticket_out(ticket: Ticket, replies: list[TicketReply] | None = None, events: list[TicketEvent] | None = None,
               *, requester: bool = False) -> dict:
    """The ticket as the contract shows it; a requester sees only public replies and their own history."""
    out = {
        "id": ticket.id, "number": ticket.number, "version": ticket.version, "subject": ticket.subject,
        "description": ticket.description, "channel": ticket.channel, "category": ticket.category,
        "priority": ticket.priority, "status": ticket.status, "status_group": ticket.status_group,
        "assignee": ({"id": ticket.assignee_id} if ticket.assignee_id else None),
        "assignee_id": ticket.assignee_id, "team": ticket.team, "tags": ticket.tags,
        "customer_id": ticket.customer_id, "store_id": ticket.store_id, "order_id": ticket.order_id, "aftersales_id": ticket.aftersales_id,
        "conversation_id": ticket.conversation_id, "parent_id": ticket.parent_id,
        "merged_into": ticket.merged_into_id, "urge_count": ticket.urge_count,
        "sla": {"policy": ticket.sla_policy, "first_response_due_at": isoformat(ticket.first_response_due_at),
                "next_response_due_at": isoformat(ticket.next_response_due_at),
                "resolution_due_at": isoformat(ticket.resolution_due_at),
                "breaches": list(ticket.sla_breaches or [])},
        "rating": ({"score": ticket.rating_score, "comment": ticket.rating_comment,
                    "at": isoformat(ticket.rated_at)} if ticket.rated_at else None),
        "survey_open": ticket.status_group in ("solved", "closed") and ticket.merged_into_id is None,
        "created_at": isoformat(ticket.created_at), "updated_at": isoformat(ticket.updated_at),
        "solved_at": isoformat(ticket.solved_at), "closed_at": isoformat(ticket.closed_at),
        "first_response_at": isoformat(ticket.first_response_at),
    }
    if not requester:
        out.update({"custom_fields": ticket.custom_fields, "watchers": ticket.watchers,
                    "requester_email": ticket.requester_email, "requester_name": ticket.requester_name})
    if replies is not None:
        out["replies"] = [reply_out(r) for r in replies if r.public or not requester]
    if events is not None:
        out["events"] = [{"at": isoformat(e.at), "actor": {"type": e.actor_type, "id": e.actor_id},
                          "action": e.action, "data": e.data}
                         for e in events if not requester or e.action in SHOPPER_EVENTS]
    return out


def reply_out(r: TicketReply) -> dict:
    return {"id": r.id, "body": r.body, "public": r.public,
            "author": {"type": r.author_type, "id": r.author_id, "name": r.author_name},
            "channel": r.channel, "attachment_ids": r.attachment_ids, "origin_ticket_id": r.origin_ticket_id,
            "created_at": isoformat(r.created_at)}
