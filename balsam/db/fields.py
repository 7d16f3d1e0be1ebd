"""The one validator of each job field: every door (API, CLI, job files, launchers, the agent, HTTP) writes a
job's fields through :func:`check_fields` (DESIGN.md section 7).

Each field has one checker that takes the Python value and returns the value to store, or raises
ValidationError with one line that names the job and the field. Numbers are range-checked here (no inf, nan,
1e309 or 10**20 reaches SQLite or a launcher's arithmetic); paths and text are bounded and free of control
characters. Who may write what is here too: :data:`LAUNCHER_FIELDS` is all a launcher may write along with a
state change, and only for jobs its lease holds.
"""

from __future__ import annotations

import math
import operator
import os
import posixpath
import re
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Mapping, Optional

from balsam.exceptions import ValidationError

MAX_COUNT = 1_000_000
"""Upper bound of node, rank, thread and packing counts (far above any machine, far below an overflow)."""
MAX_GPUS_PER_RANK = 1024
MAX_WALL_TIME_MIN = 60 * 24 * 366
MAX_RETURN_CODE = 2**31
MAX_ID = 2**63 - 1
MAX_WORKDIR_CHARS = 1024
MAX_TAG_CHARS = 256
MAX_TAG_VALUE_CHARS = 1024
MAX_JSON_CHARS = 1 << 20
"""Largest data / launch_params document (as JSON text)."""
MAX_RESULT_BYTES = 64 << 20
"""Largest pickled run() result or exception a launcher may store."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""Control characters other than tab and line feed: what multi-line text (a scheduler's stderr) may not hold."""

COUNT_FIELDS = ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "node_packing_count")
RESOURCE_FIELDS = (*COUNT_FIELDS, "gpus_per_rank", "wall_time_min")
LAUNCHER_FIELDS: FrozenSet[str] = frozenset({"return_code", "serialized_return_value", "serialized_exception"})
"""What a launcher may write with a state change (besides the change's event data), for jobs its lease holds."""
UPDATABLE_FIELDS: FrozenSet[str] = frozenset({
    "workdir", "tags", "parameters", "data", "num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core",
    "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min", "batch_job_id", "pending_file_cleanup",
})
"""What a user may change on an existing job (results belong to the launcher that ran it; parents are added
through their own function; ``return_code`` is the launcher's too)."""


def _where(where: str) -> str:
    return where if not where or where.endswith(": ") else where + ": "


def check_count(name: str, value: Any, where: str = "", minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """An integer in [minimum, maximum] (bools and floats refused)."""
    if type(value) is not int or not minimum <= value <= maximum:
        if not isinstance(value, (bool, float)) and hasattr(value, "__index__"):
            number = operator.index(value)  # an int subclass, a NumPy integer
            if minimum <= number <= maximum:
                return number
        raise ValidationError(f"{_where(where)}{name} must be an integer from {minimum} to {maximum}, got {value!r}")
    return value


def check_gpus(value: Any, where: str = "") -> float:
    """gpus_per_rank: a finite number from 0 to MAX_GPUS_PER_RANK (fractions share a GPU)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{_where(where)}gpus_per_rank must be a number from 0 to {MAX_GPUS_PER_RANK}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or not 0 <= number <= MAX_GPUS_PER_RANK:
        raise ValidationError(f"{_where(where)}gpus_per_rank must be a number from 0 to {MAX_GPUS_PER_RANK}, got {value!r}")
    return number


def check_wall_time(value: Any, where: str = "") -> int:
    return check_count("wall_time_min", value, where, 0, MAX_WALL_TIME_MIN)


def check_text(name: str, value: Any, where: str = "", max_chars: int = MAX_TAG_VALUE_CHARS, empty: bool = True,
               multiline: bool = False) -> str:
    """A string of at most ``max_chars`` characters without control characters (``multiline``: tabs and line feeds
    allowed, as in the text a scheduler answers)."""
    if not isinstance(value, str):
        raise ValidationError(f"{_where(where)}{name} must be a string, got {value!r}")
    if len(value) > max_chars:
        raise ValidationError(f"{_where(where)}{name} is {len(value)} characters long (at most {max_chars})")
    if not empty and not value:
        raise ValidationError(f"{_where(where)}{name} must not be empty")
    if (_CONTROL_BUT_LINES if multiline else _CONTROL).search(value):
        raise ValidationError(f"{_where(where)}{name} {value[:60]!r} contains control characters")
    _check_unicode(name, value, where)
    return value


def escape_control(text: str) -> str:
    """``text`` with its control characters other than tab and line feed written as escapes (``\\x1b``, ``\\r``):
    how a tool's own words (a scheduler's stderr) are kept, shown as they were and never obeyed by a terminal."""
    return _CONTROL_BUT_LINES.sub(lambda m: repr(m.group())[1:-1], text)


def _check_unicode(name: str, value: str, where: str) -> None:
    """Refuse text that is not Unicode: a lone surrogate, as Python spells bytes that are not UTF-8 in a command
    line argument or a file name (SQLite cannot store it)."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValidationError(f"{_where(where)}{name} {value[:60]!r} is not valid Unicode text (bytes that are not UTF-8?)") from None


def normalize_workdir(workdir: Any, where: str = "") -> str:
    """A job workdir as a clean relative POSIX path under the site's data/ folder (bounded, printable)."""
    if not isinstance(workdir, (str, os.PathLike)):
        raise ValidationError(f"{_where(where)}workdir must be a path, got {workdir!r}")
    text = os.fspath(workdir)
    if not isinstance(text, str):
        raise ValidationError(f"{_where(where)}workdir must be a text path, got {workdir!r}")
    text = text.strip()
    if not text:
        raise ValidationError(f"{_where(where)}workdir must not be empty")
    if len(text) > MAX_WORKDIR_CHARS:
        raise ValidationError(f"{_where(where)}workdir is {len(text)} characters long (at most {MAX_WORKDIR_CHARS})")
    if _CONTROL.search(text):
        raise ValidationError(f"{_where(where)}workdir {text[:60]!r} contains control characters (newlines, tabs, ...)")
    _check_unicode("workdir", text, where)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ValidationError(f"{_where(where)}workdir {text!r} is absolute: give a path relative to the site's data/ folder")
    norm = posixpath.normpath(text.replace("\\", "/"))
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise ValidationError(f"{_where(where)}workdir {text!r} leaves the site's data/ folder")
    if any(len(part) > 255 for part in norm.split("/")):
        raise ValidationError(f"{_where(where)}workdir {text[:60]!r}...: a path component is longer than 255 characters")
    return norm


def check_tags(tags: Any, where: str = "", name: str = "tags") -> Dict[str, str]:
    """Tags are a str -> str dict (numbers are accepted and stored as strings)."""
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise ValidationError(f"{_where(where)}{name} must be a dict of strings, got {tags!r}")
    out = {}
    for k, v in tags.items():
        if not isinstance(k, str) or not k or not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise ValidationError(f"{_where(where)}{name} must map non-empty strings to strings, got {k!r}: {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValidationError(f"{_where(where)}tag {k!r}: {v!r} is not a finite number")
        check_text("tag name", k, where, MAX_TAG_CHARS)
        out[k] = check_text(f"tag {k!r}", v if isinstance(v, str) else str(v), where, MAX_TAG_VALUE_CHARS)
    return out


def check_str_dict(name: str, value: Any, where: str = "") -> Dict[str, str]:
    """launch_params: a str -> str dict."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"{_where(where)}{name} must be a dict of strings, got {value!r}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise ValidationError(f"{_where(where)}{name} must map non-empty strings to strings, got {k!r}: {v!r}")
        out[check_text(f"{name} key", k, where, MAX_TAG_CHARS)] = check_text(f"{name}[{k!r}]", str(v), where, MAX_TAG_VALUE_CHARS)
    return out


def check_launch_params(value: Any, where: str = "") -> Dict[str, str]:
    """launch_params: a str -> str dict of launcher flags and their values, each in a form no launcher reads as
    another flag, and ``cpu_bind`` a binding every launcher renders (which flags a site passes is checked where the
    site is known: balsam.db.launch_flags)."""
    from balsam.db.launch_flags import refuse

    out = check_str_dict("launch_params", value, where)
    if out:
        refuse(out, None, _where(where))
    return out


def _json_plain(value: Any, depth: int = 0) -> bool:
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return t is not int or -(2**63) <= value < 2**63
    if t is float:
        return math.isfinite(value)
    if depth > 64:
        return False
    if t is list:
        return all([_json_plain(v, depth + 1) for v in value])
    if t is dict:
        return all([type(k) is str and _json_plain(v, depth + 1) for k, v in value.items()])
    return False


def check_json_dict(name: str, value: Any, where: str = "") -> Dict[str, Any]:
    """``data``: a dict of plain JSON (finite numbers, string keys, at most 64 levels)."""
    if value is None:
        return {}
    if type(value) is not dict or not _json_plain(value):
        raise ValidationError(f"{_where(where)}{name} must be a dict of plain JSON values (finite numbers, string keys), "
                              f"got {repr(value)[:80]}")
    return value


def check_parent_ids(value: Any, where: str = "") -> List[int]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValidationError(f"{_where(where)}parent_ids must be a list of job ids, got {value!r}")
    return [check_count("parent id", p, where, 1, MAX_ID) for p in value]


def check_optional_id(name: str, value: Any, where: str = "") -> Optional[int]:
    return None if value is None else check_count(name, value, where, 1, MAX_ID)


def check_return_code(value: Any, where: str = "") -> Optional[int]:
    return None if value is None else check_count("return_code", value, where, -MAX_RETURN_CODE, MAX_RETURN_CODE - 1)


def check_result(name: str, value: Any, where: str = "") -> Optional[bytes]:
    """A pickled run() result or exception, as the launcher's runner produced it (bounded)."""
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValidationError(f"{_where(where)}{name} must be bytes, got {type(value).__name__}")
    if len(value) > MAX_RESULT_BYTES:
        raise ValidationError(f"{_where(where)}{name} is {len(value)} bytes (at most {MAX_RESULT_BYTES}): return less from run()")
    return bytes(value)


def check_bool(name: str, value: Any, where: str = "") -> bool:
    if value not in (True, False, 0, 1) or isinstance(value, float):
        raise ValidationError(f"{_where(where)}{name} must be true or false, got {value!r}")
    return bool(value)


def check_parameter_names(where: str, app: str, known: Collection[str], required: Collection[str], given: Collection[str],
                          var_keyword: bool = False) -> None:
    """A new job's parameter names against its app's: every required one given, and no unknown one (unless the
    app's run() takes ``**kwargs``). A misspelt name is named as such, with the one it resembles."""
    missing = sorted(k for k in required if k not in given)
    unknown = [] if var_keyword else sorted(k for k in given if k not in known)
    if unknown:
        import difflib

        for k in unknown:
            close = difflib.get_close_matches(k, list(known), n=1, cutoff=0.6)
            if close:
                raise ValidationError(f"{where}: app {app} has no parameter {k!r} (Did you mean {close[0]!r}?)")
    if missing:
        raise ValidationError(f"{where}: app {app} needs parameter {missing[0]!r}")
    if unknown:
        raise ValidationError(f"{where}: app {app} has no parameter {unknown[0]!r} (parameters: {', '.join(sorted(known)) or 'none'})")


CHECKERS: Dict[str, Callable[[Any, str], Any]] = {
    "workdir": normalize_workdir,
    "tags": check_tags,
    "data": lambda v, w: check_json_dict("data", v, w),
    "launch_params": check_launch_params,
    "num_nodes": lambda v, w: check_count("num_nodes", v, w),
    "ranks_per_node": lambda v, w: check_count("ranks_per_node", v, w),
    "threads_per_rank": lambda v, w: check_count("threads_per_rank", v, w),
    "threads_per_core": lambda v, w: check_count("threads_per_core", v, w),
    "node_packing_count": lambda v, w: check_count("node_packing_count", v, w),
    "gpus_per_rank": check_gpus,
    "wall_time_min": check_wall_time,
    "parent_ids": check_parent_ids,
    "batch_job_id": lambda v, w: check_optional_id("batch_job_id", v, w),
    "pending_file_cleanup": lambda v, w: check_bool("pending_file_cleanup", v, w),
    "return_code": check_return_code,
    "serialized_return_value": lambda v, w: check_result("serialized_return_value", v, w),
    "serialized_exception": lambda v, w: check_result("serialized_exception", v, w),
}
"""Field name -> its checker (``parameters`` is checked and encoded by balsam.db.codec.encode_parameters)."""


def check_fields(fields: Mapping[str, Any], where: str = "", allowed: FrozenSet[str] = UPDATABLE_FIELDS) -> Dict[str, Any]:
    """Every field checked by its one checker; a field outside ``allowed`` is refused by name."""
    out: Dict[str, Any] = {}
    for name, value in fields.items():
        if name not in allowed:
            raise ValidationError(f"{_where(where)}job field {name!r} cannot be written here (allowed: {', '.join(sorted(allowed))})")
        checker = CHECKERS.get(name)
        out[name] = value if checker is None else checker(value, where)
    return out


__all__ = [
    "CHECKERS", "COUNT_FIELDS", "LAUNCHER_FIELDS", "MAX_COUNT", "MAX_RESULT_BYTES", "MAX_WORKDIR_CHARS", "RESOURCE_FIELDS",
    "UPDATABLE_FIELDS", "check_count", "check_fields", "check_parameter_names", "check_gpus", "check_json_dict", "check_result", "check_tags", "check_text",
    "escape_control", "normalize_workdir",
]
