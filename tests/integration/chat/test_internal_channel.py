"""The internal channel (企业内部即时通讯): the staff room and direct messages, over the same socket, with seqs,
resends and resume — never reaching visitors or another merchant."""
from tests.factories import make_shop
from tests.integration.chat.conftest import add_agent, auth, widget


async def test_the_staff_room_reaches_every_colleague_once_in_order(chat_server, api, chat_shop, sockets):
    # given two agents (one on two devices), a visitor, and another merchant's agent
    a = await add_agent(chat_shop, api, "小王")
    b = await add_agent(chat_shop, api, "小赵")
    a1, a2 = await sockets(chat_server, a.token, "a1"), await sockets(chat_server, a.token, "a2")
    b1 = await sockets(chat_server, b.token, "b1")
    visitor = await sockets(chat_server, (await widget(api, chat_shop))["token"], "visitor")
    stranger = await add_agent(await make_shop(api), api)
    s1 = await sockets(chat_server, stranger.token, "stranger")
    r = await api.get("/api/v1/chat/rooms", headers=auth(a.token))
    assert r.status_code == 200, r.text
    [room] = [x for x in r.json()["items"] if x["key"] == "staff"]

    # when A writes twice (the second resent with the same client id)
    await a1.send(type="room.send", room_id=room["id"], client_msg_id="x1", text="今天双11，大家注意排队")
    first = await a1.expect("room.ack")
    await a1.send(type="room.send", room_id=room["id"], client_msg_id="x2", text="<b>加油</b>")
    second = await a1.expect("room.ack", client_msg_id="x2")
    await a1.send(type="room.send", room_id=room["id"], client_msg_id="x2", text="<b>加油</b>")
    again = await a1.expect("room.ack", client_msg_id="x2")

    # then seqs follow on, the resend gets the same ack, and every staff socket gets each message once
    assert (first["seq"], second["seq"]) == (1, 2) and again == second
    for sock in (a1, a2, b1):
        got = [await sock.expect("room.message"), await sock.expect("room.message")]
        assert [m["message"]["seq"] for m in got] == [1, 2]
        assert got[1]["message"]["text"] == "<b>加油</b>" and got[1]["message"]["sender"]["id"] == a.staff_id
        assert not [f for f in await sock.drain(0.3) if f["type"] == "room.message"]
    # and the visitor and the other merchant see nothing
    for sock in (visitor, s1):
        assert not [f for f in await sock.drain(0.3) if f["type"].startswith("room.")]

    # when B reconnects and resumes from seq 1
    b2 = await sockets(chat_server, b.token, "b2")
    await b2.send(type="room.resume", room_id=room["id"], after_seq=1)
    # then only seq 2 is replayed
    assert (await b2.expect("room.message"))["message"]["seq"] == 2
    assert not [f for f in await b2.drain(0.3) if f["type"] == "room.message"]
    r = await api.get(f"/api/v1/chat/rooms/{room['id']}/messages", params={"after_seq": 0}, headers=auth(b.token))
    assert [m["seq"] for m in r.json()["items"]] == [1, 2]

    # when the visitor or the other merchant tries the room
    await visitor.send(type="room.send", room_id=room["id"], client_msg_id="v", text="hi")
    assert (await visitor.expect("error"))["code"] == "forbidden"
    await s1.send(type="room.send", room_id=room["id"], client_msg_id="s", text="hi")
    assert (await s1.expect("error"))["code"] == "not_found"
    await s1.send(type="room.resume", room_id=room["id"], after_seq=0)
    assert (await s1.expect("error"))["code"] == "not_found"
    assert (await api.get(f"/api/v1/chat/rooms/{room['id']}/messages",
                          headers=auth(stranger.token))).status_code == 404
    # and an empty message names its field
    await a1.send(type="room.send", room_id=room["id"], client_msg_id="e", text="  ")
    assert (await a1.expect("error"))["field"] == "text"


async def test_direct_messages_stay_between_the_two(chat_server, api, chat_shop, sockets):
    a = await add_agent(chat_shop, api, "小王")
    b = await add_agent(chat_shop, api, "小赵")
    c = await add_agent(chat_shop, api, "小钱")
    a1 = await sockets(chat_server, a.token, "a")
    b1 = await sockets(chat_server, b.token, "b")
    c1 = await sockets(chat_server, c.token, "c")

    # when A opens a direct room with B (twice: the same room) and writes
    r = await api.post("/api/v1/chat/rooms", json={"agent_id": b.staff_id}, headers=auth(a.token))
    assert r.status_code == 200, r.text
    room = r.json()
    assert room["title"] == "小赵" and sorted(room["member_ids"]) == sorted([a.staff_id, b.staff_id])
    r = await api.post("/api/v1/chat/rooms", json={"agent_id": a.staff_id}, headers=auth(b.token))
    assert r.json()["id"] == room["id"]
    await a1.send(type="room.send", room_id=room["id"], client_msg_id="d1", text="私聊一下")
    await a1.expect("room.ack")

    # then B gets it, C does not, and C cannot read or write it
    assert (await b1.expect("room.message"))["message"]["text"] == "私聊一下"
    assert not [f for f in await c1.drain(0.3) if f["type"] == "room.message"]
    await c1.send(type="room.resume", room_id=room["id"], after_seq=0)
    assert (await c1.expect("error"))["code"] == "not_found"
    r = await api.get("/api/v1/chat/rooms", headers=auth(c.token))
    assert room["id"] not in [x["id"] for x in r.json()["items"]]
    # and a room with someone of another merchant, or with oneself, is refused naming the field
    stranger = await add_agent(await make_shop(api), api)
    for target in (stranger.staff_id, a.staff_id):
        r = await api.post("/api/v1/chat/rooms", json={"agent_id": target}, headers=auth(a.token))
        assert (r.status_code, r.json()["field"]) == (422, "agent_id")
