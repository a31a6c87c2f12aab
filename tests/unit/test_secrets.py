"""MasterKey: AES-256-GCM bound to associated data, loaded from the environment or a private key file."""

from __future__ import annotations

import base64
import logging
import stat
from pathlib import Path

import pytest

from downcity.secrets import DecryptionError, MasterKey
from downcity.settings import Settings

KEY = bytes(range(32))


def test_encrypt_then_decrypt_returns_the_plaintext() -> None:
    key = MasterKey(KEY)
    blob = key.encrypt(b"sk-secret", aad=b"env:OPENAI_API_KEY")
    assert key.decrypt(blob, aad=b"env:OPENAI_API_KEY") == b"sk-secret"


def test_ciphertexts_of_the_same_plaintext_differ() -> None:
    key = MasterKey(KEY)
    assert key.encrypt(b"same", aad=b"a") != key.encrypt(b"same", aad=b"a")


def test_decrypt_with_another_aad_fails() -> None:
    key = MasterKey(KEY)
    blob = key.encrypt(b"sk-secret", aad=b"env:A")
    with pytest.raises(DecryptionError):
        key.decrypt(blob, aad=b"env:B")


def test_decrypt_with_another_key_fails() -> None:
    blob = MasterKey(KEY).encrypt(b"sk-secret", aad=b"a")
    with pytest.raises(DecryptionError):
        MasterKey.generate().decrypt(blob, aad=b"a")


def test_decrypt_of_a_tampered_blob_fails() -> None:
    key = MasterKey(KEY)
    blob = bytearray(key.encrypt(b"sk-secret", aad=b"a"))
    blob[-1] ^= 1
    with pytest.raises(DecryptionError):
        key.decrypt(bytes(blob), aad=b"a")


def test_key_from_settings_decrypts_what_the_same_key_encrypted(tmp_path: Path) -> None:
    encoded = base64.urlsafe_b64encode(KEY).decode()
    blob = MasterKey(KEY).encrypt(b"value", aad=b"a")
    loaded = MasterKey.load(Settings(data_dir=tmp_path, master_key=encoded))
    assert loaded.decrypt(blob, aad=b"a") == b"value"
    assert not (tmp_path / "master.key").exists()


def test_key_from_settings_accepts_missing_padding(tmp_path: Path) -> None:
    encoded = base64.urlsafe_b64encode(KEY).decode().rstrip("=")
    blob = MasterKey(KEY).encrypt(b"value", aad=b"a")
    assert MasterKey.load(Settings(data_dir=tmp_path, master_key=encoded)).decrypt(blob, aad=b"a") == b"value"


@pytest.mark.parametrize("bad", ["not base64 at all!", base64.urlsafe_b64encode(b"short").decode()])
def test_malformed_env_key_error_names_the_variable(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="DOWNCITY_MASTER_KEY is malformed"):
        MasterKey.load(Settings(data_dir=tmp_path, master_key=bad))


def test_key_file_is_created_beside_the_data_dir_not_in_it_with_owner_only_permissions(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    MasterKey.load(Settings(data_dir=data_dir))
    path = tmp_path / "nested" / "data-master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.urlsafe_b64decode(path.read_text().strip())) == 32
    assert sorted(p.name for p in (tmp_path / "nested").iterdir()) == ["data-master.key"]


def test_key_file_is_reused_by_later_loads(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    blob = MasterKey.load(settings).encrypt(b"value", aad=b"a")
    before = (tmp_path / "data-master.key").read_text()
    assert MasterKey.load(settings).decrypt(blob, aad=b"a") == b"value"
    assert (tmp_path / "data-master.key").read_text() == before


def test_the_key_file_named_by_the_environment_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNCITY_MASTER_KEY_FILE", str(tmp_path / "secrets" / "downcity.key"))
    monkeypatch.setenv("DOWNCITY_DATA_DIR", str(tmp_path / "data"))
    MasterKey.load(Settings.from_env())
    assert stat.S_IMODE((tmp_path / "secrets" / "downcity.key").stat().st_mode) == 0o600
    assert not (tmp_path / "data-master.key").exists()


def test_a_key_file_left_in_the_data_dir_is_still_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    legacy = tmp_path / "data" / "master.key"
    legacy.parent.mkdir()
    legacy.write_text(base64.urlsafe_b64encode(KEY).decode() + "\n")
    blob = MasterKey(KEY).encrypt(b"value", aad=b"a")
    with caplog.at_level(logging.WARNING, logger="downcity.secrets"):
        loaded = MasterKey.load(Settings(data_dir=tmp_path / "data"))
    assert loaded.decrypt(blob, aad=b"a") == b"value"
    assert [r.getMessage() for r in caplog.records] == [
        f"the master key file {legacy} is beside the SQLite database {tmp_path / 'data' / 'downcity.db'}, so a copy "
        "of that directory holds both: set DOWNCITY_MASTER_KEY, or DOWNCITY_MASTER_KEY_FILE to a path outside it"
    ]


def test_no_warning_when_the_key_file_is_apart_from_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="downcity.secrets"):
        MasterKey.load(Settings(data_dir=tmp_path / "data"))
        MasterKey.load(Settings(data_dir=tmp_path / "pg", database_url="postgresql+asyncpg://db/downcity"))
    assert caplog.records == []


def test_malformed_key_file_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "master.key").write_text("garbage\n")
    with pytest.raises(ValueError, match=r"master\.key is malformed"):
        MasterKey.load(Settings(data_dir=tmp_path))


def test_a_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey(b"x" * 16)


def test_a_derived_secret_is_the_same_for_every_holder_of_the_key_and_differs_by_purpose() -> None:
    key = MasterKey(b"k" * 32)
    token = key.derive("provider relay")
    assert token == MasterKey(b"k" * 32).derive("provider relay")
    assert len(token) == 64 and int(token, 16) >= 0
    assert token != key.derive("something else")
    assert token != MasterKey(b"j" * 32).derive("provider relay")
    assert key.encoded() not in token
