"""The suite's own check that no test leaves a process running (tests/leaks.py, the autouse fixture in conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import leaks

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")


def test_a_process_the_test_started_and_left_is_found_and_killed(balsam_home: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leaks, "GRACE_S", 0.3)
    before = leaks.pids()
    daemon = subprocess.Popen(["sleep", "60"], start_new_session=True, cwd="/")  # BALSAM_HOME inherited
    by_site = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--site", str(tmp_path / "site")],
                               cwd="/", env={"PATH": os.environ.get("PATH", "")})
    elsewhere = subprocess.Popen(["sleep", "60"], cwd="/", env={"BALSAM_HOME": str(tmp_path) + "-other"})
    try:
        found = leaks.left_behind(before, balsam_home, tmp_path)
        assert set(found) == {daemon.pid, by_site.pid}, found
        assert "sleep 60" in found[daemon.pid]
        assert daemon.wait(timeout=10) == -9 and by_site.wait(timeout=10) == -9
        assert elsewhere.poll() is None  # not this test's
    finally:
        for proc in (daemon, by_site, elsewhere):
            proc.kill()
            proc.wait()


def test_a_process_that_ends_within_the_grace_is_not_counted(balsam_home: Path, tmp_path: Path) -> None:
    before = leaks.pids()
    proc = subprocess.Popen(["sleep", "0.5"])
    try:
        assert leaks.left_behind(before, balsam_home, tmp_path) == {}
    finally:
        proc.wait()
