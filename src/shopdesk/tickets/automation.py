"""Automation: triggers on create/update, time rules swept by the job runner, and agents' macros.

A rule is conditions (all must hold) and actions:

    conditions: [{"field": "priority", "op": "in", "value": ["high", "urgent"]},
                 {"field": "hours_since_updated", "op": "gte", "value": 72}, …]
    actions:    [{"type": "set", "field": "status", "value": "solved"},
                 {"type": "assign", "staff_id": "…"} | {"type": "assign", "method": "round_robin"},
                 {"type": "add_tags", "tags": […]}, {"type": "remove_tags", "tags": […]},
                 {"type": "notify", "to": "assignee" | "requester" | "<email>", "subject", "body"},
                 {"type": "reply", "body": "您好 {{requester_name}}，…", "public": true},
                 {"type": "webhook", "webhook_id": "…"}]   (a webhook registered with POST /webhooks)

Triggers run once per action call, after it, as the actor "automation"; what they change does not
fire triggers again (no loops). A time rule runs once per ticket until the ticket's status changes.
"""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.core.clock import isoformat, now
from shopdesk.core.errors import ValidationFailed
from shopdesk.core.ids import new_id
from shopdesk.core.outbox import enqueue
from shopdesk.notifications.models import Webhook
from shopdesk.tickets.channel_models import TicketRule
from shopdesk.tickets.models import Ticket
from shopdesk.tickets.states import PRIORITIES

KINDS = ("create", "update", "time", "macro")
FIELDS = {"priority", "category", "status", "status_group", "channel", "tags", "subject", "description",
          "assignee_id", "team", "urge_count", "hours_since_created", "hours_since_updated", "hours_in_status",
          "store_id"}
OPS = {"is", "is_not", "in", "not_in", "contains", "not_contains", "gt", "gte", "lt", "lte", "present", "blank"}
SETTABLE = {"priority", "category", "status", "team"}
ACTION_TYPES = {"set", "assign", "add_tags", "remove_tags", "notify", "reply", "webhook"}
VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


# --------------------------------------------------------------------------------------------
# Checking rules (pure)
# --------------------------------------------------------------------------------------------
def check_rule(kind: str, conditions: list[dict], actions: list[dict]) -> None:
    """Refuse a rule that could not run, naming the field."""
    if kind not in KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(KINDS)}", field="kind")
    for i, c in enumerate(conditions):
        field = c.get("field", "")
        if not (field in FIELDS or field.startswith("custom_fields.")):
            raise ValidationFailed(f"unknown field '{field}'", field=f"conditions[{i}].field")
        if c.get("op") not in OPS:
            raise ValidationFailed(f"op must be one of {', '.join(sorted(OPS))}", field=f"conditions[{i}].op")
        if field.startswith("hours_") and not isinstance(c.get("value"), (int, float)):
            raise ValidationFailed("a number of hours", field=f"conditions[{i}].value")
    if kind == "time" and not any(c.get("field", "").startswith("hours_") for c in conditions):
        raise ValidationFailed("a time rule needs an hours_since_created, hours_since_updated or hours_in_status "
                               "condition", field="conditions")
    if not actions:
        raise ValidationFailed("at least one action", field="actions")
    for i, a in enumerate(actions):
        kind_ = a.get("type")
        if kind_ not in ACTION_TYPES:
            raise ValidationFailed(f"type must be one of {', '.join(sorted(ACTION_TYPES))}", field=f"actions[{i}].type")
        if kind_ == "set":
            if a.get("field") not in SETTABLE:
                raise ValidationFailed(f"field must be one of {', '.join(sorted(SETTABLE))}",
                                       field=f"actions[{i}].field")
            if a["field"] == "priority" and a.get("value") not in PRIORITIES:
                raise ValidationFailed("unknown priority", field=f"actions[{i}].value")
        if kind_ in ("add_tags", "remove_tags") and not (isinstance(a.get("tags"), list) and a["tags"]):
            raise ValidationFailed("a list of tags", field=f"actions[{i}].tags")
        if kind_ in ("notify", "reply") and not str(a.get("body", "")).strip():
            raise ValidationFailed("a body", field=f"actions[{i}].body")
        if kind_ == "webhook" and not a.get("webhook_id"):
            raise ValidationFailed("the id of a registered webhook", field=f"actions[{i}].webhook_id")
        if kind_ == "assign" and not (a.get("staff_id") or a.get("method") in ("round_robin", "least_loaded")):
            raise ValidationFailed("a staff_id or a method (round_robin, least_loaded)", field=f"actions[{i}]")


def _value(ticket: Ticket, field: str) -> Any:
    at = now()
    if field == "hours_since_created":
        return (at - ticket.created_at).total_seconds() / 3600
    if field == "hours_since_updated":
        return (at - ticket.updated_at).total_seconds() / 3600
    if field == "hours_in_status":
        return (at - (ticket.status_changed_at or ticket.created_at)).total_seconds() / 3600
    if field.startswith("custom_fields."):
        return (ticket.custom_fields or {}).get(field.split(".", 1)[1])
    return getattr(ticket, field)


def matches(ticket: Ticket, conditions: list[dict]) -> bool:
    """All conditions hold for the ticket (pure apart from the clock)."""
    for c in conditions:
        have, op, want = _value(ticket, c["field"]), c["op"], c.get("value")
        if op == "present":
            ok = have not in (None, "", [])
        elif op == "blank":
            ok = have in (None, "", [])
        elif op == "is":
            ok = have == want
        elif op == "is_not":
            ok = have != want
        elif op in ("in", "not_in"):
            pool = want if isinstance(want, list) else [want]
            inside = any(t in pool for t in have) if isinstance(have, list) else have in pool
            ok = inside if op == "in" else not inside
        elif op in ("contains", "not_contains"):
            found = (want in have) if isinstance(have, list) else str(want).lower() in str(have or "").lower()
            ok = found if op == "contains" else not found
        else:
            try:
                a, b = float(have), float(want)
            except (TypeError, ValueError):
                return False
            ok = {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]
        if not ok:
            return False
    return True


def render(template: str, ticket: Ticket) -> str:
    values = {"number": ticket.number, "subject": ticket.subject, "status": ticket.status,
              "priority": ticket.priority, "requester_name": ticket.requester_name or "您"}
    return VARIABLE.sub(lambda m: str(values.get(m.group(1), m.group(0))), template)


# --------------------------------------------------------------------------------------------
# Running rules
# --------------------------------------------------------------------------------------------
async def rules_of(session: AsyncSession, merchant_id: str, kind: str) -> list[TicketRule]:
    return list((await session.execute(select(TicketRule).where(
        TicketRule.merchant_id == merchant_id, TicketRule.kind == kind, TicketRule.active.is_(True))
        .order_by(TicketRule.position, TicketRule.name))).scalars())


async def run_triggers(session: AsyncSession, ticket: Ticket, kind: str) -> list[str]:
    """Run the merchant's create or update triggers on a ticket; return the names of those that fired."""
    if session.info.get("in_automation"):
        return []  # a trigger's own changes fire nothing
    fired = []
    for rule in await rules_of(session, ticket.merchant_id, kind):
        if matches(ticket, rule.conditions):
            await apply_actions(session, ticket, rule.actions, rule_name=rule.name)
            fired.append(rule.name)
    return fired


async def apply_actions(session: AsyncSession, ticket: Ticket, actions: list[dict], *, rule_name: str,
                        principal=None) -> None:
    """Apply a rule's (or a macro's) actions through the same do_* a person would use."""
    from shopdesk.accounts.auth import Principal
    from shopdesk.tickets import actions as ticket_actions
    from shopdesk.tickets.assignment import choose_assignee
    from shopdesk.tickets.schemas import TicketPatch

    who = principal or Principal("merchant_key", ticket.merchant_id, name=f"自动化：{rule_name}")
    session.info["in_automation"] = True
    try:
        patch: dict[str, Any] = {}
        for a in actions:
            kind = a["type"]
            if kind == "set":
                patch[a["field"]] = a.get("value")
            elif kind == "assign":
                if a.get("staff_id"):
                    patch["assignee_id"] = a["staff_id"]
                else:
                    patch["assignee_id"] = await choose_assignee(session, ticket, method=a["method"])
            elif kind == "add_tags":
                patch["tags"] = list(dict.fromkeys([*(patch.get("tags") or ticket.tags), *a["tags"]]))
            elif kind == "remove_tags":
                patch["tags"] = [t for t in (patch.get("tags") or ticket.tags) if t not in a["tags"]]
        if patch:
            await ticket_actions.do_update_ticket(session, who, ticket.id, TicketPatch(**patch))
        for a in actions:
            kind = a["type"]
            if kind == "reply":
                # A rule's reply is the system's (it is no response for the SLA); a macro's is the agent's.
                await ticket_actions.do_reply(session, who, ticket.id, render(a["body"], ticket),
                                              public=a.get("public", True),
                                              author_type=None if principal else "system")
            elif kind == "notify":
                await _notify(session, ticket, a)
            elif kind == "webhook":
                hook = await session.get(Webhook, a["webhook_id"])
                if hook is not None and hook.merchant_id == ticket.merchant_id:
                    enqueue(session, "webhook", {"webhook_id": hook.id, "url": hook.url, "body": {
                        "id": new_id(), "event": "ticket.rule", "rule": rule_name, "created_at": isoformat(now()),
                        "data": {"ticket": ticket_actions._summary(ticket)}}}, ticket.merchant_id)
        ticket_actions._event(session, ticket, ("automation", None), "rule", name=rule_name)
    finally:
        session.info["in_automation"] = False


async def _notify(session: AsyncSession, ticket: Ticket, action: dict) -> None:
    from shopdesk.accounts.models import Staff
    from shopdesk.tickets import actions as ticket_actions

    to = action.get("to", "assignee")
    subject = render(action.get("subject") or f"工单 {ticket.number}", ticket)
    body = render(action["body"], ticket)
    if to == "requester":
        await ticket_actions._mail_requester(session, ticket, subject, body)
    elif to == "assignee":
        if ticket.assignee_id:
            staff = await session.get(Staff, ticket.assignee_id)
            if staff:
                enqueue(session, "email", {"to": staff.email, "subject": subject, "body": body}, ticket.merchant_id)
    elif "@" in to:
        enqueue(session, "email", {"to": to, "subject": subject, "body": body}, ticket.merchant_id)


async def sweep_time_rules(limit: int = 500, merchant_id: str | None = None) -> int:
    """Run every merchant's time rules on the tickets they match now, each once per status; return how many ran."""
    from shopdesk.core.db import transaction

    active = (TicketRule.kind == "time") & TicketRule.active.is_(True)
    if merchant_id:
        active = active & (TicketRule.merchant_id == merchant_id)
    async with transaction() as session:
        rules = list((await session.execute(select(TicketRule).where(active).order_by(
            TicketRule.merchant_id, TicketRule.position))).scalars())
        work: list[tuple[str, str]] = []
        for rule in rules:
            stmt = _prefilter(rule).limit(limit)
            work += [(rule.id, tid) for tid in (await session.execute(stmt)).scalars()]
    ran = 0
    for rule_id, ticket_id in work:
        async with transaction() as session:
            rule = await session.get(TicketRule, rule_id)
            ticket = (await session.execute(select(Ticket).where(Ticket.id == ticket_id).with_for_update(
                skip_locked=True).execution_options(populate_existing=True))).scalar_one_or_none()
            if rule is None or ticket is None or rule.id in (ticket.applied_rules or []):
                continue
            if ticket.status_group == "closed" or not matches(ticket, rule.conditions):
                continue
            ticket.applied_rules = [*(ticket.applied_rules or []), rule.id]
            await apply_actions(session, ticket, rule.actions, rule_name=rule.name)
            ran += 1
    return ran


def _prefilter(rule: TicketRule):
    """The SQL side of a time rule's conditions, so the sweep reads only candidate tickets."""
    at = now()
    stmt = select(Ticket.id).where(Ticket.merchant_id == rule.merchant_id, Ticket.status_group != "closed",
                                   Ticket.merged_into_id.is_(None))
    for c in rule.conditions:
        field, op, value = c["field"], c["op"], c.get("value")
        if field in ("hours_since_updated", "hours_since_created", "hours_in_status") and op in ("gt", "gte"):
            column = {"hours_since_updated": Ticket.updated_at, "hours_since_created": Ticket.created_at,
                      "hours_in_status": Ticket.status_changed_at}[field]
            stmt = stmt.where(column <= at - timedelta(hours=float(value)))
        elif field in ("status_group", "status", "priority", "category", "channel") and op in ("is", "in"):
            values = value if isinstance(value, list) else [value]
            stmt = stmt.where(getattr(Ticket, field).in_(values))
    return stmt.order_by(Ticket.updated_at)

