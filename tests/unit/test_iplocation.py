"""Coarse IP location from the offline ip2region database (installed from the npm registry by make)."""
import pytest

from shopdesk.core.iplocation import locate


@pytest.mark.parametrize("ip, expected", [
    ("114.114.114.114", "中国 江苏省 南京市"),
    ("202.96.134.133", "中国 广东省 深圳市"),
    ("8.8.8.8", "美国"),
    ("10.1.2.3", "内网"),
    ("127.0.0.1", "内网"),
    ("::1", ""),
    ("not an ip", ""),
])
def test_locate(ip, expected):
    assert locate(ip) == expected
