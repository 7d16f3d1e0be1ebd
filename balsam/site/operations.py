"""Operations on whole sites: create, move, rename, re-home and remove one (each refused while its agent runs or
a launcher holds jobs), whether its agent runs, and the summaries ``site ls`` and ``balsam which`` show.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from balsam.exceptions import ForeignHostError, JobLockedError, ServiceError, SiteError, SiteNotFound
from balsam.site.layout import STATE_DIR, SiteLayout, check_site_key, this_host
from balsam.site.policies import SETTINGS_STAMP_KEY, note_found_hardware, settings_stamp, site_row_fields
from balsam.site.registry import Registry, RegistryEntry, new_site_uuid, validate_site_name

if TYPE_CHECKING:
    from balsam.db import Store

def init_site(
    path: Union[str, Path],
    name: Optional[str] = None,
    preset: str = "local",
    *,
    host: Optional[str] = None,
    registry: Optional[Registry] = None,
) -> RegistryEntry:
    """Create a site directory from a preset, create its DB, and register it. Returns its registry entry.

    Nothing is left behind if any step fails.
    """
    import shutil

    import yaml

    from balsam.db import Store
    from balsam.platforms.presets import read_preset_file, site_settings_text
    from balsam.settings import settings_from_dict

    root = Path(check_site_key(path, "site path")).expanduser().resolve()
    layout = SiteLayout(root)
    if layout.is_site():
        raise SiteError(f"{root} is already a Balsam site")
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not _unfinished_init(layout):
        raise SiteError(f"{root} exists and is not an empty directory; choose a new path")
    name = validate_site_name(name or root.name)
    host = host or this_host()
    registry = registry or Registry()
    settings_text = site_settings_text(preset)
    template_text = read_preset_file(preset, "job-template.sh")
    settings = settings_from_dict(yaml.safe_load(settings_text), f"preset {preset}/settings.yml")
    settings_text = note_found_hardware(settings_text, settings, os.environ, host)
    site_uuid = new_site_uuid()
    entry = registry.register(name, root, host, site_uuid)
    created_root = not root.exists()
    try:
        for d in (layout.data, layout.log, layout.qsubmit, layout.state):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # private to its owner: the DB, the API secret, job inputs and outputs (README, "Sites")
        os.chmod(layout.state, 0o700)
        layout.settings_path.write_text(settings_text)
        layout.job_template_path.write_text(template_text)
        (layout.state / "preset").write_text(preset + "\n")
        store = Store.create(layout.db_path, layout.lock_path, layout.host_path, host, site_id=entry.id, name=name,
                             uuid=site_uuid, path=str(root), site_fields=site_row_fields(settings))
        try:  # the site row is a copy of this settings.yml: re-read only once the file changes
            store.set_meta(SETTINGS_STAMP_KEY, settings_stamp(layout))
        finally:
            store.close()
    except BaseException:
        registry.unregister(name)
        if created_root:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for child in root.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        raise
    return entry


_INIT_FILES = frozenset({"settings.yml", "job-template.sh"})
_INIT_FOLDERS = frozenset({"data", "log", "qsubmit"})
_INIT_STATE = frozenset({"preset", "host", "db.lock"})


def _unfinished_init(layout: SiteLayout) -> bool:
    """Whether the directory holds what an init killed before its DB was in place left, and nothing else: its files,
    its empty folders and its state folder without a site DB (init makes the DB last, whole or not at all). Such a
    directory is made a site by running init again; any other file in it (a job's output, a user's file) keeps it
    refused."""
    from balsam.db.connection import NEW_SUFFIX

    root, state = layout.root, layout.state
    try:
        if layout.is_site() or not state.is_dir():
            return False
        for entry in root.iterdir():
            if entry.name == state.name:
                continue
            if entry.name in _INIT_FOLDERS and entry.is_dir() and not entry.is_symlink():
                if any(entry.iterdir()):
                    return False
            elif not (entry.name in _INIT_FILES and entry.is_file() and not entry.is_symlink()):
                return False
        unfinished_db = layout.db_path.name + NEW_SUFFIX
        return all(e.name in _INIT_STATE or e.name.startswith(unfinished_db) for e in state.iterdir())
    except OSError:
        return False


# ============================================================================================ managing sites
LIVE_SESSION_S = 300.0
"""A launcher session that beat within this many seconds counts as live (the default lease expiry)."""


def agent_running(layout: SiteLayout) -> Optional[str]:
    """Why the site agent may be running (its PID file says so), or None.

    The agent runs on the site's home host and holds its PID file locked while it lives. On this host a
    PID file nobody holds is stale (a crash) and ignored; a PID file from another host cannot be checked
    from here, so it counts as running.
    """
    path = layout.agent_pid_path
    try:
        words = path.read_text().split()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path} is unreadable ({exc.strerror})"
    pid = words[0] if words else "?"
    host = words[1] if len(words) > 1 else (layout.home_host() or this_host())
    if host != this_host():
        return f"its PID file says pid {pid} on host {host!r}"
    from balsam.pidfile import pid_file_held

    return f"pid {pid} on this host holds {path}" if pid_file_held(path) else None


def live_launchers(store: "Store", live_s: float = LIVE_SESSION_S) -> List[Tuple[int, str, Optional[int], int]]:
    """Sessions that beat within ``live_s`` seconds and hold jobs: (session id, host, pid, jobs held)."""
    from balsam.db.sessions import live_holders

    with store.read() as conn:
        return live_holders(conn, time.time() - live_s)


def _check_idle(layout: SiteLayout, store: "Store", action: str) -> None:
    why = agent_running(layout)
    if why is not None:
        raise ServiceError(f"cannot {action} {layout.root}: the site agent is running ({why}); stop it first")
    live = live_launchers(store)
    if live:
        sid, host, pid, held = live[0]
        total = sum(n for *_, n in live)
        raise JobLockedError(
            f"cannot {action} {layout.root}: launchers hold {total} jobs (session {sid}, pid {pid} on {host}); "
            "wait for them to finish or cancel their BatchJobs ('balsam queue term ID')"
        )


def refuse_away_from_home(layout: SiteLayout, what: str) -> None:
    """ForeignHostError, naming the home host, for what only the home host may do to a site (remove it, rebuild or
    migrate its DB): these delete or replace the DB and the directory its agent runs from, and only the home host
    can stop that agent (through the API the agent would pull the floor from under itself and its launchers)."""
    owner = layout.home_host()
    here = this_host()
    if owner and owner != here:
        raise ForeignHostError(f"site {layout.root} can be {what} only on its home host {owner!r} (this is {here!r}): that "
                               f"deletes or replaces the site's DB, which the agent there holds open; on {owner}, stop the agent "
                               "('balsam site stop') and run this again")


def _site_store(root: Path) -> "Store":
    from balsam.db import open_store

    if not SiteLayout(root).is_site():
        raise SiteNotFound(f"{root} is not a Balsam site (no {STATE_DIR}/site.db there)")
    return open_store(root, this_host())


def site_identity(store: "Store") -> Tuple[int, str]:
    """(id, name) from a site's DB."""
    from balsam.db.site_row import site_identity as read_identity

    with store.read() as conn:
        identity = read_identity(conn)
    if identity is None:
        raise SiteError(f"{store.db_path}: the site row is missing; run 'balsam db check'")
    return identity


def move_site(src: Union[str, Path], dest: Union[str, Path], registry: Optional[Registry] = None) -> Path:
    """Move a site directory (into ``dest`` if that is a directory, like ``mv``); returns the new root.

    The registry and the site row follow. Refused while the agent runs or a launcher holds jobs; on a
    failure after the move, the directory is moved back.
    """
    root = Path(src).expanduser().resolve()
    registry = registry or Registry()
    store = _site_store(root)
    try:
        _check_idle(SiteLayout(root), store, "move")
        _, name = site_identity(store)
    finally:
        store.close()
    target = Path(dest).expanduser().resolve()
    if target.is_dir():
        target = target / root.name
    if target.exists():
        raise SiteError(f"{target} already exists; choose a new path")
    if target == root or root in target.parents:
        raise SiteError(f"cannot move {root} into itself")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(root), str(target))
    try:
        moved = _site_store(target)
        try:
            from balsam.db.site_row import set_site_path

            with moved.write() as conn:
                set_site_path(conn, str(target))
        finally:
            moved.close()
        entry = registry.by_path(root)
        if entry is not None:
            registry.update(entry.name, path=target)
        else:
            registry.register(name, target, this_host(), _meta(target, "uuid") or new_site_uuid())
    except BaseException:
        shutil.move(str(target), str(root))
        raise
    return target


def _meta(root: Path, key: str) -> Optional[str]:
    store = _site_store(root)
    try:
        return store.get_meta(key)
    finally:
        store.close()


def rename_site(root: Union[str, Path], new_name: str, registry: Optional[Registry] = None) -> str:
    """Give a site a new name (registry, site row and DB meta); returns the old name."""
    root = Path(root).expanduser().resolve()
    new_name = validate_site_name(new_name)
    registry = registry or Registry()
    store = _site_store(root)
    try:
        site_id, old = site_identity(store)
        entry = registry.by_path(root)
        if entry is not None:
            registry.update(entry.name, new_name=new_name)
        else:
            registry.register(new_name, root, this_host(), store.get_meta("uuid") or new_site_uuid(), site_id=site_id)
        try:
            from balsam.db.site_row import set_site_name

            with store.write() as conn:
                set_site_name(conn, new_name)
        except BaseException:
            if entry is not None:
                registry.update(new_name, new_name=entry.name)
            else:
                registry.unregister(new_name)
            raise
    finally:
        store.close()
    return old


def rename_host(root: Union[str, Path], *, force: bool = False, host: Optional[str] = None,
                registry: Optional[Registry] = None) -> Tuple[Optional[str], str]:
    """Make this host (or ``host``) the site's home host; returns (old host, new host).

    Rewrites ``.balsam/host``, the DB's ``home_host`` and the registry. Refused while the agent's PID file
    says it runs (on the old host, it cannot be checked from here), unless ``force``: two hosts must never
    write one SQLite DB.
    """
    root = Path(root).expanduser().resolve()
    layout = SiteLayout(root)
    if not layout.is_site():
        raise SiteNotFound(f"{root} is not a Balsam site (no {STATE_DIR}/site.db there)")
    new = host or this_host()
    old = layout.home_host()
    why = agent_running(layout)
    if why is not None and not force:
        raise ServiceError(
            f"the site agent may be running ({why}); stop it on {old or 'its host'} first, or pass --force if that host is gone for good"
        )
    registry = registry or Registry()
    tmp = layout.host_path.with_name(f".host.{os.getpid()}")
    tmp.write_text(new + "\n")
    os.replace(tmp, layout.host_path)
    try:
        from balsam.db import Store

        store = Store(layout.db_path, layout.lock_path, layout.host_path, new)
        try:
            store.set_meta("home_host", new)
            site_id, name = site_identity(store)
            site_uuid = store.get_meta("uuid") or new_site_uuid()
        finally:
            store.close()
        entry = registry.by_path(root)
        if entry is not None:
            registry.update(entry.name, host=new)
        else:
            registry.register(name, root, new, site_uuid, site_id=site_id)
    except BaseException:
        if old is not None:
            layout.host_path.write_text(old + "\n")
        raise
    return old, new


def remove_site(root: Union[str, Path], registry: Optional[Registry] = None) -> None:
    """Delete a site: its directory (jobs, data, logs) and its registry entry.

    Refused while the agent runs or a launcher holds jobs. A registered site whose directory is gone is
    just unregistered.
    """
    root = Path(root).expanduser().resolve()
    registry = registry or Registry()
    entry = registry.by_path(root)
    layout = SiteLayout(root)
    if layout.is_site():
        refuse_away_from_home(layout, "removed")
        store = _site_store(root)
        try:
            _check_idle(layout, store, "remove")
        finally:
            store.close()
    elif entry is None:
        raise SiteNotFound(f"{root} is not a Balsam site")
    if entry is not None:
        registry.unregister(entry.name)
    if root.exists():
        shutil.rmtree(root)


def site_summary(root: Union[str, Path], *, verbose: bool = False, quick_check_max_bytes: int = 64 << 20,
                 host: Optional[str] = None) -> Dict[str, Any]:
    """What ``balsam site ls`` shows of a site on this host: ``jobs`` (and with ``verbose``: ``jobs_by_state``,
    ``created`` (epoch seconds), ``apps``, ``schema_version``, and the site row's ``last_refresh``, ``allowed_projects``,
    ``allowed_queues``, ``backfill_windows``, ``queued_jobs`` and ``transfer_locations``), and ``damage``: SQLite's quick check when it is
    not "ok" (run on DBs up to ``quick_check_max_bytes``, or always with ``verbose``), else None."""
    from balsam.db import open_store
    from balsam.db.apps import app_count
    from balsam.db.job_reads import counts_by_state
    from balsam.db.maintenance import quick_check
    from balsam.db.site_row import read_site_row

    root = Path(root)
    store = open_store(root, host or this_host())
    try:
        with store.read() as conn:
            counts = counts_by_state(conn)
            out: Dict[str, Any] = {"jobs": sum(counts.values()), "damage": None}
            if verbose:
                row = read_site_row(conn, ["creation_date", "last_refresh", "allowed_projects", "allowed_queues", "backfill_windows",
                                           "queued_jobs", "transfer_locations"])
                out.update(jobs_by_state=counts, created=row.pop("creation_date", None), apps=app_count(conn),
                           schema_version=store.schema_version(), **row)
            if verbose or store.db_path.stat().st_size <= quick_check_max_bytes:
                result = quick_check(conn)
                out["damage"] = None if result == "ok" else result
        return out
    finally:
        store.close()


def site_job_count(root: Union[str, Path]) -> int:
    """How many jobs the site on this host has."""
    from balsam.db.job_reads import count_jobs

    store = _site_store(Path(root))
    try:
        with store.read() as conn:
            return count_jobs(conn)
    finally:
        store.close()


def store_report(root: Union[str, Path], host: Optional[str] = None) -> Dict[str, Any]:
    """What ``balsam which`` reports of a site's DB opened on its home host, without migrating it: ``schema_version``,
    ``pending_migrations`` (names, when any), ``id``, ``name`` and ``db_bytes``."""
    from balsam.db import maintenance, open_store
    from balsam.db.site_row import site_identity as read_identity

    store = open_store(Path(root), host or this_host())
    try:
        version, _, pending = maintenance.schema_status(store)
        out: Dict[str, Any] = {"schema_version": version}
        if pending:
            out["pending_migrations"] = pending
        with store.read() as conn:
            identity = read_identity(conn)
        if identity is not None:
            out.update(id=identity[0], name=identity[1])
        out["db_bytes"] = maintenance.db_size(store)
        return out
    finally:
        store.close()


def code_schema_version() -> int:
    """The site DB schema version this Balsam writes."""
    from balsam.db.schema import CURRENT_VERSION

    return CURRENT_VERSION


def globus_login(layout: SiteLayout, client_id: Optional[str], ask: Callable[[str], str], say: Callable[[str], None]) -> Path:
    """Log the site in to Globus for its transfers (the native-app flow: ``say`` shows the URL, ``ask`` reads the
    code) and store the tokens in the site's state folder, mode 0600; the file's path. Needs globus-sdk."""
    from balsam.platforms.transfer.globus_auth import login

    path = layout.state / "globus-tokens.json"
    login(client_id, path, ask=ask, say=say)
    return path
