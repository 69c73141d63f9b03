"""Payment providers: submit, query and hear back about refunds (rulebook §7)."""
from shopdesk.integrations.payments.base import (PROVIDER_NAMES, BadNotification, Notification, PaymentProvider,
                                                 ProviderResult, RefundRequest, close_providers, get_provider)

__all__ = ["PROVIDER_NAMES", "BadNotification", "Notification", "PaymentProvider", "ProviderResult",
           "RefundRequest", "close_providers", "get_provider"]
