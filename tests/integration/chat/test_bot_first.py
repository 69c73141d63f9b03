"""Bot first (issue 3): the bot answers a new chat before routing, and hands off to a person — over real sockets."""
import pytest

from shopdesk.chat import bot
from tests.integration.chat.conftest import ROOT, Server, add_agent, auth, presence, widget
from tests.factories import make_shop


@pytest.fixture(scope="module")
def bot_server():
    """A server whose answerer is tests/integration/chat/fake_bot.py, cut off after 1 s."""
    server = Server("bot", SHOPDESK_CHAT_BOT="tests.integration.chat.fake_bot:answer",
                    SHOPDESK_CHAT_BOT_TIMEOUT_S="1", PYTHONPATH=str(ROOT))
    yield server
    server.stop()


async def bot_first(api, shop, on: bool = True, **more) -> dict:
    r = await api.put("/api/v1/chat/settings", json={"bot_first": on, **more}, headers=auth(shop.admin_token))
    assert r.status_code == 200, r.text
    return r.json()


async def open_chat(server, api, shop, sockets, text: str, name: str = "shopper"):
    """A shopper's first message; returns (socket, ack, the first conversation.updated)."""
    session = await widget(api, shop)
    tab = await sockets(server, session["token"], name)
    await tab.send(type="message.send", client_msg_id=f"{name}-1", text=text)
    ack = await tab.expect("message.ack")
    update = await tab.expect("conversation.updated")
    return tab, ack, update["conversation"]


def from_bot(f: dict) -> bool:
    return f["message"]["sender"]["type"] == "bot"


async def test_settings_default_off_and_only_managers_change_them_with_field_errors(api, chat_shop):
    # given a new merchant
    # then bot_first is off, with the default bot name
    r = await api.get("/api/v1/chat/settings", headers=auth(chat_shop.agent_token))
    assert r.json() == {"idle_close_minutes": 30, "bot_first": False, "bot_name": "智能助手"}
    # when an agent tries to turn it on → 403; a non-boolean or an empty name → 422 naming the field
    r = await api.put("/api/v1/chat/settings", json={"bot_first": True}, headers=auth(chat_shop.agent_token))
    assert r.status_code == 403
    for body, field in (({"bot_first": "yes"}, "bot_first"), ({"bot_first": 1}, "bot_first"),
                        ({"bot_name": ""}, "bot_name"), ({"bot_name": "   "}, "bot_name"),
                        ({"bot_first": True, "bot_nmae": "x"}, "bot_nmae")):
        r = await api.put("/api/v1/chat/settings", json=body, headers=auth(chat_shop.admin_token))
        assert (r.status_code, r.json()["field"]) == (422, field), (body, r.text)
    # when the admin turns it on and names the bot
    assert await bot_first(api, chat_shop, bot_name="小店助手") == {"idle_close_minutes": 30, "bot_first": True,
                                                                 "bot_name": "小店助手"}
    # then a later change of another setting keeps it
    r = await api.put("/api/v1/chat/settings", json={"idle_close_minutes": 5}, headers=auth(chat_shop.admin_token))
    assert r.json() == {"idle_close_minutes": 5, "bot_first": True, "bot_name": "小店助手"}

    # and another merchant neither sees nor changes it
    other = await make_shop(api)
    r = await api.get("/api/v1/chat/settings", headers=auth(other.admin_token))
    assert r.json()["bot_first"] is False
    await bot_first(api, other, on=False, bot_name="别家")
    r = await api.get("/api/v1/chat/settings", headers=auth(chat_shop.admin_token))
    assert r.json() == {"idle_close_minutes": 5, "bot_first": True, "bot_name": "小店助手"}
    # and the shopper's widget token and a merchant key cannot read or write them
    session = await widget(api, chat_shop)
    assert (await api.get("/api/v1/chat/settings", headers=auth(session["token"]))).status_code == 404
    r = await api.put("/api/v1/chat/settings", json={"bot_first": False}, headers=auth(chat_shop.key))
    assert r.status_code == 404


async def test_bot_first_off_routes_as_before(chat_server, api, chat_shop, sockets):
    # given an agent online and bot_first left off
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    # when a shopper writes
    tab, ack, conv = await open_chat(chat_server, api, chat_shop, sockets, "你好")
    # then the chat is assigned at once and no bot speaks
    assert (conv["status"], conv["assignee"]["id"], ack["seq"]) == ("assigned", agent.staff_id, 1)
    assert not [f for f in await tab.drain(1.0) if f["type"] == "message.created" and from_bot(f)]


async def test_builtin_bot_greets_then_hands_off_to_an_online_agent(chat_server, api, chat_shop, sockets):
    # given bot_first on, no answerer registered in the server, and an agent online with the console open
    await bot_first(api, chat_shop)
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    console = await sockets(chat_server, agent.token, "console")
    # when a shopper writes
    tab, ack, conv = await open_chat(chat_server, api, chat_shop, sockets, "你好")
    # then the chat starts with the bot, unassigned
    assert (conv["status"], conv["assignee"], ack["seq"]) == ("bot", None, 1)
    # and the bot's greeting is the next message, then the chat is routed to the agent
    reply = await tab.expect_where("message.created", from_bot)
    assert reply["message"]["seq"] == 2 and reply["message"]["sender"]["name"] == "智能助手"
    assert reply["message"]["text"] == bot.GREETING_TEXT
    routed = await tab.expect_where("conversation.updated", lambda f: f["conversation"]["status"] != "bot")
    assert routed["conversation"]["status"] == "assigned"
    assert routed["conversation"]["assignee"]["id"] == agent.staff_id
    # and the agent's console saw the bot chat, the greeting and the assignment
    await console.expect_where("conversation.updated", lambda f: f["conversation"]["status"] == "bot")
    assert (await console.expect_where("message.created", from_bot))["message"]["seq"] == 2
    await console.expect_where("conversation.updated", lambda f: f["conversation"]["status"] == "assigned")


async def test_registered_answerer_replies_and_keeps_the_chat(bot_server, api, chat_shop, sockets):
    # given bot_first on, the fake answerer in the server and an agent online
    await bot_first(api, chat_shop, bot_name="小助手")
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    # when a shopper writes twice
    tab, ack, conv = await open_chat(bot_server, api, chat_shop, sockets, "发货了吗")
    assert conv["status"] == "bot"
    first = await tab.expect_where("message.created", from_bot)
    await tab.send(type="message.send", client_msg_id="shopper-2", text="谢谢")
    assert (await tab.expect("message.ack"))["seq"] == 3
    second = await tab.expect_where("message.created", from_bot)
    # then the fake bot's answers arrive with the next seqs, under the merchant's bot name, with the history
    assert first["message"]["seq"] == 2 and first["message"]["sender"]["name"] == "小助手"
    assert first["message"]["text"] == "fake bot: 发货了吗 | main | 1:visitor"
    assert second["message"]["seq"] == 4
    assert second["message"]["text"] == "fake bot: 谢谢 | main | 1:visitor 2:bot 3:visitor"
    # and the chat stays with the bot: agents see it in their list, unassigned
    r = await api.get("/api/v1/conversations", params={"status": "bot"}, headers=auth(agent.token))
    item = next(c for c in r.json()["items"] if c["id"] == ack["conversation_id"])
    assert (item["status"], item["assignee"], item["last_seq"]) == ("bot", None, 4)
    r = await api.get(f"/api/v1/conversations/{ack['conversation_id']}/messages", headers=auth(agent.token))
    assert [m["sender"]["type"] for m in r.json()["items"]] == ["visitor", "bot", "visitor", "bot"]

    # when the bot shows a product, and one that does not exist
    await tab.send(type="message.send", client_msg_id="shopper-3", text="耳机还有吗")
    card = (await tab.expect_where("message.created", from_bot))["message"]
    await tab.send(type="message.send", client_msg_id="shopper-4", text="ghost")
    ghost = (await tab.expect_where("message.created", from_bot))["message"]
    # then the card is checked against the catalogue and filled in; an unknown one is left out
    assert card["card"] == {"type": "product", "sku": "A", "title": "蓝牙耳机", "price_fen": 10000}
    assert ghost["card"] is None and ghost["text"] == "这件商品不存在"

    # when an agent writes in the bot's chat
    desk = await sockets(bot_server, agent.token, "desk")
    await desk.send(type="message.send", client_msg_id="a1", text="我来帮您", conversation_id=ack["conversation_id"])
    assert (await desk.expect("message.ack"))["seq"] == 9
    # then they take it
    taken = await tab.expect_where("conversation.updated", lambda f: f["conversation"]["status"] == "assigned")
    assert taken["conversation"]["assignee"]["id"] == agent.staff_id
    # and the visitor's next message goes to the agent, not the bot
    await tab.send(type="message.send", client_msg_id="shopper-5", text="好的")
    assert (await tab.expect("message.ack", client_msg_id="shopper-5"))["seq"] == 10
    assert not [f for f in await tab.drain(1.5) if f["type"] == "message.created" and from_bot(f)]


async def test_asking_for_a_person_hands_off_to_an_online_agent(bot_server, api, chat_shop, sockets):
    # given bot_first on with the fake answerer, and an agent online
    await bot_first(api, chat_shop)
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    # when the shopper's first words ask for a person
    tab, ack, conv = await open_chat(bot_server, api, chat_shop, sockets, "转人工")
    # then the bot says so (the answerer is not asked) and the chat is assigned
    reply = await tab.expect_where("message.created", from_bot)
    assert (reply["message"]["seq"], reply["message"]["text"]) == (2, bot.TRANSFER_TEXT)
    routed = await tab.expect_where("conversation.updated", lambda f: f["conversation"]["status"] != "bot")
    assert routed["conversation"]["status"] == "assigned"
    assert routed["conversation"]["assignee"]["id"] == agent.staff_id


async def test_asking_for_a_person_with_nobody_online_leaves_a_message(bot_server, api, chat_shop, sockets):
    # given bot_first on and nobody online
    await bot_first(api, chat_shop)
    agent = await add_agent(chat_shop, api)
    # when the shopper chats with the bot, then asks for a person
    tab, ack, conv = await open_chat(bot_server, api, chat_shop, sockets, "在吗")
    assert (await tab.expect_where("message.created", from_bot))["message"]["seq"] == 2
    await tab.send(type="message.send", client_msg_id="shopper-2", text="我要找人工客服")
    await tab.expect("message.ack")
    # then the bot asks them to leave a message and the chat becomes 留言 (offline)
    reply = await tab.expect_where("message.created", from_bot)
    assert (reply["message"]["seq"], reply["message"]["text"]) == (4, bot.OFFLINE_TEXT)
    routed = await tab.expect_where("conversation.updated", lambda f: f["conversation"]["status"] != "bot")
    assert routed["conversation"]["status"] == "offline"
    r = await api.get("/api/v1/conversations", params={"status": "offline"}, headers=auth(agent.token))
    assert ack["conversation_id"] in [c["id"] for c in r.json()["items"]]


@pytest.mark.parametrize("words", ["boom", "hang", "dunno", "done"])
async def test_an_answerer_that_fails_stalls_gives_up_or_says_so_hands_off(bot_server, api, sockets, words):
    # given bot_first on, an agent online who is full, so a handoff queues
    shop = await make_shop(api)
    await bot_first(api, shop)
    agent = await add_agent(shop, api)
    await presence(api, agent, "online", 1)
    await open_chat(bot_server, api, shop, sockets, "转人工", name="first")  # takes the agent's one seat
    # when the answerer raises, hangs past the 1 s limit, returns None, or hands off itself
    tab, ack, conv = await open_chat(bot_server, api, shop, sockets, words)
    assert conv["status"] == "bot"
    # then a person takes over: the bot's message, then the queue with a position
    reply = await tab.expect_where("message.created", from_bot, timeout=5)
    expected = "那我请同事来帮您。" if words == "done" else bot.GREETING_TEXT
    assert (reply["message"]["seq"], reply["message"]["text"]) == (2, expected)
    routed = await tab.expect_where("conversation.updated", lambda f: f["conversation"]["status"] != "bot")
    assert (routed["conversation"]["status"], routed["conversation"]["queue_position"]) == ("queued", 1)


async def test_a_resend_gets_its_ack_but_no_second_bot_reply(bot_server, api, chat_shop, sockets):
    # given bot_first on and a shopper the fake bot has answered
    await bot_first(api, chat_shop)
    tab, ack, conv = await open_chat(bot_server, api, chat_shop, sockets, "你好")
    assert (await tab.expect_where("message.created", from_bot))["message"]["seq"] == 2
    await tab.drain(0.3)  # (forget what arrived so far: the shopper's own message)
    # when the widget resends the same message (it never saw the ack)
    await tab.send(type="message.send", client_msg_id="shopper-1", text="你好")
    # then it gets the first ack and nothing else: no new message, no second answer
    again = await tab.expect("message.ack")
    assert (again["seq"], again["message_id"]) == (1, ack["message_id"])
    assert not [f for f in await tab.drain(2.0) if f["type"] == "message.created"]
    r = await api.get(f"/api/v1/conversations/{ack['conversation_id']}/messages", headers=auth(chat_shop.agent_token))
    assert [m["seq"] for m in r.json()["items"]] == [1, 2]
