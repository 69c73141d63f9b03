"""The conversation routes: lists and details, transfer, end, rating; each caller sees only their own."""


from tests.factories import count_queries
from tests.integration.chat.conftest import add_agent, auth, presence, widget


async def chat(chat_server, api, shop, sockets, name):
    session = await widget(api, shop)
    sock = await sockets(chat_server, session["token"], name)
    await sock.send(type="message.send", client_msg_id=f"{name}-1", text="你好")
    ack = await sock.expect("message.ack")
    return session, sock, ack["conversation_id"]


async def test_transfer_to_an_agent_and_to_a_desk_keeps_the_history(chat_server, api, chat_shop, sockets):
    # given a chat held by agent A, and agent B online
    a = await add_agent(chat_shop, api, "A")
    await presence(api, a)
    session, tab, conv_id = await chat(chat_server, api, chat_shop, sockets, "shopper")
    b = await add_agent(chat_shop, api, "B")
    await presence(api, b)
    desk_b = await sockets(chat_server, b.token, "B")
    desk_a = await sockets(chat_server, a.token, "A")

    # when B (not the holder, a plain agent) tries to take it, then it is refused
    r = await api.post(f"/api/v1/conversations/{conv_id}/transfer", json={"agent_id": b.staff_id},
                       headers=auth(b.token))
    assert r.status_code == 403, r.text
    # when A transfers it to B
    r = await api.post(f"/api/v1/conversations/{conv_id}/transfer", json={"agent_id": b.staff_id},
                       headers=auth(a.token))
    assert r.status_code == 200 and r.json()["assignee"]["id"] == b.staff_id, r.text
    # then the shopper sees who has it now and a system note in the history
    update = await tab.expect_where("conversation.updated", lambda f: f["conversation"]["assignee"] and
                                    f["conversation"]["assignee"]["id"] == b.staff_id)
    assert update["conversation"]["status"] == "assigned"
    note = await tab.expect_where("message.created", lambda f: f["message"]["sender"]["type"] == "system")
    assert "B" in note["message"]["text"] and note["message"]["seq"] == 2
    # and B gets the shopper's next message, A does not
    await tab.send(type="message.send", client_msg_id="after", text="转过来了吗", conversation_id=conv_id)
    await desk_b.expect_where("message.created", lambda f: f["message"]["client_msg_id"] == "after")
    assert not [f for f in await desk_a.drain(0.5) if f["type"] == "message.created"
                and f["message"]["client_msg_id"] == "after"]
    # and B can read the whole history
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", headers=auth(b.token))
    assert [m["seq"] for m in r.json()["items"]] == [1, 2, 3]

    # bad targets are named
    for body, field, status in (({"agent_id": "0" * 32}, "agent_id", 422), ({"desk": "0" * 32}, "desk", 422),
                                ({}, "agent_id", 422), ({"agent_id": b.staff_id}, "agent_id", 409)):
        r = await api.post(f"/api/v1/conversations/{conv_id}/transfer", json=body, headers=auth(chat_shop.admin_token))
        assert r.status_code == status and r.json()["field"] == field, (body, r.text)

    # when an admin creates a desk of A alone and transfers the chat there
    r = await api.post("/api/v1/chat/desks", json={"name": "售后组", "agent_ids": [a.staff_id]},
                       headers=auth(chat_shop.admin_token))
    assert r.status_code == 201, r.text
    desk = r.json()
    r = await api.post(f"/api/v1/conversations/{conv_id}/transfer", json={"desk": desk["id"]},
                       headers=auth(chat_shop.admin_token))
    # then it goes to the desk's agent
    assert r.status_code == 200 and r.json()["assignee"]["id"] == a.staff_id and r.json()["desk_id"] == desk["id"]


async def test_desks_validate_their_input(api, chat_shop):
    agent = await add_agent(chat_shop, api)
    cases = [({"name": "x", "business_hours": {"start": "9:00", "end": "18:00"}}, "business_hours.start"),
             ({"name": "x", "business_hours": {"days": [7], "start": "09:00", "end": "18:00"}}, "business_hours.days"),
             ({"name": "x", "agent_ids": ["nobody"]}, "agent_ids[0]"), ({"name": "x", "store": "nope"}, "store"),
             ({"name": ""}, "name")]
    for body, field in cases:
        r = await api.post("/api/v1/chat/desks", json=body, headers=auth(chat_shop.admin_token))
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    r = await api.post("/api/v1/chat/desks", json={"name": "x"}, headers=auth(agent.token))
    assert r.status_code == 403


async def test_end_then_rate_once(chat_server, api, chat_shop, sockets):
    # given a chat
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    session, tab, conv_id = await chat(chat_server, api, chat_shop, sockets, "rater")
    # rating before the end is refused
    r = await api.post(f"/api/v1/conversations/{conv_id}/rating", json={"score": 5}, headers=auth(session["token"]))
    assert r.status_code == 409 and r.json()["code"] == "illegal_transition"
    # when the shopper ends it
    r = await api.post(f"/api/v1/conversations/{conv_id}/end", headers=auth(session["token"]))
    assert r.status_code == 200 and r.json()["status"] == "ended"
    again = await api.post(f"/api/v1/conversations/{conv_id}/end", headers=auth(agent.token))
    assert again.status_code == 409
    # then a message into it is refused, and the agent cannot rate it for the shopper
    await tab.send(type="message.send", client_msg_id="late", text="还有", conversation_id=conv_id)
    assert (await tab.expect("error"))["code"] == "conversation_ended"
    r = await api.post(f"/api/v1/conversations/{conv_id}/rating", json={"score": 5}, headers=auth(agent.token))
    assert r.status_code == 404
    # bad scores name the field
    for score in (0, 6, "five"):
        r = await api.post(f"/api/v1/conversations/{conv_id}/rating", json={"score": score},
                           headers=auth(session["token"]))
        assert r.status_code == 422 and r.json()["field"] == "score"
    # when the shopper rates it, it is kept; a second rating is refused
    r = await api.post(f"/api/v1/conversations/{conv_id}/rating", json={"score": 4, "comment": "挺快的"},
                       headers=auth(session["token"]))
    assert r.status_code == 200 and r.json()["rating"] == {"score": 4, "comment": "挺快的"}
    r = await api.post(f"/api/v1/conversations/{conv_id}/rating", json={"score": 1}, headers=auth(session["token"]))
    assert r.status_code == 409 and r.json()["code"] == "already_rated"
    r = await api.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))
    assert r.json()["rating"]["score"] == 4 and r.json()["ended_by"] == "visitor"


async def test_lists_and_details_show_only_own_data(chat_server, api, chat_shop, sockets):
    from tests.factories import make_shop

    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    mine = await chat(chat_server, api, chat_shop, sockets, "mine")
    theirs_shop = await make_shop(api)
    theirs = await chat(chat_server, api, theirs_shop, sockets, "theirs")
    other_visitor = await widget(api, chat_shop)
    # the list holds this merchant's chats only, "me" filters by assignee
    r = await api.get("/api/v1/conversations", headers=auth(agent.token))
    ids = {c["id"] for c in r.json()["items"]}
    assert mine[2] in ids and theirs[2] not in ids
    r = await api.get("/api/v1/conversations", params={"assignee": "me"}, headers=auth(agent.token))
    assert [c["id"] for c in r.json()["items"]] == [mine[2]]
    assert (await api.get("/api/v1/conversations", params={"status": "open"},
                          headers=auth(agent.token))).json()["field"] == "status"
    assert (await api.get("/api/v1/conversations", params={"limit": 101},
                          headers=auth(agent.token))).json()["field"] == "limit"
    assert (await api.get("/api/v1/conversations", params={"assignee": "me"},
                          headers=auth(chat_shop.key))).json()["field"] == "assignee"
    # a visitor has no list, and sees another visitor's conversation as not found
    assert (await api.get("/api/v1/conversations", headers=auth(mine[0]["token"]))).status_code == 404
    for token in (other_visitor["token"], theirs_shop.agent_token, theirs[0]["token"]):
        for path in (f"/api/v1/conversations/{mine[2]}", f"/api/v1/conversations/{mine[2]}/messages"):
            assert (await api.get(path, headers=auth(token))).status_code == 404
    assert (await api.get("/api/v1/conversations")).status_code == 401


async def test_the_conversation_list_query_count_does_not_grow_with_the_page(client, shop):
    """In-process (to count this process's queries): one queued and one assigned chat, then five of each."""
    from shopdesk.accounts.auth import resolve
    from shopdesk.chat.actions import actor_from_principal, do_send_message, do_set_presence, resolve_actor
    from shopdesk.chat.actions import do_start_widget_session
    from shopdesk.core.db import sessionmaker

    async with sessionmaker()() as s:
        agent = actor_from_principal(await resolve(s, shop.agent_token))
    await do_set_presence(agent, status="online", capacity=1)

    async def open_chats(n):
        for _ in range(n):
            w = await do_start_widget_session(store="main", merchant=shop.slug)
            async with sessionmaker()() as s:
                visitor = await resolve_actor(s, w["token"])
            await do_send_message(visitor, client_msg_id="q", text="在吗")

    await open_chats(2)
    with count_queries() as two:
        items = (await client.get("/api/v1/conversations", headers=auth(shop.agent_token))).json()["items"]
    assert sorted(c["status"] for c in items) == ["assigned", "queued"]
    await open_chats(8)
    with count_queries() as ten:
        items = (await client.get("/api/v1/conversations", headers=auth(shop.agent_token))).json()["items"]
    assert len(items) == 10 and sorted(c["queue_position"] for c in items if c["status"] == "queued") == list(range(1, 10))
    assert len(two) == len(ten) <= 8, ten
