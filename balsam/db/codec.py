"""How Python values are stored in the site DB: compact JSON, parameters, pickled results.

Job parameters are a JSON object whose keys are always readable (so the store can check them against the
app); a value that is not plain JSON (a tuple, a NumPy array, an object) is stored as
``{"__pickle__": "<base64>"}`` and comes back as the same Python object.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any, Dict, Optional

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads
_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]
_INFINITIES = (float("inf"), float("-inf"))
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})
PICKLE_KEY = "__pickle__"


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


def dumps(value: Any) -> str:
    """Compact JSON (the form every JSON column holds).

    Empty containers and flat dicts of scalars (tags, most parameters) are written directly: building the C
    encoder per call costs more than the encoding, and bulk creation does this per job.
    """
    t = type(value)
    if t is dict:
        if not value:
            return "{}"
        parts = []
        for k, v in value.items():
            text = _scalar(v)
            if text is None or type(k) is not str:
                return _dumps(value)
            parts.append(_quote(k) + ":" + text)
        return "{" + ",".join(parts) + "}"
    if t is list and not value:
        return "[]"
    return _dumps(value)


def loads(text: Optional[str]) -> Any:
    """Parse a JSON column (None stays None)."""
    return None if text is None else _loads(text)


def _is_plain(value: Any) -> bool:
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None:
        return True
    if t is list:
        return all(_is_plain(v) for v in value)
    if t is dict:
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    return False


def encode_parameters(params: Dict[str, Any]) -> str:
    """Parameters to their stored JSON, pickling only the values JSON would not give back unchanged."""
    for v in params.values():
        if type(v) not in _PLAIN_SCALARS and not _is_plain(v):
            break
    else:
        return dumps(params)
    out: Dict[str, Any] = {}
    for key, value in params.items():
        if _is_plain(value):
            out[key] = value
        else:
            out[key] = {PICKLE_KEY: base64.b64encode(pickle.dumps(value, protocol=4)).decode("ascii")}
    return _dumps(out)


def decode_parameters(text: Optional[str]) -> Dict[str, Any]:
    """Stored parameters back to Python values."""
    if not text:
        return {}
    params: Dict[str, Any] = _loads(text)
    for key, value in params.items():
        if type(value) is dict and len(value) == 1 and PICKLE_KEY in value:
            params[key] = pickle.loads(base64.b64decode(value[PICKLE_KEY]))
    return params


def pickle_value(value: Any) -> bytes:
    """A Python value (a run() result or exception) as stored bytes."""
    return pickle.dumps(value, protocol=4)


def unpickle_value(data: Optional[bytes]) -> Any:
    """Stored bytes back to the Python value."""
    return None if data is None else pickle.loads(data)
