"""Detached processes with record files: exit codes, times, recycled PIDs, and killing whole trees."""

from __future__ import annotations

import os
import time

import psutil

from balsam.platforms import detached
from balsam.platforms.runner import SubprocessRunner


def run_detached(tmp_path, command, wait=True):
    record = tmp_path / "rec"
    record.touch()
    runner = SubprocessRunner()
    pid = runner.spawn(detached.wrapper_argv(command, record), output_path=tmp_path / "out")
    detached.append_record(record, f"pid {pid} {detached.create_time_of(pid)}")
    if wait:
        deadline = time.monotonic() + 10
        while not detached.parse_record(record.read_text()).ended and time.monotonic() < deadline:
            time.sleep(0.02)
    runner.reap()
    return pid, record


def whole_tree(pid, count, timeout=60.0):
    """``pid`` and its descendants once there are ``count`` of them: a loaded machine may take well over the
    0.3 s this test used to give bash to start them (the tree was then too small)."""
    deadline = time.monotonic() + timeout
    while True:
        tree = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
        if len(tree) >= count:
            return tree
        assert time.monotonic() < deadline, f"only {len(tree)} of {count} processes started"
        time.sleep(0.02)


def test_parse_record_reads_every_line_kind():
    rec = detached.parse_record("pid 12 100.5\nsubmitted 100.0\nmeta queue debug\nstart 12 101.0\nend 3 105.25\ngarbage\ncancelled 104\n")
    assert (rec.pid, rec.create_time, rec.submitted, rec.start, rec.end, rec.returncode, rec.cancelled) == (12, 100.5, 100.0, 101.0, 105.25, 3, 104.0)
    assert rec.meta == {"queue": "debug"} and rec.ended


def test_wrapper_records_start_end_and_exit_code(tmp_path):
    pid, record = run_detached(tmp_path, ["bash", "-c", "echo $BALSAM_LOCAL_JOB_ID; exit 7"])
    rec = detached.parse_record(record.read_text())
    assert rec.returncode == 7 and rec.start is not None and rec.end >= rec.start
    assert (tmp_path / "out").read_text().strip() == str(pid)
    assert not detached.is_alive(rec.pid, rec.create_time)


def test_a_recycled_pid_is_not_alive(tmp_path):
    me = psutil.Process()
    assert detached.is_alive(me.pid, me.create_time())
    assert not detached.is_alive(me.pid, me.create_time() - 100)


def test_terminate_tree_kills_children_and_grandchildren(tmp_path):
    pid, record = run_detached(tmp_path, ["bash", "-c", "sleep 60 & (sleep 61 & wait) & wait"], wait=False)
    tree = whole_tree(pid, 4)  # bash, sleep 60, the subshell, sleep 61
    rec = detached.parse_record(record.read_text())
    detached.terminate_tree(pid, rec.create_time, grace_s=5)
    time.sleep(0.2)
    assert [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []


def test_terminate_tree_also_ends_what_the_tree_starts_while_it_is_being_stopped(tmp_path):
    # TERM makes the script start one more process (ignoring TERM, as a command bash forked with TERM blocked never
    # sees it), collect its sleep and exit: nothing of the tree as listed is left, not even a zombie, but the group
    # still has a member
    script = "trap 'trap \"\" TERM; sleep 61 & kill $s; wait $s; exit 0' TERM; sleep 60 & s=$!; wait"
    pid, record = run_detached(tmp_path, ["bash", "-c", script], wait=False)
    whole_tree(pid, 3)  # the wrapper, bash (its trap set), sleep 60
    rec = detached.parse_record(record.read_text())
    detached.terminate_tree(pid, rec.create_time, grace_s=1)
    left = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if os.getpgid(proc.pid) == pid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(proc.info["cmdline"])
        except OSError:
            pass
    assert left == []
