"""Where the client keeps its local state (hash cache, archive extraction)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["STATE_DIR_ENV", "default_state_dir", "ensure_state_dir"]

STATE_DIR_ENV = "RELAYPACS_STATE_DIR"


def default_state_dir() -> Path:
    """``$RELAYPACS_STATE_DIR``, else ``$XDG_STATE_HOME/relaypacs``, else
    ``~/.local/state/relaypacs``."""
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "relaypacs"


def ensure_state_dir(path: Path | None = None) -> Path:
    """Create the state directory (mode 0700: it lists file paths of patient studies)."""
    state_dir = (path or default_state_dir()).expanduser().absolute()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is masked by the umask and ignored when the directory exists already.
    if state_dir.stat().st_mode & 0o077:
        state_dir.chmod(0o700)
    return state_dir
