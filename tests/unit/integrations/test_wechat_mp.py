"""The WeChat official account callback: signature, message parsing, dedupe and replies (service-desk §1)."""
from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timedelta, timezone

import pytest

from shopdesk.integrations.wechat_mp import (MAX_XML_BYTES, NO_REPLY, build_text_reply, check_signature,
                                             customer_service_text_payload, dedupe_key, parse_message,
                                             timestamp_fresh, verify_echo, within_customer_service_window)

TOKEN = "shopdesk2026"
TIMESTAMP = "1732413600"
NONCE = "8264197"  # numerically smaller than the timestamp, lexicographically larger
# printf '%s' '17324136008264197shopdesk2026' | sha1sum
SIGNATURE = "aa15ba1e2607b6b19a769cd64867d9ab754640ab"
NOW = datetime.fromtimestamp(int(TIMESTAMP), tz=timezone.utc)

# The samples of 接收普通消息 and 接收事件推送, as documented.
TEXT_SAMPLE = b"""<xml>
 <ToUserName><![CDATA[toUser]]></ToUserName>
 <FromUserName><![CDATA[fromUser]]></FromUserName>
 <CreateTime>1348831860</CreateTime>
 <MsgType><![CDATA[text]]></MsgType>
 <Content><![CDATA[this is a test]]></Content>
 <MsgId>1234567890123456</MsgId>
</xml>"""
SUBSCRIBE_SAMPLE = b"""<xml>
  <ToUserName><![CDATA[toUser]]></ToUserName>
  <FromUserName><![CDATA[FromUser]]></FromUserName>
  <CreateTime>123456789</CreateTime>
  <MsgType><![CDATA[event]]></MsgType>
  <Event><![CDATA[subscribe]]></Event>
</xml>"""


# ---------------------------------------------------------------- signatures


def test_signature_is_the_sha1_of_the_sorted_strings():
    # given the documented recipe computed here independently
    recomputed = hashlib.sha1("".join(sorted([TOKEN, TIMESTAMP, NONCE])).encode()).hexdigest()
    assert recomputed == SIGNATURE
    # then the check accepts it, in either case
    assert check_signature(TOKEN, SIGNATURE, TIMESTAMP, NONCE)
    assert check_signature(TOKEN, SIGNATURE.upper(), TIMESTAMP, NONCE)


@pytest.mark.parametrize("token, signature, timestamp, nonce", [
    ("other-token", SIGNATURE, TIMESTAMP, NONCE),
    (TOKEN, SIGNATURE, "1732413601", NONCE),
    (TOKEN, SIGNATURE, TIMESTAMP, "8264198"),
    (TOKEN, SIGNATURE[:-1] + "c", TIMESTAMP, NONCE),
    (TOKEN, hashlib.sha1((TOKEN + TIMESTAMP + NONCE).encode()).hexdigest(), TIMESTAMP, NONCE),  # unsorted
    (TOKEN, hashlib.sha1("".join(sorted([TOKEN, TIMESTAMP, NONCE], key=lambda s: (len(s), s))).encode()
                         ).hexdigest(), TIMESTAMP, NONCE),  # numeric-style sort
    (TOKEN, None, TIMESTAMP, NONCE),
    (TOKEN, SIGNATURE, None, NONCE),
    (TOKEN, "签名", TIMESTAMP, NONCE),
    ("", SIGNATURE, TIMESTAMP, NONCE),
])
def test_wrong_signatures_are_refused(token, signature, timestamp, nonce):
    assert not check_signature(token, signature, timestamp, nonce)


def test_url_verification_echoes_only_with_a_valid_signature():
    params = {"signature": SIGNATURE, "timestamp": TIMESTAMP, "nonce": NONCE, "echostr": "5837397749603543713"}
    assert verify_echo(TOKEN, params) == "5837397749603543713"
    assert verify_echo("wrong", params) is None
    assert verify_echo(TOKEN, {**params, "nonce": "1"}) is None
    assert verify_echo(TOKEN, {k: v for k, v in params.items() if k != "echostr"}) is None
    assert verify_echo(TOKEN, {"echostr": "x"}) is None


@pytest.mark.parametrize("timestamp, offset_s, fresh", [
    (TIMESTAMP, 0, True),
    (TIMESTAMP, 300, True),
    (TIMESTAMP, 301, False),
    (TIMESTAMP, -300, True),  # our clock behind WeChat's
    (TIMESTAMP, -301, False),
    (int(TIMESTAMP), 10, True),
    ("not-a-number", 0, False),
    (None, 0, False),
])
def test_timestamp_freshness(timestamp, offset_s, fresh):
    assert timestamp_fresh(timestamp, NOW + timedelta(seconds=offset_s)) is fresh


def test_timestamp_freshness_with_a_custom_skew():
    assert timestamp_fresh(TIMESTAMP, NOW + timedelta(seconds=30), max_skew_seconds=30)
    assert not timestamp_fresh(TIMESTAMP, NOW + timedelta(seconds=31), max_skew_seconds=30)


# ---------------------------------------------------------------- parsing


def test_the_documented_text_message():
    msg = parse_message(TEXT_SAMPLE)
    assert (msg.to_user, msg.from_user, msg.msg_type) == ("toUser", "fromUser", "text")
    assert msg.create_time == datetime(2012, 9, 28, 11, 31, tzinfo=timezone.utc)
    assert msg.content == "this is a test"
    assert msg.msg_id == "1234567890123456"
    assert msg.event is None and msg.event_key is None
    assert msg.fields["MsgId"] == "1234567890123456"


def test_the_documented_subscribe_event():
    msg = parse_message(SUBSCRIBE_SAMPLE)
    assert (msg.msg_type, msg.event, msg.msg_id, msg.content) == ("event", "subscribe", None, None)
    assert msg.from_user == "FromUser"
    assert msg.create_time == datetime.fromtimestamp(123456789, tz=timezone.utc)
    assert dedupe_key(msg) == "wechat:toUser:event:FromUser:123456789:subscribe"


@pytest.mark.parametrize("body, expected", [
    (b"<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://mmbiz.qpic.cn/x]]></PicUrl>"
     b"<MediaId><![CDATA[media_id]]></MediaId><MsgId>1</MsgId>",
     {"msg_type": "image", "pic_url": "http://mmbiz.qpic.cn/x", "media_id": "media_id"}),
    (b"<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[v1]]></MediaId><Format><![CDATA[amr]]></Format>"
     b"<Recognition><![CDATA[\xe9\x80\x80\xe6\xac\xbe]]></Recognition><MsgId>2</MsgId>",
     {"msg_type": "voice", "media_id": "v1"}),
    (b"<MsgType><![CDATA[shortvideo]]></MsgType><MediaId><![CDATA[sv]]></MediaId>"
     b"<ThumbMediaId><![CDATA[t]]></ThumbMediaId><MsgId>3</MsgId>",
     {"msg_type": "shortvideo", "media_id": "sv"}),
    (b"<MsgType><![CDATA[location]]></MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803"
     b"</Location_Y><Scale>20</Scale><Label><![CDATA[\xe4\xbd\x8d\xe7\xbd\xae]]></Label><MsgId>4</MsgId>",
     {"msg_type": "location"}),
    (b"<MsgType><![CDATA[link]]></MsgType><Title><![CDATA[t]]></Title><Url><![CDATA[https://x]]></Url>"
     b"<MsgId>5</MsgId>",
     {"msg_type": "link"}),
    (b"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[123]]></EventKey>"
     b"<Ticket><![CDATA[TICKET]]></Ticket>",
     {"msg_type": "event", "event": "scan", "event_key": "123"}),
    (b"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event>"
     b"<EventKey><![CDATA[CONTACT_AGENT]]></EventKey>",
     {"msg_type": "event", "event": "click", "event_key": "CONTACT_AGENT"}),
])
def test_other_message_types(body, expected):
    msg = parse_message(b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o_user]]>"
                        b"</FromUserName><CreateTime>1732413600</CreateTime>" + body + b"</xml>")
    for name, value in expected.items():
        assert getattr(msg, name) == value
    if msg.msg_type == "voice":
        assert msg.fields["Recognition"] == "退款"
    if msg.msg_type == "location":
        assert (msg.fields["Location_X"], msg.fields["Label"]) == ("23.134521", "位置")


def test_nested_fields_are_flattened():
    msg = parse_message(b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime>"
                        b"<MsgType>event</MsgType><Event>scancode_push</Event><ScanCodeInfo>"
                        b"<ScanType>qrcode</ScanType><ScanResult>AS20261123-0007</ScanResult></ScanCodeInfo></xml>")
    assert msg.fields["ScanCodeInfo.ScanResult"] == "AS20261123-0007"


def test_content_keeps_chinese_text_and_its_spacing():
    msg = parse_message("<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime>"
                        "<MsgType>text</MsgType><Content><![CDATA[  我要退款\n订单 AS20261123-0007 ]]></Content>"
                        "<MsgId>9</MsgId></xml>".encode())
    assert msg.content == "  我要退款\n订单 AS20261123-0007 "


def test_a_replayed_message_has_the_same_dedupe_key():
    # given WeChat's retry of the same delivery (it retries up to three times)
    first, retry = parse_message(TEXT_SAMPLE), parse_message(TEXT_SAMPLE.replace(b"\n", b"\r\n"))
    assert dedupe_key(first) == dedupe_key(retry) == "wechat:toUser:msg:1234567890123456"
    # and an event retried, versus another event in the same second
    subscribe, again = parse_message(SUBSCRIBE_SAMPLE), parse_message(SUBSCRIBE_SAMPLE)
    location = parse_message(SUBSCRIBE_SAMPLE.replace(b"subscribe", b"LOCATION"))
    assert dedupe_key(subscribe) == dedupe_key(again)
    assert dedupe_key(location) != dedupe_key(subscribe)
    # and the same user a second later is new
    later = parse_message(SUBSCRIBE_SAMPLE.replace(b"123456789", b"123456790"))
    assert dedupe_key(later) != dedupe_key(subscribe)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&lol3;</Content></xml>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&xxe;</Content></xml>"""


@pytest.mark.parametrize("body, problem", [
    (XXE, "DTD or entity"),
    (BILLION_LAUGHS, "DTD or entity"),
    (b"<!doctype xml><xml/>", "DTD or entity"),
    (b"<xml><!ENTITY x 'y'></xml>", "DTD or entity"),
    ("<!DOCTYPE x><xml/>".encode("utf-16-le"), "DTD or entity"),
    ("<xml/>".encode("utf-16"), "not UTF-8"),
    (b"<xml>" + b"<Content>" + b"x" * MAX_XML_BYTES + b"</Content></xml>", "too large"),
    (b"<xml><ToUserName>a</ToUserName>", "malformed XML"),
    (b"<xml>&undefined;</xml>", "malformed XML"),
    (b"", "malformed XML"),
    (b"<root><ToUserName>a</ToUserName></root>", "unexpected root"),
    (b"<xml><ToUserName>a</ToUserName><CreateTime>1</CreateTime><MsgType>text</MsgType></xml>",
     "missing FromUserName"),
    (b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>soon</CreateTime>"
     b"<MsgType>text</MsgType></xml>", "CreateTime is not an integer"),
])
def test_unsafe_or_malformed_bodies_raise_value_error_naming_the_problem(body, problem):
    with pytest.raises(ValueError, match=problem):
        parse_message(body)


# ---------------------------------------------------------------- replies


def test_passive_text_reply_matches_the_documented_shape():
    reply = build_text_reply("o_user", "gh_account", "您好，已为您查询", NOW)
    root = ElementTree.fromstring(reply)
    assert [child.tag for child in root] == ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content"]
    assert root.findtext("ToUserName") == "o_user"
    assert root.findtext("FromUserName") == "gh_account"
    assert root.findtext("CreateTime") == TIMESTAMP
    assert root.findtext("MsgType") == "text"
    assert root.findtext("Content") == "您好，已为您查询"
    assert b"<Content><![CDATA[" in reply


@pytest.mark.parametrize("content", [
    "a]]>b",
    "]]>",
    "]]>]]>]]]]>",
    "<xml>&amp; 标签 </Content>",
    "]]",
    "",
])
def test_cdata_escaping_round_trips(content):
    reply = build_text_reply("o_user", "gh]]>account", content, NOW)
    root = ElementTree.fromstring(reply)
    assert root.findtext("Content") == content
    assert root.findtext("FromUserName") == "gh]]>account"
    # and our own parser reads it back the same way
    assert parse_message(reply).content == content


def test_control_characters_xml_cannot_carry_are_dropped():
    reply = build_text_reply("o", "g", "a\x00b\x0bc\td\ne", NOW)
    assert ElementTree.fromstring(reply).findtext("Content") == "abc\td\ne"


def test_no_reply_is_the_literal_success():
    assert NO_REPLY == b"success"


def test_build_text_reply_wants_an_aware_now():
    with pytest.raises(ValueError):
        build_text_reply("o", "g", "x", NOW.replace(tzinfo=None))


def test_customer_service_payload():
    assert customer_service_text_payload("o_user", "您好") == {
        "touser": "o_user", "msgtype": "text", "text": {"content": "您好"}}
    with pytest.raises(ValueError):
        customer_service_text_payload("", "x")


@pytest.mark.parametrize("last, inside", [
    (NOW - timedelta(hours=47, minutes=59), True),
    (NOW - timedelta(hours=48), False),
    (NOW - timedelta(days=3), False),
    (NOW, True),
    (NOW + timedelta(seconds=5), True),  # a message stamped slightly ahead of our clock
    (None, False),
])
def test_customer_service_window_is_48_hours(last, inside):
    assert within_customer_service_window(last, NOW) is inside
