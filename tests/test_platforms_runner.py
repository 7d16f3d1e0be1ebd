"""The command runner: no shell, a timeout on every call, an explicit environment; the fake and counting
runners tests and benchmarks use."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from balsam.platforms.runner import CommandResult, CountingRunner, FakeRunner, SubprocessRunner


def test_run_returns_output_and_code_without_a_shell():
    result = SubprocessRunner().run([sys.executable, "-c", "import sys; print('out $HOME'); sys.stderr.write('err'); sys.exit(3)"])
    assert (result.returncode, result.stdout.strip(), result.stderr) == (3, "out $HOME", "err")


def test_env_is_the_base_with_per_call_overlay():
    runner = SubprocessRunner(env={"ONLY": "base", "PATH": "/usr/bin:/bin"})
    code = "import os; print(os.environ.get('ONLY'), os.environ.get('EXTRA'), 'HOME' in os.environ)"
    result = runner.run([sys.executable, "-c", code], env={"EXTRA": "call"})
    assert result.stdout.split() == ["base", "call", "False"]


def test_timeout_raises_timeout_expired():
    runner = SubprocessRunner(timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        runner.run(["sleep", "5"])
    assert time.monotonic() - start < 3


def test_missing_program_raises_file_not_found():
    with pytest.raises(FileNotFoundError):
        SubprocessRunner().run(["no-such-program-balsam"])


def test_spawn_detaches_into_its_own_session(tmp_path):
    runner = SubprocessRunner()
    out = tmp_path / "out.txt"
    pid = runner.spawn(["bash", "-c", "echo started; sleep 30"], output_path=out)
    try:
        proc = psutil.Process(pid)
        assert proc.pid == pid and __import__("os").getsid(pid) == pid  # session leader: no controlling terminal
        deadline = time.monotonic() + 5
        while "started" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert out.read_text() == "started\n"
    finally:
        psutil.Process(pid).kill()
        runner.reap()


def test_fake_runner_records_calls_and_answers():
    fake = FakeRunner(responses={"squeue": "1|RUNNING", "scancel": CommandResult(["scancel"], 1, "", "boom")})
    assert fake.run(["squeue", "-h"]).stdout == "1|RUNNING"
    assert fake.run(["scancel", "1"], env={"A": "1"}).returncode == 1
    assert fake.argvs == [["squeue", "-h"], ["scancel", "1"]]
    assert fake.calls[1].env == {"A": "1"}
    fake.responder = lambda argv: FileNotFoundError(argv[0]) if argv[0] == "qstat" else None
    with pytest.raises(FileNotFoundError):
        fake.run(["qstat"])


def test_counting_runner_counts_every_command():
    counting = CountingRunner(FakeRunner())
    for _ in range(3):
        counting.run(["squeue"])
    assert counting.count == 3 and counting.argvs[0] == ["squeue"]
