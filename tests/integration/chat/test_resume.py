"""A client that reconnects catches up from its last sequence number, then gets live messages, each once."""
from tests.integration.chat.conftest import add_agent, auth, presence, widget


async def test_resume_after_reconnect_sends_what_was_missed_in_order_then_live(chat_server, api, chat_shop, sockets):
    # given a conversation with three messages, and a shopper who then drops off
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    desk = await sockets(chat_server, agent.token, "agent")
    session = await widget(api, chat_shop)
    tab = await sockets(chat_server, session["token"], "tab")
    for i in range(1, 4):
        await tab.send(type="message.send", client_msg_id=f"s{i}", text=f"消息 {i}")
        ack = await tab.expect("message.ack")
    conv_id = ack["conversation_id"]
    await tab.close()

    # when the agent writes four more while the shopper is away
    for i in range(4, 8):
        await desk.send(type="message.send", client_msg_id=f"a{i}", conversation_id=conv_id, text=f"回复 {i}")
        assert (await desk.expect("message.ack"))["seq"] == i

    # and the shopper reconnects (hello names the open conversation) and resumes after seq 3
    back = await sockets(chat_server, session["token"], "back")
    assert back.hello["conversation"]["id"] == conv_id and back.hello["conversation"]["last_seq"] == 7
    await back.send(type="resume", conversation_id=conv_id, after_seq=3)
    # then 4..7 arrive in order
    replay = [(await back.expect("message.created"))["message"] for _ in range(4)]
    assert [m["seq"] for m in replay] == [4, 5, 6, 7]
    assert [m["text"] for m in replay] == ["回复 4", "回复 5", "回复 6", "回复 7"]
    # and then live ones, with nothing repeated
    await desk.send(type="message.send", client_msg_id="a8", conversation_id=conv_id, text="还在吗")
    assert (await back.expect("message.created"))["message"]["seq"] == 8
    await back.send(type="resume", conversation_id=conv_id, after_seq=6)  # a client that lost its place
    assert not [f for f in await back.drain(0.7) if f["type"] == "message.created"]
    seqs = [f["message"]["seq"] for f in back.log if f["type"] == "message.created"]
    assert seqs == [4, 5, 6, 7, 8]


async def test_an_agent_opening_a_chat_replays_it_and_watches_it(chat_server, api, chat_shop, sockets):
    # given a chat held by one agent, and a supervisor who is not in it
    holder = await add_agent(chat_shop, api)
    await presence(api, holder)
    session = await widget(api, chat_shop)
    tab = await sockets(chat_server, session["token"], "tab")
    await tab.send(type="message.send", client_msg_id="x1", text="一")
    conv_id = (await tab.expect("message.ack"))["conversation_id"]
    await tab.send(type="message.send", client_msg_id="x2", text="二", conversation_id=conv_id)
    await tab.expect("message.ack")
    watcher = await sockets(chat_server, chat_shop.admin_token, "supervisor")

    # when the supervisor resumes it from 0
    await watcher.send(type="resume", conversation_id=conv_id, after_seq=0)
    # then they get the history in order, and later messages live (they watch it now)
    assert [(await watcher.expect("message.created"))["message"]["seq"] for _ in range(2)] == [1, 2]
    await tab.send(type="message.send", client_msg_id="x3", text="三", conversation_id=conv_id)
    assert (await watcher.expect("message.created"))["message"]["text"] == "三"
    # and after unwatch they no longer do
    await watcher.send(type="unwatch", conversation_id=conv_id)
    await watcher.send(type="ping")
    await watcher.expect("pong")
    await tab.send(type="message.send", client_msg_id="x4", text="四", conversation_id=conv_id)
    await tab.expect("message.ack")
    assert not [f for f in await watcher.drain(0.5) if f["type"] == "message.created"]

    # and the HTTP history pages by after_seq without gaps
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", params={"after_seq": 1, "limit": 2},
                      headers=auth(holder.token))
    body = r.json()
    assert [m["seq"] for m in body["items"]] == [2, 3] and body["next_after_seq"] == 3
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", params={"after_seq": 3}, headers=auth(holder.token))
    assert [m["seq"] for m in r.json()["items"]] == [4] and r.json()["next_after_seq"] is None
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", params={"before_seq": 4, "limit": 2},
                      headers=auth(holder.token))
    assert [m["seq"] for m in r.json()["items"]] == [2, 3]
