"""The /v1 Starlette app, built from the route table (:mod:`balsam.http.routes`).

Per request, in order: the route is matched (unknown paths are 404 without reading anything); credentials are
checked from the headers (:class:`balsam.http.auth.Authenticator`), before any body is read; the declared
``Content-Length`` is checked against the limit (413); the body is read with an idle timeout per chunk and
its hash compared with the signed one; the handler runs on a worker thread. A mutating request with an
``Idempotency-Key`` runs at most once: its answer is kept in the site DB, in the same transaction as its
writes, and a retry gets the same answer (a retried acquire returns the same jobs). Answers to site-secret
requests are signed, bound to the request's nonce.

Errors are ``{"error": {"code", "message", "field", "kind"}}`` with the statuses of
:data:`balsam.http.routes.ERROR_STATUSES`; an unexpected failure is logged and answered 503 ("try again"),
never with a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # the pure-Python install (the zipapp): the standard library writes alone
    _orjson_dumps = None  # type: ignore[assignment]

from balsam import exceptions as exc
from balsam.db import lockwait
from balsam.db.backend import Backend
from balsam.db.codec import loads_body
from balsam.db.group import GroupWriter
from balsam.db.sessions import JSON_COLUMNS
from balsam.http import handlers as h
from balsam.http import pages
from balsam.http.auth import EMPTY_SHA256, H_HASH, Authenticator, Principal, Unauthorized, body_hash, response_signature
from balsam.http.changes import ChangeWatch
from balsam.http.dispatch import SegmentRouter
from balsam.http.errors import ApiError, error_for, error_payload
from balsam.http.hub import WebSocketHub
from balsam.http.routes import ROUTES
from balsam.http.routes import Route as ApiRoute
from balsam.http.routes import openapi as build_openapi
from balsam.http.schemas import COLUMNS, row_to_wire
from balsam.http.shares import ConnectionShares

logger = logging.getLogger("balsam.http")
REVERIFY_S = 2.0
"""How often a many-user server (and ``balsam ui``) checks that a WebSocket's token is still valid: a token revoked
(logout, ``balsam relay token revoke`` from another process) or expired ends its streams within this long (one
indexed look-up; in memory at ``balsam ui``)."""
_NO_STORE = (b"cache-control", b"no-store")
ANONYMOUS_BODY_BYTES = 64 * 1024
"""The largest body a route without credentials reads (``balsam ui``'s and the relay's logins): the request limit
otherwise lets anyone who reaches the port make the server hold hundreds of MB."""
_CLOSE = {"Connection": "close"}
"""On every answer to a request without (good) credentials: such a client cannot keep its connection open between
requests (a /v1/health every 29 s on 1,000 kept-alive connections held every slot of the server: 503 for everyone)."""
ANONYMOUS_BODY_S = 10.0
"""The longest a caller without credentials (a login) may take over its whole body: trickled a byte at a time, 1,000
of them held every connection of the server (everyone else got 503) for as long as they kept trickling."""
SHARED_KINDS = frozenset({"user", "agent"})
"""Callers whose connections count against their share (:mod:`balsam.http.shares`): a relay's users and their sites'
agents. The site secret (launchers) and ``balsam ui``'s one user have the server to themselves."""
ANONYMOUS = Principal(kind="anonymous", name="", can_write=False)
"""The caller of a route that needs no credentials (a password login)."""


@dataclass
class Limits:
    """Sizes and times the server enforces."""

    max_body_bytes: int = 256 * 1024 * 1024
    body_timeout_s: float = 30.0
    """Longest wait for the next chunk of a request body."""


def _loads(body: bytes) -> Any:
    """A request body's JSON (:func:`balsam.db.codec.loads_body`: orjson when installed, exact either way)."""
    return loads_body(body)


def _error_body(error: ApiError) -> bytes:
    """The documented error shape (with the queued command of a 202)."""
    return _json(error_payload(error))


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
"""One encoder for every answer (``json.dumps`` with options builds a new one per call)."""


def _json(payload: Any) -> bytes:
    """An answer's JSON as UTF-8. With orjson installed (``balsam[fast]``) ~7x less CPU (a page of 5,000 jobs for a
    listing from another host: 2.6 us per row saved); whatever orjson refuses (an integer past 64 bits, a key that
    is not text, a lone surrogate) goes to :mod:`json` below, whose answer (or error) stands. orjson writes NaN and
    the infinities as null, as below."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(payload)  # type: ignore[no-any-return]
        except TypeError:
            pass
    try:
        text = _ENCODE(payload)
    except ValueError:  # a NaN or an infinity (a relay's mirror keeps what a site pushed): null, as JSON has no such number
        text = _ENCODE(_finite(payload))
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape in stored JSON text: U+FFFD's stand-in, not a 503
        return text.encode("utf-8", "replace")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float as None."""
    if isinstance(value, float):
        return value if value - value == 0.0 else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


STATUS_GROUP_CHANGES = 250
"""Most state changes of launchers' status batches applied in one call of the group writer (~3 ms on a 2-core login
node, about one group's time: :data:`balsam.db.group.MAX_GROUP_S`): more wait for the next call, so an acquire that
arrives meanwhile commits after at most that much work."""


class Api:
    """The app's state: the backend, who may call, limits, and the WebSocket hub."""

    def __init__(self, backend: Backend, auth: Authenticator, *, site_root: Optional[Path] = None, limits: Optional[Limits] = None,
                 site_id: int = 0, backend_for: Optional[Callable[[Principal], Backend]] = None,
                 routes: Sequence[ApiRoute] = ROUTES, writer: Optional[GroupWriter] = None, background: bool = True) -> None:
        self.backend = backend
        self.background = background
        """Run the site's background work (indexing workdirs): one of the processes serving a site does."""
        self.writer = writer
        """Group commit (one site's store): writes of concurrent requests share one transaction on its thread."""
        self.backend_for = backend_for
        """Many users' server (the relay): the backend of each caller (``backend`` serves anonymous routes)."""
        self.auth = auth
        self.site_root = site_root
        self.limits = limits or Limits()
        self.site_id = site_id
        site_parts = getattr(backend, "site_parts", None)
        self.hub = WebSocketHub(site_parts if site_parts is not None else (lambda: [(site_id, backend)]))
        self.hubs: Dict[Tuple[str, str, FrozenSet[int]], WebSocketHub] = {}
        """A many-user server's change streams, one per caller (each follows only the caller's own sites)."""
        self.openapi_doc = _json(build_openapi(tuple(routes)))
        self._memory_answers: Dict[str, Tuple[str, int, bytes]] = {}
        self._indexer: Optional["asyncio.Task[None]"] = None
        self._batches = _Joined(self, lambda batch: self.backend.apply_batches_once(batch, _status_answer),  # type: ignore[attr-defined]
                                weight=lambda entry: len(entry[3]), limit=STATUS_GROUP_CHANGES)
        self._watch = ChangeWatch(backend.data_version)
        """What idle launchers' acquires wait on: one poll of the site DB for all of them."""
        self._acquires = _Joined(self, lambda batch: self.backend.acquire_batch(batch), urgent=True)  # type: ignore[attr-defined]
        """Launchers waiting for jobs: their nodes idle until the answer, so acquires commit ahead of other writes."""
        self.shares: Optional[ConnectionShares] = None
        """Each caller's share of the server's connections (the relay's; set by :class:`balsam.http.serve.ApiServer`)."""

    def _claim_share(self, peer: Any, principal: Principal) -> None:
        """ApiError 429 when ``principal`` holds its share of the connections already and this is one more."""
        if self.shares is None or principal.kind not in SHARED_KINDS:
            return
        held = self.shares.claim(peer, (principal.kind, principal.name, principal.site_ids))
        if held:
            logger.warning("answered 429 to %s %r: %d connections of theirs are open, their share", principal.kind,
                           principal.name, held)
            raise ApiError(429, "too_many", f"{principal.name!r} has {held} connections open to this server, the most one "
                           "user may: close some (fewer clients at once) and try again", kind="ServiceError")

    def close(self) -> None:
        """End what the app runs beside the server (the change watch's thread)."""
        self._watch.close()

    # ------------------------------------------------------------------ pieces
    def _principal(self, request: Any) -> Principal:
        """The caller of a WebSocket (a Starlette connection object)."""
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self._check("GET", target, request.headers, lambda: request.query_params.get("token"))

    def _check(self, method: str, target: str, headers: Mapping[str, str], token: Callable[[], Optional[str]]) -> Principal:
        try:
            return self.auth.check(method, target, headers, token() if "x-balsam-signature" not in headers else None)
        except Unauthorized as e:
            raise ApiError(401, "unauthorized", str(e), kind="ServiceError") from None

    async def _receive(self, receive: Callable[[], Any], timeout_s: Optional[float] = None) -> Any:
        """The next ASGI message of a request body, or ApiError when none came for ``timeout_s`` (``body_timeout_s``).
        (A timer that cancels this task, not ``asyncio.wait_for``, which makes a task per call.)"""
        timeout_s = self.limits.body_timeout_s if timeout_s is None else timeout_s
        task = asyncio.current_task()
        assert task is not None
        expired: List[bool] = []

        def expire() -> None:
            expired.append(True)
            task.cancel()

        timer = asyncio.get_running_loop().call_later(timeout_s, expire)
        try:
            return await receive()
        except asyncio.CancelledError:
            if not expired:
                raise
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            raise ApiError(400, "invalid", f"request body stalled for {timeout_s:g} s") from None
        finally:
            timer.cancel()

    async def _body(self, receive: Callable[[], Any], headers: Mapping[str, str], principal: Optional[Principal]) -> bytes:
        # A caller without credentials (a login: a token or a password) sends a few hundred bytes, never a site's jobs.
        limit = self.limits.max_body_bytes if principal is not None else min(self.limits.max_body_bytes, ANONYMOUS_BODY_BYTES)
        declared = headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ApiError(400, "invalid", "malformed Content-Length") from None
            if size > limit:
                raise ApiError(413, "too_large", f"request body of {size} bytes is over the limit of {limit}")
        chunks: List[bytes] = []
        total = 0
        deadline = None if principal is not None else time.monotonic() + ANONYMOUS_BODY_S
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = await self._receive(receive, left)
            except ApiError:
                if deadline is None:
                    raise
                raise ApiError(400, "invalid", f"a request without credentials sends its body within {ANONYMOUS_BODY_S:g} s") from None
            if message["type"] == "http.disconnect":
                raise ApiError(400, "invalid", "the client went away before sending its body")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise ApiError(413, "too_large", f"request body is over the limit of {limit} bytes")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if principal is not None and principal.kind == "site":
            expected = headers.get(H_HASH, "")
            if (body_hash(body) if body else EMPTY_SHA256) != expected:
                raise ApiError(401, "unauthorized", "the body does not match its signed hash", kind="ServiceError")
        return body

    async def _answer(self, send: Callable[[Any], Any], status: int, body: bytes, principal: Optional[Principal],
                      replayed: bool = False, close: bool = False) -> None:
        """Send a JSON answer (signed for a site-secret caller) as two ASGI messages. No answer is kept by a browser's
        or a proxy's cache (they hold the caller's data)."""
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), _NO_STORE]
        if principal is not None and principal.nonce and self.auth.secret is not None:
            signature = response_signature(self.auth.secret, principal.nonce, status, body_hash(body))
            headers.append((b"x-balsam-signature", signature.encode()))
        if replayed:
            headers.append((b"idempotent-replayed", b"true"))
        if principal is None or close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _respond(self, status: int, body: bytes, principal: Optional[Principal], replayed: bool = False,
                 media_type: str = "application/json") -> Response:
        headers = {"Cache-Control": "no-store", **({} if principal is not None else _CLOSE)}
        if principal is not None and principal.nonce and self.auth.secret is not None:
            headers["X-Balsam-Signature"] = response_signature(self.auth.secret, principal.nonce, status, body_hash(body))
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(body, status_code=status, headers=headers, media_type=media_type)

    def _error(self, error: ApiError, principal: Optional[Principal]) -> Response:
        return self._respond(error.status, _error_body(error), principal)

    def _run(self, route: ApiRoute, call: h.Call) -> Tuple[int, bytes]:
        assert route.handler is not None
        status, payload = route.handler(call)
        return status, _json(payload)

    async def _write(self, fn: Callable[[], Any], backend: Backend) -> Any:
        """``fn()`` (a request's writes) in the next group transaction when this server has a group writer for
        ``backend``, else on a worker thread in its own transaction."""
        if self.writer is not None and backend is self.backend:
            return await self.writer.submit_async(fn)
        return await asyncio.to_thread(fn)

    def _once(self, key: str, fingerprint: str, fn: Callable[[], Optional[Tuple[int, bytes]]],
              backend: Optional[Backend] = None) -> Optional[Tuple[int, bytes, bool]]:
        once = getattr(backend or self.backend, "once", None)
        if once is not None:
            return once(key, fingerprint, fn)  # type: ignore[no-any-return]
        hit = self._memory_answers.get(key)
        if hit is not None:
            if hit[0] != fingerprint:
                raise exc.ValidationError("Idempotency-Key was already used for a different request")
            return hit[1], hit[2], True
        answer = fn()
        if answer is None:
            return None
        self._memory_answers[key] = (fingerprint, answer[0], answer[1])
        return answer[0], answer[1], False

    # ------------------------------------------------------------------ endpoints
    def endpoint(self, route: ApiRoute) -> "_Endpoint":
        """The ASGI app of one route (plain ASGI: no Request and Response objects per call)."""
        return _Endpoint(self, route)

    async def serve(self, route: ApiRoute, scope: Dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        """One request: credentials from the headers, then the body (bounded), then the handler (writes in the group
        transaction, exactly once per idempotency key), then the signed answer."""
        principal: Optional[Principal] = None
        close = False
        self._start_indexer()
        method = scope["method"]
        # The target as Starlette's URL renders it (the client signs the path it sent, the server checks this).
        path = scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
        query = scope.get("query_string", b"").decode()
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if route.auth:
                # A token in the URL is taken only where a browser cannot send a header (the WebSocket): in any other
                # URL it would end up in proxies' logs, the browser's history and Referer headers.
                principal = self._check(method, path + (f"?{query}" if query else ""), headers, lambda: None)
                try:
                    self._claim_share(scope.get("client"), principal)
                except ApiError:
                    close = True
                    raise
            elif not route.mutating:
                raise ApiError(401, "unauthorized", "no credentials", kind="ServiceError")
            body = await self._body(receive, headers, principal) if route.mutating else b""
            try:
                parsed = _loads(body) if body else None
            except ValueError:
                raise ApiError(422, "malformed", "the request body is not JSON") from None
            except RecursionError:  # json (without orjson) parses nesting past the recursion limit no further
                raise ApiError(400, "invalid", "the request body is nested too deep") from None
            caller = principal if principal is not None else ANONYMOUS
            backend = self.backend if self.backend_for is None else self.backend_for(caller)
            call = h.Call(backend, caller, dict(scope.get("path_params") or {}), parse_qsl(query, keep_blank_values=True), parsed,
                          self.site_root)
            key = headers.get("idempotency-key")
            if key is not None and (len(key) > 200 or not key.strip()):
                raise ApiError(400, "invalid", "Idempotency-Key: 1 to 200 characters", field="Idempotency-Key")
            if key is not None and self.backend_for is not None:
                key = f"{caller.kind}:{caller.name}:{key}"  # one user's key never answers another's request
            replayed = False
            if route.kind == "acquire":
                status, data, replayed = await self._acquire(call, key)
            elif route.alone:  # takes the writer lock itself (VACUUM cannot run in a transaction): no group, no stored answer
                status, data = await asyncio.to_thread(self._run, route, call)
            elif (route.name == "status_batch" and key and self.writer is not None and backend is self.backend
                  and hasattr(backend, "apply_batches_once")):  # applied with the other batches of its group
                fingerprint = hashlib.sha256(f"{method} {path}?{query}\n".encode() + body).hexdigest()
                session_id, changes = h.parse_status_batch(call)
                status, data, replayed = await self._batches.add((key, fingerprint, session_id, changes))
            elif route.mutating and key:
                fingerprint = hashlib.sha256(f"{method} {path}?{query}\n".encode() + body).hexdigest()
                answer = await self._write(functools.partial(self._once, key, fingerprint, functools.partial(self._run, route, call),
                                                             backend), backend)
                assert answer is not None
                status, data, replayed = answer
            else:
                status, data = await asyncio.to_thread(self._run, route, call)
        except Exception as e:  # every error is the documented shape
            error = error_for(e)
            if error.status == 503 and not isinstance(e, (ApiError, exc.StoreError)):
                logger.exception("%s %s failed", method, path)
            status, data, replayed = error.status, _error_body(error), False
        await self._answer(send, status, data, principal, replayed, close)

    def _start_indexer(self) -> None:
        """Index new jobs' workdirs for substring filters in the background (a site's store; balsam.db.search),
        from the first request on, while the server runs."""
        step = getattr(self.backend, "index_step", None)
        if self._indexer is None and step is not None and self.background:
            self._indexer = asyncio.get_running_loop().create_task(self._index(step))

    async def _index(self, step: Callable[[], int]) -> None:
        while True:
            try:
                done = await asyncio.to_thread(step)
            except RuntimeError:  # the server is shutting down (no more worker threads)
                return
            except Exception:  # the index waits; substring filters scan the jobs it does not cover
                logger.exception("indexing workdirs failed")
                done = 0
            await asyncio.sleep(0.1 if done else 1.0)

    async def _acquire(self, call: h.Call, key: Optional[str]) -> Tuple[int, bytes, bool]:
        """Acquire with a server-side wait; with a key, the first non-empty answer is kept for retries."""
        session_id, constraints, wait_s = h.acquire_once(call)
        max_num_jobs = constraints.pop("max_num_jobs")
        deadline = time.monotonic() + wait_s
        fingerprint = hashlib.sha256(f"acquire {session_id}".encode()).hexdigest()

        spliced = call.backend.kind == "local"  # its JSON columns come as stored text, spliced into the answer

        def attempt(final: bool) -> Optional[Tuple[int, bytes]]:
            if spliced:
                jobs = call.backend.acquire(session_id, max_num_jobs, 0.0, json_text=True, **constraints)  # type: ignore[call-arg]
            else:
                jobs = call.backend.acquire(session_id, max_num_jobs, 0.0, **constraints)
            if not jobs and not final:
                return None
            if spliced:
                return _acquire_answer(jobs)
            return 200, _json({"jobs": [_acquired(j) for j in jobs]})

        joined = self.writer is not None and call.backend is self.backend and hasattr(call.backend, "acquire_batch")
        while True:
            final = time.monotonic() >= deadline
            answer: Optional[Tuple[int, bytes, bool]]
            if joined:  # with the other acquires waiting for the writer: one transaction, one write of their answers
                answer = await self._acquires.add((key, fingerprint, session_id, max_num_jobs, constraints, final))
                if answer is not None and not isinstance(answer[1], bytes):  # the jobs: their answer is made here, off the writer
                    answer = (answer[0], _acquire_answer(answer[1])[1], answer[2])
            elif key:
                answer = await self._write(functools.partial(self._once, key, fingerprint, functools.partial(attempt, final),
                                                             call.backend), call.backend)
            else:
                plain = await self._write(functools.partial(attempt, final), call.backend)
                answer = None if plain is None else (plain[0], plain[1], False)
            if answer is not None:
                return answer
            if joined:  # one watch of the site DB for every waiting acquire
                await self._watch.wait(deadline - time.monotonic())
                continue
            version = await asyncio.to_thread(call.backend.data_version)
            while time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                if await asyncio.to_thread(call.backend.data_version) != version:
                    break

    async def health(self, request: Request) -> Response:
        """Liveness, which process answered (an agent may serve from several: ``api.workers``), and whether its writes
        are stalled behind the site DB's writer lock (``stalled``: see :func:`balsam.db.lockwait.stalled`)."""
        stall = lockwait.stalled()
        if stall is None:
            return Response(b'{"status":"ok","pid":%d}' % os.getpid(), media_type="application/json", headers=_CLOSE)
        return Response(json.dumps({"status": "ok", "pid": os.getpid(), "stalled": stall}).encode(), media_type="application/json",
                        headers=_CLOSE)

    async def openapi(self, request: Request) -> Response:
        return Response(self.openapi_doc, media_type="application/json", headers=_CLOSE)

    async def static(self, request: Request) -> Response:
        """A file of the dashboard (:mod:`balsam.http.pages`: its content security policy and other headers)."""
        rel = request.path_params.get("path")
        page = pages.page_answer(rel, request.headers.get("host"))
        if page is None:
            message = "the dashboard is not built into this Balsam" if rel is None else "no such file"
            return self._error(ApiError(404, "not_found", message), None)
        data, media_type, headers = page
        return Response(data, media_type=media_type, headers={**headers, **_CLOSE})

    def _hub_for(self, principal: Principal) -> WebSocketHub:
        """The change stream a caller may see: the site's, or (many users) one over the caller's own sites."""
        if self.backend_for is None:
            return self.hub
        key = (principal.kind, principal.name, frozenset(principal.site_ids or ()))
        hub = self.hubs.get(key)
        if hub is None:
            backend = self.backend_for(principal)
            site_parts = getattr(backend, "site_parts", None)
            if site_parts is None:
                raise ApiError(404, "not_found", "this server streams no changes")
            hub = self.hubs[key] = WebSocketHub(site_parts)
        return hub

    async def websocket(self, ws: WebSocket) -> None:
        if not pages.same_origin(ws.headers.get("origin"), ws.headers.get("host"), ws.headers.get("x-forwarded-host")):
            await ws.close(code=4403, reason="a page of another site may not open this stream")  # before accept: HTTP 403
            return
        try:
            principal = self._principal(ws)
            self._claim_share(ws.scope.get("client"), principal)
            hub = self._hub_for(principal)
        except ApiError as e:
            await ws.close(code=4401, reason=e.message[:120])
            return
        await ws.accept()
        queue = await hub.subscribe()
        await ws.send_json({"type": "hello", "site_id": self.site_id, "user": principal.name})
        checked = time.monotonic()
        closed = asyncio.get_running_loop().create_task(_until_closed(ws))
        try:
            for counts in await asyncio.to_thread(hub.counts):
                await ws.send_json(counts)
            while True:
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getting, closed}, timeout=REVERIFY_S, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:  # the client hung up (or the server is stopping): end now, not at the next change
                    getting.cancel()
                    return
                msg: Optional[Dict[str, Any]] = getting.result() if getting in done else None
                if msg is None:
                    getting.cancel()
                if (self.backend_for is not None or principal.kind == "ui") and time.monotonic() - checked > REVERIFY_S:
                    try:  # a token revoked (logout) or expired while connected ends the stream
                        await asyncio.to_thread(self._principal, ws)
                    except ApiError as e:
                        await ws.close(code=4401, reason=e.message[:120])
                        return
                    checked = time.monotonic()
                if msg is not None:
                    await ws.send_json(msg)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            closed.cancel()
            hub.unsubscribe(queue)


async def _until_closed(ws: WebSocket) -> None:
    """Returns when the client of ``ws`` disconnects (a stream's clients send nothing that needs an answer)."""
    try:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


class _Joined:
    """Requests that arrive while the group writer is busy, run as one call of the writer: they join the open
    batch, which the writer runs with ``run`` (one pass over all of them: one look-up and one write of their
    idempotent answers), and each request gets its own result from it (or its own exception)."""

    def __init__(self, api: Api, run: Callable[[List[Any]], List[Any]], urgent: bool = False,
                 weight: Optional[Callable[[Any], int]] = None, limit: int = 0) -> None:
        self.api = api
        self.run = run
        self.urgent = urgent
        """Run ahead of the other writes waiting (:meth:`GroupWriter.submit_async`)."""
        self.weight = weight
        self.limit = limit
        """With ``weight``: a batch whose entries weigh this much closes, and the next entry opens another (so that
        one call of the writer, which urgent writes cannot cut short, stays short)."""
        self._lock = threading.Lock()
        self._open: Optional[List[Any]] = None
        self._future: Optional["asyncio.Future[List[Any]]"] = None
        self._load = 0

    async def add(self, entry: Any) -> Any:
        writer = self.api.writer
        assert writer is not None
        with self._lock:
            if self._open is None:
                self._open = []
                self._load = 0
                self._future = writer.submit_async(functools.partial(self._flush, self._open), urgent=self.urgent)
            entries, future = self._open, self._future
            index = len(entries)
            entries.append(entry)
            if self.weight is not None:
                self._load += self.weight(entry)
                if self._load >= self.limit:  # full: it runs as it is
                    self._open = None
                    self._future = None
        assert future is not None
        result = (await asyncio.shield(future))[index]
        if isinstance(result, BaseException):
            raise result
        return result

    def _flush(self, entries: List[Any]) -> List[Any]:
        """On the writer thread: close this batch to newcomers, then run every request in it."""
        with self._lock:
            if self._open is entries:
                self._open = None
                self._future = None
            batch = list(entries)
        return self.run(batch)


def _acquire_answer(jobs: List[Dict[str, Any]]) -> Tuple[int, bytes]:
    """The answer of an acquire whose jobs' JSON columns are stored text."""
    return 200, b'{"jobs":[' + b",".join(_acquired_text(j) for j in jobs) + b"]}"


def _status_answer(rejected: Sequence[Tuple[int, str]]) -> Tuple[int, bytes]:
    if not rejected:  # nearly every batch
        return 200, b'{"rejected":[]}'
    status, payload = h.status_answer(rejected)
    return status, _json(payload)


class _Endpoint:
    """One API route as an ASGI app (Starlette calls an endpoint that is not a function as one)."""

    def __init__(self, api: Api, route: ApiRoute) -> None:
        self.api = api
        self.route = route

    async def __call__(self, scope: Dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        await self.api.serve(self.route, scope, receive, send)


def _acquired(job: Dict[str, Any]) -> Dict[str, Any]:
    """An acquired job (the launcher's dict) as JSON: bytes as base64."""
    import base64

    out = {}
    for k, v in job.items():
        out[k] = {"__b64__": base64.b64encode(bytes(v)).decode()} if isinstance(v, (bytes, bytearray, memoryview)) else v
    return out


_JSON_KEYS = tuple((k, b'"%s":' % k.encode()) for k in sorted(JSON_COLUMNS))


def _acquired_text(job: Dict[str, Any]) -> bytes:
    """An acquired job whose JSON columns are stored JSON text, as the JSON of :func:`_acquired` (the text is
    spliced in as it is: the store's one writer of those columns wrote it as JSON). It takes those columns out of
    ``job``."""
    raw = b",".join([key + str(job.pop(k)).encode() for k, key in _JSON_KEYS if k in job])
    rest = None
    if _orjson_dumps is not None:  # the pickled parameters are the one column that may hold bytes
        pickled = job.get("parameters_pickled")
        try:
            rest = _orjson_dumps(job if pickled is None else dict(job, parameters_pickled=_acquired({"b": pickled})["b"]))
        except TypeError:
            pass
    if rest is None:
        rest = _json(_acquired(job))
    if not raw:
        return rest
    return b"{" + raw + (b"," + rest[1:] if len(rest) > 2 else b"}")


def served_routes(extra_routes: Sequence[ApiRoute] = ()) -> Tuple[ApiRoute, ...]:
    """``extra_routes`` and then ``ROUTES``, an operation of ``extra_routes`` replacing the one of ``ROUTES`` with the
    same method and path (what the server matches, and what its OpenAPI document describes)."""
    own = {(r.method, r.path) for r in extra_routes}
    return (*extra_routes, *(r for r in ROUTES if (r.method, r.path) not in own))


def build_app(backend: Backend, auth: Authenticator, *, site_root: Optional[Path] = None, limits: Optional[Limits] = None,
              site_id: Optional[int] = None, backend_for: Optional[Callable[[Principal], Backend]] = None,
              extra_routes: Sequence[ApiRoute] = (), writer: Optional[GroupWriter] = None, background: bool = True) -> Starlette:
    """The Starlette app of ``ROUTES`` over ``backend``. A server of many users (the relay) passes
    ``backend_for``, the backend of each caller, and its own ``extra_routes`` (matched first); a route of
    those with ``auth=False`` that changes something (a password login) gets its body and an anonymous caller.
    ``writer``: group commit for ``backend``'s store (the site agent), so concurrent writes share transactions.
    ``background``: this process also runs the site's background work (False in the agent's extra API processes)."""
    if site_id is None:
        site_id = int(backend.site_row(("id",))[0])
    served = served_routes(extra_routes)
    api = Api(backend, auth, site_root=site_root, limits=limits, site_id=site_id, backend_for=backend_for, routes=served,
              writer=writer, background=background)
    routes: List[BaseRoute] = []
    direct: List[Tuple[str, str, Optional[_Endpoint]]] = []
    for r in served:
        if r.kind == "ws":
            routes.append(WebSocketRoute(r.path, api.websocket, name=r.name))
        elif r.kind == "health":
            routes.append(Route(r.path, api.health, methods=[r.method], name=r.name))
        elif r.kind == "openapi":
            routes.append(Route(r.path, api.openapi, methods=[r.method], name=r.name))
        elif r.kind == "static":
            routes.append(Route(r.path, api.static, methods=[r.method], name=r.name))
        else:
            endpoint = api.endpoint(r)
            routes.append(Route(r.path, endpoint, methods=[r.method], name=r.name))
            direct.append((r.method, r.path, endpoint))
            continue
        if r.kind != "ws":
            direct.append((r.method, r.path, None))  # Starlette answers it (and whatever it shadows)

    async def not_found(request: Request, exc_: Exception) -> Response:
        status = getattr(exc_, "status_code", 404)
        code = {404: "not_found", 405: "invalid"}.get(status, "invalid")
        payload = {"error": {"code": code, "message": "no such route" if status == 404 else "method not allowed", "field": None,
                             "kind": None}}
        return Response(_json(payload), status_code=404 if status == 404 else 400, media_type="application/json", headers=_CLOSE)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.api = api
    # The API's own routes are found by path segments and called directly (the same route Starlette would pick);
    # everything else goes through Starlette's middlewares and router as before.
    app.middleware_stack = SegmentRouter(direct, app.build_middleware_stack())
    return app


__all__ = ["Api", "ApiError", "Limits", "build_app", "row_to_wire", "COLUMNS"]
