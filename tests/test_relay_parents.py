"""Parents at another site, end to end: a workshop script on a laptop (this process, no site) preprocesses at one
site and simulates at another with ``parent_ids=[pre.id]``, through a real relay, two real site agents and their
launchers. The child waits (AWAITING_PARENTS, even with a launcher at its site) until its parent is JOB_FINISHED at
the other site, then runs; a killed parent fails its child at the other site, saying why."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from balsam import exceptions as exc
from tests.test_relay_sync import HELLO, Relay, _sync_service, node_env, relay, run, wait_for  # noqa: F401  (relay: the fixture)

SITES = ("polaris", "theta")


def two_sites(env: Dict[str, str], roots: Dict[str, Path], relay: Relay, start: bool = True) -> None:  # noqa: F811
    """Two sites on the login node, each with its Hello app, linked to the relay as alice, their agents started."""
    run(env, "-m", "balsam", "login", relay.url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
    for name, root in roots.items():
        run(env, "-m", "balsam", "site", "init", str(root), "-n", name, "--preset", "local")
        settings = root / "settings.yml"
        settings.write_text(settings.read_text().replace("idle_ttl_s: 10", "idle_ttl_s: 3"))
        run(env, "-c", f"import os; os.chdir({str(root)!r}); exec({HELLO.replace('polaris', name)!r})")
        run(env, "-m", "balsam", "site", "link", relay.url, "--site", str(root))
        if start:
            run(env, "-m", "balsam", "site", "start", "--site", str(root))


def events(root: Path, job_id: int) -> List[Tuple[float, str, str, str]]:
    """The job's events in its site's own DB (read only): (time, from, to, data)."""
    conn = sqlite3.connect(f"file:{root / '.balsam' / 'site.db'}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute("SELECT timestamp, from_state, to_state, coalesce(data, '') FROM event "
                                               "WHERE job_id = ? ORDER BY id", (job_id,))]  # type: ignore[misc]
    finally:
        conn.close()


def launcher_ran(name: str) -> Any:
    """A BatchJob at the site, run to its end by the site's agent and local scheduler (its launcher idles out)."""
    from balsam.api import BatchJob

    batch = BatchJob(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local", site_name=name)
    batch.save()
    return batch


@pytest.mark.slow
def test_a_job_waits_for_its_parent_at_another_site_then_runs(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    env, roots = node_env(tmp_path), {name: tmp_path / name for name in SITES}
    try:
        two_sites(env, roots, relay)
        from balsam.api import BatchJob, Job
        from balsam.sync import login as relay_login

        relay_login(relay.url, "alice", "alice-password")  # this process is the laptop
        pre = Job("wf/pre", app_id="Hello", site_name="polaris", parameters={"say_hello_to": "preprocess"})
        pre.save()
        sim = Job("wf/sim", app_id="Hello", site_name="theta", parameters={"say_hello_to": "simulate"}, parent_ids=[pre.id])
        sim.save()
        assert sim.id >> 32 != pre.id >> 32 and sim.parent_ids == [pre.id]
        assert sim.state == "AWAITING_PARENTS"
        assert [(p.id, p.site_id) for p in sim.parent_query()] == [(pre.id, pre.site_id)]
        # A launcher at the child's site comes and goes without running it: its parent has not run.
        idle = launcher_ran("theta")
        wait_for("theta's launcher to end", lambda: BatchJob.objects.get(id=idle.id).state == "finished", timeout=180)
        sim.refresh_from_db()
        assert sim.state == "AWAITING_PARENTS" and not (roots["theta"] / "data" / "wf" / "sim" / "job.out").exists()
        # The parent runs at its site; the relay carries its end to the child's site, which releases the child.
        launcher_ran("polaris")
        wait_for("the parent to finish", lambda: Job.objects.get(id=pre.id).state == "JOB_FINISHED", timeout=180)
        wait_for("the child to be released", lambda: Job.objects.get(id=sim.id).state == "PREPROCESSED", timeout=120)
        launcher_ran("theta")
        wait_for("the child to finish", lambda: Job.objects.get(id=sim.id).state == "JOB_FINISHED", timeout=180)
        assert (roots["theta"] / "data" / "wf" / "sim" / "job.out").read_text().strip() == "Hello, simulate!"
        finished = [e[0] for e in events(roots["polaris"], pre.id) if e[2] == "JOB_FINISHED"]
        released = [e for e in events(roots["theta"], sim.id) if e[1] == "AWAITING_PARENTS"]
        started = [e[0] for e in events(roots["theta"], sim.id) if e[2] == "RUNNING"]
        assert released[0][2] == "READY" and "all parents finished" in released[0][3]
        assert len(finished) == 1 and len(started) == 1 and started[0] > finished[0]

        # A killed parent fails its child at the other site, as a parent at the same site does.
        # 64 nodes: more than polaris's launcher has, so it never runs before it is killed (it finished first once)
        doomed = Job("wf/pre2", app_id="Hello", site_name="polaris", parameters={"say_hello_to": "never"}, num_nodes=64)
        doomed.save()
        orphan = Job("wf/sim2", app_id="Hello", site_name="theta", parameters={"say_hello_to": "never"}, parent_ids=[doomed.id])
        orphan.save()
        assert orphan.state == "AWAITING_PARENTS"
        doomed.kill()
        wait_for("the child to fail", lambda: Job.objects.get(id=orphan.id).state == "FAILED", timeout=120)
        why = [e[3] for e in events(roots["theta"], orphan.id) if e[2] == "FAILED"]
        assert f"parent job {doomed.id} (at another site) is USER_KILLED" in why[0]
    finally:
        for root in roots.values():
            run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)


@pytest.mark.slow
def test_the_parents_end_reaches_the_child_once_both_sites_are_back_online(relay: Relay, tmp_path: Path,  # noqa: F811
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay is down while the parent finishes at its site (which goes on working) and while the child's site
    asks; once the relay is back, the parent's site pushes its end and the child's site releases the child."""
    import os

    from balsam.db.backend import LocalBackend
    from balsam.db.jobs import StateChange

    env, roots = node_env(tmp_path), {name: tmp_path / name for name in SITES}
    two_sites(env, roots, relay, start=False)
    monkeypatch.setenv("BALSAM_HOME", env["BALSAM_HOME"])
    (ref_a, sync_a), (ref_b, sync_b) = (_sync_service(roots[name], env) for name in SITES)
    from balsam.api import Job

    parent = Job("wf/pre", app_id="Hello", site_name="polaris", parameters={"say_hello_to": "pre"})
    parent.save()
    child = Job("wf/sim", app_id="Hello", site_name="theta", parameters={"say_hello_to": "sim"}, parent_ids=[parent.id])
    child.save()
    assert child.state == "AWAITING_PARENTS"
    relay.stop()
    site_a = LocalBackend(ref_a.store)  # the parent's site runs it to the end, offline
    site_a.update_jobs([], (), [StateChange(parent.id, "PREPROCESSED")])
    lease = site_a.create_session(host=ref_a.store.host, pid=os.getpid(), batch_job_id=None, label="test launcher")
    assert [j["id"] for j in site_a.acquire(lease, 1)] == [parent.id]
    for state in ("RUNNING", "RUN_DONE"):
        assert site_a.apply_changes([StateChange(parent.id, state)], session_id=lease) == []
    site_a.update_jobs([], (), [StateChange(parent.id, "POSTPROCESSED")])
    parent.refresh_from_db()
    assert parent.state == "JOB_FINISHED"
    with pytest.raises(exc.ServiceError):
        sync_a.push(force=True)
    with pytest.raises(exc.ServiceError):
        sync_b.parents()
    child.refresh_from_db()
    assert child.state == "AWAITING_PARENTS"
    relay.start()  # back on the same port
    sync_b.push(force=True)
    assert sync_b.parents() == 0  # the relay has not heard of the parent's end yet: the child waits on
    assert sync_a.push(force=True) > 0
    assert sync_b.parents() == 1
    child.refresh_from_db()
    assert child.state == "STAGED_IN"  # released (READY), and on at once with nothing to stage in


def _failed_why(root: Path, job_id: int) -> str:
    """The message of the job's FAILED event at its site ('' when it has none)."""
    import json

    return next((str(json.loads(e[3])["message"]) for e in events(root, job_id) if e[2] == "FAILED"), "")


def test_a_parent_at_another_site_that_will_never_finish_fails_its_child_saying_why(relay: Relay, tmp_path: Path,  # noqa: F811
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """As a deleted parent of the same site does, a parent at another site that was deleted there, that never existed,
    or that waits on its own child through a loop of parents across the two sites fails the child, which says why;
    a parent its site has made but not pushed yet is waited for, and "why" through the relay says what for."""
    from balsam.db.backend import LocalBackend
    from balsam.db.ids import base, site_of

    env, roots = node_env(tmp_path), {name: tmp_path / name for name in SITES}
    two_sites(env, roots, relay, start=False)
    monkeypatch.setenv("BALSAM_HOME", env["BALSAM_HOME"])
    (ref_a, sync_a), (ref_b, sync_b) = (_sync_service(roots[name], env) for name in SITES)
    site_a = LocalBackend(ref_a.store)
    from balsam.api import Job

    def job(name: str, site: str, parents: Any = ()) -> Any:
        j = Job(f"wf/{name}", app_id="Hello", site_name=site, parameters={"say_hello_to": name}, parent_ids=list(parents))
        j.save()
        return j

    # A parent its site has made but not pushed yet: its child waits, and "why" says the relay has not heard of it.
    parent = job("pre", "polaris")
    sync_a.push(force=True)
    child = job("sim", "theta", [parent.id])
    unpushed = job("later", "polaris")
    waits = job("sim-later", "theta", [unpushed.id])
    sync_b.push(force=True)
    assert sync_b.parents() == 0
    waits.refresh_from_db()
    assert waits.state == "AWAITING_PARENTS" and "the relay has not reported its state yet" in waits.why()[0]
    assert sync_b.client.request("GET", f"/v1/jobs/{waits.id}/why")["reasons"] == [
        f"waits for parent job {unpushed.id} at site polaris, which the relay has not heard of yet (its site has not pushed it)"]
    parent.refresh_from_db()
    assert sync_b.client.request("GET", f"/v1/jobs/{child.id}/why")["reasons"] == [
        f"waits for parent job {parent.id} ({parent.state} at site polaris)"]
    # Deleted at its site after its child was made; made and deleted before its site pushed it; at no site of the user.
    early = job("early", "polaris")
    early_child = job("sim-early", "theta", [early.id])
    site_a.delete_jobs([early.id, parent.id])
    other = next(s for s in (1, 2, 3) if s not in (site_of(parent.id), site_of(child.id)))
    ghost_child = job("sim-ghost", "theta", [base(other) + 5])
    sync_a.push(force=True)
    sync_b.push(force=True)
    assert sync_b.parents() == 3
    for j in (child, early_child, ghost_child, waits):
        j.refresh_from_db()
    assert (child.state, early_child.state, ghost_child.state, waits.state) == ("FAILED", "FAILED", "FAILED", "AWAITING_PARENTS")
    assert _failed_why(roots["theta"], child.id) == f"parent job {parent.id} is not at site polaris: it was deleted there, or never existed"
    assert f"parent job {early.id} is not at site polaris" in _failed_why(roots["theta"], early_child.id)
    assert _failed_why(roots["theta"], ghost_child.id) == (f"parent job {base(other) + 5} does not exist: its site (id {other}) is "
                                                           "not one of your sites at the relay")

    # An id its site had not handed out when the child came to wait on it (and still had not at its next sync): it
    # never was that parent, whatever job its site makes with that id later.
    from balsam.relay import parents as relay_parents

    monkeypatch.setattr(relay_parents, "PUSH_SLACK_S", 0.0)  # the relay here hears of a site's push at once
    future = site_of(unpushed.id) << 32 | ((unpushed.id & 0xFFFFFFFF) + 1000)
    early_bird = job("sim-future", "theta", [future])
    sync_b.push(force=True)
    assert sync_b.parents() == 0  # the relay has not heard of it: it might be a job polaris made and has not pushed
    early_bird.refresh_from_db()
    assert early_bird.state == "AWAITING_PARENTS"
    sync_a.push(force=True)  # polaris's id counter, read after the first ask, is below it
    assert sync_b.parents() == 1
    early_bird.refresh_from_db()
    assert early_bird.state == "FAILED"
    assert _failed_why(roots["theta"], early_bird.id).startswith(f"parent job {future} does not exist at site polaris: it had "
                                                                 "handed out job ids up to ")

    # A loop across the sites: a job at polaris made to wait on a job at theta that waits on it.
    a1 = job("a1", "polaris")
    b1 = job("b1", "theta", [a1.id])
    site_a.update_jobs([], [(a1.id, [b1.id])], [])
    a1.refresh_from_db()
    assert a1.state == "AWAITING_PARENTS"
    sync_a.push(force=True)
    sync_b.push(force=True)
    loop_why = sync_b.client.request("GET", f"/v1/jobs/{b1.id}/why")["reasons"]
    assert any("loop of parents across sites" in r for r in loop_why), loop_why
    assert sync_a.parents() == 1
    a1.refresh_from_db()
    assert a1.state == "FAILED"
    assert (f"parent job {b1.id} waits on itself through a loop of parents across sites: job {b1.id} (theta) -> "
            f"job {a1.id} (polaris) -> job {b1.id} (theta)") in _failed_why(roots["polaris"], a1.id)
    sync_a.push(force=True)
    assert sync_b.parents() == 1
    b1.refresh_from_db()
    assert b1.state == "FAILED" and f"parent job {a1.id} (at another site) is FAILED" in _failed_why(roots["theta"], b1.id)
