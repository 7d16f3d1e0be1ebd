"""Benchmark: how soon a user watching the relay sees a site's change, over the relay's WebSocket and by polling.

A relay (SQLite) serves alice, whose site has pushed 1,000 jobs. Each round, the site's agent pushes one job's
state change (the row and its event, as the sync service does); measured from just before the push until the
user sees it: over ``/v1/ws`` (the dashboard's live stream), and by polling ``GET /v1/jobs/{id}`` every
``--poll-s`` seconds (a client without the stream), alternating rounds in the same run. Median and p99, and
the ratio WebSocket / polling.

Usage::

    python bench/bench_relay_live.py [--rounds 40] [--poll-s 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SITE = 7


def job_row(n: int, state: str, version: int) -> Dict[str, Any]:
    now = time.time()
    return {"id": (SITE << 32) + n, "app_id": (SITE << 32) + 1, "workdir": f"w/{n}", "state": state, "tags": "{}", "parent_ids": "[]",
            "parameters": "{}", "created": 1_700_000_000.0 + n, "last_update": now, "version": version}  # (created: fixed per job, as a site's)


def push(agent: Any, n: int, state: str, event_n: int, version: int) -> None:
    job = job_row(n, state, version)
    event = {"id": (SITE << 32) + event_n, "job_id": job["id"], "timestamp": time.time(), "from_state": "RUNNING", "to_state": state,
             "data": None}
    agent.request("POST", "/v1/sync/push", {"submission_id": f"live-{event_n:08d}", "last_seq": event_n, "items": [
        {"entity": "job", "op": "upsert", "id": job["id"], "row": job}, {"entity": "event", "op": "upsert", "id": event["id"], "row": event}]})


class Stream:
    """A WebSocket client of /v1/ws that waits for one job's message."""

    def __init__(self, port: int, token: str) -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target=f"/v1/ws?token={token}")))
        self.wait(lambda m: m.get("type") == "counts")

    def wait(self, fn: Any, timeout: float = 60.0) -> None:
        from wsproto.events import TextMessage

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage) and fn(json.loads(event.data)):
                    return
        raise TimeoutError("no message")


def pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="changes timed each way")
    parser.add_argument("--poll-s", type=float, default=1.0, help="the polling client's period")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from balsam.http.client import HttpClient
    from balsam.http.serve import ApiServer, ServeOptions
    from balsam.relay.server import build_relay_app
    from balsam.relay.store import RelayStore

    with tempfile.TemporaryDirectory(prefix="balsam-bench-live-") as tmp:
        store = RelayStore(f"sqlite:///{Path(tmp) / 'relay.db'}")
        store.migrate()
        store.add_user("alice", "alice-password")
        server = ApiServer(build_relay_app(store), ServeOptions(bind="127.0.0.1", port=0)).start()
        try:
            url = f"http://127.0.0.1:{server.port}"
            anonymous = HttpClient(url=url, token="-", retry_s=5)
            anonymous.token = ""
            token = anonymous.request("POST", "/v1/tokens", {"user": "alice", "password": "alice-password"})["token"]
            alice = HttpClient(url=url, token=token, retry_s=5)
            link = alice.request("POST", "/v1/sites", {"site_id": SITE, "name": "site", "hostname": "h", "path": "/p"})
            agent = HttpClient(url=url, token=link["token"], retry_s=5)
            items = [{"entity": "job", "op": "upsert", "id": (SITE << 32) + n, "row": job_row(n, "RUNNING", 1)} for n in range(1, 1001)]
            agent.request("POST", "/v1/sync/push", {"submission_id": "live-initial", "last_seq": 0, "items": items})
            stream = Stream(server.port, token)
            ws_s: List[float] = []
            poll_s: List[float] = []
            for r in range(args.rounds):
                n = 1 + 2 * r
                event_n = 10_000 + n
                start = time.perf_counter()
                push(agent, n, "JOB_FINISHED", event_n, 2)
                stream.wait(lambda m, e=(SITE << 32) + event_n: m.get("type") == "job" and m.get("event_id") == e)
                ws_s.append(time.perf_counter() - start)
                n += 1
                start = time.perf_counter()
                push(agent, n, "JOB_FINISHED", event_n + 1, 2)
                phase = (r % 10) / 10 * args.poll_s  # the poller's clock is not in step with the site's pushes
                time.sleep(phase)
                while alice.request("GET", f"/v1/jobs/{(SITE << 32) + n}")["state"] != "JOB_FINISHED":
                    time.sleep(args.poll_s)
                poll_s.append(time.perf_counter() - start)
        finally:
            server.stop()
    results = {"websocket": {"median_s": statistics.median(ws_s), "p99_s": pct(ws_s, 0.99)},
               "polling": {"median_s": statistics.median(poll_s), "p99_s": pct(poll_s, 0.99), "period_s": args.poll_s}}
    w, p = results["websocket"], results["polling"]
    print(f"a site's change seen by its user ({args.rounds} changes each way): over the relay's WebSocket median {w['median_s'] * 1000:.0f} ms, "
          f"p99 {w['p99_s'] * 1000:.0f} ms; polling every {args.poll_s:g} s median {p['median_s'] * 1000:.0f} ms, "
          f"p99 {p['p99_s'] * 1000:.0f} ms (WebSocket/polling median {w['median_s'] / max(p['median_s'], 1e-9):.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
