"""Which site DBs an API call touches, and the per-process cache of their stores.

Scope rules:
- a query naming sites (``site_id``, ``site_name``, ``site_path``) touches those;
- otherwise a query by ids (``id``, ``job_id``, ``app_id``, ``batch_job_id``, ``parent_id``) touches the sites
  those ids belong to (an id carries its site's id: :mod:`balsam.db.ids`), so it never meets another site's row;
  a site-local number (``3`` typed inside a site) is read as that site's id when exactly one site is in scope;
- otherwise the *current site*: :func:`use_site`, else ``BALSAM_SITE_PATH``, else the site enclosing the
  working directory;
- otherwise every registered site whose home host is this host.
A site of another host is never opened (DESIGN.md section 3): when its directory is visible here (a second
login node, a compute node), it is reached through its agent's /v1 HTTP API with the same calls and errors
(:attr:`SiteRef.backend`); otherwise naming it is a ForeignHostError.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar, Union

from balsam.db import Store, open_store
from balsam.db import query as q
from balsam.db.backend import Backend, LocalBackend
from balsam.exceptions import ForeignHostError, SiteNotFound, StoreError
from balsam.site import Registry, SiteLayout, check_site_key, find_site_root, site_identity, this_host

__all__ = ["SiteRef", "agent_job_count", "backend_reason", "current_site", "default_scope", "local_sites", "process_host", "reachable_sites", "ref_for_root",
           "reidentify", "reset",
           "resolve", "scope", "select", "served_foreign_sites", "this_host", "use_site"]


@dataclass(frozen=True)
class SiteRef:
    """A site this process can reach: its identity and its store."""

    id: int
    name: str
    path: Path
    host: str

    @property
    def layout(self) -> SiteLayout:
        return SiteLayout(self.path)

    @property
    def store(self) -> Store:
        """The SQLite store (home host only: elsewhere opening it is a ForeignHostError)."""
        return store_for(self.path)

    @property
    def is_home(self) -> bool:
        """Whether this host is the site's home host (the DB is opened directly)."""
        return not self.host or self.host == this_host()

    @property
    def via_relay(self) -> bool:
        """Whether the site is reached through the relay (it is on no host of this user's here)."""
        return self.host.startswith("relay:")

    @property
    def backend(self) -> Backend:
        """How this process reaches the site: its store on the home host, the agent's HTTP API elsewhere."""
        return _backend_for(self.path, self.host)

    def loadable_result(self, blob: bytes, job_id: int, column: str) -> bytes:
        """The pickle a result ``blob`` read from this site holds, fit to load: as read from the site's DB or
        agent; through the relay only when the site signed it with a result key this computer holds (else
        ResultNotTrusted, saying what to do). See balsam.site.result_keys."""
        if not self.via_relay:
            return blob
        from balsam.site import balsam_home
        from balsam.site.result_keys import trusted_keys, verified

        return verified(blob, job_id, column, self.name, trusted_keys(balsam_home()))


_seen_stamps: Dict[Path, str] = {}


def current_policies(ref: "SiteRef") -> None:
    """Before checking new jobs or BatchJobs against a site's policies: if its settings.yml changed since this
    process last looked (one stat), copy the new policies into the site row (ConfigError, naming the key, if the
    edit is invalid). See :func:`balsam.site.reread_settings_if_changed`. Away from the home host the agent,
    which watches the file itself, is the one that re-reads it."""
    from balsam.site import reread_settings_if_changed, settings_stamp

    if not ref.is_home:
        return
    layout = ref.layout
    stamp = settings_stamp(layout)
    if _seen_stamps.get(ref.path) == stamp:
        return
    reread_settings_if_changed(ref.store, layout)
    _seen_stamps[ref.path] = stamp


_lock = threading.Lock()
_stores: Dict[Path, Store] = {}
_backends: Dict[Path, Backend] = {}
_refs: Dict[Path, SiteRef] = {}
_current: Optional[Path] = None
generation = 0
"""Bumped by :func:`reset`; caches keyed on sites compare it to know they are stale."""


def store_for(root: Path) -> Store:
    """The (cached, not yet opened) Store of a site directory."""
    with _lock:
        store = _stores.get(root)
        if store is None:
            store = _stores[root] = open_store(root, this_host())
        return store


def _backend_for(root: Path, owner: str) -> Backend:
    backend = _backends.get(root)
    if backend is not None:
        return backend
    if owner.startswith(RELAY_HOST):
        relayed = _relay_ref(root.name)
        if relayed is None or relayed.path != root:
            raise SiteNotFound(f"site {root.name!r} is no longer one of your sites at the relay")
        return _backends[root]
    if not owner or owner == this_host():
        backend = LocalBackend(store_for(root))
    else:
        from balsam.exceptions import ServiceError
        from balsam.http.client import HttpBackend

        try:
            backend = HttpBackend.for_site(root)
        except ServiceError as e:
            raise ServiceError(
                f"site {root} belongs to host {owner!r} and this is {this_host()!r}, so it is reached through its agent's "
                f"HTTP API, and {e}; if the site moved here for good, run 'balsam site rename-host' (from {root})"
            ) from None
    with _lock:
        return _backends.setdefault(root, backend)


def process_host() -> str:
    """This process's host name, as the API's root reads it (``BALSAM_HOSTNAME``, else the system's): the other
    API modules compare a site's home host with it instead of reading the environment themselves."""
    return this_host()


def backend_reason(ref: SiteRef) -> str:
    """Why ``ref`` is reached the way it is (``balsam which``)."""
    if ref.is_home:
        return f"this host ({this_host()}) is the site's home host: the API opens its SQLite DB directly"
    if ref.via_relay:
        return (f"no site of this name or id is on this host, and you are logged in to the relay {ref.host[len(RELAY_HOST):]}: "
                "the API goes through the relay, which the site's agent syncs with")
    return (f"this host ({this_host()}) is not the site's home host ({ref.host}): SQLite must not be shared across hosts, so "
            f"the API goes through the site agent's HTTP API (BALSAM_HOSTNAME sets this host's name)")


def ref_for_root(root: Path) -> SiteRef:
    """The SiteRef of a site directory (identity read from its DB)."""
    ref = _refs.get(root)  # paths are cached resolved; a hit skips the filesystem
    if ref is not None:
        return ref
    if Path(root).parts[1:2] == (RELAY_DIR,):
        relayed = _relay_ref(Path(root).name)
        if relayed is None:
            raise SiteNotFound(f"site {Path(root).name!r} is no longer one of your sites at the relay")
        return relayed
    root = Path(root).resolve()
    with _lock:
        ref = _refs.get(root)
    if ref is not None:
        return ref
    recorded = SiteLayout(root).home_host()
    if recorded and recorded != this_host():
        row = _backend_for(root, recorded).site_row(("id", "name"))
        ref = SiteRef(id=int(row[0]), name=str(row[1]), path=root, host=recorded)
        with _lock:
            _refs[root] = ref
        return ref
    return reidentify(root)


def reidentify(root: Path) -> SiteRef:
    """The SiteRef of a site on this host read afresh from its DB, replacing the cached one: after its id changed
    under a running process (``balsam site link`` moves a site whose id the relay knows elsewhere). The store stays
    open: its users (the agent's API server) go on."""
    root = Path(root).resolve()
    store = store_for(root)
    site_id, name = site_identity(store)
    owner = store.get_meta("home_host") or this_host()
    ref = SiteRef(id=site_id, name=name, path=root, host=owner)
    with _lock:
        _refs[root] = ref
    return ref


def use_site(site: Union[str, int, Path, None]) -> Optional[SiteRef]:
    """Make ``site`` (a name, id or path; None to clear) the current site of this process."""
    global _current
    if site is None:
        _current = None
        return None
    ref = resolve(site)
    _current = ref.path
    return ref


def current_site() -> Optional[SiteRef]:
    """The current site (use_site, BALSAM_SITE_PATH, or the enclosing directory), or None."""
    if _current is not None:
        return ref_for_root(_current)
    root = find_site_root()
    return ref_for_root(root) if root is not None else None


def resolve(key: Union[str, int, Path, Any]) -> SiteRef:
    """A site by name, id, path, or Site object; ForeignHostError if it belongs to another host."""
    if hasattr(key, "path") and hasattr(key, "id") and not isinstance(key, (str, int, Path)):
        key = Path(str(key.path))
    if isinstance(key, (str, Path)):
        check_site_key(key)
    if isinstance(key, Path) or (isinstance(key, str) and ("/" in key or key == ".")):
        if Path(key).parts[1:2] == (RELAY_DIR,):
            return ref_for_root(Path(key))
        root = Path(key).expanduser().resolve()
        if not SiteLayout(root).is_site():
            raise SiteNotFound(f"{root} is not a Balsam site")
        return ref_for_root(root)
    current = None
    try:
        current = current_site()
    except SiteNotFound:
        current = None
    if current is not None and (current.name == key or current.id == key or str(current.id) == str(key)):
        return current
    try:
        entry = Registry().lookup(key)
    except SiteNotFound:
        ref = site_by_id(int(key)) if isinstance(key, int) or (isinstance(key, str) and key.isdigit()) else None
        if ref is None:
            ref = _relay_ref(key)
        if ref is None:
            raise
        return ref
    if entry.host and entry.host != this_host() and SiteLayout(Path(entry.path)).is_site():
        return ref_for_root(Path(entry.path))  # reached through its agent's API
    if entry.host and entry.host != this_host():
        raise ForeignHostError(
            f"site {entry.name!r} lives on host {entry.host!r} and this is {this_host()!r}: its DB can only be opened there "
            f"(or run 'balsam site rename-host' in {entry.path} if it moved here)"
        )
    if not SiteLayout(Path(entry.path)).is_site():
        raise SiteNotFound(f"site {entry.name!r} is registered at {entry.path}, but no site is there any more")
    return ref_for_root(Path(entry.path))


def single_site(site: Any = None, *, how: str = "name one") -> SiteRef:
    """``site`` (a SiteRef, name, id, path or Site) resolved, else the one site in the default scope.

    ``how`` tells the user how to choose when several sites are in scope.
    """
    if isinstance(site, SiteRef):
        return site
    if site is not None:
        return resolve(site)
    sites = default_scope()
    if len(sites) > 1:
        from balsam.exceptions import ValidationError

        raise ValidationError(f"several sites are in scope ({', '.join(s.name for s in sites)}): {how}")
    return sites[0]


_warned: Dict[Path, str] = {}
T = TypeVar("T")


def warn_broken(root: Path, name: str, exc: BaseException) -> None:
    """One warning line (once per site and process) for a site a cross-site read skips."""
    if root in _warned:
        return
    _warned[root] = str(exc)
    from balsam.exceptions import SchemaError

    if isinstance(exc, SchemaError):  # an older or newer schema: its own advice (migrate; upgrade), not a repair
        detail = str(exc).split(": ", 1)[1] if str(exc).startswith(str(root)) else str(exc)
        print(f"warning: skipped site {name!r} ({root}): {detail}", file=sys.stderr)
        return
    detail = str(exc).split(" (", 1)[0] if isinstance(exc, StoreError) and str(exc).startswith(str(root)) else str(exc)
    print(f"warning: skipped site {name!r} ({root}): its DB cannot be read ({detail}); check it with "
          f"'balsam db check --site {root}' and rebuild it with 'balsam db recover --site {root}'", file=sys.stderr)


def readable(sites: Sequence[SiteRef], read: Callable[[SiteRef], T]) -> List[T]:
    """``read`` on each site. With several sites in scope, one whose DB cannot be read (corrupt, unreadable) is
    skipped with a warning naming it and the repair command: one bad site must not break every read."""
    if len(sites) <= 1:
        return [read(s) for s in sites]
    out: List[T] = []
    for site in sites:
        try:
            out.append(read(site))
        except (sqlite3.DatabaseError, StoreError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            warn_broken(site.path, site.name, exc)
    return out


def local_sites() -> List[SiteRef]:
    """Every registered site on this host whose directory still exists (a site whose DB cannot be opened is
    skipped with a warning)."""
    host = this_host()
    out = []
    for entry in Registry().entries():
        if entry.host == host and SiteLayout(Path(entry.path)).is_site():
            try:
                ref = ref_for_root(Path(entry.path))
            except (sqlite3.DatabaseError, StoreError) as exc:
                warn_broken(Path(entry.path), entry.name, exc)
                continue
            if ref.id != entry.id:  # a migration gave the site its id prefix; the registry follows
                Registry().update(entry.name, site_id=ref.id)
            out.append(ref)
    return out


def scope(filters: Dict[str, Any]) -> List[SiteRef]:
    """The sites a query with these filters touches (scope keys are consumed from ``filters``)."""
    site_id = filters.pop("site_id", None)
    site_name = filters.pop("site_name", None)
    site_path = filters.pop("site_path", None)
    if site_id is not None or site_name is not None or site_path is not None:
        candidates: List[SiteRef] = []
        if site_id is not None:
            ids = site_id if isinstance(site_id, (list, tuple, set, frozenset)) else [site_id]
            candidates = [resolve(q.as_int("site_id", getattr(i, "id", i) or 0, "a site id")) for i in ids]
        else:
            candidates = default_scope(all_local=True)
        if site_name is not None:
            names = site_name if isinstance(site_name, (list, tuple, set)) else [site_name]
            if site_id is None:
                candidates = [resolve(n) for n in names]
            else:
                candidates = [c for c in candidates if c.name in names]
        if site_path is not None:
            candidates = [c for c in candidates if str(site_path) in str(c.path)]
        return _short_ids(filters, candidates)
    by_id = sites_of_ids(filters)
    return _short_ids(filters, default_scope()) if by_id is None else by_id


def _short_ids(filters: Dict[str, Any], sites: List[SiteRef]) -> List[SiteRef]:
    """Read a site-local number (an id without its site part, as a user types ``balsam job rm 3`` inside a
    site) as that site's id. With several sites in scope it names no single row: an error, never a guess."""
    from balsam.db.ids import in_site, site_of

    for key in ID_KEYS:
        value = filters.get(key)
        if value is None or isinstance(value, (str, bytes, bool)):
            continue
        many = isinstance(value, (list, tuple, set, frozenset))
        values = list(value) if many else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            continue
        if all(site_of(v) for v in values):
            continue
        if len(sites) != 1:
            from balsam.exceptions import ValidationError

            short = next(v for v in values if not site_of(v))
            raise ValidationError(f"{key} {short} is a site-local number and {len(sites)} sites are in scope: "
                                  "give the full id, or choose the site (--site, site_name=)")
        mapped = [in_site(v, sites[0].id) for v in values]
        filters[key] = mapped if many else mapped[0]
    return sites


ID_KEYS = ("id", "job_id", "app_id", "batch_job_id", "parent_id")
"""Filters holding ids of a site's rows (every such id carries its site's id: balsam.db.ids)."""


def sites_of_ids(filters: Dict[str, Any]) -> Optional[List[SiteRef]]:
    """The sites holding the rows that id filters name (an id names one row among all sites), or None when
    no id filter narrows the scope. An id of a site this host cannot reach matches nothing here."""
    from balsam.db.ids import site_of

    wanted: Optional[set] = None  # type: ignore[type-arg]
    for key in ID_KEYS:
        value = filters.get(key)
        if value is None or isinstance(value, (str, bytes)):
            continue
        values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        try:
            owners = {site_of(int(getattr(v, "id", v) or 0)) for v in values}
        except (TypeError, ValueError):
            continue  # the filter itself reports the bad value
        if 0 in owners:
            return None  # a site-local number: the scope decides its site (_short_ids)
        wanted = owners if wanted is None else wanted & owners
    if wanted is None:
        return None
    out = []
    for site_id in sorted(wanted):
        ref = site_by_id(site_id)
        if ref is not None:
            out.append(ref)
    return out


def site_by_id(site_id: int) -> Optional[SiteRef]:
    """The reachable site with this id (the current site, or a registered one whose directory is visible here:
    on this host through its DB, on another through its agent's API), or None."""
    try:
        current = current_site()
    except SiteNotFound:
        current = None
    if current is not None and current.id == site_id:
        return current
    for entry in Registry().entries():
        if entry.id == site_id and SiteLayout(Path(entry.path)).is_site():
            ref = ref_for_root(Path(entry.path))
            if ref.id == site_id:
                return ref
    # The registry may lag a migration that gave a site its id ('balsam db migrate' updates it): ask the DBs.
    for ref in local_sites():
        if ref.id == site_id:
            return ref
    return _relay_ref(site_id)


def served_foreign_sites() -> List[SiteRef]:
    """Registered sites of other hosts whose directory this host sees and whose agent has published its address
    (reached through the agent's HTTP API)."""
    out = []
    for entry in Registry().entries():
        if entry.host == this_host():
            continue
        layout = SiteLayout(Path(entry.path))
        if layout.is_site() and (layout.state / "api.json").is_file():
            out.append(ref_for_root(Path(entry.path)))
    return out


def agent_job_count(root: Path, timeout_s: float = 3.0) -> int:
    """How many jobs a site of another host holds, asked once of its agent over HTTP (``balsam site ls`` away from
    the home host, where the agent answering is Balsam 0.7's "Active"). ServiceError when it does not answer
    within ``timeout_s`` or has published no address."""
    from balsam.http.client import HttpBackend, HttpClient

    return HttpBackend(HttpClient(SiteLayout(root).state, retry_s=0.0, timeout_s=timeout_s)).count("job", {})


def reachable_sites() -> List[SiteRef]:
    """Every site this process can use without naming it: this host's, then other hosts' served by their agents."""
    return local_sites() + served_foreign_sites()


SCOPE_MEMO_S = 1.0
"""How long the sites a call names none of stay known in this process (:func:`default_scope`)."""
_scope_memo: Dict[Any, Any] = {}


def default_scope(all_local: bool = False) -> List[SiteRef]:
    """The current site if there is one, else every reachable site (this host's, and other hosts' whose directory
    this host sees and whose agent runs).

    Finding them reads the registry and looks at every site directory (~1 ms): a script that makes 100,000
    ``Job(workdir, "AppName")`` asks once a second, not once a job. The answer is asked again at once when the
    working directory, the environment that picks a site or a host, :func:`use_site` or the registry changes."""
    try:
        registry = os.stat(Registry().path)
        key = (all_local, os.getcwd(), os.environ.get("BALSAM_SITE_PATH"), os.environ.get("BALSAM_HOME"), this_host(),
               generation, _current, registry.st_mtime_ns, registry.st_size, registry.st_ino)
    except OSError:  # no working directory, no registry yet: nothing to remember it by
        return _default_scope(all_local)
    now = time.monotonic()
    hit = _scope_memo.get(key)
    if hit is not None and now - hit[0] < SCOPE_MEMO_S:
        return list(hit[1])
    sites = _default_scope(all_local)
    _scope_memo.clear()
    _scope_memo[key] = (now, sites)
    return list(sites)


def _default_scope(all_local: bool) -> List[SiteRef]:
    if not all_local:
        current = current_site()
        if current is not None:
            return [current]
    sites = reachable_sites()
    if not sites and not all_local:
        relayed = relay_scope()
        if relayed:
            return relayed
        entries = Registry().entries()
        foreign = [e for e in entries if e.host != this_host()]
        visible = [e for e in foreign if SiteLayout(Path(e.path)).is_site()]
        if visible:  # its agent is not running: ref_for_root says so, and how to start it
            return [ref_for_root(Path(visible[0].path))]
        if foreign:
            e = foreign[0]
            raise ForeignHostError(
                f"no site on this host ({this_host()!r}); site {e.name!r} lives on {e.host!r}: run there, "
                f"or 'balsam site rename-host' in {e.path} if it moved here"
            )
        skipped = [e.name for e in entries if Path(e.path) in _warned]
        if skipped:  # every site there is was skipped as unreadable (each warned about above)
            raise SiteNotFound(f"no readable Balsam site: {', '.join(skipped)} skipped (see the warning above)")
        raise SiteNotFound("no Balsam site found: create one with 'balsam site init PATH', or cd into a site")
    return sites


def select(selectors: Sequence[str]) -> List[SiteRef]:
    """The sites named by Balsam's ``--site`` selectors, in order, without repeats.

    Each selector is ``all`` (every reachable site, and the current one), ``active`` (those whose agent
    runs; none is not an error), ``this`` (the current site),
    a name, an id, a path, or a fragment of registered sites' paths; several may be comma-separated. No
    selector at all means :func:`default_scope`. A site of another host is reached through its agent's API when its
    directory is visible here, else a ForeignHostError.
    """
    keys = [k.strip() for s in selectors for k in str(s).split(",") if k.strip()]
    if not keys:
        return default_scope()
    out: Dict[Path, SiteRef] = {}
    for key in keys:
        if key == "all":
            refs = reachable_sites()
            current = current_site()
            if current is not None:
                refs.append(current)
            if not refs:
                raise SiteNotFound("--site all: no site on this host; create one with 'balsam site init PATH'")
        elif key == "active":
            from balsam.site import agent_running

            refs = [r for r in local_sites() if agent_running(r.layout) is not None] + served_foreign_sites()  # Balsam 0.7: agent runs
        elif key == "this":
            current = current_site()
            if current is None:
                raise SiteNotFound("--site this: the working directory is not inside a site (and BALSAM_SITE_PATH is unset)")
            refs = [current]
        else:
            refs = _select_one(key)
        for ref in refs:
            out.setdefault(ref.path, ref)
    return list(out.values())


def _select_one(key: str) -> List[SiteRef]:
    try:
        return [resolve(key)]
    except SiteNotFound:
        pass
    entries = Registry().entries()
    matches = [e for e in entries if key in e.path]
    if not matches:
        known = ", ".join(e.name for e in entries) or "none registered"
        raise SiteNotFound(f"no site matches {key!r} by name, id or path (known sites: {known})") from None
    return [resolve(e.name) for e in matches]


RELAY_DIR = "balsam-relay"
RELAY_HOST = "relay:"
"""A site reached through the relay has the path /balsam-relay/<relay>/<name> here (no such directory) and
the host "relay:<url>"."""
_relay_cache: Dict[str, Any] = {}


def _relay_sites() -> List[Dict[str, Any]]:
    """The logged-in user's sites at the relay (asked once per process generation; [] when not logged in)."""
    from balsam.sync import current_login, relay_sites

    record = current_login()
    if record is None:
        return []
    if _relay_cache.get("generation") != generation or _relay_cache.get("url") != record["url"]:
        _relay_cache.update(generation=generation, url=record["url"], sites=relay_sites(record), record=record)
    return list(_relay_cache["sites"])


def _relay_ref(key: Union[str, int, Path, Any]) -> Optional[SiteRef]:
    """One of the logged-in user's relay sites by name or id, unless a site of that name is on this host."""
    sites = _relay_sites()
    if not sites:
        return None
    from balsam.sync import RelaySiteBackend, relay_root, user_client

    record = _relay_cache["record"]
    for s in sites:
        if str(key) in (str(s["id"]), str(s["name"])):
            root = relay_root(record, str(s["name"]))
            with _lock:
                ref = _refs.get(root)
                if ref is None:
                    ref = _refs[root] = SiteRef(id=int(s["id"]), name=str(s["name"]), path=root, host=RELAY_HOST + str(record["url"]))
                    _backends[root] = RelaySiteBackend(user_client(record), ref.id)
            return ref
    return None


def relay_scope() -> List[SiteRef]:
    """Every relay site of the logged-in user (the scope on a host with no site of its own)."""
    out = []
    for s in _relay_sites():
        ref = _relay_ref(s["id"])
        if ref is not None:
            out.append(ref)
    return out


def reset() -> None:
    """Forget cached stores and the current site (tests, and after a site is moved or removed)."""
    global _current, generation
    generation += 1
    with _lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
        for backend in _backends.values():
            if backend.kind != "local":
                backend.close()
        _backends.clear()
        _refs.clear()
        _warned.clear()
    _current = None
