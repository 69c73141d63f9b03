"""The unified inbox: open tickets, chats waiting, after-sales cases near their deadline and revisit tasks.

One list for an agent, newest activity first (or oldest first), with saved views (filters + sort)
and counts. Each source is read with its own indexed query for one page (limit + 1 rows), the
pages are merged in Python, and the cursor is the last item's (time, id): the next page asks
every source for what comes after it. Nothing here counts or reads more than a page per source,
except `counts`, which is one aggregate per source over indexes.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal
from shopdesk.core.clock import isoformat, now, parse_instant, precise
from shopdesk.core.errors import NotFound, ValidationFailed
from shopdesk.tickets.channel_models import InboxView, TicketTask
from shopdesk.tickets.models import Ticket
from shopdesk.tickets.states import PRIORITIES

KINDS = ("ticket", "chat", "aftersales", "task")
OPEN_GROUPS = ("new", "open", "pending")
SORTS = ("updated_desc", "updated_asc")
HORIZON = timedelta(hours=24)  # cases and tasks due within it are inbox work
FILTER_KEYS = {"kinds", "status_group", "assignee", "priority", "category", "tag", "q", "channel", "urged"}
TICKET_ONLY = ("priority", "category", "tag", "q", "status_group", "urged")  # a chat, case or task has none


def check_filters(filters: dict) -> dict:
    """Validate inbox filters (query parameters or a saved view), naming the field."""
    unknown = set(filters) - FILTER_KEYS
    if unknown:
        raise ValidationFailed(f"unknown filter '{sorted(unknown)[0]}'", field=f"filters.{sorted(unknown)[0]}")
    out: dict[str, Any] = {}
    kinds = filters.get("kinds") or list(KINDS)
    if isinstance(kinds, str):
        kinds = [k for k in kinds.split(",") if k]
    if any(k not in KINDS for k in kinds):
        raise ValidationFailed(f"kinds are {', '.join(KINDS)}", field="kinds")
    out["kinds"] = kinds
    for key, allowed in (("status_group", OPEN_GROUPS + ("solved", "closed")), ("priority", PRIORITIES)):
        value = filters.get(key)
        if value:
            values = value.split(",") if isinstance(value, str) else list(value)
            if any(v not in allowed for v in values):
                raise ValidationFailed(f"{key} is one of {', '.join(allowed)}", field=key)
            out[key] = values
    for key in ("assignee", "category", "tag", "q", "channel"):
        if filters.get(key):
            out[key] = str(filters[key])[:100]
    urged = filters.get("urged")
    if urged not in (None, "", False):
        if urged not in (True, "1", "true", "on"):
            raise ValidationFailed("urged is true or left out", field="urged")
        out["urged"] = True
    return out


def _assignee(column, principal: Principal, value: str | None):
    if not value:
        return None
    if value == "me":
        return column == principal.staff_id
    if value == "none":
        return column.is_(None)
    return column == value


async def _page(session, stmt, at_col, id_col, cursor: tuple[datetime, str] | None, ascending: bool, limit: int):
    """One source's rows after the cursor (time, id), in the list's order."""
    if cursor is not None:
        at, ident = cursor
        if ascending:
            stmt = stmt.where(or_(at_col > at, and_(at_col == at, id_col > ident)))
        else:
            stmt = stmt.where(or_(at_col < at, and_(at_col == at, id_col < ident)))
    order = (at_col.asc(), id_col.asc()) if ascending else (at_col.desc(), id_col.desc())
    return (await session.execute(stmt.order_by(*order).limit(limit))).scalars()


def _tasks_due(merchant_id: str):
    """Open revisit tasks due within the inbox's horizon."""
    return select(TicketTask).where(TicketTask.merchant_id == merchant_id, TicketTask.status == "open",
                                    TicketTask.due_at <= now() + HORIZON)


def _groups_in(groups: list[str] | tuple[str, ...]):
    return Ticket.status_group.in_(bindparam("groups", list(groups), expanding=True, literal_execute=True))


def ticket_select(principal: Principal, f: dict):
    groups = f.get("status_group") or list(OPEN_GROUPS)
    stmt = select(Ticket).where(Ticket.merchant_id == principal.merchant_id, Ticket.merged_into_id.is_(None))
    # Rendered as literals, so that PostgreSQL can prove the partial index's predicate even from a
    # prepared statement's generic plan.
    stmt = stmt.where(_groups_in(groups))
    cond = _assignee(Ticket.assignee_id, principal, f.get("assignee"))
    if cond is not None:
        stmt = stmt.where(cond)
    if f.get("priority"):
        stmt = stmt.where(Ticket.priority.in_(f["priority"]))
    if f.get("category"):
        stmt = stmt.where(Ticket.category == f["category"])
    if f.get("channel"):
        stmt = stmt.where(Ticket.channel == f["channel"])
    if f.get("tag"):
        stmt = stmt.where(Ticket.tags.contains([f["tag"]]))
    if f.get("urged"):
        stmt = stmt.where(Ticket.urge_count > 0)
    if f.get("q"):
        q = f["q"].strip()
        stmt = stmt.where(or_(Ticket.number == q, Ticket.subject.like(f"%{q.replace('%', '')}%")))
    return stmt


def _ticket_item(t: Ticket) -> dict:
    dues = [d for d in (t.first_response_due_at, t.next_response_due_at, t.resolution_due_at) if d]
    return {"kind": "ticket", "id": t.id, "ref": t.number, "title": t.subject, "status": t.status,
            "status_group": t.status_group, "priority": t.priority, "assignee_id": t.assignee_id,
            "due_at": isoformat(min(dues)) if dues else None, "breached": bool(t.sla_breaches),
            "urge_count": t.urge_count, "channel": t.channel, "at": t.updated_at,
            "link": f"/console/tickets/{t.id}"}


async def _tickets(session, principal, f, cursor, ascending, limit) -> list[dict]:
    stmt = ticket_select(principal, f)
    rows = await _page(session, stmt, Ticket.updated_at, Ticket.id, cursor, ascending, limit)
    return [_ticket_item(t) for t in rows]


async def _chats(session, principal, f, cursor, ascending, limit) -> list[dict]:
    from shopdesk.chat.models import Conversation
    from shopdesk.chat.queries import waiting

    if any(f.get(k) for k in TICKET_ONLY):
        return []
    stmt = waiting(principal.merchant_id)
    cond = _assignee(Conversation.assignee_id, principal, f.get("assignee"))
    if cond is not None:
        stmt = stmt.where(cond)
    rows = await _page(session, stmt, Conversation.updated_at, Conversation.id, cursor, ascending, limit)
    return [{"kind": "chat", "id": c.id, "ref": c.id[-6:], "title": "在线咨询" if c.status == "queued" else "网页留言",
             "status": c.status, "status_group": "new", "priority": "normal", "assignee_id": c.assignee_id,
             "due_at": None, "breached": False, "urge_count": 0, "channel": "chat", "at": c.updated_at,
             "link": f"/console/chat?c={c.id}"} for c in rows]


async def _cases(session, principal, f, cursor, ascending, limit) -> list[dict]:
    from shopdesk.aftersales.models import AftersaleCase
    from shopdesk.aftersales.queries import due_soon

    if f.get("assignee") or any(f.get(k) for k in TICKET_ONLY if k != "q"):
        return []
    stmt = due_soon(principal.merchant_id, now() + HORIZON)
    if f.get("q"):
        stmt = stmt.where(AftersaleCase.case_no == f["q"].strip())
    rows = await _page(session, stmt, AftersaleCase.updated_at, AftersaleCase.id, cursor, ascending, limit)
    return [{"kind": "aftersales", "id": c.id, "ref": c.case_no, "title": f"售后 {c.case_no}", "status": c.status,
             "status_group": "open", "priority": "high", "assignee_id": None, "due_at": isoformat(c.deadline_at),
             "breached": False, "urge_count": 0, "channel": "aftersales", "at": c.updated_at,
             "link": f"/console/cases/{c.id}"} for c in rows]


async def _tasks(session, principal, f, cursor, ascending, limit) -> list[dict]:
    if any(f.get(k) for k in TICKET_ONLY):
        return []
    stmt = _tasks_due(principal.merchant_id)
    cond = _assignee(TicketTask.assignee_id, principal, f.get("assignee"))
    if cond is not None:
        stmt = stmt.where(cond)
    rows = await _page(session, stmt, TicketTask.due_at, TicketTask.id, cursor, ascending, limit)
    return [{"kind": "task", "id": t.id, "ref": t.kind, "title": t.note or "回访", "status": t.status,
             "status_group": "open", "priority": "normal", "assignee_id": t.assignee_id,
             "due_at": isoformat(t.due_at), "breached": t.due_at < now(), "urge_count": 0, "channel": "revisit",
             "at": t.due_at, "link": f"/console/tickets/{t.ticket_id}"} for t in rows]


SOURCES = {"ticket": _tickets, "chat": _chats, "aftersales": _cases, "task": _tasks}


async def inbox_page(session: AsyncSession, principal: Principal, filters: dict, *, sort: str = "updated_desc",
                     cursor: tuple[str, str] | None = None, limit: int = 25) -> tuple[list[dict], str | None]:
    """One page of the unified inbox and the cursor after it."""
    if sort not in SORTS:
        raise ValidationFailed(f"sort is one of {', '.join(SORTS)}", field="sort")
    f = check_filters(filters)
    ascending = sort == "updated_asc"
    after = (parse_instant(cursor[0]), cursor[1]) if cursor else None
    items: list[dict] = []
    for kind in f["kinds"]:
        items += await SOURCES[kind](session, principal, f, after, ascending, limit + 1)
    items.sort(key=lambda i: (i["at"], i["id"]), reverse=not ascending)
    page, more = items[:limit], len(items) > limit
    nxt = (precise(page[-1]["at"]), page[-1]["id"]) if more else None
    for item in page:
        item["at"] = isoformat(item["at"])
    from shopdesk.core.pagination import encode_cursor

    return page, encode_cursor(list(nxt)) if nxt else None


async def counts(session: AsyncSession, principal: Principal) -> dict:
    """The inbox's counters: one aggregate over the open tickets, one per other source."""
    from shopdesk.aftersales.models import AftersaleCase
    from shopdesk.aftersales.queries import due_soon
    from shopdesk.chat.queries import waiting

    open_ = and_(Ticket.merchant_id == principal.merchant_id, Ticket.merged_into_id.is_(None),
                 _groups_in(OPEN_GROUPS))
    mine = Ticket.assignee_id == principal.staff_id if principal.staff_id else Ticket.id.is_(None)
    row = (await session.execute(select(
        func.count(), func.count().filter(Ticket.status_group == "new"),
        func.count().filter(Ticket.status_group == "open"), func.count().filter(Ticket.status_group == "pending"),
        func.count().filter(mine), func.count().filter(Ticket.assignee_id.is_(None)),
        func.count().filter(Ticket.urge_count > 0)).where(open_))).one()
    chats = (await session.execute(select(func.count()).select_from(waiting(principal.merchant_id).subquery()))).scalar()
    cases = (await session.execute(select(func.count()).select_from(
        due_soon(principal.merchant_id, now() + HORIZON).with_only_columns(AftersaleCase.id).subquery())
    )).scalar()
    tasks = (await session.execute(select(func.count()).select_from(
        _tasks_due(principal.merchant_id).subquery()))).scalar()
    return {"tickets": {"open_total": row[0], "new": row[1], "open": row[2], "pending": row[3], "mine": row[4],
                        "unassigned": row[5], "urged": row[6]},
            "chats_waiting": chats, "aftersales_due": cases, "tasks_due": tasks}


# --- saved views ------------------------------------------------------------------------------
def view_out(v: InboxView) -> dict:
    return {"id": v.id, "name": v.name, "filters": v.filters, "sort": v.sort, "shared": v.owner_id is None}


async def do_save_view(session: AsyncSession, principal: Principal, name: str, filters: dict, sort: str,
                       shared: bool) -> InboxView:
    merchant_id = principal.require_merchant_side()
    if shared:
        principal.require_role("admin", "supervisor")
    elif not principal.staff_id:
        raise ValidationFailed("an API key saves shared views only", field="shared")
    if sort not in SORTS:
        raise ValidationFailed(f"sort is one of {', '.join(SORTS)}", field="sort")
    if not name.strip() or len(name) > 64:
        raise ValidationFailed("1 to 64 characters", field="name")
    checked = check_filters(filters)
    if "kinds" not in filters:
        checked.pop("kinds")
    owner = None if shared else principal.staff_id
    view = (await session.execute(select(InboxView).where(
        InboxView.merchant_id == merchant_id, InboxView.owner_id.is_(owner) if owner is None
        else InboxView.owner_id == owner, InboxView.name == name.strip()))).scalar_one_or_none()
    if view is None:
        view = InboxView(merchant_id=merchant_id, owner_id=owner, name=name.strip())
        session.add(view)
    view.filters, view.sort = checked, sort
    await session.flush()  # the answer carries the new view's id
    return view


async def views_of(session: AsyncSession, principal: Principal) -> list[InboxView]:
    merchant_id = principal.require_merchant_side()
    mine = InboxView.owner_id.is_(None)
    if principal.staff_id:
        mine = or_(mine, InboxView.owner_id == principal.staff_id)
    return list((await session.execute(select(InboxView).where(InboxView.merchant_id == merchant_id, mine)
                                       .order_by(InboxView.name))).scalars())


async def access_view(session: AsyncSession, principal: Principal, view_id: str) -> InboxView:
    merchant_id = principal.require_merchant_side()
    view = await session.get(InboxView, view_id)
    if view is None or view.merchant_id != merchant_id or (view.owner_id and view.owner_id != principal.staff_id):
        raise NotFound("no such view")
    return view


async def do_delete_view(session: AsyncSession, principal: Principal, view_id: str) -> None:
    view = await access_view(session, principal, view_id)
    if view.owner_id is None:
        principal.require_role("admin", "supervisor")  # a shared view belongs to the team
    await session.delete(view)
