"""Uploaded files on disk, checked by their content, not their name."""
from __future__ import annotations

from pathlib import Path

from shopdesk.config import get_settings
from shopdesk.core.errors import TooLarge, UnsupportedMedia


def sniff_image(head: bytes) -> str | None:
    """Return the image type from the first bytes, or None if it is not JPEG, PNG or WebP."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_image(data: bytes) -> str:
    limit = get_settings().upload_max_bytes
    if len(data) > limit:
        raise TooLarge(f"at most {limit // (1024 * 1024)} MB", field="file")
    kind = sniff_image(data[:16])
    if kind is None:
        raise UnsupportedMedia("only JPEG, PNG or WebP images (checked by content)", field="file")
    return kind


def save(merchant_id: str, name: str, data: bytes) -> str:
    folder = get_settings().var_dir / "uploads" / merchant_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return str(path.relative_to(get_settings().var_dir))


def open_path(relative: str) -> Path:
    return get_settings().var_dir / relative
