"""Page machinery: templates, language, page sessions, CSRF, HTML errors; the login and lookup pages."""
from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeSerializer
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2_fragments import render_block
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from shopdesk.accounts.actions import do_login
from shopdesk.accounts.auth import SHOPPER_TTL, STAFF_TTL, Principal, resolve, shopper_token
from shopdesk.aftersales.states import group_of
from shopdesk.config import get_settings
from shopdesk.core import i18n
from shopdesk.core.clock import as_utc
from shopdesk.core.errors import DomainError, Forbidden, NotFound, RateLimited, Unauthorized, ValidationFailed
from shopdesk.core.money import format_fen
from shopdesk.core.ratelimit import hit
from shopdesk.customers.api import lookup_order
from shopdesk.tickets.models import Ticket
from shopdesk.web.deps import DbSession

TEMPLATES = Path(__file__).resolve().parent / "templates"
DISPLAY_ZONE = ZoneInfo("Asia/Shanghai")
CSRF_COOKIE = "sd_csrf"
CSRF_FIELD = "csrf_token"
LANG_COOKIE = "lang"
# Staff and shopper sessions are separate cookies scoped to their area, so one browser can hold both.
SESSION_COOKIES = {"console": ("sd_console", "/console", STAFF_TTL), "shop": ("sd_shop", "/shop", SHOPPER_TTL)}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _signer(purpose: str) -> URLSafeSerializer:
    return URLSafeSerializer(get_settings().secret_key, salt=f"shopdesk.page.{purpose}")


def lang_of(request: Request) -> str:
    return i18n.negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


def area_of(request: Request) -> str:
    return "console" if request.url.path.startswith("/console") else "shop"


def local_time(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """Show an instant in Beijing time."""
    value = as_utc(value)
    return value.astimezone(DISPLAY_ZONE).strftime(fmt) if value else ""


def iso_time(value: datetime | None) -> str:
    value = as_utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


@pass_context
def _t(ctx: Any, key: str, **values: Any) -> str:
    return i18n.t(key, ctx.get("lang", i18n.DEFAULT_LANG), **values)


@pass_context
def _status(ctx: Any, status: str, case_type: str | None = None) -> str:
    return i18n.status_label(status, ctx.get("lang", i18n.DEFAULT_LANG), case_type)


@pass_context
def _reason(ctx: Any, code: str) -> str:
    return i18n.reason_label(code, ctx.get("reasons") or {}, ctx.get("lang", i18n.DEFAULT_LANG))


@pass_context
def _label(ctx: Any, group: str, key: str | None) -> str:
    """Look up `group.key` (a type, carrier, refund status…), showing the raw key when unknown."""
    if not key:
        return ""
    return i18n.t(f"{group}.{key}", ctx.get("lang", i18n.DEFAULT_LANG)) if i18n.has(f"{group}.{key}") else key


env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                  trim_blocks=True, lstrip_blocks=True)
env.globals.update(t=_t, status_label=_status, reason_label=_reason, label=_label, money=format_fen,
                   when=local_time, iso=iso_time, group_of=group_of)


# CSRF: double submit. A signed random token lives in a cookie and is echoed in every state-changing
# request (hidden form field, or the X-CSRF-Token header that htmx sends via hx-headers).
def csrf_token(request: Request) -> str:
    current = request.cookies.get(CSRF_COOKIE, "")
    if current and _csrf_valid(current):
        return current
    if not getattr(request.state, "new_csrf", None):
        request.state.new_csrf = _signer("csrf").dumps(secrets.token_urlsafe(18))
    return request.state.new_csrf


def _csrf_valid(token: str) -> bool:
    try:
        _signer("csrf").loads(token)
        return True
    except BadSignature:
        return False


async def check_csrf(request: Request) -> None:
    """Refuse a state-changing page request whose CSRF token does not match its cookie."""
    if request.method in SAFE_METHODS:
        return
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get("x-csrf-token", "")
    if not sent and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = str((await request.form()).get(CSRF_FIELD) or "")
    matches = bool(cookie and sent) and secrets.compare_digest(cookie.encode(), sent.encode())
    if not matches or not _csrf_valid(cookie):
        raise Forbidden("CSRF token missing or wrong", code="csrf_failed")


def _finish(request: Request, response: Response) -> Response:
    new = getattr(request.state, "new_csrf", None)
    if new:
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="lax", path="/")
    return response


def render(request: Request, template: str, context: dict | None = None, *, status: int = 200,
           block: str | None = None, headers: dict | None = None) -> Response:
    """Render a page (or one block of it, for htmx) in the caller's language."""
    ctx = {"request": request, "lang": lang_of(request), "csrf": csrf_token(request), "area": area_of(request),
           "principal": getattr(request.state, "principal", None), "path": request.url.path,
           "full_path": str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")}
    ctx.update(context or {})
    html = render_block(env, template, block, ctx) if block else env.get_template(template).render(ctx)
    return _finish(request, HTMLResponse(html, status_code=status, headers=headers))


def go(request: Request, url: str) -> Response:
    """Send the browser to url: an HX-Redirect for htmx, else 303 See Other."""
    if request.headers.get("hx-request"):
        return _finish(request, Response(status_code=200, headers={"HX-Redirect": url}))
    return _finish(request, RedirectResponse(url, status_code=303))


def local_path(url: str | None, default: str) -> str:
    """Return url if it stays on this site (next= links), else default."""
    if url and url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return default


def error_text(exc: DomainError, lang: str) -> dict:
    """Word a domain error for people: localised headline, field name and detail."""
    key = f"error.{exc.code}"
    message = i18n.t(key, lang) if i18n.has(key) else i18n.t("error.title", lang)
    field = i18n.field_label(exc.field, lang)
    # The domain's own detail is English; show it only where it adds something.
    detail = exc.detail if (lang == "en" or not i18n.has(key) or exc.code == "validation_failed") else ""
    return {"message": message, "field": field, "detail": detail, "status": exc.status, "code": exc.code}


def html_error(request: Request, exc: DomainError) -> Response:
    """Render a domain error raised on a page: a friendly page, or a flash fragment for htmx."""
    if isinstance(exc, Unauthorized) and exc.code != "bad_credentials":
        login = "/console/login" if area_of(request) == "console" else "/shop/lookup"
        target = f"{login}?next={quote(request.url.path)}" if request.method in SAFE_METHODS else login
        return go(request, target)
    context = {"error": error_text(exc, lang_of(request))}
    if request.headers.get("hx-request"):
        return render(request, "error.html", context, status=exc.status, block="flash",
                      headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"})
    return render(request, "error.html", context, status=exc.status)


def parse_model(model: type[BaseModel], data: dict) -> Any:
    """Validate form data with an API schema; the first problem becomes a domain error naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValidationFailed(err["msg"], field=".".join(str(p) for p in err["loc"]) or "body") from exc


# Page sessions: the API's own bearer tokens, kept in signed HttpOnly cookies.
def start_session(response: Response, area: str, token: str) -> Response:
    name, path, ttl = SESSION_COOKIES[area]
    response.set_cookie(name, _signer("session").dumps(token), max_age=int(ttl.total_seconds()), httponly=True,
                        samesite="lax", path=path)
    return response


def end_session(response: Response, area: str) -> Response:
    name, path, _ = SESSION_COOKIES[area]
    response.delete_cookie(name, path=path, httponly=True, samesite="lax")
    return response


def page_token(request: Request, area: str) -> str | None:
    """The API token kept in the page session cookie (the chat console hands it to its socket)."""
    raw = request.cookies.get(SESSION_COOKIES[area][0])
    if not raw:
        return None
    try:
        return _signer("session").loads(raw)
    except BadSignature:
        return None


async def _page_principal(request: Request, session: Any, area: str, kind: str) -> Principal:
    token = page_token(request, area)
    principal = await resolve(session, token)
    if session.in_transaction():
        await session.rollback()  # end the read that resolved it; handlers open their own transaction
    if principal.kind != kind:
        raise Unauthorized("wrong kind of session")
    request.state.principal = principal
    return principal


async def shopper_principal(request: Request, session: DbSession) -> Principal:
    return await _page_principal(request, session, "shop", "shopper")


async def staff_principal(request: Request, session: DbSession) -> Principal:
    return await _page_principal(request, session, "console", "staff")


ShopperPage = Annotated[Principal, Depends(shopper_principal)]
StaffPage = Annotated[Principal, Depends(staff_principal)]


# A ticket link from an email ("/shop/tickets/{id}?t=<ticket token>") opens that one ticket without a login.
# Its token lives in a cookie of its own, scoped to that ticket's path, and is accepted only by
# requester_principal below, which the ticket's own routes call with the ticket id of their URL.
TICKET_COOKIE = "sd_ticket"


def ticket_path(ticket_id: str) -> str:
    return f"/shop/tickets/{ticket_id}"


def start_ticket_session(response: Response, ticket_id: str, token: str, max_age: int) -> Response:
    response.set_cookie(TICKET_COOKIE, _signer("ticket").dumps([ticket_id, token]), max_age=max(max_age, 0),
                        httponly=True, samesite="lax", path=ticket_path(ticket_id))
    return response


async def requester_principal(request: Request, session: Any, ticket_id: str) -> Principal:
    """Who may act as the requester of this ticket: the shopper session, else this ticket's own link.

    Never a link for another ticket: the cookie is signed with the ticket id, sent only under the
    ticket's path, and its token must name this ticket (the actions check it once more).
    """
    shopper = link = None
    token = page_token(request, "shop")
    if token:
        try:
            found = await resolve(session, token)
            shopper = found if found.kind == "shopper" else None
        except Unauthorized:
            pass
    raw = request.cookies.get(TICKET_COOKIE)
    if raw:
        try:
            cookie_ticket, link_token = _signer("ticket").loads(raw)
            if cookie_ticket == ticket_id:
                found = await resolve(session, link_token)
                if found.kind == "ticket_link" and found.ticket_id == ticket_id:
                    link = found
        except (BadSignature, TypeError, ValueError, Unauthorized):
            pass
    if shopper is not None and link is not None:
        # Both: the shopper's own ticket is theirs; someone else's (an emailed guest ticket) goes by the link.
        owner = (await session.execute(select(Ticket.customer_id, Ticket.merchant_id)
                                       .where(Ticket.id == ticket_id))).first()
        if owner is None or (owner[0], owner[1]) != (shopper.customer_id, shopper.merchant_id):
            shopper = None
    if session.in_transaction():
        await session.rollback()  # end the read that resolved it; handlers open their own transaction
    principal = shopper or link
    if principal is None:
        raise Unauthorized("no session for this ticket")
    request.state.principal = principal
    return principal

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/console/login", status_code=303)


@router.get("/lang/{code}")
async def switch_language(code: str, request: Request, next: str | None = None) -> Response:
    """Remember the chosen language and go back where the link was clicked."""
    response = RedirectResponse(local_path(next, "/"), status_code=303)
    if code in i18n.LANGS:
        response.set_cookie(LANG_COOKIE, code, max_age=365 * 24 * 3600, samesite="lax", path="/")
    return response


@router.get("/console/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    return render(request, "console/login.html", {"next": local_path(next, "/console/cases"), "email": ""})


@router.post("/console/login")
async def login(request: Request, session: DbSession) -> Response:
    form = await request.form()
    email, password = str(form.get("email") or "").strip(), str(form.get("password") or "")
    target = local_path(str(form.get("next") or ""), "/console/cases")
    try:
        hit("10/minute", "console-login", email.lower())
        async with session.begin():
            _, token = await do_login(session, email, password)
    except (Unauthorized, RateLimited) as exc:
        error = error_text(exc, lang_of(request))
        return render(request, "console/login.html", {"next": target, "email": email, "error": error},
                      status=exc.status)
    return start_session(go(request, target), "console", token)


@router.post("/console/logout")
async def logout(request: Request) -> Response:
    return end_session(go(request, "/console/login"), "console")


@router.get("/shop/lookup")
async def lookup_form(request: Request, store: str = "", merchant: str = "", next: str | None = None) -> Response:
    return render(request, "shopper/lookup.html", {"store": store, "merchant": merchant, "order_no": "", "phone": "",
                                                   "next": local_path(next, "")})


@router.post("/shop/lookup")
async def lookup(request: Request, session: DbSession) -> Response:
    """Open a shopper session from store + order number + phone (the no-login order lookup)."""
    form = await request.form()
    values = {k: str(form.get(k) or "").strip() for k in ("store", "order_no", "phone", "merchant", "next")}
    try:
        if not (values["store"] and values["order_no"] and len(values["phone"]) >= 4):
            raise NotFound("no order matches these details")
        # The same limits as POST /api/v1/shopper/lookup, so the page is no way around them.
        hit("10/minute", "lookup-ip", request.client.host if request.client else "-")
        hit("5/minute", "lookup-order", values["store"], values["order_no"])
        order = await lookup_order(session, values["store"], values["order_no"], values["phone"],
                                   values["merchant"] or None)
    except (NotFound, RateLimited) as exc:
        lang = lang_of(request)
        error = error_text(exc, lang)
        if isinstance(exc, NotFound):
            error["message"] = i18n.t("lookup.miss", lang)
        return render(request, "shopper/lookup.html", {**values, "error": error}, status=exc.status)
    token = shopper_token(order.merchant_id, order.customer_id)
    # A link from a notification email comes back here with next=; the case page checks ownership itself.
    target = local_path(values["next"], f"/shop/orders/{order.id}")
    return start_session(go(request, target), "shop", token)


@router.get("/shop/enter")
async def enter(request: Request, session: DbSession, token: str = "", next: str | None = None) -> Response:
    """Open a shopper session from a shopper token the shop minted for its logged-in user."""
    principal = await resolve(session, token or None)
    if principal.kind != "shopper":
        raise Unauthorized("not a shopper token")
    return start_session(RedirectResponse(local_path(next, "/shop/cases"), status_code=303), "shop", token)


@router.post("/shop/logout")
async def shop_logout(request: Request) -> Response:
    return end_session(go(request, "/shop/lookup"), "shop")


from shopdesk.aftersales.pages import router as aftersales_pages  # noqa: E402  (it uses the helpers above)

router.include_router(aftersales_pages)
from shopdesk.chat.pages import router as chat_pages  # noqa: E402

router.include_router(chat_pages)
from shopdesk.tickets.pages import router as ticket_pages  # noqa: E402

router.include_router(ticket_pages)
from shopdesk.tickets.inbox_pages import router as inbox_pages  # noqa: E402

router.include_router(inbox_pages)
