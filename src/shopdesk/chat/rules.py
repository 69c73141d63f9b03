"""Pure chat rules: the visitor's device from a user agent, their IP behind a proxy, canned-reply variables."""
from __future__ import annotations

import ipaddress
import re

# Order matters: Edge and Opera say "Chrome" too, Chrome says "Safari", WeChat and QQ embed the others.
_BROWSERS = (
    ("MicroMessenger", "WeChat"), ("QQBrowser", "QQ Browser"), ("UCBrowser", "UC Browser"), ("Edg", "Edge"),
    ("OPR", "Opera"), ("Opera", "Opera"), ("HuaweiBrowser", "Huawei Browser"), ("MiuiBrowser", "MIUI Browser"),
    ("Firefox", "Firefox"), ("FxiOS", "Firefox"), ("CriOS", "Chrome"), ("Chrome", "Chrome"), ("Safari", "Safari"),
    ("MSIE", "Internet Explorer"), ("Trident", "Internet Explorer"),
)
_OSES = (
    ("HarmonyOS", "HarmonyOS"), ("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iPadOS"), ("iPod", "iOS"),
    ("Windows", "Windows"), ("Mac OS X", "macOS"), ("Macintosh", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"),
)
_BOT = re.compile(r"bot|crawl|spider|slurp|headless", re.I)


def parse_user_agent(ua: str) -> dict:
    """A coarse {"device": desktop|mobile|tablet|bot, "os", "browser"} from a User-Agent header."""
    ua = ua or ""
    browser = next((name for token, name in _BROWSERS if token in ua), "")
    os_name = next((name for token, name in _OSES if token in ua), "")
    if _BOT.search(ua):
        device = "bot"
    elif "iPad" in ua or ("Android" in ua and "Mobile" not in ua) or "Tablet" in ua:
        device = "tablet"
    elif "Mobi" in ua or "iPhone" in ua or "Android" in ua:
        device = "mobile"
    else:
        device = "desktop" if ua else ""
    return {"device": device, "os": os_name, "browser": browser}


def client_ip(peer: str | None, forwarded_for: str | None, trusted_proxy: bool) -> str:
    """The visitor's address: the left-most valid X-Forwarded-For entry when the proxy is trusted, else the peer."""
    if trusted_proxy and forwarded_for:
        for part in forwarded_for.split(","):
            candidate = part.strip()
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                continue
    return (peer or "")[:64]


VARIABLES = ("customer_name", "agent_name", "order_no")
_VAR = re.compile(r"\{(customer_name|agent_name|order_no)\}")


def fill_variables(text: str, values: dict[str, str]) -> str:
    """Replace {customer_name}, {agent_name}, {order_no}; other braces are left as typed."""
    return _VAR.sub(lambda m: values.get(m.group(1)) or "", text)


_MENTION = re.compile(r"@([^\s@,，。:：]{1,40})")


def mentioned_names(text: str) -> list[str]:
    """The names after each @ in a note (up to a space or punctuation)."""
    return list(dict.fromkeys(_MENTION.findall(text or "")))
