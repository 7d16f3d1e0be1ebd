"""Local copies with ``cp`` (POSIX flags, so GNU and BSD/macOS cp both work)."""

from __future__ import annotations

import os
from typing import List, Sequence

from balsam.exceptions import TransferError
from balsam.platforms.transfer.base import TransferAdapter, TransferItem, is_remote


def render_cp_steps(items: Sequence[TransferItem]) -> List[List[str]]:
    """``mkdir -p`` the destination's folder, then ``cp -p`` a file or ``cp -pR src/. dest`` a directory's
    contents (pure)."""
    steps: List[List[str]] = []
    for item in items:
        for path in (item.source, item.destination):
            if is_remote(path):
                raise TransferError(f"cp: {path!r} is remote; use the rsync transfer adapter")
        if item.recursive:
            steps.append(["mkdir", "-p", item.destination])
            steps.append(["cp", "-pR", item.source.rstrip("/") + "/.", item.destination])
        else:
            parent = os.path.dirname(item.destination.rstrip("/")) or "."
            steps.append(["mkdir", "-p", parent])
            steps.append(["cp", "-p", item.source, item.destination])
    return steps


class CpTransfer(TransferAdapter):
    """Copies between local paths (including shared filesystems)."""

    name = "cp"

    def render_steps(self, items: Sequence[TransferItem]) -> List[List[str]]:
        """See :func:`render_cp_steps`."""
        return render_cp_steps(items)
