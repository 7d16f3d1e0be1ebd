"""``balsam db``: check (and repair), back up, compact and migrate a site's SQLite database."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

import click

from balsam.cli._common import CLIError, echo_json, json_option, one_site, site_option, working

if TYPE_CHECKING:
    from balsam.db import Store
    from balsam.db.maintenance import Problem

_site_option = site_option("The site (default: the current site).")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.group()
def db() -> None:
    """Check, back up, compact and migrate a site's database.

    From another host than the site's home, check, backup and vacuum run in the site's agent; recover and
    migrate replace the DB under a stopped agent, so they run only on the home host.

    \b
    Examples:
      balsam db check
      balsam db backup ~/backups/my-site.db
    """


@db.command("check")
@click.option("--fix", is_flag=True, help="Repair what can be repaired (in one transaction).")
@_site_option
@json_option()
def db_check(fix: bool, sites: Sequence[str], as_json: bool) -> None:
    """Check the DB: SQLite integrity, then the store's consistency (tag index, parent links, session locks,
    orphan rows). Exits 1 if problems remain.

    \b
    Examples:
      balsam db check
      balsam db check --fix
    """
    import sqlite3

    from balsam.db import maintenance, open_store, recover
    from balsam.exceptions import StoreError
    from balsam.site import this_host

    try:
        ref = one_site(sites, "db check")
        if not ref.is_home:  # the agent checks it on the home host
            with working(f"Checking site {ref.name} (through its agent):", enabled=not as_json):
                answer = ref.backend.db_check(fix)
            found, fixed, left = ([maintenance.Problem(**p) for p in answer[k]] for k in ("problems", "fixed", "remaining"))
            _report(ref.name, str(answer["db"]), found, fixed, left, None, fix, as_json)
            return
        store, name = ref.store, ref.name
    except (StoreError, sqlite3.DatabaseError):  # a damaged DB can always be checked: open the file itself
        root = _root_without_opening(sites, "db check")
        store, name = open_store(root, this_host()), root.name
    try:
        with working(f"Checking {store.db_path}:", enabled=not as_json):
            problems = maintenance.check(store.conn)
    except (StoreError, sqlite3.DatabaseError) as exc:
        problems = [maintenance.Problem("unreadable", 1, f"the DB cannot be read: {exc}", fixable=False)]
    damaged = any(p.name in ("integrity", "unreadable") for p in problems)
    salvage = None
    if damaged:
        try:
            salvage = recover.salvage(store.db_path, None).summary()
        except StoreError as exc:
            salvage = f"nothing ({exc})"
    fixed = maintenance.repair(store) if fix and not damaged and any(p.fixable for p in problems) else []
    remaining = maintenance.check(store.conn) if fixed else problems
    _report(name, str(store.db_path), problems, fixed, remaining, salvage, fix, as_json)


def _report(name: str, db_path: str, problems: List["Problem"], fixed: List["Problem"], remaining: List["Problem"],
            salvage: Optional[str], fix: bool, as_json: bool) -> None:
    """What ``db check`` found (and fixed); exit 1 if problems remain."""
    if as_json:
        echo_json({"site": name, "db": db_path, "problems": [vars(p) for p in problems],
                   "fixed": [vars(p) for p in fixed], "remaining": [vars(p) for p in remaining], "recoverable": salvage})
    else:
        if not problems:
            click.echo(f"{db_path}: ok (integrity and consistency)")
        for p in problems:
            click.echo(f"problem: {p}" + ("" if p.fixable else " [not repairable by --fix]"))
        for p in fixed:
            click.echo(f"fixed: {p.name} ({p.count})")
        if salvage is not None:
            click.echo(f"recoverable: {salvage}. Run 'balsam db recover --site {Path(db_path).parent.parent}' to rebuild "
                       "the DB from them (the damaged file is kept).")
        elif remaining and not fix and any(p.fixable for p in remaining):
            click.echo("Run 'balsam db check --fix' to repair.")
        elif any(p.name == "integrity" for p in remaining):
            click.echo(f"The DB is damaged: on its home host, stop the agent and run 'balsam db recover --site {Path(db_path).parent.parent}'.")
    if remaining:
        raise CLIError(f"{len(remaining)} kinds of problems remain in {db_path}", 1)


@db.command("recover")
@click.option("--python", "python_only", is_flag=True,
              help="Use Balsam's row-by-row salvage even where the sqlite3 shell (and its .recover) is installed.")
@_site_option
def db_recover(python_only: bool, sites: Sequence[str]) -> None:
    """Rebuild a damaged site DB from every row that can still be read, into a new file that replaces it; the
    damaged file is kept beside it (site.db.corrupt-TIME). Stop the site agent first.

    \b
    Example:
      balsam site stop && balsam db recover && balsam db check
    """
    from balsam.db import maintenance, open_store, recover
    from balsam.site import SiteLayout, agent_running, refuse_away_from_home, this_host

    root = _root_without_opening(sites, "db recover")
    layout = SiteLayout(root)
    refuse_away_from_home(layout, "recovered")
    why = agent_running(layout)
    if why:
        raise CLIError(f"the site agent is running ({why}): stop it first with 'balsam site stop --site {root}'", 2)
    result = recover.recover(layout.db_path, use_cli=False if python_only else None)
    click.echo(f"Rebuilt {result.new_path} ({result.method}): {result.summary()}")
    if result.lost:
        click.echo(f"unreadable parts skipped in: {', '.join(sorted(result.lost))}")
    click.echo(f"The damaged file is kept as {result.kept_path}")
    store = open_store(root, this_host())
    try:
        for p in maintenance.repair(store):
            click.echo(f"rebuilt: {p.name} ({p.count})")
    finally:
        store.close()


@db.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
@_site_option
def db_backup(dest: Path, force: bool, sites: Sequence[str]) -> None:
    """Copy the site DB to DEST, safely while the agent and launchers write (SQLite online backup).

    DEST may be a directory (the copy is named after the site and the time). Restore by stopping the
    site and copying the file over .balsam/site.db.

    \b
    Example:
      balsam db backup ~/backups/
    """
    import time

    from balsam.db import maintenance

    ref = one_site(sites, "db backup")
    if not ref.is_home:  # the agent copies it (dest as seen from the home host: a shared filesystem's path)
        if dest.exists() and not dest.is_dir() and not force:
            raise CLIError(f"{dest} exists; pass --force to overwrite it", 1)
        if not dest.is_dir() and not dest.parent.is_dir():
            raise CLIError(f"{dest.parent}: no such directory", 2)
        with working(f"Backing up site {ref.name} (through its agent):"):
            answer = ref.backend.db_backup(str(dest.expanduser().resolve()), force)
        click.echo(f"Backed up site {ref.name} to {answer['path']} ({_mb(int(answer['bytes']))})")
        return
    if dest.is_dir():
        dest = dest / f"{ref.name}-{time.strftime('%Y%m%d-%H%M%S')}.db"
    if dest.exists() and not force:
        raise CLIError(f"{dest} exists; pass --force to overwrite it", 1)
    if not dest.parent.is_dir():
        raise CLIError(f"{dest.parent}: no such directory", 2)
    total = maintenance.db_size(ref.store)

    def copied() -> str:  # the copy is written next to dest, then renamed into place
        done = sum(p.stat().st_size for p in dest.parent.glob(f".{dest.name}.*.tmp") if p.is_file())
        return f"{_mb(done)} of about {_mb(total)}"

    with working(f"Backing up site {ref.name}:", measure=copied):
        size = maintenance.backup(ref.store, dest)
    click.echo(f"Backed up site {ref.name} to {dest} ({_mb(size)})")


@db.command("vacuum")
@_site_option
def db_vacuum(sites: Sequence[str]) -> None:
    """Compact the DB (VACUUM) under the writer lock; writers wait meanwhile.

    \b
    Example:
      balsam db vacuum
    """
    from balsam.db import maintenance

    ref = one_site(sites, "db vacuum")
    if not ref.is_home:  # the agent compacts it on the home host
        answer = ref.backend.db_vacuum()
        click.echo(f"Compacted {answer['db']}: {_mb(int(answer['before']))} -> {_mb(int(answer['after']))}")
        return
    before, after = maintenance.vacuum(ref.store)
    click.echo(f"Compacted {ref.store.db_path}: {_mb(before)} -> {_mb(after)}")


def _root_without_opening(sites: Sequence[str], action: str = "db migrate") -> Path:
    """The site directory for ``db migrate`` (or check/recover of a damaged DB), found like ``--site`` does but
    without opening the store (opening an older schema is refused; a damaged one fails)."""
    from balsam.site import Registry, SiteLayout, find_site_root, this_host

    keys = [k.strip() for s in sites for k in s.split(",") if k.strip()]
    if len(keys) > 1:
        raise CLIError(f"{action} takes one site", 2)
    if keys:
        candidate = Path(keys[0]).expanduser().resolve()
        return candidate if SiteLayout(candidate).is_site() else Path(Registry().lookup(keys[0]).path)
    root = find_site_root()
    if root is not None:
        return root
    local = [e for e in Registry().entries() if e.host == this_host() and SiteLayout(Path(e.path)).is_site()]
    if len(local) != 1:
        raise CLIError(f"not inside a site, and {len(local)} sites are on this host: give --site", 2)
    return Path(local[0].path)


def _follow_site_id(root: Path, store: "Store") -> None:
    """Record in the registry the site id a migration gave the site (ids carry it: balsam.db.ids)."""
    from balsam.site import Registry, site_identity

    site_id, _ = site_identity(store)
    registry = Registry()
    entry = registry.by_path(root)
    if entry is not None and entry.id != site_id:
        registry.update(entry.name, site_id=site_id)


@db.command("migrate")
@click.option("--dry-run", is_flag=True, help="Only show what would be applied.")
@_site_option
def db_migrate(dry_run: bool, sites: Sequence[str]) -> None:
    """Upgrade the DB schema to this Balsam's version (the site agent also does this when it starts; every
    other command refuses an older schema and names this one). Stop older agents of the site first.

    \b
    Example:
      balsam db migrate --dry-run
    """
    from balsam._api import sites as _sites
    from balsam.db import maintenance, open_store
    from balsam.site import SiteLayout, refuse_away_from_home, this_host

    root = _root_without_opening(sites)
    refuse_away_from_home(SiteLayout(root), "migrated")
    store = open_store(root, this_host())
    version, current, pending = maintenance.schema_status(store)
    if version > current:
        raise CLIError(f"{store.db_path}: schema version {version} is newer than this Balsam ({current}); upgrade Balsam", 1)
    if not pending:
        click.echo(f"{store.db_path}: schema version {version} is current")
        return
    click.echo(f"{store.db_path}: schema version {version} -> {current}: " + ", ".join(pending))
    if dry_run:
        return
    store.migrate()
    now = store.schema_version()
    _follow_site_id(root, store)
    store.close()
    _sites.reset()
    if now != current:
        raise CLIError(f"{store.db_path}: schema version is {now} after migrating, expected {current}", 1)
    click.echo(f"Applied {len(pending)} migrations; schema version is now {current}")
