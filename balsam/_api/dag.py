"""DAG templates instantiated many times (``balsam.api.DAG``).

::

    sweep = DAG("md-sweep", site="my-site")
    prep = sweep.node("prep", app=Prep, workdir="{run}/prep", params={"seed": "{seed}"})
    sims = [sweep.node(f"sim{k}", app=Simulate, workdir="{run}/sim" + str(k), params={"k": k, "temp": "{temp}"},
                       num_nodes=2, parents=[prep]) for k in range(4)]
    sweep.node("reduce", app=Reduce, workdir="{run}/reduce", parents=sims)
    sweep.save()
    runs = sweep.instantiate([{"run": f"r{i}", "seed": i, "temp": 300 + 5 * i} for i in range(1000)])
    runs[7].state()          # {"JOB_FINISHED": 6}

Placeholders are written ``{name}`` in workdirs, parameter values, tag values and resources (``{{`` is a
literal brace); see :mod:`balsam.db.dag_templates`. Every instance's jobs carry the tags ``dag=<name>``,
``dag_instance=<id>`` and ``dag_node=<node>``, so ``balsam job ls --tag dag_instance=7`` and every other tool
work on them. Everything goes through the site's backend, so DAGs work on the home host (SQLite) and from any
other host through the site agent (a job on a compute node can instantiate one).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from balsam._api import sites as _sites
from balsam._api.jobs import Job, resolve_app
from balsam._api.queued import QueuedWrite, WriteCount
from balsam._api.waiting import seconds
from balsam.db import dag_templates as tpl
from balsam.db.dag_templates import DAGNode
from balsam.db.dags import check_name
from balsam.db.query import as_int
from balsam.db.states import DONE_STATES, FAILED_STATES, JobState, to_states
from balsam.exceptions import CommandPending, ObjectDoesNotExist, ValidationError

if TYPE_CHECKING:
    from balsam._api.base import Query
    from balsam._api.sites import SiteRef

__all__ = ["DAG", "DAGInstance", "DAGNode", "DAGDoesNotExist", "InstanceQuery"]
_DONE = frozenset(s.value for s in DONE_STATES)
INSTANTIATE_CHUNK = 2000
"""Instances per transaction when ``instantiate`` reports progress (one transaction otherwise)."""


class DAGDoesNotExist(ObjectDoesNotExist):
    """No DAG of that name at the site."""


# --------------------------------------------------------------------------------------------- instances
class DAGInstance:
    """One instantiation of a DAG: its placeholder values and its jobs (tagged ``dag_instance=<id>``)."""

    def __init__(self, dag: "DAG", instance_id: Optional[int], params: Dict[str, Any], created: Optional[float] = None,
                 queued: Optional[Tuple[QueuedWrite, int]] = None) -> None:
        self.dag = dag
        self.id: Optional[int] = None if instance_id is None else int(instance_id)
        self.params = params
        self.created = created
        self._queued = queued

    def __repr__(self) -> str:
        return f"DAGInstance(dag={self.dag.name!r}, id={self.id}, params={self.params!r})"

    @property
    def queued(self) -> Optional[QueuedWrite]:
        """The relay command that makes this instance while its site has not applied it (``id`` is None until then)."""
        return None if self._queued is None else self._queued[0]

    def refresh_from_db(self) -> "DAGInstance":
        """Resolve a queued instance: its id once the site made it; the site's refusal raised as its error;
        CommandPending while the site has not synced."""
        if self._queued is not None:
            queued, index = self._queued
            self.id = int(queued.result()[index])
            self._queued = None
        return self

    def _id(self) -> int:
        if self.id is None:
            raise ValidationError(f"this instance of DAG {self.dag.name!r} is still queued at the relay: refresh_from_db() "
                                  "resolves it once its site syncs")
        return self.id

    def jobs(self) -> "Query[Job]":
        """A query of this instance's jobs (filter, order and slice it like any job query)."""
        return Job.objects.filter(site_name=self.dag.site.name, tags={"dag_instance": str(self._id())})

    def state(self) -> Dict[str, int]:
        """Counts of this instance's jobs by state."""
        return self.dag._counts([self._id()])[self._id()]

    def done(self) -> bool:
        """True when every job of the instance is in a final state (finished, failed or killed)."""
        return all(s in _DONE for s in self.state())

    def failed(self) -> bool:
        """True when a job of the instance failed or was killed."""
        return any(s in FAILED_STATES for s in self.state())

    def wait(self, timeout: Optional[float] = None, poll_interval: Optional[float] = None) -> Dict[str, int]:
        """Wait until every job is final; returns the counts by state (TimeoutError after ``timeout`` s). Waits the
        way ``Job.objects.wait`` does: on the agent's change stream from another host, polling otherwise (and
        every ``poll_interval`` s when one is given)."""
        timeout = seconds("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            counts = self.state()
            if all(s in _DONE for s in counts):
                return counts
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"DAG {self.dag.name!r} instance {self.id} not done after {timeout} s: {counts}")
            pending = list(self.jobs().filter(state__ne=list(_DONE)))
            if pending:
                Job.objects.wait(pending, timeout=left, poll_interval=poll_interval)
            else:  # they finished between the two reads
                time.sleep(0.01)

    def kill(self) -> int:
        """Kill the instance's jobs that are not final yet; returns how many."""
        pending = self.jobs().filter(state__ne=list(_DONE))
        return pending.update(state=JobState.USER_KILLED, state_data={"message": f"DAG instance {self.id} killed"})

    def retry_failed(self) -> int:
        """Run the instance's failed and killed jobs again: those whose parents finished go back to READY, the
        rest wait for their parents again (AWAITING_PARENTS). Returns how many jobs were reset."""
        site = self.dag.site
        try:
            return site.backend.dag_retry(self._id())
        except CommandPending as e:  # kept by the relay for its offline site
            return WriteCount(0, [QueuedWrite.from_pending(site, e, f"retry of DAG {self.dag.name!r} instance {self.id}")])


class InstanceQuery:
    """The instances of a DAG, optionally narrowed by the states of their jobs."""

    def __init__(self, dag: "DAG", states: Optional[Sequence[str]] = None, ids: Optional[Sequence[int]] = None) -> None:
        self._dag = dag
        self._states = states
        self._ids = ids

    def filter(self, state: Any = None, id: Any = None) -> "InstanceQuery":
        """Keep instances with at least one job in ``state`` (one or several), or with the given ids."""
        states = self._states if state is None else sorted(s.value for s in to_states(state))
        ids = self._ids if id is None else [as_int("id", i, "an instance id") for i in (id if isinstance(id, (list, tuple, set)) else [id])]
        bad = next((i for i in ids or () if i < 1), None)
        if bad is not None:
            raise ValidationError(f"id: must be between 1 and {2**63 - 1}, got {bad}")
        return InstanceQuery(self._dag, states, ids)

    def _rows(self, limit: Optional[int] = None, offset: int = 0) -> List[DAGInstance]:
        dag = self._dag
        rows = dag.site.backend.dag_instances(dag._require_id(), ids=self._ids, state=self._states, limit=limit, offset=offset)
        return [DAGInstance(dag, r["id"], r["params"], r["created"]) for r in rows]

    def __iter__(self) -> Iterator[DAGInstance]:
        return iter(self._rows())

    def __len__(self) -> int:
        return len(self._rows())

    def count(self) -> int:
        """How many instances match."""
        return len(self)

    def __getitem__(self, index: Union[int, slice]) -> Any:
        if isinstance(index, slice):
            if index.step not in (None, 1) or (index.start or 0) < 0 or (index.stop is not None and index.stop < 0):
                return self._rows()[index]
            lo = index.start or 0
            return self._rows(None if index.stop is None else max(index.stop - lo, 0), lo)
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError("DAG instance indices must be integers or slices")
        if index < 0:
            return self._rows()[index]
        rows = self._rows(1, index) if index < 2**62 else []
        if not rows:
            raise IndexError(f"DAG {self._dag.name!r} has no instance at position {index}")
        return rows[0]

    def get(self, id: int) -> DAGInstance:
        """The instance with this id."""
        rows = self.filter(id=id)._rows()
        if not rows:
            raise DAGDoesNotExist(f"DAG {self._dag.name!r} has no instance {id}")
        return rows[0]

    def __repr__(self) -> str:
        return f"<InstanceQuery of DAG {self._dag.name!r}>"


# --------------------------------------------------------------------------------------------- the DAG
class DAG:
    """A prototype workflow: nodes (apps with templated workdirs, parameters and resources) and edges.

    ``save()`` stores it at the site; ``instantiate(records)`` creates one set of jobs per record of
    placeholder values, in one transaction.
    """

    objects: "DAGManager"
    DoesNotExist = DAGDoesNotExist

    def __init__(self, name: str, site: Any = None, description: str = "") -> None:
        self.name = check_name(name)
        self.description = str(description or "")
        self._site_key = site
        self._site: Optional["SiteRef"] = None
        self._nodes: Dict[str, DAGNode] = {}
        self.id: Optional[int] = None
        self.version: Optional[int] = None
        self.queued: Optional[QueuedWrite] = None
        """The save the relay keeps for an offline site (see ``queued_command``)."""

    def __repr__(self) -> str:
        return f"DAG({self.name!r}, nodes={len(self._nodes)}, placeholders={sorted(self.placeholders)})"

    @property
    def site(self) -> "SiteRef":
        """The site the DAG lives at."""
        if self._site is None:
            self._site = _sites.single_site(self._site_key, how="pass site= to DAG(...)")
        return self._site

    @property
    def nodes(self) -> List[DAGNode]:
        """The nodes, in the order they were added."""
        return list(self._nodes.values())

    def node(self, name: str, app: Any, workdir: str, params: Optional[Dict[str, Any]] = None,
             parents: Iterable[Union[DAGNode, str]] = (), tags: Optional[Dict[str, Any]] = None, **resources: Any) -> DAGNode:
        """Add a node: ``app`` (an ApplicationDefinition class or an app name), a ``workdir`` template,
        ``params`` (values may be placeholders such as ``"{seed}"``), ``parents`` (nodes or names),
        ``tags`` and job resources (num_nodes, ranks_per_node, gpus_per_rank, wall_time_min, ...)."""
        if name in self._nodes:
            raise ValidationError(f"DAG {self.name!r} already has a node {name!r}")
        if isinstance(app, type):
            app = getattr(app, "_app_name", None) or app.__name__
            app = app() if callable(app) else app
        node = tpl.make_node(name, app, workdir, params or {}, tags or {}, resources, list(parents), "node")
        for p in node.parents:
            if p not in self._nodes:
                raise ValidationError(f"node {name!r}: parent {p!r} is not a node of DAG {self.name!r} (add parents first)")
        self._nodes[name] = node
        return node

    @property
    def edges(self) -> List[Tuple[str, str]]:
        """(parent, child) pairs."""
        return [(p, n.name) for n in self._nodes.values() for p in n.parents]

    @property
    def placeholders(self) -> Set[str]:
        """Every placeholder name the template uses."""
        return tpl.placeholders(self.nodes)

    def spec(self) -> Dict[str, Any]:
        """The template as stored: its nodes and placeholders."""
        return {"nodes": [n.to_dict() for n in self._nodes.values()], "placeholders": sorted(self.placeholders)}

    def validate(self) -> None:
        """Check the template without writing: nodes, placeholders, parents (no cycles) and apps at the site."""
        tpl.parse_spec(self.name, self.spec())
        for n in self._nodes.values():
            try:
                resolve_app(n.app, self.site.name)
            except ValidationError as exc:
                raise ValidationError(f"DAG {self.name!r} node {n.name!r}: {exc}") from None

    def save(self) -> "DAG":
        """Store (or replace) the template at the site; refuses cycles, unknown parents and unknown apps. Through
        a relay whose site is offline the save is queued: ``queued_command`` names it (``id`` stays None) and
        ``refresh_from_db()`` shows the outcome; ``instantiate`` may follow at once (the site applies in order)."""
        self.validate()
        try:
            row = self.site.backend.dag_save(self.name, self.description, self.spec())
        except CommandPending as e:
            self.queued = QueuedWrite.from_pending(self.site, e, f"save of DAG {self.name!r}")
            return self
        self.queued = None
        self.id, self.version = int(row["id"]), int(row["version"])
        return self

    @property
    def queued_command(self) -> Optional[int]:
        """The relay command that saves this DAG while its site has not applied it (None otherwise)."""
        return None if self.queued is None else self.queued.command_id

    def refresh_from_db(self) -> "DAG":
        """Read the DAG back from its site (a queued save is resolved first: its refusal raised as the site's error,
        CommandPending while its site has not synced)."""
        if self.queued is not None:
            self.queued.result()
            self.queued = None
        row = next((r for r in self.site.backend.dag_list() if r["name"] == self.name), None)
        if row is None:
            raise DAGDoesNotExist(f"no DAG named {self.name!r} at site {self.site.name}")
        self.id, self.version = int(row["id"]), int(row["version"])
        return self

    def _require_id(self) -> int:
        if self.id is None:
            raise ValidationError(f"DAG {self.name!r} is not saved: call save() first")
        return self.id

    # ---------------------------------------------------------------- instantiation
    def instantiate(self, records: Union[Mapping[str, Any], Iterable[Mapping[str, Any]]],
                    progress: Optional[Any] = None) -> List["DAGInstance"]:
        """Create one instance per record of placeholder values, all in one transaction; returns them.

        A missing or unknown placeholder, a bad value or a duplicate workdir is one error, and nothing is
        written. With ``progress`` (called with the number of jobs made so far), instances are written in
        transactions of INSTANTIATE_CHUNK (placeholders of every record are still checked before the first)."""
        if isinstance(records, Mapping):
            records = [records]
        if isinstance(records, (str, bytes)) or not isinstance(records, Iterable):
            raise ValidationError(f"DAG {self.name!r}: instantiate takes a mapping of placeholder values or a list of them, "
                                  f"got {records!r:.80}")
        records = list(records)
        if self.queued is None:
            self._require_id()
        names = self.placeholders
        checked = [tpl.check_record(self.name, r, i, names) for i, r in enumerate(records)]
        for i, r in enumerate(checked):
            tpl.filled(self.name, self.nodes, r, i)  # every placeholder error before any write
        backend = self.site.backend
        step = len(checked) if progress is None else INSTANTIATE_CHUNK
        out: List[DAGInstance] = []
        now = time.time()
        for start in range(0, len(checked), max(step, 1)):
            chunk = checked[start:start + step]
            try:
                ids = backend.dag_instantiate(self.name, chunk)
            except CommandPending as e:  # kept by the relay for its offline site: provisional instances
                queued = QueuedWrite.from_pending(self.site, e, f"{len(chunk)} instances of DAG {self.name!r}")
                out.extend(DAGInstance(self, None, r, now, queued=(queued, n)) for n, r in enumerate(chunk))
                continue
            out.extend(DAGInstance(self, i, r, now) for i, r in zip(ids, chunk))
            if progress is not None:
                progress(len(out) * len(self._nodes))
        return out

    def instances(self) -> "InstanceQuery":
        """The DAG's instances (``.filter(state="FAILED")`` keeps those with a failed job)."""
        return InstanceQuery(self)

    def _counts(self, instance_ids: Sequence[int]) -> Dict[int, Dict[str, int]]:
        counts = self.site.backend.dag_counts(instance_ids)
        return {int(i): counts.get(int(i), {}) for i in instance_ids}

    def status(self) -> Dict[str, Any]:
        """Counts of the DAG's jobs by state, and how many instances are done and failed."""
        rows = self.site.backend.dag_instances(self._require_id())
        counts = self._counts([r["id"] for r in rows]) if rows else {}
        total: Dict[str, int] = {}
        done = failed = 0
        for c in counts.values():
            for s, n in c.items():
                total[s] = total.get(s, 0) + n
            done += all(s in _DONE for s in c)
            failed += any(s in FAILED_STATES for s in c)
        return {"instances": len(rows), "done": done, "failed": failed, "jobs": total}

    # ---------------------------------------------------------------- text and YAML forms
    def show(self) -> str:
        """The graph as text: nodes (app, workdir, params, resources), edges and placeholders."""
        return tpl.show(self.name, self.description, self.nodes)

    @classmethod
    def from_dict(cls, doc: Any, site: Any = None) -> "DAG":
        """A DAG from its YAML/JSON form: ``name``, optional ``description`` and ``site``, and ``nodes``: a list
        of mappings (or a mapping of node name -> mapping) with app, workdir, params, tags, resources, parents."""
        parsed = tpl.parse_document(doc)
        dag = cls(parsed["name"], site=site if site is not None else parsed["site"], description=parsed["description"])
        for node in tpl.parse_spec(dag.name, parsed["spec"]):
            dag._nodes[node.name] = node
        return dag

    @classmethod
    def from_yaml(cls, path: Union[str, Path], site: Any = None) -> "DAG":
        """A DAG from a YAML file (see :meth:`from_dict`); apps are named by their app names."""
        return cls.from_dict(tpl.load_yaml(Path(path)), site=site)

    @classmethod
    def _from_row(cls, site: "SiteRef", row: Dict[str, Any]) -> "DAG":
        dag = cls(row["name"], description=row["description"])
        dag._site = site
        dag.id, dag.version = int(row["id"]), int(row["version"])
        for node in tpl.parse_spec(row["name"], row["spec"]):
            dag._nodes[node.name] = node
        return dag


class DAGManager:
    """``DAG.objects``: the DAGs stored at the sites in scope."""

    def _sites(self, site: Any) -> List["SiteRef"]:
        return [_sites.resolve(site)] if site is not None else _sites.default_scope()

    def all(self, site: Any = None) -> List[DAG]:
        """Every DAG at the site (or the sites in scope), by name."""
        out: List[DAG] = []
        for s in self._sites(site):
            out.extend(DAG._from_row(s, r) for r in s.backend.dag_list())
        return out

    def filter(self, name: Any = None, site: Any = None) -> List[DAG]:
        """DAGs by name (one or several)."""
        names = None if name is None else ({name} if isinstance(name, str) else set(name))
        return [d for d in self.all(site) if names is None or d.name in names]

    def get(self, name: str, site: Any = None) -> DAG:
        """The DAG named ``name``; DAG.DoesNotExist when there is none, an error when several sites have one."""
        found = self.filter(name=name, site=site)
        if not found:
            raise DAGDoesNotExist(f"no DAG named {name!r}" + (f" at site {site}" if site is not None else " at the sites in scope"))
        if len(found) > 1:
            raise ValidationError(f"several sites have a DAG named {name!r}: pass site=")
        return found[0]

    def delete(self, name: str, site: Any = None) -> Optional[QueuedWrite]:
        """Forget a DAG template and its instance records (the jobs stay). Through a relay whose site is offline,
        the delete is queued: returns its handle (None when done)."""
        dag = self.get(name, site)
        try:
            dag.site.backend.dag_delete(name)
        except CommandPending as e:
            return QueuedWrite.from_pending(dag.site, e, f"delete of DAG {name!r}")
        return None


DAG.objects = DAGManager()
