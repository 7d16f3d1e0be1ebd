"""The Job model and its manager (``Job.objects``); waiting on many jobs is in :mod:`balsam._api.waiting`."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

from balsam._api import rerun
from balsam._api import sites as _sites
from balsam._api.base import LAZY_ROW, Field, IdSet, Manager, Model, PathStr, Query, TypedField, bind_manager, by_site, row_of
from balsam._api.queued import QueuedWrite, WriteCount, resolve_all
from balsam._api.schemas import plain
from balsam._api.waiting import ALL_COMPLETED, FIRST_COMPLETED, JobWaiting, WaitResult
from balsam.db import fields as field_db
from balsam.db import jobs as job_db
from balsam.db import query as q
from balsam.db.codec import dumps, encode_parameters, loads, tags_json, unpickle_value
from balsam.db.fields import normalize_workdir
from balsam.db.ids import in_site, site_of
from balsam.db.jobs import StateChange
from balsam.db.merge import Read, read_of
from balsam.db.states import DONE_STATES, JobState, to_state
from balsam.exceptions import AppAmbiguous, AppError, AppNotFound, BalsamError, CommandPending, ValidationError
from balsam.runtime import paused_gc

if TYPE_CHECKING:
    from balsam._api.sites import SiteRef

logger = logging.getLogger(__name__)

class JobFailed(BalsamError):
    """``result()`` of a job that ended FAILED or USER_KILLED without a Python exception to re-raise."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised by a job's ``run()`` on a compute node."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n" + self.tb


class AppInfo(NamedTuple):
    """What job creation needs to know about an app."""

    site: "SiteRef"
    id: int
    name: str
    parameters: Dict[str, Dict[str, Any]]
    var_keyword: bool
    required: frozenset  # type: ignore[type-arg]
    version: int = 0
    """The app's version when this was read: job creation revalidates against the store's (and insert_jobs
    re-checks the parameters when the app was re-synced since)."""


_app_cache: Dict[Tuple[Path, Union[int, str]], AppInfo] = {}


def invalidate_app_cache() -> None:
    """Forget cached app lookups (after an app is synced, renamed or deleted)."""
    _app_cache.clear()


def _load_apps(site: "SiteRef") -> None:
    for app_id, name, params, var_kw, version in site.backend.select("app", {}, columns=("id", "name", "parameters", "var_keyword",
                                                                                         "version")):
        spec = loads(params)
        info = AppInfo(site, app_id, name, spec, bool(var_kw), frozenset(k for k, v in spec.items() if v.get("required")), version)
        _app_cache[(site.path, app_id)] = info
        _app_cache[(site.path, name)] = info


def _revalidate(info: AppInfo) -> AppInfo:
    """The app as stored now: ``info`` itself if its version is current, else the reloaded definition (another
    process re-synced it). ValidationError if the app is gone."""
    rows = info.site.backend.select("app", {"id": [info.id]}, columns=("version",))
    row = rows[0] if rows else None
    if row is None:
        raise ValidationError(f"app {info.name} (id {info.id}) no longer exists at site {info.site.name}")
    if row[0] == info.version:
        return info
    _load_apps(info.site)
    return _app_cache.get((info.site.path, info.id), info)


def resolve_app(app: Any, site_name: Optional[str] = None) -> AppInfo:
    """An app given as an ApplicationDefinition class, a name, or an id (``site_name`` disambiguates)."""
    app_cls: Any = app
    if isinstance(app, type) and hasattr(app, "sync") and hasattr(app, "_app_name"):
        cached = app.__dict__.get("_balsam_info")
        if cached is not None and cached[0] == _sites.generation and cached[1].id == app_cls.__app_id__:
            return cached[1]  # type: ignore[no-any-return]
        app_id = getattr(app, "__app_id__", None)
        if app_id is None or app_cls._site_ref().path != app_cls.__app_site__ or site_of(app_id) != app_cls._site_ref().id:
            app_cls.sync()  # never synced, synced elsewhere, or the site moved to another id since
        site = app_cls._site_ref()
        key: Union[int, str] = int(app_cls.__app_id__)
        sites = [site]
    else:
        if isinstance(app, str) and app.isdigit():
            app = int(app)
        elif isinstance(app, str) and "." in app:
            app = app.rsplit(".", 1)[1]  # Balsam 0.7's "module.ClassName" class path: apps are named by the class
        if not isinstance(app, (int, str)) or isinstance(app, bool):
            raise ValidationError(f"app_id must be an app class, name or id, got {app!r}")
        key = app
        if site_name:
            sites = [_sites.resolve(site_name)]
        elif isinstance(app, int) and site_of(app):
            # An app id names one app among all sites: its site is read off the id.
            owner = _sites.site_by_id(site_of(app))
            if owner is None:
                raise AppNotFound(f"no app {app} on this host: its site (id {site_of(app)}) is not registered here")
            sites = [owner]
        else:
            sites = _sites.default_scope()
            if isinstance(app, int) and len(sites) == 1:
                key = in_site(app, sites[0].id)  # a site-local number, as typed inside a site
    found: List[AppInfo] = []
    for site in sites:
        info = _app_cache.get((site.path, key))
        if info is None:
            _load_apps(site)
            info = _app_cache.get((site.path, key))
        if info is not None:
            found.append(info)
    if not found:
        where = f"site {site_name!r}" if site_name else ", ".join(s.name for s in sites) or "any site"
        raise AppNotFound(f"no app {key!r} at {where}; define it and call .sync(), or 'balsam app sync FILE'")
    if len(found) > 1:
        raise AppAmbiguous(f"app {key!r} exists at several sites ({', '.join(i.site.name for i in found)}): pass site_name=")
    if isinstance(app, type):
        app_cls._balsam_info = (_sites.generation, found[0])
    return found[0]


_RESOURCE_NAMES = ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count",
                   "wall_time_min")
_DEFAULT_RESOURCES = (1, 1, 1, 1, 0, 1, 0)
_DEFAULT_TYPES = frozenset({(int, int, int, int, int, int, int), (int, int, int, int, float, int, int)})
"""The types the default resources may come in (``gpus_per_rank`` may be a float): equal values of other types
(True, 1.0) go through the field checks."""
_STATES = {s.value: s for s in JobState}


def _site_at(site_path: Union[str, Path]) -> str:
    """The one site whose path is (or contains) ``site_path``, as a path ``resolve_app`` takes (Balsam 0.7's
    ``Job(app_name=..., site_path=...)``)."""
    refs = _sites.select([str(site_path)])
    if len(refs) != 1:
        names = ", ".join(r.name for r in refs) or "none"
        raise ValidationError(f"site_path={str(site_path)!r} must name one site (matches: {names})")
    return str(refs[0].path)


def _fast_workdir(w: Any) -> str:
    if (type(w) is str and 0 < len(w) <= 255 and w[0] != "/" and "." not in w and "//" not in w and "\\" not in w and w[-1] != "/"
            and w.isprintable() and not w[0].isspace() and not w[-1].isspace()):
        return w
    return normalize_workdir(w)


def _parent_ids(parents: Any) -> List[int]:
    """Parent jobs given as Job objects or ids, as checked ids."""
    if isinstance(parents, (list, tuple, set, frozenset)) or hasattr(parents, "__next__"):
        parents = [p.id if isinstance(p, Job) else p for p in parents]
    return field_db.check_parent_ids(parents)


def _check_parameter_names(workdir: str, info: AppInfo, keys: Any) -> None:
    """A new job's parameter names against its app: every required one given, no unknown one (unless run() takes
    ``**kwargs``)."""
    field_db.check_parameter_names(f"job {workdir!r}", info.name, info.parameters.keys(), info.required, keys, info.var_keyword)


class Job(Model):
    """A task: an app run with parameters, resources, tags and dependencies, in its own workdir."""

    _spec = q.JOB
    _columns = job_db.JOB_COLUMNS[:17] + ("state", "last_update", "created", "pending_file_cleanup",
                                          "serialized_return_value", "serialized_exception", "version", "parameters_pickled")

    id = Field(writable=False)
    workdir: str = TypedField(PathStr)  # type: ignore[assignment]
    app_id: int = Field()  # type: ignore[assignment]
    tags: Dict[str, str] = Field("json", dict)  # type: ignore[assignment]
    parameters: Dict[str, Any] = Field("params", dict)  # type: ignore[assignment]
    data: Dict[str, Any] = Field("json", dict)  # type: ignore[assignment]
    return_code: Optional[int] = Field()  # type: ignore[assignment]
    num_nodes: int = Field(default=1)  # type: ignore[assignment]
    ranks_per_node: int = Field(default=1)  # type: ignore[assignment]
    threads_per_rank: int = Field(default=1)  # type: ignore[assignment]
    threads_per_core: int = Field(default=1)  # type: ignore[assignment]
    gpus_per_rank: float = Field(default=0.0)  # type: ignore[assignment]
    node_packing_count: int = Field(default=1)  # type: ignore[assignment]
    launch_params: Dict[str, str] = Field("json", dict)  # type: ignore[assignment]
    wall_time_min: int = Field(default=0)  # type: ignore[assignment]
    parent_ids: List[int] = TypedField(IdSet, "json", list)  # type: ignore[assignment]
    batch_job_id: Optional[int] = Field()  # type: ignore[assignment]
    state: Union[JobState, str] = Field("state")  # type: ignore[assignment]
    last_update = Field("time", writable=False)
    created = Field("time", writable=False)
    pending_file_cleanup: bool = Field("bool", True)  # type: ignore[assignment]
    serialized_return_value: Optional[bytes] = Field()  # type: ignore[assignment]
    serialized_exception: Optional[bytes] = Field()  # type: ignore[assignment]
    version = Field(writable=False)

    NoResult = JobFailed
    objects: ClassVar["JobManager"]  # type: ignore[assignment]

    def __init__(
        self,
        workdir: Union[str, Path],
        app_id: Any = None,
        tags: Optional[Dict[str, str]] = None,
        parameters: Optional[Dict[str, Any]] = None,
        data: Optional[Dict[str, Any]] = None,
        return_code: Optional[int] = None,
        num_nodes: int = 1,
        ranks_per_node: int = 1,
        threads_per_rank: int = 1,
        threads_per_core: int = 1,
        launch_params: Optional[Dict[str, str]] = None,
        gpus_per_rank: float = 0,
        node_packing_count: int = 1,
        wall_time_min: int = 0,
        parent_ids: Iterable[int] = (),
        transfers: Optional[Dict[str, Any]] = None,
        pending_file_cleanup: bool = True,
        site_name: Optional[str] = None,
        app_name: Optional[str] = None,
        site_path: Optional[Union[str, Path]] = None,
    ) -> None:
        d = self.__dict__
        d["_row"] = None
        d["_site"] = None
        if app_id is None:
            app_id = app_name
        if app_id is None:
            raise ValidationError("a Job needs an app: pass app_id= (an app class, name or id)")
        if site_path is not None and site_name is None:
            site_name = _site_at(site_path)
        info = app_id if type(app_id) is AppInfo else resolve_app(app_id, site_name)
        d["_app"] = info
        d["_site"] = info.site
        d["workdir"] = _fast_workdir(workdir)
        d["app_id"] = info.id
        d["tags"] = {} if tags is None else tags
        d["parameters"] = {} if parameters is None else parameters
        d["data"] = {} if data is None else data
        d["return_code"] = return_code
        d["num_nodes"] = num_nodes
        d["ranks_per_node"] = ranks_per_node
        d["threads_per_rank"] = threads_per_rank
        d["threads_per_core"] = threads_per_core
        d["launch_params"] = {} if launch_params is None else launch_params
        d["gpus_per_rank"] = gpus_per_rank
        d["node_packing_count"] = node_packing_count
        d["wall_time_min"] = wall_time_min
        d["parent_ids"] = [in_site(p, info.site.id) for p in _parent_ids(parent_ids)] if parent_ids else []
        d["pending_file_cleanup"] = pending_file_cleanup
        if transfers:
            d["transfers"] = {slot: plain(t) for slot, t in transfers.items()} if isinstance(transfers, dict) else transfers

    def _repr_fields(self) -> Sequence[str]:
        return ("id", "workdir", "state", "tags")

    def __getattr__(self, name: str) -> Any:
        # Write-only and creation-only attributes default to None on loaded jobs.
        if name in ("state_data", "state_timestamp", "transfers"):
            return None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---------------------------------------------------------------- creation
    def _creation_row(self) -> Tuple[Any, ...]:
        """The job as a new-job tuple (NEW_JOB_COLUMNS) for insert_jobs; cheap checks first, full ones if they fail.

        Bulk creation calls this once per job, so the common case (string tags, default resources, empty data)
        takes the fewest steps; every value still passes the same checks as the field writer's."""
        d = self.__dict__
        info: AppInfo = d["_app"]
        params = d["parameters"]
        if type(params) is not dict:
            raise ValidationError(f"job {d['workdir']!r}: parameters must be a dict, got {params!r}")
        keys = params.keys()
        if not info.required <= keys or (not info.var_keyword and not keys <= info.parameters.keys()):
            info = d["_app"] = _revalidate(info)  # the cached app may be older than the store's
            _check_parameter_names(d["workdir"], info, keys)
        tags = d["tags"]
        tags_text = tags_json(tags, field_db.MAX_TAG_CHARS) if type(tags) is dict else None
        if tags_text is None:
            tags = d["tags"] = field_db.check_tags(tags, f"job {d['workdir']!r}: ")
            tags_text = dumps(tags)
        n, rpn, tpr, tpc, gpr, npc, wall = resources = (
            d["num_nodes"], d["ranks_per_node"], d["threads_per_rank"], d["threads_per_core"], d["gpus_per_rank"],
            d["node_packing_count"], d["wall_time_min"])
        if resources != _DEFAULT_RESOURCES or tuple(map(type, resources)) not in _DEFAULT_TYPES:
            checked = field_db.check_fields(dict(zip(_RESOURCE_NAMES, resources)), f"job {d['workdir']!r}: ")
            n, rpn, tpr, tpc, gpr, npc, wall = (checked[name] for name in _RESOURCE_NAMES)
        data, launch_params, parents, cleanup = d["data"], d["launch_params"], d["parent_ids"], d["pending_file_cleanup"]
        if data:
            data = dumps(field_db.check_json_dict("data", data, f"job {d['workdir']!r}: "))
        if launch_params:
            launch_params = dumps(field_db.check_str_dict("launch_params", launch_params, f"job {d['workdir']!r}: "))
        if parents:
            parents = dumps(field_db.check_parent_ids(parents, f"job {d['workdir']!r}: "))
        if cleanup not in (True, False):
            field_db.check_bool("pending_file_cleanup", cleanup, f"job {d['workdir']!r}: ")
        params_text, params_pickled = encode_parameters(params) if params else ("{}", None)
        return (d["workdir"], info.id, tags_text, params_text, data or "{}", n, rpn, tpr, tpc, gpr, npc,
                launch_params or "{}", wall, parents or "[]", 1 if cleanup else 0, params_pickled)

    def validate(self) -> None:
        """Check a new job against its app (required and known parameters), its tags and resources, as
        ``save()`` and ``bulk_create`` do, without writing anything; raises ValidationError."""
        if not self._is_new:
            return
        self._creation_row()

    def _materialize_row(self) -> Dict[str, Any]:
        t, job_id, state, now = self.__dict__.pop("_new_row")
        row = dict(zip(job_db.NEW_JOB_COLUMNS, t))
        row.update(id=job_id, state=state, last_update=now, created=now, return_code=None, batch_job_id=None,
                   serialized_return_value=None, serialized_exception=None, version=1)
        return row

    def _mark_created(self, t: Tuple[Any, ...], job_id: int, state: str, now: float) -> None:
        d = self.__dict__
        d["id"] = job_id
        d["state"] = _STATES[state]
        d["_new_row"] = (t, job_id, state, now)
        d["_row"] = LAZY_ROW
        d.pop("transfers", None)

    def _created_by_command(self, detail: Any, result: Any) -> None:
        index, row = detail
        self._mark_created(row, int(result["ids"][index]), str(result["states"][index]), float(result.get("created") or time.time()))

    # ---------------------------------------------------------------- persistence
    def save(self) -> None:
        """Create the job, or write what changed (a state change goes through the state machine). Through a relay
        whose site is offline the create is queued: ``job.id`` stays None and ``job.queued_command`` names the
        command until ``refresh_from_db()`` finds it applied."""
        if self._is_new:
            Job.objects.bulk_create([self])
            return
        Job.objects.bulk_update([self])

    def delete(self) -> None:
        """Delete the job (refused while a launcher holds it)."""
        site = self.__dict__["_site"]
        self._refuse_if_queued()
        try:
            if site.backend.delete_jobs([int(self.id or 0)]) == 0:
                raise self.DoesNotExist(f"job {self.id} no longer exists")
        except CommandPending as e:  # kept by the relay for its offline site: refresh_from_db() resolves it
            self._queued_pending(e, "delete")
            return
        self._deleted()  # as in Balsam: a deleted job has no id (saving it again creates a new job)

    # ---------------------------------------------------------------- parameters, app, paths
    def get_parameters(self) -> Dict[str, Any]:
        """The job's parameters."""
        return dict(self.parameters)

    def set_parameters(self, parameters: Dict[str, Any]) -> None:
        """Replace the job's parameters (written on save)."""
        self.parameters = dict(parameters)

    @property
    def app(self) -> Any:
        """The job's ApplicationDefinition class, loaded from the site."""
        from balsam._api.app import ApplicationDefinition

        return ApplicationDefinition.load_by_id(self.app_id, site=self.__dict__["_site"])

    def resolve_workdir(self, data_path: Optional[Path] = None) -> Path:
        """The absolute path of the workdir (under the site's data/ folder)."""
        base = Path(data_path) if data_path is not None else self.__dict__["_site"].layout.data
        return base / self.workdir

    @property
    def workdir_path(self) -> Path:
        """The absolute path of the job's workdir."""
        return self.resolve_workdir()

    def parent_query(self) -> Query["Job"]:
        """The job's parents, as a query (a parent at another site is read from its own site)."""
        ids = list(self.parent_ids)
        if any(site_of(p) not in (0, self.site_id) for p in ids):
            return Job.objects.filter(id=ids)
        return Job.objects.filter(id=ids, site_id=self.site_id)

    def child_query(self) -> Query["Job"]:
        """The jobs that depend on this one."""
        return Job.objects.filter(parent_id=[self.id], site_id=self.site_id)

    def history(self) -> List[Any]:
        """The job's EventLog in the order the changes were applied (timestamps may come from other hosts' clocks)."""
        from balsam._api.models import EventLog

        return list(EventLog.objects.filter(job_id=self.id, site_id=self.site_id).order_by("id"))

    def why(self) -> List[str]:
        """Why the job is in its state and what would move it on, in plain words (``balsam job show``'s "Why")."""
        from balsam._api.diagnosis import why

        return why(self)

    # ---------------------------------------------------------------- workflows (Balsam 0.x's dag module)
    @classmethod
    def current(cls) -> "Job":
        """The job this process runs as (from ``BALSAM_JOB_ID``, which the launcher sets for every job)."""
        import os

        raw = os.environ.get("BALSAM_JOB_ID", "")
        if not raw.strip().isdigit():
            raise ValidationError("Job.current() works inside a job run by a Balsam launcher (BALSAM_JOB_ID is not set)")
        return cls.objects.get(id=int(raw))

    def spawn_child(self, app: Any, workdir: Union[str, Path], *, tags: Optional[Dict[str, str]] = None,
                    job_options: Optional[Dict[str, Any]] = None, **params: Any) -> "Job":
        """Create a job of ``app`` at this job's site that runs after this job finishes; ``params`` are its
        parameters, ``job_options`` other job fields (num_nodes, gpus_per_rank, ...), ``tags`` default to this
        job's tags. Works from any node of the allocation."""
        child = Job(workdir, app_id=app, site_name=self.__dict__["_site"].name, parameters=params,
                    tags=dict(self.tags) if tags is None else tags, parent_ids=[int(self.id or 0)], **(job_options or {}))
        child.save()
        return child

    def clone(self, **changes: Any) -> "Job":
        """A new job like this one (app, parameters, tags, resources, parents) with ``changes`` applied; the
        workdir defaults to this one's with a ``.cloneN`` suffix."""
        fields = {k: getattr(self, k) for k in ("tags", "parameters", "data", "num_nodes", "ranks_per_node", "threads_per_rank",
                                                 "threads_per_core", "launch_params", "gpus_per_rank", "node_packing_count",
                                                 "wall_time_min", "parent_ids", "pending_file_cleanup")}
        fields = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in fields.items()}
        workdir = changes.pop("workdir", None)
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValidationError(f"clone(): {sorted(unknown)[0]!r} is not a job field that can be changed")
        fields.update(changes)
        site = self.__dict__["_site"]
        if workdir is None:
            taken = {j.workdir for j in Job.objects.filter(site_id=self.site_id, workdir__contains=f"{self.workdir}.clone")}
            n = 1
            while f"{self.workdir}.clone{n}" in taken:
                n += 1
            workdir = f"{self.workdir}.clone{n}"
        twin = Job(workdir, app_id=self.app_id, site_name=site.name, **fields)
        twin.save()
        return twin

    def kill(self) -> None:
        """Kill the job (USER_KILLED); jobs waiting on it fail with the reason."""
        self.state = JobState.USER_KILLED
        self.save()

    def add_parent(self, *parents: Union["Job", int]) -> None:
        """Make this job wait for more parents (only before it starts); see :func:`add_dependency`."""
        ids = [p.id if isinstance(p, Job) else q.as_int("parent", p, "a job id") for p in parents]
        self.parent_ids = list(self.parent_ids) + [i for i in ids if i not in self.parent_ids]
        self.save()

    # ---------------------------------------------------------------- futures
    def done(self) -> bool:
        """Refresh, then True if the job reached JOB_FINISHED, FAILED or USER_KILLED."""
        self.refresh_from_db()
        return self.state in DONE_STATES

    def result_nowait(self) -> Any:
        """The return value of a finished run() job, or its exception re-raised; Job.NoResult if not done.

        A job not yet done here is read again first (one query), so a result that is available is returned."""
        if self.id is not None and self.state not in DONE_STATES and self.serialized_exception is None:
            self.refresh_from_db()
        return self._result_here()

    def _result_here(self) -> Any:
        """result_nowait() on the job as this object holds it (result() has just read it)."""
        state = self.state
        if state not in DONE_STATES and self.serialized_exception is None:
            raise Job.NoResult(f"job {self.id} is {state}: no result yet")
        if self.serialized_exception is not None:
            exc, tb = unpickle_value(self._loadable("serialized_exception"))
            if tb:
                exc.__cause__ = RemoteTraceback(tb)
            raise exc
        if state == JobState.JOB_FINISHED:
            return unpickle_value(self._loadable("serialized_return_value"))
        raise JobFailed(f"job {self.id} ended {state}: {self._last_message()}")

    def _loadable(self, column: str) -> Optional[bytes]:
        """The job's pickled result in ``column``, checked first when it came through the relay (a pickle runs
        code when loaded: only what the job's site signed is loaded; DESIGN.md section 7)."""
        blob = getattr(self, column)
        if blob is None:
            return None
        return self.__dict__["_site"].loadable_result(bytes(blob), int(self.id or 0), column)  # type: ignore[no-any-return]

    def _last_message(self) -> str:
        return self.__dict__["_site"].backend.last_event_message(int(self.id or 0)) or "no message recorded"

    def result(self, timeout: Optional[float] = None) -> Any:
        """Wait for the job to finish, then return its value or re-raise its exception.

        Raises concurrent.futures.TimeoutError after ``timeout`` seconds.
        """
        done, _ = Job.objects.wait([self], timeout=timeout)
        if not done:
            raise concurrent.futures.TimeoutError(f"job {self.id} did not finish within {timeout} s")
        return self._result_here()


def _checked_versions(group: Sequence[Job]) -> Dict[int, int]:
    """App id -> the version the jobs' parameters were checked against (insert_jobs re-checks any other)."""
    checked: Dict[int, int] = {}
    mixed: Set[int] = set()
    for job in group:
        info = job.__dict__["_app"]
        if checked.setdefault(info.id, info.version) != info.version:
            mixed.add(info.id)
    return {a: v for a, v in checked.items() if a not in mixed}


def _mark_all_created(group: Sequence[Job], rows: Sequence[Tuple[Any, ...]], ids: Sequence[int], states: Sequence[str],
                      now: float) -> None:
    """What :meth:`Job._mark_created` does, for every job of a bulk creation in one loop."""
    lazy, by_name = LAZY_ROW, _STATES
    for job, row, job_id, state in zip(group, rows, ids, states):
        d = job.__dict__
        d["id"] = job_id
        d["state"] = by_name[state]
        d["_new_row"] = (row, job_id, state, now)
        d["_row"] = lazy
        if "transfers" in d:
            del d["transfers"]


def _insert_rows(conn: Any, group: Sequence[Job], rows: Sequence[Tuple[Any, ...]], now: float) -> None:
    transfers = {i: job.__dict__["transfers"] for i, job in enumerate(group) if job.__dict__.get("transfers")}
    first, states = job_db.insert_jobs(conn, rows, transfers, now=now, checked_app_versions=_checked_versions(group))
    for i, (job, row) in enumerate(zip(group, rows)):
        job._mark_created(row, first + i, states.get(i, JobState.STAGED_IN), now)


def insert_job_group(conn: Any, jobs: Sequence[Job], now: float) -> None:
    """Insert new jobs of one site inside the caller's write transaction (DAG instantiation builds a workflow
    level by level in one transaction); the Job objects get their ids and states."""
    _insert_rows(conn, jobs, [job._creation_row() for job in jobs], now)


def add_dependency(parent: Union[Job, int], child: Union[Job, int]) -> None:
    """Make ``child`` wait for ``parent`` (Balsam 0.x's ``dag.add_dependency``): only a child that has not
    started may gain a parent; an unfinished parent sends it back to AWAITING_PARENTS, a failed one fails it."""
    job = child if isinstance(child, Job) else Job.objects.get(id=q.as_int("child", child, "a job id"))
    job.add_parent(parent)


class JobManager(JobWaiting, Manager[Job]):
    """``Job.objects``."""

    def bulk_create(self, jobs: Sequence[Job]) -> List[Job]:
        """Create many jobs in one transaction per site; the given Job objects are updated in place and returned."""
        with paused_gc():
            return self._bulk_create(jobs)

    def _bulk_create(self, jobs: Sequence[Job]) -> List[Job]:
        groups: Dict[Path, Tuple["SiteRef", List[Job], List[Tuple[Any, ...]]]] = {}
        last_site: Any = None
        add_job: Any = None
        add_row: Any = None
        if isinstance(jobs, (str, bytes, dict)) or not isinstance(jobs, Iterable):
            raise ValidationError(f"bulk_create takes a list of Job objects, got {jobs!r:.80}")
        for job in jobs:
            if type(job) is not Job and not isinstance(job, Job):
                raise ValidationError(f"bulk_create takes Job objects, got {job!r:.80}")
            d = job.__dict__
            if d.get("_row") is not None:
                raise ValidationError(f"job {job.id} already exists")
            if d.get("_queued") is not None:
                raise ValidationError(f"job {d.get('workdir')!r} is already queued at the relay as command {d['_queued'][0]}: "
                                      "refresh_from_db() resolves it once its site syncs")
            site = d["_site"]
            if site is not last_site:  # jobs of one bulk call nearly always share a site
                entry = groups.get(site.path)
                if entry is None:
                    entry = groups[site.path] = (site, [], [])
                add_job, add_row = entry[1].append, entry[2].append
                last_site = site
            add_job(job)
            add_row(job._creation_row())
        for site, group, rows in groups.values():
            transfers = {i: job.__dict__["transfers"] for i, job in enumerate(group) if job.__dict__.get("transfers")}
            if transfers:
                _sites.current_policies(site)  # transfer locations come from settings.yml, which may have changed
            try:
                ids, states, now = site.backend.create_jobs(rows, transfers, checked_app_versions=_checked_versions(group))
            except ValidationError as exc:
                invalidate_app_cache()  # an app may have been re-synced elsewhere: the next try reads it afresh
                if rerun.in_hook() and "already used" in str(exc):
                    self._create_again(site, group, rows, exc)
                    continue
                raise
            except CommandPending as e:
                if e.command_id is None:
                    raise
                # The relay keeps the create for its site (offline now): each job is a provisional handle that
                # refresh_from_db() (or Job.objects.resolve) turns into the real job once the site applied it.
                for i, (job, row) in enumerate(zip(group, rows)):
                    job._queue(e.command_id, (i, row), "create", str(e))
                logger.warning("%s", e)
                continue
            _mark_all_created(group, rows, ids, states, now)
        return list(jobs)

    def _create_again(self, site: "SiteRef", group: List[Job], rows: List[Tuple[Any, ...]], refused: ValidationError) -> None:
        """A hook running again asked for jobs whose workdirs are taken: those it made before are taken as they are,
        the others created (see :mod:`balsam._api.rerun`); ``refused`` is raised, saying why, if a taken one differs."""
        same, differ = rerun.made_before(site, rows, Job._columns)
        if differ or not same:
            raise ValidationError("; ".join([str(refused), *differ])) from None
        for i, row in same.items():
            group[i]._reload_from(row)
        rest = [i for i in range(len(rows)) if i not in same]
        if rest:
            self._bulk_create([group[i] for i in rest])

    def resolve(self, jobs: Sequence[Job]) -> List[Job]:
        """Resolve jobs whose create, change or delete the relay queued (``job.queued_command``): those the site
        applied get their real ids and rows (one request per command); returns the jobs still queued. A refused
        write raises the site's error (a refused create leaves those jobs new again)."""
        return resolve_all(jobs, self.bulk_refresh)

    def bulk_update(self, jobs: Sequence[Job]) -> None:
        """Write the changed fields of many jobs (state changes through the state machine) per site."""
        if isinstance(jobs, (str, bytes, dict)) or not isinstance(jobs, Iterable):
            raise ValidationError(f"bulk_update takes a list of Job objects, got {jobs!r:.80}")
        bad = next((job for job in jobs if not isinstance(job, Job)), None)
        if bad is not None:
            raise ValidationError(f"bulk_update takes Job objects, got {bad!r:.80}")
        if any(job._is_new for job in jobs):
            raise ValidationError("bulk_update needs saved jobs; use bulk_create for new ones")
        for job in jobs:
            job._refuse_if_queued()
        for site, group in by_site(jobs):
            updates: List[Tuple[int, Dict[str, Any]]] = []
            changes: List[StateChange] = []
            parents: List[Tuple[int, List[int]]] = []
            reads: List[Read] = []
            for job in group:
                fields = job._changed_fields()
                if fields:  # what the save is made on: the site merges it with what moved there since, or refuses it
                    read = read_of(int(job.id or 0), row_of(job) or {}, list(fields))
                    if read is not None:
                        reads.append(read)
                state = fields.pop("state", None)
                new_parents = fields.pop("parent_ids", None)
                if fields:
                    updates.append((int(job.id or 0), job_db.check_job_update(int(job.id or 0), fields)))
                if new_parents is not None:
                    old = loads((row_of(job) or {})["parent_ids"])
                    if not set(old) <= set(new_parents):
                        raise ValidationError(f"job {job.id}: parents can be added but not removed")
                    parents.append((int(job.id or 0), [p for p in new_parents if p not in old]))
                if state is not None:
                    ts = job.__dict__.get("state_timestamp")
                    name = to_state(state).value
                    changes.append(StateChange(int(job.id or 0), name, timestamp=None if ts is None else q.to_timestamp(ts),
                                               data=job.__dict__.get("state_data"),
                                               session_id=job.__dict__.get("_session_id") if name == JobState.RUNNING else None))
            try:
                site.backend.update_jobs(updates, parents, changes, reads)
            except CommandPending as e:  # kept by the relay for its offline site: each job holds the handle
                for job in group:
                    job._queued_pending(e, "update")
                continue
            self._reload(site, group)

    def _reload(self, site: "SiteRef", group: List[Job]) -> None:
        by_id = {job.id: job for job in group}
        for chunk_start in range(0, len(group), 20000):
            ids = [j.id for j in group[chunk_start : chunk_start + 20000]]
            for row in site.backend.select("job", {"id": ids}, columns=Job._columns):
                job = by_id[row[0]]
                job._reload_from(row)
                job.__dict__["state_data"] = None
                job.__dict__["state_timestamp"] = None

    def bulk_refresh(self, jobs: Sequence[Job]) -> None:
        """Reload many jobs from their sites."""
        for site, group in by_site(jobs):
            self._reload(site, group)

    def _query_update(self, query: Query[Job], fields: Dict[str, Any]) -> int:
        unknown = set(fields) - field_db.UPDATABLE_FIELDS - {"state", "state_data", "state_timestamp"}
        if unknown:
            raise ValidationError(f"job field {sorted(unknown)[0]!r} cannot be updated (updatable: "
                                  f"{', '.join(sorted(field_db.UPDATABLE_FIELDS))}; results and return codes are the launcher's)")
        state = fields.pop("state", None)
        state_data = fields.pop("state_data", None)
        state_ts = fields.pop("state_timestamp", None)
        total = 0
        queued: List[QueuedWrite] = []
        for site, ids in query._per_site_ids():
            if not ids:
                continue
            changes: List[StateChange] = []
            if state is not None:
                name = to_state(state).value
                ts = None if state_ts is None else q.to_timestamp(state_ts)
                changes = [StateChange(i, name, timestamp=ts, data=state_data) for i in ids]
            if fields and ids:
                fields = job_db.check_job_update(ids[0], fields)  # refused alike on every backend, before any is written
            try:
                site.backend.update_jobs([(i, dict(fields)) for i in ids] if fields else [], (), changes)
            except CommandPending as e:  # kept by the relay for its offline site
                queued.append(QueuedWrite.from_pending(site, e, f"update of {len(ids)} jobs", len(ids)))
            total += len(ids)
        return WriteCount(total, queued)

    def _query_delete(self, query: Query[Job]) -> int:
        total = 0
        queued: List[QueuedWrite] = []
        for site, ids in query._per_site_ids():
            try:
                total += site.backend.delete_jobs(ids)
            except CommandPending as e:  # kept by the relay for its offline site
                queued.append(QueuedWrite.from_pending(site, e, f"delete of {len(ids)} jobs", len(ids)))
                total += len(ids)
        return WriteCount(total, queued)


bind_manager(Job, JobManager)

__all__ = ["Job", "JobManager", "WaitResult", "JobFailed", "RemoteTraceback", "resolve_app", "invalidate_app_cache", "ALL_COMPLETED",
           "FIRST_COMPLETED", "AppError"]
