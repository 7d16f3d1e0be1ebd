"""A site's DB maintenance through the API (``balsam db``): check (and repair), online backup, compaction, and the
two operations that replace the DB under a stopped agent, schema migration and rebuilding a damaged DB.

::

    from balsam._api import maintenance, sites

    report = maintenance.check(sites.resolve("my-site"), fix=True)
    print(report.remaining or "ok")
    maintenance.migrate(Path("~/sites/my-site").expanduser())

Check, backup and compaction take a site as the API reaches it (a :class:`~balsam._api.sites.SiteRef`): on its
home host they work on the SQLite file, from another host its agent does them (``POST /v1/db/...``). A site
directory given as a :class:`~pathlib.Path` is opened directly, without the API's lookup, which reads the DB: that
is how a damaged DB is still checked. Migration and recovery take the site directory, because the API refuses to
open an older schema and cannot open a damaged file; they run only on the home host (elsewhere a ForeignHostError
names it), recovery only while the agent is stopped.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from balsam.exceptions import ForeignHostError, ServiceError, StoreError

if TYPE_CHECKING:
    from balsam._api.sites import SiteRef
    from balsam.db import Store
    from balsam.db.maintenance import Problem

__all__ = ["CheckReport", "Recovered", "SchemaStatus", "backup", "check", "db_size", "migrate", "recover", "schema_status",
           "vacuum"]


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check` found: every problem, those fixed, those remaining (SQLite integrity first, then the
    store's consistency rules), and for a damaged DB what a rebuild would save (``recoverable``)."""

    site: str
    db: str
    problems: List["Problem"]
    fixed: List["Problem"] = field(default_factory=list)
    remaining: List["Problem"] = field(default_factory=list)
    recoverable: Optional[str] = None

    @property
    def damaged(self) -> bool:
        """Whether SQLite itself finds the file damaged or unreadable (``balsam db recover`` rebuilds it)."""
        return any(p.name in ("integrity", "unreadable") for p in self.problems)

    def as_dict(self) -> Dict[str, Any]:
        """Plain data (``balsam db check --json``)."""
        return {"site": self.site, "db": self.db, "problems": [vars(p) for p in self.problems],
                "fixed": [vars(p) for p in self.fixed], "remaining": [vars(p) for p in self.remaining],
                "recoverable": self.recoverable}


def _open_directly(root: Path) -> "Store":
    """The store of a site directory on this host, without the API's site lookup (which reads the DB)."""
    from balsam._api.sites import process_host
    from balsam.db import open_store
    from balsam.site import SiteLayout

    owner = SiteLayout(root).home_host()
    if owner and owner != process_host():
        raise ForeignHostError(f"site {root} belongs to host {owner!r} and this is {process_host()!r}: its DB file can only be "
                               f"opened there (its agent checks it: give the site by name)")
    return open_store(root, process_host())


def _ref(site: Union["SiteRef", str, int, Path]) -> "SiteRef":
    """A site given as the API reaches it, or by name, id or path (as ``use_site`` takes it)."""
    if isinstance(site, (str, int, Path)):
        from balsam._api.sites import resolve

        return resolve(site)
    return site


def check(site: Union["SiteRef", str, int, Path], fix: bool = False) -> CheckReport:
    """SQLite's integrity and the store's consistency (tag index, parent links, session locks, orphan rows); with
    ``fix``, what can be repaired is, in one transaction (never on a damaged file: see ``recoverable``)."""
    from balsam.db import maintenance, recover

    if isinstance(site, Path):
        store, name = _open_directly(site), site.name
    elif not (site := _ref(site)).is_home:  # the agent checks it on the home host
        answer = site.backend.db_check(fix)
        found, fixed, left = ([maintenance.Problem(**p) for p in answer[k]] for k in ("problems", "fixed", "remaining"))
        return CheckReport(site.name, str(answer["db"]), found, fixed, left)
    else:
        store, name = site.store, site.name
    try:
        problems = maintenance.check(store.conn)
    except (StoreError, sqlite3.DatabaseError) as exc:
        problems = [maintenance.Problem("unreadable", 1, f"the DB cannot be read: {exc}", fixable=False)]
    report = CheckReport(name, str(store.db_path), problems)
    salvage = None
    if report.damaged:
        try:
            salvage = recover.salvage(store.db_path, None).summary()
        except StoreError as exc:
            salvage = f"nothing ({exc})"
    fixed = maintenance.repair(store) if fix and not report.damaged and any(p.fixable for p in problems) else []
    remaining = maintenance.check(store.conn) if fixed else problems
    return CheckReport(name, str(store.db_path), problems, fixed, remaining, salvage)


def db_size(site: Union["SiteRef", str, int]) -> int:
    """Bytes of the site's DB file and its WAL (home host)."""
    from balsam.db import maintenance

    return maintenance.db_size(_ref(site).store)


def backup(site: Union["SiteRef", str, int], dest: Path, force: bool = False) -> Tuple[Path, int]:
    """An online copy of the site's DB (consistent while the agent and launchers write): ``dest`` is a file, or a
    directory to name the copy in (after the site and the time). From another host the agent writes it, so
    ``dest`` is a path as the home host sees it (a shared filesystem's). Returns the copy's path and size."""
    import time

    from balsam.site import check_site_key

    dest = Path(check_site_key(dest, "backup destination")).expanduser()
    site = _ref(site)
    if not site.is_home:
        answer = site.backend.db_backup(str(dest.resolve()), force)
        return Path(str(answer["path"])), int(answer["bytes"])
    from balsam.db import maintenance
    from balsam.exceptions import ValidationError

    if dest.is_dir():
        dest = dest / f"{site.name}-{time.strftime('%Y%m%d-%H%M%S')}.db"
    if dest.exists() and not force:
        raise ValidationError(f"{dest} exists; pass force to overwrite it")
    if not dest.parent.is_dir():
        raise ValidationError(f"{dest.parent}: no such directory")
    return dest, maintenance.backup(site.store, dest)


def vacuum(site: Union["SiteRef", str, int]) -> Tuple[str, int, int]:
    """Compact the site's DB (VACUUM) under the writer lock (writers wait meanwhile); from another host its agent
    does it. Returns the DB's path and its bytes before and after."""
    site = _ref(site)
    if not site.is_home:
        answer = site.backend.db_vacuum()
        return str(answer["db"]), int(answer["before"]), int(answer["after"])
    from balsam.db import maintenance

    before, after = maintenance.vacuum(site.store)
    return str(site.store.db_path), before, after


@dataclass(frozen=True)
class SchemaStatus:
    """A site DB's schema version, this Balsam's, and the migrations that would bring the DB to it."""

    db: str
    version: int
    current: int
    pending: List[str]


def _home_store(site_path: Union[str, Path], what: str) -> Tuple[Path, "Store"]:
    from balsam._api.sites import process_host
    from balsam.db import open_store
    from balsam.site import SiteLayout, refuse_away_from_home

    root = Path(site_path).expanduser().resolve()
    refuse_away_from_home(SiteLayout(root), what)
    return root, open_store(root, process_host())


def schema_status(site_path: Union[str, Path]) -> SchemaStatus:
    """The schema version of the DB in the site directory ``site_path``, read without migrating it (home host)."""
    from balsam.db import maintenance

    _, store = _home_store(site_path, "migrated")
    try:
        version, current, pending = maintenance.schema_status(store)
    finally:
        store.close()
    return SchemaStatus(str(store.db_path), version, current, pending)


def migrate(site_path: Union[str, Path]) -> SchemaStatus:
    """Upgrade the DB in the site directory ``site_path`` to this Balsam's schema (home host; stop older agents of
    the site first). Returns the status it started from (``pending``: the migrations applied). A DB newer than
    this Balsam is a StoreError saying to upgrade Balsam."""
    from balsam._api import sites as _sites
    from balsam.db import maintenance

    root, store = _home_store(site_path, "migrated")
    try:
        version, current, pending = maintenance.schema_status(store)
        if version > current:
            raise StoreError(f"{store.db_path}: schema version {version} is newer than this Balsam ({current}); upgrade Balsam")
        if pending:
            store.migrate()
            now = store.schema_version()
            _follow_site_id(root, store)
            if now != current:
                raise StoreError(f"{store.db_path}: schema version is {now} after migrating, expected {current}")
    finally:
        store.close()
        _sites.reset()
    return SchemaStatus(str(store.db_path), version, current, pending)


def _follow_site_id(root: Path, store: "Store") -> None:
    """Record in the registry the site id a migration gave the site (ids carry it: balsam.db.ids)."""
    from balsam.site import Registry, site_identity

    site_id, _ = site_identity(store)
    registry = Registry()
    entry = registry.by_path(root)
    if entry is not None and entry.id != site_id:
        registry.update(entry.name, site_id=site_id)


@dataclass(frozen=True)
class Recovered:
    """What :func:`recover` did: the new DB and how it was rebuilt, the rows saved (``summary``), the tables with
    unreadable parts, the damaged file kept beside it, and the derived rows rebuilt afterwards."""

    new_path: Path
    method: str
    summary: str
    lost: List[str]
    kept_path: Path
    rebuilt: List["Problem"]


def recover(site_path: Union[str, Path], python_only: bool = False) -> Recovered:
    """Rebuild the damaged DB of the site directory ``site_path`` from every row that can still be read, into a new
    file that replaces it; the damaged file is kept beside it (site.db.corrupt-TIME). Home host only, and only
    while the site's agent is stopped (a ServiceError says how to stop it). ``python_only``: use Balsam's
    row-by-row salvage even where the sqlite3 shell is installed."""
    from balsam._api.sites import process_host
    from balsam.db import maintenance, open_store
    from balsam.db import recover as rebuild
    from balsam.site import SiteLayout, agent_running, refuse_away_from_home

    root = Path(site_path).expanduser().resolve()
    layout = SiteLayout(root)
    refuse_away_from_home(layout, "recovered")
    why = agent_running(layout)
    if why:
        raise ServiceError(f"the site agent is running ({why}): stop it first with 'balsam site stop --site {root}'")
    result = rebuild.recover(layout.db_path, use_cli=False if python_only else None)
    store = open_store(root, process_host())
    try:
        rebuilt = result.rebuilt + maintenance.repair(store)  # rebuilt in the new file before the swap; nothing left here
    finally:
        store.close()
    return Recovered(Path(str(result.new_path)), result.method, result.summary(), sorted(result.lost), Path(str(result.kept_path)),
                     rebuilt)
