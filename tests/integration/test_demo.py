"""`shopdesk demo` builds a believable shop once, through the same actions people use."""
from sqlalchemy import func, select

from shopdesk.core.db import transaction
from shopdesk.demo import build_demo


async def test_demo_builds_once_with_cases_and_tickets_in_many_states(frozen_clock):
    from shopdesk.aftersales.models import AftersaleCase
    from shopdesk.tickets.models import Ticket

    lines = await build_demo()
    assert "API key: sk_" in lines[1]
    again = await build_demo()
    assert "exists" in again[1]
    async with transaction() as session:
        cases = set((await session.execute(select(AftersaleCase.status))).scalars())
        groups = dict((await session.execute(select(Ticket.status_group, func.count()).group_by(Ticket.status_group))).all())
    assert {"requested", "awaiting_return", "awaiting_receipt", "rejected"} <= cases
    assert {"new", "open", "pending", "solved", "closed"} <= set(groups)
