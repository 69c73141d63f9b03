"""Shared response helpers: idempotent creation and list envelopes."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal
from shopdesk.core.db import sessionmaker
from shopdesk.core.idempotency import body_hash, remember, replay


async def create_once(request: Request, session: AsyncSession, principal: Principal,
                      make: Callable[[], Awaitable[dict]], status: int = 201) -> JSONResponse:
    """Run a creating action in one transaction, honouring Idempotency-Key."""
    key = request.headers.get("idempotency-key")
    digest = body_hash(await request.body())
    try:
        async with session.begin():
            if key:
                prior = await replay(session, principal.key, key, digest)
                if prior:
                    return JSONResponse(prior[1], status_code=prior[0])
            body = await make()
            if key:
                remember(session, principal.key, key, digest, status, body)
    except IntegrityError:
        if not key:
            raise
        # Two requests raced on the same key: the loser answers with the winner's reply.
        async with sessionmaker()() as fresh, fresh.begin():
            prior = await replay(fresh, principal.key, key, digest)
        if prior is None:
            raise
        return JSONResponse(prior[1], status_code=prior[0])
    return JSONResponse(body, status_code=status)


def page(items: list[Any], next_cursor: str | None) -> dict:
    return {"items": items, "next_cursor": next_cursor}
