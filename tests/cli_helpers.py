"""Running ``balsam`` in tests: in-process through click's CliRunner, or as a real subprocess.

Each in-process run starts like a new process would: the API's current site and cached stores are reset.
Works with click 8.1 (Python 3.9) and 8.2+, whose CliRunner differ in how they capture stderr.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parent.parent


def _runner() -> CliRunner:
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


def invoke(*args: Any, input: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> Result:
    """Run ``balsam ARGS...`` in this process and return click's Result (.exit_code, .stdout, .stderr)."""
    from balsam._api import sites
    from balsam._api.jobs import invalidate_app_cache
    from balsam.cli import cli

    sites.reset()
    invalidate_app_cache()
    return _runner().invoke(cli, [str(a) for a in args], input=input, env={"COLUMNS": "120", **(env or {})}, prog_name="balsam")


def ok(*args: Any, **kwargs: Any) -> Result:
    """:func:`invoke` that must succeed."""
    result = invoke(*args, **kwargs)
    assert result.exit_code == 0, f"balsam {' '.join(map(str, args))} exited {result.exit_code}: {result.stderr}{result.exception!r}"
    return result


def fails(*args: Any, code: int = 1, **kwargs: Any) -> str:
    """:func:`invoke` that must fail with ``code`` and one ``Error:`` line (no traceback); returns that line."""
    result = invoke(*args, **kwargs)
    assert result.exit_code == code, f"exit {result.exit_code} (wanted {code}); stdout {result.stdout!r} stderr {result.stderr!r}"
    err = result.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err, f"not a one-line error: {err!r}"
    assert "Traceback" not in err
    return err


def run_process(*args: str, cwd: Path, env: Optional[Dict[str, str]] = None, input: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
    """Run ``python -m balsam ARGS...`` as a real process with this checkout first on the path."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), COLUMNS="120")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "balsam", *args], cwd=str(cwd), env=full_env, input=input, capture_output=True,
                          text=True, timeout=60)


def start_ui(env: Dict[str, str], *args: str) -> Tuple["subprocess.Popen[str]", str, str, str]:
    """``balsam ui ARGS`` started as a real process: (the process, its base URL, its login link's token or "",
    everything it printed before serving). The caller terminates it."""
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "ui", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    assert proc.stdout is not None
    printed = ""
    for _ in range(10):
        line = proc.stdout.readline()
        printed += line
        if line.startswith("Ctrl-C") or not line:
            break
    m = re.search(r"(http://127\.0\.0\.1:\d+)/#/login(?:\?token=(\S+))?", printed)
    if not m:
        proc.kill()
        proc.wait(timeout=30)
        raise AssertionError(printed)
    return proc, m.group(1), m.group(2) or "", printed
