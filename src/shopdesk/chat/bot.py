"""The hook where a bot answers a visitor first (issue 3); the knowledge-base bot itself comes later.

A process registers one answerer (`register_answerer`, or `SHOPDESK_CHAT_BOT=module:attr` loaded at
startup). It gets a `BotContext` and returns a `BotReply`, or None for "I don't know" (a handoff).
Without one, `builtin_answerer` greets the visitor and hands every chat to a person. The answerer
runs after the visitor's message has committed, never inside a transaction, and is cut off after
`SHOPDESK_CHAT_BOT_TIMEOUT_S`; `actions.do_bot_turn` stores its reply and routes a handoff.
"""
from __future__ import annotations

import asyncio
import importlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Awaitable, Callable, Coroutine

import structlog

log = structlog.get_logger("shopdesk.chat.bot")

DEFAULT_BOT_NAME = "智能助手"
HISTORY = 20  # the most recent messages an answerer sees


@dataclass(frozen=True)
class HistoryLine:
    seq: int
    sender_type: str  # visitor | agent | bot | system
    text: str


@dataclass(frozen=True)
class BotContext:
    """What an answerer knows: whose chat it is, what they just wrote, and what came before (oldest first)."""

    merchant_id: str
    store_id: str
    store_code: str
    conversation_id: str
    visitor_id: str
    customer_id: str | None
    text: str
    history: tuple[HistoryLine, ...]
    agents_online: bool


@dataclass(frozen=True)
class BotReply:
    """The bot's message: text, maybe a card ({type: product, sku} / {type: order, order_no}); handoff → a person."""

    text: str
    card: dict | None = None
    handoff: bool = False


Answerer = Callable[[BotContext], Awaitable["BotReply | None"]]

# --- recognising "let me talk to a person" ------------------------------------------------------

# English words stand alone (Python's \b sees no edge between 找 and "agent": both are word characters).
_HUMAN = re.compile(r"转人工|人工|客服|真人|(?<![a-z])(?:human|agent|real person)s?(?![a-z])")
# 不要人工 is not a request for one; only a negation right before the word counts.
_NEGATED = ("不要", "不用", "不需要", "无需", "别", "不找", "不转")


def asks_for_human(text: str) -> bool:
    """Whether the visitor asks for a person (人工, 转人工, 客服, human, agent) rather than the bot."""
    plain = unicodedata.normalize("NFKC", text or "").casefold()
    plain = re.sub(r"\s+", " ", plain)
    for match in _HUMAN.finditer(plain):
        before = plain[:match.start()].rstrip()
        if not before.endswith(_NEGATED):
            return True
    return False


# --- the built-in answerer ----------------------------------------------------------------------

TRANSFER_TEXT = "好的，正在为您转接人工客服，请稍候。"
GREETING_TEXT = "您好，我是智能助手。客服马上就来，请稍候。"
OFFLINE_TEXT = "您好，客服暂时不在线。请留下您的问题和联系方式，我们会尽快回复您。"


def handoff_reply(context: BotContext, *, asked: bool = False) -> BotReply:
    """The polite handoff: agents are coming (or, with nobody on duty, leave a message)."""
    if not context.agents_online:
        return BotReply(OFFLINE_TEXT, handoff=True)
    return BotReply(TRANSFER_TEXT if asked else GREETING_TEXT, handoff=True)


async def builtin_answerer(context: BotContext) -> BotReply:
    """No bot yet: greet the visitor and hand the chat to a person."""
    return handoff_reply(context, asked=asks_for_human(context.text))


# --- the registry -------------------------------------------------------------------------------

_answerer: Answerer | None = None


def register_answerer(fn: Answerer) -> None:
    """Make fn this process's answerer; one per process, so a second, different one is a mistake."""
    global _answerer
    if _answerer is not None and _answerer is not fn:
        raise RuntimeError(f"a chat answerer is registered already ({_answerer!r})")
    _answerer = fn


def unregister_answerer() -> None:
    global _answerer
    _answerer = None


def current_answerer() -> Answerer:
    return _answerer or builtin_answerer


def load_answerer(path: str) -> Answerer:
    """Import `package.module:callable` and register it (SHOPDESK_CHAT_BOT); a bad path fails startup."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"SHOPDESK_CHAT_BOT must be 'module:callable', not {path!r}")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise ValueError(f"SHOPDESK_CHAT_BOT: {path} is not callable")
    register_answerer(fn)
    log.info("chat_answerer_registered", answerer=path)
    return fn


async def answer(context: BotContext, timeout_s: float) -> BotReply:
    """Ask the answerer, within timeout_s; a person takes over when it fails, stalls or does not know."""
    if asks_for_human(context.text):
        return handoff_reply(context, asked=True)  # whatever the bot would say, they asked for a person
    fn = current_answerer()
    try:
        reply = await asyncio.wait_for(fn(context), timeout_s)
    except asyncio.TimeoutError:
        log.warning("chat_answerer_timed_out", conversation_id=context.conversation_id, timeout_s=timeout_s)
        return handoff_reply(context)
    except Exception:
        log.exception("chat_answerer_failed", conversation_id=context.conversation_id)
        return handoff_reply(context)
    if not isinstance(reply, BotReply) or not (reply.text.strip() or reply.card):
        return handoff_reply(context)  # None (or nothing to say): the bot does not know
    return reply


# --- turns run after the commit, one at a time per conversation ----------------------------------

_turns: dict[str, asyncio.Task] = {}


def start_turn(conversation_id: str, turn: Callable[[], Coroutine]) -> asyncio.Task:
    """Run a bot turn in the background, after the conversation's previous one: answers keep the questions' order."""
    previous = _turns.get(conversation_id)

    async def run() -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        try:
            await turn()
        except Exception:
            log.exception("chat_bot_turn_failed", conversation_id=conversation_id)
        finally:
            if _turns.get(conversation_id) is task:
                del _turns[conversation_id]

    task = asyncio.get_running_loop().create_task(run(), name=f"chat-bot-{conversation_id}")
    _turns[conversation_id] = task
    return task
