"""The agent's sync service (only on a site linked to a relay: ``balsam site link URL``).

Two loops share one push routine:

- **Push** (every cycle: about once a second, and at once when jobs finish): the outbox's logged changes
  (coalesced per row, current content) and the events after the event cursor go to ``POST /v1/sync/push`` in
  batches. Each batch's ``submission_id`` is fixed by what it covers (outbox sequence range and event id
  range), so a batch resent after a lost answer, a relay restart or an agent crash is answered from the relay's
  stored answer and applied once. Only after the relay acknowledges a batch are its outbox entries trimmed and the event
  cursor advanced (in the site DB), so a site offline for days catches up from where it stopped.
- **Commands** (a thread, long-polling ``GET /v1/sync/commands``): each command is applied through the
  site's LocalBackend (the same validating writers every door uses) in one transaction with the command
  cursor and its answer, so a crash never applies a command twice; the resulting rows are pushed, then the
  answers are sent (``applied`` with the result, or ``rejected`` with the error class and message).
- **A DB put back from a backup** hands out again ids it had pushed: the relay says so in its answer to a push, and
  the service moves the site's id counters past every id the relay has seen and gives the rows it refused new ids
  (:mod:`balsam.db.reissue`) before the push goes on. A cycle pushes before it takes commands, so no command makes
  jobs under such ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from balsam import exceptions as exc
from balsam.db import launch_flags, outbox, reissue
from balsam.db.backend import LocalBackend
from balsam.db.doorbell import FINISHED, Doorbell
from balsam.db.merge import Read, read_from_wire
from balsam.db.meta import write_meta
from balsam.db.site_row import whole_site_row
from balsam.services.base import Service, ServiceThread
from balsam.site import result_keys

logger = logging.getLogger(__name__)

BATCH = 5000
HEARTBEAT_S = 15.0
POLL_WAIT_S = 20.0
EVENT_CURSOR = "relay_event_cursor"
COMMAND_CURSOR = "relay_command_cursor"
ANSWERS = "relay_answers"
FORBIDDEN_FIELDS = frozenset({"serialized_return_value", "serialized_exception", "session_id", "serialized_class", "source_code"})
"""Fields a relay command may never write: code and results come only from the site's owner and launchers."""


def apply_command(backend: LocalBackend, cmd: Dict[str, Any]) -> Any:
    """Apply one command through the site's own writers; its result (JSON). Raises the writer's error."""
    from balsam.sync import decode_change, decode_fields

    kind, body = cmd.get("kind"), cmd.get("body")
    if not isinstance(body, dict):
        raise exc.ValidationError("malformed command")
    if kind == "create_jobs":
        rows = [_validated_row(r) for r in body.get("rows") or []]
        transfers = {int(k): v for k, v in (body.get("transfers") or {}).items()}
        ids, states, created = backend.create_jobs(rows, transfers)
        return {"ids": ids, "states": states, "created": created}
    if kind == "stage_jobs":  # one part of a bulk creation through the relay: kept here until its commit
        rows = [_validated_row(r) for r in body.get("rows") or []]
        transfers = {int(k): v for k, v in (body.get("transfers") or {}).items()}
        return backend.stage_jobs(str(body.get("upload")), _int(body.get("part")), rows, transfers)
    if kind == "commit_jobs":  # every part's jobs in one transaction; sent again (a user's retry), answered again
        ids, states, created = backend.create_staged_jobs(str(body.get("upload")), _int(body.get("parts")), again=True)
        return {"ids": ids, "states": states, "created": created}
    if kind == "drop_upload":
        return backend.drop_upload(str(body.get("upload")))
    if kind == "update_jobs":
        updates = [(int(i), _checked(decode_fields(f))) for i, f in body.get("updates") or []]
        parents = [(int(i), [int(p) for p in ps]) for i, ps in body.get("parents") or []]
        changes = [decode_change(c) for c in body.get("changes") or []]
        for ch in changes:
            _checked(ch.fields or {})
        reads = [_read_of(item) for item in body.get("reads") or []]
        _check_versions(backend, body.get("versions") or [])
        backend.update_jobs(updates, parents, changes, reads)
        return None
    if kind == "delete_jobs":
        return backend.delete_jobs([int(i) for i in body.get("ids") or []])
    if kind == "apply_changes":
        changes = [decode_change(c) for c in body.get("changes") or []]
        for ch in changes:
            _checked(ch.fields or {})
        return [[i, why] for i, why in backend.apply_changes(changes)]
    if kind == "update_rows":
        table = str(body.get("table"))
        if table not in ("app", "batch_job", "transfer_item"):
            raise exc.ValidationError(f"{table} rows cannot be changed through the relay")
        backend.update_rows(table, [(int(i), _checked(decode_fields(f))) for i, f in body.get("updates") or []])
        return None
    if kind == "create_batch_job":
        return backend.create_batch_job(dict(body.get("fields") or {}))
    if kind == "delete_rows":
        table = str(body.get("table"))
        if table not in ("app", "batch_job"):
            raise exc.ValidationError(f"{table} rows cannot be deleted through the relay")
        return backend.delete_rows(table, [int(i) for i in body.get("ids") or []])
    if kind == "dag_save":
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise exc.ValidationError("a DAG command needs its spec (an object)")
        return backend.dag_save(str(body.get("name")), str(body.get("description") or ""), spec)
    if kind == "dag_delete":
        return backend.dag_delete(str(body.get("name")))
    if kind == "dag_instantiate":
        records = body.get("records")
        if not isinstance(records, list):
            raise exc.ValidationError("a DAG instantiation needs its records (a list)")
        return backend.dag_instantiate(str(body.get("name")), records)
    if kind == "dag_retry":
        return backend.dag_retry(int(body.get("instance_id") or 0))
    raise exc.ValidationError(f"unknown command {kind!r}")


_PLAIN_TAIL = ("{}", 1, 1, 1, 1, 0, 1, "{}", 0, "[]", 1, None)
"""A new-job row's columns after the first four when all are at their default (data, resources, launch_params,
wall_time_min, parent_ids, pending_file_cleanup, parameters_pickled)."""


def _validated_row(raw: Any) -> Tuple[Any, ...]:
    """A new-job tuple from the relay, rebuilt through the store's one validating writer (new_job_row): the relay's
    user may write plain JSON parameters, never pickled values."""
    from balsam.db import jobs as job_db
    from balsam.db.codec import loads

    if not isinstance(raw, (list, tuple)) or len(raw) != len(job_db.NEW_JOB_COLUMNS):
        raise exc.ValidationError("malformed job row in a relay command")
    d = dict(zip(job_db.NEW_JOB_COLUMNS, raw))
    if d.get("parameters_pickled") is not None:
        raise exc.ValidationError("parameters JSON cannot hold (pickled Python objects) cannot come through the relay")
    tail = tuple(raw[4:])
    if (tail == _PLAIN_TAIL and all(type(a) is type(b) or (a == 0 and type(a) is float) for a, b in zip(tail, _PLAIN_TAIL))
            and isinstance(raw[2], str) and isinstance(raw[3], str)):
        try:  # most jobs: workdir, app, tags and parameters, the rest at its default: the quick check of the same rules
            plain = job_db.plain_job_row({"workdir": raw[0], "app_id": raw[1], "tags": loads(raw[2]), "parameters": loads(raw[3])})
        except ValueError:
            plain = None
        if plain is not None:
            return plain

    def _json(name: str, default: Any) -> Any:
        value = d.get(name)
        try:
            return loads(value) if isinstance(value, str) else (default if value is None else value)
        except ValueError:
            raise exc.ValidationError(f"job row: {name} is not valid JSON") from None

    resources = {k: d[k] for k in ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank",
                                   "node_packing_count", "wall_time_min")}
    if not isinstance(d["app_id"], int) or isinstance(d["app_id"], bool):
        raise exc.ValidationError(f"job row: app_id must be an integer, got {d['app_id']!r}")
    return job_db.new_job_row(d["workdir"], d["app_id"], tags=_json("tags", {}), parameters=_json("parameters", {}),
                              data=_json("data", {}), launch_params=_json("launch_params", {}),
                              parent_ids=_json("parent_ids", []), pending_file_cleanup=bool(d["pending_file_cleanup"]), **resources)


def _read_of(item: Any) -> Read:
    """One read of an update command: ``[job_id, read]``, the read in the HTTP API's shape (balsam.db.merge)."""
    if not isinstance(item, list) or not item or type(item[0]) is not int:
        raise exc.ValidationError("a read is [job_id, {version, state, fields}]")
    return read_from_wire(item[0], item[1] if len(item) == 2 else None)


def _int(value: Any) -> int:
    if type(value) is not int:
        raise exc.ValidationError(f"a command's part number is an integer, got {value!r}")
    return value


def _check_versions(backend: LocalBackend, versions: List[Any]) -> None:
    """Optimistic concurrency: each job must still be at the version the relay's copy had (else StaleVersion,
    saying what the row is now; nothing is written)."""
    if not versions:
        return
    expected = {int(i): int(v) for i, v in versions}
    for job_id, version, state in backend.select("job", {"id": sorted(expected)}, columns=("id", "version", "state")):
        if int(version) != expected[int(job_id)]:
            raise exc.StaleVersion(f"job {job_id} changed at its site since the relay's copy (now version {version}, state {state}; "
                                   f"the edit was made on version {expected[int(job_id)]}): reload it and try again")


def _checked(fields: Dict[str, Any]) -> Dict[str, Any]:
    bad = FORBIDDEN_FIELDS & set(fields)
    if bad:
        raise exc.ValidationError(f"{sorted(bad)[0]} cannot be written through the relay")
    return fields


class SyncService(Service):
    """Keeps a linked site and its relay in step (see the module docstring)."""

    name = "sync"
    wake_gap_s = 0.2
    """Finished jobs ring the sync's doorbell: pushed at once, but at most one push per this long (a flood of
    finishing jobs goes in batches)."""

    def __init__(self, site: Any, link: Dict[str, Any], period_s: float = 1.0) -> None:
        super().__init__(period_s)
        from balsam.sync import site_client

        self.site = site
        self.link = link
        self.client = site_client(link, retry_s=2.0, timeout_s=POLL_WAIT_S + 30)
        self.backend = LocalBackend(site.store)
        self._push_lock = threading.Lock()
        self._stop = threading.Event()
        self._puller: Optional[threading.Thread] = None
        self._last_push = 0.0
        self._version: Optional[int] = None
        self._completed = False
        self._result_key: Optional[bytes] = None
        self._flags_sent: Optional[List[str]] = None
        self._refused: Any = None
        self.pushed = 0
        """Items the relay acknowledged since start."""

    def doorbell(self) -> Optional[Doorbell]:
        """Rung when jobs reach a final state, so the relay (and a laptop watching through it) sees them without
        waiting for the period."""
        try:
            return Doorbell(self.site.store.db_path.parent, FINISHED).open()
        except OSError as e:
            logger.info("sync: no doorbell (%s): pushing every %.1f s", e, self.period_s)
            return None

    # ------------------------------------------------------------------ push
    def run_cycle(self) -> None:
        if not self._completed:
            # A site linked by an older Balsam logs here what it did not (DAG templates, instances); a site DB put back
            # from a backup taken before the site was linked starts logging (the relay hears of every row).
            with self.site.store.write() as conn:
                outbox.enable(conn)
            self._completed = True
        # Pushed before any command is taken: a site DB put back from a backup moves its id counters past the ids the
        # relay has seen (and renumbers what it made since) before a command makes jobs and answers with their ids.
        self.push()
        if self._puller is None or not self._puller.is_alive():
            self._puller = threading.Thread(target=self._pull_loop, name="balsam-sync-commands", daemon=True)
            self._puller.start()
        self.parents()

    # ------------------------------------------------------------------ parents at other sites
    def parents(self) -> int:
        """Ask the relay for the states of the jobs of other sites that jobs here wait on (balsam.db.foreign), and
        apply what they set off (children released or failed); how many jobs moved. No request while none waits."""
        from balsam.db import foreign

        store = self.site.store
        with store.read() as conn:
            ids = foreign.waiting(conn)
            since = foreign.asked_since(conn, ids) if ids else {}
        if not ids:
            return 0
        answer = self.client.request("POST", "/v1/sync/parents", {"ids": ids, "since": {str(i): t for i, t in since.items()}},
                                     retry_s=2.0)
        raw = answer.get("states") if isinstance(answer, dict) else None
        states = {int(k): str(v) for k, v in (raw or {}).items() if str(k).isdigit() and isinstance(v, str)}
        raw_ended = answer.get("ended") if isinstance(answer, dict) else None  # absent from a relay before it
        ended = {int(k): (str(v.get("state")), str(v.get("reason") or "")) for k, v in (raw_ended or {}).items()
                 if str(k).isdigit() and isinstance(v, dict) and v.get("state") in foreign.GONE_STATES}
        asked = set(ids)
        now = answer.get("now") if isinstance(answer, dict) else None  # the relay's clock (absent from one before it)
        with store.write() as conn:
            if isinstance(now, (int, float)) and not isinstance(now, bool):
                foreign.note_unknown(conn, sorted(asked - states.keys() - ended.keys()), float(now))
            moved = foreign.report(conn, {i: s for i, s in states.items() if i in asked},
                                   {i: e for i, e in ended.items() if i in asked})
        if moved:
            logger.info("sync: %d job(s) moved on their parents at other sites", len(moved))
            self.push(force=True)
        return len(moved)

    def push(self, force: bool = False) -> int:
        """Push everything logged before this call, in batches (a heartbeat with the site's counts when nothing
        changed for a while); how many items the relay took. What is logged meanwhile (a site busy creating and
        processing jobs logs all the time) waits for the next call: a push is bounded, and a command's answer,
        which waits for the push of its rows, is not held up by work logged after it."""
        with self._push_lock:
            store = self.site.store
            version = store.data_version()
            due = time.time() - self._last_push > HEARTBEAT_S
            if not due and version != self._version:
                with store.read() as conn:  # settings.yml let jobs pass other flags: the relay hears of it now
                    due = sorted(launch_flags.site_extra(conn)) != self._flags_sent
            if not force and not due and version == self._version:
                return 0  # nothing committed since the last push
            with store.read() as conn:
                seq_goal, event_goal = outbox.high_water(conn)
            total = 0
            relogged = False
            while True:
                payload, last_seq, ev_to, n = self._batch()
                if n == 0 and (total or not (due or force)):
                    break
                answer = self.client.request("POST", "/v1/sync/push", payload, retry_s=2.0)
                if isinstance(answer, dict) and (answer.get("issued") or answer.get("reissued")):
                    self._reissue(answer)
                    if answer.get("reissued"):
                        with store.read() as conn:  # the rows under their new ids go in this push too
                            seq_goal, event_goal = outbox.high_water(conn)
                        continue
                if isinstance(answer, dict) and answer.get("stale") and not relogged:
                    # The relay took pushes past this outbox (this site DB is a backup put back): the relay kept the
                    # newer rows, so every row is logged again after them and pushed as it is here now.
                    with store.write() as conn:
                        n = outbox.relog_after(conn, int(answer.get("pushed_seq") or 0))
                        seq_goal, event_goal = outbox.high_water(conn)
                    logger.warning("sync: the relay has pushes from this site newer than its DB (restored from a backup?): "
                                   "pushing all %d rows again", n)
                    relogged = True
                    continue
                with store.write() as conn:
                    outbox.trim(conn, last_seq)
                    write_meta(conn, EVENT_CURSOR, str(ev_to))
                self._last_push = time.time()
                total += n
                self.pushed += n
                if n == 0 or (last_seq >= seq_goal and ev_to >= event_goal):
                    break
            self._version = version
            return total

    def _batch(self) -> Tuple[Dict[str, Any], int, int, int]:
        """The next push: (payload, last outbox seq covered, last event id covered, item count)."""
        store = self.site.store
        with store.read() as conn:
            first = outbox.first_seq(conn)
            last_seq, items = outbox.pending(conn, 0, BATCH, self._signer())
            logged = outbox.logged_times(conn, first, last_seq)
            ev_from = int(store.get_meta(EVENT_CURSOR) or 0)
            ev_to, events = outbox.events_after(conn, ev_from, BATCH)
            backlog: Dict[str, Any] = dict(outbox.state_counts(conn))
            self.backlog = outbox.backlog(conn)
            backlog["_outbox"] = self.backlog
            row = whole_site_row(conn)
            issued = outbox.jobs_issued(conn, last_seq)
            flags = sorted(launch_flags.site_extra(conn))
            sequences = reissue.sequences(conn)
        site_id = int(self.link["site_id"])
        # Fixed by what it covers, and when that was logged: a resent batch is recognised by the relay and applied
        # once, and the same ranges logged again by a site DB put back from a backup are not mistaken for it.
        covers = f"o{first or 0}-{last_seq}e{ev_from}-{ev_to}t{logged}" + (f"-{events[-1]['row']['timestamp']}" if events else "")
        submission = f"s{site_id}-{hashlib.sha256(covers.encode()).hexdigest()[:40]}" if items or events else uuid.uuid4().hex
        site: Dict[str, Any] = {"row": {k: v for k, v in row.items() if isinstance(v, (str, int, float)) or v is None},
                                "backlog": backlog}
        if issued is not None:  # every job made so far is in this push: the relay learns which ids are no more
            site["jobs_issued"] = issued
        site["allowed_launch_params"] = flags  # what the relay checks new jobs' launch_params against, as this site does
        site["sequences"] = sequences  # the relay says when ids it has seen from this site are past them (balsam.db.reissue)
        self._flags_sent = flags
        payload = {"submission_id": submission, "last_seq": last_seq, "items": items + events, "site": site}
        return payload, last_seq, ev_to, len(items) + len(events)

    def _reissue(self, answer: Dict[str, Any]) -> None:
        """The relay has seen ids of this site past its id counters (``issued``): this site DB was put back from a
        backup. Move the counters past them, and give the rows the relay refused (``reissued``: made since under ids it
        knew for other rows) new ids (balsam.db.reissue)."""
        raw_issued, raw_refused = answer.get("issued"), answer.get("reissued")
        issued: Dict[str, Any] = raw_issued if isinstance(raw_issued, dict) else {}
        refused: Dict[str, Any] = raw_refused if isinstance(raw_refused, dict) else {}
        with self.site.store.write() as conn:
            fenced = reissue.fence(conn, issued)
            moved = reissue.renumber(conn, refused)
        if fenced:
            logger.warning("sync: the relay has seen ids from this site past its DB's id counters (the DB was put back from "
                           "a backup?): new ids start after them (%s)", ", ".join(f"{k} {v}" for k, v in fenced.items()))
        if moved:
            logger.warning("sync: rows made since this DB was put back took ids the relay knew for other rows; they have "
                           "new ids: %s", reissue.describe(moved))
        elif refused:
            if self._refused == refused:
                raise exc.ServiceError(f"the relay refuses rows of this site under ids it has seen before, which this site "
                                       f"does not hold: {refused}")
            self._refused = refused

    def _signer(self) -> outbox.Signer:
        """Signs each pushed result with the site's result key (made on first use), so a computer reading it
        through the relay loads only what this site pushed (balsam.site.result_keys)."""
        if self._result_key is None:
            self._result_key = result_keys.site_key(self.site.layout)
        key = self._result_key
        return lambda job_id, column, data: result_keys.sign(key, job_id, column, data)

    # ------------------------------------------------------------------ commands
    def _pull_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.pull_once(wait_s=POLL_WAIT_S)
            except exc.BalsamError as e:
                logger.info("sync: commands not pulled (%s); retrying", e)
                self._stop.wait(self.period_s)
            except Exception:  # never let the thread die silently
                logger.exception("sync: pulling commands failed")
                self._stop.wait(self.period_s)

    def pull_once(self, wait_s: float = 0.0) -> int:
        """Send any unsent answers, then take, apply and answer the next commands; how many were applied."""
        store = self.site.store
        self._send_answers()
        after = int(store.get_meta(COMMAND_CURSOR) or 0)
        answer = self.client.request("GET", f"/v1/sync/commands?after={after}&wait={wait_s:g}", timeout=wait_s + 30, retry_s=2.0)
        commands: List[Dict[str, Any]] = answer.get("commands") or []
        for cmd in commands:
            with store.write() as conn:
                try:
                    with store.write():  # a savepoint: a refused command changes nothing
                        result = {"id": cmd["id"], "state": "applied", "result": apply_command(self.backend, cmd)}
                except exc.BalsamError as e:
                    result = {"id": cmd["id"], "state": "rejected", "result": {"kind": type(e).__name__,
                                                                               "message": str(e).splitlines()[0] if str(e) else ""}}
                except (TypeError, ValueError, KeyError) as e:
                    result = {"id": cmd["id"], "state": "rejected", "result": {"kind": "ValidationError", "message": f"malformed: {e}"}}
                pending = json.loads(store.get_meta(ANSWERS) or "[]")
                pending.append(result)
                write_meta(conn, ANSWERS, json.dumps(pending))
                write_meta(conn, COMMAND_CURSOR, str(int(cmd["id"])))
        if commands:
            self.push(force=True)  # the rows the commands made reach the relay before their answers
            self._send_answers()
        return len(commands)

    def _send_answers(self) -> None:
        store = self.site.store
        pending = json.loads(store.get_meta(ANSWERS) or "[]")
        if not pending:
            return
        self.client.request("POST", "/v1/sync/answers", {"results": pending}, retry_s=2.0)
        with store.write() as conn:
            current = json.loads(store.get_meta(ANSWERS) or "[]")
            sent = {int(r["id"]) for r in pending}
            write_meta(conn, ANSWERS, json.dumps([r for r in current if int(r["id"]) not in sent]))

    def cleanup(self) -> None:
        self._stop.set()
        try:
            self.push(force=True)
        except exc.BalsamError:
            pass
        self.client.close()


class LinkFollower:
    """Runs the sync service while the site is linked to a relay, as the running agent finds it: ``balsam site
    link`` starts syncing within a check period, ``balsam site unlink`` stops it, and a link to another relay
    (or a new token) restarts it with the new link. No agent restart is needed."""

    def __init__(self, site: Any, period_s: float = 1.0) -> None:
        self.site = site
        self.period_s = period_s
        self.link: Optional[Dict[str, Any]] = None
        self.thread: Optional[ServiceThread] = None
        self._stop: Optional[threading.Event] = None
        self._bad = ""

    def check(self) -> None:
        """Start, stop or restart the sync service to match the site's link file now."""
        from balsam.sync import site_link

        try:
            link = site_link(self.site.path)
        except exc.ConfigError as e:  # an unreadable link file: keep what runs, and say why once
            if str(e) != self._bad:
                self._bad = str(e)
                logger.error("sync: %s", e)
            return
        self._bad = ""
        if link == self.link and (self.thread is None or self.thread.is_alive()):
            return
        self.stop()
        if link is not None:
            try:
                service = SyncService(self.site, link, self.period_s)
            except exc.BalsamError as e:  # a link record this agent cannot use (a bad URL): said once, retried on change
                logger.error("sync: cannot sync with %s: %s", link.get("url"), e)
                self.link = link
                return
            logger.info("sync: the site is linked to %s (site id %s): syncing", link.get("url"), link.get("site_id"))
            self._stop = threading.Event()
            self.thread = ServiceThread(service, self._stop)
            self.thread.start()
        self.link = link

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the sync service (it pushes what it can first)."""
        if self.thread is not None and self._stop is not None:
            logger.info("sync: stopping (the site was unlinked, re-linked or the agent stops)")
            self._stop.set()
            self.thread.join(timeout=timeout_s)
        self.thread = None
        self._stop = None
        self.link = None

    def threads(self) -> List[ServiceThread]:
        """The running sync service's thread, for the agent's status ([] when the site is not linked)."""
        return [] if self.thread is None else [self.thread]
