"""The launcher's end of the site agent's channel: JobSource and StatusUpdater sink over signed HTTP.

Used when the launcher runs on another host than the site's home host (see :mod:`balsam.launcher.transport`
and :mod:`balsam.services.channel` for the protocol). Each thread keeps its own persistent connection. A
request that fails to connect is retried for up to ``retry_s`` (re-reading ``channel.json``, so an agent
restarted on a new port is found again); a retried batch of state changes carries the same ``batch_id``, so
the agent applies it once.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence

from balsam.db.jobs import StateChange
from balsam.db.jobsource import Heartbeat
from balsam.db.updater import Rejected, Sink
from balsam.exceptions import ServiceError, SessionExpired
from balsam.launcher.transport import JobSourceLike, Transport
from balsam.services.channel import SECRET_FILE, decode, encode, read_address, read_secret, sign
from balsam.site import SiteLayout

logger = logging.getLogger("balsam.launcher")

REQUEST_TIMEOUT_S = 60.0


class ChannelClient:
    """Signed JSON requests to the site agent's channel."""

    def __init__(self, layout: SiteLayout, *, retry_s: float = 120.0) -> None:
        """Reads the channel's address and secret from the site's state folder (ServiceError if absent)."""
        self.layout = layout
        self.retry_s = retry_s
        self._info = read_address(layout.state)
        self.secret = read_secret(layout.state / SECRET_FILE)
        self._local = threading.local()
        self._host_index = 0

    @property
    def address(self) -> str:
        return f"{self._hosts()[self._host_index % len(self._hosts())]}:{self._info['port']}"

    def _hosts(self) -> List[str]:
        hosts = [str(h) for h in (self._info.get("addresses") or []) if h]
        if self._info.get("host") and self._info["host"] not in hosts:
            hosts.insert(0, str(self._info["host"]))
        return hosts or ["127.0.0.1"]

    def _conn(self) -> http.client.HTTPConnection:
        conn: Optional[http.client.HTTPConnection] = getattr(self._local, "conn", None)
        if conn is None:
            host = self._hosts()[self._host_index % len(self._hosts())]
            conn = http.client.HTTPConnection(host, int(self._info["port"]), timeout=REQUEST_TIMEOUT_S)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def call(self, endpoint: str, payload: Dict[str, Any], *, timeout: float = REQUEST_TIMEOUT_S) -> Dict[str, Any]:
        """POST ``payload`` to ``/v1/<endpoint>``; the decoded answer, or the agent's error raised."""
        path = f"/v1/{endpoint}"
        body = encode(payload)
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            ts = repr(time.time())
            headers = {"Content-Type": "application/json", "X-Balsam-Time": ts,
                       "X-Balsam-Signature": sign(self.secret, ts, "POST", path, body)}
            try:
                conn = self._conn()
                conn.timeout = timeout
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                r_ts, r_sig = resp.getheader("X-Balsam-Time"), resp.getheader("X-Balsam-Signature")
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if time.monotonic() > deadline:
                    raise ServiceError(f"the site agent's channel at {self.address} is unreachable: {exc}") from None
                time.sleep(delay)
                delay = min(2.0, delay * 2)
                self._reload()
                continue
            if not r_ts or not r_sig or r_sig != sign(self.secret, r_ts, "RESPONSE", path, data):
                self._drop()
                raise ServiceError(f"the answer from {self.address} is not signed with the site's channel secret")
            answer = decode(data)
            if status == 200:
                return answer  # type: ignore[no-any-return]
            kind = answer.get("kind") if isinstance(answer, dict) else None
            message = answer.get("error") if isinstance(answer, dict) else data[:200].decode(errors="replace")
            if kind == "SessionExpired":
                raise SessionExpired(str(message))
            raise ServiceError(f"the site agent refused {endpoint}: {message}")

    def _reload(self) -> None:
        """Re-read the channel's address (the agent may have restarted on another port), or try the next name."""
        try:
            info = read_address(self.layout.state)
        except ServiceError:
            return
        if info.get("port") != self._info.get("port") or info.get("pid") != self._info.get("pid"):
            logger.info("the site agent's channel moved to port %s", info.get("port"))
            self._info = info
        else:
            self._host_index += 1


class RemoteJobSource(Heartbeat):
    """A lease held through the channel; same interface as :class:`balsam.db.jobsource.JobSource`."""

    def __init__(self, client: ChannelClient, *, host: str, batch_job_id: Optional[int], label: str,
                 heartbeat_period_s: float) -> None:
        self.client = client
        self.host = host
        self.batch_job_id = batch_job_id
        self.label = label
        self.session_id: Optional[int] = None
        self._init_heartbeat(heartbeat_period_s)

    def start(self) -> "RemoteJobSource":
        answer = self.client.call("session/create", {"batch_job_id": self.batch_job_id, "label": self.label, "host": self.host,
                                                     "pid": os.getpid()})
        self.session_id = int(answer["session_id"])
        self._start_heartbeat()
        return self

    def heartbeat(self) -> None:
        self.client.call("session/tick", {"session_id": self.session_id})

    def acquire(self, max_num_jobs: int, wait_s: float = 0.0, **constraints: Any) -> List[Dict[str, Any]]:
        assert self.session_id is not None, "start() first"
        try:
            answer = self.client.call("acquire", {"session_id": self.session_id, "max_num_jobs": max_num_jobs,
                                                  "constraints": constraints, "wait_s": wait_s},
                                      timeout=REQUEST_TIMEOUT_S + wait_s)
        except SessionExpired:
            self.expired.set()
            raise
        return list(answer["jobs"])

    def release(self) -> None:
        self._stop_heartbeat()
        if self.session_id is not None:
            try:
                self.client.call("session/release", {"session_id": self.session_id})
            except SessionExpired:
                pass
            self.session_id = None


def channel_sink(client: ChannelClient) -> Sink:
    """A StatusUpdater sink that sends each batch through the channel (once, even if retried)."""

    def write(changes: Sequence[StateChange]) -> Rejected:
        wire = [[c.job_id, c.state, c.timestamp, c.data, c.fields, c.session_id] for c in changes]
        answer = client.call("changes", {"batch_id": uuid.uuid4().hex, "changes": wire})
        return [(changes[int(i)], str(why)) for i, why in answer.get("rejected", [])]

    return write


class RemoteTransport(Transport):
    """The site agent's channel."""

    name = "channel"

    def __init__(self, client: ChannelClient, host: str) -> None:
        self.client = client
        self.host = host
        self.home = ""

    def connect(self) -> "RemoteTransport":
        info = self.client.call("ping", {})
        self.site_id = int(info["site_id"])
        self.site_name = str(info["site_name"])
        self.home = str(info["host"])
        return self

    @classmethod
    def from_site(cls, layout: SiteLayout, host: str) -> "RemoteTransport":
        return cls(ChannelClient(layout), host)

    def job_source(self, *, batch_job_id: Optional[int], label: str, heartbeat_period_s: float, expiry_s: float) -> JobSourceLike:
        return RemoteJobSource(self.client, host=self.host, batch_job_id=batch_job_id, label=label,
                               heartbeat_period_s=heartbeat_period_s)

    def sink(self) -> Sink:
        return channel_sink(self.client)

    def app_rows(self, ids: Sequence[int]) -> List[Dict[str, Any]]:
        return list(self.client.call("apps", {"ids": list(ids)})["apps"])

    def job_states(self, ids: Sequence[int]) -> Dict[int, str]:
        if not ids:
            return {}
        states = self.client.call("job_states", {"ids": list(ids)})["states"]
        return {int(k): str(v) for k, v in states.items()}

    @property
    def acquire_wait_s(self) -> float:
        return 0.5

    def describe(self) -> str:
        return f"channel (the site agent on {self.home}, via {self.client.address})"
