"""The trusted result keys of a computer that reads results through the relay (balsam.site.result_keys): read once
and kept while the file stays as it was, so that a waiting loop checking many results does not read the file for
each, and any change (a key trusted, one revoked with ``balsam site key --revoke`` or by hand) counts at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import pytest

from balsam import exceptions as exc
from balsam.site import result_keys as rk

REPO = Path(__file__).resolve().parents[1]
COLUMN = "serialized_return_value"


def test_keys_are_read_once_until_the_file_changes_and_a_revoked_key_is_refused_at_once(tmp_path: Path,
                                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rk, "RACY_S", 0.0)  # as a file settled long ago (one changed this instant is read at every use)
    reads: List[Any] = []
    real = rk._read_trusted
    monkeypatch.setattr(rk, "_read_trusted", lambda path: reads.append(path) or real(path))
    home = tmp_path / "home"
    key_a, key_b = b"a" * 32, b"b" * 32
    rk.trust_key(rk.export_key(key_a), home, "site-a")
    from_a, from_b = rk.sign(key_a, 7, COLUMN, b"pickled-a"), rk.sign(key_b, 8, COLUMN, b"pickled-b")
    for _ in range(200):  # a loop reading many results
        assert rk.verified(from_a, 7, COLUMN, "site-a", rk.trusted_keys(home)) == b"pickled-a"
    assert len(reads) == 1
    # A key trusted since is used at once.
    rk.trust_key(rk.export_key(key_b), home, "site-b")
    assert rk.verified(from_b, 8, COLUMN, "site-b", rk.trusted_keys(home)) == b"pickled-b"
    assert len(reads) == 2
    # Revoked with the CLI: the next read refuses what it signed.
    env = dict(os.environ, PYTHONPATH=str(REPO), BALSAM_HOME=str(home))
    out = subprocess.run([sys.executable, "-m", "balsam", "site", "key", "--revoke", "site-a"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and f"Result key {rk.key_id(key_a).hex()} is no longer trusted" in out.stdout, out.stderr
    with pytest.raises(exc.ResultNotTrusted, match="which this computer does not hold"):
        rk.verified(from_a, 7, COLUMN, "site-a", rk.trusted_keys(home))
    assert rk.verified(from_b, 8, COLUMN, "site-b", rk.trusted_keys(home)) == b"pickled-b"
    # Revoked by hand, in place: the same size and modification time as before (an editor on a coarse clock).
    path = home / rk.TRUSTED_FILE
    before = path.stat()
    text = path.read_text()
    path.write_text(text.replace(rk.export_key(key_b), rk.export_key(key_a)).replace("site-b", "site-a"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_ino == before.st_ino
    with pytest.raises(exc.ResultNotTrusted, match="which this computer does not hold"):
        rk.verified(from_b, 8, COLUMN, "site-b", rk.trusted_keys(home))
    assert rk.verified(from_a, 7, COLUMN, "site-a", rk.trusted_keys(home)) == b"pickled-a"
    # Removed: nothing is trusted.
    path.unlink()
    assert rk.trusted_keys(home) == {}


def test_revoking_a_key_this_computer_does_not_hold_says_so_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), BALSAM_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-m", "balsam", "site", "key", "--revoke", "polaris"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "no trusted result key has the id or label 'polaris'" in out.stderr
