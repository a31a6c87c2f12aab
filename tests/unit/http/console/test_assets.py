"""The console's assets: vendored files match their recorded digests, and the package data ships every file."""

from __future__ import annotations

import fnmatch
import hashlib
import tomllib
from pathlib import Path

from downcity.http.console.rendering import CONTENT_SECURITY_POLICY, STATIC_DIR, TEMPLATES_DIR

ROOT = Path(__file__).resolve().parents[4]
PACKAGE = ROOT / "downcity"


def test_vendored_files_match_their_recorded_digests() -> None:
    vendor = STATIC_DIR / "vendor"
    recorded = dict(
        reversed(line.split("  ")) for line in (vendor / "SHA256SUMS").read_text().splitlines() if line.strip()
    )
    actual = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in vendor.iterdir()}
    assert {name: actual[name] for name in recorded} == recorded
    assert set(actual) - set(recorded) == {"SHA256SUMS", "VENDORED.md"}


def test_package_data_ships_every_template_and_static_file() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["downcity"]
    files = [path for folder in (TEMPLATES_DIR, STATIC_DIR) for path in folder.rglob("*") if path.is_file()]
    unshipped = [
        str(path.relative_to(PACKAGE))
        for path in files
        if not any(fnmatch.fnmatch(str(path.relative_to(PACKAGE)), pattern) for pattern in patterns)
    ]
    assert len(files) > 10
    assert unshipped == []


def test_pages_load_scripts_and_styles_only_from_the_console() -> None:
    sources = [path.read_text() for path in TEMPLATES_DIR.glob("*.html")]
    assert all("http://" not in text and "https://" not in text and "//cdn" not in text for text in sources)
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
