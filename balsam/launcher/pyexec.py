"""Running a Python app's ``run()`` in this process, on a compute node, without the site DB.

Used by the warm workers (:mod:`balsam.launcher.pyworker`) and the one-shot runner for MPI and custom
interpreters (:mod:`balsam.launcher.pyrun`). The app arrives as its stored source and is loaded under the
module name the Python API uses (``_balsam_app_<site>_<app>_v<version>``), so values of the app's own classes
unpickle on the client that loads the same app. ``self.job`` inside ``run()`` is a :class:`JobView`: the
job's fields as the launcher acquired them (there is no DB on a compute node).

The outcome is ``(return_code, serialized_return_value, serialized_exception)``: 0 and the pickled value, or
1 and a pickled ``(exception, traceback_text)`` (what ``Job.result()`` re-raises). The traceback is also
printed to stderr, which is the job's ``job.out``.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

Outcome = Tuple[int, Optional[bytes], Optional[bytes]]


class JobView:
    """``self.job`` inside ``run()``: the job's fields at acquisition, read-only."""

    id: int
    workdir: str
    app_id: int
    tags: Dict[str, str]
    data: Dict[str, Any]
    parameters: Dict[str, Any]

    def __init__(self, fields: Dict[str, Any]) -> None:
        self.__dict__.update(fields)

    def get_parameters(self) -> Dict[str, Any]:
        """The job's parameters."""
        return dict(self.parameters)

    @property
    def workdir_path(self) -> Path:
        """The absolute path of the job's workdir."""
        return Path(self.__dict__["workdir_path"])

    def resolve_workdir(self, data_path: Optional[Path] = None) -> Path:
        """The absolute path of the workdir (under ``data_path`` if given)."""
        return Path(data_path) / self.workdir if data_path is not None else self.workdir_path

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"job {self.id}: self.job is read-only inside run() (set job.data in a postprocess hook)")

    def __repr__(self) -> str:
        return f"JobView(id={self.id}, workdir={self.workdir!r})"


def app_module_name(site_id: int, app_id: int, version: int) -> str:
    """The module an app's source is loaded into (the Python API uses the same name)."""
    return f"_balsam_app_{site_id}_{app_id}_v{version}"


def preload_app_support() -> None:
    """Import what :func:`load_app` needs, ahead of the first app."""
    import balsam._api.app  # noqa: F401
    import balsam._api.appsource  # noqa: F401


def load_app(source: str, class_name: str, module_name: str) -> type:
    """The app class from its stored source (AppError if it does not load). Always executes the source: callers
    cache per app version."""
    from balsam._api.app import ApplicationDefinition
    from balsam._api.appsource import load_source

    return load_source(source, class_name, module_name, ApplicationDefinition)


def pickle_exception(exc: BaseException, tb_text: str) -> bytes:
    """``(exc, traceback_text)`` pickled; an exception that does not round-trip becomes a RuntimeError."""
    from balsam.db.codec import pickle_value

    try:
        data = pickle_value((exc, tb_text))
        pickle.loads(data)
        return data
    except Exception:
        return pickle.dumps((RuntimeError(f"{type(exc).__name__}: {exc}"), tb_text), protocol=4)


def run_arguments(app_cls: type, params: Dict[str, Any]) -> Tuple[List[Any], Dict[str, Any]]:
    """``run()``'s positional and keyword arguments from a job's parameters.

    For ``def run(self, a, *args)`` (Balsam 0.7 allows it) the parameter named after ``*args`` holds a list
    spread as positional arguments, after the named ones before it.
    """
    star = getattr(app_cls, "_balsam_var_positional", None)
    if not star:
        return [], params
    import inspect

    kwargs = dict(params)
    extra = list(kwargs.pop(star, None) or [])
    lead: List[Any] = []
    run = app_cls.run  # type: ignore[attr-defined]
    for p in list(inspect.signature(run).parameters.values())[1:]:
        if p.kind is p.VAR_POSITIONAL:
            break
        if p.name in kwargs:
            lead.append(kwargs.pop(p.name))
        elif p.default is not p.empty:
            lead.append(p.default)
        else:
            break  # a required argument is missing: run() raises TypeError, which fails the job with its message
    return lead + extra, kwargs


def call_run(app_cls: type, job: Dict[str, Any], stored: Sequence[Any]) -> Outcome:
    """Call ``app_cls(job).run(**params)`` and capture its outcome (never raises, apart from KeyboardInterrupt).

    ``stored`` is ``[parameters JSON, pickled values or None]`` as the store's two columns hold them (the pickled
    column is written only from the site owner's own Python objects: DESIGN.md section 7)."""
    from balsam.db.codec import decode_parameters

    try:
        params = decode_parameters(stored[0], stored[1])
        view = JobView(dict(job, parameters=params))
        instance: Any = app_cls(view)
        args, kwargs = run_arguments(app_cls, params)
        from balsam._api import rerun

        with rerun.hook_running(int(job.get("id") or 0)):  # run again, it takes the jobs it made before (balsam._api.rerun)
            value = instance.run(*args, **kwargs)
    except SystemExit as exc:
        if exc.code in (None, 0):
            value = None
        else:
            return _failure(exc)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return _failure(exc)
    from balsam.db.codec import pickle_value

    try:
        return 0, pickle_value(value), None
    except Exception as exc:
        err = TypeError(f"the value run() returned cannot be pickled: {type(exc).__name__}: {exc}")
        print(f"balsam: {err}", file=sys.stderr)
        return 1, None, pickle_exception(err, "")


def _failure(exc: BaseException) -> Outcome:
    tb_text = traceback.format_exc()
    try:
        sys.stderr.write(tb_text)
    except Exception:
        pass
    return 1, None, pickle_exception(exc, tb_text)
