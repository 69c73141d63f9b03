"""Routes: webhook subscriptions."""
from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import select

from shopdesk.notifications.actions import do_create_webhook
from shopdesk.notifications.models import Webhook
from shopdesk.notifications.schemas import WebhookIn
from shopdesk.web.deps import CurrentPrincipal, DbSession
from shopdesk.web.responses import create_once, page

router = APIRouter()


def webhook_out(h: Webhook) -> dict:
    return {"id": h.id, "url": h.url, "events": h.events}


@router.post("/webhooks", status_code=201)
async def create_webhook(body: WebhookIn, request: Request, session: DbSession, principal: CurrentPrincipal):
    merchant_id = principal.require_merchant_side()
    principal.require_role("admin")

    async def make() -> dict:
        return webhook_out(await do_create_webhook(session, merchant_id, body.url, body.events, body.secret))

    return await create_once(request, session, principal, make)


@router.get("/webhooks")
async def list_webhooks(session: DbSession, principal: CurrentPrincipal) -> dict:
    merchant_id = principal.require_merchant_side()
    hooks = (await session.execute(select(Webhook).where(Webhook.merchant_id == merchant_id))).scalars()
    return page([webhook_out(h) for h in hooks], None)
