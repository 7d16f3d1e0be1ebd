"""How Python values are stored in the site DB: compact JSON, parameters, pickled results.

Job parameters are a JSON object whose keys are always readable (so the store can check them against the
app). A value that is not plain JSON (a tuple, a NumPy array, an object) is pickled into a separate column
(``job.parameters_pickled``), out of band: nothing a user writes as data can reach it, and the JSON is never
unpickled whatever its shape (DESIGN.md section 7). The old in-band marker ``{"__pickle__": ...}`` is refused
on input.
"""

from __future__ import annotations

import json
import pickle
import sys
from typing import Any, Dict, Optional, Tuple

from balsam.exceptions import ValidationError

try:
    from orjson import loads as _orjson_loads
except ImportError:  # the pure-Python install (the zipapp): the standard library parses alone
    _orjson_loads = None  # type: ignore[assignment]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads
_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]
_INFINITIES = (float("inf"), float("-inf"))
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})
PICKLE_KEY = "__pickle__"
"""The in-band marker older versions wrote; refused on input, never interpreted."""


def _scalar(v: Any) -> Optional[str]:
    """JSON text of a str, int, float, bool or None, written directly; None for anything else."""
    t = type(v)
    if t is str:
        return _quote(v)  # type: ignore[no-any-return]
    if t is int:
        return int.__repr__(v)
    if t is float:
        return float.__repr__(v) if v == v and v not in _INFINITIES else None
    if t is bool:
        return "true" if v else "false"
    if v is None:
        return "null"
    return None


def _flat_object(value: Dict[Any, Any]) -> Optional[str]:
    """JSON text of a non-empty flat dict of str keys to plain scalars (finite floats), written directly; None for
    any other dict. String values, the common case (tags, most parameters), take the shortest path."""
    parts = []
    for k, v in value.items():
        if type(k) is not str:
            return None
        if type(v) is str:
            parts.append(_quote(k) + ":" + _quote(v))
            continue
        text = _scalar(v)
        if text is None:
            return None
        parts.append(_quote(k) + ":" + text)
    return "{" + ",".join(parts) + "}"


def tags_json(tags: Dict[Any, Any], max_chars: int) -> Optional[str]:
    """JSON text of tags that are plainly valid (non-empty printable str keys to printable str values, each at
    most ``max_chars``), checked and written in one pass; None when any tag needs the full check (which then
    refuses it, or converts a number to its string)."""
    parts = []
    for k, v in tags.items():
        if type(v) is not str or type(k) is not str or not k or len(v) > max_chars or len(k) > max_chars or not (k + v).isprintable():
            return None
        parts.append(_quote(k) + ":" + _quote(v))
    return "{" + ",".join(parts) + "}"


def dumps(value: Any) -> str:
    """Compact JSON (the form every JSON column holds).

    Empty containers and flat dicts of scalars (tags, most parameters) are written directly: building the C
    encoder per call costs more than the encoding, and bulk creation does this per job.
    """
    t = type(value)
    if t is dict:
        if not value:
            return "{}"
        text = _flat_object(value)
        return _dumps(value) if text is None else text
    if t is list and not value:
        return "[]"
    return _dumps(value)


_DIGIT_RUNS = bytes(57 if 48 <= i <= 57 else 32 for i in range(256))
"""A table for ``bytes.translate``: every digit becomes "9", everything else a space."""
_LONG_RUN = b"9" * 19


def loads_body(data: bytes) -> Any:
    """A request's or an answer's JSON document. With orjson installed (``balsam[fast]``) it parses ~3x faster, but
    orjson reads an integer past 64 bits as a float: a document with a run of 19 or more digits (which may be one;
    ids have 16) goes to :mod:`json`, as does whatever orjson refuses, and that answer (or error) stands: both
    read every document exactly alike. ValueError when it is not JSON."""
    if _orjson_loads is not None and _LONG_RUN not in data.translate(_DIGIT_RUNS):
        try:
            return _orjson_loads(data)
        except ValueError:
            pass
    return _loads(data)


def loads(text: Optional[str]) -> Any:
    """Parse a JSON column (None stays None). The empty object and list, which most jobs' tags, data, launch
    parameters and parents are, skip the parser (a launcher acquiring a flood decodes four per job)."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return None if text is None else _loads(text)


MAX_DEPTH = 64
"""Deepest nesting of a parameter value (as for ``data``): deeper JSON would reach Python's recursion limit in
whoever reads it back."""


def _is_plain(value: Any, key: str, depth: int = 0) -> bool:
    """True for a value JSON gives back unchanged; refuses the old in-band pickle marker wherever it sits, and
    lists and dicts nested more than :data:`MAX_DEPTH` levels deep."""
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None:
        return t is not float or (value == value and value not in _INFINITIES)
    if depth >= MAX_DEPTH and (t is list or t is dict):
        raise ValidationError(f"parameter {key!r} is nested more than {MAX_DEPTH} levels deep")
    if t is list:
        return all([_is_plain(v, key, depth + 1) for v in value])
    if t is dict:
        if PICKLE_KEY in value:
            raise ValidationError(
                f"parameter {key!r}: a {{{PICKLE_KEY!r}: ...}} value is refused (serialized values cannot be given as "
                "data; pass the Python object through the Python API instead)"
            )
        return all([type(k) is str and _is_plain(v, key, depth + 1) for k, v in value.items()])
    return False


def _placeholder(value: Any) -> str:
    t = type(value)
    return f"<pickled {t.__module__}.{t.__qualname__}>"


def encode_parameters(params: Dict[str, Any]) -> Tuple[str, Optional[bytes]]:
    """Parameters to their stored form: (JSON text, pickled values or None).

    Values JSON gives back unchanged go in the JSON; any other value (a tuple, a Fraction, an array) is pickled
    into the second part (the ``parameters_pickled`` column), and the JSON holds a readable placeholder under its
    key, so the store can still check names. Only this process's own objects are pickled here: text that came
    from outside is parsed JSON, plain by construction, so nothing outside can reach the pickled column.
    """
    flat = _flat_object(params) if type(params) is dict and params else None
    if flat is not None:  # the common case: names to strings and numbers
        return flat, None
    for k, v in params.items():
        t = type(v)
        if (t is float and (v != v or v in _INFINITIES)) or (t not in _PLAIN_SCALARS and not _is_plain(v, k)):
            break
    else:
        if all([type(k) is str for k in params]):
            return dumps(params), None
    out: Dict[str, Any] = {}
    pickled: Dict[str, Any] = {}
    for key, value in params.items():
        if type(key) is not str:
            raise ValidationError(f"parameter names must be strings, got {key!r}")
        if _is_plain(value, key):
            out[key] = value
        else:
            out[key] = _placeholder(value)
            pickled[key] = value
    try:
        blob = pickle_value(pickled)
    except Exception as exc:
        raise ValidationError(f"parameters {sorted(pickled)}: cannot be stored: {type(exc).__name__}: {exc}") from None
    return _dumps(out), blob


def decode_parameters(text: Optional[str], pickled: Optional[bytes] = None) -> Dict[str, Any]:
    """Stored parameters back to Python values: the JSON as it is (whatever its shape), then the values of the
    out-of-band pickled column (written only by :func:`encode_parameters`) over their placeholders."""
    params: Dict[str, Any] = _loads(text) if text else {}
    if pickled:
        params.update(pickle.loads(pickled))
    return params


_HERE_ONLY = (b"__main__", b"_balsam_app_")
"""Module names a plain pickle may name that another process cannot import: a script's, a notebook's or the
interactive prompt's ``__main__``, and the modules a launcher loads apps' shipped code into."""


def pickle_value(value: Any) -> bytes:
    """A Python value (run() parameters, a result or an exception) as bytes another process can load.

    A plain pickle names every class and function by module, which is enough when the reader can import them.
    What lives only in this process (a lambda, a function or class defined in a script, a notebook or an app's own
    code) is pickled by value with cloudpickle instead, as Balsam 0.7's dill did: such values fail a plain pickle,
    or name one of :data:`_HERE_ONLY`. Both forms load with ``pickle.loads`` (given cloudpickle installed).
    """
    try:
        data = pickle.dumps(value, protocol=4)
    except Exception:
        data = b""
    if data and not any([mark in data for mark in _HERE_ONLY]):
        return data
    import cloudpickle

    for name in [n for n in sys.modules if n.startswith("_balsam_app_")]:  # importable here only: by value too
        cloudpickle.register_pickle_by_value(sys.modules[name])
    return cloudpickle.dumps(value, protocol=4)  # type: ignore[no-any-return]


def unpickle_value(data: Optional[bytes]) -> Any:
    """Stored bytes back to the Python value."""
    return None if data is None else pickle.loads(data)
