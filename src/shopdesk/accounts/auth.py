"""Who is calling: merchant API keys, staff tokens, shopper tokens and page sessions."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.models import ApiKey, Staff
from shopdesk.core.clock import now
from shopdesk.core.errors import Forbidden, NotFound, Unauthorized
from shopdesk.core.security import hash_secret, issue_token, read_token, same

STAFF_TTL = timedelta(hours=12)
SHOPPER_TTL = timedelta(days=7)
# A staff login or API key resolved from the database is remembered this long per process, so a
# request does not pay a query (and a transaction of its own) to learn who is calling. A revoked
# key or removed staff member therefore stops working within this many seconds on every node.
PRINCIPAL_CACHE_S = 30.0
_PRINCIPALS: dict[str, tuple[float, float | None, "Principal"]] = {}
_PRINCIPALS_MAX = 10_000


@dataclass(frozen=True)
class Principal:
    kind: str  # merchant_key | staff | shopper
    merchant_id: str | None
    staff_id: str | None = None
    role: str | None = None
    customer_id: str | None = None
    name: str = ""
    ticket_id: str | None = None  # kind ticket_link: the one ticket an emailed link opens

    @property
    def is_platform(self) -> bool:
        return self.role == "platform"

    @property
    def is_merchant_side(self) -> bool:
        return self.kind == "merchant_key" or (self.kind == "staff" and not self.is_platform)

    @property
    def actor(self) -> str:
        """The timeline actor this caller appears as."""
        if self.kind in ("shopper", "ticket_link"):
            return "buyer"
        return "platform" if self.is_platform else "agent"

    @property
    def actor_id(self) -> str | None:
        return self.customer_id if self.kind == "shopper" else (self.staff_id or "api_key")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.staff_id or self.customer_id or self.merchant_id}"

    def require_merchant_side(self) -> str:
        """Return the merchant id of a merchant key or merchant staff; others see nothing."""
        if not self.is_merchant_side or self.merchant_id is None:
            raise NotFound("not found")
        return self.merchant_id

    def require_role(self, *roles: str) -> None:
        if self.kind == "merchant_key":
            return
        if self.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(roles)}")


def staff_token(staff: Staff) -> str:
    return issue_token({"k": "staff", "sub": staff.id, "m": staff.merchant_id, "r": staff.role}, STAFF_TTL)


def shopper_token(merchant_id: str, customer_id: str) -> str:
    return issue_token({"k": "shopper", "sub": customer_id, "m": merchant_id}, SHOPPER_TTL)


def _remember(token: str, principal: Principal, expires: float | None = None) -> Principal:
    if len(_PRINCIPALS) >= _PRINCIPALS_MAX:
        _PRINCIPALS.clear()
    _PRINCIPALS[token] = (time.monotonic() + PRINCIPAL_CACHE_S, expires, principal)
    return principal


def remembered(token: str | None) -> Principal | None:
    """The principal of a token resolved recently in this process, without touching the database."""
    if not token:
        return None
    hit = _PRINCIPALS.get(token)
    if hit is None:
        return None
    if hit[0] < time.monotonic():
        _PRINCIPALS.pop(token, None)
        return None
    if hit[1] is not None and hit[1] < now().timestamp():
        raise Unauthorized("token expired")  # the token's own expiry still counts, against the app clock
    return hit[2]


async def resolve(session: AsyncSession, token: str | None) -> Principal:
    """Turn a bearer token into a principal, or raise 401."""
    if not token:
        raise Unauthorized("missing bearer token")
    known = remembered(token)
    if known is not None:
        return known
    if token.startswith("sk_"):
        parts = token.split("_", 2)
        if len(parts) == 3:
            key = (await session.execute(select(ApiKey).where(ApiKey.prefix == parts[1]))).scalar_one_or_none()
            if key and key.revoked_at is None and same(key.key_hash, hash_secret(token)):
                return _remember(token, Principal("merchant_key", key.merchant_id))
        raise Unauthorized("invalid API key")
    claims = read_token(token)
    if claims.get("k") == "staff":
        staff = await session.get(Staff, claims["sub"])
        if staff is None:
            raise Unauthorized("unknown staff")
        return _remember(token, Principal("staff", staff.merchant_id, staff_id=staff.id, role=staff.role,
                                          name=staff.name), claims.get("exp", 0))
    if claims.get("k") == "shopper":
        return _remember(token, Principal("shopper", claims["m"], customer_id=claims["sub"]), claims.get("exp", 0))
    if claims.get("k") == "ticket":
        return _remember(token, Principal("ticket_link", claims["m"], ticket_id=claims["sub"]), claims.get("exp", 0))
    raise Unauthorized("invalid token")
