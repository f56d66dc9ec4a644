"""Secrets generated once per state dir (``MLP_STATE_DIR/secrets.json``).

The product reads the serving admin token from here when ``MLP_SERVING_ADMIN_TOKEN`` is not
set (the model server checks it, deployment sends it); the embedded stack
(:mod:`mlpipeline.local.stack`) also takes the Airflow JWT/API keys and the admin password.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from mlpipeline.settings import Settings

#: Keys generated with 32 random bytes when missing.
GENERATED_KEYS = ("jwt_secret", "api_secret_key", "serving_admin_token")


def secrets_file(state_dir: Path | str) -> Path:
    return Path(state_dir) / "secrets.json"


def load_or_create(state_dir: Path | str, settings: Settings) -> dict[str, str]:
    """The stored secrets, generating (and storing, mode 0600) the missing ones.

    ``MLP_ADMIN_PASSWORD`` replaces the stored admin password; without it one is generated once.
    """
    path = secrets_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    for key in GENERATED_KEYS:
        if not stored.get(key):
            stored[key] = secrets.token_urlsafe(32)
            changed = True
    if settings.admin_password and stored.get("admin_password") != settings.admin_password:
        stored["admin_password"] = settings.admin_password
        changed = True
    elif not stored.get("admin_password"):
        stored["admin_password"] = secrets.token_urlsafe(12)
        changed = True
    if changed:
        path.write_text(json.dumps(stored, indent=2))
        path.chmod(0o600)
    return stored


def serving_admin_token(settings: Settings) -> str:
    """``MLP_SERVING_ADMIN_TOKEN``, else the one generated in the state dir."""
    return settings.serving_admin_token or load_or_create(settings.state_dir, settings)["serving_admin_token"]
