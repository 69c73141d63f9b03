"""WeChat official account (公众号) callback in plaintext mode: signatures, messages, replies.

Pure: no database, no network, no clock. Follows Tencent's 接入指南, 接收普通消息, 接收事件推送,
被动回复用户消息 and 客服消息 pages. WeChat retries a callback it got no answer to within 5 s,
up to three times, so callers de-duplicate with `dedupe_key` and answer fast (`NO_REPLY`).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

MAX_XML_BYTES = 64 * 1024
# 被动回复: an answer of "success" (or an empty body) tells WeChat not to retry and to send nothing.
NO_REPLY = b"success"
CUSTOMER_SERVICE_WINDOW = timedelta(hours=48)
MESSAGE_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link", "event"})

_FORBIDDEN_MARKUP = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
# XML 1.0 forbids these even inside CDATA; WeChat would reject the whole reply.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True)
class WechatMessage:
    to_user: str
    from_user: str
    create_time: datetime
    msg_type: str
    msg_id: str | None = None
    content: str | None = None
    pic_url: str | None = None
    media_id: str | None = None
    event: str | None = None
    event_key: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


def _signature(token: str, timestamp: str, nonce: str) -> str:
    # 接入指南: sort the three strings, concatenate, sha1.
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode("utf-8")).hexdigest()


def check_signature(token: str, signature: str | None, timestamp: str | None, nonce: str | None) -> bool:
    """Check the `signature` query parameter WeChat adds to every callback."""
    if not token or not signature or timestamp is None or nonce is None:
        return False
    expected = _signature(token, timestamp, nonce)
    return hmac.compare_digest(expected.encode("ascii"), signature.strip().lower().encode("utf-8"))


def verify_echo(token: str, params: Mapping[str, str]) -> str | None:
    """Answer the GET URL verification: the echostr when the signature holds, else None."""
    echostr = params.get("echostr")
    if echostr is None:
        return None
    if not check_signature(token, params.get("signature"), params.get("timestamp"), params.get("nonce")):
        return None
    return echostr


def timestamp_fresh(timestamp: str | int | None, now: datetime, max_skew_seconds: int = 300) -> bool:
    """Refuse a callback whose signed timestamp is too far from now (a replayed request)."""
    try:
        sent = int(str(timestamp).strip())
    except (TypeError, ValueError):
        return False
    return abs(now.timestamp() - sent) <= max_skew_seconds


def _text(element: ElementTree.Element | None) -> str | None:
    if element is None:
        return None
    return (element.text or "").strip() if len(element) == 0 else None


def _flatten(element: ElementTree.Element, prefix: str, into: dict[str, str]) -> None:
    for child in element:
        key = f"{prefix}{child.tag}"
        if len(child):
            _flatten(child, f"{key}.", into)
        else:
            into.setdefault(key, child.text or "")


def parse_message(xml: bytes) -> WechatMessage:
    """Parse a callback body; raise ValueError naming the problem for anything unsafe or malformed."""
    if len(xml) > MAX_XML_BYTES:
        raise ValueError(f"message too large: {len(xml)} bytes (limit {MAX_XML_BYTES})")
    try:
        text = xml.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("message is not UTF-8") from exc
    # Expat would expand internal entities (billion laughs); WeChat never sends a DTD. A NUL would let
    # a UTF-16 body (which is also valid UTF-8) hide "<!DOCTYPE" from this byte search.
    if _FORBIDDEN_MARKUP.search(xml) or "\x00" in text:
        raise ValueError("DTD or entity declarations are not allowed")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise ValueError(f"malformed XML: {exc}") from exc
    if root.tag != "xml":
        raise ValueError(f"unexpected root element <{root.tag}>")

    fields: dict[str, str] = {}
    _flatten(root, "", fields)
    missing = [name for name in ("ToUserName", "FromUserName", "CreateTime", "MsgType") if not fields.get(name)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        created = int(fields["CreateTime"].strip())
    except ValueError as exc:
        raise ValueError(f"CreateTime is not an integer: {fields['CreateTime']!r}") from exc

    def get(name: str) -> str | None:
        value = _text(root.find(name))
        return value if value else None

    event = get("Event")
    return WechatMessage(
        to_user=fields["ToUserName"].strip(),
        from_user=fields["FromUserName"].strip(),
        create_time=datetime.fromtimestamp(created, tz=timezone.utc),
        msg_type=fields["MsgType"].strip().lower(),
        msg_id=get("MsgId"),
        # Content is the user's words: keep its spaces, only CDATA framing is removed by the parser.
        content=fields.get("Content"),
        pic_url=get("PicUrl"),
        media_id=get("MediaId"),
        # "subscribe", "SCAN", "CLICK"… come in mixed case; one spelling for callers to compare.
        event=event.lower() if event else None,
        event_key=get("EventKey"),
        fields=fields,
    )


def dedupe_key(msg: WechatMessage) -> str:
    """Key a retried callback to the first delivery: MsgId, or FromUserName + CreateTime for events."""
    if msg.msg_id:
        return f"wechat:{msg.to_user}:msg:{msg.msg_id}"
    # 接收事件推送: "排重推荐使用FromUserName + CreateTime"; the event name keeps two different
    # events in the same second (subscribe, then LOCATION) apart while a retry still matches.
    return f"wechat:{msg.to_user}:event:{msg.from_user}:{int(msg.create_time.timestamp())}:{msg.event or ''}"


def _cdata(value: str) -> str:
    # "]]>" cannot appear inside one CDATA section: close it after "]]" and open a new one for ">".
    return "<![CDATA[" + _XML_ILLEGAL.sub("", value).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def build_text_reply(to_user: str, from_user: str, content: str, now: datetime) -> bytes:
    """Build the passive text reply (被动回复): to_user is the shopper's openid, from_user the account."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return (
        "<xml>"
        f"<ToUserName>{_cdata(to_user)}</ToUserName>"
        f"<FromUserName>{_cdata(from_user)}</FromUserName>"
        f"<CreateTime>{int(now.timestamp())}</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{_cdata(content)}</Content>"
        "</xml>"
    ).encode("utf-8")


def customer_service_text_payload(openid: str, content: str) -> dict:
    """Build the 客服消息 (message/custom/send) body for a text message."""
    if not openid:
        raise ValueError("openid is required")
    return {"touser": openid, "msgtype": "text", "text": {"content": content}}


def within_customer_service_window(last_user_message_at: datetime | None, now: datetime) -> bool:
    """Say whether 客服消息 may still be sent: within 48 hours of the user's last message."""
    if last_user_message_at is None:
        return False
    return now - last_user_message_at < CUSTOMER_SERVICE_WINDOW
