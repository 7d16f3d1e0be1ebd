"""The file cleaner: delete each app's ``cleanup_files`` globs from its finished jobs' workdirs.

Only paths inside the job's workdir (itself inside the site's ``data/``) are ever touched, whatever a glob
or a symlink says. A job is cleaned once (``pending_file_cleanup`` is cleared afterwards).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List

from balsam._api.app import ApplicationDefinition
from balsam._api.sites import SiteRef
from balsam.db import jobs as job_db
from balsam.services.base import Service
from balsam.settings import FileCleanerSettings

logger = logging.getLogger(__name__)


def clean_workdir(data_root: Path, workdir: str, patterns: List[str]) -> int:
    """Delete what ``patterns`` match in ``data_root/workdir``; returns how many paths were removed."""
    root = data_root.resolve()
    base = (root / workdir).resolve()
    if base == root or root not in base.parents:
        logger.warning("refusing to clean %s: not inside %s", base, root)
        return 0
    removed = 0
    for pattern in patterns:
        try:  # all matches first: a match deleted while the glob still walks the tree below it ends the walk with an error
            matches = list(base.glob(pattern))
        except Exception as exc:  # '' is a ValueError, '.' an IndexError, './' an AttributeError (Python 3.11's glob)
            # A pattern stored before it was checked: skipped, so that one app's pattern does not stop the cleaner
            # (the error ended every cycle before the jobs were marked cleaned, so no job of any app was cleaned again).
            logger.warning("cleanup_files pattern %r cannot be used (%s: %s): skipped", pattern, type(exc).__name__, exc)
            continue
        for path in matches:
            target = path.resolve() if not path.is_symlink() else path.parent.resolve() / path.name
            if base not in target.parents:  # nor the workdir itself ('**' matches it): only what is inside it
                logger.warning("refusing to delete %s: not inside the workdir %s", path, base)
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot delete %s: %s", path, exc)
    return removed


class FileCleanerService(Service):
    """Cleans finished jobs' workdirs in batches."""

    name = "file_cleaner"

    def __init__(self, site: SiteRef, settings: FileCleanerSettings) -> None:
        super().__init__(settings.period_s)
        self.site = site
        self.settings = settings

    def run_cycle(self) -> None:
        store = self.site.store
        rows = job_db.jobs_to_clean(store.conn, self.settings.batch_size)
        if not rows:
            self.backlog = 0
            return
        patterns: Dict[int, List[str]] = {}
        for app_id in {r[1] for r in rows}:
            try:
                cls: Any = ApplicationDefinition.load_by_id(app_id, site=self.site)
                patterns[app_id] = list(cls.cleanup_files or [])
            except Exception as exc:
                logger.warning("file cleaner: app %s cannot be loaded, its jobs are not cleaned: %s", app_id, exc)
                patterns[app_id] = []
        for job_id, app_id, workdir in rows:
            if patterns[app_id]:
                n = clean_workdir(self.site.layout.data, workdir, patterns[app_id])
                if n:
                    logger.info("job %s: removed %d paths", job_id, n)
        with store.write() as conn:
            job_db.mark_cleaned(conn, [r[0] for r in rows])
        self.backlog = len(rows)
