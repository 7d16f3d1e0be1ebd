"""The typed settings of one site, read from its ``settings.yml`` and validated once.

Every component gets its section from :class:`SiteSettings` (the composition root builds it); no component
reads files or environment variables on its own. Unknown keys are rejected with their dotted name, values
are checked against the field's type, and periods are named ``*_period_s``.

Adapters are chosen by short names (``scheduler.type: slurm``, ``launcher.mpi_launcher: mpiexec``); the
platforms package maps those names to classes.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar, Union

from balsam import yamlsafe
from balsam.exceptions import ConfigError

T = TypeVar("T")
DAY_S = 86400.0
TIMING_RANGES: Dict[str, Tuple[float, float]] = {
    "SchedulerSettings.sync_period_s": (0.05, DAY_S),
    "SchedulerSettings.command_timeout_s": (1.0, 3600.0),
    "LauncherSettings.idle_ttl_s": (0.0, 30 * DAY_S),
    "LauncherSettings.poll_period_s": (0.001, 60.0),
    "LauncherSettings.status_flush_period_s": (0.001, DAY_S),
    "ProcessingSettings.period_s": (0.01, 3600.0),
    "TransferSettings.period_s": (0.1, 3600.0),
    "TransferSettings.retry_backoff_s": (0.1, DAY_S),
    "TransferSettings.rsync_timeout_s": (1, DAY_S),
    "QueueMaintainerSettings.period_s": (1.0, DAY_S),
    "ElasticQueueSettings.period_s": (1.0, DAY_S),
    "FileCleanerSettings.period_s": (1.0, DAY_S),
    "SessionSettings.heartbeat_period_s": (0.05, 3600.0),
    "SessionSettings.expiry_s": (5.0, 7 * DAY_S),
    "SyncSettings.period_s": (0.5, DAY_S),
}
"""The range each timing setting can work in (seconds): ``session.expiry_s: 0`` would expire every lease at once."""


@dataclass
class QueuePolicy:
    """Limits of one scheduler queue that ``balsam queue submit`` and the agent enforce."""

    max_nodes: int = 1
    max_wall_time_min: int = 60
    max_queued_jobs: int = 10


@dataclass
class SchedulerSettings:
    """How the site agent talks to the local batch scheduler."""

    type: str = "local"
    sync_period_s: float = 10.0
    command_timeout_s: float = 60.0
    allowed_queues: Dict[str, QueuePolicy] = field(
        default_factory=lambda: {"local": QueuePolicy(max_nodes=1, max_wall_time_min=1440, max_queued_jobs=10)}
    )
    allowed_projects: List[str] = field(default_factory=lambda: ["local"])
    optional_batch_job_params: Dict[str, str] = field(default_factory=dict)
    job_template: str = "job-template.sh"
    options: Dict[str, str] = field(default_factory=dict)  # adapter-specific, e.g. slurm queue_option: qos


@dataclass
class LauncherSettings:
    """How the launcher sees its nodes and starts applications."""

    mpi_launcher: str = "auto"  # auto: the MPI on PATH when the launcher starts (platforms.mpi.detect)
    node: str = "local"
    cpus_per_node: Optional[int] = None
    gpus_per_node: Optional[int] = None  # None on a local node: found (visibility variables, nvidia-smi, ...)
    gpu_env: Optional[str] = None  # None: the found GPUs' vendor variable, else CUDA_VISIBLE_DEVICES
    mpirun_allows_node_packing: bool = True
    max_concurrent_mpiruns: int = 990
    idle_ttl_s: float = 10.0
    poll_period_s: float = 0.05  # on the home host a doorbell wakes the launcher at once; this poll is then a fallback
    error_tail_num_lines: int = 10  # a failed run's event keeps this many last lines of its output...
    error_tail_max_bytes: int = 4096  # ...and at most this many bytes of them (the rest stays in job.out)
    kill_orphans: bool = True  # when a job ends, kill what it left: its process group, its setsid'd/daemon children
    serial_prefetch_per_node: int = 64
    status_flush_period_s: float = 0.25
    python_exe: Optional[str] = None
    mpi_executable: Optional[str] = None  # the launcher program if not its usual name, e.g. mpiexec.mpich
    mpi_options: Dict[str, str] = field(default_factory=dict)  # launcher-specific, e.g. mpirun oversubscribe
    gpu_ids: List[str] = field(default_factory=list)  # explicit per-node GPU ids, e.g. Aurora tiles 0.0 0.1 ...
    sort_by: Optional[str] = None  # acquisition order: None (Balsam's default), long_large_first, short_small_first, id
    allowed_launch_params: List[str] = field(default_factory=list)  # launcher flags jobs may pass beyond binding/placement


@dataclass
class ProcessingSettings:
    """The site agent's pre- and post-processing of jobs (app hooks)."""

    num_workers: int = 2
    period_s: float = 0.5
    prefetch: int = 1000


@dataclass
class TransferSettings:
    """Stage-in and stage-out of job data (the transfer service; see balsam/services/transfers.py)."""

    transfer_locations: Dict[str, str] = field(default_factory=dict)  # alias -> globus://UUID | rsync://user@host | local
    max_concurrent_transfers: int = 5
    batch_size: int = 100
    num_items_query_limit: int = 2000
    period_s: float = 2.0
    max_retries: int = 5  # a transient failure (lost connection, Globus 5xx) is retried this many times
    retry_backoff_s: float = 10.0  # the first pause before a retry; it doubles each time (capped at 1 hour)
    local_link: bool = False  # local: hard-link files instead of copying them
    rsync_rsh: str = ""  # ssh command for rsync -e; empty: RSYNC_RSH from the environment, else ssh
    rsync_flags: str = ""
    rsync_attempts: int = 3  # tries within one task when the connection drops (partial files resumed)
    rsync_timeout_s: int = 300
    globus_endpoint_id: Optional[str] = None  # this site's endpoint (collection) UUID
    globus_endpoint_site_path: Optional[str] = None  # the site folder as the endpoint sees it
    globus_client_id: Optional[str] = None  # a Globus native app's client id, for balsam site globus-login
    globus_sync_level: str = "size"
    globus_verify_checksum: bool = True
    globus_encrypt_data: bool = True


@dataclass
class QueueMaintainerSettings:
    """Keep a fixed number of fixed-size BatchJobs queued."""

    project: str = "local"
    queue: str = "local"
    job_mode: str = "mpi"
    num_queued_jobs: int = 1
    num_nodes: int = 1
    wall_time_min: int = 60
    filter_tags: Dict[str, str] = field(default_factory=dict)
    period_s: float = 60.0


@dataclass
class ElasticQueueSettings:
    """Size BatchJobs to the runnable backlog (the autoscaler), one entry per queue."""

    project: str = "local"
    queue: str = "local"
    job_mode: str = "mpi"
    use_backfill: bool = True
    min_wall_time_min: int = 10
    max_wall_time_min: int = 60
    wall_time_pad_min: int = 5
    min_num_nodes: int = 1
    max_num_nodes: int = 1
    max_queue_wait_time_min: int = 60
    max_queued_jobs: int = 5
    filter_tags: Dict[str, str] = field(default_factory=dict)
    period_s: float = 30.0


@dataclass
class FileCleanerSettings:
    """Delete ``cleanup_files`` globs from finished jobs' workdirs."""

    period_s: float = 60.0
    batch_size: int = 200


@dataclass
class SessionSettings:
    """Leases held by launchers and processing workers. A lease must outlive a missed heartbeat: ``expiry_s``
    is at least twice ``heartbeat_period_s``. Checked when built in code too (the API builds it)."""

    heartbeat_period_s: float = 30.0
    expiry_s: float = 300.0

    def __post_init__(self) -> None:
        _check_ranges(self, "session")
        if self.expiry_s < 2 * self.heartbeat_period_s:
            raise ConfigError(f"session.expiry_s ({self.expiry_s:g}) must be at least twice session.heartbeat_period_s "
                              f"({self.heartbeat_period_s:g}): a lease would expire between two heartbeats")


@dataclass
class SyncSettings:
    """The optional relay (none by default: the site works offline)."""

    relay_url: Optional[str] = None
    period_s: float = 1.0  # a linked site pushes its changes this often (finished jobs at once: a doorbell wakes it)


@dataclass
class ApiSettings:
    """The site agent's /v1 HTTP API, through which every host but the home host reaches the site."""

    bind: str = "0.0.0.0"
    port: int = 0
    port_range: str = ""
    """``"20000-20100"``: listen on the first free port of the range (facility firewalls); else ``port`` (0: any)."""
    advertise: str = ""
    """The host name clients use (default: this host's name)."""
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    """The CA certificate(s) clients verify ``tls_cert`` with (published in ``.balsam/api.json``); default: the
    certificate file itself (self-signed, or holding its chain up to the CA)."""
    max_body_mb: float = 256.0
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0
    clock_skew_s: float = 300.0
    group_commit: bool = True
    """Concurrent requests' writes share one SQLite transaction (on one writer thread): many launchers' small
    status batches and acquires then cost one commit, not one each."""
    http_parser: str = "auto"
    """"auto": httptools when installed (compiled, faster), else h11 (pure Python, in the zipapp); or "h11"."""
    workers: int = 1
    """Processes serving the API on its port (the agent's own and ``workers - 1`` more; SO_REUSEPORT spreads the
    connections): one process serves on one core at most, so a login node serving hundreds of launchers wants
    one per core it can spare."""


@dataclass
class LoggingSettings:
    """How much the agent and launchers log (Balsam 0.7's ``logging`` section)."""

    level: str = "INFO"


@dataclass
class SiteSettings:
    """Everything ``settings.yml`` may say. Each component receives its own section."""

    title: str = "Local machine"
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    launcher: LauncherSettings = field(default_factory=LauncherSettings)
    processing: ProcessingSettings = field(default_factory=ProcessingSettings)
    transfers: TransferSettings = field(default_factory=TransferSettings)
    queue_maintainer: Optional[QueueMaintainerSettings] = None
    elastic_queue: List[ElasticQueueSettings] = field(default_factory=list)
    file_cleaner: Optional[FileCleanerSettings] = field(default_factory=FileCleanerSettings)
    """On by default; ``file_cleaner: null`` turns it off (as in Balsam 0.7, whose template ships it so)."""
    session: SessionSettings = field(default_factory=SessionSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as plain data (what ``settings.yml`` would hold)."""
        return dataclasses.asdict(self)


def _describe(value: Any) -> str:
    import reprlib

    # reprlib: a bounded repr (a list of a billion items, shared through YAML aliases, is not written out to be cut)
    bounded = reprlib.Repr()
    bounded.maxlevel, bounded.maxlist, bounded.maxdict, bounded.maxstring, bounded.maxother = 3, 4, 4, 40, 40
    text = bounded.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check and convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            if len(non_none) < len(args):
                return None
            raise ConfigError(f"{where}: a value is required")
        return _convert(non_none[0], value, where)
    if value is None:
        raise ConfigError(f"{where}: a value is required")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return _build(tp, value, where)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
    raise ConfigError(f"{where}: unsupported setting type {tp!r}")  # pragma: no cover - programming error


def _build(cls: Type[T], data: Dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown setting {prefix}{unknown[0]!s} (known keys{' of ' + where if where else ''}: {', '.join(sorted(known))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}" if where else name)
    obj = cls(**kwargs)
    _check_ranges(obj, where)
    return obj


def _check_ranges(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{where}.{f.name}" if where else f.name
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if f.name.endswith("period_s") and value <= 0:
            raise ConfigError(f"{name}: must be positive, got {value}")
        if value < 0:
            raise ConfigError(f"{name}: must not be negative, got {value}")
        bounds = TIMING_RANGES.get(f"{type(obj).__name__}.{f.name}")
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise ConfigError(f"{name}: must be between {bounds[0]:g} and {bounds[1]:g} seconds, got {value:g}")


def settings_from_dict(data: Optional[Dict[str, Any]], source: str = "settings.yml") -> SiteSettings:
    """Validate plain data into :class:`SiteSettings`; errors name ``source`` and the offending key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_describe(data)}")
    from balsam.settings_aliases import check_values, translate

    data, _ = translate(data)  # Balsam 0.7's key names are accepted (balsam site sync notes them)
    try:
        settings = _build(SiteSettings, data, "")
        check_values(settings)
        return settings
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


MAX_SETTINGS_VALUES = 100_000
"""Most values settings.yml may expand to, a YAML alias counted each time it is used: ten anchors of ten aliases each
("billion laughs") build in a moment, but every reader of the result then walked 10**9 values (site sync hung)."""
MAX_SETTINGS_DEPTH = 32
"""How deep settings.yml may nest lists and maps (its own keys nest four levels; a user's template parameters a few
more). A file nested deeper is refused as its parser reaches that level, before anything deeper is read or built:
left to PyYAML, "[" * 5000 took over a second to fail with a RecursionError."""


def load_settings(path: Union[str, Path]) -> SiteSettings:
    """Read and validate a ``settings.yml`` file."""
    import yaml  # deferred: only commands that need settings pay for the import

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such settings file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); settings.yml is YAML text") from None
    try:
        data = yamlsafe.load(text, max_depth=MAX_SETTINGS_DEPTH, max_values=MAX_SETTINGS_VALUES)
    except yamlsafe.TooMany as many:
        raise ConfigError(f"{path}: line {many.line} expands to more than {MAX_SETTINGS_VALUES:,} values (YAML aliases "
                          "referring to aliases?); write the values out") from None
    except yamlsafe.TooDeep as deep:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply (more than {MAX_SETTINGS_DEPTH} levels at line "
                          f"{deep.line}; settings nest a few)") from None
    except RecursionError:  # an alias chain the depth bound does not see (each level a new anchor)
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    return settings_from_dict(data, str(path))
