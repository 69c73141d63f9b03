"""Idempotency-Key on creating POSTs: the same key and body replays the first answer."""
from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.core.errors import Conflict
from shopdesk.core.records import IdempotencyRecord


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def replay(session: AsyncSession, principal_key: str, key: str, digest: str) -> tuple[int, dict] | None:
    """Return the stored answer for this key, or None; a different body under the key is a 409."""
    row = (await session.execute(select(IdempotencyRecord).where(
        IdempotencyRecord.principal == principal_key, IdempotencyRecord.key == key))).scalar_one_or_none()
    if row is None:
        return None
    if row.request_hash != digest:
        raise Conflict("this Idempotency-Key was used with a different body", code="idempotency_key_reused")
    return row.status_code, json.loads(row.response_body)


def remember(session: AsyncSession, principal_key: str, key: str, digest: str, status: int, body: dict) -> None:
    session.add(IdempotencyRecord(principal=principal_key, key=key, request_hash=digest, status_code=status,
                                  response_body=json.dumps(body, ensure_ascii=False)))
