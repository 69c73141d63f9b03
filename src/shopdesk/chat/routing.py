"""Routing: who gets a new chat, the queue when everyone is full, and leave-a-message when nobody is on.

The choices are pure functions of the agents' loads (`pick_agent`, `queue_eta`, `within_hours`);
`place`, `drain` and `queue_view` read and write the rows around them. Callers hold the merchant's
routing lock (`lock_routing`) so two nodes never hand out the same free seat.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Iterable
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.models import Merchant
from shopdesk.chat.models import AgentPresence, ChatDesk, ChatVisitor, Conversation
from shopdesk.core.clock import UTC
from shopdesk.core.errors import ValidationFailed
from shopdesk.core.records import next_number

STICKY = timedelta(hours=24)
DEFAULT_HANDLE_S = 180  # the wait estimate's guess at a chat's length before any chat has ended
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


@dataclass(frozen=True)
class AgentSlot:
    staff_id: str
    capacity: int
    load: int
    last_assigned_at: datetime | None = None

    @property
    def free(self) -> bool:
        return self.load < self.capacity


def pick_agent(agents: Iterable[AgentSlot], *, sticky: str | None = None) -> str | None:
    """Choose who gets a chat: the sticky agent if they have room, else the least loaded.

    Load is weighted by capacity (3 of 10 is lighter than 1 of 2); among equals the agent who has
    waited longest since their last chat goes first (round robin).
    """
    free = [a for a in agents if a.free]
    if not free:
        return None
    if sticky and any(a.staff_id == sticky for a in free):
        return sticky
    best = min(free, key=lambda a: (Fraction(a.load, a.capacity), a.last_assigned_at or EPOCH, a.staff_id))
    return best.staff_id


def queue_eta(position: int, pool_capacity: int, avg_handle_s: float) -> int:
    """Expected wait in seconds: a seat frees every avg/capacity seconds, and `position` must free."""
    return math.ceil(position * avg_handle_s / max(pool_capacity, 1))


def check_business_hours(hours: dict | None) -> dict | None:
    """Validate {"days": [0-6], "start": "HH:MM", "end": "HH:MM"} (Monday = 0); None means always open."""
    if hours is None:
        return None
    if not isinstance(hours, dict) or set(hours) - {"days", "start", "end"}:
        raise ValidationFailed("business_hours takes days, start and end", field="business_hours")
    days = hours.get("days", [0, 1, 2, 3, 4, 5, 6])
    if not isinstance(days, list) or not days or any(not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 6
                                                     for d in days):
        raise ValidationFailed("days: a non-empty list of 0 (Monday) to 6 (Sunday)", field="business_hours.days")
    for key in ("start", "end"):
        if not isinstance(hours.get(key), str) or not HHMM.match(hours[key]):
            raise ValidationFailed(f"{key}: a time as HH:MM", field=f"business_hours.{key}")
    if hours["start"] == hours["end"]:
        raise ValidationFailed("start and end must differ", field="business_hours.end")
    return {"days": sorted(set(days)), "start": hours["start"], "end": hours["end"]}


def within_hours(hours: dict | None, at: datetime, zone: str) -> bool:
    """Whether `at` falls in the desk's hours, in the merchant's zone; an end before the start runs past midnight."""
    if not hours:
        return True
    local = at.astimezone(ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    start = int(hours["start"][:2]) * 60 + int(hours["start"][3:])
    end = int(hours["end"][:2]) * 60 + int(hours["end"][3:])
    days = set(hours["days"])
    if start < end:
        return local.weekday() in days and start <= minute < end
    # Overnight: the evening belongs to today, the small hours to the day before.
    if minute >= start:
        return local.weekday() in days
    return minute < end and (local.weekday() - 1) % 7 in days


def candidates(pool: dict[str, AgentSlot], desk: ChatDesk | None, at: datetime, zone: str) -> list[AgentSlot] | None:
    """The online agents who may take a chat of this desk; None when the desk is closed."""
    if desk is None:
        return list(pool.values())
    if not within_hours(desk.business_hours, at, zone):
        return None
    if desk.agent_ids:
        members = [a for a in pool.values() if a.staff_id in set(desk.agent_ids)]
        if members or not desk.fallthrough:
            return members
    return list(pool.values())


# --- rows ---------------------------------------------------------------------------------------

async def lock_routing(session: AsyncSession, merchant_id: str) -> None:
    """Take the merchant's routing lock until commit (an upsert holds the counter row's lock)."""
    await next_number(session, merchant_id, "chat.routing")


async def online_pool(session: AsyncSession, merchant_id: str) -> dict[str, AgentSlot]:
    """Online agents with their current load (assigned chats)."""
    rows = (await session.execute(select(AgentPresence).where(
        AgentPresence.merchant_id == merchant_id, AgentPresence.status == "online"))).scalars().all()
    if not rows:
        return {}
    loads = dict((await session.execute(
        select(Conversation.assignee_id, func.count()).where(
            Conversation.assignee_id.in_([p.staff_id for p in rows]), Conversation.status == "assigned")
        .group_by(Conversation.assignee_id))).all())
    return {p.staff_id: AgentSlot(p.staff_id, p.capacity, loads.get(p.staff_id, 0), p.last_assigned_at) for p in rows}


async def merchant_zone(session: AsyncSession, merchant_id: str) -> str:
    return (await session.execute(select(Merchant.time_zone).where(Merchant.id == merchant_id))).scalar_one()


async def desk_for_store(session: AsyncSession, merchant_id: str, store_id: str) -> ChatDesk | None:
    """A new chat's desk: the store's first desk, if it has one."""
    return (await session.execute(select(ChatDesk).where(
        ChatDesk.merchant_id == merchant_id, ChatDesk.store_id == store_id).order_by(ChatDesk.id).limit(1))
            ).scalar_one_or_none()


def _sticky(visitor_last_agent: str | None, last_at: datetime | None, at: datetime) -> str | None:
    return visitor_last_agent if visitor_last_agent and last_at and at - last_at <= STICKY else None


async def _assign(session: AsyncSession, conv: Conversation, staff_id: str, pool: dict[str, AgentSlot],
                  at: datetime) -> None:
    conv.status, conv.assignee_id, conv.assigned_at, conv.queued_at = "assigned", staff_id, at, None
    conv.updated_at = at
    pool[staff_id] = replace(pool[staff_id], load=pool[staff_id].load + 1, last_assigned_at=at)
    presence = await session.get(AgentPresence, staff_id)
    if presence is not None:
        presence.last_assigned_at = at
    visitor = await session.get(ChatVisitor, conv.visitor_id)
    if visitor is not None:
        visitor.last_agent_id, visitor.last_agent_at = staff_id, at


async def place(session: AsyncSession, conv: Conversation, visitor: ChatVisitor, at: datetime) -> None:
    """Route a new (or offline, or transferred-to-a-desk) chat: assign it, queue it, or leave it offline."""
    pool = await online_pool(session, conv.merchant_id)
    desk = await session.get(ChatDesk, conv.desk_id) if conv.desk_id else None
    cands = candidates(pool, desk, at, await merchant_zone(session, conv.merchant_id)) if pool else None
    if not cands:
        conv.status, conv.assignee_id, conv.queued_at, conv.updated_at = "offline", None, None, at
        return
    sticky = _sticky(visitor.last_agent_id, visitor.last_agent_at, at)
    if sticky and sticky in pool and pool[sticky].free:
        await _assign(session, conv, sticky, pool, at)
        return
    pick = pick_agent(cands)
    if pick:
        await _assign(session, conv, pick, pool, at)
    else:
        conv.status, conv.assignee_id, conv.queued_at, conv.updated_at = "queued", None, at, at


async def drain(session: AsyncSession, merchant_id: str, at: datetime) -> list[Conversation]:
    """Give freed seats to the oldest queued chats at once; return the chats assigned."""
    pool = await online_pool(session, merchant_id)
    if not any(a.free for a in pool.values()):
        return []
    queued = list((await session.execute(select(Conversation).where(
        Conversation.merchant_id == merchant_id, Conversation.status == "queued")
        .order_by(Conversation.queued_at, Conversation.id))).scalars())
    if not queued:
        return []
    visitors = {v.id: v for v in (await session.execute(select(ChatVisitor).where(
        ChatVisitor.id.in_({c.visitor_id for c in queued})))).scalars()}
    desk_ids = {c.desk_id for c in queued if c.desk_id}
    desks = {d.id: d for d in (await session.execute(select(ChatDesk).where(ChatDesk.id.in_(desk_ids)))).scalars()} \
        if desk_ids else {}
    zone = await merchant_zone(session, merchant_id)
    assigned = []
    for conv in queued:
        if not any(a.free for a in pool.values()):
            break
        cands = candidates(pool, desks.get(conv.desk_id) if conv.desk_id else None, at, zone)
        if not cands:
            continue
        visitor = visitors.get(conv.visitor_id)
        sticky = _sticky(visitor.last_agent_id, visitor.last_agent_at, at) if visitor else None
        pick = sticky if sticky and sticky in pool and pool[sticky].free else pick_agent(cands)
        if pick:
            await _assign(session, conv, pick, pool, at)
            assigned.append(conv)
    return assigned


async def average_handle_s(session: AsyncSession, merchant_id: str, at: datetime) -> float:
    avg = (await session.execute(select(func.avg(Conversation.handle_s)).where(
        Conversation.merchant_id == merchant_id, Conversation.status == "ended",
        Conversation.ended_at >= at - timedelta(hours=24), Conversation.handle_s.is_not(None)))).scalar()
    return float(avg) if avg else float(DEFAULT_HANDLE_S)


@dataclass(frozen=True)
class QueueSpot:
    conversation_id: str
    visitor_id: str
    position: int
    eta_s: int


async def queue_view(session: AsyncSession, merchant_id: str, at: datetime,
                     only: set[str] | None = None) -> dict[str, QueueSpot]:
    """1-based positions (oldest first, per desk) and wait estimates of the merchant's queued chats."""
    rows = (await session.execute(select(Conversation.id, Conversation.visitor_id, Conversation.desk_id).where(
        Conversation.merchant_id == merchant_id, Conversation.status == "queued")
        .order_by(Conversation.queued_at, Conversation.id))).all()
    if not rows:
        return {}
    pool = await online_pool(session, merchant_id)
    avg = await average_handle_s(session, merchant_id, at)
    desk_ids = {r.desk_id for r in rows if r.desk_id}
    desks = {d.id: d for d in (await session.execute(select(ChatDesk).where(ChatDesk.id.in_(desk_ids)))).scalars()} \
        if desk_ids else {}
    zone = await merchant_zone(session, merchant_id) if desks else "UTC"
    counters: dict[str | None, int] = {}
    out = {}
    for r in rows:
        counters[r.desk_id] = position = counters.get(r.desk_id, 0) + 1
        if only is not None and r.id not in only:
            continue
        cands = candidates(pool, desks.get(r.desk_id) if r.desk_id else None, at, zone) or []
        out[r.id] = QueueSpot(r.id, r.visitor_id, position, queue_eta(position, sum(a.capacity for a in cands), avg))
    return out
