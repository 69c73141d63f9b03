"""The chat socket, `/ws?token=…&v=1`: one JSON object per text frame (../shared/contract/chat.md).

Each connection has a reader (client frames → actions, one at a time, in order) and a writer
that drains one outbound queue, so a slow socket never holds up the broker and frames leave in
the order they were queued. The writer keeps, per conversation, the range of seqs this socket has
sent: a live message already sent is dropped, a gap (a lost or reordered event) is filled from the
database first, and `resume` replays what the client lacks — every message goes out once, in order.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from typing import Any, Literal

import structlog
from fastapi import WebSocket
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from shopdesk.chat import actions, rooms, routing, rules
from shopdesk.chat.actions import ChatActor, encode
from shopdesk.chat.queries import REPLAY_BATCH, message_frames
from shopdesk.chat.writer import get_writer
from shopdesk.config import get_settings
from shopdesk.core import ratelimit
from shopdesk.core.db import sessionmaker, transaction
from shopdesk.core.errors import DomainError
from shopdesk.core.pubsub import Event, get_broker

log = structlog.get_logger("shopdesk.chat")

PROTOCOL = 1
FRAME_MAX = 64 * 1024
QUEUE_MAX = 2000  # frames waiting for a slow socket before it is closed (its client resumes)
BUCKET_RATE, BUCKET_BURST = 10.0, 30  # frames per second, per connection
STRIKES_MAX, STRIKE_WINDOW_S = 10, 60.0  # error frames before the socket is closed with 1008
ASSIGNEE_TTL_S = 5.0
# Live messages of a conversation a fresh socket has not synced yet wait until the client has resumed it,
# or has sent a frame other than `resume` (clients resume first), or until this long after hello. Without
# the wait a reconnecting client could get seq 119 live and then 117–118 from its resume: each once, but
# out of order on the wire. The wait ends by a frame or by a timer on the event loop, never by comparing
# clocks: on a saturated server the loop runs late, and the client's resume, which arrived before the
# timer was due, is then still handled first.
RESUME_GRACE_S = 0.5
# Errors about the conversation's state, not the client's behaviour: they do not count as abuse.
BENIGN = {"conversation_ended", "illegal_transition", "internal_error"}


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CardIn(Frame):
    type: Literal["product", "order"]
    sku: str | None = Field(default=None, min_length=1, max_length=64)
    order_no: str | None = Field(default=None, min_length=1, max_length=64)


class SendIn(Frame):
    type: Literal["message.send"]
    client_msg_id: str = Field(min_length=1, max_length=64)
    text: str | None = Field(default=None, max_length=actions.MAX_TEXT)
    attachment_id: str | None = Field(default=None, min_length=1, max_length=32)
    conversation_id: str | None = Field(default=None, min_length=1, max_length=32)
    card: CardIn | None = None
    private: bool = False  # staff: a note the visitor never sees
    mentions: list[str] | None = Field(default=None, max_length=20)


class PageViewIn(Frame):
    type: Literal["page.view"]
    url: str = Field(max_length=2000)
    title: str = Field(default="", max_length=500)


CALL_TYPES = ("call.invite", "call.accepted", "call.declined", "call.offer", "call.answer", "call.ice", "call.hangup")
VISITOR_CALLS = {"call.invite", "call.offer", "call.answer", "call.ice", "call.hangup"}
AGENT_CALLS = {"call.accepted", "call.declined", "call.offer", "call.answer", "call.ice", "call.hangup"}


class CallIn(Frame):
    type: Literal[CALL_TYPES]  # type: ignore[valid-type]
    conversation_id: str = Field(min_length=1, max_length=32)
    call_id: str = Field(min_length=1, max_length=64)
    sdp: str | None = Field(default=None, max_length=actions.MAX_SDP)
    candidate: dict | None = None


class TypingIn(Frame):
    type: Literal["typing"]
    conversation_id: str = Field(min_length=1, max_length=32)


class ReadIn(Frame):
    type: Literal["read"]
    conversation_id: str = Field(min_length=1, max_length=32)
    seq: int = Field(ge=0, le=2**31 - 1)


class ResumeIn(Frame):
    type: Literal["resume"]
    conversation_id: str = Field(min_length=1, max_length=32)
    after_seq: int = Field(ge=0, le=2**31 - 1)


class WatchIn(Frame):
    type: Literal["watch", "unwatch"]
    conversation_id: str = Field(min_length=1, max_length=32)


class PingIn(Frame):
    type: Literal["ping"]


class RoomSendIn(Frame):
    type: Literal["room.send"]
    room_id: str = Field(min_length=1, max_length=32)
    client_msg_id: str = Field(min_length=1, max_length=64)
    text: str = Field(max_length=actions.MAX_TEXT)


class RoomResumeIn(Frame):
    type: Literal["room.resume"]
    room_id: str = Field(min_length=1, max_length=32)
    after_seq: int = Field(ge=0, le=2**31 - 1)


SCHEMAS: dict[str, type[Frame]] = {"message.send": SendIn, "typing": TypingIn, "read": ReadIn, "resume": ResumeIn,
                                   "watch": WatchIn, "unwatch": WatchIn, "ping": PingIn, "page.view": PageViewIn,
                                   "room.send": RoomSendIn, "room.resume": RoomResumeIn,
                                   **{t: CallIn for t in CALL_TYPES}}
PONG = encode({"type": "pong"})


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, float(burst), float(burst), time.monotonic()

    def take(self) -> bool:
        t = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (t - self.at) * self.rate)
        self.at = t
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class FrameError(Exception):
    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.field = code, detail, field


class Connection:
    """One socket: its subscriptions, its outbound queue and writer, and its per-conversation send ranges."""

    def __init__(self, ws: WebSocket, actor: ChatActor) -> None:
        self.id = os.urandom(8).hex()
        self.ws, self.actor = ws, actor
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.sent: dict[str, list[int]] = {}  # conversation id → [lo, hi]: the seqs this socket has sent
        self.allowed: dict[str, list[Any]] = {}  # conversation id → [visitor_id, assignee_id, checked_at]
        self.bucket = TokenBucket(BUCKET_RATE, BUCKET_BURST)
        self.strikes: deque[float] = deque()
        self.closing = False
        self.writer: asyncio.Task | None = None
        self.ref: str | None = None  # the client_msg_id of the frame being handled, echoed in its errors
        self.holding = True  # until the client is past its resumes, or the grace after hello ends
        self.held: dict[str, list[tuple[int, str]]] = {}  # conversation id → live (seq, frame) waiting for a resume
        self.resuming: set[str] = set()  # resumes read from the client but not yet replayed by the writer
        self.frame_kind: Any = None  # the type of the frame being handled
        self.open_conversation: str | None = None  # a visitor's: where their last message went

    # -- broker side --------------------------------------------------------------------------
    def deliver(self, event: Event) -> None:
        if self.closing:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.drop(1013, "too slow: reconnect and resume")

    def drop(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        asyncio.get_running_loop().create_task(self._close_now(code, reason))

    async def _close_now(self, code: int, reason: str) -> None:
        try:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.close(code=code, reason=reason)
        except Exception:  # already gone
            pass

    # -- outbound -----------------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        try:
            self.queue.put_nowait(("text", text))
        except asyncio.QueueFull:
            self.drop(1013, "too slow: reconnect and resume")

    def send(self, frame: dict) -> None:
        self.send_text(encode(frame))

    def error(self, code: str, detail: str, field: str | None = None, ref: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
        if field:
            frame["field"] = field
        if ref:
            frame["ref"] = ref
        self.send(frame)

    async def close_after_queue(self, code: int, reason: str) -> None:
        """Close once everything queued (the error frame saying why) has gone out."""
        if self.closing:
            return
        self.closing = True
        try:
            self.queue.put_nowait(("close", code, reason))
        except asyncio.QueueFull:
            await self._close_now(code, reason)
            return
        if self.writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.writer), timeout=5)
            except (asyncio.TimeoutError, Exception):
                await self._close_now(code, reason)

    async def write_loop(self, first: str | None = None) -> None:
        ws = self.ws
        try:
            if first is not None:
                await ws.send_text(first)
                # The client answers hello with its resumes: the grace runs from here, however long hello took.
                self.start_grace(RESUME_GRACE_S)
            while True:
                item = await self.queue.get()
                if isinstance(item, Event):
                    if item.stream == actions.CLOSE_STREAM:  # blocked: say why, then close
                        await ws.send_text(item.frame)
                        self.closing = True
                        await ws.close(code=1008, reason="blocked")
                        return
                    if item.stream:
                        await self._send_in_order(item.stream, item.seq, item.frame)
                    else:
                        await ws.send_text(item.frame)
                elif item[0] == "text":
                    await ws.send_text(item[1])
                elif item[0] == "resume":
                    await self._replay(item[1], item[2])
                elif item[0] == "release":
                    await self._release_held()
                elif item[0] == "close":
                    await ws.close(code=item[1], reason=item[2])
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        except Exception:
            log.exception("socket_writer_failed", connection=self.id)
            self.drop(1011, "internal error")

    async def _send_in_order(self, stream: str, seq: int, frame: str) -> None:
        rng = self.sent.get(stream)
        if rng is None and (self.holding or stream in self.resuming):
            self.held.setdefault(stream, []).append((seq, frame))
            return
        if rng is None and stream in self.held:
            # The grace ran out before its release was handled: what waited goes first, all in order.
            for s, f in sorted(self.held.pop(stream) + [(seq, frame)]):
                await self._send_in_order(stream, s, f)
            return
        if rng is None:
            self.sent[stream] = [seq, seq]
            await self.ws.send_text(frame)
            return
        lo, hi = rng
        if lo <= seq <= hi:
            return  # sent already (a replay or a repeated event)
        if seq > hi + 1:
            # A gap: an event lost or overtaken between nodes. The database has it (seqs commit in order).
            after = hi
            while after < seq - 1:
                rows = await self._frames(stream, after, upto=seq - 1)
                if not rows:
                    break
                for s, f in rows:
                    await self.ws.send_text(f)
                after = rows[-1][0]
        await self.ws.send_text(frame)
        if seq > hi:
            rng[1] = seq
        elif seq == lo - 1:
            rng[0] = seq

    def start_grace(self, seconds: float) -> None:
        asyncio.get_running_loop().call_later(seconds, self._release_soon)

    def first_heard(self) -> None:
        """The client is past its resumes (those are registered by now): let waiting messages go."""
        if self.holding:
            self._release_soon()

    def _release_soon(self) -> None:
        if not self.closing:
            try:
                self.queue.put_nowait(("release",))
            except asyncio.QueueFull:
                self.drop(1013, "too slow: reconnect and resume")

    async def _release_held(self) -> None:
        """No resume came for these conversations within the grace: send what waited, in seq order."""
        self.holding = False
        # A conversation whose resume is on its way keeps waiting: the replay sends it all, in order.
        held = {k: v for k, v in self.held.items() if k not in self.resuming}
        self.held = {k: v for k, v in self.held.items() if k in self.resuming}
        for stream, items in held.items():
            for seq, frame in sorted(items):
                await self._send_in_order(stream, seq, frame)

    async def _frames(self, stream: str, after: int, upto: int | None = None) -> list[tuple[int, str]]:
        """Stored frames of a stream (a conversation, or `room:<id>` of the internal channel) after a seq."""
        if stream.startswith("room:"):
            return await rooms.replay_frames(self.actor, stream[5:], after, upto)
        return await message_frames(stream, after, upto=upto, staff=self.actor.is_staff_side)

    async def _replay(self, conversation_id: str, after_seq: int) -> None:
        # What waited for this resume is in the database (events are published after commit): the
        # replay below sends it in order with the rest.
        self.held.pop(conversation_id, None)
        self.resuming.discard(conversation_id)
        rng = self.sent.get(conversation_id)
        start = last = after_seq
        while True:
            rows = await self._frames(conversation_id, start)
            for s, f in rows:
                if rng is None or not rng[0] <= s <= rng[1]:
                    await self.ws.send_text(f)
            if rows:
                start = last = rows[-1][0]
            if len(rows) < min(REPLAY_BATCH, rooms.REPLAY_MAX):
                break
        if rng is None:
            self.sent[conversation_id] = [after_seq + 1, last]
        else:
            rng[0], rng[1] = min(rng[0], after_seq + 1), max(rng[1], last)

    # -- inbound ------------------------------------------------------------------------------
    def strike(self) -> bool:
        """Count one bad frame; True when the socket has earned closing."""
        t = time.monotonic()
        self.strikes.append(t)
        while self.strikes and t - self.strikes[0] > STRIKE_WINDOW_S:
            self.strikes.popleft()
        return len(self.strikes) >= STRIKES_MAX

    async def conversation(self, conversation_id: str, fresh: bool = False) -> list[Any]:
        """[visitor_id, assignee_id, checked_at] of a conversation this socket may use; not_found otherwise."""
        info = self.allowed.get(conversation_id)
        if info is not None and not (fresh and time.monotonic() - info[2] > ASSIGNEE_TTL_S):
            return info
        async with transaction() as session:
            conv = await actions.access_conversation(session, self.actor, conversation_id)
            info = [conv.visitor_id, conv.assignee_id, time.monotonic()]
        if len(self.allowed) > 500:
            self.allowed.clear()
        self.allowed[conversation_id] = info
        return info

    async def handle(self, text: str) -> None:
        if len(text) > FRAME_MAX or (len(text) * 4 > FRAME_MAX and len(text.encode()) > FRAME_MAX):
            raise FrameError("frame_too_large", f"a frame is at most {FRAME_MAX} bytes")
        try:
            data = json.loads(text)
        except ValueError:
            raise FrameError("malformed_json", "a frame must be one JSON object") from None
        if not isinstance(data, dict):
            raise FrameError("bad_frame", "a frame must be one JSON object")
        ref = data.get("client_msg_id")
        self.ref = ref if isinstance(ref, str) and len(ref) <= 64 else None
        kind = data.get("type")
        self.frame_kind = kind
        if not isinstance(kind, str):
            raise FrameError("bad_frame", "type is required", "type")
        schema = SCHEMAS.get(kind)
        if schema is None:
            raise FrameError("unknown_type", f"unknown frame type '{kind[:40]}'", "type")
        try:
            frame = schema.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "type"
            raise FrameError("validation_failed", f"{field}: {err['msg']}", field) from None
        if kind in CALL_TYPES:
            await self.on_call(frame)  # type: ignore[arg-type]
            return
        await getattr(self, "on_" + kind.replace(".", "_"))(frame)

    async def on_message_send(self, f: SendIn) -> None:
        if self.actor.kind == "visitor":
            per_minute = get_settings().chat_visitor_messages_per_minute
            ratelimit.hit(f"{per_minute}/minute", "chat-send", self.actor.visitor_id or "")
        # An ordinary message in a conversation under way goes with the next batch (chat/writer.py);
        # anything else, or whatever the batch turns back, takes the transaction of its own.
        conversation_id = f.conversation_id or (self.open_conversation if self.actor.kind == "visitor" else None)
        if conversation_id and f.text and not (f.attachment_id or f.card or f.private or f.mentions):
            sent = await get_writer().send(self.actor, client_msg_id=f.client_msg_id, text=f.text,
                                           conversation_id=conversation_id, explicit=bool(f.conversation_id),
                                           on_stored=self.send)
            if sent is not None:
                if sent.message is None:
                    self.send(sent.ack)  # a resend: the first ack again
                return
        sent = await actions.do_send_message(self.actor, client_msg_id=f.client_msg_id, text=f.text,
                                             attachment_id=f.attachment_id, conversation_id=f.conversation_id,
                                             on_stored=self.send,
                                             card=f.card.model_dump(exclude_none=True) if f.card else None,
                                             private=f.private, mentions=f.mentions)
        if sent.message is None:
            self.send(sent.ack)  # a resend: the first ack again, nothing stored or broadcast
        if self.actor.kind == "visitor":
            self.open_conversation = sent.ack["conversation_id"]

    async def on_typing(self, f: TypingIn) -> None:
        visitor_id, assignee_id, _ = await self.conversation(f.conversation_id, fresh=not self.actor.is_staff_side)
        topics = actions.other_side(self.actor, f.conversation_id, visitor_id, assignee_id, self.actor.merchant_id)
        frame = encode({"type": "typing", "conversation_id": f.conversation_id, "sender": self.actor.sender()})
        await get_broker().publish(Event(topics, frame, skip=self.id))

    async def on_read(self, f: ReadIn) -> None:
        await actions.do_mark_read(self.actor, f.conversation_id, f.seq, skip=self.id)

    async def on_resume(self, f: ResumeIn) -> None:
        # From the moment the resume is read, live messages of this conversation wait for its replay, however
        # long the access check below takes (the grace after hello alone was too short on a busy SQLite).
        self.resuming.add(f.conversation_id)
        try:
            await self.conversation(f.conversation_id)
        except BaseException:
            self.resuming.discard(f.conversation_id)
            self._release_soon()
            raise
        if self.actor.is_staff_side:
            get_broker().subscribe(self, f"c:{f.conversation_id}")  # an agent who opens a chat watches it
        try:
            self.queue.put_nowait(("resume", f.conversation_id, f.after_seq))
        except asyncio.QueueFull:
            self.drop(1013, "too slow: reconnect and resume")

    async def on_watch(self, f: WatchIn) -> None:
        if not self.actor.is_staff_side:
            raise FrameError("forbidden", "only staff watch conversations", "type")
        await self.conversation(f.conversation_id)
        get_broker().subscribe(self, f"c:{f.conversation_id}")

    async def on_unwatch(self, f: WatchIn) -> None:
        get_broker().unsubscribe(self, f"c:{f.conversation_id}")

    async def on_ping(self, f: PingIn) -> None:
        self.send_text(PONG)

    async def on_room_send(self, f: RoomSendIn) -> None:
        if self.actor.kind != "staff":
            raise FrameError("forbidden", "the internal channel is for staff", "type")
        ack, event = await rooms.do_send(self.actor, f.room_id, client_msg_id=f.client_msg_id, text=f.text)
        self.send(ack)
        if event is not None:
            await get_broker().publish(event)

    async def on_room_resume(self, f: RoomResumeIn) -> None:
        if self.actor.kind != "staff":
            raise FrameError("forbidden", "the internal channel is for staff", "type")
        stream = f"room:{f.room_id}"
        self.resuming.add(stream)  # as for conversations: live room messages wait for this replay
        try:
            async with transaction() as session:
                await rooms.access_room(session, self.actor, f.room_id)
        except BaseException:
            self.resuming.discard(stream)
            self._release_soon()
            raise
        try:
            self.queue.put_nowait(("resume", stream, f.after_seq))
        except asyncio.QueueFull:
            self.drop(1013, "too slow: reconnect and resume")

    async def on_page_view(self, f: PageViewIn) -> None:
        await actions.do_page_view(self.actor, f.url, f.title)

    async def on_call(self, f: CallIn) -> None:
        """Relay WebRTC signalling between the conversation's visitor and its assignee; nothing is stored."""
        visitor_id, assignee_id, _ = await self.conversation(f.conversation_id, fresh=True)
        if self.actor.kind == "visitor":
            if f.type not in VISITOR_CALLS:
                raise FrameError("forbidden", f"{f.type} comes from the agent", "type")
            if not assignee_id:
                raise FrameError("no_agent", "no agent holds this chat yet", "conversation_id")
            target = f"s:{assignee_id}"
        else:
            if assignee_id != self.actor.staff_id:
                raise FrameError("not_found", "no such conversation", "conversation_id")
            if f.type not in AGENT_CALLS:
                raise FrameError("forbidden", f"{f.type} comes from the visitor", "type")
            target = f"v:{visitor_id}"
        frame = f.model_dump(exclude_none=True)
        frame["from"] = self.actor.sender()
        await get_broker().publish(Event((target,), encode(frame), skip=self.id))


async def _refuse(ws: WebSocket, code: str, detail: str) -> None:
    try:
        await ws.send_text(encode({"type": "error", "code": code, "detail": detail}))
        await ws.close(code=1008, reason=code)
    except (WebSocketDisconnect, RuntimeError, OSError):  # the client left first
        pass


async def hello_for(actor: ChatActor, ws: WebSocket | None = None) -> dict:
    if actor.kind == "staff":
        return {"type": "hello", "protocol": PROTOCOL, "staff_id": actor.staff_id, "name": actor.name}
    if ws is not None:
        return await actions.do_visitor_connected(actor, *client_of(ws))
    async with transaction() as session:
        conv = await actions.open_conversation(session, actor.visitor_id)
        spot = None
        if conv is not None and conv.status == "queued":
            spot = (await routing.queue_view(session, conv.merchant_id, actions.now(), only={conv.id})).get(conv.id)
        names = await actions.staff_names(session, {conv.assignee_id} if conv else set())
        online = bool(await routing.online_pool(session, actor.merchant_id))
        return {"type": "hello", "protocol": PROTOCOL, "visitor_id": actor.visitor_id,
                "conversation": actions.conversation_out(conv, names.get(conv.assignee_id or ""), spot) if conv else None,
                "agents_online": online}


def client_of(ws: WebSocket) -> tuple[str, str]:
    """(IP, user agent) of a socket; X-Forwarded-For only behind a trusted proxy."""
    ip = rules.client_ip(ws.client.host if ws.client else "", ws.headers.get("x-forwarded-for"),
                         get_settings().trusted_proxy)
    return ip, ws.headers.get("user-agent", "")


class LocalPeople:
    """Who has sockets on this node: agents (for the presence heartbeat) and visitors (online or gone)."""

    def __init__(self) -> None:
        self.staff: dict[str, int] = {}
        self.visitors: dict[str, int] = {}
        self.heartbeat: asyncio.Task | None = None

    def add(self, actor: ChatActor) -> None:
        table, key = (self.staff, actor.staff_id) if actor.kind == "staff" else (self.visitors, actor.visitor_id)
        table[key] = table.get(key, 0) + 1
        if actor.kind == "staff" and (self.heartbeat is None or self.heartbeat.done()):
            self.heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="presence-heartbeat")

    def remove(self, actor: ChatActor) -> bool:
        """Forget one socket; True when it was the person's last on this node."""
        table, key = (self.staff, actor.staff_id) if actor.kind == "staff" else (self.visitors, actor.visitor_id)
        n = table.get(key, 0) - 1
        if n > 0:
            table[key] = n
            return False
        table.pop(key, None)
        return True

    async def _beat(self) -> None:
        interval = max(0.2, min(15.0, get_settings().chat_presence_grace_s / 4))
        while self.staff:
            try:
                await actions.touch_agent_sockets(list(self.staff))
            except Exception:
                log.warning("presence_heartbeat_failed", exc_info=True)
            await asyncio.sleep(interval)


people = LocalPeople()


async def chat_socket(ws: WebSocket) -> None:
    """Serve one chat socket until it closes."""
    await ws.accept()
    version = ws.query_params.get("v", "1")
    if version != str(PROTOCOL):
        await _refuse(ws, "unsupported_version", f"this server speaks protocol {PROTOCOL}")
        return
    try:
        async with sessionmaker()() as session:
            actor = await actions.resolve_actor(session, ws.query_params.get("token"))
    except DomainError as exc:
        await _refuse(ws, "unauthorized", exc.detail)
        return
    if actor.kind not in ("visitor", "staff"):
        await _refuse(ws, "unauthorized", "connect with a widget token or a staff token")
        return
    conn = Connection(ws, actor)
    broker = get_broker()
    if actor.kind == "visitor":
        topics = [f"v:{actor.visitor_id}"]
        if actor.store_id:
            topics.append(f"st:{actor.store_id}")  # the store's announcements
        broker.subscribe(conn, *topics)
    else:
        broker.subscribe(conn, f"s:{actor.staff_id}", f"m:{actor.merchant_id}")
    people.add(actor)
    try:
        # Subscribed first, so nothing published from now on is missed; the writer starts with the
        # hello, so it is the first frame whatever was queued meanwhile.
        try:
            hello = encode(await hello_for(actor, ws))
        except DomainError as exc:  # a blocked visitor
            await _refuse(ws, exc.code, exc.detail)
            return
        conn.writer = asyncio.create_task(conn.write_loop(hello), name=f"ws-writer-{conn.id}")
        while not conn.closing:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            text = msg.get("text")
            conn.ref = None
            try:
                if not conn.bucket.take():
                    raise FrameError("rate_limited", "too many frames: slow down")
                if text is None:
                    raise FrameError("bad_frame", "send text frames (JSON)")
                await conn.handle(text)
            except FrameError as exc:
                conn.error(exc.code, exc.detail, exc.field, conn.ref)
                if exc.code not in BENIGN and conn.strike():
                    conn.error("policy_violation", "too many bad or excessive frames: closing")
                    await conn.close_after_queue(1008, "policy violation")
            except DomainError as exc:
                conn.error(exc.code, exc.detail, exc.field, conn.ref)
                if exc.code not in BENIGN and conn.strike():
                    conn.error("policy_violation", "too many bad or excessive frames: closing")
                    await conn.close_after_queue(1008, "policy violation")
            except (WebSocketDisconnect, RuntimeError):
                raise
            except Exception:
                log.exception("socket_frame_failed", connection=conn.id)
                conn.error("internal_error", "something went wrong on our side; it is logged", ref=conn.ref)
            finally:
                # A client resumes first and then goes on (resends, pings): its first other frame ends the wait.
                if conn.frame_kind not in ("resume", "room.resume"):
                    conn.first_heard()
                conn.frame_kind = None
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        conn.closing = True
        broker.unsubscribe(conn)
        if people.remove(actor):
            try:
                if actor.kind == "staff":
                    await actions.touch_agent_sockets([actor.staff_id])  # the grace period starts now
                else:
                    await actions.do_visitor_left(actor.visitor_id)
            except Exception:
                log.warning("socket_left_not_recorded", exc_info=True)
        if conn.writer is not None and not conn.writer.done():
            conn.writer.cancel()
            try:
                await conn.writer
            except (asyncio.CancelledError, Exception):
                pass

