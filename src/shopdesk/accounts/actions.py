"""Accounts: create merchants, stores, staff and keys; log in."""
from __future__ import annotations

import re
import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal, staff_token
from shopdesk.accounts.models import ROLES, ApiKey, Merchant, Staff, Store
from shopdesk.core.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from shopdesk.core.security import hash_password, new_api_key, verify_password
from shopdesk.orders.models import PLATFORMS

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


async def do_create_merchant(session: AsyncSession, *, name: str, slug: str) -> Merchant:
    if not SLUG.match(slug):
        raise ValidationFailed("slug: lowercase letters, digits and '-', 2–63 characters", field="slug")
    if (await session.execute(select(Merchant.id).where(Merchant.slug == slug))).first():
        raise Conflict(f"merchant '{slug}' exists", code="already_exists", field="slug")
    # webhook_events: the patterns its webhooks subscribe to (none yet); see notifications.emit_webhook.
    merchant = Merchant(name=name, slug=slug, settings={"webhook_events": []})
    session.add(merchant)
    await session.flush()
    return merchant


async def merchant_by_slug(session: AsyncSession, slug: str) -> Merchant:
    merchant = (await session.execute(select(Merchant).where(Merchant.slug == slug))).scalar_one_or_none()
    if merchant is None:
        raise NotFound(f"no merchant '{slug}'", field="merchant")
    return merchant


async def do_create_api_key(session: AsyncSession, merchant: Merchant) -> str:
    key, prefix, hashed = new_api_key()
    session.add(ApiKey(merchant_id=merchant.id, prefix=prefix, key_hash=hashed))
    await session.flush()
    return key


async def do_create_staff(session: AsyncSession, *, merchant: Merchant | None, email: str, password: str,
                          role: str, name: str = "") -> Staff:
    if role not in ROLES:
        raise ValidationFailed(f"role must be one of {', '.join(ROLES)}", field="role")
    if (role == "platform") != (merchant is None):
        raise ValidationFailed("platform operators belong to no merchant; everyone else to one", field="role")
    if "@" not in email:
        raise ValidationFailed("not an email address", field="email")
    if len(password) < 8:
        raise ValidationFailed("at least 8 characters", field="password")
    email = email.strip().lower()
    if (await session.execute(select(Staff.id).where(Staff.email == email))).first():
        raise Conflict("a staff login with that email exists", code="already_exists", field="email")
    staff = Staff(merchant_id=merchant.id if merchant else None, email=email, name=name or email.split("@")[0],
                  password_hash=hash_password(password), role=role)
    session.add(staff)
    await session.flush()
    return staff


async def do_login(session: AsyncSession, email: str, password: str) -> tuple[Staff, str]:
    staff = (await session.execute(select(Staff).where(Staff.email == email.strip().lower()))).scalar_one_or_none()
    if staff is None or not verify_password(password, staff.password_hash):
        raise Unauthorized("wrong email or password", code="bad_credentials")
    return staff, staff_token(staff)


async def do_create_store(session: AsyncSession, principal: Principal, *, code: str, name: str,
                          platform: str) -> Store:
    merchant_id = principal.require_merchant_side()
    principal.require_role("admin")
    if not SLUG.match(code):
        raise ValidationFailed("code: lowercase letters, digits and '-'", field="code")
    if platform not in PLATFORMS:
        raise ValidationFailed(f"platform must be one of {', '.join(PLATFORMS)}", field="platform")
    existing = (await session.execute(select(Store).where(Store.merchant_id == merchant_id, Store.code == code))
                ).scalar_one_or_none()
    if existing:
        existing.name, existing.platform = name, platform
        return existing
    store = Store(merchant_id=merchant_id, code=code, name=name, platform=platform,
                  identity_secret=secrets.token_hex(24))
    session.add(store)
    await session.flush()
    return store


async def store_by_code(session: AsyncSession, merchant_id: str, code: str, field: str = "store") -> Store:
    store = (await session.execute(select(Store).where(Store.merchant_id == merchant_id, Store.code == code))
             ).scalar_one_or_none()
    if store is None:
        raise ValidationFailed(f"no store '{code}'", field=field)
    return store
