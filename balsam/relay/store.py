"""RelayStore: the relay's database (SQLAlchemy 2 Core over SQLite or PostgreSQL).

Users and their tokens; the sites each user linked; the mirror of every site's rows, fed by the sites' pushes
(idempotent: a push is keyed by its ``submission_id`` and a retry is answered from the stored answer); and the
commands users make at the relay for a site (new jobs, BatchJobs, state changes), which the site pulls from a
cursor, applies or refuses, and answers. Execution state belongs to the site: the relay never writes a mirror
row except from a site's push.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from balsam.db import launch_flags
from balsam.db.fields import check_text
from balsam.exceptions import BalsamError, ObjectDoesNotExist, ValidationError
from balsam.relay import auth
from balsam.relay import schema as t

DEFAULT_TOKEN_TTL_S = 30 * 86400.0
SITE_TOKEN_TTL_S = 365 * 86400.0
MAX_LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 60.0
PUSH_MEMORY_S = 7 * 86400.0
"""How long a push's answer is kept for replays."""


class RelayAuthError(BalsamError):
    """Wrong credentials, or a token that is unknown, expired or revoked (HTTP 401)."""

    exit_code = 3


class RateLimited(BalsamError):
    """Too many failed logins for a user name in a short time (HTTP 429)."""

    exit_code = 3


class Conflict(BalsamError):
    """A write made on a stale version, or an id another site already holds (HTTP 409)."""

    def __init__(self, message: str, current: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True)
class Caller:
    """Who a token belongs to: a user (kind "user") or one site's agent (kind "site", ``site_id`` set)."""

    user_id: int
    user: str
    kind: str
    site_id: Optional[int] = None
    token_id: Optional[int] = None


def _private_file(url: str) -> None:
    """Create a new SQLite database file readable only by its owner (it holds users' password and token hashes; SQLite
    gives its -wal and -shm files the database file's mode). An existing file is left as its owner made it."""
    path = sa.engine.make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # it exists (or its folder does not: SQLite says so when it opens it)


def engine_for(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``); SQLite runs in WAL mode."""
    if url.startswith("sqlite"):
        _private_file(url)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql"):
        return sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    raise ValidationError(f"relay database URL {url!r}: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")


class RelayStore:
    """The relay's database. Constructing it connects to nothing; :meth:`migrate` creates or upgrades the schema."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Optional[Engine] = None
        self._lock = threading.Lock()
        self._writer = threading.RLock()
        self._signal = threading.Condition()
        self._generation = 0

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = engine_for(self.url)
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the current version (Alembic migrations shipped in ``balsam/relay/migrations``)."""
        from balsam.relay.migrate import upgrade

        upgrade(self)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def begin(self) -> Any:
        """A transaction (context manager yielding a Connection). On SQLite, one at a time in this process: SQLite
        has one writer anyway, and a transaction that reads and then writes while another writes fails with
        "database is locked" (or sleeps in SQLite's busy handler) instead of waiting its turn."""
        if self.dialect != "sqlite":
            return self.engine.begin()
        return self._serialized()

    @contextmanager
    def _serialized(self) -> Iterator[Any]:
        with self._writer:
            with self.engine.begin() as c:
                yield c

    def connect(self) -> Any:
        return self.engine.connect()

    # ------------------------------------------------------------------ waking waiters in this process
    def generation(self) -> int:
        """A counter of the commands added and answered through this store object (this relay process): read it
        before looking, then :meth:`wait_change` sleeps only until something changed since."""
        return self._generation

    def wait_change(self, seen: int, timeout_s: float) -> None:
        """Sleep until a command is added or answered after :meth:`generation` read ``seen``, or ``timeout_s``
        passes (a change made by another relay process over the same database is found by the caller's next look)."""
        with self._signal:
            if self._generation == seen:
                self._signal.wait(max(0.0, timeout_s))

    def _changed(self) -> None:
        with self._signal:
            self._generation += 1
            self._signal.notify_all()

    # ------------------------------------------------------------------ users
    def add_user(self, name: str, password: str) -> int:
        """A new user; refuses a taken or malformed name."""
        name = _check_user_name(name)
        digest = auth.hash_password(password)
        def add() -> int:
            with self.begin() as c:
                if c.execute(sa.select(t.user.c.id).where(t.user.c.name == name)).first() is not None:
                    raise ValidationError(f"user {name!r} already exists")
                return int(c.execute(t.user.insert().values(name=name, password_hash=digest, created=time.time(),
                                                            disabled=False)).inserted_primary_key[0])

        return int(self._again_if_raced(add))

    def _again_if_raced(self, write: Callable[[], Any]) -> Any:
        """``write()``, a transaction that looks for a row and then inserts it, once more if another transaction inserted
        the same key between its look and its insert (PostgreSQL: both looked, both found nothing): the second run
        finds that row and answers as it would have (already exists, a conflict, a re-link). Before, the unique key
        failed the insert: a 503 with a logged traceback."""
        try:
            return write()
        except sa.exc.IntegrityError:
            return write()

    def set_password(self, name: str, password: str) -> Dict[str, int]:
        """Set a user's password and revoke every token the user holds, in one transaction (whoever knew the old
        password may have logged in, or linked a site, with it). Open streams and long polls of those tokens end
        within :data:`balsam.http.server.REVERIFY_S`, as at any revocation. Returns how many tokens of each kind
        ("user": logins, "site": site agents') were revoked."""
        if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
            raise ObjectDoesNotExist(f"no user {name!r}")  # no user can have this name (text that is not Unicode too)
        digest = auth.hash_password(password)
        with self.begin() as c:
            row = c.execute(sa.select(t.user.c.id).where(t.user.c.name == name)).first()
            if row is None:
                raise ObjectDoesNotExist(f"no user {name!r}")
            c.execute(t.user.update().where(t.user.c.id == row.id).values(password_hash=digest))
            live = sa.and_(t.token.c.user_id == row.id, t.token.c.revoked == sa.false(), t.token.c.expires >= time.time())
            counts = {"user": 0, "site": 0}
            for kind, n in c.execute(sa.select(t.token.c.kind, sa.func.count()).where(live).group_by(t.token.c.kind)):
                counts[str(kind)] = int(n)
            c.execute(t.token.update().where(live).values(revoked=True))
        return counts

    def users(self) -> List[Dict[str, Any]]:
        with self.connect() as c:
            rows = c.execute(sa.select(t.user.c.id, t.user.c.name, t.user.c.created, t.user.c.disabled).order_by(t.user.c.name))
            return [dict(r._mapping) for r in rows]

    def user_id(self, name: str) -> int:
        if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
            raise ObjectDoesNotExist(f"no user {name!r}")  # no user can have this name (text that is not Unicode too)
        with self.connect() as c:
            row = c.execute(sa.select(t.user.c.id).where(t.user.c.name == name)).first()
        if row is None:
            raise ObjectDoesNotExist(f"no user {name!r}")
        return int(row[0])

    def login(self, name: str, password: str, *, ttl_s: float = DEFAULT_TOKEN_TTL_S, label: str = "login") -> Tuple[str, Caller]:
        """Check a password (rate limited per user name) and issue a user token; returns (token, caller)."""
        now = time.time()
        key = clean_text(str(name), 64)  # (a NUL or a lone surrogate is no user's name: counted, never a failed query)
        with self.begin() as c:
            failures = c.execute(sa.select(sa.func.count()).select_from(t.login_failure).where(
                t.login_failure.c.name == key, t.login_failure.c.time > now - LOGIN_WINDOW_S)).scalar_one()
            if failures >= MAX_LOGIN_FAILURES:
                raise RateLimited(f"too many failed logins for {name!r}: wait a minute and try again")
            row = (c.execute(sa.select(t.user.c.id, t.user.c.password_hash, t.user.c.disabled).where(t.user.c.name == name)).first()
                   if isinstance(name, str) and _USER_NAME.fullmatch(name) else None)
        ok = row is not None and not row.disabled and auth.verify_password(password, row.password_hash)
        if not ok:
            if row is None:
                auth.verify_password(password, _DUMMY_HASH)  # the same work whether or not the user exists
            with self.begin() as c:
                c.execute(t.login_failure.insert().values(name=key, time=now))
                c.execute(t.login_failure.delete().where(t.login_failure.c.time < now - LOGIN_WINDOW_S))
            raise RelayAuthError("wrong user name or password")
        assert row is not None
        text = self.issue_token(int(row.id), kind="user", label=label, ttl_s=ttl_s)
        return text, self.verify(text)  # type: ignore[return-value]

    # ------------------------------------------------------------------ tokens
    def issue_token(self, user_id: int, *, kind: str = "user", site_id: Optional[int] = None, label: str = "",
                    ttl_s: float = DEFAULT_TOKEN_TTL_S) -> str:
        """A new token (shown once; only its hash is kept)."""
        if kind not in ("user", "site") or (kind == "site") != (site_id is not None):
            raise ValidationError("a token is a user's (no site) or a site agent's (one site)")
        if not 0 < ttl_s <= 10 * 365 * 86400:
            raise ValidationError("a token's lifetime must be between 1 second and 10 years")
        text, digest = auth.new_token()
        now = time.time()
        with self.begin() as c:
            c.execute(t.token.insert().values(user_id=user_id, token_hash=digest, kind=kind, site_id=site_id, label=clean_text(label, 200),
                                              created=now, expires=now + ttl_s, revoked=False))
        return text

    def verify(self, text: str) -> Optional[Caller]:
        """The caller a bearer token names; None if it is unknown, expired, revoked or its user disabled."""
        if not isinstance(text, str) or not text.startswith(auth.TOKEN_PREFIX) or len(text) > 200:
            return None
        digest = auth.token_hash(text)
        now = time.time()
        with self.connect() as c:
            row = c.execute(
                sa.select(t.token.c.id, t.token.c.kind, t.token.c.site_id, t.token.c.expires, t.token.c.revoked, t.token.c.token_hash,
                          t.user.c.id.label("uid"), t.user.c.name, t.user.c.disabled)
                .join(t.user, t.user.c.id == t.token.c.user_id).where(t.token.c.token_hash == digest)).first()
        if row is None or row.revoked or row.disabled or row.expires < now:
            return None
        return Caller(user_id=int(row.uid), user=row.name, kind=row.kind, site_id=row.site_id, token_id=int(row.id))

    def verify_id(self, caller: Caller) -> Optional[Caller]:
        """``caller`` if its token is still good now (not revoked or expired, its user not disabled), else None."""
        with self.connect() as c:
            row = c.execute(sa.select(t.token.c.expires, t.token.c.revoked, t.user.c.disabled)
                            .join(t.user, t.user.c.id == t.token.c.user_id).where(t.token.c.id == caller.token_id)).first()
        return None if row is None or row.revoked or row.disabled or row.expires < time.time() else caller

    def tokens(self, user_id: int) -> List[Dict[str, Any]]:
        """A user's tokens (never their text)."""
        with self.connect() as c:
            rows = c.execute(sa.select(t.token.c.id, t.token.c.kind, t.token.c.site_id, t.token.c.label, t.token.c.created,
                                       t.token.c.expires, t.token.c.revoked, t.token.c.last_used)
                             .where(t.token.c.user_id == user_id).order_by(t.token.c.id))
            return [dict(r._mapping) for r in rows]

    def revoke(self, user_id: int, token_id: int) -> None:
        """Revoke one of the user's tokens (another user's token is "no such token")."""
        with self.begin() as c:
            n = c.execute(t.token.update().where(t.token.c.id == token_id, t.token.c.user_id == user_id).values(revoked=True)).rowcount
        if n == 0:
            raise ObjectDoesNotExist(f"no token {token_id}")

    # ------------------------------------------------------------------ sites
    def link_site(self, caller: Caller, site_id: int, name: str, hostname: str = "", path: str = "") -> str:
        """Register one of the user's sites (or re-link it) and issue its agent token. A site id another user's
        site holds is a conflict: the site must take a new id (``balsam site link`` does so)."""
        if caller.kind != "user":
            raise RelayAuthError("only a user can link a site")
        if not isinstance(site_id, int) or not 0 < site_id < 2**31:
            raise ValidationError(f"bad site id {site_id!r}")
        name = check_text("site name", name, max_chars=200, empty=False)
        hostname = check_text("hostname", hostname, max_chars=255)
        path = check_text("site path", path, max_chars=4096)

        def link() -> None:
            with self.begin() as c:
                row = c.execute(sa.select(t.site.c.user_id, t.site.c.name).where(t.site.c.id == site_id)).first()
                if row is not None and (row.user_id != caller.user_id or row.name != name):
                    raise Conflict(f"site id {site_id} is taken at this relay: the site needs a new id")
                other = c.execute(sa.select(t.site.c.id).where(t.site.c.user_id == caller.user_id, t.site.c.name == name,
                                                               t.site.c.id != site_id)).first()
                if other is not None:
                    raise Conflict(f"you already have a site named {name!r} at this relay (id {other[0]})")
                if row is None:
                    c.execute(t.site.insert().values(id=site_id, user_id=caller.user_id, name=name, hostname=hostname, path=path,
                                                     row="{}", pushed_seq=0, command_seq=0, backlog="{}"))
                else:
                    c.execute(t.site.update().where(t.site.c.id == site_id).values(hostname=hostname, path=path))

        self._again_if_raced(link)
        return self.issue_token(caller.user_id, kind="site", site_id=site_id, label=f"agent of {name}", ttl_s=SITE_TOKEN_TTL_S)

    def sites(self, caller: Caller) -> List[Dict[str, Any]]:
        """The caller's sites (a site token sees only its own)."""
        q = sa.select(t.site).where(t.site.c.user_id == caller.user_id)
        if caller.kind == "site":
            q = q.where(t.site.c.id == caller.site_id)
        with self.connect() as c:
            out = []
            for r in c.execute(q.order_by(t.site.c.name)):
                d = dict(r._mapping)
                d["row"] = plain(json.loads(d["row"] or "{}"))  # (plain: also what a push stored before it was checked)
                d["backlog"] = plain(json.loads(d["backlog"] or "{}"))
                out.append(d)
            return out

    def parent_states(self, caller: Caller, ids: Sequence[int], since: Optional[Dict[int, float]] = None
                      ) -> Tuple[Dict[int, str], Dict[int, Tuple[str, str]]]:
        """For a site waiting on parents at another site: the mirrored states of the jobs named that belong to the
        caller's user, at any of their sites, and those that will never finish (deleted, never made, in a loop of
        parents across sites), with why (:func:`balsam.relay.parents.answer`). Another user's jobs are "not one of
        your sites"."""
        from balsam.relay import parents

        with self.connect() as c:
            return parents.answer(c, caller.user_id, ids, since)

    def why(self, caller: Caller, job_id: int) -> List[str]:
        """Why one of the caller's jobs is in its state, from the mirrors (:func:`balsam.relay.parents.why`)."""
        from balsam.relay import parents

        with self.connect() as c:
            return parents.why(c, caller.user_id, int(job_id))

    def site_for(self, caller: Caller, key: Any) -> Dict[str, Any]:
        """One of the caller's sites by id or name; another user's site is "no such site"."""
        for s in self.sites(caller):
            if str(key) in (str(s["id"]), s["name"]):
                return s
        raise ObjectDoesNotExist(f"no site {key!r}")

    # ------------------------------------------------------------------ the sites' pushes
    def ingest(self, caller: Caller, submission_id: str, last_seq: int, items: Sequence[Dict[str, Any]],
               site_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Apply a site's push (upserts and deletes of its rows) once: a retried ``submission_id`` is answered
        from the stored answer and changes nothing. Returns {"pushed_seq": ..., "applied": n}."""
        from balsam.relay import mirror

        if caller.kind != "site" or caller.site_id is None:
            raise RelayAuthError("only a site's agent can push")
        if not isinstance(submission_id, str) or not 8 <= len(submission_id) <= 64:
            raise ValidationError("a push needs a submission_id of 8-64 characters")
        if type(last_seq) is not int or not 0 <= last_seq < 2**63:
            raise ValidationError("last_seq: expected an integer from 0 to 2**63-1")
        if not isinstance(items, (list, tuple)) or len(items) > mirror.MAX_ITEMS:
            raise ValidationError(f"a push carries a list of at most {mirror.MAX_ITEMS} items")
        site_id = caller.site_id
        key = push_key(site_id, submission_id)
        now = time.time()
        refused: Dict[str, Any] = {}
        try:
            answer = self._ingest(site_id, key, now, last_seq, items, site_info, refused)
        except mirror.Reissued as e:
            # The site's DB was put back from a backup: it made rows under ids it had pushed before (nothing of the push
            # is kept). A site that says its id counters (an agent that renumbers) gets the ids to move.
            if _sequences(site_info) is None:
                entity, ids = next(iter(e.ids.items()))
                raise Conflict(f"site {refused['name']} pushed rows under ids it had pushed before for other rows ({e}; first: "
                               f"{entity} {ids[0]}): its DB was put back from a backup? Upgrade Balsam at the site: "
                               "its agent then gives those rows new ids") from None
            with self.begin() as c:
                c.execute(t.site.update().where(t.site.c.id == site_id).values(last_seen=now))
            return {"pushed_seq": refused["pushed_seq"], "applied": 0, "reissued": e.ids, "issued": refused["issued"]}
        return answer

    def _ingest(self, site_id: int, key: str, now: float, last_seq: int, items: Sequence[Dict[str, Any]],
                site_info: Optional[Dict[str, Any]], refused: Dict[str, Any]) -> Dict[str, Any]:
        """:meth:`ingest` in one transaction (``refused``: filled with what a refusal answers with)."""
        from balsam.relay import mirror

        with self.begin() as c:
            # The site's row is locked before the stored answers are read: two agents (or an agent's retry racing its
            # first try) pushing the same batch at once then apply it once and answer the other from what it stored.
            # Read first, both found nothing; the second applied the batch again and failed on the answer's key (503).
            site = c.execute(sa.select(t.site.c.pushed_seq, t.site.c.jobs_issued, t.site.c.issued, t.site.c.name)
                             .where(t.site.c.id == site_id).with_for_update()).first()
            if site is None:
                raise ObjectDoesNotExist(f"no site {site_id}")
            current = int(site.pushed_seq)
            done = c.execute(sa.select(t.push.c.answer).where(t.push.c.submission_id == key, t.push.c.site_id == site_id)).first()
            if done is not None:
                answer: Dict[str, Any] = json.loads(done.answer)
                answer["replayed"] = True
                return answer
            marks = _marks(site.issued, site.jobs_issued)
            values: Dict[str, Any] = {"last_seen": now, "pushed_seq": max(current, last_seq)}
            if 0 < last_seq < current:
                # Older than a push already applied (a late duplicate, or pushes reordered on the way): every row
                # in it was pushed again, as it is now, by the newer one. Applying it would put old states back.
                applied, answer = 0, {"pushed_seq": current, "applied": 0, "stale": True}
            else:
                refused.update(name=site.name, pushed_seq=current, issued=dict(marks))
                applied = mirror.apply_items(c, site_id, items, marks)  # (mirror.Reissued: rolled back)
                answer = {"pushed_seq": values["pushed_seq"], "applied": applied}
                issued = _jobs_issued(site_id, items, site_info)
                if issued:
                    values["jobs_issued"] = sa.case((t.site.c.jobs_issued < issued, issued), else_=t.site.c.jobs_issued)
                    marks["job"] = max(marks.get("job", 0), issued)
                others = {k: v for k, v in mirror.issued_by(items).items() if k != "job" and v > marks.get(k, 0)}
                if others:
                    marks.update(others)
                    values["issued"] = json.dumps({k: v for k, v in sorted(marks.items()) if k != "job"})
                if _reports_counter(site_id, site_info):
                    values["jobs_issued_at"] = now
                if site_info:
                    if isinstance(site_info.get("row"), dict):
                        row = plain(site_info["row"])
                        # The flags its owner lets jobs pass (settings.yml), which the relay checks new jobs against
                        flags = launch_flags.extra_flags(site_info.get("allowed_launch_params"))
                        if flags:
                            row["allowed_launch_params"] = sorted(flags)
                        values["row"] = json.dumps(row)
                    if isinstance(site_info.get("backlog"), dict):
                        values["backlog"] = json.dumps(plain(site_info["backlog"]))
            behind = _behind(marks, _sequences(site_info))
            if behind:  # the site's id counters are behind ids it pushed (a DB put back from a backup): it moves them on
                answer["issued"] = behind
            c.execute(t.site.update().where(t.site.c.id == site_id).values(**values))
            c.execute(t.push.insert().values(submission_id=key, site_id=site_id, received=now, answer=json.dumps(answer)))
            c.execute(t.push.delete().where(t.push.c.site_id == site_id, t.push.c.received < now - PUSH_MEMORY_S))
        return answer

    def pushed_seq(self, caller: Caller) -> int:
        """The site's outbox sequence the relay has applied (a site resumes its pushes after it)."""
        with self.connect() as c:
            v = c.execute(sa.select(t.site.c.pushed_seq).where(t.site.c.id == caller.site_id)).scalar_one_or_none()
        if v is None:
            raise ObjectDoesNotExist(f"no site {caller.site_id}")
        return int(v)

    # ------------------------------------------------------------------ commands (relay -> site)
    def add_command(self, caller: Caller, site_id: int, kind: str, body: Dict[str, Any]) -> int:
        """Queue a command for one of the caller's sites; its id (the provisional handle)."""
        self.site_for(caller, site_id)
        with self.begin() as c:
            command_id = int(c.execute(t.command.insert().values(site_id=site_id, user_id=caller.user_id, kind=kind, body=json.dumps(body),
                                                                 created=time.time(), state="pending")).inserted_primary_key[0])
        self._changed()  # a site's long poll waiting in this process takes it at once
        return command_id

    def pending_commands(self, caller: Caller, after: int, limit: int = 1000, *, seen: bool = True) -> List[Dict[str, Any]]:
        """Commands for the calling site after its cursor, oldest first; ``seen``: also record that the site was
        seen now (once per long poll is enough: a look again while it waits writes nothing)."""
        if caller.kind != "site":
            raise RelayAuthError("only a site's agent can pull commands")
        query = (sa.select(t.command.c.id, t.command.c.kind, t.command.c.body, t.command.c.created)
                 .where(t.command.c.site_id == caller.site_id, t.command.c.id > after, t.command.c.state == "pending")
                 .order_by(t.command.c.id).limit(limit))
        if seen:
            with self.begin() as c:
                rows = c.execute(query).all()
                c.execute(t.site.update().where(t.site.c.id == caller.site_id).values(last_seen=time.time()))
        else:
            with self.connect() as c:
                rows = c.execute(query).all()
        return [{"id": int(r.id), "kind": r.kind, "body": json.loads(r.body), "created": r.created} for r in rows]

    def finish_commands(self, caller: Caller, results: Iterable[Dict[str, Any]]) -> int:
        """Record what the site did with its commands: applied (with a result) or rejected (with the reason)."""
        if caller.kind != "site":
            raise RelayAuthError("only a site's agent can answer commands")
        n = 0
        now = time.time()
        checked = []
        for r in results:
            state, command_id = r.get("state"), r.get("id")
            if state not in ("applied", "rejected"):
                raise ValidationError(f"a command result's state is applied or rejected, got {state!r}")
            if type(command_id) is not int or not 0 < command_id < 2**63:
                raise ValidationError(f"a command result's id is a command id, got {command_id!r}")
            checked.append((command_id, state, json.dumps(plain(r.get("result")))))
        with self.begin() as c:
            for command_id, state, result in checked:
                n += c.execute(t.command.update().where(t.command.c.id == command_id, t.command.c.site_id == caller.site_id,
                                                        t.command.c.state == "pending")
                               .values(state=state, result=result, finished=now)).rowcount
        self._changed()  # the writes waiting on these answers in this process return at once
        return n

    def command(self, caller: Caller, command_id: int) -> Dict[str, Any]:
        """One of the caller's commands with its state and result."""
        with self.connect() as c:
            r = c.execute(sa.select(t.command).where(t.command.c.id == command_id, t.command.c.user_id == caller.user_id)).first()
        if r is None:
            raise ObjectDoesNotExist(f"no command {command_id}")
        d = dict(r._mapping)
        d["body"] = json.loads(d["body"])
        d["result"] = json.loads(d["result"]) if d["result"] else None
        return d


def push_key(site_id: int, submission_id: str) -> str:
    """The stored key of a site's push: its submission_id under the site's own name, so that no site (another user's
    above all) can take, and so block, the id of another site's next push (the ids are predictable)."""
    return hashlib.sha256(f"{int(site_id)}\n{submission_id}".encode()).hexdigest()


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON every reader can answer with: non-finite numbers and integers past 64 bits as null, text
    as valid Unicode without NUL, at most 32 levels deep (what a site's push may say about itself)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= 32:
        return None
    if isinstance(value, dict):
        return {clean_text(str(k)): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    return clean_text(str(value))


def clean_text(text: str, width: Optional[int] = None) -> str:
    """``text`` as both databases can store it: NUL and lone surrogates replaced (PostgreSQL refuses NUL, and
    neither can encode a surrogate), cut at ``width`` characters."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text if width is None or len(text) <= width else text[:width]


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_user_name(name: Any) -> str:
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise ValidationError(f"a user name is 1-64 letters, digits, '.', '_' or '-', got {name!r}")
    return name


def default_url(config_dir: Path) -> str:
    """The relay's default database: ``relay.db`` beside its configuration."""
    return f"sqlite:///{config_dir / 'relay.db'}"


def _marks(issued: Any, jobs_issued: Any) -> Dict[str, int]:
    """The highest id of each entity a site has pushed: ``relay_site.issued`` and ``jobs_issued``."""
    try:
        raw = json.loads(issued) if isinstance(issued, str) and issued else {}
    except ValueError:
        raw = {}
    marks = {str(k): int(v) for k, v in (raw if isinstance(raw, dict) else {}).items() if type(v) is int}
    if jobs_issued:
        marks["job"] = int(jobs_issued)
    return marks


def _sequences(site_info: Optional[Dict[str, Any]]) -> Optional[Dict[str, int]]:
    """The id counters a push reports its site at ({entity: the last id it handed out}), or None: a site from before
    them, which cannot move its counters or give rows new ids."""
    raw = (site_info or {}).get("sequences")
    if not isinstance(raw, dict):
        return None
    return {str(k): int(v) for k, v in raw.items() if type(v) is int}


def _behind(marks: Dict[str, int], sequences: Optional[Dict[str, int]]) -> Dict[str, int]:
    """The entities whose id counter at the site is behind ids it pushed, with the highest id pushed."""
    if sequences is None:
        return {}
    return {k: v for k, v in sorted(marks.items()) if v > sequences.get(k, 0)}


def _reports_counter(site_id: int, site_info: Optional[Dict[str, Any]]) -> bool:
    """Whether a push reports its site's id counter (it does when it empties the site's outbox)."""
    from balsam.db.ids import site_of

    counter = (site_info or {}).get("jobs_issued")
    return type(counter) is int and site_of(counter) == site_id


def _jobs_issued(site_id: int, items: Sequence[Dict[str, Any]], site_info: Optional[Dict[str, Any]]) -> int:
    """The highest job id a push shows its site has handed out: its job items' ids (already checked to be the
    site's), and the site's id counter, which it reports when the push empties its outbox (0: nothing new)."""

    high = max((int(i["id"]) for i in items if isinstance(i, dict) and i.get("entity") == "job"), default=0)
    if _reports_counter(site_id, site_info):
        high = max(high, int((site_info or {})["jobs_issued"]))
    return high
