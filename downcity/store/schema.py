"""The SQLAlchemy Core schema. Times are integer epoch milliseconds; money is integer microcredits."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()
# Same as downcity.accounts.MAX_ACCOUNT_ID_CHARS; the store imports nothing above it.
ACCOUNT_ID = 265

JSONType = JSON().with_variant(JSONB(), "postgresql")
# Same as downcity.ai.pricing.PRICE_CLASSES (a test keeps them equal); the store imports nothing above it.
PRICE_CLASS_COLUMNS = ("input", "cached_input", "cache_write", "output", "reasoning", "request", "image", "second")

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

cities = Table(
    "cities",
    metadata,
    Column("city_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("private_key_enc", LargeBinary, nullable=False),
    Column("public_key", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("retired_at_ms", BigInteger, nullable=True),
)

env = Table(
    "env",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value_enc", LargeBinary, nullable=False),
    Column("preview", String(32), nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("jti", String(64), nullable=True, unique=True),
    Column("city_id", String(64), nullable=True),
    Column("user_id", String(200), nullable=True),
    Column("revoked_at_ms", BigInteger, nullable=False),
    Index("ix_revoked_tokens_user", "user_id", "city_id"),
)

balances = Table(
    "balances",
    metadata,
    # The account id (`<city_id>/<user_id>` or `~<space>/<user_id>`, see downcity.accounts), as in holds,
    # ledger_entries and settle_outbox.
    Column("user_id", String(ACCOUNT_ID), primary_key=True),
    Column("credits_microcredits", BigInteger, nullable=False, default=0),
    Column("held_microcredits", BigInteger, nullable=False, default=0),
    Column("updated_at_ms", BigInteger, nullable=False),
)

holds = Table(
    "holds",
    metadata,
    Column("idempotency_key", String(200), primary_key=True),
    Column("user_id", String(ACCOUNT_ID), nullable=False),
    Column("amount_microcredits", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("resolved_at_ms", BigInteger, nullable=True),
    Column("expires_at_ms", BigInteger, nullable=True),
    # The ingress replica a credit lease belongs to (see downcity.ledger.leases); NULL for a call's own hold.
    Column("owner", String(200), nullable=True),
    # The sweep reads only held rows past their expiry; resolved rows, the vast majority, stay out of the index.
    Index(
        "ix_holds_held_expires",
        "expires_at_ms",
        postgresql_where=text("status = 'held'"),
        sqlite_where=text("status = 'held'"),
    ),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("user_id", String(ACCOUNT_ID), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("amount_microcredits", BigInteger, nullable=False),
    Column("balance_after_microcredits", BigInteger, nullable=False),
    # What a settle asked for, when its charge was capped below it: a retried settle is matched on it.
    Column("requested_microcredits", BigInteger, nullable=True),
    Column("ref", String(200), nullable=True),
    Column("note", Text, nullable=True),
    Column("metadata", JSONType, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Index("ix_ledger_entries_user_created", "user_id", "created_at_ms"),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("idempotency_key", String(200), nullable=True),
    Column("city_id", String(64), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("pathway", String(32), nullable=False),
    Column("model_id", String(128), nullable=True),
    Column("provider_id", String(128), nullable=True),
    Column("fallback_from", String(128), nullable=True),
    Column("status", String(16), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("error_type", String(64), nullable=True),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("cache_write_tokens", Integer, nullable=False, default=0),
    # A priced call's cost per class (downcity.ai.pricing.PRICE_CLASSES), exact, in picocredits (10^-6 microcredit).
    *(Column(f"{name}_picocredits", BigInteger, nullable=False, default=0) for name in PRICE_CLASS_COLUMNS),
    Column("duration_ms", Integer, nullable=False, default=0),
    Column("ttfb_ms", Integer, nullable=True),
    Column("charge_microcredits", BigInteger, nullable=False, default=0),
    Column("ledger_entry_key", String(200), nullable=True),
    # "upstream" when the upstream reported the tokens, "estimated" when we metered what was delivered.
    Column("usage_source", String(16), nullable=False, default="upstream"),
    # Every upstream attempt (model, status, duration_ms, key name) when the call retried or fell back.
    Column("attempts", JSONType, nullable=True),
    # The name (never the value) of the API key variable that served the call.
    Column("key_name", String(128), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Index("ix_usage_city_user_created", "city_id", "user_id", "created_at_ms"),
    Index("ix_usage_created", "created_at_ms"),
)

settle_outbox = Table(
    "settle_outbox",
    metadata,
    Column("idempotency_key", String(200), primary_key=True),
    Column("user_id", String(ACCOUNT_ID), nullable=False),
    Column("amount_microcredits", BigInteger, nullable=False),
    Column("ref", String(200), nullable=True),
    Column("note", Text, nullable=True),
    Column("metadata", JSONType, nullable=True),
    Column("usage", JSONType, nullable=True),
    # The credit lease the call was admitted on, and its share of it (see `Ledger.settle`).
    Column("lease", String(200), nullable=True),
    Column("lease_hold_microcredits", BigInteger, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
)

idempotency_claims = Table(
    "idempotency_claims",
    metadata,
    # sha256 of (city, user, pathway, client key): fixed width whatever the client sends.
    Column("key_hash", String(64), primary_key=True),
    Column("city_id", String(200), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("pathway", String(32), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("body", JSONType, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

async_jobs = Table(
    "async_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("status", String(16), nullable=False),
    Column("input", JSONType, nullable=False),
    Column("state", JSONType, nullable=True),
    Column("result", JSONType, nullable=True),
    Column("error", Text, nullable=True),
    Column("message", Text, nullable=True),
    Column("poll_after_ms", Integer, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_poll_at_ms", BigInteger, nullable=True),
    Column("lease_until_ms", BigInteger, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("city_id", String(64), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("model_id", String(128), nullable=False),
    Column("provider_id", String(128), nullable=False),
    Column("charge_microcredits", BigInteger, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("finished_at_ms", BigInteger, nullable=True),
    Index("ix_async_jobs_status_next_poll", "status", "next_poll_at_ms"),
    Index("ix_async_jobs_owner", "city_id", "user_id", "created_at_ms"),
)

quotas = Table(
    "quotas",
    metadata,
    # One city's quota, stored by the admin routes; the Federation's declared quotas are not stored.
    Column("city_id", String(64), primary_key=True),
    Column("quota_id", String(64), primary_key=True),
    Column("spec", JSONType, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

quota_windows = Table(
    "quota_windows",
    metadata,
    # What one budget (a quota's scope: city, and user or metadata value or model) used in one window of one
    # metric (requests or tokens per minute, credits per day or month); `used` moves by guarded deltas only.
    Column("bucket", String(400), primary_key=True),
    Column("metric", String(16), primary_key=True),
    Column("window_start_ms", BigInteger, primary_key=True),
    Column("city_id", String(64), nullable=False),
    Column("used", BigInteger, nullable=False),
    Column("window_end_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Index("ix_quota_windows_city_end", "city_id", "window_end_ms"),
)
