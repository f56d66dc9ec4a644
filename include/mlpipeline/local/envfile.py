"""Read a ``.env`` file (``KEY=VALUE`` lines) without overriding the real environment."""

from __future__ import annotations

import os
import shlex
from pathlib import Path


def parse_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` pairs of ``path``; blank lines and ``#`` comments are skipped."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stripped = stripped.removeprefix("export ")
        key, sep, raw = stripped.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        parts = shlex.split(raw, comments=False, posix=True) if raw.strip() else [""]
        values[key.strip()] = parts[0] if len(parts) == 1 else raw.strip()
    return values


def load_env_file(path: Path) -> dict[str, str]:
    """Put ``path``'s variables into ``os.environ`` unless already set; return what it set."""
    if not path.is_file():
        return {}
    applied = {}
    for key, value in parse_env_file(path).items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied
