"""Putting the DB that ``balsam db recover`` rebuilt in the damaged one's place, so that a crash (kill -9, a power cut
of the login node) at any moment leaves the site one whole DB.

The rebuilt file (``site.db.recovered-STAMP``) is complete, with its derived rows, and checked before the swap begins.
The swap is three renames: the damaged file is moved aside first (``site.db`` -> ``site.db.corrupt-STAMP``; from then
on the rebuilt file is the site's DB), its WAL and shared-memory files after it (a WAL left beside the rebuilt file
would be read as the rebuilt file's own), and the rebuilt file takes the name last. Killed between the first rename
and the last, the site has no ``site.db`` for a moment: the next open finishes the swap (:func:`finish`) instead of
failing, or creating an empty DB in its place. A rebuilt file whose swap never began (a recover killed while it
rebuilt) is left-over work, removed by the next recover (:func:`drop_unfinished`); the damaged files are never
removed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

REBUILT = ".recovered-"
KEPT = ".corrupt-"
SIDE_FILES = ("-wal", "-shm")


def names(db_path: Path, stamp: str) -> Tuple[Path, Path]:
    """(the rebuilt file, the damaged file kept) of a recovery stamped ``stamp``, neither of which exists yet: an
    earlier recovery of the same second gets a counter after its stamp (its kept file is never overwritten)."""
    n = 0
    while True:
        mark = stamp if n == 0 else f"{stamp}.{n}"
        new, kept = db_path.with_name(f"{db_path.name}{REBUILT}{mark}"), db_path.with_name(f"{db_path.name}{KEPT}{mark}")
        if not any(Path(f"{p}{s}").exists() for p in (new, kept) for s in ("", *SIDE_FILES)):
            return new, kept
        n += 1


def swap_in(db_path: Path, new_path: Path, kept: Path) -> None:
    """Put the finished, checked ``new_path`` in ``db_path``'s place, keeping the old DB (and its WAL) as ``kept``."""
    os.replace(db_path, kept)  # the commit point: from here the rebuilt file is the site's DB (finish() completes it)
    _complete(db_path, new_path, kept)


def _complete(db_path: Path, new_path: Path, kept: Path) -> None:
    for suffix in SIDE_FILES:
        side = Path(f"{db_path}{suffix}")
        if side.exists():
            if Path(f"{kept}{suffix}").exists():
                side.unlink()  # made by an open of the missing DB after the kill; the damaged DB's own went first
            else:
                os.replace(side, Path(f"{kept}{suffix}"))
    for suffix in SIDE_FILES:
        Path(f"{new_path}{suffix}").unlink(missing_ok=True)
    os.replace(new_path, db_path)


def _rebuilt_files(db_path: Path) -> List[Tuple[Path, Path]]:
    """(rebuilt file, the kept file of the same stamp) of every rebuilt file beside ``db_path``, newest first."""
    out = []
    prefix = f"{db_path.name}{REBUILT}"
    try:
        entries = sorted(os.listdir(db_path.parent), reverse=True)
    except OSError:
        return []
    for name in entries:
        if name.startswith(prefix) and not name.endswith(SIDE_FILES):
            stamp = name[len(prefix):]
            out.append((db_path.with_name(name), db_path.with_name(f"{db_path.name}{KEPT}{stamp}")))
    return out


def pending(db_path: Path) -> Optional[Tuple[Path, Path]]:
    """(rebuilt file, kept file) of a swap that began and did not end (no site DB, or an empty file an open of the
    missing one made, and a rebuilt file whose damaged counterpart was moved aside), or None."""
    try:
        if db_path.stat().st_size > 0:
            return None
    except FileNotFoundError:
        pass
    for new, kept in _rebuilt_files(db_path):
        if kept.is_file():
            return new, kept
    return None


def finish(db_path: Path) -> bool:
    """Finish a swap a crash cut short (see the module); True if there was one (the site DB is in place now)."""
    found = pending(db_path)
    if found is None:
        return False
    new, kept = found
    try:
        _complete(db_path, new, kept)
    except FileNotFoundError:  # another process finished it first
        return db_path.is_file()
    return True


def drop_unfinished(db_path: Path) -> List[Path]:
    """Remove the rebuilt files (and their WAL and shared-memory files) of recoveries killed before their swap began
    (no kept file of the same stamp), while the site DB is in place; returns what was removed."""
    if pending(db_path) is not None or not db_path.is_file():
        return []
    removed = []
    for new, kept in _rebuilt_files(db_path):
        if not kept.exists():
            for suffix in ("", *SIDE_FILES):
                path = Path(f"{new}{suffix}")
                if path.exists():
                    path.unlink()
                    removed.append(path)
    return removed


__all__ = ["drop_unfinished", "finish", "names", "pending", "swap_in"]
