"""The email channel of tickets: intake by IMAP polling and by an SMTP receiver, threading, loop protection.

`ingest` takes one raw message into a ticket, once (the Message-ID is the key, unique per merchant).
Each mailbox is polled by a task of its own with its own timeouts and back-off, so a slow or broken
server stalls only that mailbox (service-desk §1, §7). How it all fits: docs/email-channel.md.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
import ssl
from collections import Counter
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.utils import parseaddr

import structlog
from sqlalchemy import case, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Store
from shopdesk.aftersales.models import Upload
from shopdesk.config import get_settings
from shopdesk.core import storage
from shopdesk.core.audit import record
from shopdesk.core.clock import isoformat, now
from shopdesk.core.db import transaction
from shopdesk.core.errors import Conflict, ValidationFailed
from shopdesk.core.ids import new_id
from shopdesk.customers import actions as customers
from shopdesk.customers.actions import get_customer
from shopdesk.integrations import mail
from shopdesk.tickets import actions
from shopdesk.tickets.channel_models import InboundEmail, Mailbox
from shopdesk.tickets.models import Ticket, TicketReply
from shopdesk.tickets.schemas import TicketIn

log = structlog.get_logger("shopdesk.email")

# A whole message: the SMTP receiver answers 552 above it; the poller imports only the headers.
# 25 MB of attachments grow to about 34 MB in base64.
MAX_MESSAGE_BYTES = 40 * 1024 * 1024
# One attachment kept on disk; what the big mail providers let through (larger ones are listed, not kept).
ATTACHMENT_MAX_BYTES = mail.MAX_ATTACHMENT_BYTES
MAX_ATTACHMENTS = 20
# Above this a message is parsed in a worker thread, so a big one does not hold up the other mailboxes.
PARSE_IN_THREAD_BYTES = 256 * 1024
SUBJECT_MAX = 200
TEXT_MAX = 20_000
NO_SUBJECT = "（无主题）"

IMAP_TIMEOUT_S = 30.0
# A literal (a message) may take this long plus one second per 256 KiB.
IMAP_MIN_RATE = 256 * 1024
POLL_INTERVAL_S = 60.0
POLL_BATCH = 50
BACKOFF_MAX_S = 15 * 60.0
SUPERVISOR_REFRESH_S = 30.0
# A message whose ingest keeps raising (and cannot even be recorded as failed) is skipped after this many tries.
SKIP_AFTER_ATTEMPTS = 3

REPLY_GROUPS_CLOSED = ("closed",)
_TAKING_IN = "shopdesk.email.taking_in"
_OUTBOUND_ID_RE = re.compile(rf"^({mail.TICKET_NUMBER})\.([0-9A-Za-z]+)@", re.IGNORECASE)
_ADDRESS_RE = re.compile(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+\.[^@\s<>\"(),;:]+$")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _text(value: str | None, limit: int) -> str:
    """Text a column can hold: PostgreSQL refuses NUL characters, and every column has a length."""
    return (value or "").replace("\x00", "")[:limit]


def _long_text(value: str, limit: int = TEXT_MAX) -> str:
    value = value.replace("\x00", "").strip()
    if len(value) <= limit:
        return value
    return value[:limit - 30].rstrip() + "\n\n…（邮件正文过长，已截断）"


def message_key(message_id: str) -> str:
    """The Message-ID as stored: ids longer than the column become a stable digest."""
    message_id = message_id.strip().strip("<>").replace("\x00", "")
    if len(message_id) <= 255:
        return message_id
    return f"{hashlib.sha256(message_id.encode('utf-8', 'surrogateescape')).hexdigest()}@long.shopdesk.invalid"


def _transient(exc: BaseException) -> bool:
    """Errors of the database or the machine, not of the message: try the message again later."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout, TimeoutError, ConnectionError, OSError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _size_text(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB" if size >= 1024 * 1024 else f"{max(1, size // 1024)} KB"


# IMAP position columns are 32-bit signed integers, IMAP's UIDVALIDITY and UIDs are unsigned 32-bit numbers
# (RFC 3501 §2.3.1.1): values above 2^31 are stored wrapped, and unwrapped when read.
def _to_column(value: int) -> int:
    return value - (1 << 32) if value >= (1 << 31) else value


def _from_column(value: int | None) -> int | None:
    return None if value is None else value + (1 << 32) if value < 0 else value


# --------------------------------------------------------------------------------------------
# Intake
# --------------------------------------------------------------------------------------------
@dataclass
class _Stored:
    upload_id: str
    filename: str
    content_type: str
    size: int
    path: str


@dataclass
class _Files:
    stored: list[_Stored] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # lines for the ticket, one per attachment not kept

    def discard(self) -> None:
        for item in self.stored:
            try:
                storage.open_path(item.path).unlink(missing_ok=True)
            except OSError:
                pass


def _safe_name(filename: str | None, content_type: str) -> str:
    name = re.sub(r"[^\w.\-]+", "_", (filename or "").strip())[-60:].strip("._")
    if not name:
        subtype = content_type.split("/", 1)[-1]
        name = "attachment." + (re.sub(r"[^\w]+", "", subtype)[:10] or "bin")
    return name


def _store_files(merchant_id: str, attachments: list[mail.Attachment], limit: int) -> _Files:
    """Write the attachments a mail carries (run in a thread: they may be tens of MB)."""
    files = _Files()
    kept = 0
    for att in attachments:
        name = att.filename or att.content_type
        if att.skipped_reason or att.size > limit:
            files.skipped.append(f"[附件未保存：{name}（{_size_text(att.size)}），超过 {_size_text(limit)} 上限]")
            continue
        if kept >= MAX_ATTACHMENTS:
            files.skipped.append(f"[附件未保存：{name}，一封邮件最多保存 {MAX_ATTACHMENTS} 个附件]")
            continue
        upload_id = new_id()
        path = storage.save(merchant_id, f"{upload_id}-{_safe_name(att.filename, att.content_type)}", att.payload)
        files.stored.append(_Stored(upload_id, att.filename or "", att.content_type[:64], att.size, path))
        kept += 1
    return files


async def _parse(raw: bytes, attachment_limit: int) -> mail.InboundMail:
    if len(raw) > PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(mail.parse_message, raw, max_attachment_bytes=attachment_limit)
    return mail.parse_message(raw, max_attachment_bytes=attachment_limit)


async def _imported(session: AsyncSession, merchant_id: str, key: str) -> InboundEmail | None:
    return (await session.execute(select(InboundEmail).where(InboundEmail.merchant_id == merchant_id,
                                                             InboundEmail.message_id == key))).scalar_one_or_none()


async def own_addresses(session: AsyncSession) -> set[str]:
    """Every address this installation sends from: a mail from one of them is our own coming back."""
    addresses = {a.lower() for a in (await session.execute(select(Mailbox.address))).scalars()}
    sender = parseaddr(get_settings().mail_from)[1].lower()
    return addresses | ({sender} if sender else set())


async def ingest(merchant_id: str, mailbox_id: str | None, raw: bytes, *, size: int | None = None,
                 attachment_max_bytes: int = ATTACHMENT_MAX_BYTES) -> InboundEmail:
    """Take one raw email into the merchant's tickets, in its own transaction; a second import is a no-op.

    Returns the InboundEmail row: status ticket | reply | ignored | failed. Raises only for errors of the
    database or the machine (the caller retries later); anything wrong with the message itself is
    recorded as failed with the reason, so it is never retried forever.
    """
    parsed = await _parse(raw, attachment_max_bytes)
    key = message_key(parsed.message_id)
    async with transaction() as session:
        existing = await _imported(session, merchant_id, key)
        ours = await own_addresses(session) if existing is None else set()
    if existing is not None:
        return existing
    ignore = mail.should_ignore(parsed, own_addresses=ours)
    files = _Files()
    failure: BaseException | None = None
    try:
        if ignore is None and parsed.attachments:
            files = await asyncio.to_thread(_store_files, merchant_id, parsed.attachments, attachment_max_bytes)
        async with transaction() as session:
            row = await _take_in(session, merchant_id, mailbox_id, parsed, key, size or len(raw), ignore, files)
        log.info("email_ingested", merchant_id=merchant_id, mailbox_id=mailbox_id, message_id=key,
                 status=row.status, reason=row.reason, ticket_id=row.ticket_id)
        return row
    except IntegrityError as exc:
        files.discard()
        async with transaction() as session:
            existing = await _imported(session, merchant_id, key)
        if existing is not None:  # the same mail arrived by another path at the same moment
            return existing
        failure = exc
    except Exception as exc:
        files.discard()
        if _transient(exc):
            raise
        failure = exc
    log.error("email_failed", merchant_id=merchant_id, mailbox_id=mailbox_id, message_id=key,
              error=f"{type(failure).__name__}: {failure}")
    try:
        async with transaction() as session:
            row = InboundEmail(id=new_id(), merchant_id=merchant_id, mailbox_id=mailbox_id, message_id=key,
                               from_address=_text(parsed.from_address, 255), subject=_text(parsed.subject, 500),
                               status="failed", reason=_text(f"{type(failure).__name__}: {failure}", 200),
                               size=size or len(raw), received_at=now())
            session.add(row)
        return row
    except IntegrityError:
        async with transaction() as session:
            existing = await _imported(session, merchant_id, key)
        if existing is None:
            raise
        return existing


async def _take_in(session: AsyncSession, merchant_id: str, mailbox_id: str | None, parsed: mail.InboundMail,
                   key: str, size: int, ignore: str | None, files: _Files) -> InboundEmail:
    sender = (parsed.from_address or "").lower()
    row = InboundEmail(id=new_id(), merchant_id=merchant_id, mailbox_id=mailbox_id, message_id=key,
                       from_address=_text(sender, 255), subject=_text(parsed.subject, 500), status="failed",
                       reason=None, size=size, received_at=now())
    session.add(row)
    # Claim the Message-ID first: a concurrent import of the same mail waits here, then fails as a duplicate.
    await session.flush()
    # The acknowledgement of a new ticket is written before the row knows its ticket: reply_envelope finds it here.
    session.info[_TAKING_IN] = row
    if ignore is not None:
        row.status, row.reason = "ignored", ignore
        return row
    if parsed.defects:
        row.reason = _text("defects: " + ", ".join(parsed.defects), 200)
    for item in files.stored:
        session.add(Upload(id=item.upload_id, merchant_id=merchant_id, owner_type="email", owner_id=row.id,
                           content_type=item.content_type, size=item.size, path=item.path))
    upload_ids = [item.upload_id for item in files.stored]

    found = await find_ticket(session, merchant_id, parsed)
    follow_up_of: Ticket | None = None
    if found is not None:
        requester = Principal("ticket_link", merchant_id, ticket_id=found.id)
        found = await actions.access_ticket(session, requester, found.id, lock=True)
        if found.merged_into_id is None and found.status_group not in REPLY_GROUPS_CLOSED:
            body = _long_text("\n\n".join(filter(None, [parsed.reply_text or parsed.text, *files.skipped])))
            reply = await actions.do_reply(session, requester, found.id, body or "（空邮件）", public=True,
                                           channel="email", message_id=key, attachment_ids=upload_ids)
            reply.author_name = _text(parsed.from_name or sender, 100)
            row.status, row.ticket_id, row.reply_id = "reply", found.id, reply.id
            return row
        follow_up_of = found
    box = await session.get(Mailbox, mailbox_id) if mailbox_id else None
    ticket = await _open_ticket(session, merchant_id, parsed, sender, follow_up_of, box.store_id if box else None)
    notes = []
    if follow_up_of is not None:
        notes.append(f"这封邮件回复的是已关闭的工单 {follow_up_of.number}，已另开本工单。")
    if upload_ids:
        notes.append(f"邮件附件 {len(upload_ids)} 个。")
    notes += files.skipped
    if notes:
        await actions.do_reply(session, Principal("merchant_key", merchant_id), ticket.id, "\n".join(notes),
                               public=False, channel="email", attachment_ids=upload_ids, author_type="system")
    row.status, row.ticket_id = "ticket", ticket.id
    return row


async def _open_ticket(session: AsyncSession, merchant_id: str, parsed: mail.InboundMail, sender: str,
                       follow_up_of: Ticket | None, store_id: str | None) -> Ticket:
    customer = await customers.customer_by_email(session, merchant_id, sender)
    subject = _text(re.sub(r"\s+", " ", parsed.subject).strip(), SUBJECT_MAX).strip() or NO_SUBJECT
    # A first mail keeps everything it says (a forwarded conversation is the content); a mail that answers
    # a closed ticket keeps only its new part, the rest is on the old ticket.
    text = parsed.reply_text if follow_up_of is not None else parsed.text
    body = TicketIn(subject=subject, description=_long_text(text or parsed.reply_text), channel="email",
                    requester_email=sender[:255] or None, requester_name=_text(parsed.from_name, 100),
                    custom_fields={"follow_up_of": follow_up_of.number} if follow_up_of else {})
    # Tied to the existing customer as is (TicketIn.customer would upsert by external id), and to the
    # mailbox's store, before the SLA policy and the assignment rule are chosen.
    return await actions.do_create_ticket(session, Principal("merchant_key", merchant_id), body,
                                          actor=("shopper", customer.id if customer else None),
                                          customer_id=customer.id if customer else None, store_id=store_id)


async def is_requester(session: AsyncSession, ticket: Ticket, address: str | None) -> bool:
    """Whether an address is the ticket's requester: the customer's email or the email the ticket came from."""
    sender = (address or "").lower()
    if not sender:
        return False
    if (ticket.requester_email or "").lower() == sender:
        return True
    if ticket.customer_id:
        customer = await get_customer(session, ticket.merchant_id, ticket.customer_id)
        return customer is not None and (customer.email or "").lower() == sender
    return False


async def find_ticket(session: AsyncSession, merchant_id: str, parsed: mail.InboundMail) -> Ticket | None:
    """The ticket a mail continues: by its thread (Message-IDs), else by a ticket number from its requester.

    Thread keys are In-Reply-To, then References newest first; each is matched against the mails taken in
    (InboundEmail, TicketReply.message_id) and the ids of the replies we sent (`<TK…​.<reply id>@…>`).
    A ticket number alone (subject tag, X-Shopdesk-Ticket, our Message-ID with an unknown second part) is
    guessable, so it counts only when the sender is the ticket's requester. A merged ticket leads to the
    ticket it was merged into.
    """
    keys = [message_key(k) for k in mail.thread_keys(parsed)]
    numbers: list[str] = []
    if keys:
        by_reply = dict((await session.execute(
            select(TicketReply.message_id, TicketReply.ticket_id).where(
                TicketReply.merchant_id == merchant_id, TicketReply.message_id.in_(keys)))).all())
        by_mail = dict((await session.execute(
            select(InboundEmail.message_id, InboundEmail.ticket_id).where(
                InboundEmail.merchant_id == merchant_id, InboundEmail.message_id.in_(keys),
                InboundEmail.ticket_id.is_not(None)))).all())
        outbound = {k: m for k in keys if (m := _OUTBOUND_ID_RE.match(k))}
        sent: dict[str, str] = {}
        if outbound:
            sent = dict((await session.execute(
                select(TicketReply.id, TicketReply.ticket_id).where(
                    TicketReply.merchant_id == merchant_id,
                    TicketReply.id.in_([m.group(2) for m in outbound.values()])))).all())
        for k in keys:
            ticket_id = by_reply.get(k) or by_mail.get(k)
            if ticket_id is None and k in outbound:
                ticket_id = sent.get(outbound[k].group(2))
                if ticket_id is None:
                    numbers.append(outbound[k].group(1).upper())
            if ticket_id is not None:
                ticket = await session.get(Ticket, ticket_id)
                if ticket is not None and ticket.merchant_id == merchant_id:
                    return await _live(session, ticket)
    reference = mail.ticket_reference_from(parsed.subject, parsed.headers)
    if reference:
        numbers.insert(0, reference)
    for number in dict.fromkeys(numbers):
        ticket = (await session.execute(select(Ticket).where(Ticket.merchant_id == merchant_id,
                                                             Ticket.number == number))).scalar_one_or_none()
        if ticket is not None and await is_requester(session, ticket, parsed.from_address):
            return await _live(session, ticket)
    return None


async def _live(session: AsyncSession, ticket: Ticket) -> Ticket:
    """Follow merges to the ticket that carries on (the requester was told to continue there)."""
    for _ in range(10):
        if not ticket.merged_into_id:
            break
        target = await session.get(Ticket, ticket.merged_into_id)
        if target is None:
            break
        ticket = target
    return ticket


# --------------------------------------------------------------------------------------------
# Outbound: what a ticket email needs to come from the mailbox and thread in the requester's client
# --------------------------------------------------------------------------------------------
async def reply_envelope(session: AsyncSession, ticket: Ticket) -> dict:
    """Payload keys for an email to a ticket's requester: `from`, `in_reply_to`, `references`.

    From: the mailbox the ticket's mail came in through, else the mailbox of its store, else the
    merchant's first mailbox (none: the outbox sender's default). In-Reply-To: the requester's latest
    mail; References: the ticket's mails in order (RFC 5322 §3.6.4), trimmed to the first and the newest.
    """
    out: dict = {}
    came_in = [tuple(r) for r in (await session.execute(
        select(InboundEmail.message_id, InboundEmail.mailbox_id).where(
            InboundEmail.merchant_id == ticket.merchant_id, InboundEmail.ticket_id == ticket.id,
            InboundEmail.status.in_(("ticket", "reply"))).order_by(InboundEmail.received_at, InboundEmail.id))).all()]
    replies = list((await session.execute(
        select(TicketReply.message_id).where(TicketReply.ticket_id == ticket.id, TicketReply.message_id.is_not(None))
        .order_by(TicketReply.created_at, TicketReply.id))).scalars())
    current = session.info.get(_TAKING_IN)
    if (isinstance(current, InboundEmail) and current.merchant_id == ticket.merchant_id
            and current.ticket_id in (None, ticket.id) and (current.message_id, current.mailbox_id) not in came_in):
        came_in.append((current.message_id, current.mailbox_id))  # the mail being taken in right now
    opening = [mid for mid, _ in came_in[:1]]
    chain = list(dict.fromkeys([*opening, *replies, *(mid for mid, _ in came_in)]))
    if chain:
        if len(chain) > mail.MAX_REFERENCES:
            chain = chain[:1] + chain[-(mail.MAX_REFERENCES - 1):]
        out["in_reply_to"] = (replies or [mid for mid, _ in came_in])[-1]
        out["references"] = chain
    mailbox_ids = [mb for _, mb in reversed(came_in) if mb]
    mailbox = await session.get(Mailbox, mailbox_ids[0]) if mailbox_ids else None
    if mailbox is None:
        mailbox = (await session.execute(
            select(Mailbox).where(Mailbox.merchant_id == ticket.merchant_id, Mailbox.active.is_(True))
            .order_by(case((Mailbox.store_id == ticket.store_id, 0), else_=1), Mailbox.created_at)
            .limit(1))).scalar_one_or_none()
    if mailbox is not None:
        out["from"] = str(Address(display_name=mailbox.display_name or "", addr_spec=mailbox.address))
    return out


# --------------------------------------------------------------------------------------------
# Mailboxes (settings)
# --------------------------------------------------------------------------------------------
async def do_create_mailbox(session: AsyncSession, principal: Principal, *, address: str, display_name: str = "",
                            store: str | None = None, imap_host: str | None = None, imap_port: int = 993,
                            imap_ssl: bool = True, imap_user: str | None = None, imap_password: str | None = None,
                            imap_folder: str = "INBOX", active: bool = True) -> Mailbox:
    """Add a support address (admin): polled by IMAP when it has a host, fed by the SMTP receiver anyway."""
    merchant_id = principal.require_merchant_side()
    principal.require_role("admin")
    address = address.strip().lower()
    if not _ADDRESS_RE.match(address):
        raise ValidationFailed("an email address such as support@example.com", field="address")
    if imap_host and not (imap_user and imap_password):
        raise ValidationFailed("an IMAP mailbox needs a user and a password",
                               field="imap_user" if not imap_user else "imap_password")
    store_id = None
    if store:
        store_id = (await session.execute(select(Store.id).where(Store.merchant_id == merchant_id,
                                                                 Store.code == store))).scalar_one_or_none()
        if store_id is None:
            raise ValidationFailed("unknown store", field="store")
    taken = (await session.execute(select(Mailbox.id).where(Mailbox.address == address))).first()
    if taken:
        raise Conflict("this address is already a mailbox", code="address_taken", extra={"field": "address"})
    box = Mailbox(id=new_id(), merchant_id=merchant_id, store_id=store_id, address=address,
                  display_name=display_name.strip(), imap_host=(imap_host or "").strip() or None, imap_port=imap_port,
                  imap_ssl=imap_ssl, imap_user=imap_user, imap_password=imap_password,
                  imap_folder=imap_folder.strip() or "INBOX", uidvalidity=None, last_uid=0, active=active,
                  created_at=now())
    session.add(box)
    record(session, merchant_id=merchant_id, actor_type=principal.actor, actor_id=principal.actor_id,
           action="settings.mailbox", object_type="mailbox", object_id=box.id,
           data={"address": address, "imap_host": box.imap_host, "store_id": store_id, "active": active})
    return box


async def list_mailboxes(session: AsyncSession, principal: Principal) -> list[Mailbox]:
    merchant_id = principal.require_merchant_side()
    principal.require_role("admin")
    return list((await session.execute(select(Mailbox).where(Mailbox.merchant_id == merchant_id)
                                       .order_by(Mailbox.created_at, Mailbox.id))).scalars())


def mailbox_out(box: Mailbox) -> dict:
    """A mailbox as the API shows it: never the password."""
    return {"id": box.id, "address": box.address, "display_name": box.display_name, "store_id": box.store_id,
            "imap": ({"host": box.imap_host, "port": box.imap_port, "ssl": box.imap_ssl, "user": box.imap_user,
                      "folder": box.imap_folder, "password_set": bool(box.imap_password)} if box.imap_host else None),
            "active": box.active, "uidvalidity": _from_column(box.uidvalidity), "last_uid": _from_column(box.last_uid),
            "last_polled_at": isoformat(box.last_polled_at), "last_error": box.last_error,
            "created_at": isoformat(box.created_at)}


# --------------------------------------------------------------------------------------------
# IMAP: a small client on asyncio streams (every read has a deadline; cancelling it is immediate)
# --------------------------------------------------------------------------------------------
class ImapError(Exception):
    """The server refused, broke off or did not answer in time."""


class MissingBody(ImapError):
    """The server lists a message but does not hand it over."""


_LITERAL_END = re.compile(rb"\{(\d+)\+?\}\r\n$")
_QUOTABLE = re.compile(r"^[\x20-\x7e]*$")


def _quoted(value: str) -> bytes:
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


def mailbox_name(name: str) -> bytes:
    """A folder name in IMAP's modified UTF-7 (RFC 3501 §5.1.3), quoted: 收件箱 → "&flZO9ga0-"."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + encoded.replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return _quoted("".join(out))


class ImapClient:
    """Just what polling needs: LOGIN, ID, EXAMINE, UID FETCH, LOGOUT (RFC 3501)."""

    def __init__(self, host: str, port: int, *, use_ssl: bool, timeout_s: float = IMAP_TIMEOUT_S) -> None:
        self.host, self.port, self.use_ssl, self.timeout_s = host, port, use_ssl, timeout_s
        self.capabilities: set[bytes] = set()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tag = 0
        self._broken = False

    async def __aenter__(self) -> ImapClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self._broken = True  # cancelled or failed: no polite LOGOUT to a server that may not answer
        await self.close()

    async def _within(self, awaitable, timeout: float, what: str):
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            self._broken = True
            raise ImapError(f"{what}: no answer within {timeout:g} s") from None
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self._broken = True
            raise ImapError(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def connect(self) -> None:
        context = ssl.create_default_context() if self.use_ssl else None
        self._reader, self._writer = await self._within(
            asyncio.open_connection(self.host, self.port, ssl=context, limit=1024 * 1024), self.timeout_s,
            f"connect to {self.host}:{self.port}")
        greeting = (await self._response("greeting"))[0]
        if not greeting.upper().startswith((b"* OK", b"* PREAUTH")):
            self._broken = True
            raise ImapError(f"greeting: {greeting[:200].decode('utf-8', 'replace')}")
        self.capabilities = _capabilities(greeting)
        if not self.capabilities:
            untagged, _ = await self._command(b"CAPABILITY")
            for response in untagged:
                self.capabilities |= _capabilities(response[0])

    async def _line(self, what: str) -> bytes:
        assert self._reader is not None
        line = await self._within(self._reader.readline(), self.timeout_s, what)
        if not line:
            self._broken = True
            raise ImapError(f"{what}: the server closed the connection")
        return line

    async def _response(self, what: str) -> list[bytes]:
        """One response: its text and its literals, alternating [text, literal, text, …]."""
        assert self._reader is not None
        parts: list[bytes] = []
        line = await self._line(what)
        while (match := _LITERAL_END.search(line)) is not None:
            size = int(match.group(1))
            if size > MAX_MESSAGE_BYTES + 1024 * 1024:
                self._broken = True
                raise ImapError(f"{what}: a literal of {size} bytes is over the limit")
            parts.append(line[:match.start()])
            parts.append(await self._within(self._reader.readexactly(size), self.timeout_s + size / IMAP_MIN_RATE,
                                            what))
            line = await self._line(what)
        parts.append(line.rstrip(b"\r\n"))
        return parts

    async def _command(self, command: bytes, *, continuation: bytes | None = None,
                       name: str | None = None) -> tuple[list[list[bytes]], bytes]:
        assert self._writer is not None
        what = name or command.split(b" ", 1)[0].decode("ascii", "replace")
        self._tag += 1
        tag = b"S%04d" % self._tag
        self._writer.write(tag + b" " + command + b"\r\n")
        await self._within(self._writer.drain(), self.timeout_s, what)
        untagged: list[list[bytes]] = []
        while True:
            response = await self._response(what)
            head = response[0]
            if head.startswith(tag + b" "):
                status, _, text = head[len(tag) + 1:].partition(b" ")
                if status.upper() != b"OK":
                    raise ImapError(f"{what} refused: {status.decode('ascii', 'replace')} "
                                    f"{text[:200].decode('utf-8', 'replace')}")
                return untagged, text
            if head.startswith(b"+"):
                if continuation is None:
                    self._broken = True
                    raise ImapError(f"{what}: unexpected continuation request")
                self._writer.write(continuation + b"\r\n")
                continuation = None
                await self._within(self._writer.drain(), self.timeout_s, what)
                continue
            if head.upper().startswith(b"* BYE"):
                self._broken = True
            untagged.append(response)

    async def login(self, user: str, password: str) -> None:
        if _QUOTABLE.match(user) and _QUOTABLE.match(password):
            _, text = await self._command(b"LOGIN " + _quoted(user) + b" " + _quoted(password), name="LOGIN")
        else:  # non-ASCII credentials: SASL PLAIN carries UTF-8 (RFC 4616)
            plain = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
            _, text = await self._command(b"AUTHENTICATE PLAIN", continuation=plain, name="AUTHENTICATE")
        self.capabilities = _capabilities(text) or self.capabilities  # servers may say more once logged in
        if b"ID" in self.capabilities:
            # RFC 2971. NetEase (163/126) mail refuses to open a folder for clients that do not say who they are.
            try:
                await self._command(b'ID ("name" "ShopDesk" "version" "1" "vendor" "ShopDesk")')
            except ImapError:
                if self._broken:
                    raise

    async def examine(self, folder: str) -> tuple[int, int]:
        """Open a folder read-only; return (UIDVALIDITY, EXISTS)."""
        untagged, text = await self._command(b"EXAMINE " + mailbox_name(folder), name="EXAMINE")
        uidvalidity, exists = None, 0
        for response in [*untagged, [text]]:
            head = response[0]
            if (m := re.search(rb"\[UIDVALIDITY (\d+)\]", head, re.IGNORECASE)) is not None:
                uidvalidity = int(m.group(1))
            if (m := re.match(rb"\* (\d+) EXISTS", head, re.IGNORECASE)) is not None:
                exists = int(m.group(1))
        if uidvalidity is None:
            raise ImapError("EXAMINE: the server gave no UIDVALIDITY")
        return uidvalidity, exists

    async def new_messages(self, after_uid: int) -> list[tuple[int, int]]:
        """(UID, size) of the messages with a UID above after_uid, oldest first."""
        untagged, _ = await self._command(b"UID FETCH %d:* (UID RFC822.SIZE)" % (after_uid + 1), name="FETCH")
        found: dict[int, int] = {}
        for response in untagged:
            text = b" ".join(response[::2])
            uid = re.search(rb"\bUID (\d+)", text, re.IGNORECASE)
            size = re.search(rb"\bRFC822\.SIZE (\d+)", text, re.IGNORECASE)
            if b" FETCH " in text.upper() and uid and int(uid.group(1)) > after_uid:
                found[int(uid.group(1))] = int(size.group(1)) if size else 0
        return sorted(found.items())

    async def fetch(self, uid: int, *, headers_only: bool = False) -> bytes | None:
        """One message (or only its header) without marking it seen; None if it is gone."""
        item = b"BODY.PEEK[HEADER]" if headers_only else b"BODY.PEEK[]"
        untagged, _ = await self._command(b"UID FETCH %d (UID %s)" % (uid, item), name="FETCH")
        listed = False
        for response in untagged:
            text = b" ".join(response[::2])
            if not re.search(rb"\bUID %d\b" % uid, text):
                continue
            listed = True
            if len(response) >= 3:
                return response[1]
            quoted = re.search(rb'BODY\[(?:HEADER)?\] "((?:[^"\\]|\\.)*)"', text)
            if quoted:
                return re.sub(rb"\\(.)", rb"\1", quoted.group(1))
        if listed:
            raise MissingBody(f"FETCH: the server gave no body for UID {uid}")
        return None  # expunged meanwhile

    async def close(self) -> None:
        if self._writer is None:
            return
        if not self._broken:
            try:
                await asyncio.wait_for(self._command(b"LOGOUT"), min(self.timeout_s, 5.0))
            except (ImapError, asyncio.TimeoutError):
                pass
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, OSError, ssl.SSLError):
            pass
        self._writer = None


def _capabilities(line: bytes) -> set[bytes]:
    upper = line.upper()
    if (m := re.search(rb"\[CAPABILITY ([^\]]*)\]", upper)) is not None:
        return set(m.group(1).split())
    if upper.startswith(b"* CAPABILITY "):
        return set(upper[len(b"* CAPABILITY "):].split())
    return set()


def _headers_only(header: bytes, size: int) -> bytes:
    """A stand-in for a message too big to import: its header, and a body saying what happened."""
    kept, skipping = [], False
    for line in header.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith((b"content-type:", b"content-transfer-encoding:", b"mime-version:"))
        if not skipping and line.strip():
            kept.append(line)
    note = (f"（这封邮件有 {_size_text(size)}，超过 {_size_text(MAX_MESSAGE_BYTES)} 的上限，只导入了邮件头；"
            "请让客户把附件拆开重发。）").encode()
    return (b"\r\n".join(kept) + b"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + note + b"\r\n")


# --------------------------------------------------------------------------------------------
# The poller
# --------------------------------------------------------------------------------------------
@dataclass
class PollResult:
    mailbox_id: str
    statuses: Counter = field(default_factory=Counter)  # ticket | reply | ignored | failed | skipped
    more: bool = False
    error: str | None = None

    @property
    def taken(self) -> int:
        return sum(self.statuses.values())


async def _advance(mailbox_id: str, uidvalidity: int, uid: int) -> None:
    async with transaction() as session:
        await session.execute(update(Mailbox).where(Mailbox.id == mailbox_id, Mailbox.uidvalidity == uidvalidity)
                              .values(last_uid=_to_column(uid)))


async def _record_poll(mailbox_id: str, error: str | None) -> None:
    async with transaction() as session:
        await session.execute(update(Mailbox).where(Mailbox.id == mailbox_id)
                              .values(last_polled_at=now(), last_error=_text(error, 2000) if error else None))


async def poll_mailbox(mailbox_id: str, *, timeout_s: float = IMAP_TIMEOUT_S, batch: int = POLL_BATCH,
                       attempts: dict[int, int] | None = None) -> PollResult | None:
    """Take in the new messages of one mailbox (at most `batch`); None if it is gone, inactive or not IMAP.

    The position (UIDVALIDITY, last UID) moves past a message only after its ingest committed: a crash
    in between imports it again, which the Message-ID key turns into a no-op. Raises on any network,
    server or database error; the caller records it and backs off.
    """
    async with transaction() as session:
        box = await session.get(Mailbox, mailbox_id)
        if box is None or not box.active or not box.imap_host:
            return None
        merchant_id, host, port, use_ssl = box.merchant_id, box.imap_host, box.imap_port, box.imap_ssl
        user, password, folder = box.imap_user or "", box.imap_password or "", box.imap_folder or "INBOX"
        stored_validity, last_uid = box.uidvalidity, _from_column(box.last_uid) or 0
    attempts = attempts if attempts is not None else {}
    result = PollResult(mailbox_id)
    async with ImapClient(host, port, use_ssl=use_ssl, timeout_s=timeout_s) as client:
        await client.login(user, password)
        uidvalidity, exists = await client.examine(folder)
        if stored_validity != _to_column(uidvalidity):
            # The folder was rebuilt (or this is the first visit): UIDs start over, so does our position.
            async with transaction() as session:
                await session.execute(update(Mailbox).where(Mailbox.id == mailbox_id)
                                      .values(uidvalidity=_to_column(uidvalidity), last_uid=0))
            if stored_validity is not None:
                log.warning("imap_uidvalidity_changed", mailbox_id=mailbox_id, before=_from_column(stored_validity),
                            after=uidvalidity)
            last_uid = 0
        pending = await client.new_messages(last_uid) if exists else []
        result.more = len(pending) > batch
        for uid, size in pending[:batch]:
            too_big = size > MAX_MESSAGE_BYTES
            try:
                raw = await client.fetch(uid, headers_only=too_big)
            except MissingBody as exc:
                attempts[uid] = attempts.get(uid, 0) + 1
                if attempts[uid] < SKIP_AFTER_ATTEMPTS:
                    raise
                log.error("email_skipped", mailbox_id=mailbox_id, uid=uid, error=str(exc))
                result.statuses["skipped"] += 1
                raw = None
            if raw is not None:
                if too_big:
                    raw = _headers_only(raw, size)
                try:
                    row = await ingest(merchant_id, mailbox_id, raw, size=size or len(raw))
                    result.statuses[row.status] += 1
                except Exception as exc:
                    if _transient(exc):
                        raise
                    attempts[uid] = attempts.get(uid, 0) + 1
                    if attempts[uid] < SKIP_AFTER_ATTEMPTS:
                        raise
                    # Not even a failed row could be written, several times: skip it rather than stall the mailbox.
                    log.error("email_skipped", mailbox_id=mailbox_id, uid=uid, error=f"{type(exc).__name__}: {exc}")
                    result.statuses["skipped"] += 1
            await _advance(mailbox_id, _to_column(uidvalidity), uid)
            attempts.pop(uid, None)
    await _record_poll(mailbox_id, None)
    return result


async def _poll_recorded(mailbox_id: str, timeout_s: float, batch: int,
                         attempts: dict[int, int] | None = None) -> PollResult | None:
    """Poll one mailbox; an error is recorded on the mailbox (last_error) and returned, never raised."""
    try:
        return await poll_mailbox(mailbox_id, timeout_s=timeout_s, batch=batch, attempts=attempts)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = str(exc) if isinstance(exc, ImapError) else f"{type(exc).__name__}: {exc}"
        log.warning("imap_poll_failed", mailbox_id=mailbox_id, error=error)
        try:
            await _record_poll(mailbox_id, error)
        except Exception:  # the database is away too; the next pass records it
            log.exception("imap_poll_record_failed", mailbox_id=mailbox_id)
        return PollResult(mailbox_id, error=error)


async def imap_mailbox_ids(only: set[str] | None = None) -> list[str]:
    async with transaction() as session:
        stmt = select(Mailbox.id).where(Mailbox.active.is_(True), Mailbox.imap_host.is_not(None))
        if only:
            stmt = stmt.where(Mailbox.id.in_(only))
        return list((await session.execute(stmt.order_by(Mailbox.created_at))).scalars())


async def poll_all_once(mailbox_ids: set[str] | None = None, *, timeout_s: float = IMAP_TIMEOUT_S,
                        batch: int = POLL_BATCH, drain: bool = True) -> dict[str, PollResult]:
    """Poll every active IMAP mailbox (or the ones given) at once, each on its own; drain: until nothing is left."""

    async def one(mailbox_id: str) -> PollResult:
        total = PollResult(mailbox_id)
        while True:
            got = await _poll_recorded(mailbox_id, timeout_s, batch)
            if got is None:
                return total
            total.statuses.update(got.statuses)
            total.error = got.error
            if not (drain and got.more and got.error is None):
                return total

    ids = await imap_mailbox_ids(mailbox_ids)
    results = await asyncio.gather(*(one(i) for i in ids))
    return {r.mailbox_id: r for r in results}


def backoff_s(failures: int, interval_s: float, maximum: float = BACKOFF_MAX_S) -> float:
    """Wait after the n-th failure in a row: doubling from the interval, capped, with ±20 % jitter."""
    base = min(interval_s * 2 ** min(failures, 20), maximum)
    return base * random.uniform(0.8, 1.2)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))
    except asyncio.TimeoutError:
        pass


async def mailbox_loop(mailbox_id: str, stop: asyncio.Event, *, interval_s: float = POLL_INTERVAL_S,
                       timeout_s: float = IMAP_TIMEOUT_S, batch: int = POLL_BATCH) -> None:
    """Poll one mailbox until stopped: every interval, sooner while messages are waiting, later after errors."""
    failures = 0
    attempts: dict[int, int] = {}
    while not stop.is_set():
        result = await _poll_recorded(mailbox_id, timeout_s, batch, attempts)
        if result is None:
            return  # deactivated or removed: the supervisor starts it again if it comes back
        if result.error is None:
            failures = 0
            delay = 0.0 if result.more else interval_s
        else:
            failures += 1
            delay = backoff_s(failures, interval_s)
        await _wait(stop, delay)


async def run_mail_pollers(stop: asyncio.Event, *, interval_s: float = POLL_INTERVAL_S,
                           timeout_s: float = IMAP_TIMEOUT_S, refresh_s: float = SUPERVISOR_REFRESH_S,
                           only: set[str] | None = None) -> None:
    """Run one task per active IMAP mailbox until stop is set; pick up added and removed mailboxes."""
    tasks: dict[str, asyncio.Task] = {}
    try:
        while not stop.is_set():
            for mailbox_id, task in list(tasks.items()):
                if task.done():
                    del tasks[mailbox_id]
                    if not task.cancelled() and task.exception() is not None:
                        log.error("imap_task_crashed", mailbox_id=mailbox_id, error=repr(task.exception()))
            try:
                wanted = set(await imap_mailbox_ids(only))
            except Exception:  # the database is away: keep polling what we have, look again later
                log.exception("imap_supervisor_failed")
                wanted = set(tasks)
            for mailbox_id in wanted - set(tasks):
                tasks[mailbox_id] = asyncio.create_task(
                    mailbox_loop(mailbox_id, stop, interval_s=interval_s, timeout_s=timeout_s),
                    name=f"imap:{mailbox_id}")
            for mailbox_id in set(tasks) - wanted:
                tasks.pop(mailbox_id).cancel()
            await _wait(stop, refresh_s)
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


# --------------------------------------------------------------------------------------------
# The SMTP receiver (aiosmtpd)
# --------------------------------------------------------------------------------------------
async def mailbox_by_address(address: str) -> Mailbox | None:
    async with transaction() as session:
        return (await session.execute(select(Mailbox).where(Mailbox.address == address.strip().lower(),
                                                            Mailbox.active.is_(True)))).scalar_one_or_none()


class MailboxSmtpHandler:
    """Accept mail for the addresses of active mailboxes only (550 at RCPT for others), ingest it once."""

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options: list[str]) -> str:
        try:
            box = await mailbox_by_address(address)
        except Exception:
            log.exception("smtp_rcpt_failed", address=address)
            return "451 4.3.0 temporary failure, try again later"
        if box is None:
            return f"550 5.1.1 <{address}>: no such mailbox here"
        targets = getattr(envelope, "shopdesk_targets", {})
        targets.setdefault(box.merchant_id, box.id)  # one copy per merchant, whatever its addresses in RCPT
        envelope.shopdesk_targets = targets
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        content = envelope.original_content or b""
        # As the delivering MTA would (RFC 5321 §4.4): the envelope sender, "<>" on bounces.
        raw = b"Return-Path: <" + (envelope.mail_from or "").encode("utf-8", "replace") + b">\r\n" + content
        try:
            for merchant_id, mailbox_id in getattr(envelope, "shopdesk_targets", {}).items():
                await ingest(merchant_id, mailbox_id, raw, size=len(content))
        except Exception:  # the database is away: the sender keeps the mail and tries again
            log.exception("smtp_ingest_failed")
            return "451 4.3.0 temporary failure, try again later"
        return "250 2.0.0 OK"


async def start_smtp_receiver(host: str, port: int, *, hostname: str | None = None,
                              data_size_limit: int = MAX_MESSAGE_BYTES, idle_timeout_s: float = 300.0):
    """Listen for SMTP on host:port in this event loop; returns the asyncio server (close() to stop)."""
    import logging
    import socket

    from aiosmtpd.smtp import SMTP

    # aiosmtpd logs every command and address at INFO; ours (email_ingested, smtp_*) say what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    handler = MailboxSmtpHandler()
    name = hostname or socket.gethostname()  # not getfqdn(): that may wait on DNS
    return await loop.create_server(
        lambda: SMTP(handler, data_size_limit=data_size_limit, enable_SMTPUTF8=True, decode_data=False,
                     hostname=name, timeout=idle_timeout_s, loop=loop), host=host, port=port)
