"""Quotas: requests and tokens per minute, credits per day and month, exact across replicas."""

from downcity.quotas.book import Clock, Decision, QuotaBook, QuotaPort, Standing, Taken
from downcity.quotas.quota import Claim, Quota, bucket_of, window_of
from downcity.quotas.store import QuotaCache, QuotaStore

__all__ = [
    "Claim",
    "Clock",
    "Decision",
    "Quota",
    "QuotaBook",
    "QuotaCache",
    "QuotaPort",
    "QuotaStore",
    "Standing",
    "Taken",
    "bucket_of",
    "window_of",
]
