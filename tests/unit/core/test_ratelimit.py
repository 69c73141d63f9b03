"""The moving-window rate limit: a window's worth of hits, then 429 until the oldest hit leaves it."""
import pytest

from shopdesk.core import ratelimit
from shopdesk.core.errors import RateLimited


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    ratelimit.reset()
    t = [1000.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: t[0])
    yield t
    ratelimit.reset()


def test_the_window_moves(fresh):
    for _ in range(3):
        ratelimit.hit("3/minute", "login", "a")
    with pytest.raises(RateLimited):
        ratelimit.hit("3/minute", "login", "a")
    ratelimit.hit("3/minute", "login", "b")  # another key has its own window
    fresh[0] += 59.9
    with pytest.raises(RateLimited):
        ratelimit.hit("3/minute", "login", "a")  # a refused hit is not counted, the first three still are
    fresh[0] += 0.1
    ratelimit.hit("3/minute", "login", "a")  # 60 s after the first hits, they have left the window


def test_stale_keys_are_swept(fresh, monkeypatch):
    monkeypatch.setattr(ratelimit, "PURGE_AT", 10)
    for i in range(10):
        ratelimit.hit("5/second", "k", str(i))
    fresh[0] += 2
    ratelimit.hit("5/second", "k", "new")
    assert set(ratelimit._windows) == {("5/second", "k", "new")}
