"""Money maths in integer fen: rounding, apportionment, formatting."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Sequence

from babel.numbers import format_currency


def round_half_up(value: Fraction | Decimal | int) -> int:
    """Round a fen amount half away from zero, exactly."""
    if isinstance(value, int):
        return value
    if isinstance(value, Fraction):
        value = Decimal(value.numerator) / Decimal(value.denominator)
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def share(total: int, part: int, whole: int) -> int:
    """Return round_half_up(total × part / whole) without floats."""
    if whole == 0:
        return 0
    return round_half_up(Fraction(total * part, whole))


def apportion(amount: int, weights: Sequence[int]) -> list[int]:
    """Split amount over weights proportionally; the last weight takes the remainder (rulebook 4.1)."""
    if not weights:
        return []
    whole = sum(weights)
    if whole == 0:
        return [0] * (len(weights) - 1) + [amount]
    parts = [share(amount, w, whole) for w in weights[:-1]]
    parts.append(amount - sum(parts))
    return parts


def fen_to_yuan(fen: int) -> Decimal:
    return (Decimal(fen) / 100).quantize(Decimal("0.01"))


def yuan_to_fen(text: str | Decimal) -> int:
    return round_half_up(Decimal(str(text)) * 100)


def format_fen(fen: int, locale: str = "zh_CN") -> str:
    return format_currency(fen_to_yuan(fen), "CNY", locale=locale)
