"""Which ``launch_params`` a job may pass to its MPI launcher: flags that bind, place or map processes.

Whoever creates a job names its launch_params (a user at a laptop, a job that creates jobs, the relay), and a
launcher flag can do far more than place ranks: ``mpirun -x BASH_ENV=...`` or ``--mca plm_rsh_agent`` and
``mpiexec -env LD_PRELOAD ...`` run a program of the caller's choosing. So each launcher passes only the flags of
its table below, as Balsam 0.7's documented uses need (``cpu_bind=depth``, ``--cpu-bind``, GPU binding, ``-d``);
a site's owner may allow more for their own site in settings.yml::

    launcher:
      allowed_launch_params: ["--mca"]     # their site, their risk

A job is refused when it is created (at the site, through its agent and at the relay) and again before it
launches, in one line naming the flag. The relay checks against what the site allows, as the site last reported it
when it synced (:func:`extra_flags`); the site, which checks every command it applies, remains the judge. A value may not start with ``-`` (it would be read as a flag of its own).
The tables live with the validating writer of launch_params (the site store's rules, which the relay and the
launcher share); the launch lines themselves are built in balsam.platforms.mpi.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Optional

from balsam.exceptions import ValidationError

ALLOWED: Dict[str, FrozenSet[str]] = {
    "srun": frozenset({
        "--cpu-bind", "--cpu_bind", "--mem-bind", "--gpu-bind", "--distribution", "-m", "--hint", "--overlap", "--exclusive",
        "--cpus-per-task", "-c", "--cpus-per-gpu", "--gpus-per-task", "--gpus-per-node", "--gpus", "--gres", "--ntasks-per-core",
        "--ntasks-per-socket", "--ntasks-per-gpu", "--threads-per-core", "--cores-per-socket", "--sockets-per-node",
        "--gpu-freq", "--cpu-freq", "--mem", "--mem-per-cpu", "--mem-per-gpu",
    }),
    "pals": frozenset({"--cpu-bind", "--mem-bind", "--depth", "-d", "--gpu-bind", "--no-vni"}),
    "mpiexec": frozenset({"-bind-to", "--bind-to", "-map-by", "--map-by", "-binding", "-rr", "-membind", "--membind"}),
    "mpirun": frozenset({
        "--bind-to", "-bind-to", "--map-by", "-map-by", "--rank-by", "-rank-by", "--report-bindings", "-report-bindings",
        "--cpu-set", "--cpu-list", "--cpus-per-proc", "--cpus-per-rank", "--use-hwthread-cpus", "--oversubscribe",
        "--npersocket", "--npernode",
    }),
    "aprun": frozenset({"-cc", "--cpu-binding", "-d", "--cpus-per-pe", "-j", "--cpus-per-cu", "-S", "--pes-per-numa-node",
                        "-sl", "-sn", "-ss", "-r", "--specialized-cpus"}),
    "jsrun": frozenset({"--bind", "-b", "--launch_distribution", "-d", "--latency_priority", "-l", "--gpu_per_rs", "-g",
                        "--cpu_per_rs", "-c", "--rs_per_host", "-r", "--tasks_per_rs", "-a", "--smt", "--brs"}),
}
"""Per launcher (``launcher.mpi_launcher``), the flags it passes from launch_params."""
ANY = frozenset().union(*ALLOWED.values())
"""Every launcher's flags: what a job may name wherever the launcher is not known yet (the relay, ``auto``)."""
AUTO_FLAVOURS = ("mpiexec", "mpirun", "pals")
"""The launchers ``mpi_launcher: auto`` may pick."""
_EXAMPLES = ("--cpu-bind", "--gpu-bind", "--bind-to", "--map-by", "-d", "-cc", "--bind")
_FLAG = re.compile(r"^--?[A-Za-z][A-Za-z0-9_-]*$")


def flag_of(key: str) -> str:
    """The flag a launch_params key becomes (as :func:`~balsam.platforms.mpi.base.param_args` writes it): ``--cpu-bind``
    for ``cpu-bind``, ``-d`` for ``d``; a ``--flag=value`` key is its flag."""
    key = str(key)
    flag = key if key.startswith("-") else (f"-{key}" if len(key) == 1 else f"--{key}")
    return flag.split("=", 1)[0]


def allowed_for(launcher: str, extra: Iterable[str] = ()) -> FrozenSet[str]:
    """The flags ``launcher`` passes (``auto``: any of the launchers it may pick), and a site owner's ``extra``."""
    if launcher == "auto":
        base: FrozenSet[str] = frozenset().union(*(ALLOWED[f] for f in AUTO_FLAVOURS))
    elif launcher == "local":
        base = ANY  # it passes no flags at all: a job made for another site's MPI still runs here
    else:
        base = ALLOWED.get(launcher, ANY)
    return base | frozenset(flag_of(e) for e in extra)


def bad_extra(entries: Iterable[str]) -> Optional[str]:
    """The first entry of settings.yml's ``launcher.allowed_launch_params`` that is not a flag, or None."""
    for e in entries:
        if not isinstance(e, str) or not _FLAG.match(flag_of(e)):
            return repr(e)
    return None


EXTRA_META_KEY = "launch_flags_extra"
"""The site store's meta key holding settings.yml's ``launcher.allowed_launch_params`` (a JSON list), copied there
with the site row's policies, so every door that creates jobs at the site honours them."""


def site_extra(conn: sqlite3.Connection) -> FrozenSet[str]:
    """The flags the site's owner allowed on top of :data:`ANY` (settings.yml, as last copied into the store)."""
    from balsam.db.meta import read_meta

    text = read_meta(conn, EXTRA_META_KEY)
    try:
        return frozenset(flag_of(f) for f in json.loads(text)) if text else frozenset()
    except (ValueError, TypeError):
        return frozenset()


MAX_EXTRA = 200
"""Flags a site's owner may add, at most (what a site reports to the relay is bounded by it)."""


def extra_flags(entries: Any) -> FrozenSet[str]:
    """A site's added flags as it reports them to the relay when it syncs (a list; what is not a flag is ignored):
    the relay checks a job's launch_params against :data:`ANY` and these, as that site would."""
    if not isinstance(entries, list) or len(entries) > MAX_EXTRA:
        return frozenset()
    return frozenset(flag_of(e) for e in entries if isinstance(e, str) and len(e) <= 100 and _FLAG.match(flag_of(e)))


def refuse_at_site(conn: sqlite3.Connection, launch_params: Mapping[str, str], where: str) -> None:
    """ValidationError (one line, starting with ``where``) unless every flag may be passed at this site."""
    refuse(launch_params, ANY | site_extra(conn), where)


def refuse(launch_params: Mapping[str, str], allowed: Optional[FrozenSet[str]], where: str = "",
           launcher: str = "MPI launchers") -> None:
    """ValidationError (one line, starting with ``where``, naming the first bad flag) unless every flag can be
    passed. ``allowed`` None checks only the form of flags and values (the rest is checked where the site is known)."""
    why = _refused(launch_params, allowed, launcher)
    if why is not None:
        raise ValidationError(f"{where}{why}")


CPU_BIND_KINDS = ("none", "core", "hwthread", "depth", "numa", "list")
"""The bindings every MPI launcher renders from ``launch_params["cpu_bind"]`` (balsam.platforms.mpi, which refuses
the same at launch: tests/test_launch_flags.py checks that the two agree)."""
MAX_CPU_ID = 1 << 16
_CPU_GROUP = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def bind_refused(value: str) -> Optional[str]:
    """Why ``launch_params["cpu_bind"]`` is not a binding (None when it is one of :data:`CPU_BIND_KINDS`, or
    ``list`` with one CPU list per rank: ``list:0-3:4-7``, ``list:0,2:1,3``). Refused when the job is made or changed,
    not when a launcher first tries to start it."""
    kind, _, rest = value.partition(":")
    if kind not in CPU_BIND_KINDS or (kind != "list" and rest):
        return (f"launch_params cpu_bind {value[:60]!r} is not a binding: use one of {', '.join(CPU_BIND_KINDS[:-1])} "
                "or list:CPUS:CPUS... (one CPU list per rank, e.g. list:0-3:4-7)")
    if kind != "list":
        return None
    groups = rest.split(":")
    bad = next((g for g in groups if not _CPU_GROUP.match(g)), None)
    if bad is not None:
        return (f"launch_params cpu_bind {value[:60]!r}: a list binding names one CPU list per rank, each like 0-3 or "
                f"0,2,4 (e.g. list:0-3:4-7), not {bad[:20]!r}")
    for group in groups:
        for part in group.split(","):
            lo, _, hi = part.partition("-")
            if int(hi or lo) < int(lo) or int(hi or lo) >= MAX_CPU_ID:
                return f"launch_params cpu_bind {value[:60]!r}: CPU range {part!r} runs backwards or past CPU {MAX_CPU_ID - 1}"
    return None


def _refused(launch_params: Mapping[str, str], allowed: Optional[FrozenSet[str]], launcher: str) -> Optional[str]:
    for key, value in launch_params.items():
        if key == "cpu_bind":  # Balsam's own binding, which each launcher renders in its own flags
            why = bind_refused(str(value))
            if why is not None:
                return why
        flag = flag_of(key)
        if not _FLAG.match(flag):
            return f"launch_params key {key!r} is not a launcher flag (a name like cpu-bind, --cpu-bind or -d)"
        if allowed is not None and flag not in allowed:
            examples = [f for f in _EXAMPLES if f in allowed][:4] or sorted(allowed)[:4]
            return (f"launch_params flag {flag} is not one Balsam passes to {launcher}: only flags that bind, place or "
                    f"map processes are (e.g. {', '.join(examples) or 'none here'}); the site's owner may allow "
                    f"more in settings.yml launcher.allowed_launch_params")
        text = str(value)
        attached = str(key).split("=", 1)[1] if "=" in str(key) else ""
        for part in (text, attached):
            if part.startswith("-") or any(c.isspace() or ord(c) < 32 for c in part):
                return (f"launch_params[{key!r}] = {text!r}: a value may not start with '-' or hold spaces or line breaks "
                        f"(the launcher would read another flag)")
    return None
