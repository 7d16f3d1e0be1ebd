"""``rsync``: local copies, or to and from ``[user@]host:path`` over ssh.

Options (``transfers.options`` for this adapter):
  rsh    remote shell for ``-e`` (e.g. ``ssh -i ~/.ssh/key -o BatchMode=yes``); default: rsync's (ssh)
  flags  extra rsync flags, space-separated (default none; ``-a`` is always given)
  mkpath ``true`` to pass ``--mkpath`` (rsync >= 3.2.3) so a remote destination's folders are created
"""

from __future__ import annotations

import os
import shlex
from typing import List, Sequence

from balsam.platforms.transfer.base import TransferAdapter, TransferItem, is_remote


def render_rsync_steps(
    items: Sequence[TransferItem], rsh: str = "", flags: Sequence[str] = (), mkpath: bool = False
) -> List[List[str]]:
    """One ``rsync -a`` per item, preceded by ``mkdir -p`` for a local destination (pure).

    A recursive item copies the source directory's contents into the destination directory (both get a
    trailing slash, rsync's "contents of" form).
    """
    base = ["rsync", "-a", *flags]
    if rsh:
        base += ["-e", rsh]
    if mkpath:
        base.append("--mkpath")
    steps: List[List[str]] = []
    for item in items:
        src, dest = item.source, item.destination
        if item.recursive:
            src, dest = src.rstrip("/") + "/", dest.rstrip("/") + "/"
        if not is_remote(item.destination):
            folder = item.destination if item.recursive else (os.path.dirname(item.destination.rstrip("/")) or ".")
            steps.append(["mkdir", "-p", folder])
        steps.append([*base, src, dest])
    return steps


class RsyncTransfer(TransferAdapter):
    """Copies with rsync (local, or remote over the remote shell)."""

    name = "rsync"
    options_help = {
        "rsh": "remote shell command for rsync -e (default ssh)",
        "flags": "extra rsync flags, space-separated",
        "mkpath": "true to pass --mkpath (create a remote destination's folders; rsync >= 3.2.3)",
    }

    def render_steps(self, items: Sequence[TransferItem]) -> List[List[str]]:
        """See :func:`render_rsync_steps` (with this adapter's options)."""
        return render_rsync_steps(
            items,
            rsh=self.options.get("rsh", ""),
            flags=shlex.split(self.options.get("flags", "")),
            mkpath=self.options.get("mkpath", "false").strip().lower() in ("1", "true", "yes", "on"),
        )
