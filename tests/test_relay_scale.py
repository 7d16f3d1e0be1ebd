"""The relay at scale, end to end: a laptop (no site; its own BALSAM_HOME) creates 100,000 jobs for a site with
one ``Job.objects.bulk_create``; the relay hands them to the site's running agent, which creates them, and the
relay's mirror (what the laptop then lists and counts) holds all of them, once, in bounded memory and time.

On the relay's default database (SQLite) only: minutes of wall time, and the path is the same on PostgreSQL
(whose bulk ingest and queries the other relay tests cover)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from tests.relay_support import relay_store
from tests.test_http_api import api  # noqa: F401  (the site agent's API server: a fixture)
from tests.test_relay_sync import Relay, login_node, run, wait_for

N = 100_000

LAPTOP = """
import json, resource, sys, time
from balsam.api import Job
t0 = time.time()
jobs = Job.objects.bulk_create([Job(workdir=f"bulk/{i}", app_id="Hello", site_name="polaris", tags={"batch": str(i % 10)},
                                    parameters={"say_hello_to": str(i)}) for i in range(int(sys.argv[1]))])
created = time.time() - t0
ids = [j.id for j in jobs]
print(json.dumps({"n": len(jobs), "unique": len(set(ids)), "sites": sorted({i >> 32 for i in ids}), "seconds": created,
                  "states": sorted({str(j.state) for j in jobs}), "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "alice-password")
        r = Relay(store).start()
        try:
            yield r
        finally:
            r.stop()


@pytest.mark.slow
def test_a_laptop_bulk_creates_100k_jobs_through_the_relay(relay: Relay, tmp_path: Path) -> None:
    env, root = login_node(tmp_path, relay)
    run(env, "-m", "balsam", "site", "start", "--site", str(root))
    try:
        laptop = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), BALSAM_HOME=str(tmp_path / "laptop-home"))
        run(laptop, "-m", "balsam", "login", relay.url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
        wait_for("the site online", lambda: "online" in run(laptop, "-m", "balsam", "site", "ls").stdout)
        script = tmp_path / "bulk.py"
        script.write_text(LAPTOP)
        out = subprocess.run([sys.executable, str(script), str(N)], capture_output=True, text=True, env=laptop, timeout=1200)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        site_id = int(json.loads((root / ".balsam" / "relay.json").read_text())["site_id"])
        assert result["n"] == result["unique"] == N and result["sites"] == [site_id], result
        assert set(result["states"]) <= {"READY", "STAGED_IN", "PREPROCESSED"}, result  # the site's processing moves them on
        # The site holds every job once; the relay's mirror catches up with all of them.
        by_state: Dict[str, int] = json.loads(run(env, "-m", "balsam", "job", "ls", "--site", str(root), "--by-state", "--json").stdout)
        assert sum(by_state.values()) == N, by_state
        counted = "from balsam.api import Job; print(Job.objects.filter(site_name='polaris', tags={'batch': '3'}).count())"
        wait_for("the mirror to hold every job", lambda: int(run(laptop, "-c", counted).stdout.split()[-1]) == N // 10, timeout=600)
        print(f"100k bulk_create through the relay: {result['seconds']:.1f} s, laptop peak RSS {result['maxrss_mb']:.0f} MB")
        assert result["maxrss_mb"] < 2048, result  # the laptop holds its 100k Job objects, nothing more
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)


def test_a_bulk_create_sent_in_parts_from_another_host_makes_none_when_a_later_part_is_refused(
        site: Any, api: Any, hello: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from balsam._api import sites as _sites
    from balsam.api import Job
    from balsam.exceptions import ValidationError
    from balsam.http import client

    hello.submit("taken", say_hello_to="home")
    monkeypatch.setattr(client, "CREATE_CHUNK", 3)
    monkeypatch.setenv("BALSAM_HOSTNAME", "login2")  # another host: the site through its agent's HTTP API
    monkeypatch.setenv("BALSAM_SITE_PATH", str(site.path))
    _sites.reset()
    made = Job.objects.bulk_create([Job(f"part/{i}", app_id="Hello", parameters={"say_hello_to": str(i)}) for i in range(7)])
    assert len({j.id for j in made}) == 7 and Job.objects.filter(workdir__contains="part/").count() == 7
    with pytest.raises(ValidationError, match="workdir 'taken' is already used"):  # in the second of two parts
        Job.objects.bulk_create([Job(w, app_id="Hello", parameters={"say_hello_to": "x"}) for w in ("n/0", "n/1", "n/2", "taken", "n/4")])
    assert Job.objects.filter(workdir__contains="n/").count() == 0  # all or nothing, as on the home host
