"""Rate limits (moving window, in memory per process)."""
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from shopdesk.core.errors import RateLimited

_limiter = MovingWindowRateLimiter(MemoryStorage())


def hit(rule: str, *keys: str) -> None:
    """Count one hit against `rule` (e.g. "10/minute") for keys, or raise 429."""
    if not _limiter.hit(parse(rule), *keys):
        raise RateLimited("too many attempts, try again later")


def reset() -> None:
    _limiter.storage.reset()
