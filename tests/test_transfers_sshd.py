"""rsync over real ssh to a real sshd on 127.0.0.1 (started by .ci/sshd.sh): files and directories staged in
and out, a missing source failing its job with rsync's message, a connection dropped mid-file resumed, a
refused connection retried by the service, and the end-to-end workflow through the agent and a launcher."""

from __future__ import annotations

import getpass
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from balsam.api import ApplicationDefinition, BatchJob, Job, TransferItem
from balsam.services.transfers import TransferService
from balsam.settings import SiteSettings, TransferSettings
from balsam.site import refresh_site_row
from tests.helpers import advance
from tests.transfer_support import cycle_until
from tests.transfer_support import make_service as make_transfer_service

pytestmark = pytest.mark.sshd
USER = getpass.getuser()
REMOTE = f"rsync://{USER}@127.0.0.1"


class Staged(ApplicationDefinition):
    site = "test-site"
    command_template = "true"
    transfers = {
        "deck": {"required": True, "direction": "in", "local_path": "input/deck.bin"},
        "tree": {"required": False, "direction": "in", "local_path": "inputs", "recursive": True},
        "results": {"required": False, "direction": "out", "local_path": "results", "recursive": True},
        "log": {"required": False, "direction": "out", "local_path": "run.log"},
    }


def make_service(site: Any, rsh: str, **kw: Any) -> TransferService:
    return make_transfer_service(site, {"far": REMOTE}, rsync_rsh=rsh, **kw)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    root = tmp_path / "far side"
    (root / "in" / "tree" / "sub").mkdir(parents=True)
    (root / "in" / "deck.bin").write_bytes(os.urandom(100_000))
    (root / "in" / "tree" / "a.txt").write_text("A")
    (root / "in" / "tree" / "sub" / "b c.txt").write_text("B")
    return root


def test_files_and_directories_go_in_and_out_over_ssh(site: Any, sshd_rsh: str, remote: Path) -> None:
    service = make_service(site, sshd_rsh)
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"far:{remote}/in/deck.bin", "tree": f"far:{remote}/in/tree",
                                                "results": f"far:{remote}/out/results", "log": f"far:{remote}/out/run.log"})
    cycle_until(service, job.id, "STAGED_IN")
    work = site.layout.data / "t"
    assert (work / "input" / "deck.bin").read_bytes() == (remote / "in" / "deck.bin").read_bytes()
    assert (work / "inputs" / "sub" / "b c.txt").read_text() == "B"
    (task,) = {t.task_id for t in TransferItem.objects.filter(job_id=job.id, direction="in")}
    assert task.startswith("rsync:")  # both stage-in items went in one task, one ssh connection
    info = TransferItem.objects.filter(job_id=job.id, direction="in")[0].transfer_info
    assert info["bytes"] >= 100_000 and info["bytes_per_s"] > 0
    advance(Job.objects.get(id=job.id), "PREPROCESSED", "RUNNING", "RUN_DONE")
    (work / "results" / "nested").mkdir(parents=True)
    (work / "results" / "nested" / "r.txt").write_text("result")
    (work / "run.log").write_text("log")
    advance(Job.objects.get(id=job.id), "POSTPROCESSED")
    cycle_until(service, job.id, "JOB_FINISHED")
    assert (remote / "out" / "results" / "nested" / "r.txt").read_text() == "result"
    assert (remote / "out" / "run.log").read_text() == "log"


def test_without_rsync_rsh_in_settings_rsyncs_own_RSYNC_RSH_applies(site: Any, sshd_rsh: str, remote: Path) -> None:
    settings = TransferSettings(transfer_locations={"far": REMOTE})
    refresh_site_row(site.store, SiteSettings(transfers=settings))
    service = TransferService(site, settings, env=dict(os.environ, RSYNC_RSH=sshd_rsh))
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"far:{remote}/in/deck.bin"})
    cycle_until(service, job.id, "STAGED_IN")
    assert (site.layout.data / "t" / "input" / "deck.bin").read_bytes() == (remote / "in" / "deck.bin").read_bytes()


def test_a_missing_remote_file_fails_the_job_with_rsyncs_message(site: Any, sshd_rsh: str, remote: Path) -> None:
    service = make_service(site, sshd_rsh)
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"far:{remote}/in/not-there.bin"})
    failed = cycle_until(service, job.id, "FAILED")
    message = failed.history()[-1].data["message"]
    assert "not-there.bin" in message and "No such file or directory" in message and "link_stat" in message
    assert TransferItem.objects.get(job_id=job.id).state == "error"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_connection_dropped_mid_file_is_resumed(site: Any, sshd_rsh: str, remote: Path, tmp_path: Path) -> None:
    (remote / "in" / "big.bin").write_bytes(os.urandom(3_000_000))
    cutter = tmp_path / "ssh-cut-once"
    cutter.write_text(  # the first connection is killed after 1.5 s, mid-file; the next ones are left alone
        "#!/bin/bash\n"
        f"if mkdir {shlex.quote(str(tmp_path / 'cut'))} 2>/dev/null; then exec timeout -s KILL 1.5 {sshd_rsh} \"$@\"; fi\n"
        f"exec {sshd_rsh} \"$@\"\n"
    )
    cutter.chmod(0o755)
    service = make_service(site, str(cutter), rsync_flags="--bwlimit=800")
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"far:{remote}/in/big.bin"})
    cycle_until(service, job.id, "STAGED_IN", timeout=90)
    assert (site.layout.data / "t" / "input" / "deck.bin").read_bytes() == (remote / "in" / "big.bin").read_bytes()
    item = TransferItem.objects.get(job_id=job.id)
    output = (site.layout.state / "transfers" / item.task_id.partition(":")[2] / "output").read_text()
    assert "attempt 1: rsync exit" in output and "connection lost" in output
    matched = [int(m.replace(",", "")) for m in re.findall(r"Matched data: ([\d,]+) bytes", output)]
    assert matched and matched[-1] > 0  # the second attempt reused the partial file


def test_a_refused_connection_is_retried_later(site: Any, sshd_rsh: str, remote: Path) -> None:
    dead = re.sub(r"-p \d+", f"-p {_free_port()}", sshd_rsh)
    now = [time.time()]
    service = make_service(site, dead, rsync_attempts=1, retry_backoff_s=30.0)
    service.clock = lambda: now[0]
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"far:{remote}/in/deck.bin"})
    deadline = time.monotonic() + 60
    while TransferItem.objects.get(job_id=job.id).transfer_info.get("attempts") != 1:
        assert time.monotonic() < deadline
        service.run_cycle()
        time.sleep(0.1)
    item = TransferItem.objects.get(job_id=job.id)
    assert item.state == "pending" and "Connection refused" in item.transfer_info["last_error"]
    assert str(Job.objects.get(id=job.id).state) == "READY"
    # the host is back (the right port) and the pause is over: the retry succeeds
    healed = make_service(site, sshd_rsh)
    healed.clock = lambda: now[0] + 31
    cycle_until(healed, job.id, "STAGED_IN")
    assert TransferItem.objects.get(job_id=job.id).transfer_info["attempts"] == 1


# ------------------------------------------------------------------------------------------ end to end
E2E_SITE = "xfer-site"


class Simulate(ApplicationDefinition):
    site = E2E_SITE
    command_template = "tr a-z A-Z < input.txt > output.txt"
    transfers = {
        "input": {"required": True, "direction": "in", "local_path": "input.txt"},
        "output": {"required": True, "direction": "out", "local_path": "output.txt"},
    }


def balsam(*args: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, check=check, timeout=120)


def test_end_to_end_input_by_rsync_run_output_by_rsync_then_the_child(sshd_rsh: str, tmp_path: Path) -> None:
    root = tmp_path / E2E_SITE
    balsam("site", "init", str(root), "-n", E2E_SITE, "--preset", "local")
    settings = (root / "settings.yml").read_text().replace("idle_ttl_s: 10", "idle_ttl_s: 5")
    block: Dict[str, Any] = {"transfer_locations": {"far": REMOTE}, "rsync_rsh": sshd_rsh, "period_s": 0.3}
    import yaml

    data = yaml.safe_load(settings)
    data.setdefault("transfers", {}).update(block)
    (root / "settings.yml").write_text(yaml.safe_dump(data))
    far = tmp_path / "far"
    far.mkdir()
    (far / "in.txt").write_text("hello from the instrument\n")
    balsam("site", "start", "--site", str(root))
    try:
        parent = Simulate.submit(workdir="parent", transfers={"input": f"far:{far}/in.txt", "output": f"far:{far}/parent-out.txt"})
        child = Simulate.submit(workdir="child", parent_ids=[parent.id],
                                transfers={"input": f"far:{far}/parent-out.txt", "output": f"far:{far}/child-out.txt"})
        assert str(child.state) == "AWAITING_PARENTS"
        BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local")
        done = list(Job.objects.as_completed([parent, child], timeout=180))
        assert {str(j.state) for j in done} == {"JOB_FINISHED"}, [j.history()[-1].data for j in done]
        assert (far / "parent-out.txt").read_text() == "HELLO FROM THE INSTRUMENT\n"
        assert (far / "child-out.txt").read_text() == "HELLO FROM THE INSTRUMENT\n"
        finished_parent = next(e.timestamp for e in Job.objects.get(id=parent.id).history() if e.to_state == "JOB_FINISHED")
        child_events = Job.objects.get(id=child.id).history()
        child_ready = next(e.timestamp for e in child_events if e.to_state == "READY")
        assert child_ready >= finished_parent  # the child waited for the parent's stage-out
        assert [e.to_state for e in child_events].index("STAGED_IN") < [e.to_state for e in child_events].index("RUNNING")
        listing = balsam("transfer", "ls", "--site", E2E_SITE).stdout
        assert listing.count("done") == 4 and "rsync:" in listing
    finally:
        balsam("site", "stop", "--site", str(root), check=False)
        for bj in BatchJob.objects.filter(site_name=E2E_SITE, state=["pending_submission", "queued", "running"]):
            bj.state = "pending_deletion"
            bj.save()
