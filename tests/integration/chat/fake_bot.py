"""A stand-in answerer for the bot-first tests, loaded in the server by SHOPDESK_CHAT_BOT=tests.integration.chat.fake_bot:answer.

What it does depends on the visitor's words, so one server process covers every case.
"""
import asyncio

from shopdesk.chat.bot import BotContext, BotReply


async def answer(context: BotContext) -> BotReply | None:
    text = context.text
    if "boom" in text:
        raise RuntimeError("the fake bot breaks on purpose")
    if "hang" in text:
        await asyncio.sleep(60)  # far beyond the server's timeout
    if "dunno" in text:
        return None
    if "耳机" in text:
        return BotReply("这款耳机在售：", card={"type": "product", "sku": "A"})
    if "ghost" in text:
        return BotReply("这件商品不存在", card={"type": "product", "sku": "NO-SUCH-SKU"})
    if "done" in text:
        return BotReply("那我请同事来帮您。", handoff=True)
    seen = [f"{line.seq}:{line.sender_type}" for line in context.history]
    return BotReply(f"fake bot: {text} | {context.store_code} | {' '.join(seen)}")
