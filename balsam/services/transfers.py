"""The transfer service: stage job data in and out, in batches, through the platform transfer adapters.

``transfers.transfer_locations`` in settings.yml maps an alias to where data lives:

    local                      files on this host (or a shared filesystem): cp, or hard links (local_link)
    rsync://[user@]host        another host, over ssh (rsync://  alone: this host, with rsync)
    globus://ENDPOINT_UUID     a Globus endpoint (collection); needs balsam[globus] and balsam site globus-login

Each cycle first polls the running tasks, then starts new ones. Pending items whose job waits for them
(stage-in: READY; stage-out: POSTPROCESSED) are grouped by (protocol, endpoint, direction), larger groups
first, and cut into batches of ``batch_size`` items, one task each, while fewer than
``max_concurrent_transfers`` tasks run. When a task ends, each item is ``done`` or failed: a transient
failure (a lost connection, a Globus server error) puts the item back to ``pending`` after a pause that
doubles each time, up to ``max_retries``; any other failure sets it to ``error`` with the reason, and the
store fails its job with that reason. All stage-in done moves the job READY -> STAGED_IN; all stage-out
done moves POSTPROCESSED -> JOB_FINISHED (children released). Each item keeps its task's figures in
``transfer_info`` (``bytes``, ``seconds``, ``bytes_per_s``).
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from balsam._api.sites import SiteRef
from balsam.db import transfers as transfer_db
from balsam.exceptions import BalsamError, TransferError
from balsam.platforms.transfer import (
    ItemFailure,
    ScriptTransfer,
    TransferAdapter,
    TransferItem,
    TransferState,
    TransferStatus,
    get_transfer,
)
from balsam.platforms.transfer.locations import Location, missing_extra_notes, parse_location
from balsam.services.base import Service
from balsam.settings import TransferSettings

logger = logging.getLogger(__name__)
__all__ = ["Location", "TransferService", "parse_location", "retry_pause"]

PROTOCOL_ADAPTER = {"local": "cp", "rsync": "rsync", "globus": "globus"}
MAX_BACKOFF_S = 3600.0
TASK_FOLDER_KEEP_S = 86400.0  # a finished task's folder (its script and rsync's output) is kept a day, then pruned
PRUNE_PERIOD_S = 3600.0
T = TypeVar("T")


def retry_pause(attempt: int, first_s: float) -> float:
    """The pause before retry number ``attempt`` (1, 2, ...): doubling from ``first_s``, capped at an hour."""
    return float(min(first_s * (2 ** max(attempt - 1, 0)), MAX_BACKOFF_S))


class TransferService(Service):
    """Starts and polls transfer tasks for the site's transfer items."""

    name = "transfers"

    def __init__(
        self,
        site: SiteRef,
        settings: TransferSettings,
        env: Optional[Mapping[str, str]] = None,
        globus_client_factory: Optional[Callable[[], Any]] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings.period_s)
        self.site = site
        self.settings = settings
        self.env = dict(env) if env is not None else None
        self.clock = clock
        self.locations = {alias: parse_location(alias, url) for alias, url in settings.transfer_locations.items()}
        for note in missing_extra_notes(settings.transfer_locations):
            logger.warning("%s", note)  # the agent starts; jobs using such a location are refused at creation
        self._globus_client_factory = globus_client_factory
        self._adapters: Dict[str, TransferAdapter] = {}
        self._last_prune = 0.0

    # ----------------------------------------------------------------------------------------- adapters
    def adapter(self, name: str) -> TransferAdapter:
        """The adapter for a protocol's short name (cp, rsync, globus), built once."""
        if name not in self._adapters:
            s = self.settings
            state_dir = self.site.layout.state / "transfers"
            extra: Dict[str, Any] = {}
            if name == "cp":
                options = {"link": "true" if s.local_link else "false"}
            elif name == "rsync":
                options = {"rsh": s.rsync_rsh, "flags": s.rsync_flags, "attempts": str(s.rsync_attempts),
                           "timeout": str(s.rsync_timeout_s)}
                options = {k: v for k, v in options.items() if v}
            elif name == "globus":
                from balsam.platforms.transfer.globus import globus_options

                options = globus_options({
                    "local_endpoint": s.globus_endpoint_id, "site_path": str(self.site.path),
                    "endpoint_site_path": s.globus_endpoint_site_path, "sync_level": s.globus_sync_level,
                    "verify_checksum": s.globus_verify_checksum, "encrypt_data": s.globus_encrypt_data,
                })
                extra["client_factory"] = self._globus_client_factory or self._default_globus_client
            else:
                raise TransferError(f"no transfer adapter {name!r}")
            self._adapters[name] = get_transfer(name, state_dir=state_dir, env=self.env, options=options, **extra)
        return self._adapters[name]

    def _default_globus_client(self) -> Any:
        from balsam.platforms.transfer.globus_auth import transfer_client

        return transfer_client(self.settings.globus_client_id, self.site.layout.state / "globus-tokens.json")

    # ------------------------------------------------------------------------------------------- cycle
    def _read(self, query: Callable[[Any], T]) -> T:
        with self.site.store.read() as conn:
            return query(conn)

    def run_cycle(self) -> None:
        """Poll the running tasks, then start tasks for pending items (and now and then prune old task folders)."""
        self._poll()
        self._start()
        if self.clock() - self._last_prune > PRUNE_PERIOD_S:
            self._last_prune = self.clock()
            for adapter in self._adapters.values():
                if isinstance(adapter, ScriptTransfer):
                    adapter.prune(TASK_FOLDER_KEEP_S)

    def _poll(self) -> None:
        store = self.site.store
        for task_id in self._read(transfer_db.in_flight_tasks):
            name = task_id.partition(":")[0]
            try:
                status = self.adapter(name).poll(task_id)
            except TransferError as exc:
                if exc.transient:  # e.g. Globus credentials missing for now: ask again next cycle
                    logger.warning("cannot poll transfer task %s yet: %s", task_id, exc)
                    continue
                status = TransferStatus(task_id, TransferState.ERROR, str(exc))
            except BalsamError as exc:
                status = TransferStatus(task_id, TransferState.ERROR, str(exc))
            items = self._read(lambda conn, t=task_id: transfer_db.task_items(conn, t))  # type: ignore[misc]
            if not status.ended:
                state = "inactive" if status.state is TransferState.INACTIVE else "active"
                changed = [(i, info) for i, info in items if info.get("status") != status.error]
                if changed:
                    with store.write() as conn:
                        transfer_db.update_items(conn, [(i, {"state": state, "transfer_info": dict(info, status=status.error)})
                                                        for i, info in changed])
                continue
            self._finish(status, items)

    def _finish(self, status: TransferStatus, items: Sequence[Tuple[int, Dict[str, Any]]]) -> None:
        figures: Dict[str, Any] = {"bytes": status.bytes, "seconds": status.seconds}
        if status.bytes_per_s is not None:
            figures["bytes_per_s"] = round(status.bytes_per_s, 1)
        whole = ItemFailure(status.error or "transfer failed")
        updates: List[Tuple[int, Dict[str, Any]]] = []
        failures: Dict[int, ItemFailure] = {}
        for position, (item_id, info) in enumerate(items):
            index = int(info.get("task_index", position))
            failure = status.failed.get(index)
            if failure is None and status.state is TransferState.ERROR:
                failure = whole
            if failure is None:
                info = {k: v for k, v in info.items() if k not in ("retry_at", "status")}
                updates.append((item_id, {"state": "done", "transfer_info": dict(info, **figures)}))
            else:
                failures[item_id] = failure
                updates.append(self._failed_update(item_id, info, failure))
        with self.site.store.write() as conn:
            transfer_db.update_items(conn, updates)
        done = len(items) - len(failures)
        rate = f", {figures['bytes_per_s']:.0f} B/s" if "bytes_per_s" in figures else ""
        logger.info("transfer task %s ended: %d done, %d failed%s", status.task_id, done, len(failures), rate)
        for item_id, failure in list(failures.items())[:5]:
            logger.warning("transfer item %d (task %s): %s", item_id, status.task_id, failure.message)

    def _failed_update(self, item_id: int, info: Dict[str, Any], failure: ItemFailure) -> Tuple[int, Dict[str, Any]]:
        attempts = int(info.get("attempts", 0)) + 1
        message = failure.message[-2000:]
        info = {k: v for k, v in info.items() if k not in ("task_index", "status")}
        if failure.transient and attempts <= self.settings.max_retries:
            pause = retry_pause(attempts, self.settings.retry_backoff_s)
            info.update(attempts=attempts, retry_at=self.clock() + pause, last_error=message)
            return item_id, {"state": "pending", "task_id": "", "transfer_info": info}
        if failure.transient:
            message = f"{message} (gave up after {attempts} tries)"
        info.update(attempts=attempts, error=message)
        info.pop("retry_at", None)
        return item_id, {"state": "error", "transfer_info": info}

    def _start(self) -> None:
        s = self.settings
        free = s.max_concurrent_transfers - len(self._read(transfer_db.in_flight_tasks))
        now = self.clock()
        rows = self._read(lambda conn: transfer_db.startable_items(conn, s.num_items_query_limit, now))
        self.backlog = len(rows)
        if free <= 0 or not rows:
            return
        groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
        unknown: List[Dict[str, Any]] = []
        for row in rows:
            location = self.locations.get(row["location_alias"])
            if location is None:
                unknown.append(row)
                continue
            groups.setdefault((location.protocol, location.endpoint, row["direction"]), []).append(row)
        if unknown:
            self._fail_now(unknown, "transfer location {alias!r} is not in settings.yml transfers.transfer_locations")
        for (protocol, endpoint, direction), group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            for start in range(0, len(group), s.batch_size):
                if free <= 0:
                    return
                batch = group[start : start + s.batch_size]
                self._submit(protocol, endpoint, direction, batch)
                free -= 1

    def _submit(self, protocol: str, endpoint: str, direction: str, batch: List[Dict[str, Any]]) -> None:
        data = self.site.layout.data
        specs = []
        escaping = []
        for row in batch:
            workdir = Path(data, row["workdir"])
            remote = row["remote_path"]
            local_rel = row["local_path"]
            if direction == "in" and local_rel in (".", "") and not row["recursive"]:
                local_rel = posixpath.basename(remote.rstrip("/")) or "."
            local = str(workdir / local_rel) if local_rel not in (".", "") else str(workdir)
            if leaves_workdir(workdir, local):
                escaping.append(row)
                continue
            far = f"{endpoint}:{remote}" if endpoint else remote
            src, dst = (far, local) if direction == "in" else (local, far)
            specs.append(TransferItem(source=src, destination=dst, recursive=bool(row["recursive"])))
            if direction == "in" and protocol == "globus":  # cp and rsync make the folders they fill
                workdir.mkdir(parents=True, exist_ok=True)
        if escaping:
            self._fail_now(escaping, "the local path leads out of the job's workdir through a symbolic link: nothing is "
                                     "copied through it (copy the file into the workdir, or give a path that stays in it)")
            batch = [r for r in batch if r not in escaping]
            if not batch:
                return
        adapter = self.adapter(PROTOCOL_ADAPTER[protocol])
        try:
            task_id = adapter.create(specs)
        except TransferError as exc:
            self._not_started(protocol, batch, exc)
            return
        except BalsamError as exc:
            self._fail_now(batch, f"cannot start the transfer: {exc}")
            return
        with self.site.store.write() as conn:
            transfer_db.update_items(conn, [
                (r["id"], {"state": "active", "task_id": task_id,
                           "transfer_info": dict(r["transfer_info"], task_index=i, submitted=round(self.clock(), 3))})
                for i, r in enumerate(batch)
            ])
        # Started only once the items name their task: a service killed as the copy starts leaves a task the next
        # one polls (and starts, if it never did), not items a second copy would be started for.
        try:
            adapter.start(task_id)
        except TransferError as exc:
            self._not_started(protocol, batch, exc)
            return
        logger.info("transfer task %s started: %d items, %s %s %s", task_id, len(batch), protocol, direction, endpoint or "local")

    def _not_started(self, protocol: str, batch: Sequence[Dict[str, Any]], exc: TransferError) -> None:
        """A task that could not start: its items are retried later (a transient cause) or fail."""
        failure = ItemFailure(f"cannot start the transfer: {exc}", exc.transient)
        with self.site.store.write() as conn:
            transfer_db.update_items(conn, [self._failed_update(r["id"], r["transfer_info"], failure) for r in batch])
        logger.warning("%s transfer of %d items could not start: %s", protocol, len(batch), exc)

    def _fail_now(self, rows: Sequence[Dict[str, Any]], template: str) -> None:
        with self.site.store.write() as conn:
            transfer_db.update_items(conn, [
                (r["id"], {"state": "error", "transfer_info": dict(r["transfer_info"], error=template.replace("{alias!r}", repr(r["location_alias"])))})
                for r in rows
            ])


def leaves_workdir(workdir: Path, local: str) -> bool:
    """Whether ``local``, a path in the job's ``workdir``, leads out of it through a symbolic link (the path, or the
    nearest folder of it that exists: a stage-in makes the rest). The workdir itself may be a link (to scratch)."""
    probe, top = local, str(workdir)
    while not os.path.lexists(probe):
        if probe == top or os.path.dirname(probe) == probe:
            return False  # the workdir is not made yet: the transfer makes every folder of the path
        probe = os.path.dirname(probe)
    root = os.path.realpath(workdir)
    real = os.path.realpath(probe)
    return real != root and not real.startswith(root.rstrip(os.sep) + os.sep)
