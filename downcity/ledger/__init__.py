"""The Ledger: idempotent, serialized, group-committed balance mutations in integer microcredits, and usage."""

from downcity.ledger.ledger import Ledger
from downcity.ledger.sharded import ShardedLedger
from downcity.ledger.types import Balance, HoldResult, LedgerEntry, LedgerPort, SettleResult, shard_of

__all__ = [
    "Balance",
    "HoldResult",
    "Ledger",
    "LedgerEntry",
    "LedgerPort",
    "SettleResult",
    "ShardedLedger",
    "shard_of",
]
