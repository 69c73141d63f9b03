"""The batched message writer: many senders, few transactions, and every rule of a single send kept."""
import asyncio

import pytest

from sqlalchemy import event, func, select

from shopdesk.accounts.actions import do_create_staff, merchant_by_slug
from shopdesk.chat.actions import (ChatActor, do_add_participant, do_end, do_send_message, do_set_presence, do_start_widget_session,
                                   resolve_actor)
from shopdesk.chat.models import ChatMessage, Conversation
from shopdesk.chat.writer import get_writer
from shopdesk.core.db import get_engine, sessionmaker, transaction
from shopdesk.core.pubsub import get_broker


class Listener:
    """A subscriber that keeps what it is given, and the acks heard before it, in one timeline."""

    def __init__(self, timeline: list) -> None:
        self.id, self.timeline = "listener", timeline

    def deliver(self, ev) -> None:
        self.timeline.append(("event", ev.stream, ev.seq))

    def drop(self, code: int, reason: str) -> None:
        raise AssertionError(f"dropped: {reason}")


async def online_agent(shop, capacity: int = 10, name: str = "小王") -> ChatActor:
    async with transaction() as session:
        merchant = await merchant_by_slug(session, shop.slug)
        staff = await do_create_staff(session, merchant=merchant, email=f"{name}{id(shop)}@{shop.slug}.test",
                                      password="agent-pass-1", role="agent", name=name)
        agent = ChatActor("staff", merchant.id, staff_id=staff.id, role="agent", name=name)
    await do_set_presence(agent, status="online", capacity=capacity)
    return agent


async def visitor_with_chat(shop) -> tuple[ChatActor, str]:
    w = await do_start_widget_session(store="main", merchant=shop.slug)
    async with sessionmaker()() as s:
        visitor = await resolve_actor(s, w["token"])
    sent = await do_send_message(visitor, client_msg_id="hello", text="在吗？")
    return visitor, sent.ack["conversation_id"]


class StatementCounter:
    def __init__(self) -> None:
        self.commits = 0

    def __enter__(self):
        event.listen(get_engine().sync_engine, "commit", self._commit)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(get_engine().sync_engine, "commit", self._commit)

    def _commit(self, conn) -> None:
        self.commits += 1


async def test_concurrent_senders_share_transactions_and_each_conversation_stays_in_order(shop):
    # given an agent online and 8 visitors, each in a chat assigned to the agent
    agent = await online_agent(shop)
    chats = [await visitor_with_chat(shop) for _ in range(8)]
    timeline: list = []
    listener = Listener(timeline)
    get_broker().subscribe(listener, *(f"c:{conv_id}" for _, conv_id in chats))
    writer = get_writer()

    async def talk(visitor: ChatActor, conv_id: str) -> list:
        out = []
        for i in range(3):  # one after another, as a socket sends them
            out.append(await writer.send(visitor, client_msg_id=f"v{i}", text=f"第{i}条", conversation_id=conv_id,
                                         explicit=i % 2 == 0,
                                         on_stored=lambda ack: timeline.append(("ack", ack["conversation_id"],
                                                                                ack["seq"]))))
        out.append(await writer.send(agent, client_msg_id=f"a-{conv_id}", text="您好，请讲",
                                     conversation_id=conv_id, explicit=True))
        return out

    # when all of them talk at once
    with StatementCounter() as counter:
        results = await asyncio.gather(*(talk(v, c) for v, c in chats))
    get_broker().unsubscribe(listener)

    # then 32 messages were stored in far fewer transactions than messages
    sent = [s for per_chat in results for s in per_chat]
    assert all(s is not None and s.message is not None for s in sent)
    assert counter.commits < 32 / 2, counter.commits
    async with transaction() as session:
        for (_visitor, conv_id), per_chat in zip(chats, results):
            # each conversation's seqs follow on from the first message, in the order they were sent
            assert [s.ack["seq"] for s in per_chat] == [2, 3, 4, 5]
            rows = (await session.execute(select(ChatMessage.seq, ChatMessage.sender_type, ChatMessage.text)
                                          .where(ChatMessage.conversation_id == conv_id)
                                          .order_by(ChatMessage.seq))).all()
            assert [(r.seq, r.sender_type, r.text) for r in rows] == [
                (1, "visitor", "在吗？"), (2, "visitor", "第0条"), (3, "visitor", "第1条"), (4, "visitor", "第2条"),
                (5, "agent", "您好，请讲")]
            conv = await session.get(Conversation, conv_id)
            # the agent spoke last: nobody is waiting, both sides have read up to their own words
            assert (conv.last_seq, conv.visitor_read_seq, conv.agent_read_seq) == (5, 4, 5)
            assert conv.waiting_since is None and conv.first_reply_at is not None
            # a visitor's ack came before anyone heard that message
            for seq in (2, 3, 4):
                assert timeline.index(("ack", conv_id, seq)) < timeline.index(("event", conv_id, seq))
            assert [s for kind, c, s in timeline if kind == "event" and c == conv_id] == [2, 3, 4, 5]


async def test_a_resend_is_stored_once_even_within_one_batch(shop):
    await online_agent(shop)
    visitor, conv_id = await visitor_with_chat(shop)
    writer = get_writer()
    # when the same client id is sent three times at once, and once more later
    first = await asyncio.gather(*(writer.send(visitor, client_msg_id="dup", text="重发", conversation_id=conv_id,
                                               explicit=False) for _ in range(3)))
    again = await writer.send(visitor, client_msg_id="dup", text="重发", conversation_id=conv_id, explicit=True)
    # then one message exists, and every answer carries its seq
    assert sum(1 for s in first if s.message is not None) == 1
    assert {s.ack["seq"] for s in [*first, again]} == {2} and again.message is None
    async with transaction() as session:
        n = (await session.execute(select(func.count()).select_from(ChatMessage)
                                   .where(ChatMessage.conversation_id == conv_id))).scalar_one()
    assert n == 2


async def test_what_the_batch_cannot_take_goes_back_to_the_full_path(shop, other_shop):
    # given an ended chat, someone else's chat, and another merchant's visitor
    agent = await online_agent(shop)
    visitor, conv_id = await visitor_with_chat(shop)
    other_visitor, other_conv = await visitor_with_chat(shop)
    ended_visitor, ended_conv = await visitor_with_chat(shop)
    await do_end(agent, ended_conv)
    stranger = (await visitor_with_chat(other_shop))[0]
    writer = get_writer()
    # when they are sent through the writer
    answers = await asyncio.gather(
        writer.send(visitor, client_msg_id="x1", text="别人的会话", conversation_id=other_conv, explicit=True),
        writer.send(ended_visitor, client_msg_id="x2", text="已结束", conversation_id=ended_conv, explicit=False),
        writer.send(stranger, client_msg_id="x3", text="跨商户", conversation_id=conv_id, explicit=True),
        writer.send(visitor, client_msg_id="x4", text="正常", conversation_id=conv_id, explicit=True))
    # then only the ordinary one was stored; each other comes back for do_send_message to answer
    assert answers[:3] == [None, None, None]
    assert answers[3].ack["seq"] == 2
    async with transaction() as session:
        texts = set((await session.execute(select(ChatMessage.text))).scalars())
    assert not texts & {"别人的会话", "已结束", "跨商户"}


async def test_an_invited_colleague_gets_batched_messages_and_the_fields_are_stored(shop):
    # given a chat with a colleague invited into it
    agent = await online_agent(shop)
    colleague = await online_agent(shop, name="小李")
    visitor, conv_id = await visitor_with_chat(shop)
    await do_add_participant(agent, conv_id, agent_id=colleague.staff_id)
    # when the visitor writes through the writer
    sent = await get_writer().send(visitor, client_msg_id="q", text="<b>还在吗</b>", conversation_id=conv_id,
                                   explicit=False)
    # then the message goes to the visitor, the chat, its agent and the colleague
    assert set(sent.outcome.events[0].topics) == {f"v:{visitor.visitor_id}", f"c:{conv_id}", f"s:{agent.staff_id}",
                                                  f"s:{colleague.staff_id}"}
    # and what is stored is what a single send stores
    async with transaction() as session:
        m = (await session.execute(select(ChatMessage).where(ChatMessage.conversation_id == conv_id,
                                                             ChatMessage.client_msg_id == "q"))).scalar_one()
        conv = await session.get(Conversation, conv_id)
    assert (m.text, m.sender_type, m.sender_id, m.sender_name, m.via, m.private, m.client_msg_id) == (
        "<b>还在吗</b>", "visitor", visitor.visitor_id, visitor.name, "chat", False, "q")
    assert m.id == sent.ack["message_id"] and m.seq == sent.ack["seq"] == conv.last_seq
    assert m.created_at is not None and conv.waiting_since is not None and conv.visitor_read_seq == m.seq


async def test_a_failed_batch_goes_the_slow_way_or_reports_and_the_writer_goes_on(shop, monkeypatch):
    import psycopg

    from shopdesk.chat import writer as writer_module

    await online_agent(shop)
    visitor, conv_id = await visitor_with_chat(shop)
    writer = get_writer()
    real = writer_module.store_batch

    async def raced(batch):
        raise psycopg.IntegrityError("duplicate key")

    async def broken(batch):
        raise RuntimeError("database gone")

    # a unique violation (a slow-path send raced the batch) hands every message back
    monkeypatch.setattr(writer_module, "store_batch", raced)
    assert await writer.send(visitor, client_msg_id="r", text="一", conversation_id=conv_id, explicit=True) is None
    # any other failure reaches the sender
    monkeypatch.setattr(writer_module, "store_batch", broken)
    with pytest.raises(RuntimeError):
        await writer.send(visitor, client_msg_id="b", text="二", conversation_id=conv_id, explicit=True)
    # and the writer still stores the next one
    monkeypatch.setattr(writer_module, "store_batch", real)
    sent = await writer.send(visitor, client_msg_id="c", text="三", conversation_id=conv_id, explicit=True)
    assert sent.ack["seq"] == 2
