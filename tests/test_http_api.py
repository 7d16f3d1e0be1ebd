"""The /v1 HTTP API: the route table and OpenAPI document agree; requests are refused unless signed, fresh and
unreplayed; sizes and times are bounded; answers are bound to their request; exactly-once by idempotency key;
the WebSocket streams state changes; the Python API from a "foreign" host works through the agent."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest

from tests.launcher_support import runnable, states


@pytest.fixture
def api(site: Any) -> Iterator[Any]:
    """The site's API server on 127.0.0.1 (as the agent runs it)."""
    yield from _serve(site, "auto")


def _serve(site: Any, parser: str) -> Iterator[Any]:
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import this_host

    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1", max_body_mb=1, header_timeout_s=1.0,
                                                                 body_timeout_s=1.0, http_parser=parser),
                              host=this_host())
    yield server
    server.stop()


@pytest.fixture(params=["h11", "httptools"])
def each_parser(request: Any, site: Any) -> Iterator[Any]:
    """The site's API server with each HTTP parser (httptools when installed: the default then)."""
    if request.param == "httptools":
        pytest.importorskip("httptools")
    yield from _serve(site, request.param)


def _secret(site: Any) -> bytes:
    return (site.path / ".balsam" / "api.secret").read_bytes().strip()


def _send(api: Any, method: str, target: str, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    conn.request(method, target, body=body or None, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, (json.loads(data) if data and resp.getheader("content-type", "").startswith("application/json") else data), resp


def _signed(site: Any, method: str, target: str, body: bytes = b"") -> Dict[str, str]:
    from balsam.http.auth import sign_request

    return dict(sign_request(_secret(site), method, target, body), **{"Content-Type": "application/json"})


def test_every_route_is_in_the_openapi_document_and_back(site: Any, api: Any) -> None:
    from starlette.routing import Route, WebSocketRoute

    from balsam.http.routes import ROUTES, openapi_path

    status, doc, _ = _send(api, "GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    app = api.app
    served = set()
    for r in app.routes:
        if isinstance(r, Route):
            served.update((openapi_path(r.path), m) for m in (r.methods or ()) if m != "HEAD")
    assert documented == served, "the app serves exactly the documented operations"
    assert {r.path for r in app.routes if isinstance(r, WebSocketRoute)} == {"/v1/ws"}
    assert len(ROUTES) == len(served) + 1
    for ops in doc["paths"].values():
        for op in ops.values():
            if "security" in op:
                assert op["responses"]["401"]["content"]["application/json"]["schema"]["required"] == ["error"]


def test_unsigned_forged_stale_and_replayed_requests_are_refused(site: Any, api: Any) -> None:
    from balsam.http.auth import request_signature

    assert _send(api, "GET", "/v1/health")[:2] == (200, {"status": "ok", "pid": os.getpid()})
    status, answer, _ = _send(api, "GET", "/v1/jobs")
    assert status == 401 and answer["error"]["code"] == "unauthorized"
    headers = _signed(site, "GET", "/v1/jobs")
    forged = dict(headers, **{"X-Balsam-Signature": request_signature(b"not-the-secret", "GET", "/v1/jobs", headers["X-Balsam-Time"],
                                                                       headers["X-Balsam-Nonce"], headers["X-Balsam-Content-SHA256"])})
    assert _send(api, "GET", "/v1/jobs", headers=forged)[0] == 401
    assert _send(api, "GET", "/v1/jobs?state=RUNNING", headers=headers)[0] == 401, "the signature covers the query"
    status, answer, resp = _send(api, "GET", "/v1/jobs", headers=headers)
    assert status == 200 and answer["results"] == []
    status, answer, _ = _send(api, "GET", "/v1/jobs", headers=headers)
    assert status == 401 and "replayed" in answer["error"]["message"]
    old = dict(_signed(site, "GET", "/v1/jobs"))
    old["X-Balsam-Time"] = f"{time.time() - 3600:.6f}"
    old["X-Balsam-Signature"] = request_signature(_secret(site), "GET", "/v1/jobs", old["X-Balsam-Time"], old["X-Balsam-Nonce"],
                                                  old["X-Balsam-Content-SHA256"])
    status, answer, _ = _send(api, "GET", "/v1/jobs", headers=old)
    assert status == 401 and "off" in answer["error"]["message"]
    secret_file = site.path / ".balsam" / "api.secret"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert json.loads((site.path / ".balsam" / "api.json").read_text())["port"] == api.port


def test_answers_are_bound_to_their_request(site: Any, api: Any) -> None:
    from balsam.http.auth import check_response

    headers = _signed(site, "GET", "/v1/whoami")
    status, answer, resp = _send(api, "GET", "/v1/whoami", headers=headers)
    raw = json.dumps(answer, separators=(",", ":")).encode()
    assert status == 200 and answer["kind"] == "site"
    assert check_response(_secret(site), headers["X-Balsam-Nonce"], 200, raw, resp.getheader("X-Balsam-Signature"))
    assert not check_response(_secret(site), "another-nonce", 200, raw, resp.getheader("X-Balsam-Signature"))


def test_a_body_that_differs_from_its_signed_hash_is_refused(site: Any, api: Any) -> None:
    headers = _signed(site, "POST", "/v1/jobs", b"[]")
    status, answer, _ = _send(api, "POST", "/v1/jobs", b'[{"workdir": "x", "app_id": 1}]', headers)
    assert status == 401 and "hash" in answer["error"]["message"]


def test_oversized_bodies_are_refused_before_reading(site: Any, api: Any) -> None:
    big = b"[" + b" " * (2 * 1024 * 1024) + b"]"
    status, answer, _ = _send(api, "POST", "/v1/jobs", big, _signed(site, "POST", "/v1/jobs", big))
    assert status == 413 and answer["error"]["code"] == "too_large"
    status, _, _ = _send(api, "POST", "/v1/jobs", big)
    assert status == 401, "an unsigned body is not even looked at"


def _answer_then_finish_body(api: Any, head: bytes, size: int) -> bytes:
    """Send ``head`` and the first KiB of a ``size``-byte body, read the whole answer, then send the rest of the body
    (more than the kernel's socket buffers hold): the server must take it in, not reset the connection."""
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    try:
        sock.sendall(head + b"[" + b" " * 1023)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                answer.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
            chunk = sock.recv(65536)
            assert chunk, f"the server closed before answering: {answer!r}"
            answer += chunk
        rest = b" " * (size - 1024)
        sock.sendall(rest)  # before: ConnectionResetError / BrokenPipeError once the server closed on the body
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b"", "the server ends the connection once the body is in"
        return answer
    finally:
        sock.close()


def test_a_client_still_sending_a_refused_body_reads_the_answer(site: Any, each_parser: Any) -> None:
    """A client sends its whole body before reading the answer (http.client, requests): a body refused unread (not
    signed; too large) must not end in a reset while it is still being sent. Once failed in CI as a broken pipe."""
    size = 32 * 1024 * 1024
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n"
            "\r\n").encode()
    answer = _answer_then_finish_body(each_parser, head, size)
    assert answer.startswith(b"HTTP/1.1 401 ") and b"connection: close" in answer.lower()
    body = b"[" + b" " * (size - 2) + b"]"
    signed = "".join(f"{k}: {v}\r\n" for k, v in _signed(site, "POST", "/v1/jobs", body).items())
    head = f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n{signed}\r\n".encode()
    answer = _answer_then_finish_body(each_parser, head, size)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"too_large"' in answer
    status, _, _ = _send(each_parser, "GET", "/v1/health")
    assert status == 200, "the server goes on serving"


def test_slow_clients_are_disconnected(site: Any, api: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    start = time.monotonic()
    assert sock.recv(100) == b"", "the server closes the connection"
    assert time.monotonic() - start < 8
    sock.close()
    body = b'{"host": "x"}'
    headers = _signed(site, "POST", "/v1/sessions", body)
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body[:3])
    reply = b""
    while b"stalled" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    assert b" 400 " in reply.split(b"\r\n")[0] and b"stalled" in reply
    sock.close()


def test_errors_have_one_shape_and_the_same_class_reaches_the_client(site: Any, api: Any, hello: Any) -> None:
    from balsam.exceptions import IllegalTransition, ObjectDoesNotExist, ValidationError
    from balsam.http.client import HttpBackend

    backend = HttpBackend.for_site(site.path, retry_s=2)
    for method, target, body, code in [("GET", "/v1/jobs/999", b"", 404), ("GET", "/v1/jobs?state=NOPE", b"", 400),
                                       ("GET", "/v1/jobs?bogus=1", b"", 400), ("POST", "/v1/jobs", b"{not json", 422),
                                       ("GET", "/v1/nowhere", b"", 404)]:
        status, answer, _ = _send(api, method, target, body, _signed(site, method, target, body))
        assert status == code and set(answer["error"]) >= {"code", "message", "field"}, (target, answer)
    with pytest.raises(ObjectDoesNotExist):
        backend.client.request("GET", "/v1/jobs/999")
    with pytest.raises(ValidationError, match="unknown filter"):
        backend.select("job", {"bogus": 1}, columns=("id",))
    job = hello.submit("e/1", say_hello_to="x")
    with pytest.raises(IllegalTransition):
        backend.update_jobs([], (), [__import__("balsam.db.jobs", fromlist=["StateChange"]).StateChange(int(job.id), "JOB_FINISHED")])


def test_a_retried_acquire_returns_the_same_jobs_and_answers_survive_a_restart(site: Any, hello: Any) -> None:
    from balsam.http.client import HttpBackend
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import this_host

    ids = runnable(site.store, [hello.submit(f"a/{i}", say_hello_to=str(i)) for i in range(4)])
    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=this_host())
    client = HttpBackend.for_site(site.path, retry_s=10).client
    sid = client.request("POST", "/v1/sessions", {"host": "n1"})["id"]
    first = client.request("POST", f"/v1/sessions/{sid}/acquire", {"max_num_jobs": 2}, idempotency_key="acq-1")["jobs"]
    server.stop()
    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=this_host())
    try:
        again = client.request("POST", f"/v1/sessions/{sid}/acquire", {"max_num_jobs": 2}, idempotency_key="acq-1")["jobs"]
        assert again == first and len(first) == 2, "the same jobs, every field as first answered"
        rest = client.request("POST", f"/v1/sessions/{sid}/acquire", {"max_num_jobs": 10}, idempotency_key="acq-2")["jobs"]
        assert sorted(j["id"] for j in first + rest) == sorted(ids)
        with pytest.raises(Exception, match="different request"):
            client.request("POST", "/v1/sessions", {"host": "n2"}, idempotency_key="acq-1")
    finally:
        server.stop()


def test_many_launchers_status_batches_apply_once_each_and_retries_replay(site: Any, api: Any, hello: Any) -> None:
    """Concurrent batches are applied together (one pass of the state engine): each still counts once, a retry gets
    its first answer, and a key reused for another batch is refused alone."""
    from concurrent.futures import ThreadPoolExecutor

    from balsam.exceptions import ValidationError
    from balsam.http.client import HttpBackend

    ids = runnable(site.store, [hello.submit(f"m/{i}", say_hello_to=str(i)) for i in range(48)])
    client = HttpBackend.for_site(site.path, retry_s=10).client
    sessions = [client.request("POST", "/v1/sessions", {"host": f"n{i}"})["id"] for i in range(12)]
    held = {sid: [j["id"] for j in client.request("POST", f"/v1/sessions/{sid}/acquire", {"max_num_jobs": 4})["jobs"]]
            for sid in sessions}
    assert sorted(i for js in held.values() for i in js) == sorted(ids)

    def report(sid: int, state: str, key: str) -> Any:
        body = {"session_id": sid, "changes": [{"job_id": j, "state": state} for j in held[sid]] + [{"job_id": ids[0] + 10**6, "state": state}]}
        return client.request("POST", "/v1/status-batches", body, idempotency_key=key)

    with ThreadPoolExecutor(12) as pool:
        first = list(pool.map(lambda sid: report(sid, "RUNNING", f"run-{sid}"), sessions))
        again = list(pool.map(lambda sid: report(sid, "RUNNING", f"run-{sid}"), sessions + sessions))
    assert all(a == first[n % len(sessions)] for n, a in enumerate(again)), "a retry gets the first answer"
    assert all([r[0] for r in a["rejected"]] == [4] for a in first), "each batch's own refusals, by its own index"
    with pytest.raises(ValidationError, match="different request"):
        report(sessions[0], "RUN_DONE", f"run-{sessions[1]}")
    running = site.store.execute("SELECT job_id, count(*) FROM event WHERE to_state='RUNNING' GROUP BY job_id")
    assert sorted(running) == [(i, 1) for i in sorted(ids)], "every change applied exactly once"


def test_launcher_fields_are_limited(site: Any, api: Any, hello: Any) -> None:
    from balsam.exceptions import ValidationError
    from balsam.http.client import HttpBackend

    [job_id] = runnable(site.store, [hello.submit("l/1", say_hello_to="x")])
    client = HttpBackend.for_site(site.path, retry_s=2).client
    batch = {"changes": [{"job_id": job_id, "state": "RUNNING", "fields": {"workdir": "elsewhere"}}]}
    with pytest.raises(ValidationError, match="may not write 'workdir'"):
        client.request("POST", "/v1/status-batches", batch)
    assert states(site.store, [job_id])[job_id] != "RUNNING"


def test_the_websocket_streams_state_changes(site: Any, api: Any, hello: Any) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    from balsam.http.auth import Principal, TokenSet

    tokens = TokenSet()
    token = tokens.issue(Principal(kind="ui", name="browser"))
    api.app.state.api.auth.tokens = tokens
    assert _send(api, "GET", "/v1/jobs", headers={"Authorization": f"Bearer {token}"})[0] == 200
    assert _send(api, "GET", "/v1/jobs", headers={"Authorization": "Bearer wrong"})[0] == 401
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=60)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="127.0.0.1", target=f"/v1/ws?token={token}")))
    messages = []
    accepted = False
    job = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(m.get("type") == "job" and job is not None and m.get("id") == job.id for m in messages):
        ws.receive_data(sock.recv(65536))
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                accepted = True
            elif isinstance(event, TextMessage):
                messages.append(json.loads(event.data))
        if messages and job is None:
            job = hello.submit("ws/1", say_hello_to="x")
    sock.close()
    assert accepted and messages[0]["type"] == "hello"
    assert job is not None and any(m.get("type") == "job" and m["id"] == job.id and m["state"] == "STAGED_IN" for m in messages)


def test_the_dashboard_route_serves_packaged_files(site: Any, api: Any) -> None:
    from importlib import resources

    status, body, resp = _send(api, "GET", "/")
    has_index = resources.files("balsam.web").joinpath("index.html").is_file()
    assert status == (200 if has_index else 404)
    assert _send(api, "GET", "/assets/../../settings.py")[0] == 404


def test_the_python_api_works_from_a_foreign_host_through_the_agent(site: Any, api: Any, hello: Any,
                                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from balsam._api import sites as _sites
    from balsam.api import Job, Site

    home_job = hello.submit("f/0", say_hello_to="home")
    monkeypatch.setenv("BALSAM_HOSTNAME", "login2")
    monkeypatch.setenv("BALSAM_SITE_PATH", str(site.path))
    _sites.reset()
    ref = _sites.current_site()
    assert ref is not None and ref.backend.kind == "http" and not ref.is_home
    made = Job.objects.bulk_create([Job(f"f/{i}", app_id="Hello", parameters={"say_hello_to": str(i)}, tags={"k": "v"})
                                    for i in range(1, 4)])
    assert [j.state for j in made] == ["STAGED_IN"] * 3 or all(j.id for j in made)
    assert Job.objects.filter(tags={"k": "v"}).count() == 3
    assert {j.workdir for j in Job.objects.filter(tags={"k": "v"})} == {"f/1", "f/2", "f/3"}
    one = Job.objects.get(workdir="f/1")
    one.data = {"x": 1}
    one.save()
    assert Job.objects.get(id=one.id).data == {"x": 1}
    assert Job.objects.filter(id=[home_job.id]).update(tags={"moved": "yes"}) == 1
    assert Site.objects.get().name == site.name
    assert Job.objects.filter(workdir="f/3").delete() == 1
    from balsam.exceptions import ValidationError

    with pytest.raises(ValidationError, match="needs parameter"):
        Job("f/bad", app_id="Hello", parameters={"nope": 1}).save()
    monkeypatch.delenv("BALSAM_HOSTNAME")
    _sites.reset()
    assert Job.objects.filter(tags={"moved": "yes"}).count() == 1 and Job.objects.count() == 3


def test_an_id_alone_finds_its_job_from_a_foreign_host(site: Any, api: Any, hello: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An id names one job among all of a user's sites: from another host, with no site named, it still does."""
    from balsam._api import sites as _sites
    from balsam.api import EventLog, Job

    job = hello.submit("by-id", say_hello_to="x")
    monkeypatch.setenv("BALSAM_HOSTNAME", "login2")
    _sites.reset()
    assert _sites.current_site() is None
    assert Job.objects.get(id=job.id).workdir == "by-id"
    assert [e.job_id for e in EventLog.objects.filter(job_id=[job.id])] == [job.id]


def test_job_validation_errors_name_the_field(site: Any, api: Any, hello: Any) -> None:
    app_id = int(hello.__app_id__)
    for item, field in [({"workdir": "v/1", "app_id": app_id, "parameters": {}}, "1.parameters.say_hello_to"),
                        ({"workdir": "v/1", "app_id": app_id, "parameters": {"say_hello_to": "x", "nope": 1}}, "1.parameters.nope"),
                        ({"workdir": "v/1", "app_id": app_id, "parameters": {"say_hello_to": "x"}, "num_nodes": 0}, "1.num_nodes"),
                        ({"workdir": "/abs", "app_id": app_id, "parameters": {"say_hello_to": "x"}}, "1.workdir")]:
        ok_item = {"workdir": "v/0", "app_id": app_id, "parameters": {"say_hello_to": "x"}}
        body = json.dumps([ok_item, item]).encode()
        status, answer, _ = _send(api, "POST", "/v1/jobs", body, _signed(site, "POST", "/v1/jobs", body))
        assert status == 400 and answer["error"]["field"] == field, answer
    assert states(site.store, []) == {} and site.store.execute("SELECT count(*) FROM job")[0][0] == 0, "nothing was created"


def test_the_listening_socket_is_tcp_so_answers_are_not_delayed(site: Any, api: Any) -> None:
    # asyncio disables Nagle only on sockets whose proto is TCP; with it on, every keep-alive answer waited ~40 ms.
    assert api._sock.proto == socket.IPPROTO_TCP


def test_transfers_are_filtered_by_protocol_on_the_server(site: Any, api: Any, tmp_path: Path) -> None:
    from urllib.parse import urlencode

    from tests.test_cli_transfer import Moves, staged_site

    staged_site(site, tmp_path)  # locations: here -> local, dtn -> rsync://
    for i in range(3):
        Moves.submit(workdir=f"p/{i}", transfers={"deck": f"here:{tmp_path}/deck.txt", "out": "dtn:/archive/out.txt"})

    def listed(query: Dict[str, Any]) -> Any:
        target = "/v1/transfers?" + urlencode({**query, "limit": 2}, doseq=True)
        return _send(api, "GET", target, headers=_signed(site, "GET", target))

    status, page, _ = listed({"protocol": "rsync"})
    assert status == 200 and [r["location_alias"] for r in page["results"]] == ["dtn", "dtn"] and page["next_cursor"]
    status, page, _ = listed({"protocol": ["rsync", "local"], "direction": "in"})
    assert status == 200 and {r["location_alias"] for r in page["results"]} == {"here"}
    status, page, _ = listed({"protocol": "globus"})
    assert status == 200 and page["results"] == []
    status, answer, _ = listed({"protocol": "ftp"})
    assert status == 400 and "protocol" in answer["error"]["message"]


def test_a_batch_job_preview_checks_its_fields_and_writes_nothing(site: Any, api: Any) -> None:
    """POST /v1/batch-jobs/preview (``balsam queue submit --dry-run`` from another host): the agent's rendering with
    the id the BatchJob would get; bad fields are one 400 line naming what is wrong, and nothing is created."""
    from balsam.api import BatchJob

    for body, says in [({"num_nodes": 1, "wall_time_min": 5, "color": "red"}, "unknown BatchJob field 'color'"),
                       ({"num_nodes": 0, "wall_time_min": 5}, "num_nodes"),
                       ({"num_nodes": 1, "wall_time_min": 5, "filter_tags": {"a": 1}}, "filter_tags must be a dict of strings"),
                       ({"num_nodes": 1, "wall_time_min": 5, "partitions": [3]}, "each partition must be"),
                       ({"num_nodes": 2, "wall_time_min": 5, "partitions": ["mpi:1", "serial:1:role=w"]}, "allows at most 1 nodes")]:
        raw = json.dumps(body).encode()
        status, answer, _ = _send(api, "POST", "/v1/batch-jobs/preview", raw, _signed(site, "POST", "/v1/batch-jobs/preview", raw))
        assert status == 400 and says in answer["error"]["message"] and "\n" not in answer["error"]["message"], (body, answer)
    raw = json.dumps({"num_nodes": 1, "wall_time_min": 5, "partitions": ["serial:1:role=w"]}).encode()
    status, answer, _ = _send(api, "POST", "/v1/batch-jobs/preview", raw, _signed(site, "POST", "/v1/batch-jobs/preview", raw))
    assert status == 200 and answer["command"] == ["bash", answer["script_path"]]
    assert " -p serial:1:role=w" in answer["script"]  # the partition as the launcher in the script is given it
    assert BatchJob.objects.count() == 0 and not list((site.path / "qsubmit").glob("*.sh"))


def test_a_number_past_64_bits_crosses_http_exactly(site: Any, api: Any, hello: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An integer past 64 bits in a job's parameters is sent, stored and read back exactly from another host (a fast
    JSON parser that would make it a float is not used for such a document)."""
    from balsam._api import sites as _sites
    from balsam.api import Job
    from balsam.db import open_store

    big = 2**70 + 1
    home = open_store(site.path, site.host)
    monkeypatch.setenv("BALSAM_HOSTNAME", "login2")
    _sites.reset()
    job = hello.submit("big/1", say_hello_to=big)  # through the agent
    assert home.execute("SELECT parameters FROM job WHERE id=?", (int(job.id),))[0][0] == f'{{"say_hello_to":{big}}}'
    assert Job.objects.get(id=job.id).parameters == {"say_hello_to": big}  # read through the agent
