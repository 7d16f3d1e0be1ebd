"""The transfer service: stage job data in and out through the platform transfer adapters (cp, rsync).

``transfers.transfer_locations`` in settings.yml maps an alias to where data lives:

    local | cp://              files on this host (or a shared filesystem), copied with cp
    rsync://                   the same, copied with rsync
    rsync://[user@]host        another host, over ssh

Each cycle starts tasks for pending items (grouped by location and direction, ``batch_size`` items per task,
at most ``max_concurrent_transfers`` tasks at once), then polls running tasks. Item states feed back into
the store, which moves the jobs (all stage-in done -> STAGED_IN; all stage-out done -> JOB_FINISHED; an error
fails the job with the transfer's message).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

from balsam._api.sites import SiteRef
from balsam.db import transfers as transfer_db
from balsam.exceptions import BalsamError, ConfigError
from balsam.platforms.transfer import TransferAdapter, TransferItem, TransferState, adapter_name_of, get_transfer
from balsam.services.base import Service
from balsam.settings import TransferSettings

logger = logging.getLogger(__name__)


def parse_location(alias: str, url: str) -> Tuple[str, str]:
    """A transfer location as (adapter name, remote host prefix or '')."""
    text = url.strip()
    if text in ("local", "cp://", "cp"):
        return "cp", ""
    if text.startswith("rsync://"):
        host = text[len("rsync://"):].rstrip("/")
        return "rsync", host
    raise ConfigError(f"transfer location {alias!r}: {url!r} is not one of local, cp://, rsync://, rsync://[user@]host")


class TransferService(Service):
    """Starts and polls transfer tasks for the site's transfer items."""

    name = "transfers"

    def __init__(self, site: SiteRef, settings: TransferSettings) -> None:
        super().__init__(settings.period_s)
        self.site = site
        self.settings = settings
        self.locations = {alias: parse_location(alias, url) for alias, url in settings.transfer_locations.items()}
        self._adapters: Dict[str, TransferAdapter] = {}

    def adapter(self, name: str) -> TransferAdapter:
        if name not in self._adapters:
            self._adapters[name] = get_transfer(name, state_dir=self.site.layout.state / "transfers")
        return self._adapters[name]

    def run_cycle(self) -> None:
        self._poll()
        self._start()

    def _active_tasks(self) -> List[str]:
        return [r[0] for r in self.site.store.execute("SELECT DISTINCT task_id FROM transfer_item WHERE state='active' AND task_id != ''")]

    def _start(self) -> None:
        store = self.site.store
        free = self.settings.max_concurrent_transfers - len(self._active_tasks())
        if free <= 0:
            return
        rows = store.execute(
            "SELECT t.id, t.direction, t.local_path, t.remote_path, t.location_alias, t.recursive, j.workdir "
            "FROM transfer_item t JOIN job j ON j.id = t.job_id WHERE t.state='pending' ORDER BY t.id LIMIT ?",
            (free * self.settings.batch_size,))
        self.backlog = len(rows)
        groups: Dict[Tuple[str, str], List[Any]] = {}
        for row in rows:
            groups.setdefault((row[4], row[1]), []).append(row)
        data = self.site.layout.data
        for (alias, _direction), items in groups.items():
            location = self.locations.get(alias)
            if location is None:
                self._error([r[0] for r in items], f"transfer location {alias!r} is not in settings.yml transfers.transfer_locations")
                continue
            adapter_name, host = location
            for start in range(0, len(items), self.settings.batch_size):
                if free <= 0:
                    return
                batch = items[start : start + self.settings.batch_size]
                specs = []
                for _item_id, direction, local_path, remote_path, _alias, recursive, workdir in batch:
                    local = str(Path(data, workdir, local_path))
                    remote = f"{host}:{remote_path}" if host else remote_path
                    src, dst = (remote, local) if direction == "in" else (local, remote)
                    specs.append(TransferItem(source=src, destination=dst, recursive=bool(recursive)))
                    Path(data, workdir).mkdir(parents=True, exist_ok=True)
                try:
                    task_id = self.adapter(adapter_name).submit(specs)
                except BalsamError as exc:
                    self._error([r[0] for r in batch], str(exc))
                    continue
                free -= 1
                with store.write() as conn:
                    transfer_db.update_items(conn, [(r[0], {"state": "active", "task_id": task_id}) for r in batch])
                logger.info("transfer task %s started for %d items (%s)", task_id, len(batch), alias)

    def _poll(self) -> None:
        store = self.site.store
        for task_id in self._active_tasks():
            try:
                status = self.adapter(adapter_name_of(task_id)).poll(task_id)
            except BalsamError as exc:
                status_state, error = TransferState.ERROR, str(exc)
            else:
                status_state, error = status.state, status.error
            if status_state == TransferState.ACTIVE:
                continue
            ids = [r[0] for r in store.execute("SELECT id FROM transfer_item WHERE task_id=? AND state='active'", (task_id,))]
            if status_state == TransferState.DONE:
                with store.write() as conn:
                    transfer_db.update_items(conn, [(i, {"state": "done"}) for i in ids])
                logger.info("transfer task %s done (%d items)", task_id, len(ids))
            else:
                self._error(ids, error or "transfer failed")

    def _error(self, item_ids: List[int], message: str) -> None:
        logger.error("transfer of items %s failed: %s", item_ids[:10], message)
        with self.site.store.write() as conn:
            transfer_db.update_items(conn, [(i, {"state": "error", "transfer_info": {"error": message[-2000:]}}) for i in item_ids])
