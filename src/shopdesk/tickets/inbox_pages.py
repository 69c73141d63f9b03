"""The console's unified inbox page: counters, filters, saved views, bulk changes, a list that refreshes itself.

The list and counters come from tickets/inbox.py (`inbox_page`, `counts`), the views from its
`do_save_view` / `views_of` / `do_delete_view`, bulk changes from `actions.do_bulk_update`. The page's
state (filters and sort) lives in the address, so a refresh, a "more" page and a bulk change all ask for
the same list; `?view=<id>` starts from a saved view, and parameters given beside it override it.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from shopdesk.accounts.auth import Principal
from shopdesk.core import i18n
from shopdesk.core.clock import now, parse_instant
from shopdesk.core.errors import ValidationFailed
from shopdesk.tickets import actions, inbox, states
from shopdesk.tickets.pages import TAG_SPLIT, _cursor, _labels, _merchant_staff, _numbers, _staff_names, _text
from shopdesk.tickets.schemas import TicketPatch
from shopdesk.web.deps import DbSession
from shopdesk.web.pages import StaffPage, go, lang_of, local_time, parse_model, render

router = APIRouter()

PAGE = 25
MAX_ROWS = 100  # a refresh re-reads every row on screen, "more" pages included, up to this many
# The page's state: inbox.FILTER_KEYS and the sort. Order fixes how addresses are written.
STATE_KEYS = ("kinds", "status_group", "assignee", "priority", "category", "tag", "channel", "q", "urged", "sort")
DEFAULT_SORT = "updated_desc"
# The counters across the top: what each counts (a path into inbox.counts) and the filter it opens.
COUNTERS: tuple[tuple[str, tuple[str, ...], dict[str, str]], ...] = (
    ("new", ("tickets", "new"), {"kinds": "ticket", "status_group": "new"}),
    ("open", ("tickets", "open"), {"kinds": "ticket", "status_group": "open"}),
    ("pending", ("tickets", "pending"), {"kinds": "ticket", "status_group": "pending"}),
    ("mine", ("tickets", "mine"), {"kinds": "ticket", "assignee": "me"}),
    ("unassigned", ("tickets", "unassigned"), {"kinds": "ticket", "assignee": "none"}),
    ("urged", ("tickets", "urged"), {"kinds": "ticket", "urged": "1"}),
    ("chats", ("chats_waiting",), {"kinds": "chat"}),
    ("cases", ("aftersales_due",), {"kinds": "aftersales"}),
    ("tasks", ("tasks_due",), {"kinds": "task"}),
)
ALERT_COUNTERS = ("urged", "cases", "tasks")  # shown in the warning colour when not zero


# ---- the page's state -----------------------------------------------------------------------------

def _joined(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value if v)
    return str(value or "").strip()


def _kinds(value: str) -> str:
    """Kinds in their fixed order; every kind is the same as none named (""). Unknown ones stay, to be refused."""
    chosen = {k for k in value.split(",") if k}
    if not chosen or chosen == set(inbox.KINDS):
        return ""
    return ",".join([k for k in inbox.KINDS if k in chosen] + sorted(chosen - set(inbox.KINDS)))


def normalise(filters: dict, sort: str | None) -> dict[str, str]:
    """A state from filters (a saved view's lists or the address's strings) and a sort."""
    state = {key: _joined(filters.get(key)) for key in STATE_KEYS if key != "sort"}
    state["kinds"] = _kinds(state["kinds"])
    state["urged"] = "1" if state["urged"].lower() in ("1", "on", "true") else ""
    if state["urged"]:
        state["kinds"] = "ticket"  # only tickets are hurried
    state["sort"] = sort or DEFAULT_SORT
    return state


def state_from(source: Any) -> dict[str, str]:
    """The state named by a query string or a form (several `kinds` fields are a list)."""
    filters = {key: ",".join(source.getlist(key)) for key in STATE_KEYS if key != "sort"}
    return normalise(filters, _joined(source.get("sort")) or None)


async def _state(request: Request, session, principal: Principal) -> tuple[dict[str, str], str | None]:
    """The list the address asks for: a saved view, if named, with the address's parameters over it."""
    params = request.query_params
    view_id = params.get("view") or None
    if view_id is None:
        return state_from(params), None
    view = await inbox.access_view(session, principal, view_id)
    filters: dict[str, Any] = dict(view.filters)
    for key in STATE_KEYS:
        if key != "sort" and key in params:
            filters[key] = ",".join(params.getlist(key))
    return normalise(filters, params.get("sort") or view.sort), view_id


def url_of(state: dict[str, str], **changes: str) -> str:
    merged = {**state, **changes}
    if merged.get("sort") == DEFAULT_SORT:
        merged["sort"] = ""
    query = urlencode([(k, merged[k]) for k in (*STATE_KEYS, "cursor", "part", "limit") if merged.get(k)])
    return "/console/inbox" + (f"?{query}" if query else "")


def filters_of(state: dict[str, str]) -> dict[str, str]:
    """The inbox filters in a state (without the sort)."""
    return {k: v for k, v in state.items() if k in inbox.FILTER_KEYS and v}


def same_list(state: dict[str, str], filters: dict, sort: str = DEFAULT_SORT) -> bool:
    return state == normalise(filters, sort)


# ---- reading the list -------------------------------------------------------------------------------

async def read_list(session, principal: Principal, state: dict[str, str], cursor: str,
                    limit: int) -> tuple[list[dict], str | None]:
    after = _cursor(cursor)
    return await inbox.inbox_page(session, principal, filters_of(state), sort=state["sort"], cursor=after, limit=limit)


def _span(seconds: float, lang: str) -> str:
    """A duration the way people say it: 45 分钟, 3 小时 20 分, 2 天 4 小时."""
    minutes = max(int(seconds // 60), 1)
    if minutes < 60:
        return i18n.t("inbox.span_m", lang, n=minutes)
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return i18n.t("inbox.span_hm", lang, h=hours, m=minutes) if minutes and hours < 10 else \
            i18n.t("inbox.span_h", lang, n=hours)
    days, hours = divmod(hours, 24)
    if hours and days < 3:
        return i18n.t("inbox.span_dh", lang, d=days, h=hours)
    return i18n.t("inbox.span_d", lang, n=days)


def _due(item: dict, lang: str, at: datetime) -> dict | None:
    if not item["due_at"]:
        return {"text": i18n.t("inbox.breached", lang), "late": True, "title": ""} if item["breached"] else None
    due = parse_instant(item["due_at"])
    left = (due - at).total_seconds()
    late = left <= 0 or item["breached"]
    if left <= 0:
        text = i18n.t("inbox.overdue", lang, t=_span(-left, lang))
    else:
        text = i18n.t("inbox.due_in", lang, t=_span(left, lang))
    return {"text": text, "late": late, "title": local_time(due), "breached": item["breached"] and left > 0}


def _ago(text: str, lang: str, at: datetime) -> str:
    seconds = (at - parse_instant(text)).total_seconds()
    return i18n.t("inbox.just_now", lang) if seconds < 60 else i18n.t("inbox.ago", lang, t=_span(seconds, lang))


def row_of(item: dict, lang: str, labels: dict, staff: dict[str, str], at: datetime) -> dict:
    """One line of the list, worded for people in the page language."""
    kind, status = item["kind"], item["status"]
    title, status_text, group = item["title"], status, item["status_group"]
    if kind == "ticket":
        status_text = labels["status_names"].get(status, status)
    elif kind == "chat":
        title = i18n.t(f"inbox.chat_{status}", lang) if i18n.has(f"inbox.chat_{status}") else title
        status_text = i18n.t(f"chat.status.{status}", lang) if i18n.has(f"chat.status.{status}") else status
    elif kind == "aftersales":
        title = i18n.t("inbox.case_title", lang, no=item["ref"])
        status_text = i18n.status_label(status, lang)
    elif kind == "task":
        title = i18n.t("inbox.task_title", lang) if title == "回访" else title
        status_text = i18n.t(f"inbox.task_status.{status}", lang) if i18n.has(f"inbox.task_status.{status}") \
            else status
    ref = item.get("ticket_no") or item["ref"]
    assignee = item.get("assignee_id")
    return {**item, "title": title, "ref": ref, "status_text": status_text, "group": group,
            "due": _due(item, lang, at), "ago": _ago(item["at"], lang, at) if item.get("at") else "",
            "at_local": local_time(parse_instant(item["at"])) if item.get("at") else "",
            "assignee_name": staff.get(assignee, assignee) if assignee else "",
            "selectable": kind == "ticket" and group != "closed"}


# ---- the page -----------------------------------------------------------------------------------------

def _counters(counts: dict, state: dict[str, str]) -> list[dict]:
    out = []
    for name, path, filters in COUNTERS:
        value: Any = counts
        for part in path:
            value = value[part]
        out.append({"name": name, "n": value, "url": url_of(normalise(filters, state["sort"])),
                    "active": same_list(state, filters, state["sort"]),
                    "alert": name in ALERT_COUNTERS and value > 0})
    return out


async def _context(request: Request, session, principal: Principal, state: dict[str, str], cursor: str = "",
                   limit: int = PAGE) -> dict:
    merchant_id = _merchant_staff(principal)
    lang = lang_of(request)
    items, nxt = await read_list(session, principal, state, cursor, limit)
    # A revisit task names the ticket it follows up (its link is that ticket's page).
    tasks = {i["id"]: i["link"].rsplit("/", 1)[-1] for i in items if i["kind"] == "task"}
    numbers = await _numbers(session, merchant_id, set(tasks.values()))
    for item in items:
        if item["id"] in tasks and tasks[item["id"]] in numbers:
            item["ticket_no"] = numbers[tasks[item["id"]]]
    labels = await _labels(session, merchant_id, lang)
    staff = await _staff_names(session, merchant_id)
    at = now()
    return {"rows": [row_of(i, lang, labels, staff, at) for i in items], "next": nxt, "state": state,
            "counters": _counters(await inbox.counts(session, principal), state), "staff": staff,
            "url_of": url_of, "stamp": local_time(at, "%H:%M:%S"), **labels}


@router.get("/console/inbox")
async def console_inbox(request: Request, session: DbSession, principal: StaffPage, cursor: str = "",
                        part: str = "", limit: int = PAGE) -> Response:
    """The inbox page; `part=live` is the list and counters for the 30 s refresh, `part=more` the next rows."""
    _merchant_staff(principal)
    state, view_id = await _state(request, session, principal)
    limit = min(max(limit, PAGE), MAX_ROWS)
    context = await _context(request, session, principal, state, cursor, limit)
    if part in ("live", "more"):
        return render(request, "console/inbox.html", context, block=part)
    views = [inbox.view_out(v) for v in await inbox.views_of(session, principal)]
    for v in views:
        v["url"] = f"/console/inbox?view={v['id']}"
        v["active"] = v["id"] == view_id or (view_id is None and same_list(state, v["filters"], v["sort"]))
        v["deletable"] = not v["shared"] or principal.role in ("admin", "supervisor")
    statuses = [s for s in context["statuses"].values() if s.group != "new"]
    return render(request, "console/inbox.html", {
        **context, "views": views, "view_id": view_id, "kinds": inbox.KINDS, "sorts": inbox.SORTS,
        "groups": (*inbox.OPEN_GROUPS, "solved", "closed"), "priorities": list(reversed(states.PRIORITIES)),
        "bulk_statuses": statuses, "can_share": principal.role in ("admin", "supervisor"),
        "notice": next((k for k in ("saved", "deleted") if request.query_params.get(k)), None),
        "saved_name": next((v["name"] for v in views if v["id"] == view_id), "")})


# ---- saved views --------------------------------------------------------------------------------------

@router.post("/console/inbox/views")
async def console_save_view(request: Request, session: DbSession, principal: StaffPage) -> Response:
    """Save the list's filters and sort as a view of one's own, or (supervisors, admins) the team's."""
    _merchant_staff(principal)
    form = await request.form()
    name = _text(form, "name")
    if not name or len(name) > 64:
        raise ValidationFailed("1 to 64 characters", field="view_name")
    state = state_from(form)
    filters = filters_of(state)
    async with session.begin():
        view = await inbox.do_save_view(session, principal, name, filters, state["sort"],
                                        _text(form, "shared") in ("1", "on", "true"))
        view_id = view.id
    return go(request, f"/console/inbox?view={view_id}&saved=1")


@router.post("/console/inbox/views/{view_id}/delete")
async def console_delete_view(view_id: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    _merchant_staff(principal)
    async with session.begin():
        await inbox.do_delete_view(session, principal, view_id)
    return go(request, "/console/inbox?deleted=1")


# ---- bulk changes -------------------------------------------------------------------------------------

def _bulk_patch(form, principal: Principal) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for field in ("status", "priority"):
        if _text(form, f"set_{field}"):
            data[field] = _text(form, f"set_{field}")
    who = _text(form, "set_assignee")
    if who:
        data["assignee_id"] = principal.staff_id if who == "me" else (None if who == "none" else who)
    return data


def _reason(result: dict, lang: str) -> str:
    key = f"error.{result.get('code')}"
    if i18n.has(key) and (lang != "en" or result.get("code") != "validation_failed"):
        return i18n.t(key, lang)
    return result.get("detail") or result.get("code") or ""


@router.post("/console/inbox/bulk")
async def console_bulk(request: Request, session: DbSession, principal: StaffPage) -> Response:
    """One change to the ticked tickets (each on its own); answer with the refreshed list and a result line."""
    merchant_id = _merchant_staff(principal)
    form = await request.form()
    ids = list(dict.fromkeys(i for i in form.getlist("ids") if isinstance(i, str) and i))[:MAX_ROWS]
    if not ids:
        raise ValidationFailed("choose at least one ticket", field="ids")
    data = _bulk_patch(form, principal)
    tags = [t for t in TAG_SPLIT.split(_text(form, "add_tag")) if t]
    if tags:
        data["add_tags"] = tags
    if not data:
        raise ValidationFailed("choose a change to make", field="bulk_change")
    patch = parse_model(TicketPatch, data)
    lang = lang_of(request)
    async with session.begin():
        results = {r["id"]: r for r in await actions.do_bulk_update(session, principal, ids, patch)}
    failed = [r for r in results.values() if not r["ok"]]
    numbers = await _numbers(session, merchant_id, {r["id"] for r in failed})
    outcome = {"done": len(results) - len(failed),
               "failed": [{"id": r["id"], "no": numbers.get(r["id"], r["id"]), "reason": _reason(r, lang)}
                          for r in failed]}
    state = state_from(form)
    if not request.headers.get("hx-request"):
        return go(request, url_of(state))  # without scripts: back to the list, which shows the changes
    shown = form.get("shown")
    limit = min(max(int(shown), PAGE), MAX_ROWS) if isinstance(shown, str) and shown.isdigit() else PAGE
    context = await _context(request, session, principal, state, "", limit)
    return render(request, "console/inbox.html", {**context, "outcome": outcome}, block="live")

