"""Rendering a site's ``job-template.sh`` (Jinja) into the batch script a scheduler runs.

The context contract, shared by every preset's template and the site agent that renders them:

=================  ====================================================================================
name               meaning
=================  ====================================================================================
balsam             the shell words that run Balsam (``python3 /path/balsam.pyz`` or ``balsam``); rendered
                   as given, unquoted, since it may be several words
site_path          the site directory (render with ``| shquote``)
batch_job_id       the BatchJob's id in the site DB
job_mode           ``mpi`` or ``serial``
wall_time_min      minutes the scheduler grants
num_nodes          nodes requested
project, queue     the scheduler account and queue ('' when not used)
filter_tags        dict: the launcher only runs jobs with these tags
partitions         list of ``mode:nodes[:k=v,...]`` strings splitting the allocation between launchers
optional_params    dict of extra scheduler parameters (reservation, filesystems, constraint, qos, ...)
=================  ====================================================================================

Balsam 0.7's template names render too, so its documented templates work unchanged: ``launcher_cmd``
(``{{ balsam }} launcher --batch-job-id N``), ``balsam_site_path``, ``balsam_bin`` (the directory of the Python
that runs Balsam), ``pg_bin`` (empty: no PostgreSQL here); ``{{ partitions }}`` printed whole gives 0.7's
``--part mode:n[:k=v]`` words while a loop over it still yields each partition string.

Inside a template the launcher starts as
``{{ balsam }} launcher --batch-job-id N -j MODE -t WALLMIN [--tag k=v]... [-p mode:n[:k=v]]...``.
Filters: ``shquote`` (:func:`shlex.quote`, for anything the shell parses) and ``directive`` (for values in
``#SBATCH``/``#PBS`` lines, which no shell parses: refuses line breaks), ``hms`` (minutes to ``HH:MM:00``).
Undefined names are errors (StrictUndefined), so a typo in a template fails at render time, not in the queue.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from balsam.exceptions import ConfigError

if TYPE_CHECKING:
    import jinja2

CONTEXT_KEYS = (
    "balsam",
    "site_path",
    "batch_job_id",
    "job_mode",
    "wall_time_min",
    "num_nodes",
    "project",
    "queue",
    "filter_tags",
    "partitions",
    "optional_params",
)

BALSAM07_KEYS = ("launcher_cmd", "balsam_site_path", "balsam_bin", "pg_bin")

JOB_MODES = ("mpi", "serial")


class Partitions(List[str]):
    """The partition strings; printed whole (``{{ partitions }}``, as Balsam 0.7 templates do) they are the
    launcher's ``--part`` words."""

    def __str__(self) -> str:
        return "".join(f" --part {shlex.quote(p)}" for p in self)


def _shquote(value: Any) -> str:
    return shlex.quote(str(value))


def _directive(value: Any) -> str:
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ConfigError(f"job template: a scheduler directive value may not contain a line break: {text!r}")
    return text


def _hms(minutes: Any) -> str:
    m = int(minutes)
    return f"{m // 60:02d}:{m % 60:02d}:00"


def make_environment() -> "jinja2.Environment":
    """The Jinja environment job templates render in (strict, no autoescape, trailing newline kept)."""
    import jinja2  # deferred: only rendering pays for the import

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters["shquote"] = _shquote
    env.filters["directive"] = _directive
    env.filters["hms"] = _hms
    return env


def render_job_script(template_text: str, context: Mapping[str, Any]) -> str:
    """Render a job template with ``context`` (see the module docstring); template errors are ConfigError."""
    import jinja2

    env = make_environment()
    try:
        template = env.from_string(template_text)
        return template.render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"job template: syntax error at line {exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"job template: {exc.message} (known names: {', '.join(CONTEXT_KEYS + BALSAM07_KEYS)})") from None
    except Exception as exc:  # an expression of the template failed ({{ num_nodes + "x" }}, a division by zero, ...)
        # Before, it left the renderer as itself: "unexpected TypeError" at --dry-run, and at the agent a BatchJob that
        # stayed "submitting" and was tried again every cycle instead of failing with the reason.
        line = _template_line(exc.__traceback__)
        where = f" line {line}" if line else ""
        raise ConfigError(f"job template{where}: {type(exc).__name__}: {exc}") from None


def _template_line(tb: Any) -> Optional[int]:
    """The template's line where rendering failed (Jinja rewrites its frames as the template's, file "<template>")."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


_TAG_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def format_partition(job_mode: str, num_nodes: int, filter_tags: Optional[Mapping[str, str]] = None) -> str:
    """One partition string, ``mode:nodes[:k=v,...]`` (pure)."""
    if job_mode not in JOB_MODES:
        raise ConfigError(f"partition job mode must be one of {', '.join(JOB_MODES)}, got {job_mode!r}")
    if int(num_nodes) < 1:
        raise ConfigError(f"partition needs at least one node, got {num_nodes}")
    text = f"{job_mode}:{int(num_nodes)}"
    tags = ",".join(f"{k}={v}" for k, v in sorted((filter_tags or {}).items()))
    return f"{text}:{tags}" if tags else text


def job_script_context(
    *,
    balsam: str,
    site_path: str,
    batch_job_id: int,
    job_mode: str,
    wall_time_min: int,
    num_nodes: int,
    project: str = "",
    queue: str = "",
    filter_tags: Optional[Mapping[str, str]] = None,
    partitions: Sequence[str] = (),
    optional_params: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """Build and check a template context (every key of :data:`CONTEXT_KEYS`)."""
    if job_mode not in JOB_MODES:
        raise ConfigError(f"job_mode must be one of {', '.join(JOB_MODES)}, got {job_mode!r}")
    if int(wall_time_min) < 1 or int(num_nodes) < 1:
        raise ConfigError(f"wall_time_min and num_nodes must be positive, got {wall_time_min} and {num_nodes}")
    for key in filter_tags or {}:
        if not _TAG_KEY.match(str(key)):
            raise ConfigError(f"filter tag name {key!r}: use letters, digits, '_', '.', '-'")
    parts = Partitions(str(p) for p in partitions)
    return {
        "launcher_cmd": f"{balsam} launcher --batch-job-id {int(batch_job_id)}",
        "balsam_site_path": shlex.quote(site_path),
        "balsam_bin": shlex.quote(os.path.dirname(sys.executable)),
        "pg_bin": "",
        "balsam": balsam,
        "site_path": site_path,
        "batch_job_id": int(batch_job_id),
        "job_mode": job_mode,
        "wall_time_min": int(wall_time_min),
        "num_nodes": int(num_nodes),
        "project": project,
        "queue": queue,
        "filter_tags": dict(filter_tags or {}),
        "partitions": parts,
        "optional_params": dict(optional_params or {}),
    }
