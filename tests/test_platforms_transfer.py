"""cp and rsync transfer adapters: background tasks that copy for real, polling, errors carried, cancel; rsync
to a ``user@host:`` destination through a stand-in remote shell."""

from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path

import pytest

from balsam.exceptions import ConfigError, TransferError
from balsam.platforms.runner import FakeRunner
from balsam.platforms.transfer import TransferItem, TransferState, adapter_name_of, get_transfer, is_remote, transfer_names
from balsam.platforms.transfer.base import render_script
from balsam.platforms.transfer.cp import render_cp_steps
from balsam.platforms.transfer.rsync import render_rsync_steps

needs_rsync = pytest.mark.skipif(not shutil.which("rsync"), reason="rsync is not installed (run: bash .ci/tools.sh)")


def wait_done(adapter, task_id, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = adapter.poll(task_id)
        if status.state is not TransferState.ACTIVE:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{task_id} still active")


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b file.txt").write_text("B")
    return src


def listing(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["cp", pytest.param("rsync", marks=needs_rsync)])
def test_files_and_directories_are_copied_in_the_background(tmp_path, tree, name):
    adapter = get_transfer(name, state_dir=tmp_path / "state")
    out = tmp_path / "out"
    task = adapter.submit([TransferItem(str(tree / "a.txt"), str(out / "deep" / "a copy.txt")),
                           TransferItem(str(tree), str(out / "tree"), recursive=True)])  # fmt: skip
    assert adapter_name_of(task) == name
    status = wait_done(adapter, task)
    assert (status.state, status.error) == (TransferState.DONE, "")
    assert (out / "deep" / "a copy.txt").read_text() == "A"
    assert listing(out / "tree") == ["a.txt", "sub", "sub/b file.txt"]


@pytest.mark.parametrize("name", ["cp", pytest.param("rsync", marks=needs_rsync)])
def test_a_missing_source_fails_only_its_item_with_the_tools_message(tmp_path, tree, name):
    adapter = get_transfer(name, state_dir=tmp_path / "state")
    task = adapter.submit([TransferItem(str(tree / "a.txt"), str(tmp_path / "ok.txt")),
                           TransferItem(str(tree / "missing.txt"), str(tmp_path / "x.txt"))])  # fmt: skip
    status = wait_done(adapter, task)
    assert status.state is TransferState.DONE and status.returncode != 0
    assert list(status.failed) == [1]
    assert "missing.txt" in status.failed[1].message and "No such file" in status.failed[1].message
    assert not status.failed[1].transient
    assert (tmp_path / "ok.txt").read_text() == "A"
    assert adapter.poll(task) == status  # the outcome is kept


@needs_rsync
def test_rsync_to_a_remote_destination_through_the_remote_shell(tmp_path, tree):
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(
        '#!/bin/bash\n# stands in for ssh: drop the options and the host, run the command here\n'
        'while [[ "$1" == -* ]]; do [ "$1" = -l ] && shift; shift; done\n'
        'echo "$1" >> "$(dirname "$0")/hosts.log"; shift\nexec bash -c "$*"\n'
    )
    fake_ssh.chmod(fake_ssh.stat().st_mode | stat.S_IXUSR)
    adapter = get_transfer("rsync", state_dir=tmp_path / "state", options={"rsh": str(fake_ssh), "mkpath": "true"})
    dest = tmp_path / "remote side" / "data"
    task = adapter.submit([TransferItem(str(tree), f"alice@dtn.example.org:{dest}", recursive=True)])
    status = wait_done(adapter, task)
    assert status.state is TransferState.DONE, status.error
    assert listing(dest) == ["a.txt", "sub", "sub/b file.txt"]
    assert "dtn.example.org" in (tmp_path / "hosts.log").read_text()


def test_cancel_stops_a_running_task(tmp_path):
    adapter = get_transfer("cp", state_dir=tmp_path / "state")
    fifo = tmp_path / "never-ready"
    __import__("os").mkfifo(fifo)  # cp blocks reading a FIFO nobody writes
    task = adapter.submit([TransferItem(str(fifo), str(tmp_path / "dest"))])
    time.sleep(0.3)
    assert adapter.poll(task).state is TransferState.ACTIVE
    adapter.cancel(task, grace_s=2)
    status = wait_done(adapter, task)
    assert status.state is TransferState.ERROR and "cancelled" in status.error



def task_processes(tmp_path):
    """The processes (not zombies) whose command line names something under tmp_path."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(tmp_path) in a for a in proc.info["cmdline"] or []):
            out.append(proc.info["cmdline"])
    return out


def test_a_task_cancelled_before_it_started_is_never_started(tmp_path):
    adapter = get_transfer("cp", state_dir=tmp_path / "state")
    fifo = tmp_path / "never-ready"
    __import__("os").mkfifo(fifo)
    task = adapter.create([TransferItem(str(fifo), str(tmp_path / "dest"))])  # noted, not started yet
    adapter.cancel(task, grace_s=2)
    adapter.start(task)  # the starter comes back to it after the cancel: nothing starts
    status = adapter.poll(task)  # a poll starts a noted task that never started, but not a cancelled one
    assert status.state is TransferState.ERROR and "cancelled" in status.error
    assert task_processes(tmp_path) == []


def test_cancel_stops_a_task_whose_starter_never_noted_its_pid(tmp_path):
    from balsam.platforms import detached
    from balsam.platforms.runner import SubprocessRunner

    adapter = get_transfer("cp", state_dir=tmp_path / "state")
    fifo = tmp_path / "never-ready"
    __import__("os").mkfifo(fifo)
    task = adapter.create([TransferItem(str(fifo), str(tmp_path / "dest"))])
    task_dir = tmp_path / "state" / task.partition(":")[2]
    # what start() does up to the spawn, as if it were killed right after it
    SubprocessRunner().spawn(detached.wrapper_argv(["bash", str(task_dir / "task.sh")], task_dir / "record"),
                             output_path=task_dir / "output", cwd=task_dir)
    adapter.cancel(task, grace_s=2)
    status = wait_done(adapter, task)
    assert status.state is TransferState.ERROR and "cancelled" in status.error
    assert task_processes(tmp_path) == []

def test_rendered_steps_are_exact():
    items = [TransferItem("/data/in.h5", "/site/data/job1/in.h5"), TransferItem("/data/dir/", "/site/data/job1/dir", recursive=True)]
    assert render_cp_steps(items) == [
        [["mkdir", "-p", "/site/data/job1"], ["cp", "-p", "/data/in.h5", "/site/data/job1/in.h5"]],
        [["mkdir", "-p", "/site/data/job1/dir"], ["cp", "-pR", "/data/dir/.", "/site/data/job1/dir"]],
    ]  # fmt: skip
    remote = [TransferItem("/site/data/job1/out", "bob@dtn:/archive/out", recursive=True), TransferItem("dtn:/a/b.txt", "/site/b.txt")]
    assert render_rsync_steps(remote, rsh="ssh -o BatchMode=yes", flags=["--partial"]) == [
        ["rsync", "-a", "--partial", "-e", "ssh -o BatchMode=yes", "/site/data/job1/out/", "bob@dtn:/archive/out/"],
        ["mkdir", "-p", "/site"],
        ["rsync", "-a", "--partial", "-e", "ssh -o BatchMode=yes", "dtn:/a/b.txt", "/site/b.txt"],
    ]
    script = render_script([["cp", "a b", "$c"]], ["cp a b"])
    assert "cp 'a b' '$c' ||" in script


def test_remote_syntax_detection():
    assert is_remote("user@host:/p") and is_remote("host.example.org:rel/path")
    assert not is_remote("/abs/a:b") and not is_remote("./a:b") and not is_remote("plain/path")


def test_errors_are_clear(tmp_path):
    adapter = get_transfer("cp", FakeRunner(), state_dir=tmp_path / "state")
    with pytest.raises(TransferError, match="nothing to transfer"):
        adapter.submit([])
    with pytest.raises(TransferError, match="use the rsync"):
        adapter.submit([TransferItem("host:/x", "/y")])
    with pytest.raises(TransferError, match="not one of this adapter's task ids"):
        adapter.poll("rsync:" + "0" * 32)
    assert "no such transfer task" in adapter.poll("cp:" + "0" * 32).error
    with pytest.raises(ConfigError, match="unknown transfer adapter 'gridftp'"):
        get_transfer("gridftp")
    with pytest.raises(ConfigError, match="unknown option"):
        get_transfer("cp", options={"rsh": "ssh"})
    assert transfer_names() == ["cp", "globus", "rsync"]


def test_submit_goes_through_the_injected_runner(tmp_path, tree):
    fake = FakeRunner()
    adapter = get_transfer("rsync", fake, state_dir=tmp_path / "state")
    task = adapter.submit([TransferItem(str(tree / "a.txt"), str(tmp_path / "z.txt"))])
    (call,) = fake.calls
    assert call.spawned and call.argv[0] == "bash" and call.argv[-1].endswith("task.sh")
    assert task.startswith("rsync:")


def test_prune_removes_only_old_finished_task_folders(tmp_path, tree):
    adapter = get_transfer("cp", state_dir=tmp_path / "state")
    done = adapter.submit([TransferItem(str(tree / "a.txt"), str(tmp_path / "a.txt"))])
    assert wait_done(adapter, done).state is TransferState.DONE
    fifo = tmp_path / "never-ready"
    __import__("os").mkfifo(fifo)
    running = adapter.submit([TransferItem(str(fifo), str(tmp_path / "dest"))])
    assert adapter.prune(3600) == 0  # finished a moment ago: kept
    assert adapter.prune(3600, now=time.time() + 7200) == 1
    assert not (tmp_path / "state" / done.partition(":")[2]).exists()
    assert adapter.poll(running).state is TransferState.ACTIVE  # a running task is never pruned
    adapter.cancel(running, grace_s=2)


def test_a_task_cancelled_while_its_copy_is_being_spawned_is_stopped_by_its_starter(tmp_path):
    from balsam.platforms.runner import SubprocessRunner

    class CancelFirst(SubprocessRunner):
        """Spawns for real, but only after the task was cancelled (cancel finds no copy to stop yet)."""

        def spawn(self, argv, **kwargs):
            adapter.cancel(task, grace_s=2)
            return super().spawn(argv, **kwargs)

    adapter = get_transfer("cp", CancelFirst(), state_dir=tmp_path / "state")
    fifo = tmp_path / "never-ready"
    __import__("os").mkfifo(fifo)
    task = adapter.create([TransferItem(str(fifo), str(tmp_path / "dest"))])
    adapter.start(task)
    status = wait_done(adapter, task)
    assert status.state is TransferState.ERROR and "cancelled" in status.error
    assert task_processes(tmp_path) == []
