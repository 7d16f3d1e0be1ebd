"""Sites on disk: the directory layout, how a site is found, and the per-user registry.

A site is a directory::

    settings.yml        the typed settings (balsam.settings)
    job-template.sh     the batch script template the scheduler service renders
    data/               job workdirs (jobs name them relative to here)
    log/                agent and launcher logs
    qsubmit/            rendered batch scripts
    .balsam/            state: site.db (SQLite, WAL), db.lock, host, agent pid, the API address (api.json) and secret (api.secret)

A site is found from an explicit path (``--site``), then ``BALSAM_SITE_PATH``, then by walking up from the
working directory. The registry (``~/.balsam/sites.json``, or ``$BALSAM_HOME/sites.json``) maps site names
to paths and ids so ``site = "my-site"`` resolves from anywhere on the machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from balsam.exceptions import ConfigError, JobLockedError, ServiceError, SiteError, SiteNotFound

if TYPE_CHECKING:
    from balsam.db import Store
    from balsam.settings import SiteSettings

STATE_DIR = ".balsam"
SITE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def this_host() -> str:
    """The name this host records as a site's home host."""
    return os.environ.get("BALSAM_HOSTNAME") or socket.gethostname()


def balsam_home() -> Path:
    """The per-user folder holding the site registry (``$BALSAM_HOME`` or ``~/.balsam``)."""
    env = os.environ.get("BALSAM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".balsam"


@dataclass(frozen=True)
class SiteLayout:
    """Paths of one site directory. Building one touches nothing on disk."""

    root: Path

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.yml"

    @property
    def job_template_path(self) -> Path:
        return self.root / "job-template.sh"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def qsubmit(self) -> Path:
        return self.root / "qsubmit"

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def db_path(self) -> Path:
        return self.state / "site.db"

    @property
    def lock_path(self) -> Path:
        return self.state / "db.lock"

    @property
    def host_path(self) -> Path:
        return self.state / "host"

    @property
    def preset_path(self) -> Path:
        """Names the preset the site was created from."""
        return self.state / "preset"

    @property
    def agent_pid_path(self) -> Path:
        """The site agent's PID file (``pid [host]``), present while the agent runs."""
        return self.state / "agent.pid"

    def preset(self) -> Optional[str]:
        """The preset the site was created from, if recorded."""
        try:
            return self.preset_path.read_text().strip() or None
        except OSError:
            return None

    def home_host(self) -> Optional[str]:
        """The host recorded as the site's home (the only one that may open its DB)."""
        try:
            return self.host_path.read_text().strip() or None
        except OSError:
            return None

    def is_site(self) -> bool:
        """True when the directory holds a site DB."""
        return self.db_path.is_file()


def find_site_root(explicit: Optional[Union[str, Path]] = None, cwd: Optional[Path] = None) -> Optional[Path]:
    """Find the site directory: ``explicit``, then ``$BALSAM_SITE_PATH``, then walk up from ``cwd``.

    Returns None when no site is found by the environment or the working directory. An explicit path or
    ``BALSAM_SITE_PATH`` that is not a site is an error, since the user asked for it by name.
    """
    for origin, value in (("--site", explicit), ("BALSAM_SITE_PATH", os.environ.get("BALSAM_SITE_PATH"))):
        if value:
            layout = SiteLayout(Path(value).expanduser().resolve())
            if not layout.is_site():
                raise SiteNotFound(f"{origin}={value}: not a Balsam site (no {STATE_DIR}/site.db there)")
            return layout.root
    here = (cwd or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if SiteLayout(candidate).is_site():
            return candidate
    return None


@dataclass
class RegistryEntry:
    """One registered site."""

    name: str
    id: int
    path: str
    host: str
    uuid: str

    def to_dict(self) -> Dict[str, object]:
        return {"id": self.id, "path": self.path, "host": self.host, "uuid": self.uuid}


class Registry:
    """The per-user map of site names to directories, ids and home hosts (a JSON file under a lock)."""

    def __init__(self, home: Optional[Path] = None) -> None:
        self.home = home if home is not None else balsam_home()
        self.path = self.home / "sites.json"

    def _read(self) -> Dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"sites": {}}
        except (OSError, ValueError) as exc:
            raise SiteError(f"{self.path}: unreadable site registry ({exc}); fix or remove it") from None
        if not isinstance(data, dict) or not isinstance(data.get("sites"), dict):
            raise SiteError(f"{self.path}: malformed site registry; fix or remove it")
        return data

    def entries(self) -> List[RegistryEntry]:
        """Every registered site, by id."""
        sites = self._read()["sites"]
        assert isinstance(sites, dict)
        out = [
            RegistryEntry(name=name, id=int(v["id"]), path=str(v["path"]), host=str(v.get("host", "")), uuid=str(v.get("uuid", "")))
            for name, v in sites.items()
        ]
        return sorted(out, key=lambda e: e.id)

    @contextmanager
    def _locked(self) -> Iterator[Dict[str, object]]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "sites.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_name(f".sites.json.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)

    def register(self, name: str, path: Path, host: str, site_uuid: str, site_id: Optional[int] = None) -> RegistryEntry:
        """Add a site; its name must be free (a stale entry whose directory is gone is replaced)."""
        with self._locked() as data:
            sites = data["sites"]
            assert isinstance(sites, dict)
            old = sites.get(name)
            if old is not None and old["path"] != str(path) and SiteLayout(Path(old["path"])).is_site():
                raise SiteError(f"a site named {name!r} already exists at {old['path']}; choose another name (-n)")
            if site_id is None:
                # Random, so sites made on other machines that later meet at a relay almost surely differ
                # (every id the site hands out carries it: balsam.db.ids).
                from balsam.db.ids import draw_site_id

                site_id = draw_site_id({int(v["id"]) for n, v in sites.items() if n != name})
            sites[name] = {"id": site_id, "path": str(path), "host": host, "uuid": site_uuid}
            return RegistryEntry(name=name, id=site_id, path=str(path), host=host, uuid=site_uuid)

    def unregister(self, name: str) -> None:
        """Remove a site from the registry (its directory is untouched)."""
        with self._locked() as data:
            sites = data["sites"]
            assert isinstance(sites, dict)
            sites.pop(name, None)

    def update(self, name: str, *, new_name: Optional[str] = None, path: Optional[Path] = None, host: Optional[str] = None,
               site_id: Optional[int] = None) -> None:
        """Rename, move or re-home a registered site, or record its new id (after a migration gave it one)."""
        with self._locked() as data:
            sites = data["sites"]
            assert isinstance(sites, dict)
            if name not in sites:
                raise SiteNotFound(f"no registered site named {name!r}")
            entry = dict(sites[name])
            if path is not None:
                entry["path"] = str(path)
            if host is not None:
                entry["host"] = host
            if site_id is not None:
                entry["id"] = int(site_id)
            if new_name is not None and new_name != name:
                if new_name in sites:
                    raise SiteError(f"a site named {new_name!r} already exists")
                del sites[name]
                name = new_name
            sites[name] = entry

    def lookup(self, key: Union[str, int]) -> RegistryEntry:
        """Find a site by name, id, or path."""
        entries = self.entries()
        for e in entries:
            if e.name == key or (isinstance(key, int) and e.id == key) or (isinstance(key, str) and key.isdigit() and e.id == int(key)):
                return e
        if isinstance(key, str):
            resolved = str(Path(key).expanduser().resolve())
            for e in entries:
                if e.path == resolved:
                    return e
        known = ", ".join(e.name for e in entries) or "none registered"
        raise SiteNotFound(f"no site {key!r} (known sites: {known})")

    def by_path(self, root: Path) -> Optional[RegistryEntry]:
        """The entry for a site directory, if registered."""
        for e in self.entries():
            if e.path == str(root):
                return e
        return None


def validate_site_name(name: str) -> str:
    """Check a site name: letters, digits, ``_ . -``; at most 100 characters."""
    if not SITE_NAME_RE.match(name):
        raise ConfigError(f"invalid site name {name!r}: use letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return name


def new_site_uuid() -> str:
    """A random identity for a site, stable across renames and moves (used by sync)."""
    return uuid.uuid4().hex


def site_row_fields(settings: "SiteSettings") -> Dict[str, object]:
    """The parts of settings.yml mirrored into the site row (what the API checks new jobs and BatchJobs against)."""
    import dataclasses

    sched = settings.scheduler
    return {
        "allowed_projects": list(sched.allowed_projects),
        "allowed_queues": {q: dataclasses.asdict(p) for q, p in sched.allowed_queues.items()},
        "optional_batch_job_params": dict(sched.optional_batch_job_params),
        "transfer_locations": dict(settings.transfers.transfer_locations),
    }


def check_site_settings(root: Path, settings: "SiteSettings") -> None:
    """What settings.yml names must exist and parse: the scheduler type, and the job template (its file, its
    Jinja syntax, and only the names the scheduler service provides). ConfigError with one line otherwise."""
    import jinja2
    from jinja2 import meta

    from balsam.platforms.schedulers import scheduler_names
    from balsam.platforms.templates import CONTEXT_KEYS, make_environment

    sched = settings.scheduler
    if sched.type not in scheduler_names():
        raise ConfigError(f"settings.yml: scheduler.type {sched.type!r} is not known (known: {', '.join(scheduler_names())})")
    path = Path(root) / sched.job_template
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"settings.yml: scheduler.job_template {sched.job_template!r}: no file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"settings.yml: scheduler.job_template: cannot read {path}: {exc}") from None
    try:
        ast = make_environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{path} line {exc.lineno}: Jinja syntax error: {exc.message}") from None
    unknown = sorted(meta.find_undeclared_variables(ast) - set(CONTEXT_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown name {unknown[0]!r} (templates may use: {', '.join(CONTEXT_KEYS)})")


SETTINGS_STAMP_KEY = "settings_stamp"  # meta key: the settings.yml (mtime, size) the site row was copied from


def settings_stamp(layout: "SiteLayout") -> str:
    """settings.yml's modification time and size, as a string; empty if the file is missing."""
    try:
        st = layout.settings_path.stat()
    except OSError:
        return ""
    return f"{st.st_mtime_ns}:{st.st_size}"


def refresh_site_row(store: "Store", settings: "SiteSettings", stamp: Optional[str] = None) -> None:
    """Copy the policy parts of settings.yml into the site row and stamp ``last_refresh`` (and the file's
    ``stamp``, from :func:`settings_stamp`, when given)."""
    from balsam.db.site_row import update_site_row

    with store.write() as conn:
        update_site_row(conn, site_row_fields(settings), stamp=True)
        if stamp is not None:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (SETTINGS_STAMP_KEY, stamp))


def reread_settings_if_changed(store: "Store", layout: "SiteLayout") -> Optional["SiteSettings"]:
    """settings.yml is the truth: when it changed (mtime or size) since the site row was copied from it, read
    it again (checked as ``site sync`` checks it), copy its policies (queues, projects, transfer locations) into
    the row and return the new settings; None when unchanged. An invalid file raises ConfigError naming the key,
    and the row keeps the last good copy."""
    from balsam.settings import load_settings

    stamp = settings_stamp(layout)
    if not stamp or store.get_meta(SETTINGS_STAMP_KEY) == stamp:
        return None
    settings = load_settings(layout.settings_path)
    check_site_settings(layout.root, settings)
    refresh_site_row(store, settings, stamp)
    return settings


def note_found_hardware(settings_text: str, settings: "SiteSettings", env: Mapping[str, str], host: str) -> str:
    """``settings_text`` with a comment above ``mpi_launcher: auto`` saying which MPI (and, on a local node
    whose GPUs are not set, which GPUs) this host has now; the launcher looks again each time it starts."""
    from balsam.platforms.mpi.detect import detect_mpi
    from balsam.platforms.nodes.gpus import detect_gpus

    ls = settings.launcher
    if ls.mpi_launcher != "auto":
        return settings_text
    found = [f"MPI {detect_mpi(env).summary()}"]
    if ls.node == "local" and ls.gpus_per_node is None and not ls.gpu_ids:
        found.append(detect_gpus(env).summary())
    line = re.compile(r"^([ \t]*)mpi_launcher:[ \t]*auto\b", re.MULTILINE)
    m = line.search(settings_text)
    if m is None:
        return settings_text
    comment = f"{m.group(1)}# at site init, {host} had: {'; '.join(found)}\n"
    return settings_text[: m.start()] + comment + settings_text[m.start():]


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
    from balsam.platforms.presets import read_preset_file
    from balsam.settings import settings_from_dict

    root = Path(path).expanduser().resolve()
    layout = SiteLayout(root)
    if layout.is_site():
        raise SiteError(f"{root} is already a Balsam site")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SiteError(f"{root} exists and is not an empty directory; choose a new path")
    name = validate_site_name(name or root.name)
    host = host or this_host()
    registry = registry or Registry()
    settings_text = read_preset_file(preset, "settings.yml")
    template_text = read_preset_file(preset, "job-template.sh")
    settings = settings_from_dict(yaml.safe_load(settings_text), f"preset {preset}/settings.yml")
    settings_text = note_found_hardware(settings_text, settings, os.environ, host)
    site_uuid = new_site_uuid()
    entry = registry.register(name, root, host, site_uuid)
    created_root = not root.exists()
    try:
        for d in (layout.data, layout.log, layout.qsubmit, layout.state):
            d.mkdir(parents=True, exist_ok=True)
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
    rows = store.conn.execute(
        "SELECT s.id, s.host, s.pid, count(j.id) FROM session s JOIN job j ON j.session_id = s.id "
        "WHERE s.heartbeat > ? GROUP BY s.id ORDER BY s.id",
        (time.time() - live_s,),
    ).fetchall()
    return [(int(r[0]), str(r[1]), r[2], int(r[3])) for r in rows]


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


def _site_store(root: Path) -> "Store":
    from balsam.db import open_store

    if not SiteLayout(root).is_site():
        raise SiteNotFound(f"{root} is not a Balsam site (no {STATE_DIR}/site.db there)")
    return open_store(root, this_host())


def site_identity(store: "Store") -> Tuple[int, str]:
    """(id, name) from a site's DB."""
    row = store.conn.execute("SELECT id, name FROM site LIMIT 1").fetchone()
    if row is None:
        raise SiteError(f"{store.db_path}: the site row is missing; run 'balsam db check'")
    return int(row[0]), str(row[1])


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
            with moved.write() as conn:
                conn.execute("UPDATE site SET path=?, version=version+1", (str(target),))
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
            with store.write() as conn:
                conn.execute("UPDATE site SET name=?, version=version+1", (new_name,))
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('site_name', ?)", (new_name,))
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
