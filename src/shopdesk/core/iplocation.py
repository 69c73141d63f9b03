"""Coarse location of an IP address (country, province, city) from an offline database.

The data is ip2region's xdb file, installed from the npm registry (package `ip2region-ts`, data only:
installed with --ignore-scripts) and read with the `py-ip2region` reader. No network, no account.
IPv4 only; anything else, or a missing data file, gives "".
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from shopdesk.config import node_modules

DATA = Path("ip2region-ts") / "data" / "ip2region.xdb"


@lru_cache(maxsize=1)
def _searcher():
    """Load the whole database into memory once per process (about 11 MB; no file I/O per lookup)."""
    import ip2region.util as util
    from ip2region.searcher import Searcher

    path = node_modules() / DATA
    if not path.exists():
        return None
    version = util.version_from_header(util.load_header_from_file(str(path)))
    return Searcher(version, None, None, util.load_content_from_file(str(path)))


@lru_cache(maxsize=4096)
def locate(ip: str) -> str:
    """'中国 江苏省 南京市' for a public IPv4 address; '内网' for a private one; '' when unknown."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if address.version != 4:
        return ""
    if address.is_private or address.is_loopback:
        return "内网"
    searcher = _searcher()
    if searcher is None:
        return ""
    try:
        country, _area, province, city, _isp = searcher.search(ip).split("|")
    except ValueError:
        return ""
    parts = [p for p in (country, province, city) if p and p != "0"]
    # Municipalities repeat themselves (北京市 北京市): say it once.
    return " ".join(dict.fromkeys(parts))
