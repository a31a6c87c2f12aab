"""Every environment knob Downcity reads, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path(".downcity")
DEFAULT_TOKEN_TTL_S = 7 * 24 * 3600
MAX_TOKEN_TTL_S = 30 * 24 * 3600
# How far a token's `iat` may run ahead of the verifying replica's clock.
MAX_CLOCK_SKEW_S = 30
DEFAULT_IMAGE_MAX_PENDING_MS = 2 * 3600 * 1000
DEFAULT_IMAGE_POLL_INTERVAL_MS = 1_000
DEFAULT_IMAGE_BACKOFF_BASE_MS = 500
DEFAULT_IMAGE_BACKOFF_MAX_MS = 30_000
DEFAULT_IMAGE_FETCH_CONCURRENCY = 64
DEFAULT_IMAGE_LEASE_MS = 90_000
# A hold's TTL: live calls renew theirs every third of it, so only an abandoned hold expires, within minutes.
DEFAULT_HOLD_EXPIRY_S = 120
# Credit leases (docs/operators/billing.md): a lease covers this many seconds of an account's recent spend,
# at least this many holds of the call asking, and at most this fraction of the available balance; a lease
# no call used for the idle time is returned, and a refused call waits this long for recalled leases.
DEFAULT_LEASE_WINDOW_S = 2.0
DEFAULT_LEASE_MIN_CALLS = 4
DEFAULT_LEASE_MAX_FRACTION = 0.5
DEFAULT_LEASE_IDLE_S = 1.0
DEFAULT_LEASE_RECALL_WAIT_S = 3.0
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# Money bounds, so no sum of ledger amounts can overflow a 64-bit column: one credit or debit at most
# MAX_AMOUNT_MICROCREDITS, a balance credited up to MAX_BALANCE_MICROCREDITS (about a ninth of 2^63).
MAX_AMOUNT_MICROCREDITS = 10**15
MAX_BALANCE_MICROCREDITS = 10**18
MAX_ENTRY_ID = 2**63 - 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass(frozen=True)
class Settings:
    """Runtime settings; `Settings.from_env()` reads the `DOWNCITY_*` variables."""

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    master_key: str | None = None
    master_key_file: Path | None = None
    admin_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    hold_expiry_s: int = DEFAULT_HOLD_EXPIRY_S
    image_max_pending_duration_ms: int = DEFAULT_IMAGE_MAX_PENDING_MS
    image_poll_interval_ms: int = DEFAULT_IMAGE_POLL_INTERVAL_MS
    image_backoff_base_ms: int = DEFAULT_IMAGE_BACKOFF_BASE_MS
    image_backoff_max_ms: int = DEFAULT_IMAGE_BACKOFF_MAX_MS
    image_fetch_concurrency: int = DEFAULT_IMAGE_FETCH_CONCURRENCY
    image_lease_ms: int = DEFAULT_IMAGE_LEASE_MS
    ledger_shards: int = 1
    # Credit leases (see DEFAULT_LEASE_*); off, every call gets its own hold.
    leases: bool = False
    lease_window_s: float = DEFAULT_LEASE_WINDOW_S
    lease_min_calls: int = DEFAULT_LEASE_MIN_CALLS
    lease_max_fraction: float = DEFAULT_LEASE_MAX_FRACTION
    lease_idle_s: float = DEFAULT_LEASE_IDLE_S
    lease_recall_wait_s: float = DEFAULT_LEASE_RECALL_WAIT_S
    # How the ingress reaches provider replicas on Ray: "handle" (Serve handle calls) or "relay" (bytes to each
    # replica's relay port; docs/operators/scaling.md).
    provider_hop: str = "handle"
    # Provider keys `/ready` waits for, e.g. the demo key `downcity up --demo` seeds last.
    ready_requires_env: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, else the embedded SQLite file under the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'downcity.db').resolve()}"

    @property
    def default_master_key_file(self) -> Path:
        """Where the generated master key goes: beside the data dir, not in it, so a backup of one lacks the other."""
        data_dir = self.data_dir.resolve()
        return data_dir.with_name(f"{data_dir.name}-master.key")

    @classmethod
    def with_env_secrets(cls, values: dict[str, Any]) -> Settings:
        """Settings from plain deployment args, with the master and admin keys from this process's env."""
        data = dict(values)
        data["data_dir"] = Path(data.get("data_dir", DEFAULT_DATA_DIR))
        data["ready_requires_env"] = tuple(data.get("ready_requires_env", ()))
        data["master_key"] = os.environ.get("DOWNCITY_MASTER_KEY") or None
        key_file = data.get("master_key_file") or os.environ.get("DOWNCITY_MASTER_KEY_FILE")
        data["master_key_file"] = Path(key_file) if key_file else None
        data["admin_key"] = os.environ.get("DOWNCITY_ADMIN_KEY") or None
        return cls(**data)

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from `DOWNCITY_*` environment variables."""
        return cls(
            data_dir=Path(os.environ.get("DOWNCITY_DATA_DIR", str(DEFAULT_DATA_DIR))),
            database_url=os.environ.get("DOWNCITY_DATABASE_URL") or None,
            master_key=os.environ.get("DOWNCITY_MASTER_KEY") or None,
            master_key_file=Path(key_file) if (key_file := os.environ.get("DOWNCITY_MASTER_KEY_FILE")) else None,
            admin_key=os.environ.get("DOWNCITY_ADMIN_KEY") or None,
            max_body_bytes=_env_int("DOWNCITY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            hold_expiry_s=_env_int("DOWNCITY_HOLD_EXPIRY_S", DEFAULT_HOLD_EXPIRY_S),
            image_max_pending_duration_ms=_env_int("DOWNCITY_IMAGE_MAX_PENDING_MS", DEFAULT_IMAGE_MAX_PENDING_MS),
            image_poll_interval_ms=_env_int("DOWNCITY_IMAGE_POLL_INTERVAL_MS", DEFAULT_IMAGE_POLL_INTERVAL_MS),
            image_backoff_base_ms=_env_int("DOWNCITY_IMAGE_BACKOFF_BASE_MS", DEFAULT_IMAGE_BACKOFF_BASE_MS),
            image_backoff_max_ms=_env_int("DOWNCITY_IMAGE_BACKOFF_MAX_MS", DEFAULT_IMAGE_BACKOFF_MAX_MS),
            image_fetch_concurrency=_env_int("DOWNCITY_IMAGE_FETCH_CONCURRENCY", DEFAULT_IMAGE_FETCH_CONCURRENCY),
            image_lease_ms=_env_int("DOWNCITY_IMAGE_LEASE_MS", DEFAULT_IMAGE_LEASE_MS),
            ledger_shards=_env_int("DOWNCITY_LEDGER_SHARDS", 1),
            leases=os.environ.get("DOWNCITY_LEASES", "") in ("1", "true"),
            lease_window_s=_env_float("DOWNCITY_LEASE_WINDOW_S", DEFAULT_LEASE_WINDOW_S),
            lease_min_calls=_env_int("DOWNCITY_LEASE_MIN_CALLS", DEFAULT_LEASE_MIN_CALLS),
            lease_max_fraction=_env_float("DOWNCITY_LEASE_MAX_FRACTION", DEFAULT_LEASE_MAX_FRACTION),
            lease_idle_s=_env_float("DOWNCITY_LEASE_IDLE_S", DEFAULT_LEASE_IDLE_S),
            lease_recall_wait_s=_env_float("DOWNCITY_LEASE_RECALL_WAIT_S", DEFAULT_LEASE_RECALL_WAIT_S),
        )
