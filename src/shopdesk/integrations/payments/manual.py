"""The manual provider: an agent refunds elsewhere (bank transfer, cash) and records it here."""
from __future__ import annotations

from collections.abc import Mapping

from shopdesk.integrations.payments.base import BadNotification, Notification, ProviderResult, RefundRequest


class ManualProvider:
    name = "manual"
    # Nothing to ask: only the agent's confirmation settles a manual refund.
    polls = False

    async def submit(self, req: RefundRequest) -> ProviderResult:
        """Leave the refund waiting for an agent to confirm it was paid."""
        return ProviderResult("processing", detail="awaiting manual confirmation")

    async def query(self, req: RefundRequest) -> ProviderResult:
        """Report the refund as still waiting for the agent."""
        return ProviderResult("processing", detail="awaiting manual confirmation")

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Reject any notification: nobody outside sends one for a manual refund."""
        raise BadNotification("the manual provider sends no notifications")

    async def aclose(self) -> None:
        """Hold nothing, so release nothing."""
