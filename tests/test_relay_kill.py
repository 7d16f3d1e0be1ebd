"""`balsam relay serve` killed with SIGKILL while a real site pushes a backlog of more than two batches, then
started again on the same port over the same SQLite database: the site's next sync sends what the dead relay did
not commit, and the relay ends equal to the site, with no batch applied twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List, Tuple

import pytest

pytest.importorskip("sqlalchemy", reason="the relay needs its extra (balsam[relay])")

REPO = Path(__file__).resolve().parents[1]


def serve(url: str, port: int, tmp: Path) -> Tuple["subprocess.Popen[str]", int]:
    """``balsam relay serve`` in a process of its own; (the process, its port)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), BALSAM_HOME=str(tmp / "relay-home"))
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "relay", "serve", "--db", url, "--bind", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert found, f"balsam relay serve did not start: {line}"
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, int(found.group(1))


class Served:
    """What the sync tests' helpers need of a relay: its URL and its store."""

    def __init__(self, store: Any, port: int) -> None:
        self.store = store
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.mark.slow
def test_the_relay_killed_mid_push_loses_and_doubles_nothing(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from balsam.relay import schema as t
    from balsam.services import sync as sync_mod
    from tests.relay_support import relay_store
    from tests.test_relay_faults import assert_equal_sides, mirror_of, site_db, site_process
    from tests.test_relay_sync import login_node, run

    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "alice-password")
        proc, port = serve(store.url, 0, tmp_path)
        procs: List["subprocess.Popen[str]"] = [proc]
        try:
            relay = Served(store, port)
            env, root = login_node(tmp_path, relay)
            make = ("import sys; from balsam.api import Job; Job.objects.bulk_create([Job(f'local/{i}', app_id='Hello', site_name='polaris', "
                    "parameters={'say_hello_to': str(i)}) for i in range(int(sys.argv[1]))])")
            run(env, "-c", make, str(2 * sync_mod.BATCH + 1000))

            def pushes(store: Any = store) -> int:
                with store.connect() as c:
                    return int(c.execute(sa.select(sa.func.count()).select_from(t.push)).scalar_one())

            before = pushes()
            site = subprocess.Popen([sys.executable, "-c", "import sys; from tests.test_relay_faults import SITE_PROCESS; "
                                     "sys.argv = ['site', *sys.argv[1:]]; exec(SITE_PROCESS)", str(root), "none", "0"],
                                    env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 240
            while pushes() == before:  # the first batch is in: the next one is on its way
                assert time.monotonic() < deadline and site.poll() is None, "the site never pushed"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            site.communicate(timeout=240)  # the site gives up on the dead relay (or finishes, if it was quick)
            proc, _ = serve(store.url, port, tmp_path)  # the same address: the site's link still points there
            procs.append(proc)
            again = site_process(env, root)
            assert again.returncode == 0, again.stderr[-2000:]
            assert_equal_sides(relay, root)  # every job and event at the relay once, nothing left to push
            db = site_db(root)
            counts = dict(db.execute("SELECT state, count(*) FROM job GROUP BY state").fetchall())
            db.close()
            assert mirror_of(relay, root).count_by("job", {}, "state") == counts  # the relay's counts: no change counted twice
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(30)
