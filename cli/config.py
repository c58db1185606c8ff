"""Where the command-line client keeps the server URL and the tokens of the last login.

One JSON file in the user's config directory (``platformdirs``: ``$XDG_CONFIG_HOME/crunchql``
on Linux), readable by its owner only: it holds a refresh token, which is as good as the
password until it expires or the session is ended.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs

URL_VARIABLE = "CRUNCHQL_URL"
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass
class Credentials:
    url: str
    email: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None


def config_file() -> Path:
    return Path(platformdirs.user_config_dir("crunchql", appauthor=False)) / "credentials.json"


def load() -> Credentials | None:
    try:
        raw = json.loads(config_file().read_text(encoding="utf-8"))
        return Credentials(
            url=str(raw["url"]),
            email=raw.get("email"),
            access_token=raw.get("access_token"),
            refresh_token=raw.get("refresh_token"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(credentials: Credentials) -> Path:
    """Write the file atomically, created with mode 0600 (never briefly readable by others)."""
    path = config_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # an old leftover file keeps its mode otherwise
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(asdict(credentials), handle, indent=2)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return path


def clear() -> bool:
    try:
        config_file().unlink()
        return True
    except FileNotFoundError:
        return False


def resolve_url(flag: str | None, stored: Credentials | None) -> str:
    """``--url``, else ``CRUNCHQL_URL``, else the URL of the last login, else localhost."""
    return flag or os.environ.get(URL_VARIABLE) or (stored.url if stored else None) or DEFAULT_URL
