"""FastAPI dependency aliases shared by every router."""
from __future__ import annotations

from typing import Annotated, AsyncIterator

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal, resolve
from shopdesk.core.errors import Unauthorized
from shopdesk.core.db import sessionmaker


async def get_session() -> AsyncIterator[AsyncSession]:
    async with sessionmaker()() as session:
        yield session


DbSession = Annotated[AsyncSession, Depends(get_session)]


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


async def get_principal(request: Request, session: DbSession) -> Principal:
    principal = await resolve(session, bearer(request))
    if principal.kind == "ticket_link" and not request.url.path.startswith(f"/api/v1/tickets/{principal.ticket_id}"):
        # An emailed ticket link opens that one ticket and nothing else.
        raise Unauthorized("this link opens one ticket only")
    request.state.principal = principal
    if session.in_transaction():
        await session.rollback()  # end the read that resolved it; handlers open their own transaction
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
