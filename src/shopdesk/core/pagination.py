"""Cursor pagination over time-ordered ids: {"items": [...], "next_cursor": "…"|null}."""
from __future__ import annotations

import base64
import json
from typing import Any

from shopdesk.core.errors import ValidationFailed


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return 20
    if limit < 1 or limit > 100:
        raise ValidationFailed("limit must be between 1 and 100", field="limit")
    return limit


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> list[Any] | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(values, list):
            raise ValueError
        return values
    except ValueError as exc:
        raise ValidationFailed("malformed cursor", field="cursor") from exc


def cut(rows: list[Any], size: int) -> tuple[list[Any], str | None]:
    """Trim a page fetched with size + 1 rows; return the page and the cursor after its last id."""
    if len(rows) > size:
        rows = rows[:size]
        return rows, encode_cursor([rows[-1].id])
    return rows, None
