"""`manage.py check --deploy` passes, with no warning, on the production settings of docs/deploy.md."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION = {
    "DEBUG": "false",
    "ALLOWED_HOSTS": "board.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://board.example.com",
    "WS_ALLOWED_ORIGINS": "https://board.example.com",
    "WS_TRUSTED_PROXIES": "127.0.0.1",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "DATABASE_URL": "postgres://stocktracker:secret@127.0.0.1:5432/stocktracker",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def _check(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("SECURE_COOKIES",)}
    env.update(PRODUCTION, SECRET_KEY=secrets.token_urlsafe(60), **overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_passes_with_production_settings():
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_fails_when_a_production_setting_is_missing():
    result = _check(SECURE_HSTS_SECONDS="0", SECURE_COOKIES="false")
    assert result.returncode != 0
    assert "security.W004" in result.stderr and "security.W012" in result.stderr
