"""The bot hook's pure parts: recognising a request for a person, the built-in answerer, failures as handoffs."""
import asyncio

import pytest

from shopdesk.chat import bot
from shopdesk.chat.bot import BotContext, BotReply, asks_for_human


@pytest.mark.parametrize("text, expected", [
    ("转人工", True),
    ("人工", True),
    ("我要人工服务", True),
    ("找客服", True),
    ("人工客服在吗？", True),
    ("能让真人来回答吗", True),
    ("human", True),
    ("Can I talk to a HUMAN please", True),
    ("agent!", True),
    ("I want an agent", True),
    ("转agent", True),                  # no space between Chinese and English
    ("ＡＧＥＮＴ", True),               # full-width letters
    ("我不要人工，帮我查订单", False),  # a negation right before the word
    ("不用转人工", False),
    ("不要 客服", False),
    ("不要机器人，要人工", True),       # the negation belongs to something else
    ("我的订单到哪了", False),
    ("agenda for today", False),       # English words stand alone
    ("humane society", False),
    ("useragent", False),
    ("", False),
])
def test_asks_for_human(text, expected):
    assert asks_for_human(text) is expected


def context(text: str, agents_online: bool = True) -> BotContext:
    return BotContext(merchant_id="m", store_id="s", store_code="main", conversation_id="c", visitor_id="v",
                      customer_id=None, text=text, history=(), agents_online=agents_online)


@pytest.mark.parametrize("text, online, expected", [
    ("你好", True, bot.GREETING_TEXT),
    ("转人工", True, bot.TRANSFER_TEXT),
    ("你好", False, bot.OFFLINE_TEXT),
    ("转人工", False, bot.OFFLINE_TEXT),
])
def test_builtin_answerer_always_hands_off_with_a_polite_reply(text, online, expected):
    reply = asyncio.run(bot.builtin_answerer(context(text, online)))
    assert reply == BotReply(expected, handoff=True)


async def _raises(ctx):
    raise RuntimeError("broken")


async def _hangs(ctx):
    await asyncio.sleep(10)


async def _none(ctx):
    return None


async def _answers(ctx):
    return BotReply("答案")


@pytest.fixture
def registry():
    bot.unregister_answerer()
    yield
    bot.unregister_answerer()


@pytest.mark.parametrize("answerer, text, expected", [
    (_raises, "你好", BotReply(bot.GREETING_TEXT, handoff=True)),
    (_hangs, "你好", BotReply(bot.GREETING_TEXT, handoff=True)),
    (_none, "你好", BotReply(bot.GREETING_TEXT, handoff=True)),
    (_answers, "你好", BotReply("答案")),
    (_answers, "转人工", BotReply(bot.TRANSFER_TEXT, handoff=True)),  # asked for a person: the bot is not asked
])
def test_answer_turns_failures_and_requests_for_a_person_into_handoffs(registry, answerer, text, expected):
    bot.register_answerer(answerer)
    assert asyncio.run(bot.answer(context(text), timeout_s=0.2)) == expected


def test_one_answerer_per_process(registry):
    bot.register_answerer(_answers)
    bot.register_answerer(_answers)  # the same one again (a second app start) is fine
    with pytest.raises(RuntimeError):
        bot.register_answerer(_none)
    assert bot.current_answerer() is _answers


def test_load_answerer_needs_module_and_callable(registry):
    with pytest.raises(ValueError):
        bot.load_answerer("tests.integration.chat.fake_bot")
    assert bot.current_answerer() is bot.builtin_answerer
    assert bot.load_answerer("tests.integration.chat.fake_bot:answer") is bot.current_answerer()
