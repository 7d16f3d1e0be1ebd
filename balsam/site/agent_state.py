"""What a site's agent reports about itself, read from the site directory on its home host: whether it runs (its
PID file is held), its last status report (``agent.json``: each service's health, its API address) and the free
space on the site's disk. The agent writes these files; ``balsam site status``, ``balsam job show`` and the
dashboard read them through :func:`agent_status`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

from balsam.pidfile import pid_file_held
from balsam.site.layout import SiteLayout

__all__ = ["DISK_FULL_BYTES", "agent_status", "disk_state", "pid_path", "read_status", "status_path"]

DISK_FULL_BYTES = 1 << 20
"""Free space under which the site's disk counts as full (or 2% of a small filesystem)."""


def pid_path(layout: SiteLayout) -> Path:
    """The agent's PID file, held locked while it runs."""
    return layout.state / "agent.pid"


def status_path(layout: SiteLayout) -> Path:
    """The agent's status report (``agent.json``)."""
    return layout.state / "agent.json"


def disk_state(path: Path) -> Dict[str, Any]:
    """Free space on the filesystem of ``path``; ``full`` when under 1 MiB (or 2% of a small filesystem)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return {}
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    return {"path": str(path), "free_bytes": free, "full": free < min(DISK_FULL_BYTES, 0.02 * total)}


def read_status(layout: SiteLayout) -> Dict[str, Any]:
    """The agent's last status report ({} if none)."""
    try:
        data = json.loads(status_path(layout).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def agent_status(site_root: Path) -> Dict[str, Any]:
    """Whether the agent runs, and each service's health."""
    layout = SiteLayout(Path(site_root).resolve())
    status = read_status(layout)
    status["running"] = pid_file_held(pid_path(layout))
    status.setdefault("services", {})
    status["disk"] = disk_state(layout.root)  # now, not as of the last report (which a full disk may have stopped)
    return status
