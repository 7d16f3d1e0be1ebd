"""The /v1 client (stdlib sockets, :mod:`balsam.http.wire`, so it runs from the zipapp) and the HTTP Backend over it.

:class:`HttpClient` signs each request with the site secret, checks that each answer is bound to its request,
and raises the exception class the server named (a ValidationError stays a ValidationError, so callers see
the same errors as on the home host). Transient failures (connection refused or reset, timeouts, 503, and a
request signed before the agent restarted) are retried with exponential backoff for up to ``retry_s``; every
mutating request carries an ``Idempotency-Key`` that stays the same across its retries, so the server applies
it once and answers a retry with the stored answer. The agent's address is re-read from ``.balsam/api.json``
between retries, so an agent restarted on another port is found again.

:class:`HttpBackend` implements :class:`balsam.db.backend.Backend` with these requests: the Python API, the CLI
and the launcher use it on every host but the site's home host.
"""

from __future__ import annotations

import http.client
import json
import logging
import operator
import os
import random
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from balsam import exceptions as exc
from balsam.db import lockwait
from balsam.db.backend import Backend, Row
from balsam.db.codec import loads, loads_body
from balsam.db.jobs import NEW_JOB_COLUMNS, StateChange
from balsam.db.merge import Read, read_to_wire
from balsam.db.once import Rejected
from balsam.http.auth import SECRET_FILE, check_response, read_secret, sign_request
from balsam.http.schemas import COLUMNS, encode_filter_value, wire_to_row
from balsam.http.serve import host_port, read_address
from balsam.http.wire import Connection

logger = logging.getLogger("balsam.http")
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
"""One encoder for every request body (``json.dumps`` with options builds a new one per call)."""

REQUEST_TIMEOUT_S = 60.0
HEALTH_TIMEOUT_S = 5.0
"""How long a client that timed out waits for ``/v1/health`` to say why."""
CREATE_CHUNK = 5000
"""Jobs per create request: a bulk_create of any size is requests of bounded size and time (a relay turns each into
one command its site applies in a second or two, well inside the relay's wait)."""
PAGE_ROWS = 5000
"""Rows per request when the client reads a long listing (one keyset page each)."""
FIRST_PAGE_ROWS = 500
"""Rows of a listing's first page: the rest come while the caller takes these."""
RETRY_STATUSES = frozenset({502, 503, 504})
_KINDS = {name: getattr(exc, name) for name in dir(exc) if isinstance(getattr(exc, name), type)
          and issubclass(getattr(exc, name), exc.BalsamError)}


class HttpClient:
    """JSON requests to a /v1 API: a site agent's (signed with the site secret, found through the site's state
    folder) or any server's by URL with a bearer token (the relay)."""

    def __init__(self, state_dir: Optional[Path] = None, *, retry_s: float = 300.0, timeout_s: float = REQUEST_TIMEOUT_S,
                 url: str = "", token: str = "", cafile: str = "") -> None:
        """With ``state_dir``: reads the agent's address and the site secret (ServiceError, saying how to start the
        agent, if absent). With ``url`` and ``token``: that server, bearer auth (plain HTTP only to this host)."""
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.token = token
        self.secret: Optional[bytes] = None
        if state_dir is not None:
            self.state_dir: Optional[Path] = Path(state_dir)
            self._info = read_address(self.state_dir)
            self.secret = read_secret(self.state_dir / SECRET_FILE)
        else:
            self.state_dir = None
            self._info = parse_url(url, cafile)
            if not token:
                raise exc.ServiceError(f"no token for {url}: run 'balsam login {url}'")
        self._local = threading.local()
        self._host_index = 0

    @property
    def address(self) -> str:
        host, port = host_port(self._info, self._host_index)
        return f"{self._info.get('scheme', 'http')}://{host}:{port}"

    def _conn(self, timeout: float) -> Connection:
        conn: Optional[Connection] = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "address", None) != self.address:
            if conn is not None:
                conn.close()
            host, port = host_port(self._info, self._host_index)
            ctx = ssl.create_default_context(cafile=self._info.get("cafile") or None) if self._info.get("scheme") == "https" else None
            conn = Connection(host, port, timeout=timeout, context=ctx)
            self._local.conn = conn
            self._local.address = self.address
        conn.settimeout(timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def close(self) -> None:
        self._drop()

    def request(self, method: str, path: str, payload: Any = None, *, timeout: Optional[float] = None,
                idempotency_key: Optional[str] = None, retry_s: Optional[float] = None, body: Optional[bytes] = None) -> Any:
        """Send one request (retried while transient); the decoded answer, or the server's error raised. ``body``:
        the payload already as JSON (UTF-8), instead of ``payload``."""
        try:
            if body is None:
                body = b"" if payload is None else _ENCODE(payload).encode()
        except ValueError:  # inf or nan: JSON cannot carry them, and no field accepts them
            where = _non_finite(payload) or "a value"
            raise exc.ValidationError(f"{where}: must be a finite number (JSON cannot carry inf or nan)") from None
        mutating = method in ("POST", "PUT", "PATCH", "DELETE")
        if idempotency_key is None:
            key: Optional[str] = new_key() if mutating else None
        else:
            key = idempotency_key or None  # "": a POST that only reads (a query) needs none
        timeout = self.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + (self.retry_s if retry_s is None else retry_s)
        delay = 0.05
        cert_failures = 0
        while True:
            if self.secret is not None:
                headers = sign_request(self.secret, method, path, body)
            else:
                headers = {"Authorization": f"Bearer {self.token}"}
            headers["Content-Type"] = "application/json"
            if key:
                headers["Idempotency-Key"] = key
            why = ""
            try:
                status, answer_headers, data = self._conn(timeout).exchange(method, path, body, headers)
                signature = answer_headers.get("x-balsam-signature")
            except ssl.SSLCertVerificationError as e:  # not transient: every address is tried once, then it is an error
                self._drop()
                cert_failures += 1
                where = self.address
                if cert_failures >= len(self._info.get("addresses") or [None]):
                    trusted = self._info.get("cafile") or "the system's CA store"
                    raise exc.ServiceError(f"{where}: the server's TLS certificate does not verify ({e.verify_message or e}); "
                                           f"trusting {trusted}") from None
                self._host_index += 1
                continue
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                why = f"{type(e).__name__}: {e}"
                status, data, signature = 0, b"", None
            if status:
                if self.secret is not None and (status not in RETRY_STATUSES or signature):
                    if not check_response(self.secret, headers["X-Balsam-Nonce"], status, data, signature):
                        self._drop()
                        raise exc.ServiceError(f"the answer from {self.address} is not signed with the site's secret "
                                               "(another server on that port, or a tampered answer)")
                answer = _decode(data)
                if status == 202 and isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                    raise _exception(answer["error"], str(answer["error"].get("message") or "queued"), status)
                if 200 <= status < 300:
                    return answer
                error = (answer.get("error") or {}) if isinstance(answer, dict) else {}
                message = str(error.get("message") or data[:200].decode(errors="replace"))
                transient = status in RETRY_STATUSES or (status == 401 and "before this server started" in message)
                if not transient:
                    raise _exception(error, message, status)
                why = f"{status} {message}"
            if time.monotonic() > deadline and self.state_dir is None:
                raise exc.ServiceError(f"{self.address} did not answer {method} {path}: {why}")
            if time.monotonic() > deadline:
                stall = self._stall() if not status else None
                if stall is not None:
                    raise exc.ServiceError(f"the site agent at {self.address} runs but did not answer {method} {path} in time: "
                                           f"{lockwait.stall_message(stall)}; the request may still be applied once it resumes")
                raise exc.ServiceError(f"the site agent at {self.address} did not answer {method} {path}: {why}; is it running? "
                                       f"(start it on the site's home host with 'balsam site start')")
            logger.info("retrying %s %s in %.2f s: %s", method, path, delay, why)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(5.0, delay * 2)
            self._reload()

    def _stall(self) -> Optional[Dict[str, Any]]:
        """Why the agent did not answer in time, if it can say: its writes stalled behind the site DB's writer lock
        (``/v1/health``, which writes nothing, answers while they wait)."""
        try:
            status, _headers, data = self._conn(HEALTH_TIMEOUT_S).exchange("GET", "/v1/health", b"", {})
            answer = _decode(data) if status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            self._drop()
            return None
        stall = answer.get("stalled") if isinstance(answer, dict) else None
        if not isinstance(stall, dict):
            return None
        # Shown to the user (the pid in a command to copy): only numbers and a known wording pass.
        pid, waited = stall.get("holder_pid"), stall.get("waiting_s")
        return {"waiting_s": int(waited) if isinstance(waited, (int, float)) and not isinstance(waited, bool) else "?",
                "holder_pid": pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
                "holder_stopped": stall.get("holder_stopped") is True}

    def _reload(self) -> None:
        """Re-read the agent's address (it may have restarted on another port), or try its next name."""
        if self.state_dir is None:
            return
        try:
            info = read_address(self.state_dir)
        except exc.ServiceError:
            return
        if info.get("port") != self._info.get("port") or info.get("pid") != self._info.get("pid"):
            logger.info("the site agent now listens at port %s", info.get("port"))
            self._info = info
            self._host_index = 0
        else:
            self._host_index += 1


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def new_key() -> str:
    """A fresh Idempotency-Key: the time in nanoseconds (16 hex digits), then 64 random bits. The server keeps each
    answer under its key in a B-tree; keys that grow with time are appended at its right edge (a group commit of
    many requests writes the same few pages), where random ones (a UUID) land on a different page each (one page
    written per request)."""
    global _last_key_ns
    with _key_lock:
        _last_key_ns = max(time.time_ns(), _last_key_ns + 1)  # increasing in this process even if the clock steps back
        ns = _last_key_ns
    return f"{ns:016x}{os.urandom(8).hex()}"


_key_lock = threading.Lock()
_last_key_ns = 0


def parse_url(url: str, cafile: str = "") -> Dict[str, Any]:
    """An address record for a server URL (``https://host[:port]``); tokens go over plain HTTP only to this host."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise exc.ValidationError(f"{url!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise exc.ValidationError(f"{url!r}: expected https://HOST[:PORT]")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        raise exc.ValidationError(f"{url}: tokens travel over plain HTTP only to this host; use https://")
    return {"scheme": parts.scheme, "host": parts.hostname, "port": port or (443 if parts.scheme == "https" else 80),
            "cafile": cafile}


def _non_finite(value: Any, where: str = "") -> Optional[str]:
    """The dotted path of the first inf or nan in a JSON-bound value."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return where or "value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        found = _non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


_NO_PARTS = "this server does not take bulk creations in parts"
"""How a server without staged parts (a relay of an earlier version) refuses one."""


def _stored_rows(table: str, have: Sequence[str], rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> Iterator[Row]:
    """Rows of stored values (an answer's ``rows``, in the order of ``have``) as tuples of ``columns`` (a column the
    answer lacks is None; bytes come as base64)."""
    import base64

    from balsam.http.schemas import BYTES_COLUMNS

    index = {c: i for i, c in enumerate(have)}
    binary = [n for n, c in enumerate(columns) if c in BYTES_COLUMNS and c in index]
    if list(columns) == list(have):
        pick: Any = tuple
    elif all(c in index for c in columns):
        pick = operator.itemgetter(*[index[c] for c in columns]) if len(columns) > 1 else (lambda r: (r[index[columns[0]]],))
    else:
        pick = lambda r: tuple(r[index[c]] if c in index else None for c in columns)  # noqa: E731
    for r in rows:
        row = pick(r)
        if binary and any([row[n] is not None for n in binary]):
            fixed = list(row)
            for n in binary:
                if fixed[n] is not None:
                    fixed[n] = base64.b64decode(fixed[n])
            row = tuple(fixed)
        yield row


def _json_array(texts: Sequence[str]) -> bytes:
    """A JSON array of JSON texts, as UTF-8 (a lone surrogate, which UTF-8 cannot carry, goes escaped as JSON allows:
    the server then refuses it by name)."""
    text = "[" + ",".join(texts) + "]"
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _ENCODE(json.loads(text)).encode()


def _created(answer: Any) -> Tuple[List[int], List[str], float]:
    """Ids, initial states and creation time from a create's answer: runs (``answer=ids``, a commit), or the jobs as
    created (an agent of an earlier version answers every create so)."""
    from balsam.http.schemas import epoch

    if isinstance(answer, list):
        return [int(j["id"]) for j in answer], [str(j["state"]) for j in answer], epoch(answer[0]["created"]) if answer else time.time()
    ids = [first + k for first, count in answer["ids"] for k in range(int(count))]
    states = [str(state) for state, count in answer["states"] for _ in range(int(count))]
    return ids, states, epoch(answer["created"])


def job_texts(rows: Sequence[Row], transfers: Dict[int, Dict[str, Any]]) -> List[str]:
    """New-job tuples (NEW_JOB_COLUMNS) as the JSON text of job-create objects. The tags and parameters columns are
    JSON text already (checked where the rows were made): they are spliced in, not parsed and written again; the
    fields at their default value are left out (the server fills them in), so most jobs are four fields, which the
    server also parses and checks several times faster than all sixteen."""
    out = []
    for i, r in enumerate(rows):
        text = f'{{"workdir":{_quote(r[0])},"app_id":{int(r[1])},"tags":{r[2]},"parameters":{r[3]}'
        if r[4:] != _DEFAULT_TAIL or i in transfers:
            rest = {k: v for k, v in _job_item(r).items() if k not in ("workdir", "app_id", "tags", "parameters")}
            if i in transfers:
                rest["transfers"] = transfers[i]
            text += "," + _ENCODE(rest)[1:-1]
        out.append(text + "}")
    return out


_ITEM_DEFAULTS = tuple(zip(NEW_JOB_COLUMNS[4:], ("{}", 1, 1, 1, 1, 0, 1, "{}", 0, "[]", 1, None)))
"""The new-job columns after the first four with the value a job-create object may leave out (the server fills it
in): most jobs send only workdir, app_id, tags and parameters, which the server parses and checks several times
faster than all sixteen."""
_DEFAULT_TAIL = tuple(v for _, v in _ITEM_DEFAULTS)
_JSON_ITEM_COLUMNS = frozenset({"data", "launch_params", "parent_ids"})
_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _job_item(row: Row) -> Dict[str, Any]:
    """A new-job tuple (NEW_JOB_COLUMNS) as a job-create object, without the fields at their default value."""
    item: Dict[str, Any] = {"workdir": row[0], "app_id": row[1], "tags": loads(row[2]), "parameters": loads(row[3])}
    for (name, default), value in zip(_ITEM_DEFAULTS, row[4:]):
        if value == default:  # the row is checked: a value equal to the default means it (1 and True, 0 and 0.0)
            continue
        if name in _JSON_ITEM_COLUMNS:
            value = loads(value)
        elif name == "pending_file_cleanup":
            value = bool(value)
        elif name == "parameters_pickled":  # Python objects JSON cannot hold: only the site's owner may send them
            import base64

            value = base64.b64encode(bytes(value)).decode()
        item[name] = value
    return item


def _decode(data: bytes) -> Any:
    """An answer's JSON (:func:`balsam.db.codec.loads_body`: orjson when installed, exact either way)."""
    if not data:
        return None
    try:
        return loads_body(data)
    except ValueError:
        return {"error": {"message": data[:200].decode(errors="replace")}}


def _exception(error: Dict[str, Any], message: str, status: int) -> exc.BalsamError:
    """The Balsam exception an error answer names (only classes of balsam.exceptions; nothing else is built)."""
    kind = str(error.get("kind") or "")
    cls = _KINDS.get(kind)
    if cls is None:
        cls = {404: exc.ObjectDoesNotExist, 401: exc.ServiceError, 413: exc.ValidationError, 422: exc.ValidationError,
               409: exc.BalsamError}.get(status, exc.ValidationError if status == 400 else exc.ServiceError)
    if cls is exc.CommandPending:
        command = error.get("command")
        return exc.CommandPending(message, command if isinstance(command, int) and not isinstance(command, bool) else None)
    try:
        return cls(message)  # type: ignore[no-any-return]
    except TypeError:
        return exc.BalsamError(message)


_RESOURCE = {"job": "jobs", "app": "apps", "batch_job": "batch-jobs", "event": "events", "session": "sessions",
             "transfer_item": "transfers"}


class HttpBackend(Backend):
    """A site reached through its agent's /v1 API (every host but the site's home host)."""

    kind = "http"

    def __init__(self, client: HttpClient) -> None:
        self.client = client
        self._rows_form = True
        """Whether listings ask for arrays of stored values (False once a server of an earlier version refused them)."""

    @classmethod
    def for_site(cls, root: Path, *, retry_s: float = 30.0) -> "HttpBackend":
        """The backend of the site at ``root``; transient failures are retried for ``retry_s`` (launchers ride
        through agent restarts with a longer one)."""
        return cls(HttpClient(Path(root) / ".balsam", retry_s=retry_s))

    def describe(self) -> str:
        return f"the site agent's API at {self.client.address}"

    # ------------------------------------------------------------------ reads
    def site_row(self, columns: Sequence[str]) -> Row:
        sites = self.client.request("GET", "/v1/sites")["results"]
        if not sites:
            raise exc.ObjectDoesNotExist("the agent serves no site")
        return wire_to_row("site", sites[0], columns)

    def _query(self, table: str, filters: Dict[str, Any], **extra: Any) -> Any:
        if table == "site":
            raise exc.ValidationError("sites are read with site_row()")
        body = {"filters": {k: encode_filter_value(v) for k, v in filters.items()}, **extra}
        return self.client.request("POST", f"/v1/{_RESOURCE[table]}/query", body, idempotency_key="")

    def select(self, table: str, filters: Dict[str, Any], *, columns: Sequence[str], order_by: Sequence[str] = (),
               limit: Optional[int] = None, offset: int = 0) -> List[Row]:
        return list(self.iterate(table, filters, columns=columns, order_by=order_by, limit=limit, offset=offset))

    def iterate(self, table: str, filters: Dict[str, Any], *, columns: Sequence[str], order_by: Sequence[str] = (),
                limit: Optional[int] = None, offset: int = 0, page_rows: int = PAGE_ROWS) -> Iterator[Row]:
        """Matching rows, fetched a page at a time with the server's keyset cursors (each page resumes after the last
        row given: a deep page costs the server what the first does, and rows added meanwhile never repeat one).

        While the caller takes one page's rows, the next page is on its way (one thread of this iteration asks for
        it): the agent reads and encodes it while this process converts the rows it has, instead of each waiting
        for the other (iterating 20,000 jobs from another host took 0.6 ms of waiting for each 1 ms of work)."""
        from concurrent.futures import Future, ThreadPoolExecutor

        wire_cols = [c for c in columns if c in COLUMNS[table]]

        def page(cursor: Optional[str], n: int) -> Any:
            extra: Dict[str, Any] = {"cursor": cursor} if cursor else {"offset": offset}
            if self._rows_form:
                extra["form"] = "rows"  # arrays of stored values: nothing to convert on either side
            return self._query(table, filters, columns=wire_cols, ordering=list(order_by), limit=n, page=True, **extra)

        def size(given: int) -> int:  # a short first page: the next one is on its way sooner
            rows = page_rows if given else min(page_rows, FIRST_PAGE_ROWS)
            return rows if limit is None else min(rows, limit - given)

        given = 0
        ahead: Optional["Future[Any]"] = None
        fetcher: Optional[ThreadPoolExecutor] = None
        try:
            while limit is None or given < limit:
                if ahead is not None:
                    answer, ahead = ahead.result(), None
                else:
                    try:
                        answer = page(None, size(given))
                    except exc.ValidationError as e:
                        if not self._rows_form or "form" not in str(e):
                            raise
                        self._rows_form = False  # an agent of an earlier version: JSON objects
                        continue
                rows = answer.get("rows", answer.get("results")) or []
                given += len(rows)
                cursor = answer.get("next_cursor")
                more = bool(cursor and rows) and (limit is None or given < limit)
                if more:
                    fetcher = fetcher or ThreadPoolExecutor(1, thread_name_prefix="balsam-next-page")
                    ahead = fetcher.submit(page, cursor, size(given))
                if "rows" in answer:
                    yield from _stored_rows(table, answer["columns"], rows, columns)
                else:
                    for r in rows:
                        yield wire_to_row(table, r, columns)
                if not more:
                    return
        finally:
            if fetcher is not None:  # a caller that stopped early: a page on its way is dropped when it comes
                fetcher.shutdown(wait=False, cancel_futures=True)

    def count(self, table: str, filters: Dict[str, Any]) -> int:
        return int(self._query(table, filters, aggregate="count")["count"])

    def count_by(self, table: str, filters: Dict[str, Any], column: str) -> Dict[Any, int]:
        return dict(self._query(table, filters, aggregate="group", group_by=column)["counts"])

    def ids(self, table: str, filters: Dict[str, Any]) -> List[int]:
        return [int(i) for i in self._query(table, filters, aggregate="ids")["ids"]]

    def last_event_message(self, job_id: int) -> str:
        return str(self.client.request("GET", f"/v1/jobs/{int(job_id)}/message")["message"])

    def data_version(self) -> Optional[int]:
        return None

    def watch(self) -> Optional[Any]:
        """The agent's change stream (/v1/ws), or None when the server refuses one (waiting then polls). An agent
        that is away (restarting) is waited for, as long as a request would wait for it."""
        from balsam.http.watch import ChangeStream, StreamClosed, StreamRefused

        client = self.client
        deadline = time.monotonic() + client.retry_s
        delay = 0.05
        while True:
            try:
                return ChangeStream(client._info, secret=client.secret, token=client.token, host_index=client._host_index).open()
            except StreamRefused as e:
                logger.info("waiting polls: %s", e)
                return None
            except StreamClosed as e:
                if time.monotonic() > deadline:
                    logger.info("waiting polls: %s", e)
                    return None
            time.sleep(delay * (0.5 + random.random()))
            delay = min(2.0, delay * 2)
            client._reload()

    def app_code(self, ids: Sequence[int]) -> List[Dict[str, Any]]:
        return list(self.client.request("POST", "/v1/apps/code", {"ids": [int(i) for i in ids]}, idempotency_key="")["apps"])

    def queued_command(self, command_id: int) -> Dict[str, Any]:
        answer = dict(self.client.request("GET", f"/v1/commands/{int(command_id)}"))
        if answer.get("state") == "rejected":
            raw = answer.get("result")
            result: Dict[str, Any] = raw if isinstance(raw, dict) else {}
            message = str(result.get("message") or f"the site refused command {command_id}")
            answer["error"] = _exception({"kind": result.get("kind")}, message, 400)
        return answer

    # ------------------------------------------------------------------ jobs
    def create_jobs(self, rows: Sequence[Row], transfers: Dict[int, Dict[str, Any]],
                    checked_app_versions: Optional[Dict[int, int]] = None) -> Tuple[List[int], List[str], float]:
        items = job_texts(rows, transfers)
        if len(items) > CREATE_CHUNK:
            try:
                return self._create_in_parts(items)
            except exc.ValidationError as e:
                if not str(e).startswith(_NO_PARTS):
                    raise
                # A relay of an earlier version: requests of their own (each one command for the site)
        ids: List[int] = []
        states: List[str] = []
        now = time.time()
        for start in range(0, len(items), CREATE_CHUNK):  # a relay: each request is a command of its own for the site
            try:
                chunk_ids, chunk_states, now = _created(self.client.request(
                    "POST", "/v1/jobs?answer=ids", body=_json_array(items[start:start + CREATE_CHUNK])))
            except exc.BalsamError as e:
                if ids:  # the earlier requests' jobs exist: say which, so nothing is created twice by a blind retry
                    e.args = (f"{len(ids)} of {len(items)} jobs were created (ids {ids[0]}..{ids[-1]}) before "
                              f"this error: {e}", *e.args[1:])
                raise
            ids.extend(chunk_ids)
            states.extend(chunk_states)
        return ids, states, now

    def _create_in_parts(self, items: List[str]) -> Tuple[List[int], List[str], float]:
        """Jobs too many for one request, sent in parts the agent checks and keeps in the site DB, then created by one
        request in one transaction: all of them or none, whether this process, the network or the agent fails in
        between. Each request is retried with its own idempotency key, so a retry applies once; parts that are never
        committed (this process was killed) expire at the site."""
        upload = new_key()
        parts = 0
        committing = False
        site_id = self.upload_site_id()
        site = "" if site_id is None else f',"site_id":{site_id}'  # a relay serves several sites: the upload names its own
        try:
            for start in range(0, len(items), CREATE_CHUNK):
                head = f'{{"upload":"{upload}","part":{parts},"offset":{start}{site},"jobs":'
                try:
                    self.client.request("POST", "/v1/uploads/jobs", body=head.encode() + _json_array(items[start:start + CREATE_CHUNK]) + b"}")
                except exc.CommandPending:
                    pass  # a relay whose site is offline keeps the part for it, to be applied before the commit
                parts += 1
            committing = True
            commit = f'{{"upload":"{upload}","parts":{parts},"jobs":{len(items)}{site}}}'
            answer = self.client.request("POST", "/v1/uploads/jobs/commit", body=commit.encode(),
                                         timeout=max(self.client.timeout_s, len(items) / 1000 + 30))
        except exc.CommandPending:
            raise  # the relay keeps the commit for the site: every job is made when it applies it, or none
        except exc.BalsamError as e:
            try:  # refused or unreachable: the parts are of no use (an unanswered commit made them all or none)
                query = "" if site_id is None else f"&site_id={site_id}"
                self.client.request("DELETE", f"/v1/uploads/jobs?upload={upload}{query}", retry_s=2.0)
            except exc.BalsamError:
                pass  # they expire at the site
            if committing and isinstance(e, exc.ServiceError):  # no answer: the jobs exist all together, or none does
                workdir = json.loads(items[0])["workdir"]
                e.args = (f"{e} (the {len(items)} jobs were created all together or not at all: look for one of them, "
                          f"e.g. workdir {workdir!r}, before sending them again)", *e.args[1:])
            raise
        return _created(answer)

    def upload_site_id(self) -> Optional[int]:
        """The site a bulk creation in parts names (a relay serves several sites); None for a site's own agent."""
        return None

    def update_jobs(self, updates: Sequence[Tuple[int, Dict[str, Any]]], parents: Sequence[Tuple[int, List[int]]] = (),
                    changes: Sequence[StateChange] = (), reads: Sequence[Read] = ()) -> None:
        items: Dict[int, Dict[str, Any]] = {}
        for job_id, fields in updates:
            item = items.setdefault(job_id, {"id": job_id})
            for k, v in fields.items():
                if k == "parameters" and isinstance(v, dict):
                    from balsam.db.codec import encode_parameters

                    text, pickled = encode_parameters(v)
                    if pickled is not None:
                        raise exc.ValidationError(f"job {job_id}: parameters JSON cannot hold (pickled Python objects) can only "
                                                  "be given on the site's home host; pass plain JSON values from here")
                    v = json.loads(text)
                elif k in ("tags", "parameters", "data", "launch_params") and isinstance(v, str):
                    v = json.loads(v)
                elif k in ("serialized_return_value", "serialized_exception") and v is not None:
                    import base64

                    v = base64.b64encode(bytes(v)).decode()
                item[k] = v
        for job_id, new in parents:
            current = self.select("job", {"id": [job_id]}, columns=("parent_ids",))
            old = json.loads(current[0][0]) if current else []
            items.setdefault(job_id, {"id": job_id})["parent_ids"] = list(old) + [p for p in new if p not in old]
        for ch in changes:
            item = items.setdefault(ch.job_id, {"id": ch.job_id})
            item.update(state=ch.state, state_timestamp=ch.timestamp, state_data=ch.data, session_id=ch.session_id)
        for r in reads:
            if r.job_id in items:  # what the save was made on: the server merges it with what moved since, or refuses it
                items[r.job_id]["read"] = read_to_wire(r)
        if items:
            self.client.request("PATCH", "/v1/jobs", list(items.values()))

    def delete_jobs(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        return int(self.client.request("POST", "/v1/jobs/delete", {"ids": [int(i) for i in ids]})["deleted"])  # one transaction

    def apply_changes(self, changes: Sequence[StateChange], session_id: Optional[int] = None) -> Rejected:
        import base64

        wire = []
        for c in changes:
            fields = None
            if c.fields:
                fields = {k: (base64.b64encode(bytes(v)).decode() if isinstance(v, (bytes, bytearray, memoryview)) else v)
                          for k, v in c.fields.items()}
            wire.append({"job_id": c.job_id, "state": c.state, "timestamp": c.timestamp, "data": c.data or None, "fields": fields,
                         "session_id": c.session_id})
        answer = self.client.request("POST", "/v1/status-batches", {"session_id": session_id, "changes": wire})
        return [(int(i), str(why)) for i, why in answer.get("rejected", [])]

    # ------------------------------------------------------------------ other rows
    def update_rows(self, table: str, updates: Sequence[Tuple[int, Dict[str, Any]]]) -> None:
        from balsam.http.schemas import JSON_COLUMNS

        def wire(fields: Dict[str, Any]) -> Dict[str, Any]:
            return {k: (json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v) for k, v in fields.items()}

        if table == "transfer_item":
            self.client.request("PATCH", "/v1/transfers", [dict(wire(f), id=i) for i, f in updates])
            return
        path = {"site": "sites", "app": "apps", "batch_job": "batch-jobs"}.get(table)
        if path is None:
            raise exc.ValidationError(f"{table} rows cannot be updated")
        if table == "site":
            for row_id, fields in updates:
                self.client.request("PATCH", f"/v1/{path}/{int(row_id)}", wire(fields))
            return
        if updates:  # all in one request: one transaction at the site
            self.client.request("PATCH", f"/v1/{path}", [dict(wire(f), id=int(i)) for i, f in updates])

    def create_batch_job(self, fields: Dict[str, Any]) -> int:
        return int(self.client.request("POST", "/v1/batch-jobs", fields)["id"])

    # ------------------------------------------------------------------ DAG templates
    def dag_save(self, name: str, description: str, spec: Dict[str, Any]) -> Dict[str, Any]:
        return dict(self.client.request("PUT", "/v1/dags", {"name": name, "description": description, "spec": spec}))

    def dag_list(self) -> List[Dict[str, Any]]:
        return list(self.client.request("GET", "/v1/dags")["results"])

    def dag_delete(self, name: str) -> int:
        from urllib.parse import quote

        return int(self.client.request("DELETE", f"/v1/dags?name={quote(name, safe='')}")["deleted"])

    def dag_instantiate(self, name: str, records: Sequence[Dict[str, Any]]) -> List[int]:
        return [int(i) for i in self.client.request("POST", "/v1/dags/instantiate", {"name": name, "records": list(records)})["instances"]]

    def dag_instances(self, dag_id: int, *, ids: Optional[Sequence[int]] = None, state: Optional[Sequence[str]] = None,
                      limit: Optional[int] = None, offset: int = 0) -> List[Dict[str, Any]]:
        from urllib.parse import urlencode

        query: List[Tuple[str, Any]] = [("dag_id", int(dag_id)), ("offset", int(offset))]
        query += [("id", int(i)) for i in ids or ()] + [("state", str(s)) for s in state or ()]
        if limit is not None:
            query.append(("limit", int(limit)))
        return list(self.client.request("GET", f"/v1/dag-instances?{urlencode(query)}")["results"])

    def dag_counts(self, instance_ids: Sequence[int]) -> Dict[int, Dict[str, int]]:
        out = self.client.request("POST", "/v1/dag-instances/counts", {"ids": [int(i) for i in instance_ids]}, idempotency_key="")
        return {int(k): dict(v) for k, v in out["counts"].items()}

    def dag_retry(self, instance_id: int) -> int:
        return int(self.client.request("POST", f"/v1/dag-instances/{int(instance_id)}/retry")["reset"])

    def delete_rows(self, table: str, ids: Sequence[int]) -> int:
        path = {"app": "apps", "batch_job": "batch-jobs"}.get(table)
        if path is None:
            raise exc.ValidationError(f"{table} rows cannot be deleted")
        if not ids:
            return 0
        return int(self.client.request("POST", f"/v1/{path}/delete", {"ids": [int(i) for i in ids]})["deleted"])  # one transaction

    def sync_app(self, fields: Dict[str, Any], rename_from: Optional[str] = None) -> int:
        body = dict(fields)
        for k in ("parameters", "transfers"):
            if isinstance(body.get(k), str):
                body[k] = json.loads(body[k])
        body["var_keyword"] = bool(body.get("var_keyword"))
        if rename_from:
            body["rename_from"] = rename_from
        return int(self.client.request("POST", "/v1/apps", body)["id"])

    # ------------------------------------------------------------------ sessions
    def create_session(self, *, host: str, pid: int, batch_job_id: Optional[int], label: str) -> int:
        answer = self.client.request("POST", "/v1/sessions", {"batch_job_id": batch_job_id, "label": label, "host": host, "pid": pid})
        return int(answer["id"])

    def tick(self, session_id: int) -> None:
        self.client.request("PUT", f"/v1/sessions/{int(session_id)}")

    def acquire(self, session_id: int, max_num_jobs: int, wait_s: float = 0.0, **constraints: Any) -> List[Dict[str, Any]]:
        body = {"max_num_jobs": max_num_jobs, "wait_s": wait_s, "constraints": constraints}
        answer = self.client.request("POST", f"/v1/sessions/{int(session_id)}/acquire", body, timeout=self.client.timeout_s + wait_s)
        jobs = list(answer["jobs"])
        for job in jobs:  # the one bytes column of an acquired job (the server sends bytes as {"__b64__": ...})
            pickled = job.get("parameters_pickled")
            if isinstance(pickled, dict):
                import base64

                job["parameters_pickled"] = base64.b64decode(str(pickled.get("__b64__", "")))
        return jobs

    def release(self, session_id: int) -> int:
        return int(self.client.request("DELETE", f"/v1/sessions/{int(session_id)}")["timed_out"])

    # ------------------------------------------------------------------ maintenance (run by the agent)
    def db_check(self, fix: bool = False) -> Dict[str, Any]:
        return dict(self.client.request("POST", "/v1/db/check", {"fix": bool(fix)}, idempotency_key="", timeout=3600))

    def db_backup(self, dest: str, force: bool = False) -> Dict[str, Any]:
        return dict(self.client.request("POST", "/v1/db/backup", {"dest": dest, "force": bool(force)}, idempotency_key="",
                                        timeout=3600))

    def db_vacuum(self) -> Dict[str, Any]:
        return dict(self.client.request("POST", "/v1/db/vacuum", idempotency_key="", timeout=3600))

    def close(self) -> None:
        self.client.close()
