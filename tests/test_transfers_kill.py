"""The transfer service killed with SIGKILL while its rsync is copying (a real rsync, slowed down, in the
background): the next service finds the task where it runs, takes its result once, and the job is staged in
once, with the file whole and one STAGED_IN event."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from balsam.api import ApplicationDefinition, Job, TransferItem
from tests.transfer_support import cycle_until, make_service

SERVICE = """
import sys, time
from pathlib import Path
from balsam._api import sites
from balsam.services.transfers import TransferService
from balsam.settings import TransferSettings

site = sites.ref_for_root(Path(sys.argv[1]))
settings = TransferSettings(transfer_locations={"far": "rsync://"}, rsync_flags="--bwlimit=2000")
service = TransferService(site, settings, env=dict(__import__("os").environ))
while True:
    service.run_cycle()
    time.sleep(0.05)
"""


class Pull(ApplicationDefinition):
    site = "test-site"
    command_template = "true"
    transfers = {"deck": {"required": True, "direction": "in", "local_path": "input/deck.bin"}}


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("rsync"), reason="rsync is not installed (bash .ci/sshd.sh installs it)")
def test_a_service_killed_mid_copy_is_followed_by_one_that_takes_the_result_once(site: Any, tmp_path: Path) -> None:
    make_service(site, {"far": "rsync://"}, rsync_flags="--bwlimit=2000")  # the site row names the location
    Pull.sync()
    remote = tmp_path / "remote"
    remote.mkdir()
    payload = os.urandom(6_000_000)  # about 3 s at 2 MB/s
    (remote / "deck.bin").write_bytes(payload)
    job = Pull.submit(workdir="big", transfers={"deck": f"far:{remote}/deck.bin"})
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    service = subprocess.Popen([sys.executable, "-c", SERVICE, str(site.path)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while TransferItem.objects.get(job_id=job.id).state != "active":  # the copy has started
            assert time.monotonic() < deadline and service.poll() is None, "the service never started the copy"
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(service.pid, signal.SIGKILL)
        service.wait(30)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(30)
    assert str(Job.objects.get(id=job.id).state) == "READY"  # not staged in yet: the copy goes on without its service
    task = TransferItem.objects.get(job_id=job.id).task_id
    again = make_service(site, {"far": "rsync://"}, rsync_flags="--bwlimit=2000")
    staged = cycle_until(again, job.id, "STAGED_IN", timeout=120)
    assert (site.layout.data / "big" / "input" / "deck.bin").read_bytes() == payload
    item = TransferItem.objects.get(job_id=job.id)
    assert item.state == "done" and item.task_id == task  # the same task, not a second copy
    assert [e.to_state for e in staged.history()].count("STAGED_IN") == 1


# The service of SERVICE, killed with kill -9 at its first call of ``at`` once the copy's process exists (or, for
# "spawn", as it is about to start it).
SERVICE_DYING = """
import os, signal, sys, time
from pathlib import Path
from balsam._api import sites
from balsam.services.transfers import TransferService
from balsam.settings import TransferSettings

root, at = sys.argv[1:3]
spawned = []

def die(frame, event, arg):
    name = frame.f_code.co_name if event in ("call", "return") else getattr(arg, "__name__", "") if event == "c_call" else ""
    if event == "return" and name == "spawn":
        spawned.append(arg)
    elif event == "call" and name == at and (spawned or at == "spawn"):
        os.kill(os.getpid(), signal.SIGKILL)

site = sites.ref_for_root(Path(root))
service = TransferService(site, TransferSettings(transfer_locations={"far": "local"}), env=dict(os.environ))
sys.setprofile(die)
while True:
    service.run_cycle()
    time.sleep(0.05)
"""


@pytest.mark.parametrize("at", ["create_time_of", "spawn"])
def test_a_service_killed_as_it_starts_a_copy_is_followed_by_one_that_copies_nothing_twice(site: Any, tmp_path: Path,
                                                                                             at: str) -> None:
    """kill -9 of the transfer service the moment its copy starts, before it has noted the task at the items (the copy
    was started again by the next service: the data copied twice, two copies writing one file), or just before it
    starts the copy it noted: the next service takes the one copy's result, or starts the noted copy, once."""
    make_service(site, {"far": "local"})
    Pull.sync()
    remote = tmp_path / "remote"
    remote.mkdir()
    payload = os.urandom(100_000)
    (remote / "deck.bin").write_bytes(payload)
    job = Pull.submit(workdir="quick", transfers={"deck": f"far:{remote}/deck.bin"})
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    service = subprocess.run([sys.executable, "-c", SERVICE_DYING, str(site.path), at], env=env, capture_output=True,
                             text=True, timeout=120)
    assert service.returncode == -signal.SIGKILL, service.stdout + service.stderr
    again = make_service(site, {"far": "local"})
    staged = cycle_until(again, job.id, "STAGED_IN", timeout=60)
    assert (site.layout.data / "quick" / "input" / "deck.bin").read_bytes() == payload
    tasks = site.layout.state / "transfers"
    copies = [r for r in tasks.glob("*/record") if "\nstart " in "\n" + r.read_text()]
    assert len(copies) == 1, [r.read_text() for r in tasks.glob("*/record")]
    item = TransferItem.objects.get(job_id=job.id)
    assert item.state == "done" and item.task_id.endswith(copies[0].parent.name)
    assert [e.to_state for e in staged.history()].count("STAGED_IN") == 1
