"""The site agent's channel: how a launcher on another host reaches the site DB (DESIGN.md section 3).

SQLite in WAL mode must only be opened on the site's home host, and a launcher runs on a compute node. The
site agent therefore runs :class:`ChannelServer`: a small threaded HTTP server on a free port, bound to all
interfaces, that applies a launcher's requests to the store with the same functions a local launcher uses
(:mod:`balsam.db.sessions`, :func:`balsam.db.jobs.apply_state_changes`). Its address goes to
``.balsam/channel.json`` and a random secret to ``.balsam/channel.secret`` (mode 0600); the site directory is
on the filesystem the compute nodes share, so a launcher there finds both.

Every request and response is signed: ``X-Balsam-Time`` (unix seconds) and ``X-Balsam-Signature``, the
HMAC-SHA256 under the secret of ``time, method, path and body``. The secret never crosses the network; a
request older than five minutes is refused; a retried batch of state changes (same ``batch_id``) is answered
from a cache instead of being applied twice. All endpoints are ``POST /v1/<name>`` with a JSON body:

=====================  ===========================================================  ==========================
endpoint               body                                                         answer
=====================  ===========================================================  ==========================
``ping``               {}                                                           site id, name, home host
``session/create``     batch_job_id, label, host, pid                               session_id
``session/tick``       session_id                                                   {} (410 if expired)
``session/release``    session_id                                                   timed_out
``acquire``            session_id, max_num_jobs, constraints, wait_s                jobs
``changes``            batch_id, changes: [[job_id, state, time, data, fields,      rejected: [[index, why]]
                       session_id], ...]
``apps``               ids                                                          apps
``job_states``         ids                                                          states
=====================  ===========================================================  ==========================

``acquire`` with ``wait_s`` waits at the server (up to 5 s) until the DB changes when nothing is runnable,
so an idle remote launcher starts new jobs within milliseconds without polling over the network. Errors
come back as ``{"error", "kind"}`` with status 4xx (410 for an expired lease).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from balsam.exceptions import BalsamError, ServiceError, SessionExpired

logger = logging.getLogger("balsam.channel")

CHANNEL_FILE = "channel.json"
SECRET_FILE = "channel.secret"
MAX_SKEW_S = 300.0
MAX_WAIT_S = 5.0
MAX_BODY = 256 * 1024 * 1024
API = "/v1/"
APP_COLUMNS = ("id", "name", "kind", "source_code", "version")


# --------------------------------------------------------------------------------------------- wire format
def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__b64__": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot encode {type(value).__name__}")


def _hook(obj: Dict[str, Any]) -> Any:
    if len(obj) == 1 and "__b64__" in obj:
        return base64.b64decode(obj["__b64__"])
    return obj


def encode(obj: Any) -> bytes:
    """JSON with bytes values as ``{"__b64__": ...}``."""
    return json.dumps(obj, default=_default, separators=(",", ":")).encode()


def decode(data: bytes) -> Any:
    """The inverse of :func:`encode`."""
    return json.loads(data, object_hook=_hook) if data else {}


def sign(secret: bytes, timestamp: str, method: str, path: str, body: bytes) -> str:
    """The HMAC-SHA256 signature of one request or response."""
    mac = hmac.new(secret, f"{timestamp}\n{method}\n{path}\n".encode(), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def verify(secret: bytes, timestamp: Optional[str], signature: Optional[str], method: str, path: str, body: bytes) -> Optional[str]:
    """None if the signature is good and fresh, else why not."""
    if not timestamp or not signature:
        return "unsigned request"
    try:
        skew = abs(time.time() - float(timestamp))
    except ValueError:
        return "malformed timestamp"
    if skew > MAX_SKEW_S:
        return f"request time is {skew:.0f} s off (clocks out of sync, or a replay)"
    if not hmac.compare_digest(signature, sign(secret, timestamp, method, path, body)):
        return "bad signature"
    return None


def read_secret(path: Path) -> bytes:
    """The channel secret (ServiceError if missing or readable by others)."""
    try:
        st = path.stat()
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ServiceError(f"{path}: cannot read the channel secret ({exc.strerror or exc}); is the site agent running?") from None
    if st.st_mode & 0o077:
        raise ServiceError(f"{path}: the channel secret must be readable only by its owner (chmod 600)")
    if not data:
        raise ServiceError(f"{path}: the channel secret is empty")
    return data


def read_address(state_dir: Path) -> Dict[str, Any]:
    """The channel's address record (ServiceError if the agent has not published one)."""
    path = state_dir / CHANNEL_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServiceError(f"no {path}: the site agent's channel is not running (start the agent on the site's home host)") from None
    except (OSError, ValueError) as exc:
        raise ServiceError(f"{path}: unreadable channel address ({exc})") from None
    if not isinstance(info, dict) or "port" not in info:
        raise ServiceError(f"{path}: malformed channel address")
    return info


def _ensure_secret(path: Path) -> bytes:
    """Reuse the site's channel secret (launchers already running keep working across agent restarts)."""
    try:
        return read_secret(path)
    except ServiceError:
        pass
    secret = secrets.token_hex(32).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return secret


# --------------------------------------------------------------------------------------------- server
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    channel: "ChannelServer"

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.channel.store.close()  # this thread's SQLite connection and lock descriptor


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, payload: Any) -> None:
        body = encode(payload)
        ts = repr(time.time())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Balsam-Time", ts)
        self.send_header("X-Balsam-Signature", sign(self.server.channel.secret, ts, "RESPONSE", self.path, body))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(405, {"error": "use POST", "kind": "ServiceError"})

    def do_POST(self) -> None:
        channel = self.server.channel
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._reply(413, {"error": "bad Content-Length", "kind": "ServiceError"})
            return
        body = self.rfile.read(length) if length else b""
        why = verify(channel.secret, self.headers.get("X-Balsam-Time"), self.headers.get("X-Balsam-Signature"), "POST", self.path, body)
        if why is not None:
            logger.warning("refused a channel request from %s: %s", self.client_address[0], why)
            self._reply(401, {"error": f"refused: {why}", "kind": "ServiceError"})
            return
        name = self.path[len(API):] if self.path.startswith(API) else ""
        route = channel.routes.get(name)
        if route is None:
            self._reply(404, {"error": f"no endpoint {self.path}", "kind": "ServiceError"})
            return
        try:
            result = route(decode(body))
        except SessionExpired as exc:
            self._reply(410, {"error": str(exc), "kind": "SessionExpired"})
        except BalsamError as exc:
            self._reply(409, {"error": str(exc), "kind": type(exc).__name__})
        except (KeyError, TypeError, ValueError) as exc:
            self._reply(400, {"error": f"malformed request: {type(exc).__name__}: {exc}", "kind": "ServiceError"})
        except Exception as exc:  # the agent keeps serving; the launcher retries
            logger.exception("channel %s failed", name)
            self._reply(500, {"error": f"{type(exc).__name__}: {exc}", "kind": "ServiceError"})
        else:
            self._reply(200, result)


class ChannelServer:
    """The agent's end of the channel (see the module docstring). ``start()`` binds and publishes; ``stop()``
    unpublishes and closes."""

    def __init__(
        self,
        root: Path,
        store: Any,
        *,
        host: str,
        advertise: Optional[str] = None,
        bind: str = "",
        port: int = 0,
        expiry_s: float = 300.0,
    ) -> None:
        self.root = Path(root)
        self.state = self.root / ".balsam"
        self.store = store
        self.host = host
        """The site's home host (leases of dead processes on it are released at once)."""
        self.advertise = advertise or socket.gethostname()
        self.bind = bind
        self.port = port
        self.expiry_s = expiry_s
        self.secret = b""
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._batches: "OrderedDict[str, Any]" = OrderedDict()
        self._batch_lock = threading.Lock()
        self._site: Optional[Tuple[int, str]] = None
        self.routes: Dict[str, Callable[[Dict[str, Any]], Any]] = {
            "ping": self.ping, "session/create": self.session_create, "session/tick": self.session_tick,
            "session/release": self.session_release, "acquire": self.acquire, "changes": self.changes, "apps": self.apps,
            "job_states": self.job_states,
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "ChannelServer":
        self.secret = _ensure_secret(self.state / SECRET_FILE)
        server = _Server((self.bind, self.port), _Handler)
        server.channel = self
        self._server = server
        self.port = int(server.server_address[1])
        info = {"host": self.advertise, "port": self.port, "addresses": self._addresses(), "pid": os.getpid(),
                "started": time.time(), "version": 1}
        path = self.state / CHANNEL_FILE
        tmp = path.with_name(f".{CHANNEL_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, path)
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="balsam-channel", daemon=True)
        self._thread.start()
        logger.info("channel listening on port %d (published in %s)", self.port, path)
        return self

    def _addresses(self) -> List[str]:
        out = [self.advertise]
        for name in (socket.getfqdn(),):
            if name and name not in out:
                out.append(name)
        try:
            ip = socket.gethostbyname(self.advertise)
            if ip not in out:
                out.append(ip)
        except OSError:
            pass
        return out

    def stop(self) -> None:
        path = self.state / CHANNEL_FILE
        try:
            info = json.loads(path.read_text())
            if info.get("pid") == os.getpid() and info.get("port") == self.port:
                path.unlink()
        except (OSError, ValueError):
            pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> "ChannelServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ endpoints
    def _site_row(self) -> Tuple[int, str]:
        if self._site is None:
            row = self.store.execute("SELECT id, name FROM site LIMIT 1")[0]
            self._site = (int(row[0]), str(row[1]))
        return self._site

    def ping(self, body: Dict[str, Any]) -> Dict[str, Any]:
        site_id, name = self._site_row()
        return {"site_id": site_id, "site_name": name, "host": self.host, "time": time.time()}

    def session_create(self, body: Dict[str, Any]) -> Dict[str, Any]:
        from balsam.db import sessions

        host = str(body.get("host") or "")
        with self.store.write() as conn:
            sessions.expire_sessions(conn, expiry_s=self.expiry_s, host=self.host)
            sid = sessions.create_session(conn, host=host, pid=int(body.get("pid") or 0), batch_job_id=body.get("batch_job_id"),
                                          label=str(body.get("label") or "remote launcher"))
            if host != self.host:
                conn.execute("UPDATE session SET pid_start=NULL WHERE id=?", (sid,))  # not a process of this host
        return {"session_id": sid}

    def session_tick(self, body: Dict[str, Any]) -> Dict[str, Any]:
        from balsam.db import sessions

        with self.store.write() as conn:
            sessions.tick(conn, int(body["session_id"]))
        return {}

    def session_release(self, body: Dict[str, Any]) -> Dict[str, Any]:
        from balsam.db import sessions

        with self.store.write() as conn:
            n = sessions.release(conn, int(body["session_id"]))
        return {"timed_out": n}

    def acquire(self, body: Dict[str, Any]) -> Dict[str, Any]:
        from balsam.db import sessions

        sid = int(body["session_id"])
        max_num_jobs = int(body.get("max_num_jobs") or 0)
        constraints = dict(body.get("constraints") or {})
        allowed = {"states", "filter_tags", "app_ids", "serial_only", "max_nodes_per_job", "max_aggregate_nodes",
                   "max_wall_time_min", "max_gpus_per_node", "sort_by"}
        unknown = set(constraints) - allowed
        if unknown:
            raise ValueError(f"unknown acquire constraint {sorted(unknown)[0]!r}")
        deadline = time.monotonic() + min(MAX_WAIT_S, max(0.0, float(body.get("wait_s") or 0.0)))
        while True:
            with self.store.write() as conn:
                sessions.expire_sessions(conn, expiry_s=self.expiry_s, host=self.host)
                jobs = sessions.acquire(conn, sid, max_num_jobs=max_num_jobs, **constraints)
            if jobs or time.monotonic() >= deadline:
                return {"jobs": jobs}
            version = self.store.data_version()
            while time.monotonic() < deadline and self.store.data_version() == version:
                time.sleep(0.01)

    def changes(self, body: Dict[str, Any]) -> Dict[str, Any]:
        from balsam.db.jobs import StateChange, apply_state_changes

        batch_id = str(body.get("batch_id") or "")
        with self._batch_lock:
            if batch_id and batch_id in self._batches:
                return self._batches[batch_id]  # type: ignore[no-any-return]
        changes = [StateChange(int(c[0]), str(c[1]), c[2], c[3], c[4], c[5]) for c in body["changes"]]
        index = {id(ch): i for i, ch in enumerate(changes)}
        with self.store.write() as conn:
            rejected = apply_state_changes(conn, changes, strict=False).rejected
        result = {"rejected": [[index[id(ch)], why] for ch, why in rejected if id(ch) in index]}
        if batch_id:
            with self._batch_lock:
                self._batches[batch_id] = result
                while len(self._batches) > 512:
                    self._batches.popitem(last=False)
        return result

    def apps(self, body: Dict[str, Any]) -> Dict[str, Any]:
        from balsam.db.codec import dumps

        ids = [int(i) for i in body.get("ids") or []]
        rows = self.store.execute(
            f"SELECT {', '.join(APP_COLUMNS)} FROM app WHERE id IN (SELECT value FROM json_each(?))", (dumps(ids),))
        return {"apps": [dict(zip(APP_COLUMNS, r)) for r in rows]}

    def job_states(self, body: Dict[str, Any]) -> Dict[str, Any]:
        from balsam.db.codec import dumps

        ids = [int(i) for i in body.get("ids") or []]
        if not ids:
            return {"states": {}}
        rows = self.store.execute("SELECT id, state FROM job WHERE id IN (SELECT value FROM json_each(?))", (dumps(ids),))
        return {"states": {str(i): s for i, s in rows}}
