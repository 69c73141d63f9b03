"""Tickets from chat: an agent turns a chat into a ticket, and a 留言 (message left offline) becomes one."""
from __future__ import annotations

from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal
from shopdesk.accounts.queries import merchant_of
from shopdesk.core.errors import NotFound
from shopdesk.tickets import actions
from shopdesk.tickets.models import Ticket
from shopdesk.tickets.schemas import TicketIn

SENDER_ZH = {"visitor": "顾客", "agent": "客服", "bot": "机器人", "system": "系统"}


async def _open_ticket_of_chat(session: AsyncSession, merchant_id: str, conversation_id: str) -> Ticket | None:
    return (await session.execute(select(Ticket).where(
        Ticket.merchant_id == merchant_id, Ticket.conversation_id == conversation_id,
        Ticket.status_group.notin_(("solved", "closed"))).order_by(Ticket.created_at.desc()).limit(1)
    )).scalar_one_or_none()


async def do_ticket_from_chat(session: AsyncSession, principal: Principal, conversation_id: str, *,
                              subject: str = "", priority: str = "normal", category: str = "") -> tuple[Ticket, bool]:
    """Turn a chat into a ticket with its history; return the ticket and whether it is new.

    A chat that already has an open ticket gets that ticket back, not a second one.
    """
    from shopdesk.chat.actions import actor_from_principal
    from shopdesk.chat.models import ChatVisitor
    from shopdesk.chat.queries import transcript

    if not principal.is_merchant_side:
        raise NotFound("not found")
    conv, messages = await transcript(session, actor_from_principal(principal), conversation_id)
    existing = await _open_ticket_of_chat(session, conv.merchant_id, conv.id)
    if existing is not None:
        return existing, False
    visitor = await session.get(ChatVisitor, conv.visitor_id)
    zone = ZoneInfo((await merchant_of(session, conv.merchant_id)).time_zone)
    lines = [f"[{m.created_at.astimezone(zone):%m-%d %H:%M}] {m.sender_name or SENDER_ZH.get(m.sender_type, '')}："
             f"{m.text or ('[图片]' if m.attachment else '[卡片]' if m.card else '')}" for m in messages]
    first = next((m.text for m in messages if m.sender_type == "visitor" and m.text), "")
    body = TicketIn(subject=(subject or f"在线咨询：{first[:40]}" or "在线咨询")[:200],
                    description="\n".join(lines)[:20_000], priority=priority, category=category, channel="chat",
                    requester_email=(visitor.email or None) if visitor else None,
                    requester_name=(visitor.name if visitor else "")[:100])
    ticket = await actions.do_create_ticket(session, principal, body, conversation_id=conv.id,
                                            customer_id=conv.customer_id)
    return ticket, True


async def on_message_left(session: AsyncSession, conv, message) -> Ticket:
    """A visitor wrote while nobody was on duty (留言): the first message opens a ticket, later ones add to it."""
    from shopdesk.chat.models import ChatVisitor

    ticket = await _open_ticket_of_chat(session, conv.merchant_id, conv.id)
    text = message.text or ("[图片]" if message.attachment else "")
    if ticket is not None:
        link = Principal("ticket_link", conv.merchant_id, ticket_id=ticket.id)
        await actions.do_reply(session, link, ticket.id, text or "…", channel="chat")
        return ticket
    visitor = await session.get(ChatVisitor, conv.visitor_id)
    body = TicketIn(subject=f"网页留言：{text[:40]}"[:200], description=text, channel="chat",
                    requester_email=(visitor.email or None) if visitor else None,
                    requester_name=(visitor.name if visitor else "")[:100])
    return await actions.do_create_ticket(session, Principal("merchant_key", conv.merchant_id), body,
                                          conversation_id=conv.id, customer_id=conv.customer_id,
                                          actor=("shopper", conv.visitor_id), acknowledge=True)
