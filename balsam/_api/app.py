"""ApplicationDefinition: what users subclass to describe an app (a shell command template or a Python run()).

Checked when the class is defined: exactly one of ``command_template`` and ``run``; the template's variables
are its parameters (a ``parameters`` entry the template does not use is an error); ``run()``'s parameters
come from its signature (no default = required; a default = optional; ``**kwargs`` accepts anything).
A class with neither is an abstract base other apps may extend.
"""

from __future__ import annotations

import inspect
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional, Tuple, Union

from balsam._api import sites as _sites
from balsam._api.appsource import capture_source, load_source, pickle_class
from balsam._api.command import compile_command, template_variables
from balsam._api.schemas import plain
from balsam.db.codec import dumps
from balsam.db.states import JobState
from balsam.db.transfers import check_local_path
from balsam.exceptions import AppError, AppNotFound, ValidationError

if TYPE_CHECKING:
    from balsam._api.jobs import Job
    from balsam._api.sites import SiteRef

_IDENT = str.isidentifier
_TRANSFER_KEYS = {"required", "direction", "local_path", "description", "recursive"}
_BASE_NAME = "ApplicationDefinition"


def _normalize_param(app: str, name: str, spec: Any) -> Dict[str, Any]:
    spec = plain(spec)  # an AppParameter (Balsam 0.7) or its dict
    if not isinstance(spec, dict):
        raise AppError(f"{app}: parameters[{name!r}] must be a dict like {{'required': False, 'default': 1, 'help': '...'}}")
    unknown = set(spec) - {"required", "default", "help"}
    if unknown:
        raise AppError(f"{app}: parameters[{name!r}] has unknown key {sorted(unknown)[0]!r} (keys: required, default, help)")
    required = bool(spec.get("required", "default" not in spec))
    if required and "default" in spec:
        raise AppError(f"{app}: parameter {name!r} is required, so it cannot have a default")
    if not required and "default" not in spec:
        raise AppError(f"{app}: optional parameter {name!r} needs a default")
    out: Dict[str, Any] = {"required": required, "help": str(spec.get("help", ""))}
    if not required:
        out["default"] = spec["default"]
    return out


def _jsonable_default(value: Any) -> Any:
    try:
        dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _check_transfers(app: str, transfers: Any) -> Dict[str, Dict[str, Any]]:
    if not isinstance(transfers, dict):
        raise AppError(f"{app}: transfers must be a dict of slot name -> spec")
    out = {}
    for slot, spec in transfers.items():
        spec = plain(spec)  # a TransferSlot (Balsam 0.7) or its dict
        if not isinstance(spec, dict) or set(spec) - _TRANSFER_KEYS:
            raise AppError(f"{app}: transfers[{slot!r}] must be a dict with keys from {', '.join(sorted(_TRANSFER_KEYS))}")
        direction = str(spec.get("direction"))
        if direction not in ("in", "out"):
            raise AppError(f"{app}: transfers[{slot!r}] direction must be 'in' or 'out'")
        local = str(spec.get("local_path", "."))
        try:
            local = check_local_path(str(slot), local)
        except ValidationError as exc:
            raise AppError(f"{app}: {exc}") from None
        out[str(slot)] = {"required": bool(spec.get("required", False)), "direction": direction, "local_path": local,
                          "description": str(spec.get("description", "")), "recursive": bool(spec.get("recursive", False))}
    return out


class _AppMeta(type):
    def __new__(mcls, name: str, bases: Tuple[type, ...], namespace: Dict[str, Any], **kwargs: Any) -> "_AppMeta":
        cls = super().__new__(mcls, name, bases, namespace, **kwargs)
        if name == _BASE_NAME and namespace.get("__module__") == __name__:
            return cls
        _define(cls)
        return cls


def _define(cls: Any) -> None:
    """Check an app class as it is defined and record what it takes: its kind (shell or python), parameter spec,
    transfers and files to clean; any mistake is an AppError naming the app."""
    name = cls.__name__
    if not _IDENT(name):
        raise AppError(f"app name {name!r} must be a Python identifier")
    template = getattr(cls, "command_template", None)
    run = getattr(cls, "run", None)
    has_run = run is not None and callable(run)
    if template is not None and has_run:
        raise AppError(f"{name}: define command_template or run(), not both")
    # What the class itself declares; a subclass that declares nothing inherits what its parent declared (not the
    # full spec ``parameters`` holds after this, whose required entries its own template need not use).
    params_in = cls.__dict__["parameters"] if "parameters" in cls.__dict__ else getattr(cls, "_balsam_params_in", {})
    params_in = params_in or {}
    if not isinstance(params_in, dict):
        raise AppError(f"{name}: parameters must be a dict")
    spec: Dict[str, Dict[str, Any]] = {}
    var_keyword = False
    var_positional: Optional[str] = None
    kind: Optional[str] = None
    if template is not None:
        kind, spec = "shell", _shell_spec(name, template, params_in)
    elif has_run:
        kind = "python"
        spec, var_positional, var_keyword = _python_spec(name, run, params_in)
    _check_environment_and_cleanup(name, cls)
    cls._balsam_kind = kind
    cls._balsam_params = spec
    cls._balsam_params_in = params_in
    # As in Balsam 0.7, the class shows every parameter it takes: the template's variables and run()'s arguments too.
    cls.parameters = {k: dict(v) for k, v in spec.items()} if kind is not None else dict(params_in)
    cls._balsam_defaults = {k: v["default"] for k, v in spec.items() if "default" in v}
    cls._balsam_required = tuple(sorted(k for k, v in spec.items() if v.get("required")))
    cls._balsam_var_keyword = var_keyword
    cls._balsam_var_positional = var_positional
    cls._balsam_transfers = _check_transfers(name, getattr(cls, "transfers", {}) or {})
    cls._balsam_template = None
    if "__app_id__" not in vars(cls):
        cls.__app_id__ = None
        cls.__app_site__ = None


def _check_launchable(name: str, what: str, text: str) -> None:
    """Text that must reach a process (a command line, the environment): no NUL, which no argument or variable can
    carry, and valid Unicode; refused when the app is defined, not when its first job starts."""
    if "\x00" in text:
        raise AppError(f"{name}: {what} contains a NUL character, which no command line or environment can carry")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise AppError(f"{name}: {what} {text[:60]!r} is not valid Unicode text (bytes that are not UTF-8?)") from None


def _shell_spec(name: str, template: Any, params_in: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The parameters of a command_template app: one per template variable (required unless ``parameters``
    gives a default); a declared parameter the template does not use is an error."""
    if not isinstance(template, str) or not template.strip():
        raise AppError(f"{name}: command_template must be a non-empty string")
    _check_launchable(name, "command_template", template)
    variables = template_variables(template, name)
    for v in variables:
        if not _IDENT(v):
            raise AppError(f"{name}: template variable {v!r} is not an identifier")
    for v in params_in:  # Balsam 0.7's app guide: "names with '-', for instance, will be rejected"
        if not isinstance(v, str) or not _IDENT(v):
            raise AppError(f"{name}: parameter {v!r} is not a valid Python identifier (a template variable must be one)")
    unused = sorted(set(params_in) - set(variables))
    if unused:
        raise AppError(f"{name}: parameter {unused[0]!r} is not used by the command_template")
    return {v: _normalize_param(name, v, params_in[v]) if v in params_in else {"required": True, "help": ""} for v in variables}


def _python_spec(name: str, run: Any, params_in: Dict[str, Any]) -> Tuple[Dict[str, Dict[str, Any]], Optional[str], bool]:
    """The parameters of a run() app, from its signature and ``parameters``: (spec, the ``*args`` name if any,
    whether it takes ``**kwargs``)."""
    spec: Dict[str, Dict[str, Any]] = {}
    var_positional: Optional[str] = None
    var_keyword = False
    args = list(inspect.signature(run).parameters.values())[1:]  # skip self
    for p in args:
        if p.kind is p.VAR_POSITIONAL:
            # Balsam 0.7 allows run(self, *args): the job passes them as a list parameter named after it.
            var_positional = p.name
            spec[p.name] = {"required": False, "default": [], "help": f"a list, passed to run() as *{p.name}"}
            continue
        if p.kind is p.VAR_KEYWORD:
            var_keyword = True
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise AppError(f"{name}.run: positional-only parameter {p.name!r} is not supported")
        help_text = ""
        if p.annotation is not p.empty:
            help_text = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
        if p.default is p.empty:
            spec[p.name] = {"required": True, "help": help_text}
        else:
            spec[p.name] = {"required": False, "default": _jsonable_default(p.default), "help": help_text}
    for k, v in params_in.items():
        if k not in spec and not var_keyword:
            raise AppError(f"{name}: parameter {k!r} is not an argument of run()")
        merged = dict(spec.get(k, {}), **_normalize_param(name, k, v)) if k in spec else _normalize_param(name, k, v)
        if "help" in v:
            merged["help"] = str(v["help"])
        spec[k] = merged
    return spec, var_positional, var_keyword


def _check_environment_and_cleanup(name: str, cls: Any) -> None:
    """environment_variables is a dict of strings; cleanup_files are glob patterns inside the job's workdir."""
    env = getattr(cls, "environment_variables", {}) or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise AppError(f"{name}: environment_variables must be a dict of strings")
    for k, v in env.items():
        if not k or "=" in k:
            raise AppError(f"{name}: environment variable name {k!r} must be non-empty and without '='")
        _check_launchable(name, f"environment variable {k!r}", k)
        _check_launchable(name, f"environment variable {k!r}", str(v))
    cleanup = getattr(cls, "cleanup_files", []) or []
    if not isinstance(cleanup, (list, tuple)) or not all(isinstance(g, str) for g in cleanup):
        raise AppError(f"{name}: cleanup_files must be a list of glob patterns")
    for g in cleanup:
        if g.startswith("/") or ".." in Path(g).parts:
            raise AppError(f"{name}: cleanup_files pattern {g!r} must stay inside the job's workdir")
        if "\x00" in g or not Path(g).parts:  # '', '.', './': the workdir itself, which the cleaner never deletes
            raise AppError(f"{name}: cleanup_files pattern {g!r} names no files inside the job's workdir (e.g. '*.tmp', 'scratch/*')")


class ApplicationDefinition(metaclass=_AppMeta):
    """Base class of Balsam apps. Subclass it with ``site`` and either ``command_template`` or ``run()``."""

    site: ClassVar[Any] = None
    command_template: ClassVar[Optional[str]] = None
    parameters: ClassVar[Dict[str, Dict[str, Any]]] = {}
    environment_variables: ClassVar[Dict[str, str]] = {}
    transfers: ClassVar[Dict[str, Dict[str, Any]]] = {}
    cleanup_files: ClassVar[List[str]] = []
    python_exe: ClassVar[Optional[str]] = None

    __app_id__: ClassVar[Optional[int]] = None
    __app_site__: ClassVar[Optional[Path]] = None
    _balsam_kind: ClassVar[Optional[str]]
    _balsam_params: ClassVar[Dict[str, Dict[str, Any]]]
    _balsam_params_in: ClassVar[Dict[str, Any]] = {}
    _balsam_defaults: ClassVar[Dict[str, Any]]
    _balsam_required: ClassVar[Tuple[str, ...]]
    _balsam_var_keyword: ClassVar[bool]
    _balsam_var_positional: ClassVar[Optional[str]] = None
    _balsam_transfers: ClassVar[Dict[str, Dict[str, Any]]]
    _balsam_template: ClassVar[Any]
    _balsam_info: ClassVar[Any] = None

    def __init__(self, job: "Job") -> None:
        self.job = job

    # ---------------------------------------------------------------- hooks (run by the site agent)
    def preprocess(self) -> None:
        """Runs in STAGED_IN; must set ``self.job.state`` (default: PREPROCESSED)."""
        self.job.state = JobState.PREPROCESSED

    def postprocess(self) -> None:
        """Runs in RUN_DONE; must set ``self.job.state`` (default: POSTPROCESSED)."""
        self.job.state = JobState.POSTPROCESSED

    def handle_timeout(self) -> None:
        """Runs in RUN_TIMEOUT; must set ``self.job.state`` (default: RESTART_READY, a retry)."""
        self.job.state = JobState.RESTART_READY

    def handle_error(self) -> None:
        """Runs in RUN_ERROR; must set ``self.job.state`` (default: FAILED)."""
        self.job.state = JobState.FAILED

    def shell_preamble(self) -> Union[str, List[str], None]:
        """Shell lines run before the app on the launch node (a string is sourced; a list is joined with &&)."""
        return None

    # ---------------------------------------------------------------- introspection
    @classmethod
    def _app_name(cls) -> str:
        return cls.__name__

    @classmethod
    def has_hook(cls, name: str) -> bool:
        """True if the app overrides hook ``name`` (apps without hooks take the agent's bulk fast path)."""
        return getattr(cls, name) is not getattr(ApplicationDefinition, name)

    @classmethod
    def parameter_spec(cls) -> Dict[str, Dict[str, Any]]:
        """``{name: {required, default, help}}``."""
        return dict(cls._balsam_params)

    @classmethod
    def _require_concrete(cls) -> None:
        if cls._balsam_kind is None:
            raise AppError(f"{cls.__name__} has neither a command_template nor a run() method")

    @classmethod
    def _site_ref(cls) -> "SiteRef":
        loaded_from = cls.__dict__.get("_balsam_loaded_from")
        if loaded_from is not None:
            return _sites.ref_for_root(loaded_from)
        if cls.site is None:
            current = _sites.current_site()
            if current is None:
                raise AppError(f"{cls.__name__}: set site = 'site-name' on the class (or work inside a site)")
            return current
        return _sites.resolve(cls.site)

    # ---------------------------------------------------------------- commands
    @classmethod
    def render_command(cls, params: Dict[str, Any]) -> str:
        """The shell command for ``params``: defaults first, every value quoted for where it sits (balsam._api.command)."""
        cls._require_concrete()
        if cls._balsam_kind != "shell":
            raise AppError(f"{cls.__name__} is a Python app: it has no command line")
        values: Dict[str, Any] = dict(cls._balsam_defaults)
        values.update(params)
        for name in cls._balsam_required:
            if name not in values:
                raise ValidationError(f"{cls.__name__}: missing required parameter {name!r}")
        if cls._balsam_template is None:
            cls._balsam_template = compile_command(str(cls.command_template), cls.__name__)
        return str(cls._balsam_template(values))

    # ---------------------------------------------------------------- sync and submit
    @classmethod
    def sync(cls, rename_from: Optional[str] = None) -> int:
        """Save the app to its site (create, or update the app of the same name); returns its id."""
        from balsam._api.jobs import invalidate_app_cache

        cls._require_concrete()
        site = cls._site_ref()
        try:
            source, form = capture_source(cls, ApplicationDefinition), "source-v1"
        except AppError as exc:
            if "cannot find the source code" not in str(exc):
                raise
            source, form = pickle_class(cls), "cloudpickle-v1"  # python -c, stdin, the REPL: stored by value
        meta = dumps({"format": form, "class_name": cls.__name__, "module": cls.__module__,
                      "python": ".".join(map(str, sys.version_info[:3]))})
        fields = {"name": cls.__name__, "description": inspect.cleandoc(cls.__doc__ or ""), "kind": cls._balsam_kind,
                  "serialized_class": meta, "source_code": source, "parameters": dumps(cls._balsam_params),
                  "var_keyword": bool(cls._balsam_var_keyword), "transfers": dumps(cls._balsam_transfers)}
        if site.via_relay:  # app code never travels through the relay: use the app the site registered
            found = site.backend.select("app", {"name": [cls.__name__]}, columns=("id",))
            if not found:
                raise AppError(f"site {site.name}: no app {cls.__name__} there; register it on the site's host ({cls.__name__}.sync() "
                               "or 'balsam app sync' there): app code never travels through the relay")
            app_id = int(found[0][0])
        else:
            try:
                app_id = site.backend.sync_app(fields, rename_from=rename_from)
            except AppError as e:
                raise AppError(f"site {site.name}: {e}") from None
        cls.__app_id__ = app_id
        cls.__app_site__ = site.path
        cls._balsam_info = None
        invalidate_app_cache()
        return app_id

    @classmethod
    def submit(
        cls,
        workdir: Union[str, Path],
        *,
        tags: Optional[Dict[str, str]] = None,
        data: Optional[Dict[str, Any]] = None,
        num_nodes: int = 1,
        ranks_per_node: int = 1,
        threads_per_rank: int = 1,
        threads_per_core: int = 1,
        launch_params: Optional[Dict[str, str]] = None,
        gpus_per_rank: float = 0,
        node_packing_count: int = 1,
        wall_time_min: int = 0,
        parent_ids: Any = (),
        transfers: Optional[Dict[str, Any]] = None,
        save: bool = True,
        **params: Any,
    ) -> "Job":
        """Build a Job of this app (syncing the app first if needed) and save it unless ``save=False``."""
        from balsam._api.jobs import Job

        if cls.__app_id__ is None:
            cls.sync()
        job = Job(workdir, app_id=cls, tags=tags, parameters=params, data=data, num_nodes=num_nodes,
                  ranks_per_node=ranks_per_node, threads_per_rank=threads_per_rank, threads_per_core=threads_per_core,
                  launch_params=launch_params, gpus_per_rank=gpus_per_rank, node_packing_count=node_packing_count,
                  wall_time_min=wall_time_min, parent_ids=parent_ids, transfers=transfers)
        if save:
            job.save()
        return job

    # ---------------------------------------------------------------- loading at the site
    @classmethod
    def load_by_id(cls, app_id: int, site: Any = None) -> type:
        """The app class stored under ``app_id`` (reloaded when the app was re-synced since)."""
        from balsam.db.ids import site_of

        owner = _sites.site_by_id(site_of(app_id)) if site is None and site_of(app_id) else None
        ref = owner or _sites.single_site(site)
        rows = ref.backend.select("app", {"id": [int(app_id)]}, columns=("name", "source_code", "version"))
        row = rows[0] if rows else None
        if row is None:
            raise AppNotFound(f"no app with id {app_id} at site {ref.name}")
        return _load(ref, app_id, row[0], row[1], row[2])

    @classmethod
    def load_by_name(cls, name: str, site_name: Optional[str] = None) -> type:
        """The app class stored under ``name``."""
        ref = _sites.single_site(site_name or None)
        rows = ref.backend.select("app", {"name": [name]}, columns=("id", "source_code", "version"))
        row = rows[0] if rows else None
        if row is None:
            raise AppNotFound(f"no app named {name!r} at site {ref.name}")
        return _load(ref, row[0], name, row[1], row[2])

    @classmethod
    def load_by_site(cls, site: Any = None) -> Dict[str, type]:
        """Every app of a site, by name."""
        ref = _sites.single_site(site)
        rows = ref.backend.select("app", {}, columns=("id", "name", "source_code", "version"), order_by=("id",))
        return {name: _load(ref, app_id, name, src, ver) for app_id, name, src, ver in rows}

    @classmethod
    def to_dict(cls) -> Dict[str, Any]:
        """The app's description as stored."""
        return {"name": cls.__name__, "kind": cls._balsam_kind, "description": inspect.cleandoc(cls.__doc__ or ""),
                "parameters": cls.parameter_spec(), "transfers": dict(cls._balsam_transfers),
                "environment_variables": dict(cls.environment_variables), "cleanup_files": list(cls.cleanup_files)}


_loaded: Dict[Tuple[Path, int], Tuple[int, type]] = {}
_load_lock = threading.Lock()


def _load(ref: "SiteRef", app_id: int, name: str, source: str, version: int) -> type:
    if ref.via_relay:  # the relay never carries app code: what it served as code would run here (DESIGN.md 7)
        raise AppError(f"app {name} of site {ref.name} is read through the relay, which does not carry app code: "
                       f"load it on the site's host, or define the class in your own script")
    key = (ref.path, app_id)
    with _load_lock:
        hit = _loaded.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        module_name = f"_balsam_app_{ref.id}_{app_id}_v{version}"
        app_cls: Any = load_source(source, name, module_name, ApplicationDefinition)
        app_cls.__app_id__ = app_id
        app_cls.__app_site__ = ref.path
        app_cls._balsam_loaded_from = ref.path
        _loaded[key] = (version, app_cls)
        return app_cls  # type: ignore[no-any-return]


__all__ = ["ApplicationDefinition"]
