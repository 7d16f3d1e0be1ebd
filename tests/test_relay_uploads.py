"""A relay user's bulk creation too large for one request: the parts go to the site as commands it keeps in its DB,
then one command creates every job in one transaction there. All or nothing, and exactly once, as from a host
that sees the site: whether the site is offline (everything queued, resolved once it syncs), refuses a job in the
last part, or gets the commit twice (a user's retry)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, List

import pytest

from balsam import exceptions as exc
from tests.test_relay_queued import sync_once
from tests.test_relay_sync import Relay, login_node, relay, run, wait_for  # noqa: F401  (relay: the fixture)


def _site_jobs(root: Path, prefix: str) -> List[Any]:
    conn = sqlite3.connect(str(root / ".balsam" / "site.db"))
    try:
        return conn.execute("SELECT id, workdir, created FROM job WHERE workdir LIKE ? ORDER BY id", (f"{prefix}/%",)).fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_a_bulk_create_through_the_relay_is_all_or_nothing_and_exactly_once_at_the_site(relay: Relay, tmp_path: Path,  # noqa: F811
                                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import balsam.http.client as client
    from balsam import _api
    from balsam.api import Job
    from balsam.sync import login as relay_login

    env, root = login_node(tmp_path, relay)
    assert sync_once(env, root) == 0  # the relay now knows the site's app
    relay.stop()
    relay.wait_s = 0.5  # the site is offline: each write waits half a second, then is queued
    relay.start()
    relay_login(relay.url, "alice", "alice-password")  # the laptop: no site here at all
    _api.sites.reset()
    monkeypatch.setattr(client, "CREATE_CHUNK", 4)  # 10 jobs: three parts, then the commit

    def jobs(prefix: str, n: int = 10) -> List[Any]:
        return [Job(f"{prefix}/{i}", app_id="Hello", site_name="polaris", parameters={"say_hello_to": str(i)}) for i in range(n)]

    queued = Job.objects.bulk_create(jobs("q"))
    assert len({j.queued_command for j in queued}) == 1 and all(j.id is None for j in queued)  # one command: the commit
    refused = Job.objects.bulk_create(jobs("r", 9) + [Job("q/3", app_id="Hello", site_name="polaris", parameters={"say_hello_to": "x"})])
    assert all(j.queued_command is not None and j.id is None for j in refused)
    backend = _api.sites.resolve("polaris").backend
    request = backend.client.request
    app_id = queued[0].app_id
    part = {"upload": "by-hand", "part": 0, "site_id": backend.site_id,
            "jobs": [{"workdir": f"t/{i}", "app_id": app_id, "parameters": {"say_hello_to": "x"}} for i in range(3)]}
    with pytest.raises(exc.CommandPending):
        request("POST", "/v1/uploads/jobs", part)
    commits = []
    for key in ("commit", "the-same-commit-again"):  # a user's retry the relay cannot tell from a new request
        with pytest.raises(exc.CommandPending) as pending:
            request("POST", "/v1/uploads/jobs/commit", {"upload": "by-hand", "parts": 1, "site_id": backend.site_id}, idempotency_key=key)
        commits.append(pending.value.command_id)
    assert _site_jobs(root, "q") == [] and _site_jobs(root, "t") == []  # nothing reached the site yet

    assert sync_once(env, root) == 3 + 1 + 3 + 1 + 1 + 2  # the site comes back: applies each command once, in order
    made = _site_jobs(root, "q")
    assert [w for _, w, _ in made] == [f"q/{i}" for i in range(10)] and len({c for _, _, c in made}) == 1  # one transaction
    assert Job.objects.resolve(queued) == []
    assert [(j.id, str(j.workdir)) for j in queued] == [(i, w) for i, w, _ in made]
    with pytest.raises(exc.ValidationError, match="workdir 'q/3' is already used"):
        refused[0].refresh_from_db()  # the site's refusal of the commit, on the laptop: none of the ten was made
    assert _site_jobs(root, "r") == []
    answers = [backend.queued_command(c) for c in commits]
    assert [a["state"] for a in answers] == ["applied", "applied"] and answers[0]["result"] == answers[1]["result"]
    assert [i for i, _, _ in _site_jobs(root, "t")] == answers[0]["result"]["ids"]  # made once, reported twice

    run(env, "-m", "balsam", "site", "start", "--site", str(root))  # online: a bulk create waits for the site's answer
    try:
        relay.stop()
        relay.wait_s = 60.0
        relay.start()
        _api.sites.reset()
        wait_for("the site online", lambda: Job.objects.filter(site_name="polaris", workdir="q/0").count() == 1)
        live = Job.objects.bulk_create(jobs("live"))
        made = _site_jobs(root, "live")
        assert [(j.id, str(j.workdir), j.state) for j in live] == [(i, w, "STAGED_IN") for i, w, _ in made]
        assert len({c for _, _, c in made}) == 1 and len(made) == 10
        with pytest.raises(exc.ValidationError, match="workdir 'live/3' is already used"):
            Job.objects.bulk_create(jobs("more", 9) + [Job("live/3", app_id="Hello", site_name="polaris", parameters={"say_hello_to": "x"})])
        assert _site_jobs(root, "more") == []
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)
