"""The internal channel (企业内部即时通讯): a merchant-wide staff room and direct messages between agents.

Same rules as conversations: a message is stored with the room's next seq (one UPDATE … RETURNING) before
it is acknowledged, a resend with the same client_msg_id is answered with the first ack, and a client
catches up with `room.resume` from its last seq. Rooms reach staff sockets only (topics `m:` for the staff
room, `s:` for the two people of a direct room); a visitor's socket can neither send nor receive them.
"""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from shopdesk.accounts.models import Staff
from shopdesk.chat.actions import MAX_TEXT, ChatActor, encode
from shopdesk.chat.models import ChatRoom, ChatRoomMessage
from shopdesk.core.clock import isoformat, now
from shopdesk.core.db import transaction
from shopdesk.core.errors import NotFound, ValidationFailed
from shopdesk.core.pubsub import Event

STAFF_ROOM = "staff"
REPLAY_MAX = 500


def direct_key(a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"dm:{low}:{high}"


def room_topics(room: ChatRoom) -> tuple[str, ...]:
    if room.key == STAFF_ROOM:
        return (f"m:{room.merchant_id}",)
    return tuple(f"s:{m}" for m in room.member_ids)


def message_out(m: ChatRoomMessage) -> dict:
    return {"id": m.id, "room_id": m.room_id, "seq": m.seq, "client_msg_id": m.client_msg_id,
            "sender": {"type": "agent", "id": m.sender_id, "name": m.sender_name}, "text": m.text,
            "created_at": isoformat(m.created_at)}


def frame_of(m: ChatRoomMessage) -> str:
    return encode({"type": "room.message", "message": message_out(m)})


async def _get_or_create(session: AsyncSession, merchant_id: str, key: str, members: list[str]) -> ChatRoom:
    room = (await session.execute(select(ChatRoom).where(ChatRoom.merchant_id == merchant_id,
                                                         ChatRoom.key == key))).scalar_one_or_none()
    if room is None:
        try:
            async with session.begin_nested():
                room = ChatRoom(merchant_id=merchant_id, key=key, member_ids=members, last_seq=0, created_at=now())
                session.add(room)
        except IntegrityError:  # created by a colleague at the same moment
            room = (await session.execute(select(ChatRoom).where(ChatRoom.merchant_id == merchant_id,
                                                                 ChatRoom.key == key))).scalar_one()
    return room


async def access_room(session: AsyncSession, actor: ChatActor, room_id: str, *, lock: bool = False) -> ChatRoom:
    """A room the caller is in: the staff room for every staff member, a direct room for its two people."""
    if actor.kind != "staff":
        raise NotFound("no such room", field="room_id")
    stmt = select(ChatRoom).where(ChatRoom.id == room_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    room = (await session.execute(stmt)).scalar_one_or_none() if len(room_id) <= 32 else None
    if room is None or room.merchant_id != actor.merchant_id or (
            room.key != STAFF_ROOM and actor.staff_id not in room.member_ids):
        raise NotFound("no such room", field="room_id")
    return room


def room_out(room: ChatRoom, names: dict[str, str], me: str | None) -> dict:
    others = [m for m in room.member_ids if m != me]
    return {"id": room.id, "key": room.key, "member_ids": room.member_ids, "last_seq": room.last_seq,
            "title": "" if room.key == STAFF_ROOM else ", ".join(names.get(m, "") for m in others)}


async def rooms_of(session: AsyncSession, actor: ChatActor) -> list[dict]:
    actor.require_agent()
    async with transaction() as tx:
        await _get_or_create(tx, actor.merchant_id, STAFF_ROOM, [])
    rows = (await session.execute(select(ChatRoom).where(ChatRoom.merchant_id == actor.merchant_id)
                                  .order_by(ChatRoom.created_at, ChatRoom.id))).scalars().all()
    mine = [r for r in rows if r.key == STAFF_ROOM or actor.staff_id in r.member_ids]
    ids = {m for r in mine for m in r.member_ids}
    names = dict((await session.execute(select(Staff.id, Staff.name).where(Staff.id.in_(ids))))) if ids else {}
    return [room_out(r, names, actor.staff_id) for r in mine]


async def do_open_direct(actor: ChatActor, agent_id: str) -> dict:
    staff_id = actor.require_agent()
    async with transaction() as session:
        other = await session.get(Staff, agent_id) if len(agent_id) <= 32 else None
        if other is None or other.merchant_id != actor.merchant_id or other.id == staff_id:
            raise ValidationFailed("no such colleague", field="agent_id")
        room = await _get_or_create(session, actor.merchant_id, direct_key(staff_id, agent_id),
                                    sorted((staff_id, agent_id)))
        return room_out(room, {other.id: other.name, staff_id: actor.name}, staff_id)


async def do_send(actor: ChatActor, room_id: str, *, client_msg_id: str, text: str) -> tuple[dict, Event | None]:
    """Store a room message with the room's next seq, then publish it; a resend returns the first ack."""
    if not text.strip():
        raise ValidationFailed("a message needs text", field="text")
    if len(text) > MAX_TEXT:
        raise ValidationFailed(f"at most {MAX_TEXT} characters", field="text")
    for attempt in (1, 2):
        try:
            async with transaction() as session:
                room = await access_room(session, actor, room_id)
                earlier = (await session.execute(select(ChatRoomMessage).where(
                    ChatRoomMessage.room_id == room.id, ChatRoomMessage.sender_id == actor.staff_id,
                    ChatRoomMessage.client_msg_id == client_msg_id))).scalar_one_or_none()
                if earlier is not None:
                    return ack_of(earlier), None  # a resend: the first ack, nothing stored or published
                seq = (await session.execute(update(ChatRoom).where(ChatRoom.id == room.id)
                                             .values(last_seq=ChatRoom.last_seq + 1).returning(ChatRoom.last_seq)
                                             .execution_options(synchronize_session=False))).scalar_one()
                set_committed_value(room, "last_seq", seq)
                message = ChatRoomMessage(merchant_id=room.merchant_id, room_id=room.id, seq=seq,
                                          client_msg_id=client_msg_id, sender_id=actor.staff_id,
                                          sender_name=actor.name, text=text, created_at=now())
                session.add(message)
                await session.flush()
                event = Event(room_topics(room), frame_of(message), stream=f"room:{room.id}", seq=seq)
                ack = ack_of(message)
        except IntegrityError:
            if attempt == 2:
                raise
            continue
        return ack, event
    raise AssertionError("unreachable")


def ack_of(m: ChatRoomMessage) -> dict:
    return {"type": "room.ack", "client_msg_id": m.client_msg_id, "message_id": m.id, "room_id": m.room_id,
            "seq": m.seq}


async def messages(session: AsyncSession, actor: ChatActor, room_id: str, *, after_seq: int,
                   limit: int = REPLAY_MAX) -> list[dict]:
    actor.require_agent()
    room = await access_room(session, actor, room_id)
    rows = (await session.execute(select(ChatRoomMessage).where(
        ChatRoomMessage.room_id == room.id, ChatRoomMessage.seq > after_seq)
        .order_by(ChatRoomMessage.seq).limit(limit))).scalars()
    return [message_out(m) for m in rows]


async def replay_frames(actor: ChatActor, room_id: str, after_seq: int,
                        upto: int | None = None) -> list[tuple[int, str]]:
    """room.message frames with seq > after_seq (and ≤ upto), in order: the socket's catch-up."""
    async with transaction() as session:
        room = await access_room(session, actor, room_id)
        stmt = select(ChatRoomMessage).where(ChatRoomMessage.room_id == room.id, ChatRoomMessage.seq > after_seq)
        if upto is not None:
            stmt = stmt.where(ChatRoomMessage.seq <= upto)
        rows = (await session.execute(stmt.order_by(ChatRoomMessage.seq).limit(REPLAY_MAX))).scalars().all()
        return [(m.seq, frame_of(m)) for m in rows]
