"""Routing a request to its endpoint by path segments, in front of Starlette.

Starlette's router tries every route's regular expression in turn and runs each request through two
middlewares; for the API's hot calls (hundreds of launchers acquiring and reporting) that is a fixed cost per
request the size of the work itself. :class:`SegmentRouter` finds the same route Starlette would (the first in
table order whose method and path match, a ``{name}`` standing for one non-empty segment) by comparing path
segments with the routes of the same method and length, and calls its endpoint directly. Anything else (a
WebSocket, the dashboard's files, an unknown path, a method a route does not take, a trailing slash) goes to
the Starlette app unchanged, which answers it as before.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

from starlette.types import Receive, Scope, Send

Asgi = Callable[[Any, Any, Any], Awaitable[None]]

_Entry = Tuple[Tuple[Optional[str], ...], Tuple[Tuple[int, str], ...], Optional[Asgi]]
"""(literal segments, None where a parameter stands; (segment index, parameter name); the endpoint, or None:
"leave this request to Starlette")."""


def _segments(path: str) -> Optional[Tuple[Tuple[Optional[str], ...], Tuple[Tuple[int, str], ...]]]:
    """A route path's segments and its parameters; None for a path this router cannot match exactly (a
    parameter with a convertor such as ``{path:path}``, or one sharing its segment with literal text)."""
    literal: List[Optional[str]] = []
    params: List[Tuple[int, str]] = []
    for i, seg in enumerate(path.split("/")):
        if "{" in seg or "}" in seg:
            name = seg[1:-1]
            if not (seg.startswith("{") and seg.endswith("}")) or not name.isidentifier():
                return None
            literal.append(None)
            params.append((i, name))
        else:
            literal.append(seg)
    return tuple(literal), tuple(params)


class SegmentRouter:
    """An ASGI app: ``routes`` (method, path, endpoint or None) matched by segments, in order; the rest to
    ``fallback``. A route given with endpoint None, or one whose path cannot be matched by segments, hands every
    request it could match to ``fallback``, so the table order Starlette follows is kept."""

    def __init__(self, routes: Sequence[Tuple[str, str, Optional[Asgi]]], fallback: Asgi) -> None:
        self.fallback = fallback
        self._table: Dict[Tuple[str, int], List[_Entry]] = {}
        self._opaque: Dict[str, bool] = {}
        """Methods with a route this router cannot match exactly: from that route on, the fallback decides."""
        for method, path, endpoint in routes:
            parsed = _segments(path)
            if parsed is None:
                self._opaque[method] = True
                continue
            literal, params = parsed
            if self._opaque.get(method):
                endpoint = None  # an earlier route of this method might match first: let Starlette choose
            self._table.setdefault((method, len(literal)), []).append((literal, params, endpoint))

    def match(self, method: str, path: str) -> Tuple[Optional[Asgi], Dict[str, str]]:
        """The endpoint and path parameters of the route Starlette would pick, or (None, {}) to leave it to Starlette."""
        parts = path.split("/")
        for literal, params, endpoint in self._table.get((method, len(parts)), ()):
            for want, got in zip(literal, parts):
                if want is None:
                    if not got:
                        break
                elif want != got:
                    break
            else:
                if endpoint is None:
                    return None, {}
                return endpoint, {name: parts[i] for i, name in params}
        return None, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            endpoint, params = self.match(scope["method"], scope["path"])
            if endpoint is not None:
                scope["path_params"] = params
                await endpoint(scope, receive, send)
                return
        await self.fallback(scope, receive, send)


__all__ = ["SegmentRouter"]
