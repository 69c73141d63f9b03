"""The payment-provider interface the refund worker talks to (rulebook §7).

A provider turns one refund row into calls to a payment service provider (PSP) and back:

- ``submit`` sends the refund with ``refund_no`` as the PSP's idempotency key, so a retry of the
  same row can never pay twice; ``query`` asks what became of it; ``parse_notification`` checks
  and reads what the PSP POSTs to ``notify_url``.
- ``submit`` and ``query`` never raise for network trouble: a timeout, a refused connection, a
  5xx or a body we cannot read is ``"unknown"`` (the money may or may not have moved). Only an
  explicit business rejection is ``"failed"``, the one status that allows a new ``refund_no``.

Adding a real connector means one module next to ``sandbox.py`` and one line in ``get_provider``:

- WeChat Pay v3: ``POST /v3/refund/domestic/refunds`` with ``out_refund_no = refund_no``,
  ``transaction_id = trade_no``, ``amount.refund = amount_fen``, ``amount.total =
  payment_total_fen`` (both already fen), ``notify_url``; query with ``GET
  /v3/refund/domestic/refunds/{out_refund_no}`` (404 ``RESOURCE_NOT_EXISTS`` → ``not_found``).
  ``SUCCESS/PROCESSING/ABNORMAL/CLOSED`` map exactly as in ``sandbox.py``, which speaks this
  dialect. Requests are signed with the merchant key; ``parse_notification`` verifies the
  ``Wechatpay-Signature`` against the platform certificate and decrypts the AES-256-GCM
  ``resource`` with the APIv3 key. ``polls = True``.
- Alipay: ``alipay.trade.refund`` with ``out_request_no = refund_no``, ``trade_no = trade_no``,
  ``refund_amount`` = ``amount_fen`` as a yuan string (exact: fen / 100, two decimals); the
  answer is synchronous (``fund_change = "Y"`` → ``succeeded``), ``ACQ.SYSTEM_ERROR`` →
  ``unknown``, other ``ACQ.*`` business codes → ``failed``. Settle with
  ``alipay.trade.fastpay.refund.query`` on the same ``out_request_no`` (``REFUND_SUCCESS`` →
  ``succeeded``, no refund → ``not_found``). Alipay sends no refund notifications by default, so
  ``parse_notification`` raises ``BadNotification`` and ``polls = True``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

PROVIDER_NAMES = ("manual", "sandbox")
RESULT_STATUSES = ("processing", "succeeded", "failed", "abnormal", "unknown", "not_found")
NOTIFICATION_STATUSES = ("processing", "succeeded", "failed", "abnormal")
# Rulebook §7.1: the number is the provider's idempotency key, so it must fit every provider's rules.
REFUND_NO_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True)
class RefundRequest:
    refund_no: str
    trade_no: str | None
    method: str
    amount_fen: int
    payment_total_fen: int
    notify_url: str

    def __post_init__(self) -> None:
        if not REFUND_NO_PATTERN.fullmatch(self.refund_no):
            raise ValueError(f"refund_no must be 1-32 chars of [A-Za-z0-9_-], got {self.refund_no!r}")
        if not 0 < self.amount_fen <= self.payment_total_fen:
            raise ValueError(f"refund of {self.amount_fen} fen does not fit a payment of {self.payment_total_fen} fen")


@dataclass(frozen=True)
class ProviderResult:
    status: str
    provider_ref: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in RESULT_STATUSES:
            raise ValueError(f"unknown provider result status {self.status!r}")


@dataclass(frozen=True)
class Notification:
    notify_id: str
    refund_no: str
    status: str
    amount_fen: int | None

    def __post_init__(self) -> None:
        if self.status not in NOTIFICATION_STATUSES:
            raise ValueError(f"unknown notification status {self.status!r}")


class BadNotification(Exception):
    """A notification with a bad signature or a body we cannot read; answer it with 400."""


class PaymentProvider(Protocol):
    name: str
    polls: bool

    async def submit(self, req: RefundRequest) -> ProviderResult:
        """Send the refund; never raise for network trouble, return "unknown" instead."""
        ...

    async def query(self, req: RefundRequest) -> ProviderResult:
        """Ask what became of the refund; "not_found" if the provider never saw the number."""
        ...

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify and read a notification, or raise BadNotification."""
        ...

    async def aclose(self) -> None:
        """Release connections held by the provider."""
        ...


_providers: dict[str, PaymentProvider] = {}


def get_provider(name: str) -> PaymentProvider:
    """Return the shared provider instance called name; KeyError for an unknown name."""
    if name not in PROVIDER_NAMES:
        raise KeyError(name)
    if name not in _providers:
        # Imported here because the connectors import this module for the types.
        if name == "manual":
            from shopdesk.integrations.payments.manual import ManualProvider

            _providers[name] = ManualProvider()
        else:
            from shopdesk.integrations.payments.sandbox import SandboxProvider

            _providers[name] = SandboxProvider()
    return _providers[name]


async def close_providers() -> None:
    """Close every shared provider, e.g. at application shutdown."""
    while _providers:
        _, provider = _providers.popitem()
        await provider.aclose()
