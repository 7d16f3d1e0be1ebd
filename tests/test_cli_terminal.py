"""The CLI on a terminal: job states in colour and the table fitted to its width, a counter or bar on stderr for
long operations, and nothing of either when output goes to a pipe or with --json."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Tuple

from balsam.api import Job
from tests.cli_helpers import ROOT

ESC = "\x1b["


def on_terminal(args: List[str], home: Path, columns: int = 100, timeout: float = 120) -> Tuple[int, str]:
    """Run ``balsam ARGS`` with stdout and stderr on a pseudo-terminal; its exit code and everything it wrote."""
    master, slave = pty.openpty()
    env = {**os.environ, "BALSAM_HOME": str(home), "COLUMNS": str(columns), "PYTHONPATH": str(ROOT), "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "balsam", *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: List[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def piped(args: List[str], home: Path) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    env = {**os.environ, "BALSAM_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, env=env, timeout=120)


def test_job_ls_colours_states_fits_the_width_and_says_how_many_more(site: Any, hello: Any, balsam_home: Path) -> None:
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"a-rather-long-workdir-name/{i:04d}", say_hello_to="x", save=False,
                                                 tags={"experiment": "colours"}) for i in range(30)])
    Job.objects.filter(id=[j.id for j in jobs[:3]]).update(state="FAILED")
    code, out = on_terminal(["job", "ls", "--site", "test-site", "-n", "10"], balsam_home, columns=60)
    assert code == 0, out
    lines = out.replace("\r", "").splitlines()
    assert any(f"{ESC}31mFAILED" in line for line in lines), out  # red
    table = [line for line in lines if line.strip() and not line.startswith("...")]
    assert len(table) == 11 and all(len(_plain(line)) <= 60 for line in table)
    assert lines[-1] == "... 20 more (show them with -n 0, or narrow with filters; count with --by-state)"
    plain = piped(["job", "ls", "--site", "test-site", "-n", "10"], balsam_home)
    assert plain.returncode == 0 and ESC not in plain.stdout and "FAILED" in plain.stdout


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_long_operations_show_progress_on_a_terminal_only(site: Any, hello: Any, balsam_home: Path, tmp_path: Path) -> None:
    records = tmp_path / "jobs.jsonl"
    records.write_text("".join(f'{{"workdir": "p/{i}", "parameters": {{"say_hello_to": "x"}}}}\n' for i in range(2500)))
    code, out = on_terminal(["job", "create", "--from", str(records), "-a", "Hello", "--site", "test-site", "-y"], balsam_home)
    assert code == 0, out
    assert "Creating 2500 jobs" in out and "100%" in out  # the bar reached its end
    code, out = on_terminal(["job", "modify", "--site", "test-site", "--all", "-s", "PREPROCESSED", "-y"], balsam_home)
    assert code == 0 and "Setting 2500 jobs to PREPROCESSED: done in" in out, out
    code, out = on_terminal(["job", "rm", "--site", "test-site", "--all", "-y"], balsam_home)
    assert code == 0, out
    assert "Deleting 2500 jobs: done in" in out and re.search(r"Deleted 2,?500 jobs", out), out
    code, out = on_terminal(["db", "check", "--site", "test-site"], balsam_home)
    assert code == 0 and "Checking " in out and "done in" in out, out
    code, out = on_terminal(["db", "backup", str(tmp_path), "--site", "test-site"], balsam_home)
    assert code == 0 and "Backing up site test-site: done in" in out, out
    # the same commands into pipes, or with --json, print no progress at all
    records.write_text("".join(f'{{"workdir": "q/{i}", "parameters": {{"say_hello_to": "x"}}}}\n' for i in range(2500)))
    made = piped(["job", "create", "--from", str(records), "-a", "Hello", "--site", "test-site", "-y", "--json"], balsam_home)
    assert made.returncode == 0 and made.stderr == "", made.stderr
    code, out = on_terminal(["db", "check", "--site", "test-site", "--json"], balsam_home)
    assert code == 0 and "Checking" not in out
    gone = piped(["job", "rm", "--site", "test-site", "--all", "-y"], balsam_home)
    assert gone.returncode == 0 and gone.stderr == "" and "Deleted" in gone.stdout
