"""Ticket pages: the help form, the shopper's tickets and one ticket; the console's ticket list and ticket page.

Every change goes through the do_* actions of tickets/actions.py with the page session's principal. A
visitor without an account sends the help form through a principal for the merchant whose shop they
came from, and from then on holds a link session for that one ticket (web/pages.py: requester_principal).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import PurePath
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import func, or_, select
from starlette.datastructures import FormData, UploadFile

from shopdesk.accounts.auth import Principal, resolve
from shopdesk.accounts.models import Merchant, Staff, Store
from shopdesk.aftersales.actions import do_save_upload
from shopdesk.aftersales.models import AftersaleCase, Upload
from shopdesk.core import i18n, storage
from shopdesk.core.clock import as_utc, now, parse_instant
from shopdesk.core.errors import NotFound, TooLarge, Unauthorized, UnsupportedMedia, ValidationFailed
from shopdesk.core.pagination import decode_cursor, encode_cursor
from shopdesk.core.ratelimit import hit
from shopdesk.core.security import issue_token, read_token
from shopdesk.customers.actions import customer_out, get_customer
from shopdesk.customers.models import Customer
from shopdesk.orders.models import Order
from shopdesk.tickets import actions, states
from shopdesk.tickets.automation import rules_of
from shopdesk.tickets.models import Ticket, TicketEvent, TicketReply
from shopdesk.tickets.queries import SHOPPER_EVENTS, events_of, list_tickets, replies_of
from shopdesk.tickets.schemas import RatingIn, ReplyIn, TicketIn, TicketPatch
from shopdesk.web.deps import DbSession
from shopdesk.web.pages import (ShopperPage, StaffPage, error_text, go, lang_of, page_token, parse_model, render,
                                requester_principal, start_ticket_session, ticket_path)

router = APIRouter()

SHOP_PAGE = 20
CONSOLE_PAGE = 50
ACTIVE = "new,open,pending"
DONE = "solved,closed"
# Console tabs: what each one lists (status groups, comma-separated; "" is every ticket).
CONSOLE_TABS = {"active": ACTIVE, "new": "new", "open": "open", "pending": "pending", "solved": "solved",
                "closed": "closed", "all": ""}
SLA_TARGETS = ("first_response", "next_response", "resolution")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TAG_SPLIT = re.compile(r"[,，、\s]+")
MAX_IMAGES = 5  # per reply, from either reply box
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")  # what core/storage accepts by content


# ---- form parsing -------------------------------------------------------------------------------

def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _score(text: str) -> int:
    if not text.isdigit():
        raise ValidationFailed("choose 1 to 5 stars", field="score")
    return int(text)


def _cursor(text: str) -> tuple[str, str] | None:
    values = decode_cursor(text or None)
    if values is None:
        return None
    if len(values) != 2 or not all(isinstance(v, str) for v in values):
        raise ValidationFailed("malformed cursor", field="cursor")
    try:
        parse_instant(values[0])
    except ValueError as exc:
        raise ValidationFailed("malformed cursor", field="cursor") from exc
    return values[0], values[1]


async def _images(form: FormData) -> list[bytes]:
    """The images chosen in a reply box, every one checked by content before any is stored."""
    files = [f for f in form.getlist("images") if isinstance(f, UploadFile) and f.filename]
    if len(files) > MAX_IMAGES:
        raise ValidationFailed(f"at most {MAX_IMAGES} images", field="images", code="too_many_images")
    limit = storage.get_settings().upload_max_bytes
    images = []
    for i, file in enumerate(files):
        data = await file.read(limit + 1)
        try:
            storage.check_image(data)
        except (TooLarge, UnsupportedMedia) as exc:
            raise type(exc)(f"{file.filename}: {exc.detail}", field=f"images[{i}]") from exc
        images.append(data)
    return images


@contextmanager
def _unless_sent() -> Iterator[list[str]]:
    """Collect the paths of files written for a reply; remove them if the reply is not sent after all."""
    written: list[str] = []
    try:
        yield written
    except BaseException:
        for path in written:
            storage.open_path(path).unlink(missing_ok=True)
        raise


async def _store_images(session, principal: Principal, ticket_id: str, images: list[bytes],
                        written: list[str]) -> list[str]:
    """Store a reply's images in its transaction (do_save_upload); return their ids, checked as the API checks them."""
    if not images:
        return []
    await actions.access_ticket(session, principal, ticket_id)  # a stranger stores nothing
    ids = []
    for data in images:
        item = await do_save_upload(session, principal, data)
        written.append(item.path)
        if principal.kind == "ticket_link":
            # A link holder has no account to own the file: the ticket does, so the link can attach it.
            item.owner_type, item.owner_id = "ticket", ticket_id
        ids.append(item.id)
    await session.flush()
    return await actions.check_attachments(session, principal, ids)


async def _attachment_kinds(session, merchant_id: str, replies: list[TicketReply]) -> dict[str, str]:
    """For each file on these replies: "image" (shown as a thumbnail) or "file" (an email's other attachments)."""
    ids = {i for r in replies for i in (r.attachment_ids or [])}
    if not ids:
        return {}
    rows = await session.execute(select(Upload.id, Upload.content_type).where(Upload.merchant_id == merchant_id,
                                                                              Upload.id.in_(ids)))
    return {uid: "image" if kind in IMAGE_TYPES else "file" for uid, kind in rows.all()}


async def _reply_file(session, ticket: Ticket, upload_id: str, *, public_only: bool) -> Response:
    """A file attached to one of this ticket's replies; for the requester, to a public one only."""
    stmt = select(TicketReply.attachment_ids).where(TicketReply.ticket_id == ticket.id)
    if public_only:
        stmt = stmt.where(TicketReply.public.is_(True))
    attached = any(upload_id in (ids or []) for ids in (await session.execute(stmt)).scalars())
    item = await session.get(Upload, upload_id) if attached else None
    if item is None or item.merchant_id != ticket.merchant_id:
        raise NotFound("no such file")
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    if item.content_type in IMAGE_TYPES:
        return FileResponse(storage.open_path(item.path), media_type=item.content_type, headers=headers)
    # An email's other attachments carry the type their sender claimed: downloaded, never rendered on our site.
    return FileResponse(storage.open_path(item.path), media_type="application/octet-stream",
                        filename=PurePath(item.path).name, headers=headers)


def _next_cursor(rows: list[Ticket], more: bool) -> str | None:
    # Full precision: two tickets changed within the same second must not fall between pages.
    return encode_cursor([as_utc(rows[-1].updated_at).isoformat(), rows[-1].id]) if more and rows else None


# ---- shared reads ---------------------------------------------------------------------------------

def status_label(status: states.Status | None, name: str, lang: str) -> str:
    if status is None:
        return name
    return status.label_en if lang == "en" else status.label_zh


async def _labels(session, merchant_id: str, lang: str) -> dict:
    """The merchant's statuses (built-in and custom) and categories, named in the page language."""
    settings = await actions.ticket_settings(session, merchant_id)
    known = states.statuses(settings)
    return {"statuses": known, "status_names": {n: status_label(s, n, lang) for n, s in known.items()},
            "categories": list(settings.get("categories") or [])}


async def _staff_names(session, merchant_id: str) -> dict[str, str]:
    rows = await session.execute(select(Staff.id, Staff.name).where(Staff.merchant_id == merchant_id)
                                 .order_by(Staff.name).limit(500))
    return dict(rows.all())


async def _numbers(session, merchant_id: str, ids: set[str]) -> dict[str, str]:
    ids = {i for i in ids if i}
    if not ids:
        return {}
    rows = await session.execute(select(Ticket.id, Ticket.number).where(Ticket.merchant_id == merchant_id,
                                                                       Ticket.id.in_(ids)))
    return dict(rows.all())


async def _order_no(session, merchant_id: str, order_id: str | None) -> str | None:
    if not order_id:
        return None
    return (await session.execute(select(Order.order_no).where(Order.id == order_id,
                                                               Order.merchant_id == merchant_id))).scalar()


def sla_next(ticket: Ticket) -> tuple[str, datetime] | None:
    """The SLA target due soonest on a ticket, if any runs."""
    due = [(name, getattr(ticket, f"{name}_due_at")) for name in SLA_TARGETS if getattr(ticket, f"{name}_due_at")]
    return min(due, key=lambda d: as_utc(d[1])) if due else None


def _event_line(event: TicketEvent, lang: str, names: dict, staff: dict[str, str], numbers: dict[str, str]) -> dict:
    """Word one history line for people: what changed, by whom, and a link to the other ticket if any."""
    data = event.data or {}
    link = None

    def staff_name(sid: str | None) -> str:
        return staff.get(sid or "", sid or "") if sid else i18n.t("ticket.unassigned", lang)

    def label(group: str, value: str | None) -> str:
        if not value:
            return "—"
        return i18n.t(f"{group}.{value}", lang) if i18n.has(f"{group}.{value}") else value

    action = event.action
    values: dict[str, Any] = {}
    if action == "create":
        values = {"channel": label("channel", data.get("channel"))}
    elif action == "assign":
        values = {"from": staff_name(data.get("from")), "to": staff_name(data.get("to"))}
    elif action == "status":
        values = {"from": names.get(data.get("from"), data.get("from")), "to": names.get(data.get("to"), data.get("to"))}
    elif action == "priority":
        values = {"from": label("priority", data.get("from")), "to": label("priority", data.get("to"))}
    elif action in ("category", "team"):
        values = {"from": data.get("from") or "—", "to": data.get("to") or "—"}
    elif action == "tags":
        values = {"to": "、".join(data.get("to") or []) or "—"}
    elif action == "urge":
        values = {"count": data.get("count", "")}
    elif action == "rating":
        values = {"score": data.get("score", "")}
    elif action == "merged":
        values = {"no": data.get("into_number", "")}
        link = data.get("into_id")
    elif action == "merged_in":
        values = {"no": data.get("source_number", "")}
        link = data.get("source_id")
    elif action == "split":
        values = {"no": data.get("new_number", "")}
        link = data.get("new_id")
    elif action == "split_from":
        values = {"no": data.get("number", "")}
        link = data.get("ticket_id")
    elif action in ("sla_warning", "sla_breach"):
        values = {"target": label("sla", data.get("target"))}
    elif action == "rule":
        values = {"name": data.get("name", "")}
    key = f"tevent.{action}"
    text = i18n.t(key, lang, **values) if i18n.has(key) else action
    actor = i18n.t(f"tactor.{event.actor_type}", lang) if i18n.has(f"tactor.{event.actor_type}") else event.actor_type
    if event.actor_type == "staff" and event.actor_id in staff:
        actor = f"{actor} {staff[event.actor_id]}"
    note = data.get("comment") if action == "rating" else None
    return {"text": text, "actor": actor, "at": event.at, "link": link, "note": note, "action": action}


def _clip(text: str, size: int = 60) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= size else text[:size - 1] + "…"


def macro_steps(steps: list[dict], lang: str, status_names: dict[str, str], staff: dict[str, str]) -> list[str]:
    """Say what a macro does, one line per action (automation.py's action shapes), in the page language."""
    lines = []
    for a in steps:
        kind = a.get("type")
        if kind == "set":
            field, value = a.get("field", ""), a.get("value") or "—"
            if field == "status":
                value = status_names.get(value, value)
            elif field == "priority" and i18n.has(f"priority.{value}"):
                value = i18n.t(f"priority.{value}", lang)
            key = f"macro.set_{field}"
            lines.append(i18n.t(key, lang, value=value) if i18n.has(key) else f"{field} → {value}")
        elif kind == "assign":
            to = staff.get(a["staff_id"], a["staff_id"]) if a.get("staff_id") else \
                i18n.t(f"macro.method_{a.get('method')}", lang)
            lines.append(i18n.t("macro.assign", lang, to=to))
        elif kind in ("add_tags", "remove_tags"):
            lines.append(i18n.t(f"macro.{kind}", lang, tags="、".join(a.get("tags") or [])))
        elif kind == "reply":
            key = "macro.reply" if a.get("public", True) else "macro.note"
            lines.append(i18n.t(key, lang, body=_clip(a.get("body", ""))))
        elif kind == "notify":
            to = a.get("to", "assignee")
            lines.append(i18n.t("macro.notify", lang, to=i18n.t(f"macro.to_{to}", lang)
                                if to in ("assignee", "requester") else to))
        elif kind == "webhook":
            lines.append(i18n.t("macro.webhook", lang))
    return lines


def _stars(score: int | None) -> list[bool]:
    return [i < (score or 0) for i in range(5)]


# ---- shopper: the help form -------------------------------------------------------------------------

async def _optional_shopper(request: Request, session) -> Principal | None:
    token = page_token(request, "shop")
    principal = None
    if token:
        try:
            found = await resolve(session, token)
            principal = found if found.kind == "shopper" else None
        except Unauthorized:
            principal = None
    if session.in_transaction():
        await session.rollback()
    if principal is not None:
        request.state.principal = principal
    return principal


async def _help_merchant(session, slug: str, store_code: str) -> dict:
    """The shop a visitor writes to: its merchant slug, or a store code only one merchant uses."""
    found = None
    if slug:
        found = (await session.execute(select(Merchant.id, Merchant.name).where(Merchant.slug == slug))).first()
        if found is not None and store_code:
            store = (await session.execute(select(Store.id).where(Store.merchant_id == found.id,
                                                                  Store.code == store_code))).first()
            found = found if store else None
    elif store_code:
        rows = (await session.execute(select(Store.merchant_id).where(Store.code == store_code).limit(2))).all()
        if len(rows) == 1:
            found = (await session.execute(select(Merchant.id, Merchant.name)
                                           .where(Merchant.id == rows[0][0]))).first()
    if found is None:
        raise NotFound("no such shop", field="merchant")
    return {"id": found.id, "name": found.name}


async def _help_context(request: Request, session, merchant: str, store: str) -> dict:
    """Who writes (a shopper of this shop, or a visitor) and what the form offers them.

    Reads columns, not rows: the session is rolled back before the form's own transaction, and a
    row loaded here would be expired by then.
    """
    shopper = await _optional_shopper(request, session)
    shop = None
    if merchant or store or shopper is None:
        shop = await _help_merchant(session, merchant, store)
        if shopper is not None and shopper.merchant_id != shop["id"]:
            shopper = None  # signed in at another shop: write to this one as a visitor
            request.state.principal = None
    merchant_id = shopper.merchant_id if shopper else shop["id"]  # type: ignore[index]
    orders: list = []
    if shopper is not None:
        orders = list((await session.execute(
            select(Order.id, Order.order_no, Order.placed_at).where(Order.merchant_id == merchant_id,
                                                                   Order.customer_id == shopper.customer_id)
            .order_by(Order.placed_at.desc()).limit(50))).all())
    settings = (await session.execute(select(Merchant.settings).where(Merchant.id == merchant_id))).scalar() or {}
    if session.in_transaction():
        await session.rollback()
    return {"shopper": shopper, "merchant": shop, "merchant_id": merchant_id, "orders": orders,
            "categories": list((settings.get("tickets") or {}).get("categories") or []),
            "hidden": {"merchant": merchant, "store": store}}


@router.get("/shop/help")
async def help_form(request: Request, session: DbSession, merchant: str = "", store: str = "",
                    order: str = "") -> Response:
    context = await _help_context(request, session, merchant, store)
    form = {"subject": "", "description": "", "order_id": order, "category": "", "email": "", "name": ""}
    return render(request, "shopper/help.html", {**context, "form": form})


@router.post("/shop/help")
async def submit_help(request: Request, session: DbSession) -> Response:
    """Open a ticket from the help form: the shopper's own, or a visitor's with their email."""
    form = await request.form()
    context = await _help_context(request, session, _text(form, "merchant"), _text(form, "store"))
    if _text(form, "website"):
        # The hidden field only bots fill in: drop the post without a word.
        return go(request, "/shop/help?" + urlencode({k: v for k, v in context["hidden"].items() if v}))
    hit("10/minute", "help-ip", request.client.host if request.client else "-")
    data: dict[str, Any] = {"subject": _text(form, "subject"), "description": _text(form, "description"),
                            "category": _text(form, "category"), "channel": "web"}
    shopper: Principal | None = context["shopper"]
    if shopper is not None:
        if _text(form, "order_id"):
            data["order_id"] = _text(form, "order_id")
        body = parse_model(TicketIn, data)
        async with session.begin():
            ticket = await actions.do_create_ticket(session, shopper, body)
        return go(request, f"{ticket_path(ticket.id)}?created=1")
    email = _text(form, "email").lower()
    if not EMAIL.match(email) or len(email) > 255:
        raise ValidationFailed("an email address we can write to", field="requester_email")
    hit("5/hour", "help-email", email)
    body = parse_model(TicketIn, {**data, "requester_email": email, "requester_name": _text(form, "name")[:100]})
    # A visitor has no principal of their own: the ticket is opened for the merchant, as from the shopper,
    # with nothing but what the form allows (no order, case, assignee or customer).
    merchant = Principal("merchant_key", context["merchant_id"], name="web form")
    async with session.begin():
        ticket = await actions.do_create_ticket(session, merchant, body, actor=("shopper", None))
    token = issue_token({"k": "ticket", "sub": ticket.id, "m": ticket.merchant_id}, actions.TICKET_LINK_TTL)
    response = go(request, f"{ticket_path(ticket.id)}?created=1")
    return start_ticket_session(response, ticket.id, token, int(actions.TICKET_LINK_TTL.total_seconds()))


# ---- shopper: their tickets and one ticket -------------------------------------------------------------

@router.get("/shop/tickets")
async def shopper_tickets(request: Request, session: DbSession, principal: ShopperPage, tab: str = "active",
                          cursor: str = "") -> Response:
    tab = tab if tab in ("active", "done") else "active"
    rows, more = await list_tickets(session, principal, limit=SHOP_PAGE, after=_cursor(cursor),
                                    status_group=ACTIVE if tab == "active" else DONE)
    labels = await _labels(session, principal.merchant_id or "", lang_of(request))
    return render(request, "shopper/tickets.html", {"tickets": rows, "tab": tab, "next": _next_cursor(rows, more),
                                                    "stars_of": _stars, **labels})


async def _open_link(request: Request, ticket_id: str, token: str) -> Response:
    """Turn an emailed link into a session for this ticket, and drop the token from the address bar."""
    try:
        claims = read_token(token)
    except Unauthorized:
        error = error_text(Unauthorized("link expired", code="link_expired"), lang_of(request))
        return render(request, "error.html", {"error": error}, status=401)
    if claims.get("k") != "ticket" or claims.get("sub") != ticket_id:
        raise NotFound("no such ticket")
    response = RedirectResponse(ticket_path(ticket_id), status_code=303, headers={"Referrer-Policy": "no-referrer"})
    return start_ticket_session(response, ticket_id, token, int(claims["exp"] - now().timestamp()))


def _opening_body(ticket: Ticket, replies: list) -> str:
    """The first message's text under its subject, unless it only repeats the subject or a reply (a split)."""
    text = (ticket.description or "").strip()
    if text == ticket.subject.strip() or any(r.body.strip() == text for r in replies):
        return ""
    return ticket.description


@router.get("/shop/tickets/{ticket_id}")
async def shopper_ticket(ticket_id: str, request: Request, session: DbSession, t: str = "",
                         part: str = "") -> Response:
    if t:
        return await _open_link(request, ticket_id, t)
    principal = await requester_principal(request, session, ticket_id)
    ticket = await actions.access_ticket(session, principal, ticket_id)
    lang = lang_of(request)
    labels = await _labels(session, ticket.merchant_id, lang)
    replies = await replies_of(session, ticket, public_only=True)
    events = [e for e in await events_of(session, ticket) if e.action in SHOPPER_EVENTS and e.action != "reply"]
    staff: dict[str, str] = {}
    numbers = await _numbers(session, ticket.merchant_id, {ticket.merged_into_id or ""})
    history = [_event_line(e, lang, labels["status_names"], staff, numbers) for e in reversed(events)]
    order_no = await _order_no(session, ticket.merchant_id, ticket.order_id) if principal.kind == "shopper" else None
    return render(request, "shopper/ticket.html", {
        "ticket": ticket, "replies": replies, "history": history, "order_no": order_no,
        "files": await _attachment_kinds(session, ticket.merchant_id, replies), "max_images": MAX_IMAGES,
        "opening_body": _opening_body(ticket, replies),
        "merged_into_no": numbers.get(ticket.merged_into_id or ""), "via_link": principal.kind == "ticket_link",
        "can_reply": ticket.merged_into_id is None and ticket.status_group != "closed",
        "can_urge": ticket.merged_into_id is None and ticket.status_group not in ("solved", "closed"),
        "survey_open": ticket.merged_into_id is None and ticket.status_group in ("solved", "closed"),
        "stars": _stars(ticket.rating_score), "notice": _notice(request), **labels},
        block="thread" if part == "thread" else None)


def _notice(request: Request) -> str | None:
    """What the page just did for the requester (after a redirect), to say so once."""
    return next((k for k in ("created", "urged", "rated") if request.query_params.get(k)), None)


@router.post("/shop/tickets/{ticket_id}/reply")
async def shopper_reply(ticket_id: str, request: Request, session: DbSession) -> Response:
    """The requester's reply, with up to MAX_IMAGES images (refused all together if one is not an image)."""
    principal = await requester_principal(request, session, ticket_id)
    form = await request.form()
    body = parse_model(ReplyIn, {"body": _text(form, "body")})
    images = await _images(form)
    with _unless_sent() as written:
        async with session.begin():
            ids = await _store_images(session, principal, ticket_id, images, written)
            await actions.do_reply(session, principal, ticket_id, body.body, public=True, channel="web",
                                   attachment_ids=ids)
    return go(request, ticket_path(ticket_id))


@router.get("/shop/tickets/{ticket_id}/files/{upload_id}")
async def shopper_file(ticket_id: str, upload_id: str, request: Request, session: DbSession) -> Response:
    """An image on one of the ticket's public replies (the link session's cookie covers this path too)."""
    principal = await requester_principal(request, session, ticket_id)
    ticket = await actions.access_ticket(session, principal, ticket_id)
    return await _reply_file(session, ticket, upload_id, public_only=True)


@router.post("/shop/tickets/{ticket_id}/urge")
async def shopper_urge(ticket_id: str, request: Request, session: DbSession) -> Response:
    principal = await requester_principal(request, session, ticket_id)
    hit("3/minute", "ticket-urge", ticket_id)  # a nudge, not a siren: the agent is mailed each time
    async with session.begin():
        await actions.do_urge(session, principal, ticket_id)
    return go(request, f"{ticket_path(ticket_id)}?urged=1")


@router.post("/shop/tickets/{ticket_id}/rate")
async def shopper_rate(ticket_id: str, request: Request, session: DbSession) -> Response:
    principal = await requester_principal(request, session, ticket_id)
    form = await request.form()
    body = parse_model(RatingIn, {"score": _score(_text(form, "score")), "comment": _text(form, "comment")})
    async with session.begin():
        await actions.do_rate(session, principal, ticket_id, body.score, body.comment)
    return go(request, f"{ticket_path(ticket_id)}?rated=1")


# ---- console: the list -------------------------------------------------------------------------------

def _console_params(source: Any) -> dict[str, str]:
    params = {k: str(source.get(k) or "").strip() for k in ("assignee", "priority", "category", "q", "customer")}
    tab = str(source.get("tab") or "active")
    params["tab"] = tab if tab in CONSOLE_TABS else "active"
    return params


def _merchant_staff(principal: Principal) -> str:
    if principal.is_platform or principal.merchant_id is None:
        raise NotFound("page not found")  # tickets belong to a merchant; platform operators hold none
    return principal.merchant_id


@router.get("/console/tickets")
async def console_tickets(request: Request, session: DbSession, principal: StaffPage, cursor: str = "") -> Response:
    merchant_id = _merchant_staff(principal)
    params = _console_params(request.query_params)
    rows, more = await list_tickets(
        session, principal, limit=CONSOLE_PAGE, after=_cursor(cursor), status_group=CONSOLE_TABS[params["tab"]],
        assignee=params["assignee"] or None, priority=params["priority"] or None,
        category=params["category"] or None, q=params["q"] or None, customer_id=params["customer"] or None,
        # A merged ticket is closed for good: shown where closed tickets are, so its number still finds it.
        include_merged=params["tab"] in ("closed", "all"))
    customers = {}
    ids = {t.customer_id for t in rows if t.customer_id}
    if ids:
        customers = dict((await session.execute(select(Customer.id, Customer.name).where(
            Customer.merchant_id == merchant_id, Customer.id.in_(ids)))).all())
    customer_name = ""
    if params["customer"]:
        found = await get_customer(session, merchant_id, params["customer"])
        customer_name = found.name if found else params["customer"]
    return render(request, "console/tickets.html", {
        "tickets": rows, "next": _next_cursor(rows, more), "params": params, "tabs": list(CONSOLE_TABS),
        "staff": await _staff_names(session, merchant_id), "customers": customers, "customer_name": customer_name,
        "priorities": list(reversed(states.PRIORITIES)), "sla_next": sla_next,
        "list_url": lambda **changes: list_url(params, **changes), **await _labels(session, merchant_id, lang_of(request))})


# ---- console: one ticket --------------------------------------------------------------------------------

async def _console_view(session, principal: Principal, ticket: Ticket, lang: str) -> dict:
    merchant_id = ticket.merchant_id
    labels = await _labels(session, merchant_id, lang)
    staff = await _staff_names(session, merchant_id)
    replies = await replies_of(session, ticket, public_only=False)
    events = await events_of(session, ticket)
    linked = {ticket.merged_into_id, ticket.parent_id, *(r.origin_ticket_id for r in replies)}
    numbers = await _numbers(session, merchant_id, {i for i in linked if i})
    history = [_event_line(e, lang, labels["status_names"], staff, numbers) for e in reversed(events)]
    customer = await get_customer(session, merchant_id, ticket.customer_id) if ticket.customer_id else None
    customer_tickets = 0
    if customer is not None:
        customer_tickets = (await session.execute(select(func.count()).select_from(Ticket).where(
            Ticket.merchant_id == merchant_id, Ticket.customer_id == customer.id,
            Ticket.merged_into_id.is_(None)))).scalar_one()
    case_no = None
    if ticket.aftersales_id:
        case_no = (await session.execute(select(AftersaleCase.case_no).where(
            AftersaleCase.id == ticket.aftersales_id, AftersaleCase.merchant_id == merchant_id))).scalar()
    # Merge suggestions: the same requester's other tickets still open.
    same = []
    who = [c for c in (Ticket.customer_id == ticket.customer_id if ticket.customer_id else None,
                       Ticket.requester_email == ticket.requester_email if ticket.requester_email else None)
           if c is not None]
    if who:
        same = list((await session.execute(select(Ticket.id, Ticket.number, Ticket.subject).where(
            Ticket.merchant_id == merchant_id, Ticket.id != ticket.id, Ticket.merged_into_id.is_(None),
            Ticket.status_group.in_(("new", "open", "pending")), or_(*who))
            .order_by(Ticket.updated_at.desc()).limit(8))).all())
    editable = ticket.merged_into_id is None and ticket.status_group != "closed"
    choices = [s for s in labels["statuses"].values() if s.group != "new" or ticket.status_group == "new"]
    macros = [{"name": r.name, "steps": macro_steps(r.actions, lang, labels["status_names"], staff)}
              for r in await rules_of(session, merchant_id, "macro")]
    return {"ticket": ticket, "replies": replies, "history": history, "staff": staff, "numbers": numbers,
            "files": await _attachment_kinds(session, merchant_id, replies), "max_images": MAX_IMAGES,
            "macros": macros,
            "opening_body": _opening_body(ticket, replies),
            "customer": customer_out(customer, reveal=False) if customer else None,
            "customer_tickets": customer_tickets, "order_no": await _order_no(session, merchant_id, ticket.order_id),
            "case_no": case_no, "same_requester": same, "editable": editable, "status_choices": choices,
            "groups": states.GROUPS, "priorities": list(reversed(states.PRIORITIES)), "sla_targets": SLA_TARGETS,
            "stars": _stars(ticket.rating_score), "breaches": [
                {"target": b.get("target"), "at": parse_instant(b["at"]) if b.get("at") else None}
                for b in ticket.sla_breaches or []], **labels}


@router.get("/console/tickets/{ticket_id}")
async def console_ticket(ticket_id: str, request: Request, session: DbSession, principal: StaffPage,
                         part: str = "") -> Response:
    _merchant_staff(principal)
    ticket = await actions.access_ticket(session, principal, ticket_id)
    view = await _console_view(session, principal, ticket, lang_of(request))
    applied = request.query_params.get("macro", "")
    view["applied"] = applied if any(m["name"] == applied for m in view["macros"]) else None
    return render(request, "console/ticket.html", view, block="thread" if part == "thread" else None)


@router.get("/console/tickets/{ticket_id}/files/{upload_id}")
async def console_file(ticket_id: str, upload_id: str, session: DbSession, principal: StaffPage) -> Response:
    """A file on one of the ticket's replies or notes."""
    _merchant_staff(principal)
    ticket = await actions.access_ticket(session, principal, ticket_id)
    return await _reply_file(session, ticket, upload_id, public_only=False)


def _patch(form: FormData) -> TicketPatch:
    """The sidebar form as a PATCH body: only the fields it holds, an empty assignee meaning nobody."""
    data: dict[str, Any] = {}
    for name in ("status", "priority", "category"):
        if name in form:
            data[name] = _text(form, name)
    if not data.get("status"):
        data.pop("status", None)
    if not data.get("priority"):
        data.pop("priority", None)
    if "assignee_id" in form:
        data["assignee_id"] = _text(form, "assignee_id") or None
    if "tags" in form:
        data["tags"] = [t for t in TAG_SPLIT.split(_text(form, "tags")) if t]
    if _text(form, "expected_version"):
        version = _text(form, "expected_version")
        if not version.isdigit():
            raise ValidationFailed("not a whole number", field="expected_version")
        data["expected_version"] = int(version)
    return parse_model(TicketPatch, data)


@router.post("/console/tickets/{ticket_id}/update")
async def console_update(ticket_id: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    _merchant_staff(principal)
    body = _patch(await request.form())
    async with session.begin():
        await actions.do_update_ticket(session, principal, ticket_id, body)
    return go(request, f"/console/tickets/{ticket_id}")


@router.post("/console/tickets/{ticket_id}/assign-me")
async def console_assign_me(ticket_id: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    _merchant_staff(principal)
    body = parse_model(TicketPatch, {"assignee_id": principal.staff_id})
    async with session.begin():
        await actions.do_update_ticket(session, principal, ticket_id, body)
    return go(request, f"/console/tickets/{ticket_id}")


@router.post("/console/tickets/{ticket_id}/reply")
async def console_reply(ticket_id: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    """A public reply or a private note; then, if asked, a status (e.g. reply and mark solved)."""
    _merchant_staff(principal)
    form = await request.form()
    private = _text(form, "private") in ("1", "on", "true")
    body = parse_model(ReplyIn, {"body": _text(form, "body"), "public": not private})
    then = _text(form, "then_status")
    images = await _images(form)
    with _unless_sent() as written:
        async with session.begin():
            ids = await _store_images(session, principal, ticket_id, images, written)
            await actions.do_reply(session, principal, ticket_id, body.body, public=body.public, channel="web",
                                   attachment_ids=ids)
            if then:
                await actions.do_update_ticket(session, principal, ticket_id,
                                               parse_model(TicketPatch, {"status": then}))
    return go(request, f"/console/tickets/{ticket_id}")


@router.post("/console/tickets/{ticket_id}/macro")
async def console_macro(ticket_id: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    """Run one of the merchant's macros on the ticket, in the agent's name."""
    _merchant_staff(principal)
    name = _text(await request.form(), "macro")
    if not name:
        raise ValidationFailed("choose a macro", field="macro")
    try:
        async with session.begin():
            await actions.do_apply_macro(session, principal, ticket_id, name)
    except NotFound as exc:
        if exc.detail != "no such macro":
            raise
        raise ValidationFailed("no such macro (deleted or switched off?)", field="macro", status=404,
                               code="not_found") from exc
    return go(request, f"/console/tickets/{ticket_id}?macro={quote(name)}")


async def _ticket_by_number(session, merchant_id: str, text: str) -> str:
    """The id of this merchant's ticket with that public number (or id)."""
    text = text.strip()
    found = (await session.execute(select(Ticket.id).where(
        Ticket.merchant_id == merchant_id, or_(Ticket.number == text.upper(), Ticket.id == text)))).scalar()
    if found is None:
        raise ValidationFailed("no such ticket", field="into", status=404, code="not_found")
    return found


@router.post("/console/tickets/{ticket_id}/merge")
async def console_merge(ticket_id: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    merchant_id = _merchant_staff(principal)
    into = _text(await request.form(), "into")
    if not into:
        raise ValidationFailed("the number of the ticket to merge into", field="into")
    async with session.begin():
        into_id = await _ticket_by_number(session, merchant_id, into)
        await actions.do_merge(session, principal, ticket_id, into_id)
    return go(request, f"/console/tickets/{into_id}")


@router.post("/console/tickets/{ticket_id}/split")
async def console_split(ticket_id: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    _merchant_staff(principal)
    reply_id = _text(await request.form(), "reply_id")
    if not reply_id:
        raise ValidationFailed("choose a message", field="reply_id")
    async with session.begin():
        new = await actions.do_split(session, principal, ticket_id, reply_id)
        new_id = new.id
    return go(request, f"/console/tickets/{new_id}")


def list_url(params: dict[str, str], **changes: str) -> str:
    """The console list's address with some filters changed (tabs and chips keep the rest)."""
    merged = {**params, **changes}
    return "/console/tickets?" + urlencode({k: v for k, v in merged.items() if v})
