"""Sync faults with a real relay and a real site (its sync service in a process of its own): the site's process
killed with SIGKILL mid-pull (between two commands it applies, and after applying before answering) and
mid-push (after the relay took a batch, before the site recorded it), then restarted: every command is applied
once, nothing pushed is lost or doubled, and both sides end equal. And a site whose clock is off by ten minutes
(either way): the relay takes its pushes, shows it online by the relay's own clock, and its changes keep order."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.test_relay_sync import Relay, login_node, relay, run  # noqa: F401  (relay: the fixture)

SITE_PROCESS = """
import os, signal, sys, time
from pathlib import Path

root, fault, skew = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
if skew:  # this process's clock is off by `skew` seconds (the site's host clock)
    _real = time.time
    time.time = lambda: _real() + skew

from balsam._api import sites
from balsam.db import outbox
from balsam.services import sync as sync_mod
from balsam.sync import site_link

calls = {"apply": 0, "trim": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if fault.startswith("kill-applying-"):  # SIGKILL while applying the n-th command (its transaction is open)
    nth, real_apply = int(fault.rsplit("-", 1)[1]), sync_mod.apply_command
    def apply_command(backend, cmd):
        calls["apply"] += 1
        result = real_apply(backend, cmd)
        if calls["apply"] == nth:
            die()
        return result
    sync_mod.apply_command = apply_command
if fault == "kill-after-second-push":  # SIGKILL once the relay took a second batch, before the site records it
    real_trim = outbox.trim
    def trim(conn, upto):
        calls["trim"] += 1
        if calls["trim"] == 2:
            die()
        real_trim(conn, upto)
    outbox.trim = trim

if fault.startswith("create:"):  # a job made at the site first (stamped by this process's clock)
    from balsam.api import Job
    Job(fault.split(":", 1)[1], app_id="Hello", site_name="polaris", parameters={"say_hello_to": "x"}).save()
sync = sync_mod.SyncService(sites.ref_for_root(root), site_link(root))
if fault == "kill-before-answering":  # every command applied, SIGKILL before the answers leave
    real_request = sync.client.request
    def request(method, path, *a, **k):
        if path == "/v1/sync/answers":
            die()
        return real_request(method, path, *a, **k)
    sync.client.request = request
pushed = sync.push(force=True)
applied = sync.pull_once()
print(f"pushed {pushed} applied {applied}")
"""


def site_process(env: Dict[str, str], root: Path, fault: str = "none", skew_s: float = 0.0) -> "subprocess.CompletedProcess[str]":
    """One push and one pull by the site's sync service in its own process (the fault injected); its result."""
    return subprocess.run([sys.executable, "-c", SITE_PROCESS, str(root), fault, str(skew_s)], capture_output=True, text=True,
                          env=env, timeout=300)


def site_db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(root / ".balsam" / "site.db"))


def mirror_of(server: Relay, root: Path) -> Any:
    from balsam.relay.backend import RelayBackend

    caller = server.store.verify(json.loads((root / ".balsam" / "relay.json").read_text())["token"])
    return RelayBackend(server.store, caller)


def assert_equal_sides(server: Relay, root: Path) -> None:
    """The relay's copy of the site is the site: jobs by state and workdir, events, nothing left to push."""
    mirror = mirror_of(server, root)
    db = site_db(root)
    try:
        site_jobs = sorted(db.execute("SELECT id, workdir, state, version FROM job"))
        site_events = sorted(r[0] for r in db.execute("SELECT id FROM event"))
        backlog = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        db.close()
    assert sorted(mirror.select("job", {}, columns=("id", "workdir", "state", "version"))) == site_jobs
    assert sorted(r[0] for r in mirror.select("event", {}, columns=("id",))) == site_events
    assert backlog == 0


def queue_creates(server: Relay, root: Path, n: int) -> List[int]:
    """n create commands (one job each) queued at the relay for the site, as a user's writes to an offline site are."""
    from balsam.db.jobs import new_job_row
    from balsam.relay.backend import RelayBackend
    from balsam.relay.store import Caller

    db = site_db(root)
    app_id = int(db.execute("SELECT id FROM app WHERE name = 'Hello'").fetchone()[0])
    db.close()
    site_id = app_id >> 32
    alice = Caller(user_id=server.store.user_id("alice"), user="alice", kind="user")
    user = RelayBackend(server.store, alice)
    return [user.store.add_command(alice, site_id, "create_jobs", {"rows": [list(new_job_row(f"remote/{i}", app_id,
                                                                                                        parameters={"say_hello_to": str(i)}))],
                                                                   "transfers": {}}) for i in range(n)]


def command_states(server: Relay, ids: List[int]) -> List[str]:
    from balsam.relay.store import Caller

    alice = Caller(user_id=server.store.user_id("alice"), user="alice", kind="user")
    return [server.store.command(alice, i)["state"] for i in ids]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill-applying-3", "kill-before-answering"])
def test_site_killed_mid_pull_applies_every_command_once(relay: Relay, tmp_path: Path, fault: str) -> None:  # noqa: F811
    env, root = login_node(tmp_path, relay)
    assert site_process(env, root).returncode == 0  # the relay knows the site and its app
    commands = queue_creates(relay, root, 6)
    killed = site_process(env, root, fault)
    assert killed.returncode == -9, killed.stderr[-2000:]  # really killed with SIGKILL
    db = site_db(root)
    made = db.execute("SELECT count(*) FROM job WHERE workdir LIKE 'remote/%'").fetchone()[0]
    db.close()
    assert made == (2 if fault == "kill-applying-3" else 6)  # the third command's transaction died with the process
    assert command_states(relay, commands) == ["pending"] * 6  # no answer left the site
    again = site_process(env, root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert command_states(relay, commands) == ["applied"] * 6
    db = site_db(root)
    workdirs = sorted(r[0] for r in db.execute("SELECT workdir FROM job WHERE workdir LIKE 'remote/%'"))
    db.close()
    assert workdirs == sorted(f"remote/{i}" for i in range(6))  # each exactly once
    assert_equal_sides(relay, root)


@pytest.mark.slow
def test_site_killed_mid_push_loses_and_doubles_nothing(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    env, root = login_node(tmp_path, relay)
    from balsam.services import sync as sync_mod

    make = ("import sys; from balsam.api import Job; Job.objects.bulk_create([Job(f'local/{i}', app_id='Hello', site_name='polaris', "
            "parameters={'say_hello_to': str(i)}) for i in range(int(sys.argv[1]))])")
    run(env, "-c", make, str(sync_mod.BATCH + 1000))  # more than two batches of outbox entries (and their events)
    pushes: List[Any] = []
    real_ingest = relay.store.ingest

    def ingest(caller: Any, submission_id: str, *args: Any, **kwargs: Any) -> Any:
        answer = real_ingest(caller, submission_id, *args, **kwargs)
        pushes.append((submission_id, bool(answer.get("replayed"))))
        return answer

    relay.store.ingest = ingest  # type: ignore[method-assign]
    killed = site_process(env, root, "kill-after-second-push")
    assert killed.returncode == -9, killed.stderr[-2000:]
    taken = [s for s, replayed in pushes if not replayed]
    assert len(taken) == 2  # the relay applied two batches; the site recorded only the first
    again = site_process(env, root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (taken[1], True) in pushes  # the unrecorded batch was sent again and answered from the relay's memory
    firsts = [s for s, replayed in pushes if not replayed]
    assert len(firsts) == len(set(firsts))  # no batch applied twice
    assert_equal_sides(relay, root)


@pytest.mark.slow
@pytest.mark.parametrize("skew_s", [-600.0, 600.0])
def test_a_site_clock_off_by_minutes(relay: Relay, tmp_path: Path, skew_s: float) -> None:  # noqa: F811
    env, root = login_node(tmp_path, relay)
    pushed = site_process(env, root, "create:skew/1", skew_s=skew_s)  # every process of the site's host has its clock
    assert pushed.returncode == 0, pushed.stderr[-2000:]  # tokens carry no time: auth does not care for the site's clock
    from balsam.sync import login as relay_login
    from balsam.sync import user_client

    user = user_client(relay_login(relay.url, "alice", "alice-password"))
    site = user.request("GET", "/v1/sites")["results"][0]
    from balsam.http.schemas import epoch

    assert abs(epoch(site["last_seen"]) - time.time()) < 60 and site["agent"]["running"]  # the relay's clock, not the site's
    # A user's change made at the relay (with the right clock) is stamped by the site when it applies it, so the
    # site's history stays in the order things happened at the site.
    job = user.request("GET", "/v1/jobs?workdir=skew/1")["results"][0]
    queued = mirror_of(relay, root)  # the site's own token: its command queue
    from balsam.relay.store import Caller

    alice = Caller(user_id=relay.store.user_id("alice"), user="alice", kind="user")
    command = relay.store.add_command(alice, queued.site_ids[0], "update_jobs", {
        "updates": [], "parents": [], "changes": [{"job_id": job["id"], "state": "USER_KILLED", "timestamp": None,
                                                     "data": {"message": "killed from the laptop"}, "fields": None}],
        "versions": [[job["id"], job["version"]]]})
    applied = site_process(env, root, skew_s=skew_s)
    assert applied.returncode == 0 and relay.store.command(alice, command)["state"] == "applied", applied.stderr[-2000:]
    events = user.request("GET", f"/v1/events?job_id={job['id']}&ordering=timestamp")["results"]
    assert [e["to_state"] for e in events][-1] == "USER_KILLED"
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)  # time order is the order they happened
    assert_equal_sides(relay, root)
