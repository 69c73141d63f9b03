"""The audit log: one row for every action that moves money or changes a case."""
from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.core.records import AuditLog
from shopdesk.core.clock import now


def record(session: AsyncSession, *, merchant_id: str | None, actor_type: str, actor_id: str | None,
           action: str, object_type: str, object_id: str, data: dict[str, Any] | None = None) -> None:
    session.add(AuditLog(merchant_id=merchant_id, at=now(), actor_type=actor_type, actor_id=actor_id,
                         action=action, object_type=object_type, object_id=object_id, data=data or {}))
