"""Store the plain messages that arrive at one moment in one transaction (decision 0008).

A socket's ordinary message (text only, in a conversation that is already under way) goes to the
process's writer instead of a transaction of its own. The writer takes whatever is waiting, at
most one message per conversation, and stores it with a few statements whatever the number:
resends looked up, conversations locked (with their participants), the seqs taken in one
UPDATE … RETURNING and the messages inserted with them. After the commit each sender gets its
ack, then everyone gets the messages.

A message the batch cannot take the simple way (a conversation that ended, waits in the queue, is
the bot's, is locked by a colleague, was never this sender's) comes back as None, and the socket
sends it through `actions.do_send_message`, which knows every rule and gives every error. So the
writer only ever does what `do_send_message` would have done, for the common case, faster.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Callable

import psycopg
import structlog
from psycopg.rows import namedtuple_row
from sqlalchemy import case, false, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.chat.actions import (ChatActor, Outcome, Sent, ack_of, check_text, message_frame,
                                   topics_for_message)
from shopdesk.chat.models import ChatMessage, ChatParticipant, Conversation
from shopdesk.core.clock import now
from shopdesk.core.db import UTCDateTime, is_postgres, transaction
from shopdesk.core.ids import new_id
from shopdesk.core.pubsub import Event, get_broker

log = structlog.get_logger(__name__)

BATCH_MAX = 200  # messages per transaction; more wait for the next one
INFLIGHT = 2  # batches being stored at once
OVERLAP_AT = 16  # messages waiting before a second batch starts beside the first
# Where a sender may write without the slow path's extra steps (claim, re-route, bot turn).
VISITOR_WRITES = ("queued", "assigned")
AGENT_WRITES = ("assigned",)


@dataclass
class Pending:
    actor: ChatActor
    client_msg_id: str
    text: str
    conversation_id: str
    explicit: bool  # the frame named the conversation (else: the visitor's open one, as the socket knows it)
    on_stored: Callable[[dict], None] | None
    future: asyncio.Future


class MessageWriter:
    """One per event loop: the pending messages, and up to INFLIGHT batches being stored at once.

    Batches in flight never share a conversation (nor a sender's client id), so each conversation's
    messages are stored one batch after another, in the order they came, and batches never wait for
    each other's row locks. Several in flight overlap their round trips to the database.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.pending: list[Pending] = []
        self.busy: set[str] = set()  # conversations and client ids of the batches in flight
        self.inflight = 0
        self.scheduled = False

    async def send(self, actor: ChatActor, *, client_msg_id: str, text: str, conversation_id: str,
                   explicit: bool, on_stored: Callable[[dict], None] | None = None) -> Sent | None:
        """Store one message with the next batch; None when it must go the slow path instead."""
        check_text(text, None)
        future = self.loop.create_future()
        self.pending.append(Pending(actor, client_msg_id, text, conversation_id, explicit, on_stored, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        # A second batch starts only once enough is waiting: small batches cost more per message.
        if not self.scheduled and self.pending and (
                self.inflight == 0 or (self.inflight < INFLIGHT and len(self.pending) >= OVERLAP_AT)):
            self.scheduled = True
            self.loop.call_soon(self._start)  # frames read in this turn of the loop join the batch

    def _start(self) -> None:
        self.scheduled = False
        batch, later, taken = [], [], set()
        for item in self.pending:
            keys = (item.conversation_id, f"{item.actor.sender_id}\n{item.client_msg_id}")
            if len(batch) < BATCH_MAX and not any(k in self.busy or k in taken for k in keys):
                batch.append(item)
                taken.update(keys)
            else:
                later.append(item)  # its conversation's earlier message goes first
        self.pending = later
        if batch:
            self.busy |= taken
            self.inflight += 1
            self.loop.create_task(self._store(batch, taken), name="chat-message-batch")
        # else: each waits for a batch in flight, whose end kicks again

    async def _store(self, batch: list[Pending], taken: set[str]) -> None:
        results: list[Sent | None] = [None] * len(batch)
        events: list[Event] = []
        try:
            results, events = await store_batch(batch)
        except (IntegrityError, psycopg.IntegrityError):
            pass  # a slow-path send raced one of these (same client id): each goes alone, the slow way
        except Exception as exc:  # noqa: BLE001 - every sender hears of it; the writer goes on
            log.exception("chat_batch_failed", size=len(batch))
            for item in batch:
                item.future.set_exception(exc)
            batch = []
        finally:
            self.busy -= taken
            self.inflight -= 1
            self._kick()
        for item, sent in zip(batch, results):
            if sent is not None and sent.message is not None and item.on_stored is not None:
                item.on_stored(sent.ack)  # the senders hear "stored" before anyone hears the messages
        try:
            await get_broker().publish_many(events)
        finally:
            for item, sent in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(sent)


async def store_batch(batch: list[Pending]) -> tuple[list[Sent | None], list]:
    """Store a batch (one message per conversation) in one transaction; the events to publish after it."""
    results: list[Sent | None] = [None] * len(batch)
    async with transaction() as session:
        sql: OrmBatch | PgBatch = await PgBatch.of(session) if is_postgres(session) else OrmBatch(session)
        # 1. Resends get the first ack again, nothing stored (what `_earlier` does, for all at once). A
        # visitor's message that named no conversation matches in any of theirs: their sender id is theirs.
        seen: dict[tuple, Any] = {}
        for m in await sql.resends({p.actor.sender_id for p in batch}, {p.client_msg_id for p in batch}):
            seen[(m.sender_id, m.client_msg_id, m.conversation_id)] = m
            seen.setdefault((m.sender_id, m.client_msg_id, None), m)
        # 2. The conversations (with their participants), locked in a fixed order; a message whose
        # conversation is not simple goes the slow way.
        convs = {c.id: c for c in await sql.lock(sorted({p.conversation_id for p in batch}))}
        writes: list[int] = []
        for i, p in enumerate(batch):
            conv, actor = convs.get(p.conversation_id), p.actor
            if conv is None or conv.merchant_id != actor.merchant_id:
                continue
            if actor.is_staff_side:
                if conv.status not in AGENT_WRITES or (conv.locked_by and conv.locked_by != actor.staff_id):
                    continue
            elif conv.visitor_id != actor.visitor_id or conv.status not in VISITOR_WRITES:
                continue
            first = seen.get((actor.sender_id, p.client_msg_id, p.conversation_id if p.explicit else None))
            if first is not None:
                results[i] = Sent(ack_of(first), None, Outcome())
                continue
            writes.append(i)
        if not writes:
            return results, []
        # 3. Each conversation's next seq (and what a visitor's or an agent's message changes, as `_append`
        # does), and the messages with their seqs.
        at = now()
        rows = []
        for i in writes:
            p, conv = batch[i], convs[batch[i].conversation_id]
            rows.append({"id": new_id(), "merchant_id": conv.merchant_id, "conversation_id": conv.id,
                         "client_msg_id": p.client_msg_id,
                         "sender_type": p.actor.sender_type, "sender_id": p.actor.sender_id,
                         "sender_name": p.actor.name, "text": p.text, "attachment": None, "via": "chat",
                         "card": None, "private": False, "mentions": None, "created_at": at})
        from_visitor = [batch[i].conversation_id for i in writes if not batch[i].actor.is_staff_side]
        seqs = await sql.store(rows, from_visitor, at)
        for row in rows:
            row["seq"] = seqs[row["conversation_id"]]
    events = []
    for i, row in zip(writes, rows):
        message = SimpleNamespace(**row)  # what message_frame and ack_of read of a ChatMessage
        conv = convs[row["conversation_id"]]
        event = Event(topics_for_message(conv.id, conv.visitor_id, conv.assignee_id, conv.merchant_id,
                                         conv.participants),
                      message_frame(message), stream=conv.id, seq=message.seq)  # type: ignore[arg-type]
        events.append(event)
        results[i] = Sent(ack_of(message), message, Outcome([event]))  # type: ignore[arg-type]
    return results, events


class OrmBatch:
    """The batch's statements through SQLAlchemy: any database (SQLite here)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def resends(self, senders: set, client_ids: set) -> list:
        return list((await self.session.execute(select(
            ChatMessage.id, ChatMessage.conversation_id, ChatMessage.seq, ChatMessage.sender_id,
            ChatMessage.client_msg_id).where(ChatMessage.sender_id.in_(senders),
                                             ChatMessage.client_msg_id.in_(client_ids)))).all())

    async def lock(self, ids: list[str]) -> list:
        convs = [SimpleNamespace(**row._asdict(), participants=[]) for row in (await self.session.execute(
            select(Conversation.id, Conversation.merchant_id, Conversation.visitor_id, Conversation.assignee_id,
                   Conversation.status, Conversation.locked_by)
            .where(Conversation.id.in_(ids)).order_by(Conversation.id).with_for_update())).all()]
        by_id = {c.id: c for c in convs}
        for conv_id, staff_id in (await self.session.execute(
                select(ChatParticipant.conversation_id, ChatParticipant.staff_id)
                .where(ChatParticipant.conversation_id.in_(ids)).order_by(ChatParticipant.id))).all():
            by_id[conv_id].participants.append(staff_id)
        return convs

    async def store(self, rows: list[dict], from_visitor: list[str], at: datetime) -> dict[str, int]:
        when = literal(at, UTCDateTime())
        by_visitor = Conversation.id.in_(from_visitor) if from_visitor else false()
        seqs = dict((await self.session.execute(
            update(Conversation).where(Conversation.id.in_([r["conversation_id"] for r in rows])).values(
                last_seq=Conversation.last_seq + 1, updated_at=at, last_message_at=at,
                waiting_since=case((by_visitor, func.coalesce(Conversation.waiting_since, when)), else_=None),
                visitor_read_seq=case((by_visitor, Conversation.last_seq + 1), else_=Conversation.visitor_read_seq),
                agent_read_seq=case((by_visitor, Conversation.agent_read_seq), else_=Conversation.last_seq + 1),
                first_reply_at=case((by_visitor, Conversation.first_reply_at),
                                    else_=func.coalesce(Conversation.first_reply_at, when)))
            .returning(Conversation.id, Conversation.last_seq)
            .execution_options(synchronize_session=False))).all())
        # RETURNING makes SQLAlchemy send one multi-row INSERT ("insertmanyvalues"), not one per row.
        await self.session.execute(insert(ChatMessage).returning(ChatMessage.seq),
                                   [{**r, "seq": seqs[r["conversation_id"]]} for r in rows])
        return seqs


class PgBatch:
    """The same on PostgreSQL in three statements: fixed SQL straight through psycopg, every list one array.

    Through SQLAlchemy, building, cache-keying and binding these statements was half the server's CPU
    at 500 msgs/s; and psycopg parses in Python, every time, any statement over 4 KiB or 64
    parameters, which a multi-row VALUES is (decision 0008). The statements run on the session's
    connection, in its transaction.
    """

    RESENDS = ("SELECT id, conversation_id, seq, sender_id, client_msg_id FROM chat_message"
               " WHERE sender_id = ANY(%(senders)s::varchar[]) AND client_msg_id = ANY(%(client_ids)s::varchar[])")
    LOCK = ("SELECT c.id, c.merchant_id, c.visitor_id, c.assignee_id, c.status, c.locked_by,"
            " ARRAY(SELECT p.staff_id FROM chat_participant p WHERE p.conversation_id = c.id ORDER BY p.id)"
            " AS participants FROM chat_conversation c WHERE c.id = ANY(%(ids)s::varchar[])"
            " ORDER BY c.id FOR UPDATE OF c")
    COLUMNS = ("id", "merchant_id", "conversation_id", "client_msg_id", "sender_type", "sender_id", "sender_name",
               "text")
    # The seqs are taken and the messages inserted with them in one statement (a data-modifying CTE).
    STORE = """WITH taken AS (
  UPDATE chat_conversation SET last_seq = last_seq + 1, updated_at = %(at)s, last_message_at = %(at)s,
    waiting_since = CASE WHEN id = ANY(%(visitor)s::varchar[]) THEN COALESCE(waiting_since, %(at)s) END,
    visitor_read_seq = CASE WHEN id = ANY(%(visitor)s::varchar[]) THEN last_seq + 1 ELSE visitor_read_seq END,
    agent_read_seq = CASE WHEN id = ANY(%(visitor)s::varchar[]) THEN agent_read_seq ELSE last_seq + 1 END,
    first_reply_at = CASE WHEN id = ANY(%(visitor)s::varchar[]) THEN first_reply_at
                          ELSE COALESCE(first_reply_at, %(at)s) END
  WHERE id = ANY(%(conversation_id)s::varchar[]) RETURNING id, last_seq)
INSERT INTO chat_message (id, merchant_id, conversation_id, seq, client_msg_id, sender_type, sender_id, sender_name,
                          text, via, private, created_at)
SELECT m.id, m.merchant_id, m.conversation_id, taken.last_seq, m.client_msg_id, m.sender_type, m.sender_id,
       m.sender_name, m.text, 'chat', false, %(at)s
FROM unnest(""" + ", ".join(f"%({c})s::varchar[]" for c in COLUMNS) + f""") AS m({', '.join(COLUMNS)})
JOIN taken ON taken.id = m.conversation_id
RETURNING conversation_id, seq"""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    @classmethod
    async def of(cls, session: AsyncSession) -> "PgBatch":
        raw = await (await session.connection()).get_raw_connection()
        return cls(raw.driver_connection)

    async def _rows(self, sql: str, params: dict) -> list:
        cur = self.driver.cursor(row_factory=namedtuple_row)
        await cur.execute(sql, params)
        return await cur.fetchall()

    async def resends(self, senders: set, client_ids: set) -> list:
        return await self._rows(self.RESENDS, {"senders": list(senders), "client_ids": list(client_ids)})

    async def lock(self, ids: list[str]) -> list:
        return await self._rows(self.LOCK, {"ids": ids})

    async def store(self, rows: list[dict], from_visitor: list[str], at: datetime) -> dict[str, int]:
        params = {c: [r[c] for r in rows] for c in self.COLUMNS}
        rows_back = await self._rows(self.STORE, {**params, "visitor": from_visitor, "at": at})
        return {r.conversation_id: r.seq for r in rows_back}


_writer: MessageWriter | None = None


def get_writer() -> MessageWriter:
    """The writer of the running event loop (tests run several loops, one after another)."""
    global _writer
    if _writer is None or _writer.loop is not asyncio.get_running_loop():
        _writer = MessageWriter()
    return _writer
