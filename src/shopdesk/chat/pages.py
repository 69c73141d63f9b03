"""The agent console's chat page: a shell the JS app (static/console-chat.js) fills over /ws and the API."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from shopdesk.core import i18n
from shopdesk.core.errors import NotFound
from shopdesk.web.pages import StaffPage, lang_of, page_token, render

router = APIRouter()


def chat_strings(lang: str) -> dict[str, str]:
    """The page's text for the JS app, in the person's language."""
    return {key[5:]: text for key, text in i18n.MESSAGES[lang].items() if key.startswith("chat.")}


@router.get("/console/chat")
async def chat_console(request: Request, principal: StaffPage) -> Response:
    if principal.is_platform or principal.merchant_id is None:
        raise NotFound("page not found")  # platform operators rule on escalations; they hold no chats
    return render(request, "console/chat.html", {
        "token": page_token(request, "console"), "strings": chat_strings(lang_of(request)),
        "me": {"id": principal.staff_id, "name": principal.name, "role": principal.role}})
