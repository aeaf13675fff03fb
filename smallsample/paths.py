"""Where smallsample keeps files for the user: ``$XDG_CACHE_HOME/smallsample`` (default
``~/.cache/smallsample``), each folder overridable by its own environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def user_dir(env: str, name: str) -> Path:
    """``$env`` if set and not empty, else ``$XDG_CACHE_HOME/smallsample/<name>``."""
    value = os.environ.get(env)
    if value:
        return Path(value).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "smallsample" / name
