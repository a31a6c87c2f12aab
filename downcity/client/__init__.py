"""Python clients for the Downcity HTTP API: user and admin, sync and async."""

from downcity.client._admin import AdminClient, AsyncAdminClient
from downcity.client._errors import DowncityError
from downcity.client._models import (
    Balance,
    City,
    EnvEntry,
    ImageJob,
    IssuedToken,
    Job,
    LedgerEntry,
    Model,
    QuotaInfo,
    QuotaListing,
    QuotaUse,
    UsageRecord,
    UsageSummaryRow,
)
from downcity.client._user import AsyncUserClient, UserClient
from downcity.types import UIMessage

__all__ = [
    "AdminClient",
    "AsyncAdminClient",
    "AsyncUserClient",
    "Balance",
    "City",
    "DowncityError",
    "EnvEntry",
    "ImageJob",
    "IssuedToken",
    "Job",
    "LedgerEntry",
    "Model",
    "QuotaInfo",
    "QuotaListing",
    "QuotaUse",
    "UIMessage",
    "UsageRecord",
    "UsageSummaryRow",
    "UserClient",
]
