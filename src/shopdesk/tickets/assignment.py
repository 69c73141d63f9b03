"""Assignment rules: who gets a new ticket nobody assigned (settings `tickets.assignment`).

    {"method": "round_robin" | "least_loaded" | "none",
     "by_category": {"物流": ["<staff id>", …]}, "by_store": {"<store id>": [...]},
     "by_language": {"en": [...]}}

The most specific pool wins (category, then store, then language, then every agent of the
merchant); the method picks one member of the pool.
"""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.models import Staff
from shopdesk.core.errors import ValidationFailed
from shopdesk.core.records import next_number

METHODS = ("none", "round_robin", "least_loaded")
OPEN_GROUPS = ("new", "open", "pending")


def check_rules(rules: dict) -> dict:
    """Validate an assignment rule set (field-named errors)."""
    method = rules.get("method", "none")
    if method not in METHODS:
        raise ValidationFailed(f"method must be one of {', '.join(METHODS)}", field="assignment.method")
    out: dict = {"method": method}
    for key in ("by_category", "by_store", "by_language"):
        pools = rules.get(key) or {}
        if not isinstance(pools, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                                  for v in pools.values()):
            raise ValidationFailed("a map of name → list of staff ids", field=f"assignment.{key}")
        out[key] = {k: list(dict.fromkeys(v)) for k, v in pools.items()}
    return out


async def choose_assignee(session: AsyncSession, ticket, method: str | None = None) -> str | None:
    """Pick an assignee by the merchant's rule (or the method an automation action names)."""
    from shopdesk.tickets.actions import ticket_settings

    rules = (await ticket_settings(session, ticket.merchant_id)).get("assignment") or {}
    method = method or rules.get("method", "none")
    if method == "none":
        return None
    language = (ticket.custom_fields or {}).get("language")
    pool = ((rules.get("by_category") or {}).get(ticket.category)
            or (rules.get("by_store") or {}).get(ticket.store_id or "")
            or (rules.get("by_language") or {}).get(language or ""))
    stmt = select(Staff.id).where(Staff.merchant_id == ticket.merchant_id, Staff.role.in_(("agent", "supervisor")))
    if pool:
        stmt = stmt.where(Staff.id.in_(pool))
    candidates = sorted((await session.execute(stmt)).scalars())
    if not candidates:
        return None
    if method == "round_robin":
        turn = await next_number(session, ticket.merchant_id, "ticket_round_robin")
        return candidates[(turn - 1) % len(candidates)]
    from shopdesk.tickets.models import Ticket

    loads = dict((await session.execute(
        select(Ticket.assignee_id, func.count()).where(Ticket.merchant_id == ticket.merchant_id,
                                                       Ticket.assignee_id.in_(candidates),
                                                       Ticket.status_group.in_(OPEN_GROUPS))
        .group_by(Ticket.assignee_id))).all())
    return min(candidates, key=lambda sid: (loads.get(sid, 0), sid))
