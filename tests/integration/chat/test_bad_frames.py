"""Bad input on the socket: an error frame naming what is wrong, a closed socket for abuse, and no effect on others."""
import json

from tests.factories import make_shop
from tests.integration.chat.conftest import add_agent, auth, presence, widget


async def open_chat(chat_server, api, shop, sockets, name):
    session = await widget(api, shop)
    sock = await sockets(chat_server, session["token"], name)
    await sock.send(type="message.send", client_msg_id=f"{name}-0", text="你好")
    ack = await sock.expect("message.ack")
    return session, sock, ack["conversation_id"]


async def test_malformed_frames_get_error_frames_and_change_nothing(chat_server, api, chat_shop, sockets):
    # given a shopper in a conversation, and a bystander shopper chatting too
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    session, sock, conv_id = await open_chat(chat_server, api, chat_shop, sockets, "bad")
    _, bystander, other_conv = await open_chat(chat_server, api, chat_shop, sockets, "bystander")

    cases = [
        ("x" * (64 * 1024 + 1), "frame_too_large", None),
        (json.dumps({"type": "message.send", "client_msg_id": "big", "text": "长" * 30000}), "frame_too_large", None),
        ("{not json", "malformed_json", None),
        ("[1, 2]", "bad_frame", None),
        (json.dumps({"text": "no type"}), "bad_frame", "type"),
        (json.dumps({"type": "dance"}), "unknown_type", "type"),
        (json.dumps({"type": "message.send", "text": "no id"}), "validation_failed", "client_msg_id"),
        (json.dumps({"type": "message.send", "client_msg_id": "e1", "text": "   "}), "validation_failed", "text"),
        (json.dumps({"type": "message.send", "client_msg_id": "e2", "text": 5}), "validation_failed", "text"),
        (json.dumps({"type": "message.send", "client_msg_id": "e3", "text": "x" * 5001}), "validation_failed", "text"),
        (json.dumps({"type": "message.send", "client_msg_id": "e4", "text": "hi", "html": "<b>"}),
         "validation_failed", "html"),
        (json.dumps({"type": "read", "conversation_id": conv_id, "seq": -1}), "validation_failed", "seq"),
        (json.dumps({"type": "resume", "conversation_id": conv_id}), "validation_failed", "after_seq"),
        (json.dumps({"type": "typing"}), "validation_failed", "conversation_id"),
        (json.dumps({"type": "watch", "conversation_id": conv_id}), "forbidden", "type"),
    ]
    # when each is sent, then each gets an error frame with a code (and the field, where one is to blame)
    for text, code, field in cases[:8]:
        await sock.send_raw(text)
        err = await sock.expect("error")
        assert err["code"] == code and err.get("field") == field, (text[:60], err)
        assert err["detail"]
    # and a binary frame is refused too
    await sock.send_raw(b"\x00\x01binary")
    assert (await sock.expect("error"))["code"] == "bad_frame"
    # the error names the message it is about, so a client can match it
    await sock.send_raw(json.dumps({"type": "message.send", "client_msg_id": "ref-me", "text": ""}))
    assert (await sock.expect("error"))["ref"] == "ref-me"
    # (a fresh socket for the rest: this one has used up most of its strikes)
    sock2 = await sockets(chat_server, session["token"], "bad-2")
    for text, code, field in cases[8:]:
        await sock2.send_raw(text)
        err = await sock2.expect("error")
        assert err["code"] == code and err.get("field") == field, (text[:60], err)

    # then nothing was stored, and the bystander is unaffected
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", headers=auth(agent.token))
    assert [m["client_msg_id"] for m in r.json()["items"]] == ["bad-0"]
    await bystander.send(type="message.send", client_msg_id="fine", text="我还好", conversation_id=other_conv)
    assert (await bystander.expect("message.ack"))["seq"] == 2
    assert not [f for f in bystander.log if f["type"] == "error"]


async def test_other_merchants_and_other_shoppers_conversations_are_not_found(chat_server, api, chat_shop, sockets):
    # given a conversation of this shop, and another shop with its own conversation and agent
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    _, owner, conv_id = await open_chat(chat_server, api, chat_shop, sockets, "owner")
    other_shop = await make_shop(api)
    other_agent = await add_agent(other_shop, api)
    await presence(api, other_agent)
    _, foreign, foreign_conv = await open_chat(chat_server, api, other_shop, sockets, "foreign")
    stranger_session = await widget(api, chat_shop)
    stranger = await sockets(chat_server, stranger_session["token"], "stranger")
    intruder = await sockets(chat_server, other_agent.token, "other-merchant-agent")

    # when a shopper of the same shop, and an agent of another merchant, use that conversation id
    attempts = [
        {"type": "message.send", "client_msg_id": "i1", "text": "hi", "conversation_id": conv_id},
        {"type": "typing", "conversation_id": conv_id},
        {"type": "read", "conversation_id": conv_id, "seq": 1},
        {"type": "resume", "conversation_id": conv_id, "after_seq": 0},
    ]
    for sock in (stranger, intruder):
        for frame in attempts:
            await sock.send(**frame)
            err = await sock.expect("error")
            assert err["code"] == "not_found" and err["field"] == "conversation_id", (sock.name, frame, err)
    await intruder.send(type="watch", conversation_id=conv_id)
    assert (await intruder.expect("error"))["code"] == "not_found"
    # and ids that do not exist at all say the same
    await stranger.send(type="typing", conversation_id="0" * 32)
    assert (await stranger.expect("error"))["code"] == "not_found"

    # then nothing leaked: neither saw a message, a typing or a read of that conversation
    for sock in (stranger, intruder):
        leaked = [f for f in await sock.drain(0.5) if f["type"] in ("message.created", "typing", "read")]
        assert leaked == [] and not any(json.dumps(f).find(conv_id) >= 0 for f in sock.log if f["type"] != "error")
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", headers=auth(agent.token))
    assert len(r.json()["items"]) == 1
    # and the owner and the other merchant's own conversation carry on
    await owner.send(type="ping")
    await owner.expect("pong")
    await foreign.send(type="message.send", client_msg_id="ok", text="正常", conversation_id=foreign_conv)
    assert (await foreign.expect("message.ack"))["seq"] == 2


async def test_a_flood_is_rate_limited_then_closed_with_1008_and_others_carry_on(chat_server, api, chat_shop, sockets):
    # given two shoppers chatting with an agent
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    desk = await sockets(chat_server, agent.token, "agent")
    _, flooder, conv_id = await open_chat(chat_server, api, chat_shop, sockets, "flooder")
    _, calm, calm_conv = await open_chat(chat_server, api, chat_shop, sockets, "calm")

    # when one of them sends typing frames as fast as it can
    for _ in range(200):
        await flooder.send(type="typing", conversation_id=conv_id)
    # then it gets rate_limited error frames, then a policy-violation close (1008)
    code = await flooder.closed_with(10)
    assert code == 1008
    errors = [f for f in flooder.buffer if f["type"] == "error"]
    assert any(e["code"] == "rate_limited" for e in errors) and errors[-1]["code"] == "policy_violation"
    # and the agent received at most the burst, not the flood
    typing = [f for f in await desk.drain(0.5) if f["type"] == "typing"]
    assert 0 < len(typing) <= 40

    # and the other shopper is unaffected
    await calm.send(type="message.send", client_msg_id="still", text="我还在", conversation_id=calm_conv)
    assert (await calm.expect("message.ack"))["seq"] == 2
    created = await desk.expect_where("message.created", lambda f: f["message"]["client_msg_id"] == "still")
    assert created["message"]["text"] == "我还在"


async def test_bad_tokens_and_versions_are_refused(chat_server, api, chat_shop, sockets):
    for token, code in (("nonsense", "unauthorized"), (chat_shop.key, "unauthorized")):
        sock = await sockets(chat_server, token, "bad-token", hello=False)
        err = await sock.expect("error")
        assert err["code"] == code
        assert await sock.closed_with() == 1008
    from websockets.asyncio.client import connect

    session = await widget(api, chat_shop)
    async with connect(f"{chat_server.ws_url}?token={session['token']}&v=2") as ws:
        assert json.loads(await ws.recv())["code"] == "unsupported_version"
