"""The socket writer: a lost or overtaken event is filled from the database; nothing goes out twice."""
import asyncio
import json

from shopdesk.chat.actions import (ChatActor, do_send_message, do_start_widget_session, message_frame,
                                   resolve_actor)
from shopdesk.chat.models import ChatMessage
from shopdesk.chat.socket import Connection
from shopdesk.core.db import sessionmaker, transaction
from shopdesk.core.pubsub import Event, LocalBroker
from sqlalchemy import select


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))


async def conversation_with(shop, n: int) -> tuple[str, list[str]]:
    w = await do_start_widget_session(store="main", merchant=shop.slug)
    async with sessionmaker()() as s:
        visitor: ChatActor = await resolve_actor(s, w["token"])
    conv_id = None
    for i in range(n):
        sent = await do_send_message(visitor, client_msg_id=f"m{i}", text=f"第 {i + 1} 条", conversation_id=conv_id)
        conv_id = sent.ack["conversation_id"]
    async with transaction() as session:
        rows = (await session.execute(select(ChatMessage).where(ChatMessage.conversation_id == conv_id)
                                      .order_by(ChatMessage.seq))).scalars().all()
        return conv_id, [message_frame(m) for m in rows]


async def run_writer(conn: Connection, items: list) -> list[int]:
    for item in items:
        conn.queue.put_nowait(item)
    conn.queue.put_nowait(("text", '{"type":"pong"}'))
    task = asyncio.create_task(conn.write_loop())
    for _ in range(200):
        if conn.ws.sent and conn.ws.sent[-1]["type"] == "pong":
            break
        await asyncio.sleep(0.01)
    task.cancel()
    return [f["message"]["seq"] for f in conn.ws.sent if f["type"] == "message.created"]


async def test_a_gap_is_filled_from_the_database_and_late_events_are_dropped(shop):
    # given a conversation with six stored messages
    conv_id, frames = await conversation_with(shop, 6)
    conn = Connection(FakeSocket(), ChatActor("staff", "m"))
    conn.holding = False  # a socket open for a while: live events go out at once

    def ev(seq):
        return Event(("x",), frames[seq - 1], stream=conv_id, seq=seq)

    # when live events arrive as 1, 2, then 5 (3 and 4 lost), then the late 3 and 4, then 6
    seqs = await run_writer(conn, [ev(1), ev(2), ev(5), ev(3), ev(4), ev(6)])
    # then the socket sent 1..6 once each, in order
    assert seqs == [1, 2, 3, 4, 5, 6]


async def test_live_messages_wait_for_the_resume_of_a_fresh_socket(shop):
    # given a socket just opened: 4 and 5 arrive live before the client's resume
    conv_id, frames = await conversation_with(shop, 6)
    conn = Connection(FakeSocket(), ChatActor("visitor", "m"))

    def ev(seq):
        return Event(("x",), frames[seq - 1], stream=conv_id, seq=seq)

    # when the client resumes after 2, and then 6 and a repeated 5 arrive live
    seqs = await run_writer(conn, [ev(4), ev(5), ("resume", conv_id, 2), ev(6), ev(5)])
    # then the wire carries 3..6 once each and in order: 4 and 5 waited for the resume
    assert seqs == [3, 4, 5, 6]


async def test_without_a_resume_held_messages_go_out_in_order_after_the_grace(shop):
    conv_id, frames = await conversation_with(shop, 3)
    conn = Connection(FakeSocket(), ChatActor("visitor", "m"))
    conn.start_grace(0.1)

    def ev(seq):
        return Event(("x",), frames[seq - 1], stream=conv_id, seq=seq)

    # when 2 and then 1 arrive live on a fresh socket, and the client never resumes
    for item in (ev(2), ev(1)):
        conn.queue.put_nowait(item)
    task = asyncio.create_task(conn.write_loop())
    await asyncio.sleep(0.05)
    assert conn.ws.sent == []  # still waiting for a resume
    for _ in range(100):
        if len(conn.ws.sent) >= 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    # then after the grace they go out once each, in seq order
    assert [f["message"]["seq"] for f in conn.ws.sent] == [1, 2]


async def test_resume_after_live_messages_sends_only_what_is_missing(shop):
    # given a socket open for a while that already sent 4 and 5 live before the client's resume arrived
    conv_id, frames = await conversation_with(shop, 6)
    conn = Connection(FakeSocket(), ChatActor("visitor", "m"))
    conn.holding = False

    def ev(seq):
        return Event(("x",), frames[seq - 1], stream=conv_id, seq=seq)

    # when the client resumes after 2, and then 6 arrives live
    seqs = await run_writer(conn, [ev(4), ev(5), ("resume", conv_id, 2), ev(6), ev(5)])
    # then 3 is filled in, nothing is repeated, and 6 follows
    assert seqs == [4, 5, 3, 6]
    assert sorted(seqs) == [3, 4, 5, 6] and len(set(seqs)) == len(seqs)


async def test_the_broker_sends_one_frame_per_socket_whatever_the_overlap():
    broker = LocalBroker()

    class Sub:
        def __init__(self, name):
            self.id, self.got = name, []

        def deliver(self, event):
            self.got.append(event.frame)

        def drop(self, code, reason):
            pass

    a, b, c = Sub("a"), Sub("b"), Sub("c")
    broker.subscribe(a, "v:1", "c:9")
    broker.subscribe(b, "s:2", "c:9")
    broker.subscribe(c, "v:1")
    frame = '{"type":"message.created"}'
    assert broker.dispatch(Event(("v:1", "c:9", "s:2"), frame, skip="c")) == 2
    assert a.got == [frame] and b.got == [frame] and c.got == []
    assert a.got[0] is b.got[0]  # encoded once, the same text for everyone
    broker.unsubscribe(a)
    assert broker.dispatch(Event(("v:1",), frame)) == 1 and broker.subscriber_count == 2
    # the Redis envelope round-trips any frame text
    node, back = Event.decode(Event(("v:1", "c:9"), '{"t":"a\x1fb"}', "conv", 7, "s1").encode("n1"))
    assert node == "n1" and back == Event(("v:1", "c:9"), '{"t":"a\x1fb"}', "conv", 7, "s1")
