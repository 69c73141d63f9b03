"""Passwords, signed tokens, API key hashing and HMAC signatures."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

import jwt
from pwdlib import PasswordHash

from shopdesk.config import get_settings
from shopdesk.core.clock import now
from shopdesk.core.errors import Unauthorized

_passwords = PasswordHash.recommended()


def hash_password(password: str) -> str:
    return _passwords.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    try:
        return _passwords.verify(password, hashed)
    except Exception:  # a malformed hash is a failed login, not a crash
        return False


def issue_token(claims: dict[str, Any], ttl: timedelta) -> str:
    issued = now()
    body = {**claims, "iat": int(issued.timestamp()), "exp": int((issued + ttl).timestamp())}
    return jwt.encode(body, get_settings().secret_key, algorithm="HS256")


def read_token(token: str) -> dict[str, Any]:
    try:
        # exp is checked against the app clock, so frozen-clock tests behave like production.
        claims = jwt.decode(token, get_settings().secret_key, algorithms=["HS256"], options={"verify_exp": False})
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid token") from exc
    if claims.get("exp", 0) < now().timestamp():
        raise Unauthorized("token expired")
    return claims


def new_api_key() -> tuple[str, str, str]:
    """Return (full key, lookup prefix, hash)."""
    prefix = secrets.token_hex(6)
    key = f"sk_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_secret(key)


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hmac_hex(secret: str | bytes, body: bytes | str) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    data = body.encode() if isinstance(body, str) else body
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
