"""Who is calling: merchant API keys, staff tokens, shopper tokens and page sessions."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.models import ApiKey, Staff
from shopdesk.core.errors import Forbidden, NotFound, Unauthorized
from shopdesk.core.security import hash_secret, issue_token, read_token, same

STAFF_TTL = timedelta(hours=12)
SHOPPER_TTL = timedelta(days=7)


@dataclass(frozen=True)
class Principal:
    kind: str  # merchant_key | staff | shopper
    merchant_id: str | None
    staff_id: str | None = None
    role: str | None = None
    customer_id: str | None = None
    name: str = ""

    @property
    def is_platform(self) -> bool:
        return self.role == "platform"

    @property
    def is_merchant_side(self) -> bool:
        return self.kind == "merchant_key" or (self.kind == "staff" and not self.is_platform)

    @property
    def actor(self) -> str:
        """The timeline actor this caller appears as."""
        if self.kind == "shopper":
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


async def resolve(session: AsyncSession, token: str | None) -> Principal:
    """Turn a bearer token into a principal, or raise 401."""
    if not token:
        raise Unauthorized("missing bearer token")
    if token.startswith("sk_"):
        parts = token.split("_", 2)
        if len(parts) == 3:
            key = (await session.execute(select(ApiKey).where(ApiKey.prefix == parts[1]))).scalar_one_or_none()
            if key and key.revoked_at is None and same(key.key_hash, hash_secret(token)):
                return Principal("merchant_key", key.merchant_id)
        raise Unauthorized("invalid API key")
    claims = read_token(token)
    if claims.get("k") == "staff":
        staff = await session.get(Staff, claims["sub"])
        if staff is None:
            raise Unauthorized("unknown staff")
        return Principal("staff", staff.merchant_id, staff_id=staff.id, role=staff.role, name=staff.name)
    if claims.get("k") == "shopper":
        return Principal("shopper", claims["m"], customer_id=claims["sub"])
    raise Unauthorized("invalid token")
