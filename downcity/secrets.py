"""The master key that encrypts provider keys and signing keys at rest (AES-256-GCM), and the scrubber that
keeps every configured secret value out of error messages and log lines."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import make_url

from downcity.settings import Settings

KEY_BYTES = 32
NONCE_BYTES = 12
MASTER_KEY_ENV = "DOWNCITY_MASTER_KEY"
MASTER_KEY_FILE_ENV = "DOWNCITY_MASTER_KEY_FILE"
# Where releases before the key moved out of the data dir put it; still read, with a warning.
LEGACY_MASTER_KEY_FILE = "master.key"

logger = logging.getLogger(__name__)
_warned_beside: set[Path] = set()


class DecryptionError(ValueError):
    """A ciphertext that does not authenticate under this key and associated data."""


def _decode_key(encoded: str) -> bytes:
    padded = encoded.strip() + "=" * (-len(encoded.strip()) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ValueError("not the urlsafe-base64 encoding of 32 bytes")
    return raw


def _encode_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _create_key_file(path: Path) -> None:
    # Write a private temp file, then hard-link it into place: concurrent starters
    # never see a half-written key, and exactly one of them wins.
    tmp = path.with_name(f".{path.name}.{os.urandom(8).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (_encode_key(os.urandom(KEY_BYTES)) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def key_file(settings: Settings) -> Path:
    """`DOWNCITY_MASTER_KEY_FILE`, else a key already in the data dir (older releases), else the default."""
    if settings.master_key_file is not None:
        return settings.master_key_file
    legacy = settings.data_dir / LEGACY_MASTER_KEY_FILE
    return legacy if legacy.exists() else settings.default_master_key_file


def sqlite_file(settings: Settings) -> Path | None:
    """The SQLite database file the settings point at, or None for another database."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).resolve()


def warn_if_beside_database(path: Path, settings: Settings) -> None:
    """Log once per file when the master key sits in the SQLite database's directory."""
    database = sqlite_file(settings)
    resolved = path.resolve()
    if database is None or resolved.parent != database.parent or resolved in _warned_beside:
        return
    _warned_beside.add(resolved)
    logger.warning(
        "the master key file %s is beside the SQLite database %s, so a copy of that directory holds both: "
        "set %s, or %s to a path outside it",
        resolved,
        database,
        MASTER_KEY_ENV,
        MASTER_KEY_FILE_ENV,
    )


class MasterKey:
    """AES-256-GCM with a random 12-byte nonce prepended to every ciphertext."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a master key is {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self._aead = AESGCM(key)

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh random key."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def load(cls, settings: Settings) -> MasterKey:
        """The key from `DOWNCITY_MASTER_KEY`, else from its file (created once, 0600); see `key_file`."""
        if settings.master_key:
            try:
                return cls(_decode_key(settings.master_key))
            except ValueError as exc:
                raise ValueError(f"{MASTER_KEY_ENV} is malformed: {exc}") from None
        path = key_file(settings)
        warn_if_beside_database(path, settings)
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_key_file(path)
        try:
            return cls(_decode_key(path.read_text(encoding="ascii")))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"master key file {path} is malformed: {exc}") from None

    def derive(self, purpose: str) -> str:
        """A secret for `purpose` (hex HMAC-SHA256 of it under this key): every process holding the key derives the
        same one, and it reveals nothing of the key (the provider relay's token is one)."""
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).hexdigest()

    def encoded(self) -> str:
        """The key as `DOWNCITY_MASTER_KEY` or the key file spell it, so the scrubber can find it in text."""
        return _encode_key(self._key)

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Encrypt and authenticate `plaintext`, bound to `aad`."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, *, aad: bytes) -> bytes:
        """Decrypt a blob from `encrypt`; raises `DecryptionError` on a wrong key, aad or tampering."""
        if len(blob) < NONCE_BYTES:
            raise DecryptionError("ciphertext is too short")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError("ciphertext does not authenticate under this key and aad") from None


REDACTED = "[redacted]"
# Shorter values would redact ordinary words; no real key is this short.
MIN_SECRET_CHARS = 8
SecretSource = Callable[[], Iterable[str | None]]


class SecretScrubber(logging.Filter):
    """Replaces every secret value its sources name with `[redacted]`, in text and in log records."""

    def __init__(self) -> None:
        super().__init__()
        self._sources: list[SecretSource] = []

    def add_source(self, source: SecretSource) -> None:
        """Also scrub whatever `source()` returns (read at each use, so rotated keys are covered)."""
        self._sources.append(source)

    def remove_source(self, source: SecretSource) -> None:
        """Stop consulting `source`."""
        self._sources.remove(source)

    def secrets(self) -> list[str]:
        """The current secret values, longest first so a key containing another is redacted whole."""
        found = {value for source in self._sources for value in source() if value and len(value) >= MIN_SECRET_CHARS}
        return sorted(found, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """`text` with every secret value replaced."""
        for secret in self.secrets():
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the record's message and traceback in place; never drops a record."""
        if not self._sources:
            return True
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        return True


SCRUBBER = SecretScrubber()
_scrubbing_factory: Callable[..., logging.LogRecord] | None = None


def scrub_everywhere(source: SecretSource) -> None:
    """Scrub what `source()` returns from errors and from every log record this process makes."""
    SCRUBBER.add_source(source)
    install_log_scrubbing()


def install_log_scrubbing() -> None:
    """Run `SCRUBBER` on every log record this process makes, whichever handler writes it (idempotent)."""
    global _scrubbing_factory
    if logging.getLogRecordFactory() is _scrubbing_factory:
        return
    make_record = logging.getLogRecordFactory()

    def scrubbed_record(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        SCRUBBER.filter(record)
        return record

    _scrubbing_factory = scrubbed_record
    logging.setLogRecordFactory(scrubbed_record)
