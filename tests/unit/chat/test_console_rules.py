"""Pure chat rules for the console: device from a user agent, the client's IP, canned-reply variables, @names."""
import pytest

from shopdesk.chat.rules import client_ip, fill_variables, mentioned_names, parse_user_agent

IPHONE_WECHAT = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                 "Mobile/15E148 MicroMessenger/8.0.40")
WIN_EDGE = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 "
            "Safari/537.36 Edg/120.0")
MAC_SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 "
              "Safari/605.1.15")
ANDROID_TABLET = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
ANDROID_PHONE = ("Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 "
                 "Mobile Safari/537.36")
HARMONY = ("Mozilla/5.0 (Linux; Android 12; HarmonyOS; NOH-AN00) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/99.0 HuaweiBrowser/14.0 Mobile Safari/537.36")


@pytest.mark.parametrize("ua, expected", [
    (IPHONE_WECHAT, {"device": "mobile", "os": "iOS", "browser": "WeChat"}),
    (WIN_EDGE, {"device": "desktop", "os": "Windows", "browser": "Edge"}),
    (MAC_SAFARI, {"device": "desktop", "os": "macOS", "browser": "Safari"}),
    (ANDROID_TABLET, {"device": "tablet", "os": "Android", "browser": "Chrome"}),
    (ANDROID_PHONE, {"device": "mobile", "os": "Android", "browser": "Chrome"}),
    (HARMONY, {"device": "mobile", "os": "HarmonyOS", "browser": "Huawei Browser"}),
    ("Baiduspider/2.0", {"device": "bot", "os": "", "browser": ""}),
    ("", {"device": "", "os": "", "browser": ""}),
])
def test_device_from_user_agent(ua, expected):
    assert parse_user_agent(ua) == expected


@pytest.mark.parametrize("peer, xff, trusted, expected", [
    ("10.0.0.2", "203.0.113.7, 10.0.0.1", True, "203.0.113.7"),
    ("10.0.0.2", "203.0.113.7, 10.0.0.1", False, "10.0.0.2"),      # an untrusted header is ignored
    ("10.0.0.2", "not-an-ip, 2001:db8::1", True, "2001:db8::1"),    # garbage entries are skipped
    ("10.0.0.2", "garbage", True, "10.0.0.2"),
    (None, None, True, ""),
])
def test_client_ip_believes_forwarded_for_only_behind_a_trusted_proxy(peer, xff, trusted, expected):
    assert client_ip(peer, xff, trusted) == expected


def test_variables_are_filled_and_unknown_braces_left_alone():
    text = "{customer_name}您好，我是{agent_name}，订单{order_no}；{coupon} 与 {{x}}"
    assert fill_variables(text, {"customer_name": "张三", "agent_name": "小王", "order_no": "T0001"}) == \
        "张三您好，我是小王，订单T0001；{coupon} 与 {{x}}"
    assert fill_variables("{order_no}", {}) == ""


def test_mentions_are_names_after_at_up_to_a_space_or_punctuation():
    assert mentioned_names("@小赵 帮忙看下，@Li，还有 @小赵。邮箱 a@b") == ["小赵", "Li", "b"]
