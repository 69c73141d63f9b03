"""Two server processes sharing the chat through Redis: what is sent on one node arrives on the other."""
import httpx
import pytest

from tests.factories import make_shop
from tests.integration.chat.conftest import add_agent, auth, presence, widget

pytestmark = pytest.mark.redis


async def test_messages_and_queue_updates_cross_nodes(redis_nodes, sockets):
    node_a, node_b = redis_nodes
    async with httpx.AsyncClient(base_url=node_a.url, timeout=30) as api_a, \
            httpx.AsyncClient(base_url=node_b.url, timeout=30) as api_b:
        # given a shop whose only agent (cap 1) is connected to node B, shoppers on node A
        shop = await make_shop(api_a)
        agent = await add_agent(shop, api_b, "远端客服")
        await presence(api_b, agent, "online", 1)
        desk = await sockets(node_b, agent.token, "agent@B")
        first = await widget(api_a, shop)
        tab = await sockets(node_a, first["token"], "shopper@A")
        second_tab = await sockets(node_b, first["token"], "shopper@B")  # the same shopper's other tab, on B

        # when the shopper writes on node A
        await tab.send(type="message.send", client_msg_id="x1", text="跨节点你好")
        ack = await tab.expect("message.ack")
        conv_id = ack["conversation_id"]
        # then the agent on node B and the shopper's tab on node B receive it
        assert (await desk.expect("message.created"))["message"]["text"] == "跨节点你好"
        assert (await second_tab.expect("message.created"))["message"]["seq"] == 1
        # when the agent answers on node B, then node A's socket receives it, in order
        for i in range(2, 12):
            await desk.send(type="message.send", client_msg_id=f"r{i}", conversation_id=conv_id, text=f"回复 {i}")
            await desk.expect("message.ack")
        seqs = [(await tab.expect("message.created"))["message"]["seq"] for _ in range(11)]
        assert seqs == list(range(1, 12))
        # and typing crosses nodes too
        await desk.send(type="typing", conversation_id=conv_id)
        assert (await tab.expect("typing"))["sender"]["id"] == agent.staff_id

        # when a second shopper on node A has to queue, and the agent on B ends the first chat over B's API
        other = await widget(api_a, shop)
        waiting = await sockets(node_a, other["token"], "waiting@A")
        await waiting.send(type="message.send", client_msg_id="w1", text="排队中")
        queued = await waiting.expect_where("conversation.updated", lambda f: f["conversation"]["status"] == "queued")
        assert queued["conversation"]["queue_position"] == 1
        r = await api_b.post(f"/api/v1/conversations/{conv_id}/end", headers=auth(agent.token))
        assert r.status_code == 200, r.text
        # then the queued shopper on node A hears at once that the agent has them
        assigned = await waiting.expect_where("conversation.updated",
                                              lambda f: f["conversation"]["status"] == "assigned", timeout=2)
        assert assigned["conversation"]["assignee"]["id"] == agent.staff_id
        assert (await tab.expect_where("conversation.updated",
                                       lambda f: f["conversation"]["status"] == "ended"))["conversation"]["id"] == conv_id


async def test_a_node_that_loses_redis_closes_its_sockets_and_clients_catch_up(redis_nodes, sockets):
    import redis.asyncio as redis

    from tests.integration.chat.conftest import REDIS_URL

    node_a, node_b = redis_nodes
    async with httpx.AsyncClient(base_url=node_a.url, timeout=30) as api_a:
        # given a shopper on node A and their agent on node B
        shop = await make_shop(api_a)
        agent = await add_agent(shop, api_a)
        await presence(api_a, agent)
        desk = await sockets(node_b, agent.token, "agent@B")
        session = await widget(api_a, shop)
        tab = await sockets(node_a, session["token"], "shopper@A")
        await tab.send(type="message.send", client_msg_id="k1", text="一")
        conv_id = (await tab.expect("message.ack"))["conversation_id"]
        assert (await desk.expect("message.created"))["message"]["seq"] == 1

        # when node B's Redis subscription is cut
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            killed = 0
            for c in await client.client_list():
                if c.get("name") == f"shopdesk-rt-{node_b.proc.pid}" and "P" in c.get("flags", ""):
                    killed += await client.client_kill_filter(_id=c["id"])
            assert killed == 1
        finally:
            await client.aclose()
        # then B closes its sockets with 1012 (service restart) once it has resubscribed
        assert await desk.closed_with(10) == 1012
        # and messages sent meanwhile reach the agent when they reconnect (anywhere) and resume
        await tab.send(type="message.send", client_msg_id="k2", text="二", conversation_id=conv_id)
        await tab.expect("message.ack")
        back = await sockets(node_b, agent.token, "agent@B-again")
        await back.send(type="resume", conversation_id=conv_id, after_seq=1)
        assert (await back.expect("message.created"))["message"]["text"] == "二"
        # and live delivery across nodes works again
        await tab.send(type="message.send", client_msg_id="k3", text="三", conversation_id=conv_id)
        assert (await back.expect("message.created"))["message"]["seq"] == 3


async def test_a_killed_node_loses_no_message(redis_nodes, sockets):
    import signal

    from tests.integration.chat.conftest import REDIS_URL, Server

    node_a, _ = redis_nodes
    node_c = Server("node-c", SHOPDESK_REDIS_URL=REDIS_URL)
    try:
        async with httpx.AsyncClient(base_url=node_a.url, timeout=30) as api_a:
            # given a shopper on node A and an agent on node C, mid-conversation
            shop = await make_shop(api_a)
            agent = await add_agent(shop, api_a)
            await presence(api_a, agent)
            desk = await sockets(node_c, agent.token, "agent@C")
            session = await widget(api_a, shop)
            tab = await sockets(node_a, session["token"], "shopper@A")
            await tab.send(type="message.send", client_msg_id="z1", text="1")
            conv_id = (await tab.expect("message.ack"))["conversation_id"]
            await desk.expect("message.created")
            # when node C is killed outright, and the shopper keeps writing
            node_c.proc.send_signal(signal.SIGKILL)
            node_c.proc.wait(10)
            for i in range(2, 7):
                await tab.send(type="message.send", client_msg_id=f"z{i}", text=str(i), conversation_id=conv_id)
                assert (await tab.expect("message.ack"))["seq"] == i
            # then the agent reconnects to node A, resumes from what they had, and has every message once, in order
            back = await sockets(node_a, agent.token, "agent@A")
            await back.send(type="resume", conversation_id=conv_id, after_seq=1)
            got = [(await back.expect("message.created"))["message"]["seq"] for _ in range(5)]
            await tab.send(type="message.send", client_msg_id="z7", text="7", conversation_id=conv_id)
            got.append((await back.expect("message.created"))["message"]["seq"])
            assert got == [2, 3, 4, 5, 6, 7]
            assert not [f for f in await back.drain(0.5) if f["type"] == "message.created"]
    finally:
        if node_c.proc.poll() is None:
            node_c.stop()
