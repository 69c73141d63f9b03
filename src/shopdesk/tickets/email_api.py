"""Routes: the merchant's support mailboxes (admin). The password is write-only."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from shopdesk.tickets import email_channel
from shopdesk.web.deps import CurrentPrincipal, DbSession
from shopdesk.web.responses import create_once, page

router = APIRouter()


class MailboxIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(min_length=3, max_length=255)
    display_name: str = Field(default="", max_length=100)
    store: str | None = Field(default=None, max_length=64)  # the store's code; replies to its tickets go out from here
    imap_host: str | None = Field(default=None, max_length=255)
    imap_port: int = Field(default=993, ge=1, le=65535)
    imap_ssl: bool = True
    imap_user: str | None = Field(default=None, max_length=255)
    imap_password: str | None = Field(default=None, max_length=255)
    imap_folder: str = Field(default="INBOX", min_length=1, max_length=100)
    active: bool = True


@router.post("/mailboxes", status_code=201)
async def create_mailbox(body: MailboxIn, request: Request, session: DbSession, principal: CurrentPrincipal):
    async def make() -> dict:
        box = await email_channel.do_create_mailbox(session, principal, **body.model_dump())
        await session.flush()
        return email_channel.mailbox_out(box)

    return await create_once(request, session, principal, make)


@router.get("/mailboxes")
async def list_mailboxes(session: DbSession, principal: CurrentPrincipal) -> dict:
    boxes = await email_channel.list_mailboxes(session, principal)
    return page([email_channel.mailbox_out(b) for b in boxes], None)
