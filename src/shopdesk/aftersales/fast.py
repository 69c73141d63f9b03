"""The common after-sales steps on PostgreSQL in a few fixed statements (decision 0011).

The `do_*` actions are the rulebook: they know every case type, every state and every error. Through
the ORM they cost about a millisecond of server CPU per statement, and a return flow needs 44 of
them. Here the everyday steps (create, approve, ship-return, receive, confirm a manual refund) run as
the same `do_*` would run them, but in fixed SQL straight through psycopg on a pooled connection:

1. read the case (or, to create one, the order) whole in one statement: lines, events and parcels as
   JSON, the merchant's settings, the shopper's name and email, the merchant's webhooks;
2. decide in Python with the same pure rules (`states`, `rules`, the deadline table, the mail and
   webhook builders) on plain objects;
3. write everything in one statement: the case, its event, audit rows, outbox rows, parcels, refunds
   and the order's money, as one data-modifying CTE fed with JSON arrays (`write_sql`).

Each step is two statements in autocommit, with no lock held in between: the read, and a write that
first locks the rows the step read (in the order the `do_*` lock them) and writes nothing unless each
is still the version read (`xmin`). A step that lost such a race falls back like any unusual request.

Anything out of the ordinary (another case type, deductions, a platform operator, a case the caller
may not see, a step the state does not allow, a row changed since the read) raises `Slow` with nothing
written, and the route runs the `do_*`, which gives the answer or the error. So this module only ever
does what the `do_*` would have done, for the common case, faster. `tests/integration/aftersales/
test_fast_path.py` runs flows both ways and compares every row they write.
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime
from contextlib import asynccontextmanager
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, AsyncIterator
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.util import greenlet_spawn

from shopdesk.accounts.auth import Principal
from shopdesk.aftersales import states
from shopdesk.aftersales.actions import _arm, case_out, transition
from shopdesk.aftersales.policy import policy_from, settings_from
from shopdesk.aftersales.rules import TenderView, split_over_tenders
from shopdesk.aftersales.schemas import ApproveIn, CaseIn, ReceiveIn, WaybillIn
from shopdesk.core.clock import now
from shopdesk.core.db import autocommit_engine, is_postgres
from shopdesk.core.errors import IllegalTransition
from shopdesk.core.ids import new_id
from shopdesk.notifications.actions import case_event_data, case_mail, webhook_payloads, wants


class Slow(Exception):
    """This request needs the full `do_*` path; nothing has been written."""


def enabled(session: AsyncSession) -> bool:
    from shopdesk.config import get_settings

    return is_postgres(session) and get_settings().fast_path


# 1. Reads take no lock: one statement, one consistent snapshot. Every row whose change would make
# the step wrong comes back with its `xmin`, and the write checks them (see 3).
#
# A case with everything a step reads: its lines, events and parcels, the merchant's settings and
# webhooks, the shopper's name and email; for a receipt its order's money, for a refund
# confirmation the refund and all the case's refunds.
@lru_cache(maxsize=8)
def read_case_sql(by_refund: bool = False, with_order: bool = False) -> str:
    return ("SELECT c.*, c.xmin::text AS row_xmin, "
            + ("to_jsonb(r) AS refund, " if by_refund else "")
            + ("""(SELECT json_agg(json_build_object('id', f.id, 'refund_no', f.refund_no, 'status', f.status,
     'supersedes', f.supersedes, 'xmin', f.xmin::text)) FROM refund f WHERE f.case_id = c.id) AS refunds, """
               if by_refund else "")
            + ("""(SELECT json_build_object('id', o.id, 'xmin', o.xmin::text,
     'shipping_refunded_fen', o.shipping_refunded_fen,
     'lines', (SELECT json_agg(json_build_object('id', l.id, 'xmin', l.xmin::text, 'quantity', l.quantity,
       'paid_fen', l.paid_fen, 'refunded_fen', l.refunded_fen, 'refunded_qty', l.refunded_qty) ORDER BY l.position)
       FROM order_line l WHERE l.order_id = o.id),
     'payments', (SELECT json_agg(json_build_object('id', p.id, 'xmin', p.xmin::text, 'method', p.method,
       'amount_fen', p.amount_fen, 'refunded_fen', p.refunded_fen, 'trade_no', p.trade_no) ORDER BY p.position)
       FROM payment p WHERE p.order_id = o.id))
   FROM "order" o WHERE o.id = c.order_id) AS "order", """ if with_order else "")
            + """m.settings AS merchant_settings, cu.name AS customer_name, cu.email AS customer_email,
  (SELECT coalesce(json_agg(json_build_object('id', l.id, 'order_line_id', l.order_line_id,
     'quantity', l.quantity, 'refund_fen', l.refund_fen, 'is_open', l.is_open) ORDER BY l.position), '[]')
   FROM aftersale_line l WHERE l.case_id = c.id) AS lines,
  (SELECT coalesce(json_agg(json_build_object('at', e.at, 'actor', e.actor, 'action', e.action,
     'from_status', e.from_status, 'to_status', e.to_status, 'note', e.note) ORDER BY e.seq), '[]')
   FROM aftersale_event e WHERE e.case_id = c.id) AS events,
  (SELECT coalesce(json_agg(json_build_object('direction', s.direction, 'carrier', s.carrier,
     'tracking_no', s.tracking_no, 'shipped_at', s.shipped_at, 'signed_at', s.signed_at)
     ORDER BY s.shipped_at), '[]')
   FROM case_shipment s WHERE s.case_id = c.id) AS shipments,
  (SELECT coalesce(json_agg(json_build_object('id', w.id, 'url', w.url, 'events', w.events)), '[]')
   FROM webhook w WHERE w.merchant_id = c.merchant_id) AS webhooks
FROM """ + ("refund r JOIN aftersale_case c ON c.id = r.case_id" if by_refund else "aftersale_case c")
            + """ JOIN merchant m ON m.id = c.merchant_id JOIN customer cu ON cu.id = c.customer_id
WHERE """ + ("r.refund_no = %(key)s" if by_refund else "c.id = %(key)s"))


# Case creation: everything the quote reads. The write checks the order row (and takes the number).
READ_FOR_CASE = """SELECT o.customer_id, o.xmin::text AS order_xmin, o.shipping_fee_fen, o.shipping_refunded_fen,
  o.discounts, m.time_zone, m.settings AS merchant_settings, cu.name AS customer_name, cu.email AS customer_email,
  (SELECT json_agg(json_build_object('id', l.id, 'line_no', l.line_no, 'sku', l.sku, 'quantity', l.quantity,
     'unit_price_fen', l.unit_price_fen, 'paid_fen', l.paid_fen, 'refunded_fen', l.refunded_fen,
     'refunded_qty', l.refunded_qty, 'is_gift', l.is_gift, 'declared_value_fen', l.declared_value_fen,
     'art7_confirmed', l.art7_confirmed, 'no_reason_return', l.no_reason_return) ORDER BY l.position)
   FROM order_line l WHERE l.order_id = o.id) AS lines,
  (SELECT coalesce(json_agg(json_build_object('id', p.id, 'method', p.method, 'amount_fen', p.amount_fen,
     'refunded_fen', p.refunded_fen) ORDER BY p.position), '[]') FROM payment p WHERE p.order_id = o.id) AS payments,
  (SELECT coalesce(json_agg(json_build_object('line_nos', s.line_nos, 'shipped_at', s.shipped_at,
     'signed_at', s.signed_at) ORDER BY s.shipped_at), '[]') FROM shipment s WHERE s.order_id = o.id) AS shipments,
  (SELECT coalesce(json_agg(json_build_object('order_line_id', a.order_line_id, 'is_open', a.is_open)), '[]')
   FROM aftersale_line a JOIN order_line l ON l.id = a.order_line_id WHERE l.order_id = o.id) AS case_lines,
  (SELECT coalesce(json_agg(json_build_object('id', u.id, 'merchant_id', u.merchant_id, 'owner_id', u.owner_id)),
     '[]') FROM upload u WHERE u.id = ANY(%(photos)s::varchar[])) AS uploads,
  (SELECT coalesce(json_agg(json_build_object('id', w.id, 'url', w.url, 'events', w.events)), '[]')
   FROM webhook w WHERE w.merchant_id = o.merchant_id) AS webhooks
FROM "order" o JOIN merchant m ON m.id = o.merchant_id JOIN customer cu ON cu.id = o.customer_id
WHERE o.id = %(id)s AND o.merchant_id = %(merchant_id)s"""

# 3. Every write of a step in one statement, in autocommit. Each part reads a JSON array; new rows are
# whole rows of their table, and the case is written whole, as the step left it. First the guards lock
# the rows the step read (in the order the do_* lock them) and check that each is still the version
# read; every part writes only if all of them are (`w_ok`). So the statement writes all or nothing,
# and nothing changed between the read and the write.
_CASE_COLUMNS = ("status", "version", "updated_at", "closed_at", "deadline_at", "deadline_action", "alarm_at",
                 "return_address", "approved_at", "received_at", "postage_refund_fen", "refund_fen", "deductions",
                 "reject_reason")
_INSERTS = {"new_cases": "aftersale_case", "new_lines": "aftersale_line", "events": "aftersale_event",
            "audit": "audit_log", "outbox": "outbox", "parcels": "case_shipment", "refunds": "refund"}
# Updates: part → (table, columns set from the JSON rows, matched on id).
_UPDATES = {"cases": ("aftersale_case", _CASE_COLUMNS),
            "refund_updates": ("refund", ("status", "provider_ref", "last_error", "next_attempt_at", "settled_at")),
            "order_lines": ("order_line", ("refunded_fen", "refunded_qty")),
            "payments": ("payment", ("refunded_fen",))}
_WRITE_PARTS = {
    **{part: f"INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, %({part})s::jsonb)"
       for part, table in _INSERTS.items()},
    # The ids again as an array: matched only against the JSON rows, the planner (which guesses 100 of
    # them) scans the whole table; `= ANY(ids)` makes it look the rows up by primary key.
    **{part: f"UPDATE {table} AS t SET " + ", ".join(f"{col} = x.{col}" for col in cols)
       + f" FROM jsonb_populate_recordset(NULL::{table}, %({part})s::jsonb) AS x"
       + f" WHERE t.id = ANY(%({part}_ids)s::varchar[]) AND t.id = x.id"
       for part, (table, cols) in _UPDATES.items()},
    "closed": "UPDATE aftersale_line SET is_open = false WHERE case_id = ANY(%(closed)s::varchar[]) AND is_open",
}


# A new case's number stands in its rows as NUMBER until the write takes the day's next value of the
# counter and puts it in their place. The counter row is locked from then until the statement commits:
# creations queue on it for a moment, not for a whole request. No guard, no number: no gaps.
NUMBER = f"@@no-{secrets.token_hex(16)}@@"
TAKE_NUMBER = """num AS (INSERT INTO counter (merchant_id, name, value)
  SELECT %(merchant_id)s, %(counter)s, 1 WHERE (SELECT ok FROM w_ok)
  ON CONFLICT (merchant_id, name) DO UPDATE SET value = counter.value + 1
  RETURNING CASE WHEN value < 10000 THEN lpad(value::text, 4, '0') ELSE value::text END AS no)"""


# guard → the rows it locks (with their xmin), by the key it is given. Lists lock in id order.
GUARDS = {
    "case": "SELECT t.id, t.xmin::text AS xm FROM aftersale_case t WHERE t.id = %(g_case)s FOR UPDATE",
    "refunds": "SELECT t.id, t.xmin::text AS xm FROM refund t WHERE t.case_id = %(g_case)s ORDER BY t.id FOR UPDATE",
    "order": 'SELECT t.id, t.xmin::text AS xm FROM "order" t WHERE t.id = %(g_order)s FOR UPDATE',
    # A creation only needs the order to stay as read while it writes: an edit of the order waits.
    "order_share": 'SELECT t.id, t.xmin::text AS xm FROM "order" t WHERE t.id = %(g_order)s FOR SHARE',
    "order_lines": "SELECT t.id, t.xmin::text AS xm FROM order_line t WHERE t.order_id = %(g_order)s"
                   " ORDER BY t.id FOR UPDATE",
    "payments": "SELECT t.id, t.xmin::text AS xm FROM payment t WHERE t.order_id = %(g_order)s"
                " ORDER BY t.id FOR UPDATE",
}


@lru_cache(maxsize=64)
def write_sql(parts: tuple[str, ...], guards: tuple[str, ...], numbered: bool = False) -> str:
    """The statement that checks the guards, in order, and writes these parts (a step has few shapes).

    Each guard's rows must be exactly the ones read, each at the xmin read (`%(x_<guard>)s`, a JSON
    object id → xmin). numbered: take the day's next case number for NUMBER too.
    """
    ctes, checks = [], []
    if guards == ("case",) and "cases" in parts:
        # One row, and the step updates it: the UPDATE itself is the guard (one lock, not two).
        cases = _WRITE_PARTS["cases"] + " AND t.xmin::text = %(x_case)s::jsonb ->> t.id RETURNING t.id"
        ctes += [f"w_cases AS ({cases})", "w_ok AS (SELECT EXISTS (SELECT FROM w_cases) AS ok)"]
        parts = tuple(p for p in parts if p != "cases")
        guards = ()
    for i, name in enumerate(guards):
        after = f" AND (SELECT count(*) FROM g_{guards[i - 1]}) >= 0" if i else ""  # lock after the one before
        sql = GUARDS[name].replace(" ORDER BY", f"{after} ORDER BY") if " ORDER BY" in GUARDS[name] else \
            GUARDS[name].replace(" FOR ", f"{after} FOR ")
        ctes.append(f"g_{name} AS ({sql})")
        checks.append(f"(SELECT count(*) FROM g_{name})"
                      f" = (SELECT count(*) FROM jsonb_object_keys(%(x_{name})s::jsonb))"
                      f" AND NOT EXISTS (SELECT FROM g_{name} g WHERE %(x_{name})s::jsonb ->> g.id IS DISTINCT FROM g.xm)")
    if checks:
        ctes.append("w_ok AS (SELECT " + " AND ".join(checks) + " AS ok)")
    if numbered:
        ctes.append(TAKE_NUMBER)
    for part in parts:
        cte = _WRITE_PARTS[part]
        cte += (" AND" if " WHERE " in cte else " WHERE") + " (SELECT ok FROM w_ok)"
        if numbered:
            cte = cte.replace(f"%({part})s::jsonb", f"replace(%({part})s, %(number)s, (SELECT no FROM num))::jsonb")
        ctes.append(f"w_{part} AS ({cte})")
    tail = "SELECT (SELECT ok FROM w_ok), " + ("(SELECT no FROM num)" if numbered else "NULL")
    return "WITH " + ",\n".join(ctes) + "\n" + tail


_PARTS = (*_INSERTS, *_UPDATES)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _dumps(rows: list[dict]) -> str:
    return json.dumps(rows, default=_jsonable, ensure_ascii=False, separators=(",", ":"))


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class Step:
    """One request's statements: the read, and the writes and guards it gathers for `write_sql`."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.writes: dict[str, list] = {part: [] for part in _PARTS}
        self.closed: list[str] = []
        # guard → the rows the step read (id → xmin), and the keys the guards find them by
        self.guards: dict[str, dict[str, str]] = {}
        self.keys: dict[str, str] = {}

    @classmethod
    @asynccontextmanager
    async def begin(cls) -> AsyncIterator["Step"]:
        """A pooled connection in autocommit: each of the step's two statements is its own transaction.

        The connection comes from a pool of its own (`core.db.autocommit_engine`), without a session:
        the step needs none of its bookkeeping. (Locking reads in a transaction cost the server two more
        commands a step, BEGIN and COMMIT; psycopg's pipeline mode saved their round trips but cost
        about 100 µs more CPU per transaction, and the server's CPU is what limits throughput.)
        """
        fairy = await autocommit_engine().raw_connection()
        try:
            yield cls(fairy.driver_connection)
        finally:
            await greenlet_spawn(fairy.close)

    async def rows(self, sql: str, params: dict) -> list[dict]:
        cur = self.driver.cursor(row_factory=dict_row)
        await cur.execute(sql, params)
        return await cur.fetchall()

    def guard(self, name: str, rows: dict[str, str], **keys: str) -> None:
        """Write only if these rows (id → xmin as read) are still exactly so; lock them, in this order."""
        self.guards[name] = rows
        self.keys.update(keys)

    async def case(self, key: str, by_refund: bool = False, with_order: bool = False) -> SimpleNamespace:
        """Read a case whole, as plain objects (by id, or by one of its refunds' numbers)."""
        found = await self.rows(read_case_sql(by_refund, with_order), {"key": key})
        if not found:
            raise Slow
        row = found[0]
        case = SimpleNamespace(**row)
        case.lines = [SimpleNamespace(**ln) for ln in row["lines"]]
        case.events = [SimpleNamespace(**{**e, "at": _at(e["at"])}) for e in row["events"]]
        case.shipments = [SimpleNamespace(direction=s["direction"], carrier=s["carrier"],
                                          tracking_no=s["tracking_no"], shipped_at=_at(s["shipped_at"]),
                                          signed_at=_at(s["signed_at"])) for s in row["shipments"]]
        case.customer = SimpleNamespace(name=row["customer_name"], email=row["customer_email"])
        case.settings = settings_from(row["merchant_settings"])
        case.webhook_events = (row["merchant_settings"] or {}).get("webhook_events")
        case.webhooks = [SimpleNamespace(**w) for w in row["webhooks"]]
        case.changed = False
        if with_order:
            o = row["order"]
            case.order = SimpleNamespace(id=o["id"], xmin=o["xmin"], shipping_refunded_fen=o["shipping_refunded_fen"],
                                         lines=[SimpleNamespace(**ln) for ln in o["lines"] or []],
                                         payments=[SimpleNamespace(**p) for p in o["payments"] or []])
        return case

    # What `_event`, `record` and `enqueue` add to a session, as rows for `write_sql`.
    def event(self, case, actor: str, actor_id: str | None, action: str, from_status: str | None,
              to_status: str | None, note: str = "", data: dict | None = None) -> None:
        at = now()
        self.writes["events"].append({
            "id": new_id(), "merchant_id": case.merchant_id, "case_id": case.id, "seq": len(case.events) + 1,
            "at": at, "actor": actor, "actor_id": actor_id, "action": action, "from_status": from_status,
            "to_status": to_status, "note": note or "", "data": data or {}})
        case.events.append(SimpleNamespace(at=at, actor=actor, action=action, from_status=from_status,
                                           to_status=to_status, note=note or ""))

    def audit(self, *, merchant_id: str, actor_type: str, actor_id: str | None, action: str, object_type: str,
              object_id: str, data: dict | None = None) -> None:
        self.writes["audit"].append({"id": new_id(), "merchant_id": merchant_id, "at": now(),
                                     "actor_type": actor_type, "actor_id": actor_id, "action": action,
                                     "object_type": object_type, "object_id": object_id, "data": data or {}})

    def enqueue(self, kind: str, payload: dict, merchant_id: str) -> None:
        at = now()
        self.writes["outbox"].append({"id": new_id(), "merchant_id": merchant_id, "kind": kind, "payload": payload,
                                      "status": "pending", "attempts": 0, "next_attempt_at": at, "created_at": at})

    def notify(self, case, action: str) -> None:
        """What `notify_case_change` queues: the shopper's mail and the subscribed webhooks."""
        mail = case_mail(case, case.customer)
        if mail:
            self.enqueue("email", mail, case.merchant_id)
        event = f"aftersales.{action}"
        if wants(case.webhook_events, event) is not False:
            for payload in webhook_payloads(case.webhooks, event, case_event_data(case)):
                self.enqueue("webhook", payload, case.merchant_id)

    def move(self, case, action: str, actor: str, actor_id: str | None, note: str = "",
             data: dict | None = None) -> str:
        """What `actions._move` does, on the plain case."""
        target = next_status(action, case)
        at = now()
        before = transition(case, target, at)
        if target in states.FINAL:
            self.closed.append(case.id)
        self.event(case, actor, actor_id, action, before, target, note, data)
        _arm(case, case.settings, at)
        self.notify(case, action)
        self.audit(merchant_id=case.merchant_id, actor_type=actor, actor_id=actor_id, action=f"aftersales.{action}",
                   object_type="aftersale_case", object_id=case.id, data={"from": before, "to": target, **(data or {})})
        case.changed = True
        return target

    async def write(self, *cases, counter: tuple[str, str] | None = None) -> str | None:
        """Check the guards and write, in one statement; Slow (nothing written) if a guarded row changed.

        counter (merchant, name): take its next value for NUMBER and return it.
        """
        self.writes["cases"] = [{"id": c.id, **{col: getattr(c, col) for col in _CASE_COLUMNS}}
                                for c in cases if c.changed]
        params: dict[str, Any] = {part: _dumps(rows) for part, rows in self.writes.items() if rows}
        if self.closed:
            params["closed"] = self.closed
        parts = tuple(params)
        params.update({f"{part}_ids": [row["id"] for row in self.writes[part]] for part in parts if part in _UPDATES})
        params.update({f"x_{name}": json.dumps(rows) for name, rows in self.guards.items()})
        params.update({f"g_{key}": value for key, value in self.keys.items()})
        if counter:
            params.update(merchant_id=counter[0], counter=counter[1], number=NUMBER)
        cur = self.driver.cursor()
        try:
            await cur.execute(write_sql(parts, tuple(self.guards), counter is not None), params)
        except (psycopg.IntegrityError, psycopg.errors.DeadlockDetected):
            raise Slow from None  # e.g. a line opened by another case meanwhile: the do_* says so
        ok, number = await cur.fetchone()
        if not ok:
            raise Slow  # changed since it was read: the do_* takes it from here
        return number


def next_status(action: str, case) -> str:
    try:
        return states.next_status(action, case.status, case.type)
    except IllegalTransition:
        raise Slow from None  # the do_* says why


def _staff_side(principal: Principal, case) -> None:
    if not principal.is_merchant_side or principal.merchant_id != case.merchant_id:
        raise Slow


def _buyer(principal: Principal, case) -> None:
    if principal.kind != "shopper" or principal.merchant_id != case.merchant_id or \
            principal.customer_id != case.customer_id:
        raise Slow


# 2. The steps. Each mirrors its do_* for the cases it takes, and raises Slow for the rest.
async def approve(step: Step, principal: Principal, case_id: str, body: ApproveIn):
    """`do_approve` of a case that goes to awaiting_return, with no deductions."""
    case = await step.case(case_id)
    step.guard("case", {case.id: case.row_xmin}, case=case.id)
    _staff_side(principal, case)
    if body.deductions or (body.expected_version is not None and body.expected_version != case.version):
        raise Slow
    if next_status("approve", case) != "awaiting_return":
        raise Slow  # money moves now, or a parcel goes out: the do_* handles it
    case.deductions = []
    case.refund_fen = case.goods_refund_fen + case.shipping_refund_fen
    case.return_address = (body.return_address.model_dump() if body.return_address
                           else case.settings.get("return_address"))
    if not case.return_address:
        raise Slow
    case.approved_at = now()
    step.move(case, "approve", principal.actor, principal.actor_id, body.note)
    await step.write(case)
    return case, []


async def ship_return(step: Step, principal: Principal, case_id: str, body: WaybillIn):
    """`do_ship_return` without return postage (the buyer's own cost)."""
    case = await step.case(case_id)
    step.guard("case", {case.id: case.row_xmin}, case=case.id)
    _buyer(principal, case)
    if body.postage_fen:
        raise Slow
    next_status("ship_return", case)
    at = now()
    step.writes["parcels"].append({"id": new_id(), "merchant_id": case.merchant_id, "case_id": case.id,
                                   "direction": "return", "carrier": body.carrier, "tracking_no": body.tracking_no,
                                   "shipped_at": at, "signed_at": None, "tracking_state": None})
    case.shipments.append(SimpleNamespace(direction="return", carrier=body.carrier, tracking_no=body.tracking_no,
                                          shipped_at=at, signed_at=None))
    step.move(case, "ship_return", "buyer", principal.customer_id, f"{body.carrier} {body.tracking_no}",
              data={"carrier": body.carrier, "tracking_no": body.tracking_no})
    await step.write(case)
    return case, []


async def receive(step: Step, principal: Principal, case_id: str, body: ReceiveIn):
    """`do_receive` of a return_refund whose goods passed inspection: the refunds are created."""
    case = await step.case(case_id, with_order=True)
    order = case.order
    # As do_receive locks them: the case, then the order; and the order's money rows this writes.
    step.guard("case", {case.id: case.row_xmin}, case=case.id)
    step.guard("order", {order.id: order.xmin}, order=order.id)
    step.guard("order_lines", {ln.id: ln.xmin for ln in order.lines})
    step.guard("payments", {p.id: p.xmin for p in order.payments})
    _staff_side(principal, case)
    if body.outcome != "ok" or case.type != "return_refund" or (
            body.expected_version is not None and body.expected_version != case.version):
        raise Slow
    next_status("receive", case)
    case.received_at = now()
    step.move(case, "receive", principal.actor, principal.actor_id, body.note)
    refunds = start_refunds(step, case, order)
    await step.write(case)
    return case, refunds


def start_refunds(step: Step, case, order) -> list:
    """`actions._start_refunds` and `refunds.create_refunds`: the refund rows and the money totals."""
    from shopdesk.refunds.actions import new_refund_no

    if case.shipping_refund_fen and order.shipping_refunded_fen == 0:
        raise Slow  # the shipping fee goes back too (not on a return_refund today): the do_* does it
    line_gross = {ln.order_line_id: (ln.quantity, ln.refund_fen) for ln in case.lines}
    amount = max(case.goods_refund_fen + case.postage_refund_fen
                 - sum(d["amount_fen"] for d in case.deductions), 0)
    case.refund_fen = amount
    if amount == 0:
        raise Slow  # settles at once without refunds: rare, the do_* does it
    for ln in order.lines:
        if ln.id in line_gross:
            qty, fen = line_gross[ln.id]
            ln.refunded_fen += fen
            ln.refunded_qty += qty
            if ln.refunded_fen > ln.paid_fen or ln.refunded_qty > ln.quantity:
                raise Slow  # the do_* refuses it with its error
            step.writes["order_lines"].append({"id": ln.id, "refunded_fen": ln.refunded_fen,
                                               "refunded_qty": ln.refunded_qty})
    tenders = [TenderView(p.id, p.method, p.amount_fen, p.refunded_fen) for p in order.payments]
    if amount > sum(t.amount_fen - t.refunded_fen for t in tenders):
        raise Slow
    providers = (case.merchant_settings or {}).get("payments", {}).get("providers", {})
    by_id = {p.id: p for p in order.payments}
    created = []
    at = now()
    for part in split_over_tenders(amount, tenders):
        payment = by_id[part.payment_id]
        payment.refunded_fen += part.amount_fen
        step.writes["payments"].append({"id": payment.id, "refunded_fen": payment.refunded_fen})
        refund = SimpleNamespace(id=new_id(), merchant_id=case.merchant_id, refund_no=new_refund_no(),
                                 case_id=case.id, order_id=order.id, payment_id=payment.id, method=payment.method,
                                 provider=providers.get(payment.method, "manual"), trade_no=payment.trade_no,
                                 amount_fen=part.amount_fen, status="created", supersedes=None, attempts=0,
                                 next_attempt_at=at, last_error=None, provider_ref=None, created_at=at,
                                 settled_at=None)
        step.writes["refunds"].append(vars(refund))
        created.append(refund)
        step.audit(merchant_id=case.merchant_id, actor_type="system", actor_id=None, action="refund.create",
                   object_type="refund", object_id=refund.refund_no,
                   data={"case_id": case.id, "amount_fen": part.amount_fen, "method": payment.method})
    return created


async def create(principal: Principal, body: CaseIn) -> dict:
    """`do_create_case` of a case that waits for review (no exchange goods, photos the caller's own)."""
    async with Step.begin() as step:
        return await _create(step, principal, body)


async def _create(step: Step, principal: Principal, body: CaseIn) -> dict:
    from collections import Counter

    from shopdesk.aftersales import rules
    from shopdesk.orders.actions import line_shipping

    merchant_id = principal.merchant_id
    if principal.is_platform or merchant_id is None or body.deductions or body.exchange_to:
        raise Slow
    found = await step.rows(READ_FOR_CASE, {"id": body.order_id, "merchant_id": merchant_id,
                                            "photos": list(body.photo_ids)})
    if not found or (principal.kind == "shopper" and found[0]["customer_id"] != principal.customer_id):
        raise Slow
    row = found[0]
    step.guard("order_share", {body.order_id: row["order_xmin"]}, order=body.order_id)
    at = now()
    day = at.astimezone(ZoneInfo(row["time_zone"])).strftime("%Y%m%d")
    uploads = {u["id"]: u for u in row["uploads"]}
    for pid in body.photo_ids:  # _check_photos
        upload = uploads.get(pid)
        if upload is None or upload["merchant_id"] != merchant_id or (
                principal.kind == "shopper" and upload["owner_id"] != principal.customer_id):
            raise Slow
    # order_view, on the rows just read
    counts = Counter(cl["order_line_id"] for cl in row["case_lines"])
    open_lines = {cl["order_line_id"] for cl in row["case_lines"] if cl["is_open"]}
    order = SimpleNamespace(lines=[SimpleNamespace(**ln) for ln in row["lines"]],
                            shipments=[SimpleNamespace(line_nos=sh["line_nos"], shipped_at=_at(sh["shipped_at"]),
                                                       signed_at=_at(sh["signed_at"])) for sh in row["shipments"]])
    shipping = line_shipping(order)  # type: ignore[arg-type]
    view = rules.OrderView(
        [rules.LineView(**vars(ln), shipped_at=shipping[ln.id][0], signed_at=shipping[ln.id][1],
                        has_open_case=ln.id in open_lines, case_count=counts[ln.id]) for ln in order.lines],
        [TenderView(p["id"], p["method"], p["amount_fen"], p["refunded_fen"]) for p in row["payments"]],
        row["shipping_fee_fen"], row["shipping_refunded_fen"], row["discounts"])
    settings = settings_from(row["merchant_settings"])
    req = rules.QuoteRequest(type=body.type, reason=body.reason, lines=[(ln.order_line_id, ln.quantity)
                                                                        for ln in body.lines],
                             amount_fen=body.amount_fen, photo_count=len(body.photo_ids))
    q = rules.quote(view, req, at, policy_from(settings, row["time_zone"]))
    if not q.eligible or q.auto_approve:
        raise Slow
    case = SimpleNamespace(
        id=new_id(), version=1, alarm_level=0, postage_refund_fen=0, resubmit_count=0, merchant_id=merchant_id,
        case_no=f"AS{day}-{NUMBER}", order_id=body.order_id, customer_id=row["customer_id"],
        type=body.type, reason=body.reason, responsibility=q.responsibility, status="requested",
        description=body.description, photo_ids=list(body.photo_ids), exchange_to=[],
        requested_amount_fen=body.amount_fen, goods_refund_fen=q.goods_refund_fen,
        shipping_refund_fen=q.shipping_refund_fen, refund_fen=q.refund_fen, buyer_pays_fen=q.buyer_pays_fen,
        deductions=[], return_address=None, reject_reason=None, flags=list(q.flags), deadline_at=None,
        deadline_action=None, alarm_at=None, created_at=at, updated_at=at, approved_at=None, received_at=None,
        closed_at=None, lines=[], events=[], shipments=[], settings=settings,
        customer=SimpleNamespace(name=row["customer_name"], email=row["customer_email"]),
        webhook_events=(row["merchant_settings"] or {}).get("webhook_events"),
        webhooks=[SimpleNamespace(**w) for w in row["webhooks"]])
    for pos, ql in enumerate(q.lines):
        line = {"id": new_id(), "merchant_id": merchant_id, "case_id": case.id, "order_line_id": ql.order_line_id,
                "position": pos, "quantity": ql.quantity, "refund_fen": ql.refund_fen, "is_open": True}
        step.writes["new_lines"].append(line)
        case.lines.append(SimpleNamespace(**line))
    step.event(case, principal.actor, principal.actor_id, "create", None, "requested", body.description)
    _arm(case, settings, at)
    step.notify(case, "create")
    step.audit(merchant_id=merchant_id, actor_type=principal.actor, actor_id=principal.actor_id,
               action="aftersales.create", object_type="aftersale_case", object_id=case.id,
               data={"refund_fen": case.refund_fen, "type": case.type})
    step.writes["new_cases"].append({col: getattr(case, col) for col in _NEW_CASE_COLUMNS})
    case.case_no = f"AS{day}-{await step.write(counter=(merchant_id, f'AS{day}'))}"
    return case_out(case, [], shopper=principal.kind == "shopper")


_NEW_CASE_COLUMNS = ("id", "merchant_id", "case_no", "order_id", "customer_id", "type", "reason", "responsibility",
                     "status", "version", "description", "photo_ids", "exchange_to", "requested_amount_fen",
                     "goods_refund_fen", "shipping_refund_fen", "postage_refund_fen", "refund_fen", "buyer_pays_fen",
                     "deductions", "return_address", "reject_reason", "flags", "deadline_at", "deadline_action",
                     "alarm_at", "alarm_level", "resubmit_count", "created_at", "updated_at", "approved_at",
                     "received_at", "closed_at")


STEPS = {"approve": (ApproveIn, approve), "ship-return": (WaybillIn, ship_return), "receive": (ReceiveIn, receive)}


async def case_action(principal: Principal, case_id: str, action: str, body) -> dict:
    """Run one step of STEPS and answer as the route would; Slow if it cannot."""
    async with Step.begin() as step:
        run = STEPS[action][1]
        case, refunds = await run(step, principal, case_id, body)
    return case_out(case, refunds, shopper=principal.kind == "shopper")


async def confirm_refund(principal: Principal, refund_no: str, reference: str) -> dict:
    """`do_confirm_manual` of an open manual refund, settling the case when it was the last one."""
    async with Step.begin() as step:
        return await _confirm_refund(step, principal, refund_no, reference)


async def _confirm_refund(step: Step, principal: Principal, refund_no: str, reference: str) -> dict:
    from shopdesk.refunds.actions import refund_out
    from shopdesk.refunds.models import OPEN_STATUSES

    if principal.kind != "staff" or not principal.is_merchant_side:
        raise Slow
    case = await step.case(refund_no, by_refund=True)
    # As apply_result and on_refunds_changed lock them: the refunds (this one and the others, whose
    # statuses decide whether the case is settled), then the case.
    step.guard("refunds", {r["id"]: r["xmin"] for r in case.refunds}, case=case.id)
    step.guard("case", {case.id: case.row_xmin})
    refund = SimpleNamespace(**case.refund)
    refund.created_at = _at(refund.created_at)
    if refund.merchant_id != principal.merchant_id or refund.provider != "manual" or refund.status not in OPEN_STATUSES:
        raise Slow
    # apply_result(…, "succeeded")
    at = now()
    before = refund.status
    refund.status, refund.provider_ref, refund.last_error = "succeeded", reference, None
    refund.next_attempt_at, refund.settled_at = None, at
    detail = f"confirmed by {principal.name}"
    step.writes["refund_updates"].append({"id": refund.id, "status": "succeeded", "provider_ref": reference,
                                          "last_error": detail, "next_attempt_at": None, "settled_at": at})
    refund.last_error = detail
    step.audit(merchant_id=refund.merchant_id, actor_type="system", actor_id=refund.provider,
               action="refund.succeeded", object_type="refund", object_id=refund.refund_no,
               data={"from": before, "amount_fen": refund.amount_fen, "detail": detail})
    # on_refunds_changed: the case completes when this was its last open refund.
    others = case.refunds
    statuses = {r["refund_no"]: ("succeeded" if r["refund_no"] == refund_no else r["status"]) for r in others}
    superseded = {r["supersedes"] for r in others if r["supersedes"]}
    live = [s for no, s in statuses.items() if no not in superseded]
    if case.status == "refunding" and all(s == "succeeded" for s in live):
        step.move(case, "refunds_settled", "system", None, "退款成功")
    elif case.status != "refunding" or any(s in ("failed", "abnormal") for s in live):
        raise Slow
    await step.write(case)
    return refund_out(refund)
