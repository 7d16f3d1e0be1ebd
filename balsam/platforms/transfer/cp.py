"""Local copies with ``cp`` (POSIX flags, so GNU and BSD/macOS cp both work), or hard links.

Options: ``link`` ``true`` to hard-link files instead of copying them (same filesystem; falls back to a copy
where a link is impossible). Directories are always copied. Each item is copied on its own: one that fails
is reported with cp's message, and the others still arrive.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

from balsam.exceptions import TransferError
from balsam.platforms import detached
from balsam.platforms.transfer.base import ScriptTransfer, TransferItem, TransferStatus, is_remote, render_item_script


def size_of(path: str) -> int:
    """Bytes in a file, or in every file below a directory (0 if it is gone)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f)) for root, _d, files in os.walk(path) for f in files
                   if not os.path.islink(os.path.join(root, f)))
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def render_cp_steps(items: Sequence[TransferItem], link: bool = False) -> List[List[List[str]]]:
    """Per item: ``mkdir -p`` the destination's folder, then ``cp -p`` a file (``ln -f`` with ``link``) or
    ``cp -pR src/. dest`` a directory's contents (pure)."""
    out: List[List[List[str]]] = []
    for item in items:
        for path in (item.source, item.destination):
            if is_remote(path):
                raise TransferError(f"cp: {path!r} is remote; use the rsync transfer adapter")
        if item.recursive:
            out.append([["mkdir", "-p", item.destination], ["cp", "-pR", item.source.rstrip("/") + "/.", item.destination]])
        else:
            parent = os.path.dirname(item.destination.rstrip("/")) or "."
            if link:  # a link across filesystems fails: copy instead
                copy = ["sh", "-c", 'ln -f "$1" "$2" 2>/dev/null || cp -p "$1" "$2"', "balsam-link", item.source, item.destination]
            else:
                copy = ["cp", "-p", item.source, item.destination]
            out.append([["mkdir", "-p", parent], copy])
    return out


class CpTransfer(ScriptTransfer):
    """Copies (or hard-links) between local paths, including shared filesystems."""

    name = "cp"
    options_help = {"link": "true to hard-link files instead of copying (same filesystem)"}

    def prepare(self, items: Sequence[TransferItem], task_dir: Path) -> str:
        """The item-by-item script (see :func:`render_cp_steps`)."""
        return render_item_script(render_cp_steps(items, link=self.option_flag("link")))

    def finish(self, task_id: str, items: Sequence[TransferItem], task_dir: Path, rec: detached.ProcessRecord) -> TransferStatus:
        """The item outcomes, with the bytes that arrived (for the task's bytes/s)."""
        status = super().finish(task_id, items, task_dir, rec)
        status.bytes = sum(size_of(item.destination) for i, item in enumerate(items) if i not in status.failed)
        return status
