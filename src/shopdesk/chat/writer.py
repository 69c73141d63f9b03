"""Store the plain messages that arrive at one moment in one transaction (decision 0008).

A socket's ordinary message (text only, in a conversation that is already under way) goes to the
process's writer instead of a transaction of its own. The writer takes whatever is waiting, at
most one message per conversation, and stores it with four statements whatever the number:
resends looked up, conversations locked, the seqs taken in one UPDATE … RETURNING, the messages
inserted. After the commit each sender gets its ack, then everyone gets the messages.

A message the batch cannot take the simple way (a conversation that ended, waits in the queue, is
the bot's, is locked by a colleague, was never this sender's) comes back as None, and the socket
sends it through `actions.do_send_message`, which knows every rule and gives every error. So the
writer only ever does what `do_send_message` would have done, for the common case, faster.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import structlog
from sqlalchemy import (Integer, String, any_, bindparam, case, false, func, insert, literal, select,
                        update)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError

from shopdesk.chat.actions import (ChatActor, Outcome, Sent, ack_of, check_text, message_frame,
                                   topics_for_message)
from shopdesk.chat.models import ChatMessage, ChatParticipant, Conversation
from shopdesk.core.clock import now
from shopdesk.core.db import UTCDateTime, is_postgres, transaction
from shopdesk.core.ids import new_id
from shopdesk.core.pubsub import Event, get_broker

log = structlog.get_logger(__name__)

BATCH_MAX = 200  # messages per transaction; more wait for the next one
INFLIGHT = 1  # batches being stored at once (more made batches smaller and dearer: decision 0008)
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
        if not self.scheduled and self.pending and self.inflight < INFLIGHT:
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
        except IntegrityError:
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
        # 1. Resends: the first ack again, nothing stored (as `_earlier` does, for all at once).
        pg = is_postgres(session)
        # Within the conversations named, and for a visitor's message that named none, all of theirs: two
        # lookups that each start from an index (an OR of the two made PostgreSQL scan every message).
        ids = sorted({p.conversation_id for p in batch})
        named = sorted({p.conversation_id for p in batch if p.explicit})
        implicit = {p.actor.visitor_id for p in batch if not p.explicit}
        sent_by = (among(ChatMessage.sender_id, {p.actor.sender_id for p in batch}, pg),
                   among(ChatMessage.client_msg_id, {p.client_msg_id for p in batch}, pg))
        earlier = []
        if named:
            earlier += (await session.execute(select(ChatMessage).where(
                among(ChatMessage.conversation_id, named, pg), *sent_by))).scalars().all()
        if implicit:
            earlier += (await session.execute(select(ChatMessage).join(
                Conversation, Conversation.id == ChatMessage.conversation_id).where(
                among(Conversation.visitor_id, implicit, pg), *sent_by))).scalars().all()
        seen: dict[tuple, Any] = {}
        for m in earlier:
            seen[(m.sender_id, m.client_msg_id, m.conversation_id)] = m
            seen.setdefault((m.sender_id, m.client_msg_id, None), m)
        # 2. The conversations, locked in a fixed order; a message whose conversation is not simple goes slow.
        convs = {c.id: c for c in (await session.execute(
            select(Conversation.id, Conversation.merchant_id, Conversation.visitor_id, Conversation.assignee_id,
                   Conversation.status, Conversation.locked_by)
            .where(among(Conversation.id, ids, pg)).order_by(Conversation.id).with_for_update())).all()}
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
        write_ids = [batch[i].conversation_id for i in writes]
        participants: dict[str, list[str]] = {}
        for conv_id, staff_id in (await session.execute(
                select(ChatParticipant.conversation_id, ChatParticipant.staff_id)
                .where(among(ChatParticipant.conversation_id, write_ids, pg)).order_by(ChatParticipant.id))).all():
            participants.setdefault(conv_id, []).append(staff_id)
        # 3. The next seq of each conversation, and what a visitor's or an agent's message changes (as `_append`).
        at = now()
        when = literal(at, UTCDateTime())
        from_visitor = [batch[i].conversation_id for i in writes if not batch[i].actor.is_staff_side]
        by_visitor = among(Conversation.id, from_visitor, pg) if from_visitor else false()
        seqs = dict((await session.execute(
            update(Conversation).where(among(Conversation.id, write_ids, pg)).values(
                last_seq=Conversation.last_seq + 1, updated_at=at, last_message_at=at,
                waiting_since=case((by_visitor, func.coalesce(Conversation.waiting_since, when)), else_=None),
                visitor_read_seq=case((by_visitor, Conversation.last_seq + 1), else_=Conversation.visitor_read_seq),
                agent_read_seq=case((by_visitor, Conversation.agent_read_seq), else_=Conversation.last_seq + 1),
                first_reply_at=case((by_visitor, Conversation.first_reply_at),
                                    else_=func.coalesce(Conversation.first_reply_at, when)))
            .returning(Conversation.id, Conversation.last_seq)
            .execution_options(synchronize_session=False))).all())
        # 4. The messages, in one multi-row INSERT.
        rows = []
        for i in writes:
            p, conv = batch[i], convs[batch[i].conversation_id]
            rows.append({"id": new_id(), "merchant_id": conv.merchant_id, "conversation_id": conv.id,
                         "seq": seqs[conv.id], "client_msg_id": p.client_msg_id,
                         "sender_type": p.actor.sender_type, "sender_id": p.actor.sender_id,
                         "sender_name": p.actor.name, "text": p.text, "attachment": None, "via": "chat",
                         "card": None, "private": False, "mentions": None, "created_at": at})
        if pg:
            await session.execute(insert_unnest(rows, at))
        else:  # RETURNING makes SQLAlchemy send one multi-row INSERT ("insertmanyvalues"), not one per row
            await session.execute(insert(ChatMessage).returning(ChatMessage.seq), rows)
    events = []
    for i, row in zip(writes, rows):
        message = SimpleNamespace(**row)  # what message_frame and ack_of read of a ChatMessage
        conv = convs[row["conversation_id"]]
        event = Event(topics_for_message(conv.id, conv.visitor_id, conv.assignee_id, conv.merchant_id,
                                         participants.get(conv.id, [])),
                      message_frame(message), stream=conv.id, seq=message.seq)  # type: ignore[arg-type]
        events.append(event)
        results[i] = Sent(ack_of(message), message, Outcome([event]))  # type: ignore[arg-type]
    return results, events


# On PostgreSQL a batch's lists travel as arrays, one parameter each: psycopg parses in Python any
# statement over 4 KiB or 64 parameters, every time, and for a multi-row VALUES that parse cost
# more than everything else in the batch together.
UNNESTED = ("id", "merchant_id", "conversation_id", "seq", "client_msg_id", "sender_type", "sender_id",
            "sender_name", "text")


def among(column: Any, values: Any, pg: bool) -> Any:
    """column IN values: `= ANY(array)` on PostgreSQL (one parameter), IN (…) elsewhere."""
    if pg:
        return column == any_(bindparam(None, list(values), type_=ARRAY(String)))
    return column.in_(values)


def insert_unnest(rows: list[dict], at: Any) -> Any:
    """INSERT … SELECT FROM unnest(one array per column): a short statement whatever the number of rows."""
    arrays = [bindparam(None, [r[c] for r in rows], type_=ARRAY(Integer if c == "seq" else String))
              for c in UNNESTED]
    table = func.unnest(*arrays).table_valued(*UNNESTED).render_derived()
    return insert(ChatMessage).from_select(
        [*UNNESTED, "via", "private", "created_at"],
        select(*(table.c[c] for c in UNNESTED), literal("chat"), literal(False), literal(at, UTCDateTime())))


_writer: MessageWriter | None = None


def get_writer() -> MessageWriter:
    """The writer of the running event loop (tests run several loops, one after another)."""
    global _writer
    if _writer is None or _writer.loop is not asyncio.get_running_loop():
        _writer = MessageWriter()
    return _writer
