"""The API models besides Job: Site, App, BatchJob, Session, TransferItem, EventLog."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Union

from balsam._api import sites as _sites
from balsam._api.base import Field, Manager, Model, PathStr, Query, TypedField, bind_manager, by_site, from_datetime
from balsam._api.jobs import Job, invalidate_app_cache
from balsam._api.queued import QueuedWrite, WriteCount, resolve_all
from balsam._api.schemas import plain
from balsam.db import batch_jobs as batch_db
from balsam.db import query as q
from balsam.db import sessions as session_db
from balsam.db.fields import check_str_dict, check_tags
from balsam.db.states import BatchJobState, to_batch_state
from balsam.exceptions import (
    AppDoesNotExist,
    AppMultipleObjectsReturned,
    CommandPending,
    JobLockedError,
    ReadOnlyError,
    SiteDoesNotExist,
    ValidationError,
)

if TYPE_CHECKING:
    from balsam._api.diagnosis import Submission
    from balsam._api.sites import SiteRef

logger = logging.getLogger(__name__)


def _single_site(site_id: Optional[int] = None, site_name: Optional[str] = None) -> "SiteRef":
    which = q.as_int("site_id", site_id, "a site id") if site_id is not None else site_name
    return _sites.single_site(which, how="pass site_id= or site_name=")


class _SimpleManager(Manager[Any]):
    """Creates rows with a plain INSERT and updates the changed columns."""


def _write_changes(obj: Model, table: str) -> None:
    changed = obj._changed_fields()
    if not changed:
        return
    fields = obj._fields
    site = obj.__dict__["_site"]
    obj._refuse_if_queued()
    encoded = {}
    for c, v in changed.items():
        try:
            encoded[c] = fields[c].encode(v)
        except (TypeError, ValueError):
            raise ValidationError(f"{type(obj).__name__} {obj.id}: {c} cannot be {v!r:.80}") from None
    try:
        site.backend.update_rows(table, [(int(obj.id or 0), encoded)])
    except CommandPending as e:  # kept by the relay for its offline site: refresh_from_db() resolves it
        obj._queued_pending(e, "update")
        return
    obj.refresh_from_db()


# ============================================================================================ Site
SITE_SPEC = q.TableSpec(
    table="site",
    label="Site",
    filters=q.with_comparisons({
        "id": q.ids_in("id"),
        "name": q.text_in("name"),
        "path": q.contains("path"),
        "last_refresh_after": q.after("last_refresh", "last_refresh_after"),
        "last_refresh_before": q.before("last_refresh", "last_refresh_before"),
    }),
    order_fields={"id": "id", "name": "name"},
    scope_keys=(),
)


class Site(Model):
    """A site: a directory with its own job DB on one host."""

    _spec = SITE_SPEC
    _does_not_exist = SiteDoesNotExist  # also the base of SiteNotFound: Site.DoesNotExist catches an unknown site=
    _columns = ("id", "name", "path", "uuid", "creation_date", "last_refresh", "globus_endpoint_id", "backfill_windows",
                "queued_jobs", "optional_batch_job_params", "allowed_projects", "allowed_queues", "transfer_locations", "version")

    id = Field(writable=False)
    name: str = Field(writable=False)  # type: ignore[assignment]
    path: Path = Field("path", writable=False)  # type: ignore[assignment]
    uuid: str = Field(writable=False)  # type: ignore[assignment]
    creation_date = Field("time", writable=False)
    last_refresh = Field("time")
    globus_endpoint_id: Optional[str] = Field()  # type: ignore[assignment]
    # "records": each queue, window and queued job also reads as attributes, as Balsam 0.7's models did.
    backfill_windows: Dict[str, List[Dict[str, int]]] = Field("records", dict)  # type: ignore[assignment]
    queued_jobs: Dict[str, Any] = Field("records", dict)  # type: ignore[assignment]
    optional_batch_job_params: Dict[str, str] = Field("json", dict)  # type: ignore[assignment]
    allowed_projects: List[str] = Field("json", list)  # type: ignore[assignment]
    allowed_queues: Dict[str, Dict[str, int]] = Field("records", dict)  # type: ignore[assignment]
    transfer_locations: Dict[str, str] = Field("json", dict)  # type: ignore[assignment]
    version = Field(writable=False)

    def __init__(self, name: str, path: Union[str, Path], preset: str = "local") -> None:
        self._init_fields({})
        self.__dict__["name"] = name
        self.__dict__["path"] = Path(path)
        self.__dict__["_preset"] = preset

    def _repr_fields(self) -> Sequence[str]:
        return ("id", "name", "path")

    @property
    def site_id(self) -> Optional[int]:
        return None if self.id is None else int(self.id)

    @property
    def hostname(self) -> str:
        """The site's home host (the only host that may open its DB)."""
        return str(self.__dict__["_site"].host)

    def save(self) -> None:
        """Create the site (a new directory from its preset) or write changed fields."""
        if self._is_new:
            from balsam.site import init_site

            entry = init_site(self.__dict__["path"], self.__dict__["name"], self.__dict__.get("_preset", "local"))
            ref = _sites.ref_for_root(Path(entry.path))
            self.__dict__["_site"] = ref
            self.__dict__.pop("name", None)
            self.__dict__.pop("path", None)
            self.__dict__["_row"] = {}
            self.refresh_from_db()
            return
        _write_changes(self, "site")

    def refresh_from_db(self) -> None:
        site = self.__dict__["_site"]
        self._reload_from(site.backend.site_row(self._columns))

    def delete(self) -> None:
        """Remove the site: its directory (jobs, data, logs) and its registry entry."""
        from balsam.site import Registry, refuse_away_from_home

        site = self.__dict__["_site"]
        refuse_away_from_home(site.layout, "deleted")
        from balsam.db.job_reads import count_held

        with site.store.read() as conn:
            running = count_held(conn)
        if running:
            raise JobLockedError(f"site {site.name}: {running} jobs are held by running launchers; stop them first")
        Registry().unregister(site.name)
        _sites.reset()
        shutil.rmtree(site.path)
        self._deleted()  # as in Balsam 0.7: a deleted site has no id


class _SiteQuery(Query[Site]):
    def _fetch(self) -> List[Site]:
        if self._cache is not None:
            return self._cache
        sites = _sites.reachable_sites()
        current = _sites.current_site()
        if current is not None and all(s.path != current.path for s in sites):
            sites.append(current)
        if not sites:  # a host with no site of its own (a laptop): the logged-in user's sites at the relay, as for jobs
            sites = _sites.relay_scope()
        results: List[Site] = []
        for site in sites:
            if site.is_home:
                rows = q.select(site.store.conn, SITE_SPEC, dict(self._filters), columns=Site._columns)
            else:
                rows = [site.backend.site_row(Site._columns)] if _matches(site, self._filters) else []
                rows = [r for r in rows if _refreshed_as_asked(dict(zip(Site._columns, r)).get("last_refresh"), self._filters)]
            results.extend(Site._from_row(site, r) for r in rows)
        from balsam._api.base import _merge_sort

        results = _merge_sort(results, self._order or ("id",))[(self._lo or 0) : self._hi]
        self._cache = results
        return results

    def count(self) -> int:
        return len(self._fetch())


def _matches(site: "SiteRef", filters: Dict[str, Any]) -> bool:
    """Site filters for a site reached over HTTP (id, name, path)."""
    for key, value in filters.items():
        values = value if isinstance(value, (list, tuple, set)) else [value]
        if key == "id" and site.id not in {int(v) for v in values}:
            return False
        if key == "name" and site.name not in {str(v) for v in values}:
            return False
        if key == "path" and str(value) not in str(site.path):
            return False
    return True


_REFRESH_TESTS = {"last_refresh_after": ">", "last_refresh_before": "<", "last_refresh__gt": ">", "last_refresh__gte": ">=",
                  "last_refresh__lt": "<", "last_refresh__lte": "<="}


def _refreshed_as_asked(last_refresh: Any, filters: Dict[str, Any]) -> bool:
    """The last_refresh filters for a site reached over HTTP or the relay, tested on the row it answered with (the
    same comparisons, to the microsecond, as the site's own query: balsam.db.query.compare)."""
    import operator

    ops = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
    for key, op in _REFRESH_TESTS.items():
        if key in filters:
            if last_refresh is None:
                return False
            slack = q.TIME_RESOLUTION_S if op in (">", "<=") else -q.TIME_RESOLUTION_S
            if not key.startswith("last_refresh__"):  # Balsam 0.7's _after (and _before): plain comparisons
                slack = 0.0
            if not ops[op](q.to_timestamp(last_refresh, "last_refresh"), q.to_timestamp(filters[key], key) + slack):
                return False
    return True


class SiteManager(Manager[Site]):
    """``Site.objects``: the sites registered on this host (and the current one)."""

    def all(self) -> Query[Site]:
        return _SiteQuery(self)

    def filter(self, **kwargs: Any) -> Query[Site]:
        return _SiteQuery(self).filter(**kwargs)

    def get(self, name_or_id: Union[str, int, None] = None, **kwargs: Any) -> Site:
        """The one site matching the filters; as in Balsam 0.7, ``Site.objects.get("my-site")`` takes a name (or an
        id) positionally."""
        if name_or_id is not None:
            kwargs["id" if isinstance(name_or_id, int) else "name"] = name_or_id
        return _SiteQuery(self).get(**kwargs)

    def first(self) -> Optional[Site]:
        return _SiteQuery(self).first()

    def count(self) -> int:
        return _SiteQuery(self).count()


bind_manager(Site, SiteManager)


# ============================================================================================ App
class App(Model):
    """The stored form of an ApplicationDefinition (``balsam app ls`` lists these)."""

    _spec = q.APP
    _does_not_exist = AppDoesNotExist  # also the base of AppNotFound (an unknown app name or id of a job or loader)
    _multiple_objects = AppMultipleObjectsReturned
    _columns = ("id", "site_id", "name", "description", "kind", "serialized_class", "source_code", "parameters",
                "var_keyword", "transfers", "created", "last_update", "version")

    id = Field(writable=False)
    name: str = Field()  # type: ignore[assignment]
    description: str = Field(default="")  # type: ignore[assignment]
    kind: str = Field(writable=False)  # type: ignore[assignment]
    serialized_class: str = Field(writable=False)  # type: ignore[assignment]
    source_code: str = Field(writable=False)  # type: ignore[assignment]
    parameters: Dict[str, Dict[str, Any]] = Field("json", dict)  # type: ignore[assignment]
    var_keyword: bool = Field("bool", False)  # type: ignore[assignment]
    transfers: Dict[str, Dict[str, Any]] = Field("json", dict)  # type: ignore[assignment]
    created = Field("time", writable=False)
    last_update = Field("time", writable=False)
    version = Field(writable=False)

    def __init__(self) -> None:
        raise ValidationError("apps are created by defining an ApplicationDefinition and calling .sync()")

    def _repr_fields(self) -> Sequence[str]:
        return ("id", "name", "kind")

    def save(self) -> None:
        """Write changed fields (name, description)."""
        _write_changes(self, "app")
        invalidate_app_cache()

    def delete(self) -> None:
        """Delete the app and its jobs (refused while a launcher holds any of them)."""
        self._refuse_if_queued()
        try:
            self.__dict__["_site"].backend.delete_rows("app", [int(self.id or 0)])
        except CommandPending as e:  # kept by the relay for its offline site: refresh_from_db() resolves it
            self._queued_pending(e, "delete")
        invalidate_app_cache()


class AppManager(Manager[App]):
    def _query_delete(self, query: Query[App]) -> int:
        """Delete the matching apps and their jobs: one transaction per site (from another host, one request)."""
        n = 0
        try:
            for site, ids in query._per_site_ids():
                if ids:
                    n += site.backend.delete_rows("app", ids)
        finally:
            invalidate_app_cache()
        return n


bind_manager(App, AppManager)


# ============================================================================================ BatchJob
def _queue_policies(queues: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Queue policies as ``BatchJob.validate`` takes them (dicts or Balsam 0.7's AllowedQueue objects, whose wall time
    limit is ``max_walltime``) as the site row holds them: name -> {max_nodes, max_wall_time_min, max_queued_jobs}."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, policy in queues.items():
        policy = plain(policy)  # an AllowedQueue
        raw = policy if isinstance(policy, Mapping) else vars(policy)
        limits = {"max_nodes": raw.get("max_nodes"), "max_wall_time_min": raw.get("max_wall_time_min", raw.get("max_walltime")),
                  "max_queued_jobs": raw.get("max_queued_jobs")}
        out[str(name)] = {k: v for k, v in limits.items() if v is not None}
    return out


class BatchJob(Model):
    """A pilot allocation: a batch job that runs a launcher on ``num_nodes`` nodes."""

    _spec = q.BATCH_JOB
    _columns = ("id", "scheduler_id", "project", "queue", "num_nodes", "wall_time_min", "job_mode", "optional_params",
                "filter_tags", "partitions", "state", "status_info", "start_time", "end_time", "created", "last_update", "version")

    id = Field(writable=False)
    scheduler_id: Optional[int] = Field()  # type: ignore[assignment]
    project: str = Field()  # type: ignore[assignment]
    queue: str = Field()  # type: ignore[assignment]
    num_nodes: int = Field()  # type: ignore[assignment]
    wall_time_min: int = Field()  # type: ignore[assignment]
    job_mode: str = Field()  # type: ignore[assignment]
    optional_params: Dict[str, str] = Field("json", dict)  # type: ignore[assignment]
    filter_tags: Dict[str, str] = Field("json", dict)  # type: ignore[assignment]
    partitions: Optional[List[Dict[str, Any]]] = Field("json", None)  # type: ignore[assignment]
    state: str = Field(default=BatchJobState.pending_submission.value)  # type: ignore[assignment]
    status_info: Dict[str, str] = Field("json", dict)  # type: ignore[assignment]
    start_time = Field("time")
    end_time = Field("time")
    created = Field("time", writable=False)
    last_update = Field("time", writable=False)
    version = Field(writable=False)

    def __init__(
        self,
        num_nodes: int,
        wall_time_min: int,
        job_mode: str = "mpi",
        queue: Optional[str] = None,
        project: Optional[str] = None,
        optional_params: Optional[Dict[str, str]] = None,
        filter_tags: Optional[Dict[str, str]] = None,
        partitions: Optional[List[Any]] = None,
        site_id: Optional[int] = None,
        site_name: Optional[str] = None,
    ) -> None:
        self._init_fields({})
        site = _single_site(site_id, site_name)
        self.__dict__["_site"] = site
        d = self.__dict__
        d.update(num_nodes=num_nodes, wall_time_min=wall_time_min, job_mode=str(job_mode) if isinstance(job_mode, str) else job_mode,
                 queue=queue, project=project, optional_params=check_str_dict("optional_params", optional_params or {}),
                 filter_tags=check_tags(filter_tags or {}, name="filter_tags"),
                 partitions=batch_db.check_partitions([plain(p) for p in partitions] if isinstance(partitions, (list, tuple)) else partitions),
                 state=BatchJobState.pending_submission.value, status_info={}, scheduler_id=None, start_time=None, end_time=None)

    def _repr_fields(self) -> Sequence[str]:
        return ("id", "scheduler_id", "queue", "num_nodes", "wall_time_min", "job_mode", "state")

    def validate(self, allowed_queues: Optional[Mapping[str, Any]] = None, allowed_projects: Optional[Sequence[str]] = None,
                 optional_batch_job_params: Optional[Mapping[str, Any]] = None) -> None:
        """Check the BatchJob against its site's queues, projects and optional parameters (settings.yml); or, as
        Balsam 0.7's ``validate(allowed_queues, allowed_projects, optional_batch_job_params)``, against the ones
        given (queue policies as dicts or objects with max_nodes and max_wall_time_min, 0.7's max_walltime too;
        an empty list or mapping allows any). A ValidationError (a ValueError, as 0.7 raised) names what is wrong."""
        site = self.__dict__["_site"]
        d = self.__dict__
        # Through the fields' descriptors: a loaded BatchJob reads its values from its row when first asked.
        fields = {k: getattr(self, k) for k in ("num_nodes", "wall_time_min", "job_mode", "queue", "project", "optional_params", "partitions")}
        if allowed_queues is not None or allowed_projects is not None or optional_batch_job_params is not None:
            checked = batch_db.check_policies(batch_db.check_batch_values(fields), _queue_policies(allowed_queues or {}),
                                              [str(p) for p in allowed_projects or []], dict(optional_batch_job_params or {}),
                                              "by the policies given")
        else:
            _sites.current_policies(site)  # settings.yml edited since: its queues and projects count now
            if not site.is_home:
                return  # the agent checks it against the site's policies when it is saved
            checked = batch_db.check_batch_job(site.store.conn, fields, new=self._is_new)
        d["queue"], d["project"] = checked["queue"], checked["project"]

    def save(self) -> None:
        """Create the BatchJob (validated against the site's policies) or write changed fields."""
        site = self.__dict__["_site"]
        if self.__dict__.get("_queued") is not None:
            raise ValidationError(f"this BatchJob is already queued at the relay as command {self.queued_command}: "
                                  "refresh_from_db() resolves it once its site syncs")
        if self._is_new:
            _sites.current_policies(site)  # settings.yml edited since: its queues and projects count now
            d = self.__dict__
            batch_db.check_batch_values({k: d[k] for k in ("num_nodes", "wall_time_min", "job_mode", "queue", "project",
                                                            "optional_params", "partitions")})
            try:
                new_id = site.backend.create_batch_job(dict(
                    num_nodes=d["num_nodes"], wall_time_min=d["wall_time_min"], job_mode=d["job_mode"], queue=d["queue"],
                    project=d["project"], optional_params=d["optional_params"], filter_tags=d["filter_tags"], partitions=d["partitions"]))
            except CommandPending as e:  # the relay keeps it for its offline site: a provisional handle until applied
                if e.command_id is None:
                    raise
                self._queue(e.command_id, None, "create", str(e))
                logger.warning("%s", e)
                return
            self.__dict__["_row"] = {"id": new_id}
            self.refresh_from_db()
            return
        changed = self._changed_fields()
        if "state" in changed:
            self.__dict__["state"] = to_batch_state(changed["state"]).value  # the store checks the transition
        _write_changes(self, "batch_job")

    def _created_by_command(self, detail: Any, result: Any) -> None:
        self.__dict__.pop("id", None)  # read (None) while queued
        self.__dict__["_row"] = {"id": int(result)}

    def delete(self) -> None:
        """Delete the BatchJob. One never submitted (``pending_submission``) or already ended is removed now; a
        queued or running one becomes ``pending_deletion``: the site agent asks the scheduler to cancel it and
        removes the record when the scheduler reports it ended (its running jobs end as RUN_TIMEOUT)."""
        backend = self.__dict__["_site"].backend
        self._refuse_if_queued()
        try:
            if backend.delete_rows("batch_job", [int(self.id or 0)]) == 0:
                raise ValidationError(f"batch job {self.id} does not exist (already deleted?)")
        except CommandPending as e:  # kept by the relay: refresh_from_db() shows it cancelling, or gone
            self._queued_pending(e, "cancel")
            return
        rows = backend.select("batch_job", {"id": int(self.id or 0)}, columns=("state",))
        if rows:  # queued or running: cancelling
            self.refresh_from_db()

    def partitions_to_cli_args(self) -> str:
        """The partitions as ``-p mode:nodes:k=v`` launcher arguments."""
        args = []
        for p in self.partitions or []:
            tags = ",".join(f"{k}={v}" for k, v in (p.get("filter_tags") or {}).items())
            args.append(f"-p {p['job_mode']}:{p['num_nodes']}" + (f":{tags}" if tags else ""))
        return " ".join(args)

    def jobs(self) -> Query[Job]:
        """The jobs that ran (or run) in this BatchJob."""
        return Job.objects.filter(batch_job_id=self.id, site_id=self.site_id)

    def preview_submission(self) -> "Submission":
        """The batch script and scheduler command line the site agent submits this BatchJob with (for a BatchJob
        not yet saved, with the id it would get). Nothing is written or submitted."""
        from balsam._api.diagnosis import preview_submission

        return preview_submission(self)


class BatchJobManager(Manager[BatchJob]):
    def bulk_update(self, batch_jobs: Sequence[BatchJob]) -> None:
        """Save the changed fields of many BatchJobs: one transaction per site (from another host, one request), so
        either every one changes or, when one is refused, none does."""
        if any(bj._is_new for bj in batch_jobs):
            raise ValidationError("bulk_update needs saved BatchJobs; save() a new one first")
        for site, group in by_site(batch_jobs):
            changed = []
            for bj in group:
                bj._refuse_if_queued()
                fields = bj._changed_fields()
                if "state" in fields:
                    fields["state"] = bj.__dict__["state"] = to_batch_state(fields["state"]).value  # the store checks the transition
                if fields:
                    changed.append((bj, {c: bj._fields[c].encode(v) for c, v in fields.items()}))
            if not changed:
                continue
            try:
                site.backend.update_rows("batch_job", [(int(bj.id or 0), fields) for bj, fields in changed])
            except CommandPending as e:  # kept by the relay for its offline site: refresh_from_db() resolves each
                for bj, _ in changed:
                    bj._queued_pending(e, "update")
                continue
            rows = {r[0]: r for r in site.backend.select("batch_job", {"id": [int(bj.id or 0) for bj, _ in changed]},
                                                         columns=BatchJob._columns)}
            for bj, _ in changed:
                if bj.id in rows:
                    bj._reload_from(rows[bj.id])

    def _query_update(self, query: Query[BatchJob], fields: Dict[str, Any]) -> int:
        """Set ``fields`` on every matching BatchJob, all in one transaction per site."""
        items = list(query)
        for bj in items:
            for k, v in fields.items():
                setattr(bj, k, v)
        self.bulk_update(items)
        return len(items)

    def _query_delete(self, query: Query[BatchJob]) -> int:
        """Delete (or cancel, then delete) every matching BatchJob: one transaction per site."""
        n = 0
        for site, ids in query._per_site_ids():
            if ids:
                n += site.backend.delete_rows("batch_job", ids)
        return n


bind_manager(BatchJob, BatchJobManager)


# ============================================================================================ Session
class Session(Model):
    """A lease under which a launcher or processing worker holds jobs."""

    _spec = q.SESSION
    _columns = ("id", "batch_job_id", "heartbeat", "created", "host", "pid", "label")

    id = Field(writable=False)
    batch_job_id: Optional[int] = Field(writable=False)  # type: ignore[assignment]
    heartbeat = Field("time", writable=False)
    created = Field("time", writable=False)
    host: str = Field(writable=False)  # type: ignore[assignment]
    pid: Optional[int] = Field(writable=False)  # type: ignore[assignment]
    label: str = Field(writable=False)  # type: ignore[assignment]

    def __init__(self, batch_job_id: Optional[int] = None, site_id: Optional[int] = None, site_name: Optional[str] = None,
                 label: str = "") -> None:
        self._init_fields({})
        self.__dict__["_site"] = _single_site(site_id, site_name)
        self.__dict__["_new"] = (batch_job_id, label)

    def save(self) -> None:
        if not self._is_new:
            return
        site = self.__dict__["_site"]
        batch_job_id, label = self.__dict__["_new"]
        sid = site.backend.create_session(host=_sites.this_host(), pid=os.getpid(), batch_job_id=batch_job_id, label=label)
        self.__dict__["_row"] = {"id": sid}
        self.refresh_from_db()

    def tick(self) -> None:
        """Renew the lease."""
        self.__dict__["_site"].backend.tick(int(self.id or 0))

    def acquire_jobs(
        self,
        max_num_jobs: int = 1000,
        states: Any = session_db.RUNNABLE_NAMES,
        filter_tags: Optional[Dict[str, str]] = None,
        app_ids: Optional[Sequence[int]] = None,
        serial_only: bool = False,
        max_nodes_per_job: Optional[float] = None,
        max_aggregate_nodes: Optional[float] = None,
        max_wall_time_min: Optional[float] = None,
        sort_by: Optional[str] = None,
    ) -> List[Job]:
        """Lock up to ``max_num_jobs`` jobs to this session and return them."""
        from balsam.db.states import to_states

        site = self.__dict__["_site"]
        names = sorted(s.value for s in to_states(states))
        if app_ids is not None and not isinstance(app_ids, list):  # a set (as Balsam 0.7's tests pass) or any iterable
            app_ids = list(app_ids)  # JSON carries lists: from another host a set was a TypeError
        rows = site.backend.acquire(int(self.id or 0), max_num_jobs, 0.0, states=names, filter_tags=filter_tags, app_ids=app_ids,
                                    serial_only=serial_only, max_nodes_per_job=max_nodes_per_job,
                                    max_aggregate_nodes=max_aggregate_nodes, max_wall_time_min=max_wall_time_min, sort_by=sort_by)
        ids = [r["id"] for r in rows]
        order = {i: n for n, i in enumerate(ids)}
        jobs = list(Job.objects.filter(id=ids, site_id=site.id)) if ids else []
        jobs.sort(key=lambda j: order[j.id])
        for job in jobs:
            job.__dict__["_session_id"] = self.id  # lets job.state = "RUNNING"; job.save() prove it holds the job
        return jobs

    def delete(self) -> None:
        """Release the lease: running jobs become RUN_TIMEOUT, the rest are unlocked."""
        self.__dict__["_site"].backend.release(int(self.id or 0))


bind_manager(Session)


# ============================================================================================ TransferItem
class TransferItem(Model):
    """One file or directory to stage in before a job runs, or out after it finishes."""

    _spec = q.TRANSFER_ITEM
    _columns = ("id", "job_id", "direction", "slot", "local_path", "remote_path", "location_alias", "recursive", "state",
                "task_id", "transfer_info", "last_update")

    id = Field(writable=False)
    job_id: int = Field(writable=False)  # type: ignore[assignment]
    direction: str = Field(writable=False)  # type: ignore[assignment]
    slot: str = Field(writable=False)  # type: ignore[assignment]
    local_path: str = TypedField(PathStr, writable=False)  # type: ignore[assignment]
    remote_path: str = TypedField(PathStr, writable=False)  # type: ignore[assignment]
    location_alias: str = Field(writable=False)  # type: ignore[assignment]
    recursive: bool = Field("bool", False, writable=False)  # type: ignore[assignment]
    state: str = Field()  # type: ignore[assignment]
    task_id: str = Field(default="")  # type: ignore[assignment]
    transfer_info: Dict[str, Any] = Field("json", dict)  # type: ignore[assignment]
    last_update = Field("time", writable=False)

    objects: ClassVar["TransferItemManager"]  # type: ignore[assignment]

    def __init__(self) -> None:
        raise ValidationError("transfer items are created from a job's transfers= and its app's transfer slots")

    def save(self) -> None:
        """Write state, task_id and transfer_info (moving the job along when its transfers finish). Through a relay,
        an edit its offline site has not applied yet is kept as ``queued_command`` (see :meth:`refresh_from_db`)."""
        TransferItem.objects.bulk_update([self])


class TransferItemManager(Manager[TransferItem]):
    def bulk_update(self, items: Sequence[TransferItem]) -> None:
        """Save many transfer items, one transaction per site. Items of a site the relay answers for (offline) keep
        the queued edit as their ``queued_command``; ``refresh_from_db()`` or :meth:`resolve` shows the outcome."""
        for item in items:
            item._refuse_if_queued()
        for site, group in by_site(items):
            changed = [(item, item._changed_fields()) for item in group]
            changed = [(item, fields) for item, fields in changed if fields]
            if not changed:
                continue
            try:
                site.backend.update_rows("transfer_item", [(int(item.id or 0), fields) for item, fields in changed])
            except CommandPending as e:  # kept by the relay for its offline site: each item holds the handle
                for item, _ in changed:
                    item._queued_pending(e, "update")
                continue
            self.bulk_refresh([item for item, _ in changed])

    def bulk_refresh(self, items: Sequence[TransferItem]) -> None:
        """Reload many transfer items from their sites (one read per site)."""
        for site, group in by_site(items):
            by_id = {int(item.id or 0): item for item in group}
            for row in site.backend.select("transfer_item", {"id": sorted(by_id)}, columns=TransferItem._columns):
                by_id[int(row[0])]._reload_from(row)

    def resolve(self, items: Sequence[TransferItem]) -> List[TransferItem]:
        """Resolve items whose edit the relay queued (``item.queued_command``): applied edits are read back (one
        request per command); returns the items still queued. A refused edit raises the site's error."""
        return resolve_all(items, self.bulk_refresh)

    def _query_update(self, query: Query[TransferItem], fields: Dict[str, Any]) -> int:
        """``TransferItem.objects.filter(...).update(...)``: how many items, counting those queued for offline sites
        (each site's queued part is in the answer's ``queued``)."""
        n = 0
        queued: List[QueuedWrite] = []
        for site, ids in query._per_site_ids():
            if not ids:
                continue
            try:
                site.backend.update_rows("transfer_item", [(i, dict(fields)) for i in ids])
            except CommandPending as e:  # kept by the relay for its offline site
                queued.append(QueuedWrite.from_pending(site, e, f"update of {len(ids)} transfer items", len(ids)))
            n += len(ids)
        return WriteCount(n, queued)


bind_manager(TransferItem, TransferItemManager)


# ============================================================================================ EventLog
class EventLog(Model):
    """One job state change: when, from, to, and why (read-only)."""

    _spec = q.EVENT
    _columns = ("id", "job_id", "timestamp", "from_state", "to_state", "data")
    _read_only = True

    id = Field(writable=False)
    job_id: int = Field(writable=False)  # type: ignore[assignment]
    timestamp = Field("time", writable=False)
    from_state: str = Field(writable=False)  # type: ignore[assignment]
    to_state: str = Field(writable=False)  # type: ignore[assignment]
    data: Dict[str, Any] = Field("json", dict, writable=False)  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # EventLog.objects.create(job_id=..., ...) lands here too: the same one line, not a TypeError about arguments
        # (and an AttributeError naming 'create', as Balsam 0.7's manager had none).
        raise ReadOnlyError("EventLog.objects has no attribute 'create': the EventLog is read-only: events are written by "
                            "job state changes")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self)._fields:
            raise ReadOnlyError(f"EventLog is read-only: its {name} cannot be set (events are written by job state changes)")
        super().__setattr__(name, value)

    def _repr_fields(self) -> Sequence[str]:
        return ("job_id", "timestamp", "from_state", "to_state", "data")

    def save(self) -> None:
        """Nothing to write: an event cannot be changed (setting a field is refused), so saving one is a no-op, as in
        Balsam 0.7."""


bind_manager(EventLog)

__all__ = ["Site", "App", "BatchJob", "Session", "TransferItem", "EventLog", "from_datetime"]
