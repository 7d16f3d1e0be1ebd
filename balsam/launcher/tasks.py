"""From an acquired job to a task: what to run, in which directory, with which environment.

The launcher loads each app once (from its stored source, through whichever transport reaches the site) and
reloads it when the app is re-synced. A task is placement-free: the executor that places it adds the CPU,
GPU and thread settings. Tasks are plain data, so the serial-mode master can send them to node workers.

Shell commands render through ``ApplicationDefinition.render_command`` (defaults first, every value
shell-quoted; templates that only substitute parameters skip Jinja).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from balsam.db.codec import decode_parameters
from balsam.db.states import JobState
from balsam.exceptions import AppError
from balsam.launcher.pyexec import JobView, app_module_name, load_app

logger = logging.getLogger(__name__)

AppRow = Dict[str, Any]
"""An app as the transport returns it: id, name, kind, source_code, version."""

JOB_FIELDS = ("id", "workdir", "app_id", "tags", "data", "num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core",
              "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min", "parent_ids", "batch_job_id")


class AppInfo:
    """An app loaded in the launcher, with what the launcher needs from it at hand."""

    def __init__(self, row: AppRow, site_id: int) -> None:
        self.id = int(row["id"])
        self.name = str(row["name"])
        self.kind = str(row["kind"])
        self.version = int(row["version"])
        self.source = str(row["source_code"])
        self.module_name = app_module_name(site_id, self.id, self.version)
        self.key = f"{self.id}:{self.version}"
        self.loaded_at = time.monotonic()
        self.error: Optional[str] = None
        self.cls: Any = None
        self.finishes_in_launcher = False
        try:
            self.cls = load_app(self.source, self.name, self.module_name)
        except Exception as exc:
            self.error = f"app {self.name} (id {self.id}) cannot be loaded: {exc}"
            return
        cls = self.cls
        self.env = {str(k): str(v) for k, v in (getattr(cls, "environment_variables", None) or {}).items()}
        self.python_exe: Optional[str] = getattr(cls, "python_exe", None)
        self.has_preamble = bool(cls.has_hook("shell_preamble"))
        self.finishes_in_launcher = not cls.has_hook("postprocess")
        """No postprocess hook in the stored definition: the launcher itself moves a job that ran fine on to
        POSTPROCESSED (and so JOB_FINISHED, or stage-out), in the status batch that records RUN_DONE."""

    @property
    def payload(self) -> List[str]:
        """What a Python worker needs to load the app: key, class name, module name, source."""
        return [self.key, self.name, self.module_name, self.source]

    def render(self, params: Dict[str, Any]) -> str:
        """The shell command for ``params`` (ValidationError if a required parameter is missing)."""
        return str(self.cls.render_command(params))


class AppCache:
    """Apps by id, fetched in bulk through the transport and reloaded when re-synced."""

    def __init__(self, fetch: Callable[[Sequence[int]], List[AppRow]], site_id: int, refresh_s: float = 5.0) -> None:
        self._fetch = fetch
        self.site_id = site_id
        self.refresh_s = refresh_s
        self._apps: Dict[int, AppInfo] = {}
        self._checked: Dict[int, float] = {}

    @staticmethod
    def preload() -> None:
        """Import what loading an app needs (Balsam's app classes: ~50 ms on a busy node), while the launcher has
        nothing else to do: else the first job it acquires waits for it."""
        from balsam.launcher.pyexec import preload_app_support

        try:
            preload_app_support()
        except Exception as exc:  # only an optimisation: the first app's load reports it, on its jobs
            logger.debug("preloading the app support failed: %s", exc)

    def get_many(self, ids: Sequence[int], versions: Optional[Dict[int, int]] = None) -> Dict[int, AppInfo]:
        """The apps with these ids (missing ones are absent from the result).

        ``versions`` (app id -> version, as acquired jobs carry it) names apps re-synced since they were
        cached: those are fetched again at once, so even an idle launcher runs a re-synced app's new code.
        """
        now = time.monotonic()
        versions = versions or {}
        stale = sorted({i for i in ids if now - self._checked.get(i, -1e9) > self.refresh_s
                        or (i in versions and i in self._apps and self._apps[i].version != versions[i])})
        if stale:
            for row in self._fetch(stale):
                app_id = int(row["id"])
                old = self._apps.get(app_id)
                if old is None or old.version != int(row["version"]):
                    info = AppInfo(row, self.site_id)
                    if info.error:
                        logger.error("%s", info.error)
                    elif old is not None:
                        logger.info("app %s was re-synced: now version %s", info.name, info.version)
                    self._apps[app_id] = info
            for i in stale:
                self._checked[i] = now
        return {i: self._apps[i] for i in ids if i in self._apps}


class Task:
    """One job, ready to place and start (plain data: crosses to node workers as JSON)."""

    __slots__ = ("id", "workdir", "kind", "command", "app", "params", "env", "preamble", "python_exe", "num_nodes",
                 "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count",
                 "cpu_bind", "launch_params", "wall_time_min", "job", "rerun")

    def __init__(  # the fields spelled out: a flood builds one Task per job
        self,
        *,
        id: Any = None, workdir: Any = None, kind: Any = None, command: Any = None, app: Any = None, params: Any = None,
        env: Any = None, preamble: Any = None, python_exe: Any = None, num_nodes: Any = None, ranks_per_node: Any = None,
        threads_per_rank: Any = None, threads_per_core: Any = None, gpus_per_rank: Any = None,
        node_packing_count: Any = None, cpu_bind: Any = None, launch_params: Any = None, wall_time_min: Any = None,
        job: Any = None, rerun: Any = None,
    ) -> None:
        self.id = id
        self.workdir = workdir
        self.kind = kind
        self.command = command
        self.app = app
        self.params = params
        self.env = env
        self.preamble = preamble
        self.python_exe = python_exe
        self.num_nodes = num_nodes
        self.ranks_per_node = ranks_per_node
        self.threads_per_rank = threads_per_rank
        self.threads_per_core = threads_per_core
        self.gpus_per_rank = gpus_per_rank
        self.node_packing_count = node_packing_count
        self.cpu_bind = cpu_bind
        self.launch_params = launch_params
        self.wall_time_min = wall_time_min
        self.job = job
        self.rerun = rerun

    id: int
    workdir: str
    kind: str
    command: str
    app: Optional[List[str]]
    params: List[Any]
    """[parameters JSON, out-of-band pickled values or None] as the store holds them (decoded by the runner)."""
    env: Dict[str, str]
    preamble: Optional[str]
    python_exe: Optional[str]
    num_nodes: int
    ranks_per_node: int
    threads_per_rank: int
    threads_per_core: int
    gpus_per_rank: float
    node_packing_count: int
    cpu_bind: Optional[str]
    launch_params: Dict[str, str]
    wall_time_min: int
    job: Dict[str, Any]
    rerun: Optional[bool]
    """The job ran before (RESTART_READY): an earlier copy may still run in its workdir (see the pid records)."""

    @property
    def num_ranks(self) -> int:
        return int(self.num_nodes) * int(self.ranks_per_node)

    def to_wire(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_wire(cls, data: Dict[str, Any]) -> "Task":
        return cls(**data)

    def __repr__(self) -> str:
        return f"Task(id={self.id}, kind={self.kind})"


def preamble_text(app: AppInfo, view: JobView) -> Optional[str]:
    """The app's shell_preamble() for this job, as shell text (a list joins with ``&&``)."""
    value = app.cls(view).shell_preamble()
    if not value:
        return None
    if isinstance(value, (list, tuple)):
        return " && ".join(str(v) for v in value)
    return str(value)


def build_task(job: Dict[str, Any], app: AppInfo, data_dir: str) -> Task:
    """The task for an acquired job. Raises ValidationError or AppError (the job then FAILS) if it cannot run."""
    if app.error:
        raise AppError(app.error)
    workdir = f"{data_dir}/{job['workdir']}"
    params_text = job.get("parameters") or "{}"
    params_pickled = job.get("parameters_pickled")
    launch_params = {str(k): str(v) for k, v in (job.get("launch_params") or {}).items()}
    cpu_bind = launch_params.pop("cpu_bind", None)
    env = dict(app.env)
    env["BALSAM_JOB_ID"] = str(job["id"])
    env["BALSAM_SITE_PATH"] = data_dir.rsplit("/", 1)[0]  # Job.current() and jobs that create jobs find their site
    view_fields: Optional[Dict[str, Any]] = None
    if app.kind == "python" or app.has_preamble:  # what run() and shell_preamble() see (a flood's shell jobs need none)
        view_fields = {k: job.get(k) for k in JOB_FIELDS}
        view_fields["workdir_path"] = workdir
    preamble = None
    if view_fields is not None and app.has_preamble:
        preamble = preamble_text(app, JobView(dict(view_fields, parameters=decode_parameters(params_text, params_pickled))))
    if app.kind == "shell":
        command = app.render(decode_parameters(params_text, params_pickled) if params_text != "{}" else {})
        payload = None
    else:
        command = ""
        payload = app.payload
    return Task(
        id=int(job["id"]), workdir=workdir, kind=app.kind, command=command, app=payload, params=[params_text, params_pickled], env=env,
        preamble=preamble, python_exe=app.python_exe, num_nodes=int(job.get("num_nodes") or 1),
        ranks_per_node=int(job.get("ranks_per_node") or 1), threads_per_rank=int(job.get("threads_per_rank") or 1),
        threads_per_core=int(job.get("threads_per_core") or 1), gpus_per_rank=float(job.get("gpus_per_rank") or 0.0),
        node_packing_count=int(job.get("node_packing_count") or 1), cpu_bind=cpu_bind, launch_params=launch_params,
        wall_time_min=int(job.get("wall_time_min") or 0), job=view_fields if app.kind == "python" else None,
        rerun=job.get("state") == JobState.RESTART_READY,
    )
