"""Serving the /v1 app with uvicorn (h11 + wsproto, pure Python; uvloop/httptools when installed) on a thread.

:class:`ApiServer` binds the configured address and port (or the first free port of a range, for facility
firewalls), wraps it in TLS when a certificate and key are set, and publishes where it listens in
``.balsam/api.json`` (next to the site secret, on the filesystem every host of the site sees). The server, not
hope, bounds what a client may hold: a cap on connections (503 past it), a deadline for a request's headers
(a slow client is disconnected), an idle keep-alive timeout, a limit on header size, and the app's own limits
on body size and body read time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from balsam.exceptions import ConfigError, ServiceError
from balsam.http.errors import ApiError, error_payload
from balsam.http.shares import ConnectionShares

logger = logging.getLogger("balsam.http")

ADDRESS_FILE = "api.json"
STOP_GRACE_S = 2
"""How long a stopping server waits for requests in flight (long-polls, WebSockets a client keeps open) to end
before it cancels them: stopping an agent must not wait on a browser tab or a watcher that never hangs up."""


class _QuietStop(logging.Filter):
    """Requests in flight cut off by a stop (a site's long poll for commands, a launcher's acquire wait) are the
    stop working as meant: not an error with a traceback in the server's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return False
        return not str(record.msg).startswith("Cancel %s running task(s), timeout graceful shutdown exceeded")


logging.getLogger("uvicorn.error").addFilter(_QuietStop())


@dataclass
class ServeOptions:
    """Where and how to listen (from settings.yml's ``api`` section)."""

    bind: str = "0.0.0.0"
    port: int = 0
    port_range: str = ""
    advertise: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    http_parser: str = "auto"
    """"auto" (httptools when installed, else h11), "h11" or "httptools"."""
    max_connections_per_address: int = 0
    """Connections one address may hold at once (0: no cap; the relay's share: :mod:`balsam.http.shares`)."""
    max_connections_per_caller: int = 0
    """Connections one relay user's requests may arrive on at once (0: no cap)."""


def parse_port_range(text: str) -> List[int]:
    """``"20000-20100"`` (or one port) as the ports to try in order; ConfigError when malformed."""
    text = text.strip()
    if not text:
        return []
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise ConfigError(f"api.port_range: expected 'LOW-HIGH', got {text!r}") from None
    if not 1 <= lo <= hi <= 65535:
        raise ConfigError(f"api.port_range: expected 1 <= LOW <= HIGH <= 65535, got {text!r}")
    return list(range(lo, hi + 1))


def bind_socket(host: str, ports: List[int], reuse_port: bool = False, join: bool = False) -> socket.socket:
    """A listening socket on the first free port of ``ports`` (``[0]``: any free port).

    ``reuse_port``: other processes of this user may listen on the same port (SO_REUSEPORT), and the kernel spreads
    the connections over them (an agent serving from several processes). A port is taken only if it is free: it is
    first bound without SO_REUSEPORT, which fails where anyone listens, another site's agent with SO_REUSEPORT
    included (whose connections would otherwise be shared with ours). ``join``: bind ``ports[0]``, the port of
    the agent this process serves with, with no such check."""
    if not host or host != host.strip() or "\x00" in host:  # "" would listen on every interface
        raise ConfigError(f"bind address {host!r}: give an address of this host (127.0.0.1: this host alone; 0.0.0.0: "
                          "every interface)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("api.workers > 1 needs SO_REUSEPORT, which this system does not have: set api.workers to 1")
    last: Optional[OSError] = None
    for port in ports or [0]:
        # IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets whose proto says TCP, and with Nagle on
        # each keep-alive answer (headers, then body) waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            if reuse_port and not join:
                sock.bind((host, port))  # free for us alone? (0: the kernel picks a free port)
                port = sock.getsockname()[1]
                sock.close()
                sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            last = e
            continue
        sock.listen(1024)
        sock.set_inheritable(False)
        return sock
    where = f"{ports[0]}-{ports[-1]}" if len(ports) > 1 else f"{ports[0] if ports else 0}"
    raise ServiceError(f"cannot listen on {host} port{'s' if len(ports) > 1 else ''} {where}: {last.strerror if last else 'no port free'}")


class _CorkedTransport:
    """A transport whose writes are gathered and sent together: at the end of each answer (the protocol calls
    :meth:`flush`), or at the latest on the event loop's next turn. uvicorn writes an answer's head and body
    separately; two sends per answer cost two syscalls and two packets (and the client two wake-ups)."""

    __slots__ = ("_transport", "_loop", "_buffer", "_scheduled", "linger")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: List[bytes] = []
        self._scheduled = False
        self.linger: Optional[Callable[[], bool]] = None
        """Asked at :meth:`close`: True when the protocol closes the connection itself, after a lingering close."""

    def write(self, data: bytes) -> None:
        self._buffer.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        self._scheduled = False
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        if self.linger is None or not self.linger():
            self._transport.close()

    def hard_close(self) -> None:
        """Close now, whatever is still arriving."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


LINGER_S = 5.0
"""How long a connection answered before its request's body arrived (a 401, a 413) keeps taking that body in."""
LINGER_BYTES = 64 * 1024 * 1024
"""How much of such a body it takes in (and drops) at most."""


_FULL_BODY = json.dumps(error_payload(ApiError(503, "unavailable", "too many connections from this address: close some and try again",
                                                kind="ServiceError")), separators=(",", ":")).encode()
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
         b"connection: close\r\nretry-after: 1\r\n\r\n%s" % (len(_FULL_BODY), _FULL_BODY))
"""The answer to a connection past its address's share (written before its request is read)."""


def _protocol_class(header_timeout_s: float, max_header_bytes: int, parser: str = "h11",
                    shares: Optional[ConnectionShares] = None) -> Any:
    """uvicorn's HTTP protocol (``parser``: "h11", pure Python, or "httptools", compiled, when installed) with a
    deadline for each request's headers and a cap on their size (a slow or endless client is disconnected).

    A request answered before its body arrived (refused unread: too large, not signed) ends with a lingering close:
    the answer is sent, the server's side is shut, and the rest of the body is taken in and dropped, for at most
    :data:`LINGER_S` and :data:`LINGER_BYTES`. Closing at once would make the kernel reset the connection when the
    body's next bytes arrive, and a client still sending (as most do before reading an answer) would see a broken
    pipe instead of the answer.

    ``shares``: each address's and caller's share of the connections (:mod:`balsam.http.shares`)."""
    Base: Any
    if parser == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        Base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        Base = H11Protocol

    class GuardedProtocol(Base):  # type: ignore[misc,valid-type]
        _corked: Optional[_CorkedTransport] = None

        _header_timer: Optional[asyncio.TimerHandle] = None
        _armed_for: Any = None
        _header_bytes = 0
        _draining = -1
        """Bytes of a refused body still taken in (-1: not lingering)."""
        _peer: Any = None
        """The client's address while it counts in ``shares``."""

        def _linger(self) -> bool:
            """Close after the answer without a reset, when the request's body is still arriving (see above)."""
            if self._draining >= 0:
                return False  # a second close (the linger's end, a keep-alive timer): now
            if self.cycle is None or not self.cycle.more_body or self._corked is None:
                return False
            self._shut_and_drain()
            return True

        def _shut_and_drain(self) -> None:
            assert self._corked is not None
            self._disarm()
            self._draining = LINGER_BYTES
            self._corked.flush()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(LINGER_S, self._corked.hard_close)

        def _arm(self) -> None:
            self._disarm()
            self._armed_for = self.cycle
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is self._armed_for and not self.transport.is_closing():
                logger.info("closed a connection whose request headers did not arrive within %g s", header_timeout_s)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._corked = self.transport = _CorkedTransport(transport, self.loop)  # an answer's head and body: one send
            self._corked.linger = self._linger
            self._arm()
            if shares is not None:
                peer = transport.get_extra_info("peername")
                if shares.opened(peer):
                    self._peer = peer
                else:
                    logger.warning("answered 503 to a connection from %s: it holds %d connections already, its share",
                                   peer[0], shares.per_address)
                    self._corked.write(_FULL)
                    self._shut_and_drain()

        def data_received(self, data: bytes) -> None:
            if self._draining >= 0:  # the rest of a refused body: dropped unread
                self._draining -= len(data)
                if self._draining < 0 and self._corked is not None:
                    self._corked.hard_close()
                return
            waiting = self._header_timer is not None
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._armed_for:
                self._disarm()  # a request's headers are complete
            elif waiting and self._header_timer is not None:
                self._header_bytes += len(data)
                if self._header_bytes > max_header_bytes and not self.transport.is_closing():
                    logger.info("closed a connection whose request headers passed %d bytes", max_header_bytes)
                    self._disarm()
                    self.transport.close()

        def handle_websocket_upgrade(self, *event: Any) -> None:
            self._disarm()
            super().handle_websocket_upgrade(*event)
            if shares is not None and self._peer is not None and self._corked is not None:
                peer, self._peer = self._peer, None  # the WebSocket protocol serves the connection now: it frees its share
                stream = self._corked._transport.get_protocol()
                lost = stream.connection_lost

                def connection_lost(exc: Optional[Exception]) -> None:
                    shares.closed(peer)
                    lost(exc)

                stream.connection_lost = connection_lost

        def on_response_complete(self) -> None:
            if self._corked is not None:
                self._corked.flush()
            unread = self.cycle is not None and self.cycle.more_body
            super().on_response_complete()
            if self.transport.is_closing() or self._draining >= 0:
                return
            if unread:
                self._linger()  # a kept-alive connection whose request body was refused unread: it cannot go on
            else:
                self._arm()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._disarm()
            if shares is not None and self._peer is not None:
                shares.closed(self._peer)
                self._peer = None
            super().connection_lost(exc)

    return GuardedProtocol


class ApiServer:
    """The /v1 app served on a background thread. ``start()`` binds and publishes; ``stop()`` unpublishes."""

    def __init__(self, app: Any, options: ServeOptions, *, state_dir: Optional[Path] = None, reuse_port: bool = False,
                 join: bool = False) -> None:
        """``state_dir``: publish the address there; ``reuse_port``: share the port with other processes (SO_REUSEPORT);
        ``join``: serve on the port of another process of this agent (``options.port``)."""
        self.app = app
        self.options = options
        self.state_dir = state_dir
        self.reuse_port = reuse_port
        self.join = join
        self.workers: Any = None
        """The other processes serving this port (:class:`balsam.services.api_workers.ApiWorkers`), if any."""
        self.port = 0
        self.url = ""
        self._server: Any = None
        self._thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None
        self._error: Optional[BaseException] = None
        self._on_stop: List[Callable[[], None]] = []
        self.shares: Optional[ConnectionShares] = None
        if options.max_connections_per_address or options.max_connections_per_caller:
            self.shares = ConnectionShares(options.max_connections_per_address, options.max_connections_per_caller)
            api = getattr(getattr(app, "state", None), "api", None)
            if api is not None:
                api.shares = self.shares  # the app claims each caller's share once it knows who calls

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` after the server stopped serving (to end what its app uses, like a group writer)."""
        self._on_stop.append(fn)

    def start(self, timeout_s: float = 30.0) -> "ApiServer":
        import uvicorn

        opts = self.options
        ports = parse_port_range(opts.port_range) or [opts.port]
        self._sock = bind_socket(opts.bind, ports, self.reuse_port, self.join)
        self.port = int(self._sock.getsockname()[1])
        tls = bool(opts.tls_cert)
        if tls and not opts.tls_key:
            raise ConfigError("api.tls_cert is set but api.tls_key is not")
        for path in (opts.tls_cert, opts.tls_key, opts.tls_ca):
            if path and not Path(path).is_file():
                raise ConfigError(f"api TLS file {path} does not exist")
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", ws="wsproto",
            http=_protocol_class(opts.header_timeout_s, opts.max_header_bytes, parser_name(opts.http_parser), self.shares),
            limit_concurrency=opts.max_connections,
            timeout_keep_alive=int(max(1, opts.idle_timeout_s)), h11_max_incomplete_event_size=opts.max_header_bytes,
            ssl_certfile=opts.tls_cert or None, ssl_keyfile=opts.tls_key or None, loop=_loop_name(),
            proxy_headers=False, server_header=False, date_header=False,  # no proxy in front; nothing per answer to spare
            timeout_graceful_shutdown=STOP_GRACE_S,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="balsam-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise ServiceError(f"the API server failed to start: {self._error}")
            if time.monotonic() > deadline:
                raise ServiceError(f"the API server did not start within {timeout_s:g} s")
            time.sleep(0.01)
        host = opts.advertise or socket.gethostname()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{host}:{self.port}"
        if self.state_dir is not None:
            self._publish(host, scheme)
        return self

    def _run(self) -> None:
        try:
            assert self._sock is not None
            self._server.run(sockets=[self._sock])
        except BaseException as e:  # reported by start()
            self._error = e
            logger.exception("the API server stopped")

    def _publish(self, host: str, scheme: str) -> None:
        assert self.state_dir is not None
        opts = self.options
        info: Dict[str, Any] = {"url": self.url, "scheme": scheme, "host": host, "port": self.port, "addresses": _addresses(host, opts.bind),
                                "pid": os.getpid(), "started": time.time(), "version": 2}
        if opts.tls_cert:
            info["cafile"] = str(Path(opts.tls_ca or opts.tls_cert).resolve())
        path = self.state_dir / ADDRESS_FILE
        tmp = path.with_name(f".{ADDRESS_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, path)

    def stop(self) -> None:
        if self.state_dir is not None:
            path = self.state_dir / ADDRESS_FILE
            try:
                info = json.loads(path.read_text())
                if info.get("pid") == os.getpid() and info.get("port") == self.port:
                    path.unlink()
            except (OSError, ValueError):
                pass
        stopping = getattr(getattr(self.app, "state", None), "stopping", None)
        if stopping is not None:  # an app's waits in threads (the relay's), which stopping the loop cannot cancel, answer now
            stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fn in self._on_stop:
            fn()
        self._on_stop.clear()


    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _loop_name() -> str:
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def parser_name(choice: str = "auto") -> str:
    """The HTTP parser to serve with: httptools (compiled, faster) when installed and ``choice`` is "auto" or
    "httptools"; h11 (pure Python, what the zipapp carries) otherwise."""
    import importlib.util

    if choice == "h11":
        return "h11"
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def _addresses(host: str, bind: str) -> List[str]:
    out = [host]
    for name in (socket.getfqdn(),):
        if name and name not in out:
            out.append(name)
    try:
        ip = socket.gethostbyname(host)
        if ip not in out:
            out.append(ip)
    except OSError:
        pass
    if bind in ("0.0.0.0", "127.0.0.1", "") and "127.0.0.1" not in out:
        out.append("127.0.0.1")
    return out


def read_address(state_dir: Path) -> Dict[str, Any]:
    """The agent's published address (ServiceError saying how to start it when there is none)."""
    path = state_dir / ADDRESS_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        site = state_dir.parent
        raise ServiceError(f"the site agent of {site} is not running (no {path}): start it on the site's home host with "
                           f"'balsam site start' (from {site})") from None
    except (OSError, ValueError) as e:
        raise ServiceError(f"{path}: unreadable API address ({e})") from None
    if not isinstance(info, dict) or "port" not in info:
        raise ServiceError(f"{path}: malformed API address")
    return info


def host_port(info: Dict[str, Any], index: int = 0) -> Tuple[str, int]:
    """The ``index``-th address to try from an address record."""
    hosts = [str(h) for h in (info.get("addresses") or []) if h]
    if info.get("host") and info["host"] not in hosts:
        hosts.insert(0, str(info["host"]))
    hosts = hosts or ["127.0.0.1"]
    return hosts[index % len(hosts)], int(info["port"])
