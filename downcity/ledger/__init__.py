"""The Ledger: idempotent, serialized, group-committed balance mutations in integer microcredits, and usage."""

from downcity.ledger.ledger import Ledger
from downcity.ledger.sharded import ShardedLedger
from downcity.ledger.types import Balance, HoldResult, LeaseResult, LedgerEntry, LedgerPort, SettleResult, shard_of

__all__ = [
    "Balance",
    "HoldResult",
    "LeaseResult",
    "Ledger",
    "LedgerEntry",
    "LedgerPort",
    "SettleResult",
    "ShardedLedger",
    "shard_of",
]
