"""A linked site's agent and the relay, end to end: a running agent starts syncing when the site is linked and
stops when it is unlinked (no restart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from tests.test_relay_sync import HELLO, Relay, login_node, node_env, relay, run, wait_for  # noqa: F401  (relay: the fixture)


def services(root: Path) -> Dict[str, Any]:
    try:
        return dict(json.loads((root / ".balsam" / "agent.json").read_text()).get("services") or {})
    except (OSError, ValueError):
        return {}


def make_job(env: Dict[str, str], workdir: str) -> None:
    run(env, "-c", f"from balsam.api import Job; Job({workdir!r}, app_id='Hello', site_name='polaris', "
                   "parameters={'say_hello_to': 'x'}).save()")


@pytest.mark.slow
def test_a_running_agent_syncs_once_linked_and_stops_once_unlinked(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    env = node_env(tmp_path)
    root = tmp_path / "polaris"
    run(env, "-m", "balsam", "site", "init", str(root), "-n", "polaris", "--preset", "local")
    run(env, "-c", f"import os; os.chdir({str(root)!r}); exec({HELLO!r})")
    run(env, "-m", "balsam", "login", relay.url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
    run(env, "-m", "balsam", "site", "start", "--site", str(root))
    try:
        from balsam.sync import login as relay_login
        from balsam.sync import user_client

        user = user_client(relay_login(relay.url, "alice", "alice-password"))
        make_job(env, "before/1")
        wait_for("the agent's status", lambda: "processing" in services(root))
        assert "sync" not in services(root)
        linked = run(env, "-m", "balsam", "site", "link", relay.url, "--site", str(root))
        assert "starts syncing" in linked.stdout
        wait_for("the site's jobs at the relay", lambda: user.request("GET", "/v1/jobs/count")["count"] == 1)
        make_job(env, "linked/1")
        wait_for("a new job at the relay", lambda: user.request("GET", "/v1/jobs/count")["count"] == 2)
        assert services(root)["sync"]["alive"]
        unlinked = run(env, "-m", "balsam", "site", "unlink", "--site", str(root))
        assert "no longer linked" in unlinked.stdout
        wait_for("the sync service to stop", lambda: "sync" not in services(root))
        make_job(env, "unlinked/1")
        updated = json.loads((root / ".balsam" / "agent.json").read_text())["updated"]
        wait_for("two more status reports", lambda: json.loads((root / ".balsam" / "agent.json").read_text())["updated"] > updated + 3)
        assert user.request("GET", "/v1/jobs/count")["count"] == 2  # nothing of the unlinked site reaches the relay
        run(env, "-m", "balsam", "site", "link", relay.url, "--site", str(root))  # linked again: catches up, still no restart
        wait_for("the catch-up", lambda: user.request("GET", "/v1/jobs/count")["count"] == 3)
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)

