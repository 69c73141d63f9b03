"""Rate limits: a moving window per key, in memory per process.

`limits` reads the rules ("10/minute"); the counting is done here. limits' MemoryStorage restarts
a timer thread every 10 ms while keys are live, and starting a thread stalls the event loop: under
chat load that cost more than storing the messages (decision 0008).
"""
import time
from collections import deque
from functools import lru_cache

from limits import parse

from shopdesk.core.errors import RateLimited

PURGE_AT = 10_000  # keys kept before the stale ones are swept out

_windows: dict[tuple[str, ...], deque[float]] = {}


@lru_cache(maxsize=128)
def _rule(rule: str) -> tuple[int, float]:
    item = parse(rule)
    return item.amount, float(item.get_expiry())


def hit(rule: str, *keys: str) -> None:
    """Count one hit against `rule` (e.g. "10/minute") for keys, or raise 429."""
    amount, window = _rule(rule)
    t = time.monotonic()
    key = (rule, *keys)
    hits = _windows.get(key)
    if hits is None:
        if len(_windows) >= PURGE_AT:
            _purge(t)
        hits = _windows[key] = deque()
    while hits and t - hits[0] >= window:
        hits.popleft()
    if len(hits) >= amount:
        raise RateLimited("too many attempts, try again later")
    hits.append(t)


def _purge(t: float) -> None:
    for key in [k for k, hits in _windows.items() if not hits or t - hits[-1] >= _rule(k[0])[1]]:
        del _windows[key]


def reset() -> None:
    _windows.clear()
