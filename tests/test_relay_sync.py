"""The relay end to end, on SQLite and PostgreSQL: the laptop story (two BALSAM_HOMEs: a "laptop" with no site,
and a "login node" whose site agent is linked to a relay on 127.0.0.1), sync faults (the relay stopped and
restarted mid-push; a retried push applied once; a site offline while work piles up catches up), rejections
the user sees, and a site whose id is taken at the relay moving to a free one."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from balsam import exceptions as exc
from tests.relay_support import DATABASES, relay_store

HELLO = """
from balsam.api import ApplicationDefinition

class Hello(ApplicationDefinition):
    site = "polaris"
    command_template = "echo Hello, {{ say_hello_to }}!"

Hello.sync()
"""


class Relay:
    """A relay server that can be stopped and restarted on the same port."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.port = 0
        self.server: Any = None
        self.wait_s: Any = None
        """How long a write waits for its site (None: the relay's default)."""

    def start(self) -> "Relay":
        from balsam.http.serve import ApiServer, ServeOptions
        from balsam.relay.server import build_relay_app

        self.server = ApiServer(build_relay_app(self.store, wait_s=self.wait_s), ServeOptions(bind="127.0.0.1", port=self.port)).start()
        self.port = self.server.port
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(params=DATABASES)
def relay(request: Any, tmp_path: Path) -> Iterator[Relay]:
    for store in relay_store(request.param, tmp_path):
        store.add_user("alice", "alice-password")
        store.add_user("mallory", "mallory-password")
        r = Relay(store).start()
        try:
            yield r
        finally:
            r.stop()


def run(env: Dict[str, str], *args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    out = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, env=env, timeout=180)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def node_env(tmp_path: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["BALSAM_HOME"] = str(tmp_path / "login-node-home")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.pop("BALSAM_SITE_PATH", None)
    return env


def login_node(tmp_path: Path, relay: Relay) -> Tuple[Dict[str, str], Path]:
    """A site "polaris" with the Hello app, linked to the relay as alice (agent not started)."""
    env = node_env(tmp_path)
    root = tmp_path / "polaris"
    run(env, "-m", "balsam", "site", "init", str(root), "-n", "polaris", "--preset", "local")
    settings = root / "settings.yml"
    settings.write_text(settings.read_text().replace("idle_ttl_s: 10", "idle_ttl_s: 3"))
    run(env, "-c", f"import os; os.chdir({str(root)!r}); exec({HELLO!r})")
    run(env, "-m", "balsam", "login", relay.url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
    linked = run(env, "-m", "balsam", "site", "link", relay.url, "--site", str(root))
    assert "is linked to" in linked.stdout
    link = root / ".balsam" / "relay.json"
    assert oct(link.stat().st_mode & 0o777) == "0o600" and json.loads(link.read_text())["token"].startswith("bt_")
    return env, root


def wait_for(what: str, fn: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_laptop_story(relay: Relay, tmp_path: Path) -> None:
    env, root = login_node(tmp_path, relay)
    run(env, "-m", "balsam", "site", "start", "--site", str(root))
    try:
        # The laptop: this process's BALSAM_HOME has no site at all.
        from balsam.cli import main  # noqa: F401  (the CLI runs in subprocesses with the laptop's home)

        laptop = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        run(laptop, "-m", "balsam", "login", relay.url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
        assert oct((Path(os.environ["BALSAM_HOME"]) / "relay-login.json").stat().st_mode & 0o777) == "0o600"
        listing = wait_for("the site online", lambda: (lambda out: out if "online" in out else "")(
            run(laptop, "-m", "balsam", "site", "ls").stdout))
        assert "polaris" in listing
        (row,) = [line.split() for line in listing.splitlines() if " polaris " in line]
        assert row[3] == "yes"  # Balsam 0.7's Active column: the relay says the site's agent is in touch
        # The API guide's Site query, on the laptop: the relay's sites, last_refresh being the agent's last contact.
        from balsam.api import Site

        hour_ago = datetime.datetime.utcnow() - datetime.timedelta(hours=1)
        assert [s.name for s in Site.objects.filter(last_refresh_after=hour_ago)] == ["polaris"]
        assert Site.objects.filter(last_refresh_after=datetime.datetime.utcnow() + datetime.timedelta(hours=1)).count() == 0
        assert Site.objects.get("polaris").path == root
        created = run(laptop, "-m", "balsam", "job", "create", "--site", "polaris", "-a", "Hello", "-w", "demo/x",
                      "-p", "say_hello_to=laptop", "-y")
        assert "demo/x" in created.stdout or "Created" in created.stdout, created.stdout
        from balsam.api import BatchJob, Job

        jobs = list(Job.objects.filter(site_name="polaris"))
        assert [(j.workdir.as_posix() if hasattr(j.workdir, "as_posix") else str(j.workdir)) for j in jobs] == ["demo/x"]
        BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local")
        # The login node's script runs unchanged on the laptop: site = "polaris" resolves through the relay.
        from balsam.api import ApplicationDefinition

        class Hello(ApplicationDefinition):
            site = "polaris"
            command_template = "echo Hello, {{ say_hello_to }}!"

        scripted = Hello.submit(workdir="demo/y", say_hello_to="script")
        assert scripted.id >> 32 == jobs[0].id >> 32
        done = wait_for("JOB_FINISHED on the laptop", lambda: Job.objects.filter(state="JOB_FINISHED").count() == 2)
        assert done
        assert (root / "data" / "demo" / "x" / "job.out").read_text().strip() == "Hello, laptop!"
        assert (root / "data" / "demo" / "y" / "job.out").read_text().strip() == "Hello, script!"
        scripted.refresh_from_db()
        assert str(scripted.state) == "JOB_FINISHED"
        # The other user sees none of it.
        from balsam.sync import login as relay_login
        from balsam.sync import user_client

        record = relay_login(relay.url, "mallory", "mallory-password")
        assert user_client(record).request("GET", "/v1/jobs/count")["count"] == 0
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)


def _sync_service(root: Path, env: Dict[str, str]) -> Any:
    """The site's sync service in this process (the login node's registry and BALSAM_HOME)."""
    from balsam import _api
    from balsam.services.sync import SyncService
    from balsam.sync import site_link

    os.environ["BALSAM_HOME"] = env["BALSAM_HOME"]
    _api.sites.reset()
    ref = _api.sites.ref_for_root(root)
    link = site_link(root)
    assert link is not None
    return ref, SyncService(ref, link)


@pytest.mark.slow
def test_offline_site_catches_up_once_and_a_restarted_relay_loses_nothing(relay: Relay, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    env, root = login_node(tmp_path, relay)
    monkeypatch.setenv("BALSAM_HOME", env["BALSAM_HOME"])
    ref, sync = _sync_service(root, env)
    from balsam.api import Job

    # Offline: the relay is down while the site works (jobs created, states changed, one deleted).
    relay.stop()
    jobs = Job.objects.bulk_create([Job(workdir=f"off/{i}", app_id="Hello", parameters={"say_hello_to": str(i)}) for i in range(300)])
    Job.objects.filter(id=[jobs[0].id]).delete()
    with pytest.raises(exc.ServiceError):
        sync.push(force=True)
    assert sync.site.store.execute("SELECT count(*) FROM outbox")[0][0] > 0  # nothing lost: still queued
    relay.start()  # back on the same port
    assert sync.push(force=True) > 0
    assert sync.push(force=True) == 0  # caught up
    caller = relay.store.verify(json.loads((root / ".balsam" / "relay.json").read_text())["token"])
    from balsam.relay.backend import RelayBackend

    mirror = RelayBackend(relay.store, caller)
    assert mirror.count("job", {}) == 299
    site_counts = dict(sync.site.store.execute("SELECT state, count(*) FROM job GROUP BY state"))
    assert mirror.count_by("job", {}, "state") == site_counts
    events_site = sync.site.store.execute("SELECT count(*) FROM event")[0][0]
    assert mirror.count("event", {}) == events_site
    assert sync.site.store.execute("SELECT count(*) FROM outbox")[0][0] == 0  # acknowledged entries trimmed

    # A push whose answer was lost is resent with the same submission_id and applied once.
    jobs[1].tags = {"round": "2"}
    jobs[1].save()
    payload, last_seq, ev_to, n = sync._batch()
    assert n >= 1
    first = sync.client.request("POST", "/v1/sync/push", payload)
    again = sync.client.request("POST", "/v1/sync/push", payload)
    assert again == dict(first, replayed=True)
    assert mirror.count("job", {"tags": {"round": "2"}}) == 1


@pytest.mark.slow
def test_remote_commands_applied_once_and_refusals_reach_the_user(relay: Relay, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    env, root = login_node(tmp_path, relay)
    monkeypatch.setenv("BALSAM_HOME", env["BALSAM_HOME"])
    ref, sync = _sync_service(root, env)
    sync.push(force=True)
    app_id = int(sync.site.store.execute("SELECT id FROM app WHERE name = 'Hello'")[0][0])
    from balsam.relay.backend import RelayBackend
    from balsam.sync import user_client

    user = user_client(retry_s=5)
    user.timeout_s = 30
    caller = relay.store.verify(user.token)
    # The user's write is queued while the site is busy; the site applies it, answers, and the answer is
    # idempotent: a site that crashed after applying (cursor kept in its DB) does not apply it again.
    queued = RelayBackend(relay.store, caller, wait_s=0.2)
    from balsam.db.jobs import new_job_row

    with pytest.raises(exc.CommandPending, match="queued for site .* as command"):
        queued.create_jobs([new_job_row("remote/1", app_id, parameters={"say_hello_to": "x"})], {})
    assert sync.pull_once() == 1
    assert sync.pull_once() == 0  # the cursor moved: nothing applied twice
    assert sync.site.store.execute("SELECT count(*) FROM job WHERE workdir = 'remote/1'")[0][0] == 1
    command = relay.store.command(caller, 1)
    assert command["state"] == "applied" and len(command["result"]["ids"]) == 1
    assert RelayBackend(relay.store, caller).count("job", {"workdir": ["remote/1"]}) == 1  # pushed before answering
    # A refused command comes back as the site's error, never dropped.
    job_id = command["result"]["ids"][0]
    with pytest.raises(exc.CommandPending):
        queued.update_jobs([(job_id, {"serialized_return_value": b"\x80\x04evil"})])
    sync.pull_once()
    rejected = relay.store.command(caller, 2)
    assert rejected["state"] == "rejected" and "cannot be written through the relay" in rejected["result"]["message"]
    # Optimistic locking: an edit made on the relay's copy of a row the site has changed since is refused with
    # the row as it is now (409 for the user), and applied once the relay's copy is current.
    ref.backend.update_jobs([(job_id, {"tags": {"moved": "on"}})])  # at the site, not pushed yet
    with pytest.raises(exc.CommandPending):
        queued.update_jobs([(job_id, {"tags": {"from": "relay"}})])
    sync.pull_once()
    refused = relay.store.command(caller, 3)
    assert refused["state"] == "rejected" and refused["result"]["kind"] == "StaleVersion", refused
    assert "changed at its site" in refused["result"]["message"]
    assert json.loads(sync.site.store.execute("SELECT tags FROM job WHERE id = ?", (job_id,))[0][0]) == {"moved": "on"}
    sync.push(force=True)
    with pytest.raises(exc.CommandPending):
        queued.update_jobs([(job_id, {"tags": {"from": "relay"}})])
    sync.pull_once()
    assert relay.store.command(caller, 4)["state"] == "applied"
    assert json.loads(sync.site.store.execute("SELECT tags FROM job WHERE id = ?", (job_id,))[0][0]) == {"from": "relay"}


@pytest.mark.slow
def test_site_id_taken_at_the_relay_moves_to_a_free_one_under_its_running_agent(relay: Relay, tmp_path: Path) -> None:
    """The site's agent is running when ``balsam site link`` moves the site to a new id: the same agent process
    takes the new id up (no restart), syncs, and runs a job the laptop creates for the site."""
    env = node_env(tmp_path)
    root = tmp_path / "polaris"
    run(env, "-m", "balsam", "site", "init", str(root), "-n", "polaris", "--preset", "local")
    run(env, "-c", f"import os; os.chdir({str(root)!r}); exec({HELLO!r})")
    import sqlite3

    conn = sqlite3.connect(str(root / ".balsam" / "site.db"))
    site_id = int(conn.execute("SELECT id FROM site").fetchone()[0])
    conn.close()
    from balsam.relay.store import Caller

    mallory = relay.store.user_id("mallory")
    relay.store.link_site(Caller(user_id=mallory, user="mallory", kind="user"), site_id, "hers")
    run(env, "-m", "balsam", "login", relay.url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
    run(env, "-m", "balsam", "site", "start", "--site", str(root))
    pid = (root / ".balsam" / "agent.pid").read_text().split()[0]
    try:
        out = run(env, "-m", "balsam", "site", "link", relay.url, "--site", str(root)).stdout
        assert f"Site id {site_id} is taken" in out
        assert "Its running agent takes up the new id and starts syncing within a few seconds." in out
        conn = sqlite3.connect(str(root / ".balsam" / "site.db"))
        new_id = int(conn.execute("SELECT id FROM site").fetchone()[0])
        app_id = int(conn.execute("SELECT id FROM app").fetchone()[0])
        conn.close()
        assert new_id != site_id and app_id >> 32 == new_id
        assert json.loads((root / ".balsam" / "relay.json").read_text())["site_id"] == new_id
        # The laptop (this process: no site here) sees the site under its new id and gets work done there.
        laptop = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        run(laptop, "-m", "balsam", "login", relay.url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
        alice = relay.store.login("alice", "alice-password")[1]
        wait_for("the site's row pushed under its new id", lambda: relay.store.site_for(alice, new_id)["row"].get("id") == new_id)
        assert "online" in run(laptop, "-m", "balsam", "site", "ls").stdout
        run(laptop, "-m", "balsam", "job", "create", "--site", "polaris", "-a", "Hello", "-w", "moved/x", "-p", "say_hello_to=moved", "-y")
        from balsam.api import BatchJob, Job

        BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local", site_name="polaris")
        wait_for("JOB_FINISHED on the laptop", lambda: Job.objects.filter(site_name="polaris", state="JOB_FINISHED").count() == 1)
        job = Job.objects.get(site_name="polaris", workdir="moved/x")
        assert job.id is not None and job.id >> 32 == new_id
        assert (root / "data" / "moved" / "x" / "job.out").read_text().strip() == "Hello, moved!"
        assert (root / ".balsam" / "agent.pid").read_text().split()[0] == pid  # the same agent process throughout
        # ...whose services run with the new id (hooks that read job.site_id or query by it see the site's id).
        log = (root / "log" / "service.log").read_text()
        assert f"the site's id changed from {site_id} to {new_id}" in log, log[-3000:]
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)


def test_the_relay_checks_launch_flags_against_what_the_site_allows_and_the_site_judges(relay: Relay, tmp_path: Path,
                                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag the site's owner allowed in settings.yml (launcher.allowed_launch_params) is accepted at the relay once
    the site has synced, not refused there as before; one the site no longer allows, which the relay has not heard
    of yet, is refused by the site and comes back as the command's visible rejection."""
    import yaml

    from balsam.db.jobs import new_job_row
    from balsam.relay.backend import RelayBackend
    from balsam.sync import user_client

    env, root = login_node(tmp_path, relay)
    monkeypatch.setenv("BALSAM_HOME", env["BALSAM_HOME"])
    ref, sync = _sync_service(root, env)
    sync.push(force=True)
    app_id = int(sync.site.store.execute("SELECT id FROM app WHERE name = 'Hello'")[0][0])
    caller = relay.store.verify(user_client(retry_s=5).token)
    queued = RelayBackend(relay.store, caller, wait_s=0.2)
    mca = {"--mca": "btl_tcp_if_include"}
    with pytest.raises(exc.ValidationError, match="launch_params flag --mca is not one Balsam passes to MPI launchers at site polaris"):
        queued.create_jobs([new_job_row("mca/0", app_id, parameters={"say_hello_to": "x"}, launch_params=mca)], {})

    def allow(flags: List[str]) -> None:
        settings = root / "settings.yml"
        data = yaml.safe_load(settings.read_text())
        data["launcher"]["allowed_launch_params"] = flags
        settings.write_text(yaml.safe_dump(data))
        run(env, "-m", "balsam", "site", "sync", "--site", str(root))

    allow(["--mca"])
    sync.push()  # nothing else changed at the site: the new flags alone make it push
    assert relay.store.site_for(caller, "polaris")["row"]["allowed_launch_params"] == ["--mca"]
    with pytest.raises(exc.CommandPending):
        queued.create_jobs([new_job_row("mca/1", app_id, parameters={"say_hello_to": "x"}, launch_params=mca)], {})
    assert sync.pull_once() == 1
    assert relay.store.command(caller, 1)["state"] == "applied", relay.store.command(caller, 1)["result"]
    assert json.loads(sync.site.store.execute("SELECT launch_params FROM job WHERE workdir = 'mca/1'")[0][0]) == mca
    allow([])  # the site's owner takes it back; the relay has not heard of it yet
    with pytest.raises(exc.CommandPending):
        queued.create_jobs([new_job_row("mca/2", app_id, parameters={"say_hello_to": "x"}, launch_params=mca)], {})
    sync.pull_once()
    rejected = relay.store.command(caller, 2)
    assert rejected["state"] == "rejected" and "launch_params flag --mca is not one Balsam passes" in rejected["result"]["message"]
    assert sync.site.store.execute("SELECT count(*) FROM job WHERE workdir = 'mca/2'")[0][0] == 0
    sync.push()
    with pytest.raises(exc.ValidationError, match="flag --mca is not one Balsam passes to MPI launchers at site polaris"):
        queued.create_jobs([new_job_row("mca/3", app_id, parameters={"say_hello_to": "x"}, launch_params=mca)], {})


def test_a_saves_read_has_one_shape_through_the_agent_and_through_the_relay(relay: Relay, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What a save was made on (its read: version, state, the changed fields' values) travels in the shape the HTTP
    API documents for PATCH /v1/jobs, also inside the relay's command to the site (it was a list there), and a read
    in any other shape is refused in one line naming the job."""
    from balsam.db.jobs import new_job_row
    from balsam.db.merge import Read
    from balsam.http.schemas import JOB_UPDATE
    from balsam.relay.backend import RelayBackend
    from balsam.sync import user_client

    env, root = login_node(tmp_path, relay)
    monkeypatch.setenv("BALSAM_HOME", env["BALSAM_HOME"])
    ref, sync = _sync_service(root, env)
    app_id = int(sync.site.store.execute("SELECT id FROM app WHERE name = 'Hello'")[0][0])
    (job_id,), _, _ = ref.backend.create_jobs([new_job_row("read/1", app_id, parameters={"say_hello_to": "x"})], {})
    version, state = sync.site.store.execute("SELECT version, state FROM job WHERE id = ?", (job_id,))[0]
    sync.push(force=True)
    user = user_client(retry_s=5)
    caller = relay.store.verify(user.token)
    queued = RelayBackend(relay.store, caller, wait_s=0.2)
    read = Read(job_id, int(version), str(state), {"tags": {}})
    with pytest.raises(exc.CommandPending):
        queued.update_jobs([(job_id, {"tags": {"from": "relay"}})], reads=[read])
    sent = relay.store.command(caller, 1)["body"]["reads"]
    documented = JOB_UPDATE["properties"]["read"]
    assert sent == [[job_id, {"version": int(version), "state": str(state), "fields": {"tags": {}}}]]
    assert set(sent[0][1]) == set(documented["properties"]) and set(documented["required"]) <= set(sent[0][1])
    assert sync.pull_once() == 1 and relay.store.command(caller, 1)["state"] == "applied"
    assert json.loads(sync.site.store.execute("SELECT tags FROM job WHERE id = ?", (job_id,))[0][0]) == {"from": "relay"}
    # Another shape (the list the relay used to send) is refused, naming the job, by the relay and by the site.
    with pytest.raises(exc.ValidationError, match=rf"^job {job_id}: read must be an object \{{version, state, fields\}}$"):
        user.request("PATCH", "/v1/jobs", [{"id": job_id, "tags": {"k": "v"}, "read": [job_id, int(version), str(state), {}]}])
    site_id = relay.store.site_for(caller, "polaris")["id"]
    relay.store.add_command(caller, site_id, "update_jobs", {"updates": [[job_id, {"tags": {"k": "v"}}]],
                                                             "reads": [[job_id, int(version), str(state), {}]]})
    sync.pull_once()
    rejected = relay.store.command(caller, 2)
    assert rejected["state"] == "rejected", rejected
    assert rejected["result"]["message"] == f"job {job_id}: read must be an object {{version, state, fields}}"
    assert json.loads(sync.site.store.execute("SELECT tags FROM job WHERE id = ?", (job_id,))[0][0]) == {"from": "relay"}


def test_the_relay_refuses_a_batch_job_its_site_would_refuse_at_once(relay: Relay, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A BatchJob of 2**40 nodes, or for a queue or project the site does not allow, was queued for the site and
    rejected only after its next sync; now the relay refuses it at once, as the site would (from the queues and
    projects the site last reported), and a good one is queued for the site as before."""
    from balsam.relay.backend import RelayBackend
    from balsam.sync import user_client

    env, root = login_node(tmp_path, relay)
    monkeypatch.setenv("BALSAM_HOME", env["BALSAM_HOME"])
    _ref, sync = _sync_service(root, env)
    sync.push(force=True)
    caller = relay.store.verify(user_client(retry_s=5).token)
    queued = RelayBackend(relay.store, caller, wait_s=0.2)
    good = {"num_nodes": 1, "wall_time_min": 10, "job_mode": "mpi", "queue": "local", "project": "local"}
    for bad, said in (({"num_nodes": 2**40}, "num_nodes"), ({"queue": "nope"}, "queue 'nope' is not allowed at site polaris"),
                      ({"project": "other"}, "project 'other' is not allowed at site polaris"),
                      ({"wall_time_min": 2000}, "queue .local. allows at most 1440 minutes")):
        with pytest.raises(exc.ValidationError, match=said):
            queued.create_batch_job({**good, **bad})
    assert relay.store.pending_commands(relay.store.verify(sync.link["token"]), 0) == []
    with pytest.raises(exc.CommandPending):
        queued.create_batch_job(dict(good))
    assert sync.pull_once() == 1
    assert sync.site.store.execute("SELECT count(*) FROM batch_job")[0][0] == 1
