"""``balsam db``: check (and repair), back up, compact and migrate a site's SQLite database."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import click

from balsam.cli import SuggestingGroup
from balsam.cli._common import CLIError, echo_json, json_option, one_site, site_option, working

if TYPE_CHECKING:
    from balsam._api.maintenance import CheckReport
    from balsam._api.sites import SiteRef

_site_option = site_option("The site (default: the current site).")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.group(cls=SuggestingGroup)
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

    from balsam._api import maintenance
    from balsam.exceptions import StoreError
    from balsam.site import SiteLayout

    target: Union["SiteRef", Path]
    try:
        ref = one_site(sites, "db check")
        target = ref
        label = f"Checking site {ref.name} (through its agent):" if not ref.is_home else f"Checking {ref.layout.db_path}:"
    except (StoreError, sqlite3.DatabaseError):  # a damaged DB can always be checked: open the file itself
        target = _root_without_opening(sites, "db check")
        label = f"Checking {SiteLayout(target).db_path}:"
    with working(label, enabled=not as_json):
        report = maintenance.check(target, fix)
    _report(report, fix, as_json)


def _report(report: "CheckReport", fix: bool, as_json: bool) -> None:
    """What ``db check`` found (and fixed); exit 1 if problems remain."""
    db_path, problems, fixed, remaining, salvage = report.db, report.problems, report.fixed, report.remaining, report.recoverable
    if as_json:
        echo_json(report.as_dict())
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
    from balsam._api import maintenance
    from balsam.site import SiteLayout, agent_running, refuse_away_from_home

    root = _root_without_opening(sites, "db recover")
    layout = SiteLayout(root)
    refuse_away_from_home(layout, "recovered")
    why = agent_running(layout)
    if why:
        raise CLIError(f"the site agent is running ({why}): stop it first with 'balsam site stop --site {root}'", 2)
    result = maintenance.recover(root, python_only=python_only)
    click.echo(f"Rebuilt {result.new_path} ({result.method}): {result.summary}")
    if result.lost:
        click.echo(f"unreadable parts skipped in: {', '.join(result.lost)}")
    click.echo(f"The damaged file is kept as {result.kept_path}")
    for p in result.rebuilt:
        click.echo(f"rebuilt: {p.name} ({p.count})")


@db.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
@_site_option
def db_backup(dest: Path, force: bool, sites: Sequence[str]) -> None:
    """Copy the site DB to DEST, safely while the agent and launchers write (SQLite online backup).

    DEST may be a directory (the copy is named after the site and the time). Restore by stopping the
    site and copying the file over .balsam/site.db. A site linked to a relay never hands out again an id
    it pushed after the backup: at its first sync its agent moves its ids past them, and gives new ids to
    jobs made under such an id meanwhile (the agent's log lists them).

    \b
    Example:
      balsam db backup ~/backups/
    """
    import time

    from balsam._api import maintenance

    ref = one_site(sites, "db backup")
    if not ref.is_home:  # the agent copies it (dest as seen from the home host: a shared filesystem's path)
        if dest.exists() and not dest.is_dir() and not force:
            raise CLIError(f"{dest} exists; pass --force to overwrite it", 1)
        if not dest.is_dir() and not dest.parent.is_dir():
            raise CLIError(f"{dest.parent}: no such directory", 2)
        with working(f"Backing up site {ref.name} (through its agent):"):
            path, size = maintenance.backup(ref, dest, force)
        click.echo(f"Backed up site {ref.name} to {path} ({_mb(size)})")
        return
    if dest.is_dir():
        dest = dest / f"{ref.name}-{time.strftime('%Y%m%d-%H%M%S')}.db"
    if dest.exists() and not force:
        raise CLIError(f"{dest} exists; pass --force to overwrite it", 1)
    if not dest.parent.is_dir():
        raise CLIError(f"{dest.parent}: no such directory", 2)
    total = maintenance.db_size(ref)

    def copied() -> str:  # the copy is written next to dest, then renamed into place
        done = sum(p.stat().st_size for p in dest.parent.glob(f".{dest.name}.*.tmp") if p.is_file())
        return f"{_mb(done)} of about {_mb(total)}"

    with working(f"Backing up site {ref.name}:", measure=copied):
        _, size = maintenance.backup(ref, dest, force)
    click.echo(f"Backed up site {ref.name} to {dest} ({_mb(size)})")


@db.command("vacuum")
@_site_option
def db_vacuum(sites: Sequence[str]) -> None:
    """Compact the DB (VACUUM) under the writer lock; writers wait meanwhile.

    \b
    Example:
      balsam db vacuum
    """
    from balsam._api import maintenance

    ref = one_site(sites, "db vacuum")
    db_path, before, after = maintenance.vacuum(ref)  # from another host, the agent compacts it on the home host
    click.echo(f"Compacted {db_path}: {_mb(before)} -> {_mb(after)}")


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
    from balsam._api import maintenance
    from balsam.exceptions import StoreError

    root = _root_without_opening(sites)
    status = maintenance.schema_status(root)
    if status.version > status.current:
        raise CLIError(f"{status.db}: schema version {status.version} is newer than this Balsam ({status.current}); upgrade Balsam", 1)
    if not status.pending:
        click.echo(f"{status.db}: schema version {status.version} is current")
        return
    click.echo(f"{status.db}: schema version {status.version} -> {status.current}: " + ", ".join(status.pending))
    if dry_run:
        return
    try:
        maintenance.migrate(root)
    except StoreError as exc:
        raise CLIError(str(exc), 1) from None
    click.echo(f"Applied {len(status.pending)} migrations; schema version is now {status.current}")
