"""The relay's HTTP server: the same /v1 app as a site agent's (:func:`balsam.http.server.build_app`), over a
:class:`balsam.relay.backend.RelayBackend` chosen per caller, plus the routes only a relay has.

Callers present bearer tokens from :class:`balsam.relay.store.RelayStore` (a user's login, or a site agent's
token scoped to its site). Relay-only routes:

- ``POST /v1/tokens`` ``{"user", "password"}`` -> ``{"token", "expires"}`` (no credentials; 401 for a wrong pair,
  429 when rate limited); ``GET /v1/tokens``; ``DELETE /v1/tokens/{id}``; ``DELETE /v1/token`` (this token: logout).
- ``GET /v1/sites`` and ``GET /v1/sites/{id}``: the caller's sites (last seen, backlog); ``POST /v1/sites``
  ``{"site_id", "name", "hostname", "path"}`` links a site and answers its agent's token (409 when the id is taken).
- ``GET /v1/commands/{id}``: a queued write's state (the provisional handle of a write the site has not applied).
- Site tokens only: ``POST /v1/sync/push`` (idempotent by ``submission_id``), ``GET /v1/sync/commands?after=N&wait=S``
  (long poll), ``POST /v1/sync/answers``, ``POST /v1/sync/parents`` (states of the user's jobs at other sites
  that the site's jobs wait on).

Another user's rows, sites, tokens and commands are "not found" (404), never "forbidden".
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from balsam import exceptions as exc
from balsam.db.backend import Backend
from balsam.http import handlers as h
from balsam.http.auth import Authenticator, Principal
from balsam.http.errors import ApiError
from balsam.http.routes import Param
from balsam.http.routes import Route as ApiRoute
from balsam.http.schemas import iso
from balsam.http.server import build_app
from balsam.relay.backend import RelayBackend
from balsam.relay.store import Caller, Conflict, RateLimited, RelayAuthError, RelayStore

ONLINE_S = 60.0
"""A site seen within this long is shown as online."""
MAX_POLL_S = 25.0
POLL_LOOK_S = 0.25
"""A long poll for commands looks at the database this often besides being woken (commands another relay process added)."""
OBJ = {"type": "object"}
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True)
class RelayPrincipal(Principal):
    """A relay caller: the Principal the HTTP layer knows, with the relay's own record of the token."""

    caller: Optional[Caller] = None


class RelayTokens:
    """The relay's bearer tokens, for :class:`balsam.http.auth.Authenticator` (the TokenVerifier protocol)."""

    def __init__(self, store: RelayStore) -> None:
        self.store = store

    def verify(self, token: str) -> Optional[Principal]:
        caller = self.store.verify(token)
        if caller is None:
            return None
        if caller.kind == "site":
            return RelayPrincipal(kind="agent", name=caller.user, site_ids=frozenset({int(caller.site_id or 0)}), caller=caller)
        return RelayPrincipal(kind="user", name=caller.user, caller=caller)


def _backend(call: h.Call) -> RelayBackend:
    backend = call.backend
    assert isinstance(backend, RelayBackend)
    return backend


def _caller(call: h.Call, kind: Optional[str] = None) -> Caller:
    caller = _backend(call).caller
    if caller is None:
        raise ApiError(401, "unauthorized", "this needs a relay token", kind="ServiceError")
    if kind is not None and caller.kind != kind:
        what = "a site agent's token" if kind == "site" else "a user's token (balsam login)"
        raise ApiError(401, "unauthorized", f"this needs {what}", kind="ServiceError")
    return caller


def _store_errors(fn: Any) -> Any:
    """The relay store's own errors as API errors."""
    def wrapped(call: h.Call) -> Tuple[int, Any]:
        try:
            return fn(call)  # type: ignore[no-any-return]
        except RateLimited as e:
            raise ApiError(429, "too_many", str(e)) from None
        except RelayAuthError as e:
            raise ApiError(401, "unauthorized", str(e), kind="ServiceError") from None
        except Conflict as e:
            raise ApiError(409, "conflict", str(e)) from None

    wrapped.__name__ = getattr(fn, "__name__", "handler")
    wrapped.__doc__ = fn.__doc__
    return wrapped


# ------------------------------------------------------------------------------------------ handlers
@_store_errors
def login(call: h.Call) -> Tuple[int, Any]:
    body = call.body if isinstance(call.body, dict) else {}
    user, password = body.get("user"), body.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        raise exc.ValidationError("expected {\"user\": ..., \"password\": ...}")
    label = str(body.get("label") or "login")[:200]
    token, caller = _backend(call).store.login(user, password, label=label)
    expires = next((t["expires"] for t in _backend(call).store.tokens(caller.user_id) if t["id"] == caller.token_id), None)
    return 201, {"token": token, "expires": iso(expires) if expires else None, "user": caller.user}


def list_tokens(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call, "user")
    rows = _backend(call).store.tokens(caller.user_id)
    out = [{"id": t["id"], "kind": t["kind"], "site_id": t["site_id"], "label": t["label"], "created": iso(t["created"]),
            "expires": iso(t["expires"]), "revoked": bool(t["revoked"]), "current": t["id"] == caller.token_id} for t in rows]
    return 200, {"results": out, "next_cursor": None, "count": len(out)}


def revoke_token(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call, "user")
    _backend(call).store.revoke(caller.user_id, call.int_param("id"))
    return 200, {"revoked": 1}


def revoke_own_token(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call)
    assert caller.token_id is not None
    _backend(call).store.revoke(caller.user_id, caller.token_id)
    return 200, {"revoked": 1}


def _site_wire(site: Dict[str, Any]) -> Dict[str, Any]:
    row = dict(site.get("row") or {})
    seen = site.get("last_seen")
    backlog = dict(site.get("backlog") or {})
    outbox = backlog.pop("_outbox", None)
    return {"id": site["id"], "name": site["name"], "hostname": site["hostname"], "path": site["path"],
            "preset": row.get("preset"), "agent": {"running": bool(seen and time.time() - seen < ONLINE_S),
                                                    "last_contact": iso(seen) if seen else None},
            "backlog": backlog, "outbox": outbox, "last_seen": iso(seen) if seen else None}


def list_sites(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call)
    out = [_site_wire(s) for s in _backend(call).store.sites(caller)]
    return 200, {"results": out, "next_cursor": None, "count": len(out)}


def get_site(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call)
    site_id = call.int_param("id")
    for s in _backend(call).store.sites(caller):
        if s["id"] == site_id:
            return 200, _site_wire(s)
    raise exc.ObjectDoesNotExist(f"no site {site_id}")


@_store_errors
def link_site(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call, "user")
    body = call.body if isinstance(call.body, dict) else {}
    site_id, name = body.get("site_id"), body.get("name")
    if not isinstance(site_id, int) or isinstance(site_id, bool) or not isinstance(name, str) or not name:
        raise exc.ValidationError("expected {\"site_id\": int, \"name\": str, \"hostname\": str, \"path\": str}")
    token = _backend(call).store.link_site(caller, site_id, name, str(body.get("hostname") or ""), str(body.get("path") or ""))
    return 201, {"site_id": site_id, "name": name, "token": token}


def whoami(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call)
    return 200, {"user": caller.user, "sites": _backend(call).site_ids, "kind": "site" if caller.kind == "site" else "user"}


def get_command(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call)
    row = _backend(call).store.command(caller, call.int_param("id"))
    if caller.kind == "site" and row["site_id"] != caller.site_id:
        raise exc.ObjectDoesNotExist(f"no command {row['id']}")
    return 200, {"id": row["id"], "site_id": row["site_id"], "kind": row["kind"], "state": row["state"], "result": row["result"],
                 "created": iso(row["created"]), "finished": iso(row["finished"]) if row["finished"] else None}


@_store_errors
def push(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call, "site")
    body = call.body if isinstance(call.body, dict) else {}
    last_seq = body.get("last_seq", 0)
    if not isinstance(last_seq, int) or isinstance(last_seq, bool) or last_seq < 0:
        raise exc.ValidationError("last_seq: expected a non-negative integer")
    info = body.get("site") if isinstance(body.get("site"), dict) else None
    return 200, _backend(call).store.ingest(caller, str(body.get("submission_id") or ""), last_seq, body.get("items") or [], info)


@_store_errors
def pull_commands(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call, "site")
    store = _backend(call).store
    after = h._int(call.q1("after", "0"), "after", 0)
    try:
        wait = min(MAX_POLL_S, max(0.0, float(call.q1("wait", "0") or 0)))
    except ValueError:
        raise exc.ValidationError("wait: expected seconds") from None
    started = time.monotonic()
    deadline = started + wait
    first = True
    while True:
        seen = store.generation()
        commands = store.pending_commands(caller, after, seen=first)
        first = False
        left = deadline - time.monotonic()
        if commands and time.monotonic() - started > 1.0 and store.verify_id(caller) is None:  # revoked or expired while it waited
            raise ApiError(401, "unauthorized", "unknown, expired or revoked token", kind="ServiceError")
        if commands or left <= 0 or _backend(call).stopping.is_set():
            return 200, {"commands": commands, "pushed_seq": store.pushed_seq(caller)}
        # Woken as soon as a command is added in this process; a look every POLL_LOOK_S finds one another relay
        # process over the same database added.
        store.wait_change(seen, min(left, POLL_LOOK_S))


MAX_PARENTS_ASKED = 10000


def parent_states(call: h.Call) -> Tuple[int, Any]:
    """``POST /v1/sync/parents`` ``{"ids": [...], "since": {id: relay time}}`` (a site's token): the states of the jobs named that belong to the
    site's user at any of their sites, for the site's jobs waiting on parents at another site (balsam.db.foreign), and
    those that will never finish (balsam.relay.parents). Only jobs the site names; another user's are not its own."""
    caller = _caller(call, "site")
    body = call.body if isinstance(call.body, dict) else {}
    ids = body.get("ids")
    if not isinstance(ids, list) or len(ids) > MAX_PARENTS_ASKED:
        raise exc.ValidationError(f"ids: expected a list of at most {MAX_PARENTS_ASKED} job ids")
    wanted = [h._int(i, "ids", 1) for i in ids]
    raw_since = body.get("since") or {}
    if not isinstance(raw_since, dict) or len(raw_since) > MAX_PARENTS_ASKED:
        raise exc.ValidationError(f"since: expected an object of at most {MAX_PARENTS_ASKED} job ids and times")
    since = {h._int(k, "since", 1): float(v) for k, v in raw_since.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    now = time.time()  # before the look: a parent its site pushed meanwhile is not taken for one it never made
    states, ended = _backend(call).store.parent_states(caller, wanted, since)
    # "ended": the parents that will never finish (deleted, never made, in a loop of parents across sites), with why;
    # a site from before it reads "states" alone (and waits on those, as it did).
    # "now": the relay's clock, which the site keeps for parents it did not know ("since" in its next ask)
    return 200, {"states": {str(i): s for i, s in states.items()},
                 "ended": {str(i): {"state": s, "reason": why} for i, (s, why) in ended.items()}, "now": now}


@_store_errors
def answer_commands(call: h.Call) -> Tuple[int, Any]:
    caller = _caller(call, "site")
    body = call.body if isinstance(call.body, dict) else {}
    results = body.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise exc.ValidationError("results: expected a list of {id, state, result}")
    return 200, {"finished": _backend(call).store.finish_commands(caller, results)}


ID = "{id}"
RELAY_ROUTES: Tuple[ApiRoute, ...] = (
    ApiRoute("POST", "/v1/tokens", "login", "Log in with a password: a bearer token (429 when rate limited)", login, body=OBJ,
             response=OBJ, status=201, auth=False),
    ApiRoute("GET", "/v1/tokens", "list_tokens", "Your tokens (never their text)", list_tokens, response=OBJ),
    ApiRoute("DELETE", f"/v1/tokens/{ID}", "revoke_token", "Revoke one of your tokens", revoke_token, response=OBJ),
    ApiRoute("DELETE", "/v1/token", "logout", "Revoke the token of this request", revoke_own_token, response=OBJ),
    ApiRoute("GET", "/v1/whoami", "whoami", "Who the token belongs to and its sites", whoami, response=OBJ),
    ApiRoute("GET", "/v1/sites", "list_sites", "Your sites: last seen, backlog", list_sites, response=OBJ),
    ApiRoute("POST", "/v1/sites", "link_site", "Link one of your sites (answers its agent's token)", link_site, body=OBJ,
             response=OBJ, status=201),
    ApiRoute("GET", f"/v1/sites/{ID}", "get_site", "One of your sites", get_site, response=OBJ),
    ApiRoute("GET", f"/v1/commands/{ID}", "get_command", "A queued write: pending, applied (with its result) or rejected",
             get_command, response=OBJ),
    ApiRoute("POST", "/v1/sync/push", "sync_push", "A site's outbox batch (idempotent by submission_id)", push, body=OBJ, response=OBJ),
    ApiRoute("GET", "/v1/sync/commands", "sync_commands", "Commands for the calling site after a cursor (long poll)", pull_commands,
             query=(Param("after", {"type": "integer"}), Param("wait", {"type": "number"})), response=OBJ),
    ApiRoute("POST", "/v1/sync/answers", "sync_answers", "What the site did with its commands", answer_commands, body=OBJ,
             response=OBJ),
    ApiRoute("POST", "/v1/sync/parents", "sync_parents", "States of the user's jobs a site's jobs wait on (parents at "
             "another site)", parent_states, body=OBJ, response=OBJ),
)


def build_relay_app(store: RelayStore, *, wait_s: Optional[float] = None) -> Any:
    """The relay's Starlette app over ``store`` (whose schema must be current). ``app.state.stopping`` (set by
    :meth:`balsam.http.serve.ApiServer.stop`) ends the waits that run in threads, which the server's stop cannot
    cancel: before, a stop waited for every long poll in flight to run out (up to :data:`MAX_POLL_S`)."""
    executor: List[ThreadPoolExecutor] = []
    stopping = threading.Event()

    def backend_for(principal: Principal) -> Backend:
        if not executor:  # long polls and writes waiting for their site hold threads: give the loop enough
            executor.append(ThreadPoolExecutor(max_workers=256, thread_name_prefix="relay"))
            asyncio.get_running_loop().set_default_executor(executor[0])
        caller = principal.caller if isinstance(principal, RelayPrincipal) else None
        backend = RelayBackend(store, caller, stopping=stopping)
        if wait_s is not None:
            backend.wait_s = wait_s
        return backend

    auth = Authenticator(None, RelayTokens(store))
    app = build_app(RelayBackend(store, None, stopping=stopping), auth, site_id=0, backend_for=backend_for, extra_routes=RELAY_ROUTES)
    app.state.stopping = stopping
    return app


def relay_options(host: str, port: int, tls_cert: str = "", tls_key: str = "", max_connections: int = 1000) -> Any:
    """How a relay serves: ``max_connections`` at once, of which one address may hold a quarter and one user's
    tokens (their logins; each site's agent counts apart) an eighth, so no one caller locks the others out
    (:mod:`balsam.http.shares`)."""
    from balsam.http.serve import ServeOptions

    return ServeOptions(bind=host, port=port, tls_cert=tls_cert, tls_key=tls_key, advertise=host, max_connections=max_connections,
                        max_connections_per_address=max(4, max_connections // 4), max_connections_per_caller=max(2, max_connections // 8))


def check_transport(bind: str, tls: bool) -> None:
    """Tokens travel over plain HTTP only to this host: a relay bound elsewhere needs TLS."""
    if not tls and bind not in LOOPBACK:
        raise exc.ConfigError(f"--bind {bind} without TLS would send passwords and tokens in the clear: give --tls-cert and "
                              "--tls-key (or bind 127.0.0.1 behind a TLS proxy)")
