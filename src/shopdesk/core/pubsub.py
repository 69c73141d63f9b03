"""The real-time broker: topics → local sockets, and across server processes through Redis pub/sub.

Events are published after the database commit; the database stays the source of truth and a
client that missed an event catches up by sequence number. A frame is encoded once by the
publisher and the same text goes to every local socket subscribed to any of its topics (a socket
subscribed to several of them gets it once).

One process needs nothing else (`LocalBroker`). With `SHOPDESK_REDIS_URL` every process publishes
each event once on one Redis channel and delivers what the others publish to its own sockets
(`RedisBroker`). Redis pub/sub is at-most-once: when the subscription breaks, the process closes
its sockets (1012) so their clients reconnect and resume from their last sequence number.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger("shopdesk.pubsub")

CHANNEL = "shopdesk:rt:v1"
SEP = "\x1f"  # never in topics, ids or numbers; frames may hold anything after the last one


@dataclass(frozen=True, slots=True)
class Event:
    """One encoded frame for some topics; `stream`/`seq` order it within a stream (a conversation)."""

    topics: tuple[str, ...]
    frame: str
    stream: str = ""
    seq: int = 0
    skip: str = ""  # the id of a socket that must not get it (the sender of a typing frame)

    def encode(self, node: str) -> str:
        return SEP.join((node, ",".join(self.topics), self.stream, str(self.seq), self.skip, self.frame))

    @staticmethod
    def decode(data: str) -> tuple[str, "Event"]:
        node, topics, stream, seq, skip, frame = data.split(SEP, 5)
        return node, Event(tuple(topics.split(",")) if topics else (), frame, stream, int(seq or 0), skip)


class Subscriber(Protocol):
    id: str

    def deliver(self, event: Event) -> None:
        """Take an event without blocking (queue it); the broker never waits for a socket."""

    def drop(self, code: int, reason: str) -> None:
        """Close the socket from the broker's side (its events can no longer be trusted)."""


class LocalBroker:
    """Topics and subscribers of this process."""

    def __init__(self) -> None:
        self.node = os.urandom(8).hex()
        self._topics: dict[str, set[Subscriber]] = {}
        self._subs: dict[Subscriber, set[str]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def subscribe(self, sub: Subscriber, *topics: str) -> None:
        mine = self._subs.setdefault(sub, set())
        for topic in topics:
            self._topics.setdefault(topic, set()).add(sub)
            mine.add(topic)

    def unsubscribe(self, sub: Subscriber, *topics: str) -> None:
        """Remove some topics of a subscriber, or all of them when none are named."""
        mine = self._subs.get(sub)
        if mine is None:
            return
        for topic in (topics or tuple(mine)):
            mine.discard(topic)
            subs = self._topics.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._topics[topic]
        if not mine or not topics:
            self._subs.pop(sub, None)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def dispatch(self, event: Event) -> int:
        """Hand an event to every local subscriber of any of its topics, once each."""
        topics = self._topics
        if len(event.topics) == 1:
            targets = topics.get(event.topics[0], ())
        else:
            found: set[Subscriber] = set()
            for topic in event.topics:
                subs = topics.get(topic)
                if subs:
                    found |= subs
            targets = found
        n = 0
        for sub in tuple(targets):
            if sub.id != event.skip:
                sub.deliver(event)
                n += 1
        return n

    async def publish(self, event: Event) -> None:
        self.dispatch(event)

    async def publish_many(self, events: list[Event]) -> None:
        for event in events:
            await self.publish(event)


class RedisBroker(LocalBroker):
    """Deliver locally at once, and through one Redis channel to every other process."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        super().__init__()
        self.url, self.channel = url, channel
        self._redis = None
        self._listener: asyncio.Task | None = None
        self._ready = asyncio.Event()

    def _client(self):
        if self._redis is None:
            import redis.asyncio as redis

            # Named, so an operator (or a test) can tell this process's connections apart in CLIENT LIST.
            self._redis = redis.Redis.from_url(self.url, decode_responses=True, health_check_interval=10,
                                               client_name=f"shopdesk-rt-{os.getpid()}")
        return self._redis

    async def start(self) -> None:
        self._client()
        self._listener = asyncio.create_task(self._listen(), name="pubsub-listener")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=5)
        except asyncio.TimeoutError:  # keep serving this node's sockets; the listener keeps retrying
            log.warning("redis_subscribe_slow", url=self.url)

    async def close(self) -> None:
        if self._listener:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):
                pass
        if self._redis is not None:
            await self._redis.aclose()

    async def publish(self, event: Event) -> None:
        self.dispatch(event)
        try:
            await self._client().publish(self.channel, event.encode(self.node))
        except Exception:  # stored already; other nodes' clients catch up by sequence number
            log.exception("redis_publish_failed")

    async def publish_many(self, events: list[Event]) -> None:
        for event in events:
            self.dispatch(event)
        if not events:
            return
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.publish(self.channel, event.encode(self.node))
                await pipe.execute()
        except Exception:
            log.exception("redis_publish_failed")

    async def _listen(self) -> None:
        broken = False
        while True:
            pubsub = None
            try:
                pubsub = self._client().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                self._ready.set()
                if broken:
                    # Events published while we were away are lost to this node's sockets: make their
                    # clients reconnect and resume from their last sequence number.
                    self._drop_all(1012, "broker reconnected")
                    broken = False
                while True:
                    msg = await pubsub.get_message(timeout=30)
                    if msg is None or msg.get("type") != "message":
                        continue
                    try:
                        node, event = Event.decode(msg["data"])
                    except ValueError:
                        log.warning("pubsub_bad_envelope")
                        continue
                    if node != self.node:
                        self.dispatch(event)
            except asyncio.CancelledError:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception:
                        pass
                raise
            except Exception:
                log.warning("redis_subscription_lost", exc_info=True)
                broken = True
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception:
                        pass
                await asyncio.sleep(1)

    def _drop_all(self, code: int, reason: str) -> None:
        for sub in list(self._subs):
            sub.drop(code, reason)


_broker: LocalBroker | None = None


def get_broker() -> LocalBroker:
    """This process's broker: Redis-backed when SHOPDESK_REDIS_URL is set, else in-process."""
    global _broker
    if _broker is None:
        from shopdesk.config import get_settings

        url = get_settings().redis_url
        _broker = RedisBroker(url) if url else LocalBroker()
    return _broker


async def start_broker() -> LocalBroker:
    broker = get_broker()
    await broker.start()
    return broker


async def close_broker() -> None:
    global _broker
    if _broker is not None:
        await _broker.close()
    _broker = None
